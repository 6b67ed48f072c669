"""Periodic `.keras` checkpoints written atomically, and finding the latest one to resume from."""

from __future__ import annotations

import os
import re
from pathlib import Path

import keras
import numpy as np

from sfg_keras.io.atomic import atomic_path

_PATTERN = re.compile(r"^model-(\d+)\.keras$")


def checkpoint_path(checkpoint_dir: str | os.PathLike, step: int) -> Path:
    """`<checkpoint_dir>/model-<step>.keras`."""
    return Path(checkpoint_dir) / f"model-{int(step)}.keras"


def list_checkpoints(checkpoint_dir: str | os.PathLike) -> dict[int, Path]:
    """Every complete checkpoint in the folder, by step (partial `.tmp` files are ignored)."""
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        return {}
    found = {}
    for path in folder.iterdir():
        match = _PATTERN.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def find_checkpoint(checkpoint_dir: str | os.PathLike, step: int = -1) -> Path | None:
    """The checkpoint of `step`, or the latest one for `step=-1`; None if there is none.

    Raises:
        FileNotFoundError: a specific `step` was asked for and is not in the folder (the message lists those
            that are).
    """
    checkpoints = list_checkpoints(checkpoint_dir)
    if step == -1:
        return checkpoints[max(checkpoints)] if checkpoints else None
    if step not in checkpoints:
        raise FileNotFoundError(
            f"No checkpoint for iteration {step} in {checkpoint_dir}. Available iterations: {list(checkpoints)}"
        )
    return checkpoints[step]


def check_finite_weights(model: keras.Model, path: str | os.PathLike) -> None:
    """Raises `ValueError` naming `path` and the first non-finite variables when a weight of `model` or a variable
    of its optimizer holds NaN or infinity (such a checkpoint is never written).

    Example:

    ```python
    check_finite_weights(model, "model_dir/models/model-10.keras")
    ```
    """
    variables = list(model.weights)
    if getattr(model, "optimizer", None) is not None:
        variables += list(model.optimizer.variables)
    bad = [
        f"{getattr(v, 'path', v.name)}"
        for v in variables
        if np.issubdtype(np.dtype(v.dtype), np.floating) and not np.all(np.isfinite(np.asarray(v.numpy())))
    ]
    if bad:
        raise ValueError(
            f"Not writing {path}: {len(bad)} variable(s) hold NaN or infinite values ({', '.join(bad[:5])}"
            f"{' ...' if len(bad) > 5 else ''}); the earlier checkpoints are kept. Expected finite weights."
        )


def save_checkpoint(model: keras.Model, checkpoint_dir: str | os.PathLike, step: int, max_to_keep: int = 5) -> Path:
    """Saves `model` (with its optimizer state) as `model-<step>.keras`, atomically, keeping the newest
    `max_to_keep` checkpoints. A run killed while saving leaves the previous checkpoints intact."""
    folder = Path(checkpoint_dir)
    final = checkpoint_path(folder, step)
    check_finite_weights(model, final)
    with atomic_path(final, suffix=".keras") as temporary:
        model.save(temporary)
    checkpoints = list_checkpoints(folder)
    for old_step in list(checkpoints)[: max(0, len(checkpoints) - max_to_keep)]:
        checkpoints[old_step].unlink(missing_ok=True)
    return final


class PeriodicCheckpoint(keras.callbacks.Callback):
    """Saves a checkpoint every `every_n_steps` optimizer steps and at the end of training.

    Args:
        checkpoint_dir: folder of the `model-<step>.keras` files.
        every_n_steps: int. Period in optimizer iterations.
        max_to_keep: int. Number of checkpoints kept. Defaults to 5.

    Example:

    ```python
    model.fit(ds, callbacks=[PeriodicCheckpoint("model_dir/models", every_n_steps=500)])
    ```
    """

    def __init__(self, checkpoint_dir: str | os.PathLike, every_n_steps: int, max_to_keep: int = 5):
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"`every_n_steps` must be >= 1. Received: every_n_steps={every_n_steps}")
        self.checkpoint_dir = Path(checkpoint_dir)
        self.every_n_steps = int(every_n_steps)
        self.max_to_keep = int(max_to_keep)
        self.last_saved: int | None = None

    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def _save(self) -> None:
        step = self._step()
        if step != self.last_saved:
            save_checkpoint(self.model, self.checkpoint_dir, step, self.max_to_keep)
            self.last_saved = step

    def on_train_batch_end(self, batch, logs=None):
        if self._step() % self.every_n_steps == 0:
            self._save()

    def on_train_end(self, logs=None):
        self._save()
