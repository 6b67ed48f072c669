"""Keras' own layer harness (`run_layer_test`) on every layer of the package, with its training check (fit on
random data) and mixed-precision check: multi-output layers return tuples, as `LSTM(return_state=True)` does."""

from keras.src import testing

from sfg_keras.layers import BatchStatisticsNormalization, CrossStitch, PerStream, ResidualBlock, SFGConv, StreamMerge

STREAMS = ((4, 5, 5, 3),) * 3
OUT = ((4, 5, 5, 4),) * 3


class KerasConformanceTest(testing.TestCase):
    def _check(self, cls, kwargs, input_shape, output_shape, trainable, non_trainable, seeds=0, losses=0):
        self.run_layer_test(
            cls,
            kwargs,
            input_shape=input_shape,
            expected_output_shape=output_shape,
            expected_num_trainable_weights=trainable,
            expected_num_non_trainable_weights=non_trainable,
            expected_num_seed_generators=seeds,
            expected_num_losses=losses,
            run_training_check=True,
            run_mixed_precision_check=True,
        )

    def test_sfg_conv_image_input(self):
        # kernel, logits; per group gamma, beta, PReLU alpha | temperature, entropy scale, sampling noise; per group
        # moving stats
        self._check(SFGConv, {"filters": 4, "kernel_size": 3, "seed": 0}, (4, 5, 5, 3), OUT, 2 + 3 * 3, 3 + 3 * 2,
                    seeds=1, losses=2)

    def test_sfg_conv_streams_sum(self):
        self._check(SFGConv, {"filters": 4, "kernel_size": 3, "seed": 0}, STREAMS, OUT, 2 + 3 * 3, 3 + 3 * 2,
                    seeds=1, losses=2)

    def test_sfg_conv_streams_concat_soft_per_batch(self):
        kwargs = {"filters": 4, "kernel_size": 3, "merge": "concat", "hard": False, "sampling": "per_batch", "seed": 1}
        # + two 1x1 merge convolutions (kernel, bias)
        self._check(SFGConv, kwargs, STREAMS, OUT, 2 + 3 * 3 + 2 * 2, 3 + 3 * 2, seeds=1, losses=2)

    def test_sfg_conv_fixed_assignment(self):
        kwargs = {"filters": 4, "kernel_size": 3, "fixed_assignment": [0, 1, 2, 2]}
        self._check(SFGConv, kwargs, STREAMS, OUT, 1 + 3 * 3, 1 + 3 * 2, seeds=1, losses=1)

    def test_sfg_conv_rank_3(self):
        kwargs = {"filters": 2, "kernel_size": 3, "rank": 3, "num_tasks": 3, "seed": 0}
        self._check(SFGConv, kwargs, (2, 4, 4, 4, 1), ((2, 4, 4, 4, 2),) * 4, 2 + 4 * 3, 3 + 4 * 2, seeds=1,
                    losses=2)

    def test_cross_stitch(self):
        shapes = ((2, 4, 4, 3), (2, 4, 4, 3))
        self._check(CrossStitch, {"num_streams": 2, "self_weight": 0.7}, shapes, shapes, 1, 0)

    def test_residual_block(self):
        self._check(ResidualBlock, {"filters": 3, "dilation_rate": 2}, (2, 6, 6, 3), (2, 6, 6, 3), 8, 4, losses=2)

    def test_per_stream(self):
        import keras

        layer = keras.layers.Dense(2)
        self._check(PerStream, {"layer": layer}, ((2, 3), (2, 3), (2, 3)), ((2, 2),) * 3, 6, 0)

    def test_stream_merge(self):
        self._check(StreamMerge, {"num_tasks": 2, "mode": "concat"}, ((2, 4),) * 3, ((2, 4),) * 2, 4, 0)

    def test_batch_statistics_normalization(self):
        self._check(BatchStatisticsNormalization, {"momentum": 0.9}, (4, 5, 5, 3), (4, 5, 5, 3), 2, 2)
