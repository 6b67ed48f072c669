"""Tests of the per-stream layers: `PerStream`, `ResidualBlock`, `CrossStitch` and `StreamMerge`."""

import keras
import numpy as np
import pytest

from sfg_keras.layers import CrossStitch, PerStream, ResidualBlock, SFGConv, StreamMerge


def _streams(n=3, shape=(2, 4, 4, 6), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape).astype("float32") for _ in range(n)]


def _np(x):
    return keras.ops.convert_to_numpy(x)


# === PerStream ===


def test_per_stream_has_separate_weights_and_keeps_none():
    layer = PerStream(keras.layers.Conv2D(5, 1, name="proj"))
    streams = _streams()
    streams[1] = None
    out = layer(streams)
    assert out[1] is None
    assert [tuple(o.shape) for o in (out[0], out[2])] == [(2, 4, 4, 5)] * 2
    assert len(layer.stream_layers) == 2
    kernels = [_np(sub.kernel) for sub in layer.stream_layers]
    assert not np.allclose(kernels[0], kernels[1])  # separate weights per stream
    assert [sub.name for sub in layer.stream_layers] == ["proj_stream_0", "proj_stream_2"]
    np.testing.assert_allclose(_np(out[0]), np.einsum("bhwc,cd->bhwd", streams[0], kernels[0][0, 0])
                               + _np(layer.stream_layers[0].bias), atol=1e-5)
    assert len(layer.trainable_weights) == 4


def test_per_stream_pooling_shapes_and_spec():
    layer = PerStream(keras.layers.MaxPooling2D(2))
    out = layer(_streams())
    assert [tuple(o.shape) for o in out] == [(2, 2, 2, 6)] * 3
    np.testing.assert_allclose(_np(out[0]), _streams()[0].reshape(2, 2, 2, 2, 2, 6).max(axis=(2, 4)))
    spec = layer.compute_output_spec([keras.KerasTensor((None, 8, 8, 3)), None])
    assert tuple(spec[0].shape) == (None, 4, 4, 3) and spec[1] is None


def test_per_stream_errors():
    with pytest.raises(ValueError, match="Keras layer"):
        PerStream("max_pool")
    layer = PerStream(keras.layers.MaxPooling2D(2))
    with pytest.raises(ValueError, match="list of streams"):
        layer(_streams()[0])
    layer = PerStream(keras.layers.Conv2D(2, 1))
    layer(_streams())
    with pytest.raises(ValueError, match="stream 1"):
        layer([_streams()[0], None, _streams()[0]])
    with pytest.raises(ValueError, match="3 streams"):
        layer(_streams(2))


def test_per_stream_config_round_trip():
    layer = PerStream(ResidualBlock(6, dilation_rate=2), name="res")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, PerStream)
    assert restored.get_config() == layer.get_config()
    restored(_streams())
    assert all(isinstance(sub, ResidualBlock) and sub.dilation_rate == 2 for sub in restored.stream_layers)


# === ResidualBlock ===


def test_residual_block_identity_when_convs_are_zero():
    block = ResidualBlock(6)
    x = _streams(1)[0]
    block.build(x.shape)
    for conv in block.convs:
        conv.kernel.assign(np.zeros(conv.kernel.shape, "float32"))
    np.testing.assert_array_equal(_np(block(x, training=True)), x)


def test_residual_block_is_pre_activation_and_uses_batch_statistics():
    block = ResidualBlock(6, dilation_rate=2, activation="relu")
    x = _streams(1, shape=(3, 8, 8, 6))[0]
    out = _np(block(x, training=False))
    assert out.shape == x.shape
    # reference: x + conv1(relu(bn(conv0(relu(bn(x)))))) with batch statistics
    def bn(v, norm):
        mean, var = v.mean(axis=(0, 1, 2)), v.var(axis=(0, 1, 2))
        return (v - mean) / np.sqrt(var + norm.epsilon) * _np(norm.gamma) + _np(norm.beta)

    def conv(v, layer):
        return _np(keras.ops.conv(v, layer.kernel, padding="same", dilation_rate=2))

    h = conv(np.maximum(bn(x, block.norms[0]), 0), block.convs[0])
    expected = x + conv(np.maximum(bn(h, block.norms[1]), 0), block.convs[1])
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    assert all(not conv.use_bias for conv in block.convs)
    np.testing.assert_array_equal(_np(block.norms[0].moving_mean), 0.0)  # inference left the statistics alone
    assert len(block.losses) == 2  # L2 on both kernels


def test_residual_block_rank3_config_and_errors():
    block = ResidualBlock(4, rank=3, dilation_rate=1)
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 4, 4)).astype("float32")
    assert tuple(block(x).shape) == (2, 4, 4, 4, 4)
    assert ResidualBlock.from_config(block.get_config()).get_config() == block.get_config()
    with pytest.raises(ValueError, match="4 input channels"):
        ResidualBlock(4)(_streams(1)[0])
    with pytest.raises(ValueError, match="rank=4"):
        ResidualBlock(4, rank=4)


# === CrossStitch ===


def test_cross_stitch_mixing_formula():
    unit = CrossStitch(3, self_weight=0.8)
    streams = _streams(3)
    out = unit(streams)
    alpha = _np(unit.alpha)
    assert alpha.shape == (3, 3, 6)
    np.testing.assert_allclose(alpha[0, 0], 0.8)
    np.testing.assert_allclose(alpha[0, 1], 0.1)
    alpha = np.random.default_rng(1).normal(size=alpha.shape).astype("float32")
    unit.alpha.assign(alpha)
    out = unit(streams)
    for t in range(3):
        expected = sum(alpha[t, u] * streams[u] for u in range(3))
        np.testing.assert_allclose(_np(out[t]), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("groups", [[[0, 1, 2], [3, 4]], [[0, 2, 4], [1, 3]]], ids=["blocks", "interleaved"])
def test_cross_stitch_channel_groups_and_passthrough(groups):
    """Unequal groups (a width not divisible by the number of tasks), as consecutive blocks or interleaved."""
    unit = CrossStitch(2, channel_groups=groups)
    rng = np.random.default_rng(0)
    a = np.zeros((2, 3, 3, 5), "float32")
    b = np.zeros((2, 3, 3, 5), "float32")
    a[..., groups[0]] = rng.normal(size=(2, 3, 3, 3))
    b[..., groups[1]] = rng.normal(size=(2, 3, 3, 2))
    out = unit([a, b, None])
    assert len(out) == 3 and out[2] is None  # the (empty) shared stream passes through
    alpha = rng.normal(size=(2, 2, 3)).astype("float32")
    unit.alpha.assign(alpha)
    out = unit([a, b, None])
    # own channel i of every stream is mixed; a stream without an i-th channel contributes zero
    own_a = a[..., groups[0]]
    own_b = np.concatenate([b[..., groups[1]], np.zeros((2, 3, 3, 1), "float32")], -1)
    mixed_a = alpha[0, 0] * own_a + alpha[0, 1] * own_b
    mixed_b = alpha[1, 0] * own_a + alpha[1, 1] * own_b
    np.testing.assert_allclose(_np(out[0])[..., groups[0]], mixed_a, atol=1e-6)
    np.testing.assert_array_equal(_np(out[0])[..., groups[1]], 0.0)
    np.testing.assert_allclose(_np(out[1])[..., groups[1]], mixed_b[..., :2], atol=1e-6)
    np.testing.assert_array_equal(_np(out[1])[..., groups[0]], 0.0)


def test_cross_stitch_after_single_task_sfg_layers():
    """The cross-stitch baseline: two half-width task networks, mixed after each convolution."""
    first = SFGConv(5, 3, fixed_assignment=[0, 0, 0, 1, 1])
    unit = CrossStitch(2, channel_groups=[[0, 1, 2], [3, 4]])
    second = SFGConv(4, 3, fixed_assignment=[0, 0, 1, 1])
    x = _streams(1, shape=(2, 6, 6, 1))[0]
    out = second(unit(first(x, training=True)), training=True)
    assert out[2] is None and [tuple(o.shape) for o in out[:2]] == [(2, 6, 6, 4)] * 2


def test_cross_stitch_errors():
    with pytest.raises(ValueError, match="num_streams=1"):
        CrossStitch(1)
    with pytest.raises(ValueError, match="self_weight=1.5"):
        CrossStitch(2, self_weight=1.5)
    with pytest.raises(ValueError, match="lengths"):
        CrossStitch(2, channel_groups=[[0, 1], []])
    with pytest.raises(ValueError, match="same shape"):
        CrossStitch(2)([np.zeros((1, 2, 2, 3)), np.zeros((1, 2, 2, 4))])
    with pytest.raises(ValueError, match="must all be present"):
        CrossStitch(2)([np.zeros((1, 2, 2, 3)), None])


def test_cross_stitch_keras_save_and_load(tmp_path):
    inputs = [keras.Input((4, 4, 3)), keras.Input((4, 4, 3))]
    mixed = CrossStitch(2, name="cs")(inputs)
    model = keras.Model(inputs, [keras.layers.Add()(mixed)])
    model.get_layer("cs").alpha.assign(np.random.default_rng(0).normal(size=(2, 2, 3)).astype("float32"))
    x = [s[:, :, :, :3] for s in _streams(2, shape=(2, 4, 4, 3))]
    path = tmp_path / "cs.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    config = CrossStitch(2, channel_groups=[[0, 2], [1]]).get_config()
    assert CrossStitch.from_config(config).get_config() == config


# === StreamMerge ===


def test_stream_merge_sum_and_missing_streams():
    a, b, s = _streams(3)
    merged = StreamMerge(2)([a, b, s])
    np.testing.assert_allclose(_np(merged[0]), a + s)
    np.testing.assert_allclose(_np(merged[1]), b + s)
    merged = StreamMerge(2)([None, b, s])
    np.testing.assert_array_equal(_np(merged[0]), s)
    merged = StreamMerge(2)([a, b, None])
    np.testing.assert_array_equal(_np(merged[1]), b)
    with pytest.raises(ValueError, match="task 1"):
        StreamMerge(2)([None, b, None])
    with pytest.raises(ValueError, match="3 streams"):
        StreamMerge(2)([a, b])
    with pytest.raises(ValueError, match="mode='max'"):
        StreamMerge(2, mode="max")


def test_stream_merge_concat_projects_per_task():
    a, b, c, s = _streams(4)
    merge = StreamMerge(3, mode="concat")
    merged = merge([a, b, c, s])
    assert len(merge.projections) == 3
    for stream, projection, out in zip((a, b, c), merge.projections, merged):
        expected = np.concatenate([stream, s], -1) @ _np(projection.kernel) + _np(projection.bias)
        np.testing.assert_allclose(_np(out), expected, rtol=1e-5, atol=1e-5)
        assert tuple(out.shape) == (2, 4, 4, 6)
    config = merge.get_config()
    assert StreamMerge.from_config(config).get_config() == config


# === Issue 10: loading must not depend on whether a freed PerStream template's id is reused ===

_SHARED_TEMPLATE = {}  # outside the class: Keras' weight loading walks class attributes that hold layers


@keras.saving.register_keras_serializable(package="sfg_test")
class _ReusedTemplate(keras.layers.Layer):
    """A per-channel scale whose `from_config` hands back one instance for templates (not for the per-stream copies,
    named `*_stream_*`): the templates of two PerStream layers deserialised by one `load_model` then share an id, what
    happens when the garbage collector frees one template and the next is allocated at its address."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="random_normal")

    def call(self, x):
        return x * self.scale

    @classmethod
    def from_config(cls, config):
        if "_stream_" in config["name"]:
            return cls(**config)
        if "template" not in _SHARED_TEMPLATE:
            _SHARED_TEMPLATE["template"] = cls(**config)
        return _SHARED_TEMPLATE["template"]


def test_load_model_with_reused_template_id(tmp_path):
    from sfg_keras.models import SFGNetwork, TaskHead

    _SHARED_TEMPLATE.clear()
    model = SFGNetwork(
        trunk=[SFGConv(4, 3, seed=0), PerStream(_ReusedTemplate(name="a")), PerStream(_ReusedTemplate(name="b"))],
        heads=[TaskHead("x", "regression", 1), TaskHead("y", "regression", 1)],
        head_layers=[keras.layers.Conv2D(1, 1), keras.layers.Conv2D(1, 1)],
    )
    model.build((None, 8, 8, 1))
    model.save(tmp_path / "model.keras")
    # Before the fix: ValueError "You cannot add new elements of state ... to a layer that is already built".
    restored = keras.models.load_model(tmp_path / "model.keras")
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 1)).astype("float32")
    expected, got = model(x, training=False), restored(x, training=False)
    for name in ("x", "y"):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got[name]), keras.ops.convert_to_numpy(expected[name]),
                                   atol=1e-6)


def test_per_stream_templates_with_one_id_in_a_sharing_scope_build_separate_copies():
    from keras.src.saving.serialization_lib import ObjectSharingScope

    template = ResidualBlock(4, name="res")
    with ObjectSharingScope():
        first = PerStream(template, name="a")
        second = PerStream(template, name="b")  # the same id, as after garbage collection and address reuse
        second.build([(None, 8, 8, 4)] * 3)
    assert len({id(layer) for layer in second.stream_layers}) == 3
    assert "shared_object_id" not in str(first.get_config())
