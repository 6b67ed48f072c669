"""Tests of the Gumbel-softmax temperature: the schedule, its per-step application in `fit`, saving."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from sfg_keras.layers import (
    PerStream,
    SFGConv,
    StreamMerge,
    TemperatureSchedule,
    apply_temperature,
    find_sfg_layers,
)
from sfg_keras.losses import RMSE, CrossEntropy
from sfg_keras.models import SFGNetwork, TaskHead

_SCHEDULE = TemperatureSchedule(tau0=2.0, decay_rate=1e-3, tau_min=0.1)


def test_schedule_formula_and_floor():
    schedule = TemperatureSchedule(tau0=1.5, decay_rate=0.01, tau_min=0.2)
    for step in (0, 1, 10, 100, 1000, 10**6):
        expected = max(0.2, 1.5 * math.exp(-0.01 * step))
        assert schedule.value(step) == pytest.approx(expected, rel=1e-12)
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-6)
    assert schedule.value(10**6) == 0.2
    default = TemperatureSchedule()
    assert (default.tau0, default.decay_rate, default.tau_min) == (1.0, 1e-5, 0.1)
    assert default.value(1000) == pytest.approx(math.exp(-0.01))


def test_schedule_config_and_errors():
    schedule = TemperatureSchedule(tau0=3.0, decay_rate=0.5, tau_min=0.3)
    assert TemperatureSchedule.from_config(schedule.get_config()).get_config() == schedule.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert restored.get_config() == schedule.get_config()
    with pytest.raises(ValueError, match="tau0=0"):
        TemperatureSchedule(tau0=0)
    with pytest.raises(ValueError, match="decay_rate=-1"):
        TemperatureSchedule(decay_rate=-1)
    with pytest.raises(ValueError, match="tau_min"):
        TemperatureSchedule(tau0=0.5, tau_min=1.0)


def test_temperature_variable_is_read_at_run_time():
    """The compiled sampler reads the variable: a new value changes the relaxed sample without retracing."""
    layer = SFGConv(64, 1, hard=False, seed=0)
    layer.build((None, 2, 2, 1))
    sample = tf.function(lambda: layer._assignment(layer.probabilities(), 4, True))
    state = keras.ops.convert_to_numpy(layer.seed_generator.state)
    warm = keras.ops.convert_to_numpy(sample())
    layer.seed_generator.state.assign(state)
    layer.set_temperature(0.05)
    cold = keras.ops.convert_to_numpy(sample())
    assert not np.allclose(warm, cold)
    np.testing.assert_array_equal(np.argmax(warm, -1), np.argmax(cold, -1))  # same Gumbel noise
    assert cold.max(axis=-1).mean() > warm.max(axis=-1).mean() + 0.1  # colder: closer to one-hot
    assert float(layer.temperature) == pytest.approx(0.05)
    assert not layer.temperature.trainable


class _Recorder(keras.callbacks.Callback):
    """Records (step, temperature of every SFG layer) after each training batch."""

    def __init__(self):
        super().__init__()
        self.records = []

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy()) - 1
        self.records.append((step, [float(layer.temperature.numpy()) for layer in find_sfg_layers(self.model)]))


def _data(n=8, size=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, size, size, 1)).astype("float32")
    return x, {"a": rng.normal(size=(n, 1)).astype("float32"), "b": rng.integers(0, 2, n)}


def _network(schedule=_SCHEDULE):
    return SFGNetwork(
        trunk=[SFGConv(4, 3, seed=0, temperature=5.0), SFGConv(4, 3, seed=1),
               PerStream(keras.layers.GlobalAveragePooling2D())],
        heads=[TaskHead("a", "regression", 1), TaskHead("b", "classification", 2)],
        head_layers=[keras.layers.Dense(1), keras.layers.Dense(2)],
        temperature_schedule=schedule,
    )


def _check_records(records, steps):
    assert [step for step, _ in records] == steps
    for step, values in records:
        np.testing.assert_allclose(values, _SCHEDULE.value(step), rtol=1e-6, err_msg=f"step {step}")


def test_sfg_network_sets_the_temperature_every_step_and_saves_it(tmp_path):
    x, y = _data()
    model = _network()
    model.build(x.shape)
    model.compile("adam", loss={"a": RMSE(), "b": CrossEntropy()})
    recorder = _Recorder()
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[recorder])
    model.optimizer.iterations.assign(1000)
    model.fit(x[:4], {k: v[:4] for k, v in y.items()}, batch_size=4, epochs=1, verbose=0, callbacks=[recorder])
    _check_records(recorder.records, [0, 1, 1000])
    assert _SCHEDULE.value(1) != pytest.approx(_SCHEDULE.value(0), rel=1e-5)  # measurably different values
    # the logged temperature is the mean over the epoch's steps
    assert history.history["temperature"][0] == pytest.approx((_SCHEDULE.value(0) + _SCHEDULE.value(1)) / 2, rel=1e-5)
    # inference keeps the last training value
    model.predict(x, verbose=0)
    model.evaluate(x, y, verbose=0)
    for layer in model.sfg_layers:
        assert float(layer.temperature.numpy()) == pytest.approx(_SCHEDULE.value(1000), rel=1e-6)
    # and so does a `.keras` round trip (the saved variable, not the constructor's `temperature=5.0`)
    path = tmp_path / "network.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    assert [float(layer.temperature.numpy()) for layer in restored.sfg_layers] == pytest.approx(
        [_SCHEDULE.value(1000)] * 2, rel=1e-6
    )
    assert restored.sfg_layers[0].initial_temperature == 5.0
    assert restored.temperature_schedule.get_config() == _SCHEDULE.get_config()


def test_functional_model_with_temperature_scheduler_callback():
    training = pytest.importorskip(
        "sfg_keras.training", reason="sfg_keras.training.TemperatureScheduler is not written yet"
    )
    inputs = keras.Input((6, 6, 1))
    streams = SFGConv(4, 3, seed=0, name="sfg_a")(inputs)
    streams = SFGConv(4, 3, seed=1, name="sfg_b")(streams)
    features = StreamMerge(2)(streams)
    pooled = [keras.layers.GlobalAveragePooling2D()(f) for f in features]
    model = keras.Model(inputs, [keras.layers.Dense(1)(pooled[0]), keras.layers.Dense(2)(pooled[1])])
    model.compile("adam", loss=[RMSE(), CrossEntropy()])
    x, y = _data()
    recorder = _Recorder()
    callbacks = [training.TemperatureScheduler(_SCHEDULE), recorder]
    model.fit(x, [y["a"], y["b"]], batch_size=4, epochs=1, verbose=0, callbacks=callbacks)
    model.optimizer.iterations.assign(1000)
    model.fit(x[:4], [y["a"][:4], y["b"][:4]], batch_size=4, epochs=1, verbose=0, callbacks=callbacks)
    _check_records(recorder.records, [0, 1, 1000])
    assert len(find_sfg_layers(model)) == 2


def test_find_and_apply_reach_nested_layers():
    inputs = keras.Input((6, 6, 1))
    first, second = SFGConv(3, 3, name="inner_sfg"), SFGConv(3, 3, name="outer_sfg")
    inner = keras.Model(inputs, first(inputs), name="inner")
    outer_inputs = keras.Input((6, 6, 1))
    outer = keras.Model(outer_inputs, second(inner(outer_inputs)), name="outer")
    assert find_sfg_layers(outer) == [first, second]
    assert find_sfg_layers(keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(2, 1)])) == []
    assert len(find_sfg_layers(_network())) == 2
    apply_temperature(outer, 1000, _SCHEDULE)
    for layer in (first, second):
        assert float(layer.temperature.numpy()) == pytest.approx(_SCHEDULE.value(1000), rel=1e-6)
