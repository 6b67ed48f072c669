"""`GroupingLogger`: TensorBoard summaries of the learned grouping of SFG layers during `model.fit`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from sfg_keras.analysis.grouping_summary import group_names, kernel_entropies
from sfg_keras.analysis.plots import figure_to_png, plot_group_share_image, plot_ternary_density
from sfg_keras.analysis.report import load_grouping_history, save_grouping_history
from sfg_keras.layers.temperature_schedule import find_sfg_layers

_VALIDATION_PREFIX = "val_"


def _scalar(value) -> float | None:
    """A log value as a Python float, or None when it is not a numeric scalar."""
    try:
        array = np.asarray(ops.convert_to_numpy(value) if not isinstance(value, (int, float)) else value)
    except (TypeError, ValueError):
        return None
    if array.size != 1 or not np.issubdtype(array.dtype, np.number):
        return None
    return float(array.reshape(()))


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive int. Received: {name}={value!r}")
    return int(value)


class GroupingLogger(keras.callbacks.Callback):
    """Writes the grouping of every `SFGConv` layer to TensorBoard while a model trains.

    Works from plain `model.fit` on any Keras model containing `SFGConv` layers (an `SFGNetwork` or a user's own
    model). At the start of training and then every `every_n_steps` optimizer steps it writes, into
    `<log_dir>/grouping`:

    * `train/<key>` (not at the start): every scalar of the batch logs (per-task losses and metrics; for an
      `SFGNetwork` also `data_loss`, `weight_term`, `entropy_term` and `temperature`);
    * per SFG layer: `group_share/<layer>/<group>` (share of kernels in each group, paper Fig. 6; the shares of a
      layer sum to 1), `entropy/<layer>` (mean kernel entropy of `p`, nats), `temperature/<layer>` and the
      histograms `p/<layer>/<group>` of the kernels' probabilities;
    * at the start of training (step 0 of a new run), every `image_every_n_steps` (by default every
      `every_n_steps`) and at the end of training, one image per layer: for two tasks the ternary density of the
      kernels' `p` (`ternary/<layer>`, supplementary Fig. 2), otherwise every kernel's `p` as an image
      (`group_shares/<layer>`). An image costs a matplotlib render (under a second of one CPU core per layer);
      raise `image_every_n_steps` for long runs with many layers.

    At the end of each epoch the validation logs (`val_*` keys) are written as `validation/<key without val_>`;
    from a standalone `model.evaluate(..., callbacks=[logger])` the evaluation logs are written the same way.
    Steps are the optimizer's iteration count, so a resumed run continues the same curves; with
    `steps_per_execution > 1` a period is logged at the first batch end that reaches or passes it.

    The logger also keeps a snapshot of every layer's `p` each time it writes, and saves the history to
    `<log_dir>/<history_file>` (`steps` and `<layer_name>` -> `[N, K, T + 1]`, see
    `sfg_keras.analysis.load_grouping_history`) every `history_every_n_steps` and at the end of training. When the
    file exists at the start of training (a resumed run) it is loaded and extended; snapshots at or after the first
    new step are dropped so the steps stay increasing. `sfg_keras.analysis.write_grouping_report` plots it.

    Args:
        log_dir: str or Path. TensorBoard log folder (summaries go to `<log_dir>/grouping`).
        every_n_steps: int. Period of scalars, histograms and history snapshots, in optimizer steps. Defaults to
            20.
        task_names: list of str or None. Task names for the group tags. Defaults to `model.task_names` if the
            model has it, else `task_1, ..., task_T`.
        history_file: str. File name of the history inside `log_dir`. Defaults to `"grouping_history.npz"`.
        image_every_n_steps: int or None. Period of the images. Defaults to `every_n_steps`.
        history_every_n_steps: int or None. How often the history file is rewritten (it grows with every
            snapshot: `4 * K * (T + 1)` bytes per layer). Defaults to `every_n_steps`.
        log_metrics: bool. Also write the Keras training and validation logs (`train/...`, `validation/...`).
            Disable it when another callback writes them (sfg_run's `TrainingMonitor`). Defaults to True.

    Example:

    ```python
    model.fit(dataset, epochs=10, validation_data=validation,
              callbacks=[GroupingLogger("model_dir/logs", every_n_steps=50)])
    # tensorboard --logdir model_dir/logs
    ```
    """

    def __init__(
        self,
        log_dir: str | Path,
        every_n_steps: int = 20,
        task_names: Sequence[str] | None = None,
        history_file: str = "grouping_history.npz",
        image_every_n_steps: int | None = None,
        history_every_n_steps: int | None = None,
        log_metrics: bool = True,
    ):
        super().__init__()
        self.log_dir = Path(log_dir)
        self.log_metrics = bool(log_metrics)
        self.every_n_steps = _positive_int(every_n_steps, "every_n_steps")
        self.image_every_n_steps = _positive_int(
            self.every_n_steps if image_every_n_steps is None else image_every_n_steps, "image_every_n_steps"
        )
        self.history_every_n_steps = _positive_int(
            self.every_n_steps if history_every_n_steps is None else history_every_n_steps, "history_every_n_steps"
        )
        if not history_file or Path(history_file).name != history_file:
            raise ValueError(f"`history_file` must be a plain file name. Received: history_file={history_file!r}")
        self.task_names = None if task_names is None else list(task_names)
        self.history_path = self.log_dir / history_file
        self.history_steps: list[int] = []
        self.history: dict[str, list[np.ndarray]] = {}
        self._writer = None
        self._layers: dict[str, keras.layers.Layer] = {}
        self._groups: list[str] = []
        self._in_fit = False
        self._last_layer_step: int | None = None
        self._last_image_step: int | None = None
        self._previous_step = 0

    # === Setup ===

    def _resolve_layers(self) -> None:
        layers = find_sfg_layers(self.model)
        if not layers:
            raise ValueError(f"GroupingLogger: model {self.model.name!r} contains no SFGConv layer to log.")
        num_tasks = layers[0].num_tasks
        if any(layer.num_tasks != num_tasks for layer in layers):
            raise ValueError(
                "GroupingLogger: all SFGConv layers need the same number of tasks. Received "
                f"{[(layer.name, layer.num_tasks) for layer in layers]}"
            )
        names = self.task_names
        if names is None:
            names = list(getattr(self.model, "task_names", None) or [f"task_{t + 1}" for t in range(num_tasks)])
        if len(names) != num_tasks:
            raise ValueError(
                f"GroupingLogger: the SFG layers have {num_tasks} tasks but {len(names)} task names were given: "
                f"task_names={names!r}"
            )
        self._groups = group_names(names)
        self._layers = {}
        for layer in layers:
            key = layer.name if layer.name not in self._layers else f"{layer.name}_{len(self._layers)}"
            self._layers[key] = layer

    def _ensure_writer(self):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(str(self.log_dir / "grouping"))
        return self._writer

    def _load_history(self) -> None:
        self.history_steps, self.history = [], {name: [] for name in self._layers}
        if not self.history_path.exists():
            return
        steps, history = load_grouping_history(self.history_path)
        for name, layer in self._layers.items():
            expected = (layer.filters, layer.num_groups)
            if name not in history or history[name].shape[1:] != expected:
                found = None if name not in history else history[name].shape[1:]
                raise ValueError(
                    f"GroupingLogger: history file {str(self.history_path)!r} does not match the model: layer "
                    f"{name!r} needs snapshots of shape {expected}, the file has {found}. Use another `log_dir` "
                    "or `history_file` for a different model."
                )
        self.history_steps = [int(s) for s in steps]
        self.history = {name: list(history[name]) for name in self._layers}

    def _step(self) -> int:
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            return 0
        return int(ops.convert_to_numpy(optimizer.iterations))

    # === Writing ===

    def _write_logs(self, prefix: str, logs: dict | None, step: int, strip: str = "") -> None:
        if not logs:
            return
        with self._ensure_writer().as_default(step=step):
            for key, value in logs.items():
                if strip and not key.startswith(strip):
                    continue
                scalar = _scalar(value)
                if scalar is not None:
                    tf.summary.scalar(f"{prefix}/{key[len(strip):]}", scalar)

    def _write_layers(self, step: int, scalars: bool, images: bool) -> None:
        probabilities = {name: layer.grouping_probabilities() for name, layer in self._layers.items()}
        task_names = self._groups[:-1]
        with self._ensure_writer().as_default(step=step):
            for name, p in probabilities.items():
                if scalars:
                    for index, (group, share) in enumerate(zip(self._groups, p.mean(axis=0))):
                        tf.summary.scalar(f"group_share/{name}/{group}", float(share))
                        tf.summary.histogram(f"p/{name}/{group}", p[:, index])
                    tf.summary.scalar(f"entropy/{name}", float(np.mean(kernel_entropies(p))))
                    temperature = float(ops.convert_to_numpy(self._layers[name].temperature))
                    tf.summary.scalar(f"temperature/{name}", temperature)
                if images:
                    if len(task_names) == 2:
                        figure = plot_ternary_density(p, task_names, title=f"{name} (step {step})")
                        tag = f"ternary/{name}"
                    else:
                        figure = plot_group_share_image(p, task_names, title=f"{name} (step {step})")
                        tag = f"group_shares/{name}"
                    image = tf.image.decode_png(figure_to_png(figure), channels=4)
                    tf.summary.image(tag, image[None], max_outputs=1)
        if scalars:
            self._snapshot(step, probabilities)
            self._last_layer_step = step
        if images:
            self._last_image_step = step

    def _snapshot(self, step: int, probabilities: dict[str, np.ndarray]) -> None:
        # Drop snapshots at or after this step (a resumed run restarting from an earlier checkpoint).
        keep = sum(1 for s in self.history_steps if s < step)
        self.history_steps = self.history_steps[:keep] + [step]
        for name, p in probabilities.items():
            self.history[name] = self.history[name][:keep] + [p.astype(np.float32)]

    def save_history(self) -> Path | None:
        """Writes the snapshots taken so far to `<log_dir>/<history_file>` (None if there are none)."""
        if not self.history_steps:
            return None
        return save_grouping_history(self.history_path, self.history_steps, self.history)

    # === Keras hooks ===

    def on_train_begin(self, logs=None):
        self._resolve_layers()
        self._load_history()
        self._in_fit = True
        self._last_image_step = None
        # The starting point of this run (step 0 of a new run): first snapshot of the trajectories and first images.
        # A resumed run whose start is already in the history (written by the run it continues, with its images at
        # its last step) does not write it twice.
        self._previous_step = self._step()
        if self._previous_step not in self.history_steps:
            self._write_layers(self._previous_step, scalars=True, images=True)
        else:
            self._last_layer_step = self._previous_step

    @staticmethod
    def _crossed(previous: int, step: int, period: int) -> bool:
        """Whether a multiple of `period` lies in `(previous, step]` (exact with `steps_per_execution > 1`)."""
        return step // period > previous // period

    def on_train_batch_end(self, batch, logs=None):
        step = self._step()
        previous, self._previous_step = self._previous_step, step
        if self._crossed(previous, step, self.every_n_steps):
            if self.log_metrics:
                self._write_logs("train", logs, step)
            self._write_layers(step, scalars=True, images=self._crossed(previous, step, self.image_every_n_steps))
            if self._crossed(previous, step, self.history_every_n_steps):
                self.save_history()

    def on_epoch_end(self, epoch, logs=None):
        if not self.log_metrics:
            return
        self._write_logs("validation", logs, self._step(), strip=_VALIDATION_PREFIX)
        self._ensure_writer().flush()

    def on_test_end(self, logs=None):
        if self.log_metrics and not self._in_fit:
            self._write_logs("validation", logs, self._step())
            self._ensure_writer().flush()

    def on_train_end(self, logs=None):
        step = self._step()
        scalars, images = self._last_layer_step != step, self._last_image_step != step
        if scalars or images:
            self._write_layers(step, scalars=scalars, images=images)
        self.save_history()
        self._ensure_writer().flush()
        self._in_fit = False
