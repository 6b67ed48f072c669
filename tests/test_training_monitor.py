"""The progress bar shows what TensorBoard shows: interval means, task metrics by default, everything on request."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sfg_keras.losses import RMSE, CrossEntropy
from sfg_keras.models import NetworkOptions, TaskHead, sfg_small_cnn
from sfg_keras.training.monitor import INTERNAL_METRICS, TrainingMonitor

TASKS = [TaskHead("age", "regression", 1), TaskHead("gender", "classification", 2)]
SHOWN = {"loss", "age_loss", "gender_loss", "temperature", "age_mae", "gender_accuracy"}


def _train(log_dir, progress: str, verbose: int) -> tuple[TrainingMonitor, dict[int, dict[str, float]]]:
    keras.utils.set_random_seed(0)
    model = sfg_small_cnn(TASKS, NetworkOptions(init_mode="random", seed=0), widths=(4, 4))
    model.build((None, 8, 8, 1))
    model.compile(keras.optimizers.Adam(0.05), loss={"age": RMSE(), "gender": CrossEntropy()},
                  metrics={"age": [keras.metrics.MeanAbsoluteError(name="mae")],
                           "gender": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]})
    rng = np.random.default_rng(0)
    images = rng.normal(size=(48, 8, 8, 1)).astype("float32")
    targets = {"age": rng.normal(size=(48, 1)).astype("float32"), "gender": rng.integers(0, 2, 48)}
    dataset = tf.data.Dataset.from_tensor_slices((images, targets)).batch(8).repeat()
    monitor = TrainingMonitor(6, log_dir=log_dir, summary_every_n=3, verbose=verbose, progress=progress)
    model.fit(dataset, steps_per_epoch=6, epochs=1, callbacks=[monitor], verbose=0)
    accumulator = EventAccumulator(str(log_dir / "train"), size_guidance={"tensors": 0})
    accumulator.Reload()
    scalars: dict[int, dict[str, float]] = {}
    for tag in accumulator.Tags()["tensors"]:
        for event in accumulator.Tensors(tag):
            scalars.setdefault(event.step, {})[tag] = float(tf.make_ndarray(event.tensor_proto))
    return monitor, scalars


def _bar_values(text: str) -> dict[str, float]:
    """The metrics of the last line the Keras progress bar drew (ANSI codes and carriage returns removed)."""
    line = re.sub(r"\x1b\[[0-9;]*m", "", text).replace("\b", "").split("\r")[-1].strip().splitlines()[-1]
    return {key: float(value) for key, value in re.findall(r" - (\w+): (-?[\d.]+(?:e[-+]\d+)?)", line)}


def test_progress_bar_shows_the_interval_means_tensorboard_writes(tmp_path, capsys):
    monitor, scalars = _train(tmp_path, "tasks", verbose=1)
    assert sorted(scalars) == [3, 6]
    bar = _bar_values(capsys.readouterr().out)
    assert set(bar) == SHOWN  # task losses and metrics, loss and temperature; no internal term
    for key, value in bar.items():  # the last interval (steps 4-6), as TensorBoard's scalar at step 6
        assert value == pytest.approx(scalars[6][key], rel=2e-4, abs=2e-4), key
    # Not the running mean since the start, which Keras' own bar would show.
    assert bar["loss"] != pytest.approx(0.5 * (scalars[3]["loss"] + scalars[6]["loss"]), rel=1e-3)
    for key in INTERNAL_METRICS:  # hidden from the bar, kept in TensorBoard
        assert key in scalars[6]
    assert monitor.shown(scalars[6]).keys() == SHOWN


def test_progress_all_shows_the_internal_terms_and_quiet_lines_match(tmp_path, capsys):
    _, scalars = _train(tmp_path, "all", verbose=2)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("iteration 6/6: ")
    printed = dict(item.split("=") for item in line[len("iteration 6/6: "):].split(", "))
    assert set(printed) == SHOWN | set(INTERNAL_METRICS)
    for key, value in printed.items():
        assert float(value) == pytest.approx(scalars[6][key], rel=1e-3, abs=1e-6), key
    with pytest.raises(ValueError, match="progress"):
        TrainingMonitor(6, progress="everything")
