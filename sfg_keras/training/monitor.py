"""`TrainingMonitor`: progress to `max_iter`, periodic metric summaries and validation, for one `fit` over a run.

`model.fit` over a whole run is a single epoch whose Keras logs are running means since the metrics were last reset.
The monitor turns that into what a long run needs:

* TensorBoard scalars every `summary_every_n` iterations, each the mean over the interval since the previous summary
  (the metrics are reset after each summary; with summaries off, every `DEFAULT_INTERVAL` iterations);
* a progress bar that counts optimizer iterations to `max_iter` (also after a resume) and shows the same interval
  means, as they are (Keras' own bar would average them again since the start of the run): at a summary iteration
  the bar shows exactly the values written to TensorBoard. By default it shows the task losses and metrics, `loss`
  and `temperature`; the internal terms (`INTERNAL_METRICS`: `data_loss`, `weight_term`, `entropy_term`,
  `non_finite_step`) go to TensorBoard only, unless `progress="all"`;
* validation every `validation_every_n` iterations and at the end, written to TensorBoard at the iteration it ran,
  printed, and kept in `history`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

#: Logged by `SFGNetwork` for TensorBoard, hidden from the progress bar unless `progress="all"`.
INTERNAL_METRICS = ("data_loss", "weight_term", "entropy_term", "non_finite_step")
#: Interval of the means when TensorBoard summaries are off.
DEFAULT_INTERVAL = 20
PROGRESS_CHOICES = ("tasks", "all")


def _scalars(logs: dict | None) -> dict[str, float]:
    values = {}
    for key, value in (logs or {}).items():
        try:
            array = np.asarray(keras.ops.convert_to_numpy(value), dtype=np.float64)
        except (TypeError, ValueError):
            continue
        if array.size == 1:
            values[key] = float(array.reshape(()))
    return values


class _IterationProgbar(keras.utils.Progbar):
    """A `Progbar` over `[0, target]` that starts at `offset` and estimates its ETA from the steps of this run."""

    def __init__(self, target: int, offset: int, **kwargs):
        super().__init__(target, **kwargs)
        self.offset = int(offset)

    def _estimate_step_duration(self, current, now):
        return super()._estimate_step_duration(max(0, current - self.offset), now)


class TrainingMonitor(keras.callbacks.Callback):
    """Progress bar, interval-mean TensorBoard scalars and periodic validation for a run trained by one `fit`.

    Args:
        max_iter: int. Last optimizer iteration of the run (the progress bar's target).
        log_dir: folder of the TensorBoard event files (`train/`, `validation/`); None writes no summaries.
        summary_every_n: int. Period of the training scalars in optimizer iterations; 0 disables them.
        validation_data: a repeated validation `tf.data.Dataset`, or None.
        validation_every_n: int. Period of validation in iterations (also run at the end); 0 disables it.
        validation_steps: int. Batches per validation (the dataset is read from its start every time).
        verbose: 1 for a progress bar, 2 for one line per validation and at the end, 0 for silence.
        progress: `"tasks"` (the bar and printed lines show the task losses and metrics, `loss` and `temperature`)
            or `"all"` (also `INTERNAL_METRICS`). TensorBoard always gets everything. Defaults to `"tasks"`.

    Example:

    ```python
    monitor = TrainingMonitor(max_iter=1000, log_dir="model_dir/logs", summary_every_n=20,
                              validation_data=val, validation_every_n=100, validation_steps=10)
    model.fit(train, steps_per_epoch=1000 - start, epochs=1, verbose=0, callbacks=[monitor])
    ```
    """

    def __init__(
        self,
        max_iter: int,
        log_dir: str | os.PathLike | None = None,
        summary_every_n: int = 0,
        validation_data=None,
        validation_every_n: int = 0,
        validation_steps: int = 1,
        verbose: int = 1,
        progress: str = "tasks",
    ):
        super().__init__()
        if progress not in PROGRESS_CHOICES:
            raise ValueError(f"`progress` must be one of {PROGRESS_CHOICES}. Received: progress={progress!r}")
        self.progress = progress
        for name, value in (("max_iter", max_iter), ("summary_every_n", summary_every_n),
                            ("validation_every_n", validation_every_n), ("validation_steps", validation_steps)):
            if int(value) < 0:
                raise ValueError(f"`{name}` must be >= 0. Received: {name}={value!r}")
        self.max_iter = int(max_iter)
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.summary_every_n = int(summary_every_n)
        self.validation_data = validation_data
        self.validation_every_n = int(validation_every_n) if validation_data is not None else 0
        self.validation_steps = max(1, int(validation_steps))
        self.verbose = int(verbose)
        self.history: dict[int, dict[str, float]] = {}
        self._writers: dict[str, tf.summary.SummaryWriter] = {}
        self._progbar = None
        self._previous = 0
        self._last_logs: dict[str, float] = {}

    def _iteration(self) -> int:
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def _writer(self, name: str):
        if self.log_dir is None:
            return None
        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(str(self.log_dir / name))
        return self._writers[name]

    def _write(self, name: str, values: dict[str, float], step: int) -> None:
        writer = self._writer(name)
        if writer is None or not values:
            return
        with writer.as_default(step=step):
            for key, value in values.items():
                tf.summary.scalar(key, value)
        writer.flush()

    @staticmethod
    def _crossed(previous: int, step: int, period: int) -> bool:
        return period > 0 and step // period > previous // period

    @property
    def interval(self) -> int:
        """Iterations over which the shown and written values are means (`summary_every_n`, or
        `DEFAULT_INTERVAL` when summaries are off)."""
        return self.summary_every_n or DEFAULT_INTERVAL

    def shown(self, values: dict[str, float]) -> dict[str, float]:
        """The values the progress bar and the printed lines show (all of them with `progress="all"`)."""
        if self.progress == "all":
            return dict(values)
        return {key: value for key, value in values.items() if key not in INTERNAL_METRICS}

    def _text(self, values: dict[str, float]) -> str:
        return ", ".join(f"{key}={value:.4g}" for key, value in self.shown(values).items())

    def validate(self, step: int) -> dict[str, float]:
        """Evaluates `validation_steps` batches from the start of the validation data; writes and returns the
        metrics (and resets the metrics so the next training summary covers training batches only)."""
        results = self.model.evaluate(self.validation_data, steps=self.validation_steps, verbose=0, return_dict=True)
        values = _scalars(results)
        self.model.reset_metrics()
        self.history[step] = values
        self._write("validation", values, step)
        if self.verbose:
            self._print(f"validation at iteration {step}: {self._text(values)}")
        return values

    def _print(self, message: str) -> None:
        if self.verbose == 1 and self._progbar is not None:
            sys.stdout.write("\n")
        print(message, flush=True)

    def on_train_begin(self, logs=None):
        self._previous = self._iteration()
        if self.verbose == 1:
            # Every value is shown as given (the interval mean so far), never averaged again by the bar.
            self._progbar = _IterationProgbar(self.max_iter, offset=self._previous, unit_name="iteration",
                                              stateless_metrics=())
            self._progbar.update(self._previous)

    def on_train_batch_end(self, batch, logs=None):
        step = self._iteration()
        previous, self._previous = self._previous, step
        values = _scalars(logs)
        self._last_logs = values
        if self._progbar is not None:
            self._progbar.update(step, values=list(self.shown(values).items()), finalize=False)
        if self._crossed(previous, step, self.interval):
            if self.summary_every_n:
                self._write("train", values, step)
            self.model.reset_metrics()
        if self._crossed(previous, step, self.validation_every_n):
            self.validate(step)

    def on_train_end(self, logs=None):
        step = self._iteration()
        if self.validation_every_n and step not in self.history:
            self.validate(step)
        if self._progbar is not None:
            self._progbar.update(step, values=list(self.shown(self._last_logs).items()), finalize=True)
        elif self.verbose == 2:
            print(f"iteration {step}/{self.max_iter}: {self._text(self._last_logs)}", flush=True)
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
