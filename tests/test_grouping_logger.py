"""TensorBoard grouping logger and temperature callback, read back from the event files."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sfg_keras.analysis import load_grouping_history, save_grouping_history
from sfg_keras.layers import SFGConv, TemperatureSchedule
from sfg_keras.losses import RMSE, CrossEntropy
from sfg_keras.models import NetworkOptions, TaskHead, sfg_small_cnn
from sfg_keras.training import GroupingLogger, TemperatureScheduler

SIZE = 8


def _data(tasks, n=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, SIZE, SIZE, 3)).astype("float32")
    y = {}
    for task in tasks:
        if task.is_categorical:
            y[task.name] = rng.integers(0, task.units, n)
        else:
            y[task.name] = rng.normal(size=(n, task.units)).astype("float32")
    return x, y


def _model(tasks):
    model = sfg_small_cnn(tasks, NetworkOptions(init_mode="random", seed=0), widths=(6, 6))
    model.build((None, SIZE, SIZE, 3))
    losses = {task.name: CrossEntropy() if task.is_categorical else RMSE() for task in tasks}
    model.compile(keras.optimizers.Adam(0.05), loss=losses)
    return model


def _events(log_dir):
    accumulator = EventAccumulator(str(log_dir / "grouping"), size_guidance={"tensors": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def _values(accumulator, tag):
    return {event.step: tf.make_ndarray(event.tensor_proto) for event in accumulator.Tensors(tag)}


def _assert_png_images(accumulator, tag):
    events = accumulator.Tensors(tag)
    assert events, tag
    for event in events:
        width, height, png = tf.make_ndarray(event.tensor_proto)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        image = tf.image.decode_png(png, channels=4).numpy()
        assert image.shape == (int(height), int(width), 4)
        assert image[..., :3].std() > 0  # not a blank image
    return events


TWO_TASKS = [TaskHead("age", "regression", 1), TaskHead("gender", "classification", 2)]


@pytest.fixture(scope="module")
def two_task_run(tmp_path_factory):
    keras.utils.set_random_seed(0)
    log_dir = tmp_path_factory.mktemp("logs_two_tasks")
    model = _model(TWO_TASKS)
    x, y = _data(TWO_TASKS)
    logger = GroupingLogger(log_dir, every_n_steps=2)  # images at the default cadence: every 2 steps
    validation = (x[:8], {k: v[:8] for k, v in y.items()})
    model.fit(x, y, batch_size=4, epochs=2, validation_data=validation, callbacks=[logger], verbose=0)
    return {
        "model": model,
        "log_dir": log_dir,
        "data": (x, y),
        "probabilities": model.grouping_probabilities(),
        "shares": model.group_shares(),
        "temperature": float(model.sfg_layers[0].temperature.numpy()),
    }


def test_logger_writes_scalars_histograms_and_logs(two_task_run):
    log_dir = two_task_run["log_dir"]
    accumulator = _events(log_dir)
    tags = set(accumulator.Tags()["tensors"])
    groups = ["age", "gender", "shared"]
    for layer in ("sfg_conv_1", "sfg_conv_2"):
        for group in groups:
            assert f"group_share/{layer}/{group}" in tags
            assert f"p/{layer}/{group}" in tags
        assert f"entropy/{layer}" in tags and f"temperature/{layer}" in tags
    for key in ("loss", "age_loss", "gender_loss", "data_loss", "weight_term", "entropy_term", "temperature"):
        assert f"train/{key}" in tags
        assert f"validation/{key}" in tags
    assert not [tag for tag in tags if tag.startswith("validation/val_")]
    # 8 steps in total, every 2 steps (plus the starting point at step 0).
    shares = _values(accumulator, "group_share/sfg_conv_1/age")
    assert sorted(shares) == [0, 2, 4, 6, 8]
    assert sorted(_values(accumulator, "train/loss")) == [2, 4, 6, 8]
    assert sorted(_values(accumulator, "validation/loss")) == [4, 8]
    for layer in ("sfg_conv_1", "sfg_conv_2"):
        per_group = [_values(accumulator, f"group_share/{layer}/{group}") for group in groups]
        for step in per_group[0]:
            assert abs(sum(float(values[step]) for values in per_group) - 1.0) < 1e-5
    final = two_task_run["shares"]["sfg_conv_2"]
    for group in groups:
        np.testing.assert_allclose(_values(accumulator, f"group_share/sfg_conv_2/{group}")[8], final[group], atol=1e-6)
    histogram = _values(accumulator, "p/sfg_conv_1/shared")[8]
    assert histogram.ndim == 2 and histogram.shape[1] == 3  # (left edge, right edge, count) buckets
    assert histogram[:, 2].sum() == pytest.approx(6)  # one entry per kernel
    temperature = _values(accumulator, "temperature/sfg_conv_1")[8]
    assert float(temperature) == pytest.approx(two_task_run["temperature"])


def test_logger_ternary_images_at_step_0_and_every_n_steps(two_task_run):
    accumulator = _events(two_task_run["log_dir"])
    for layer in ("sfg_conv_1", "sfg_conv_2"):
        events = _assert_png_images(accumulator, f"ternary/{layer}")
        assert [event.step for event in events] == [0, 2, 4, 6, 8]  # the initial state, then every_n_steps
    assert not [tag for tag in accumulator.Tags()["tensors"] if tag.startswith("group_shares/")]


def test_logger_history_file(two_task_run):
    log_dir = two_task_run["log_dir"]
    steps, history = load_grouping_history(log_dir / "grouping_history.npz")
    assert steps.tolist() == [0, 2, 4, 6, 8]
    assert set(history) == {"sfg_conv_1", "sfg_conv_2"}
    for name, array in history.items():
        assert array.shape == (5, 6, 3)
        np.testing.assert_allclose(array.sum(axis=-1), 1.0, atol=1e-5)
        np.testing.assert_allclose(array[-1], two_task_run["probabilities"][name], atol=1e-6)
    assert not np.allclose(history["sfg_conv_1"][0], history["sfg_conv_1"][-1])  # p was learned


def test_logger_resumes_history(two_task_run, tmp_path):
    model = two_task_run["model"]
    x, y = two_task_run["data"]
    log_dir = tmp_path / "resumed"
    old = model.grouping_probabilities()
    # A previous run logged up to step 40, but training restarts from the current step (8).
    stale = {name: np.repeat(p[None].astype("float32"), 3, axis=0) for name, p in old.items()}
    save_grouping_history(log_dir / "grouping_history.npz", [2, 4, 40], stale)
    model.fit(x, y, batch_size=4, epochs=1, callbacks=[GroupingLogger(log_dir, every_n_steps=2)], verbose=0)
    steps, history = load_grouping_history(log_dir / "grouping_history.npz")
    assert steps.tolist() == [2, 4, 8, 10, 12]
    assert np.all(np.diff(steps) > 0)
    assert all(array.shape == (5, 6, 3) for array in history.values())
    save_grouping_history(log_dir / "grouping_history.npz", [1], {"sfg_conv_1": np.full((1, 5, 3), 1 / 3)})
    with pytest.raises(ValueError, match="does not match the model"):
        model.fit(x[:4], {k: v[:4] for k, v in y.items()}, callbacks=[GroupingLogger(log_dir)], verbose=0)


def test_logger_three_tasks_writes_group_share_images(tmp_path):
    tasks = TWO_TASKS + [TaskHead("smile", "classification", 2)]
    model = _model(tasks)
    x, y = _data(tasks, n=8)
    logger = GroupingLogger(tmp_path, every_n_steps=1, image_every_n_steps=2)
    model.fit(x, y, batch_size=4, epochs=1, callbacks=[logger], verbose=0)
    accumulator = _events(tmp_path)
    tags = set(accumulator.Tags()["tensors"])
    for layer in ("sfg_conv_1", "sfg_conv_2"):
        events = _assert_png_images(accumulator, f"group_shares/{layer}")
        assert [event.step for event in events] == [0, 2]  # the start, then every image_every_n_steps
        per_group = [_values(accumulator, f"group_share/{layer}/{g}") for g in ("age", "gender", "smile", "shared")]
        assert sorted(per_group[0]) == [0, 1, 2]
        for step in per_group[0]:
            assert abs(sum(float(values[step]) for values in per_group) - 1.0) < 1e-5
    assert not [tag for tag in tags if tag.startswith("ternary/")]
    steps, history = load_grouping_history(tmp_path / "grouping_history.npz")
    assert steps.tolist() == [0, 1, 2]
    assert history["sfg_conv_1"].shape == (3, 6, 4)


def test_logger_evaluate_writes_validation(two_task_run, tmp_path):
    model = two_task_run["model"]
    x, y = two_task_run["data"]
    model.evaluate(x[:8], {k: v[:8] for k, v in y.items()}, callbacks=[GroupingLogger(tmp_path)], verbose=0)
    accumulator = _events(tmp_path)
    loss = _values(accumulator, "validation/loss")
    assert list(loss) == [int(model.optimizer.iterations.numpy())]


def test_logger_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="every_n_steps"):
        GroupingLogger(tmp_path, every_n_steps=0)
    with pytest.raises(ValueError, match="history_file"):
        GroupingLogger(tmp_path, history_file="sub/history.npz")
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    plain.compile("sgd", "mse")
    with pytest.raises(ValueError, match="no SFGConv"):
        plain.fit(np.zeros((4, 4)), np.zeros((4, 1)), callbacks=[GroupingLogger(tmp_path)], verbose=0)
    model = _model(TWO_TASKS)
    x, y = _data(TWO_TASKS, n=4)
    with pytest.raises(ValueError, match="task names"):
        model.fit(x, y, callbacks=[GroupingLogger(tmp_path, task_names=["a", "b", "c"])], verbose=0)


def test_temperature_scheduler_and_logger_on_a_functional_model(tmp_path):
    images = keras.Input((SIZE, SIZE, 3))
    sfg = SFGConv(4, 3, num_tasks=2, seed=0, name="sfg")
    streams = sfg(images)
    merged = keras.layers.Add()(streams)
    outputs = keras.layers.Dense(1)(keras.layers.GlobalAveragePooling2D()(merged))
    model = keras.Model(images, outputs)
    model.compile(keras.optimizers.SGD(0.01), "mse")
    schedule = TemperatureSchedule(tau0=1.0, decay_rate=0.5, tau_min=0.3)
    seen = []
    recorder = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: seen.append(float(sfg.temperature.numpy()))
    )
    x = np.random.default_rng(0).normal(size=(16, SIZE, SIZE, 3)).astype("float32")
    model.fit(
        x,
        np.zeros((16, 1), "float32"),
        batch_size=4,
        callbacks=[TemperatureScheduler(schedule), recorder, GroupingLogger(tmp_path, every_n_steps=2)],
        verbose=0,
    )
    np.testing.assert_allclose(seen, [schedule.value(step) for step in range(4)], rtol=1e-6)
    assert seen[-1] == pytest.approx(0.3)  # the floor
    tags = set(_events(tmp_path).Tags()["tensors"])
    assert {"group_share/sfg/task_1", "group_share/sfg/task_2", "group_share/sfg/shared", "ternary/sfg"} <= tags
    with pytest.raises(ValueError, match="TemperatureSchedule"):
        TemperatureScheduler({"tau0": 1.0})


def test_callbacks_work_on_a_model_that_is_not_built_yet(tmp_path):
    keras.utils.set_random_seed(0)
    # never built nor called
    model = sfg_small_cnn(TWO_TASKS, NetworkOptions(init_mode="random", seed=0), widths=(6, 6))
    initial = {name: p.copy() for name, p in model.grouping_probabilities().items()}
    model.compile(keras.optimizers.Adam(0.05), loss={"age": RMSE(), "gender": CrossEntropy()})
    x, y = _data(TWO_TASKS)
    schedule = TemperatureSchedule(tau0=1.0, decay_rate=0.1, tau_min=0.1)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0,
              callbacks=[GroupingLogger(str(tmp_path), every_n_steps=2), TemperatureScheduler(schedule)])
    accumulator = _events(tmp_path)
    shares = _values(accumulator, "group_share/sfg_conv_1/shared")
    assert sorted(shares) == [0, 2, 4]
    assert float(shares[0]) == pytest.approx(float(initial["sfg_conv_1"][:, 2].mean()), abs=1e-6)
    # SFGNetwork sets its own schedule inside every train step (the callback is for functional models): no crash,
    # and the network's schedule is the one in force.
    assert float(model.sfg_layers[0].temperature.numpy()) == pytest.approx(model.temperature_schedule.value(3))
