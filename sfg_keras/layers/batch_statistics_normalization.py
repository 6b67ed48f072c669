"""Batch normalisation that can use the statistics of the current batch at inference (SFG paper, section 4)."""

from __future__ import annotations

import keras
from keras import ops

from sfg_keras.groups import INFERENCE_STATISTICS, check_choice
from sfg_keras.layers.sampling_scope import current_num_samples


def batch_moments(x, num_samples: int = 1, axis: int = -1):
    """Per-channel mean and variance of a batch, broadcastable against `x`.

    With `num_samples > 1` the batch axis holds `num_samples` stacked Monte-Carlo passes and each pass gets the
    moments of its own slice (how `BatchStatisticsNormalization` normalises at inference).

    Args:
        x: tensor `[batch, ...]`.
        num_samples: int. Number of equal slices of the batch axis. Defaults to 1.
        axis: int. The channel axis (not the batch axis). Defaults to -1.

    Example:

    ```python
    mean, variance = batch_moments(x)            # shapes [1, 1, 1, C] for x [B, H, W, C]
    mean, variance = batch_moments(x, 4)         # shapes [B, 1, 1, C], constant within each quarter of the batch
    ```
    """
    rank = len(x.shape)
    axis = axis if axis >= 0 else rank + axis
    reduction_axes = [i for i in range(rank) if i != axis]
    if num_samples == 1:
        return ops.moments(x, axes=reduction_axes, keepdims=True)
    if axis == 0:
        raise ValueError("Monte-Carlo slices need a batch axis other than the channel axis. Received axis=0.")
    # [N * B, ...] -> [N, B, ...]: every pass gets its own batch's moments, then one row per example again.
    stacked = ops.reshape(x, [num_samples, -1, *ops.shape(x)[1:]])
    mean, variance = ops.moments(stacked, axes=[i + 1 for i in reduction_axes], keepdims=True)
    per_example = ops.shape(x)[0] // num_samples
    return tuple(ops.repeat(ops.squeeze(m, axis=1), per_example, axis=0) for m in (mean, variance))


@keras.saving.register_keras_serializable(package="sfg")
class BatchStatisticsNormalization(keras.layers.BatchNormalization):
    """`BatchNormalization` whose inference mode normalises with the batch's own statistics.

    The paper (and its original code) normalises test data with the statistics of the test batch. With
    `inference_statistics="batch"` (default), this layer does the same whenever it is not training, and never
    writes the moving averages outside training; with `"moving"` it behaves like the stock Keras layer.

    Consequence of the default: a prediction depends on the other examples in its batch (batch size 1 normalises
    over the spatial positions only). Inside `sampling_scope(num_samples=N)` the batch axis is treated as N equal
    slices (stacked Monte-Carlo passes) and each slice is normalised on its own, exactly as N sequential passes.

    Training behaviour is Keras' own (batch moments, moving averages updated), so checkpoints are interchangeable
    with `keras.layers.BatchNormalization`.

    Args:
        inference_statistics: str. `"batch"` or `"moving"`. Defaults to `"batch"`.
        **kwargs: passed to `keras.layers.BatchNormalization` (`axis`, `momentum`, `epsilon`, ...).

    Example:

    ```python
    bn = BatchStatisticsNormalization(momentum=0.9, epsilon=1e-5)
    y = bn(x, training=False)  # normalised with x's own mean and variance; moving stats untouched
    ```
    """

    def __init__(self, inference_statistics: str = "batch", **kwargs):
        super().__init__(**kwargs)
        check_choice("inference_statistics", inference_statistics, INFERENCE_STATISTICS)
        self.inference_statistics = inference_statistics

    def call(self, inputs, training=None, mask=None):
        if (training and self.trainable) or self.inference_statistics == "moving":
            return super().call(inputs, training=training, mask=mask)
        x = ops.cast(inputs, "float32")
        mean, variance = batch_moments(x, current_num_samples(), self.axis)
        shape = [1] * len(x.shape)
        shape[self.axis] = x.shape[self.axis]
        outputs = (x - mean) * ops.rsqrt(variance + self.epsilon)
        if self.scale:
            outputs = outputs * ops.reshape(ops.cast(self.gamma, "float32"), shape)
        if self.center:
            outputs = outputs + ops.reshape(ops.cast(self.beta, "float32"), shape)
        return ops.cast(outputs, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "inference_statistics": self.inference_statistics}
