"""Tests of `BatchStatisticsNormalization`: batch statistics at inference, moving statistics untouched."""

import keras
import numpy as np
import pytest
from keras.src import testing

from sfg_keras.layers import BatchStatisticsNormalization, sampling_scope


def _data(shape=(6, 5, 5, 3), seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape) * np.arange(1, shape[-1] + 1) + 2.0).astype("float32")


def _numpy_batch_norm(x, gamma, beta, epsilon, axes):
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + epsilon) * gamma + beta


def _layer(x, **kwargs):
    layer = BatchStatisticsNormalization(epsilon=1e-3, **kwargs)
    layer.build(x.shape)
    channels = x.shape[-1]
    layer.gamma.assign(np.linspace(0.5, 2.0, channels).astype("float32"))
    layer.beta.assign(np.linspace(-1.0, 1.0, channels).astype("float32"))
    layer.moving_mean.assign(np.full(channels, 7.0, "float32"))
    layer.moving_variance.assign(np.full(channels, 3.0, "float32"))
    return layer


def _stats(layer):
    mean, variance = layer.moving_mean, layer.moving_variance
    return keras.ops.convert_to_numpy(mean).copy(), keras.ops.convert_to_numpy(variance).copy()


def test_inference_uses_batch_statistics_and_leaves_moving_statistics():
    x = _data()
    layer = _layer(x)
    before = _stats(layer)
    out = keras.ops.convert_to_numpy(layer(x, training=False))
    expected = _numpy_batch_norm(x, keras.ops.convert_to_numpy(layer.gamma), keras.ops.convert_to_numpy(layer.beta),
                                 1e-3, axes=(0, 1, 2))
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    for a, b in zip(before, _stats(layer)):
        np.testing.assert_array_equal(a, b)
    # also through a Keras model's predict
    model = keras.Sequential([keras.Input(x.shape[1:]), layer])
    np.testing.assert_allclose(model.predict(x, batch_size=6, verbose=0), expected, rtol=1e-4, atol=1e-4)
    for a, b in zip(before, _stats(layer)):
        np.testing.assert_array_equal(a, b)


def test_prediction_depends_on_the_batch():
    """The documented contract: a prediction depends on the other examples in its batch."""
    x = _data(shape=(8, 4, 4, 2))
    layer = _layer(x)
    full = keras.ops.convert_to_numpy(layer(x, training=False))
    part = keras.ops.convert_to_numpy(layer(x[:3], training=False))
    assert not np.allclose(full[:3], part, atol=1e-3)
    # batch size 1: spatial statistics only
    single = keras.ops.convert_to_numpy(layer(x[:1], training=False))
    expected = _numpy_batch_norm(x[:1], keras.ops.convert_to_numpy(layer.gamma), keras.ops.convert_to_numpy(layer.beta),
                                 1e-3, axes=(0, 1, 2))
    np.testing.assert_allclose(single, expected, rtol=1e-4, atol=1e-4)


def test_training_updates_moving_statistics_like_keras():
    x = _data()
    ours = _layer(x, momentum=0.9)
    stock = keras.layers.BatchNormalization(epsilon=1e-3, momentum=0.9)
    stock.build(x.shape)
    for name in ("gamma", "beta", "moving_mean", "moving_variance"):
        getattr(stock, name).assign(getattr(ours, name))
    np.testing.assert_allclose(ours(x, training=True), stock(x, training=True), rtol=1e-5, atol=1e-5)
    mean, var = _stats(ours)
    np.testing.assert_allclose(mean, 0.9 * 7.0 + 0.1 * x.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(var, 0.9 * 3.0 + 0.1 * x.var(axis=(0, 1, 2)), rtol=1e-4)
    np.testing.assert_allclose(mean, _stats(stock)[0], rtol=1e-6)


def test_moving_option_is_stock_inference():
    x = _data()
    layer = _layer(x, inference_statistics="moving")
    out = keras.ops.convert_to_numpy(layer(x, training=False))
    gamma, beta = keras.ops.convert_to_numpy(layer.gamma), keras.ops.convert_to_numpy(layer.beta)
    np.testing.assert_allclose(out, (x - 7.0) / np.sqrt(3.0 + 1e-3) * gamma + beta, rtol=1e-5, atol=1e-5)


def test_frozen_layer_in_training_uses_batch_statistics_without_updates():
    x = _data()
    layer = _layer(x)
    layer.trainable = False
    before = _stats(layer)
    out = keras.ops.convert_to_numpy(layer(x, training=True))
    expected = _numpy_batch_norm(x, keras.ops.convert_to_numpy(layer.gamma), keras.ops.convert_to_numpy(layer.beta),
                                 1e-3, axes=(0, 1, 2))
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(before[0], _stats(layer)[0])


@pytest.mark.parametrize("num_samples", [2, 5])
def test_monte_carlo_slices_are_normalised_separately(num_samples):
    slices = [_data(shape=(3, 4, 4, 2), seed=s) * (s + 1) for s in range(num_samples)]
    layer = _layer(slices[0])
    separate = [keras.ops.convert_to_numpy(layer(s, training=False)) for s in slices]
    with sampling_scope(num_samples=num_samples):
        stacked = keras.ops.convert_to_numpy(layer(np.concatenate(slices), training=False))
    np.testing.assert_allclose(stacked, np.concatenate(separate), rtol=1e-5, atol=1e-5)
    # outside the scope the whole stacked batch is one batch: different
    pooled = keras.ops.convert_to_numpy(layer(np.concatenate(slices), training=False))
    assert not np.allclose(pooled, stacked, atol=1e-3)


def test_volumes_and_channel_axis():
    x = _data(shape=(2, 3, 4, 5, 3))
    layer = _layer(x)
    out = keras.ops.convert_to_numpy(layer(x, training=False))
    expected = _numpy_batch_norm(x, keras.ops.convert_to_numpy(layer.gamma), keras.ops.convert_to_numpy(layer.beta),
                                 1e-3, axes=(0, 1, 2, 3))
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    first_axis = BatchStatisticsNormalization(axis=1, epsilon=1e-3)
    y = _data(shape=(4, 3, 5))
    out = keras.ops.convert_to_numpy(first_axis(y, training=False))
    np.testing.assert_allclose(out, _numpy_batch_norm(y, 1.0, 0.0, 1e-3, axes=(0, 2)), rtol=1e-4, atol=1e-4)


def test_mixed_float16_computes_statistics_in_float32():
    keras.config.set_dtype_policy("mixed_float16")
    x = _data() * 100.0
    layer = BatchStatisticsNormalization(epsilon=1e-3)
    out = layer(x, training=False)
    assert out.dtype == "float16" and layer.gamma.dtype == "float32"
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out).astype("float32"),
                               _numpy_batch_norm(x, 1.0, 0.0, 1e-3, axes=(0, 1, 2)), atol=2e-2)


def test_invalid_option_names_the_value():
    with pytest.raises(ValueError, match="inference_statistics='running'"):
        BatchStatisticsNormalization(inference_statistics="running")


def test_config_and_keras_save_load(tmp_path):
    layer = BatchStatisticsNormalization(inference_statistics="moving", momentum=0.8, epsilon=1e-4, name="bsn")
    config = layer.get_config()
    assert config["inference_statistics"] == "moving" and config["momentum"] == 0.8
    assert BatchStatisticsNormalization.from_config(config).get_config() == config
    x = _data()
    inputs = keras.Input(x.shape[1:])
    model = keras.Model(inputs, BatchStatisticsNormalization(name="bsn")(keras.layers.Conv2D(3, 1)(inputs)))
    model.compile("sgd", "mse")
    model.fit(x, x, epochs=1, batch_size=3, verbose=0)
    path = tmp_path / "bn.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored.get_layer("bsn"), BatchStatisticsNormalization)
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    for a, b in zip(_stats(model.get_layer("bsn")), _stats(restored.get_layer("bsn"))):
        np.testing.assert_array_equal(a, b)


class BatchStatisticsNormalizationLayerTest(testing.TestCase):
    def test_run_layer_test(self):
        self.run_layer_test(
            BatchStatisticsNormalization,
            {"momentum": 0.9, "epsilon": 1e-5},
            input_shape=(4, 5, 5, 3),
            expected_output_shape=(4, 5, 5, 3),
            expected_num_trainable_weights=2,
            expected_num_non_trainable_weights=2,
            expected_num_seed_generators=0,
            expected_num_losses=0,
        )
