"""Checkpoints you can trust: `.keras` files written atomically and durably, each recorded in the checkpoint lineage
with the run that wrote it, its parent and its SHA-256, so that a corrupt, replaced or foreign file is recognised and
the newest valid checkpoint is used instead (with a warning, never silently).

`model_dir/lineage.json` (`CheckpointLineage`) holds:

* `runs`: every training run of the model_dir: its id, start time, host and pid, the checkpoint it started from
  (`null` from scratch), its first iteration and `max_iter`, and the branch it archived;
* `checkpoints`: per checkpoint file (relative to model_dir) its iteration, run, parent (the previous checkpoint of
  the same history), SHA-256 and size; entries of pruned files stay, marked `removed`;
* `branches`: the checkpoints set aside by `train --starting_iter=N --archive_branch=NAME` into
  `model_dir/branches/NAME/models/`.

Paths are relative to model_dir: a copied or moved model_dir keeps its lineage.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import uuid
import zipfile
from pathlib import Path

import keras
import numpy as np

from sfg_keras.io.atomic import atomic_path, atomic_write_json
from sfg_keras.io.input_checks import file_sha256

_PATTERN = re.compile(r"^model-(\d+)\.keras$")  # the one place that parses checkpoint file names
CHECKPOINT_DIR = "models"  # model_dir/models/ holds the checkpoints (and branches/<name>/models/ the archived ones)
LINEAGE_FILE = "lineage.json"
LINEAGE_VERSION = 1
BRANCHES_DIR = "branches"
CORRUPT_DIR = "corrupt"  # in the checkpoint folder: invalid checkpoints a resumed run set aside
_BRANCH_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def checkpoint_path(checkpoint_dir: str | os.PathLike, step: int) -> Path:
    """`<checkpoint_dir>/model-<step>.keras`: the one place that builds checkpoint file names.

    Example:

    ```python
    checkpoint_path(Path("model_dir") / CHECKPOINT_DIR, 40)  # Path("model_dir/models/model-40.keras")
    ```
    """
    return Path(checkpoint_dir) / f"model-{int(step)}.keras"


def checkpoint_step(path: str | os.PathLike) -> int:
    """The iteration of a `model-<step>.keras` file.

    Example:

    ```python
    checkpoint_step("model_dir/models/model-40.keras")  # 40
    ```
    """
    step = _step_of(Path(path).name)
    if step is None:
        raise ValueError(f"{path} is not a checkpoint file name; expected model-<iteration>.keras")
    return step


def _step_of(name: str) -> int | None:
    """The iteration of the checkpoint file name `name`, or None for any other name."""
    match = _PATTERN.match(name)
    return int(match.group(1)) if match else None


def list_checkpoints(checkpoint_dir: str | os.PathLike) -> dict[int, Path]:
    """Every checkpoint file in the folder, by step (temporary files of a write in progress are ignored).

    Example:

    ```python
    list_checkpoints("model_dir/models")  # {20: Path("model_dir/models/model-20.keras"), 40: ...}, oldest first
    ```
    """
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        return {}
    found = {}
    for path in folder.iterdir():
        step = _step_of(path.name)
        if step is not None and path.is_file():
            found[step] = path
    return dict(sorted(found.items()))


def find_checkpoint(checkpoint_dir: str | os.PathLike, step: int = -1) -> Path | None:
    """The checkpoint file of `step`, or the latest one for `step=-1`; None if there is none (the file is not
    checked: see `select_checkpoint`).

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


class CheckpointLineage:
    """`model_dir/lineage.json`: which run wrote each checkpoint, from which parent, with which content.

    Args:
        model_dir: the model folder (the lineage file is read if it exists; nothing is written until a run starts).

    Example:

    ```python
    lineage = CheckpointLineage("runs/mr_ct")
    lineage.start_run(parent=None, first_iteration=0, max_iter=600)
    PeriodicCheckpoint("runs/mr_ct/models", 100, lineage=lineage)  # each save is recorded before it is renamed
    lineage.problem("runs/mr_ct/models/model-600.keras")  # None: the file is the one that run wrote
    ```
    """

    def __init__(self, model_dir: str | os.PathLike):
        self.model_dir = Path(model_dir)
        self.path = self.model_dir / LINEAGE_FILE
        self.data: dict = {"version": LINEAGE_VERSION, "runs": [], "checkpoints": {}, "branches": {}}
        self.run_id: str | None = None
        self.last: str | None = None  # the newest checkpoint of the current run's history
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except ValueError as error:
                raise ValueError(
                    f"{self.path} is not valid JSON ({error}): the checkpoint lineage of this model_dir is damaged. "
                    "Restore it from a backup, or move it away to treat the checkpoints as unrecorded."
                ) from error
            for key in ("runs", "checkpoints", "branches"):
                data.setdefault(key, [] if key == "runs" else {})
            self.data = data

    @property
    def recorded(self) -> bool:
        """Whether the model_dir has a lineage file (model_dirs of older versions do not)."""
        return self.path.is_file()

    def key(self, path: str | os.PathLike) -> str:
        """`path` relative to model_dir, with `/` separators (how files are named in the lineage)."""
        path = Path(path)
        try:
            return path.absolute().relative_to(self.model_dir.absolute()).as_posix()
        except ValueError:
            return Path(os.path.relpath(path.absolute(), self.model_dir.absolute())).as_posix()

    def entry(self, path: str | os.PathLike) -> dict | None:
        """The lineage entry of a checkpoint file, or None."""
        return self.data["checkpoints"].get(self.key(path))

    def save(self) -> None:
        """Writes the lineage atomically."""
        atomic_write_json(self.path, self.data)

    def start_run(self, parent: str | os.PathLike | None, first_iteration: int, max_iter: int,
                  archived_branch: str | None = None) -> str:
        """Records a new training run starting from checkpoint `parent` (None: from scratch) and returns its id."""
        self.run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.last = self.key(parent) if parent is not None else None
        self.data["runs"].append({
            "id": self.run_id, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(),
            "pid": os.getpid(), "from": self.last, "first_iteration": int(first_iteration) + 1,
            "max_iter": int(max_iter), "archived_branch": archived_branch,
        })
        self.save()
        return self.run_id

    def adopt(self, paths: list[Path]) -> None:
        """Records checkpoint files written before lineages existed (an older sfg-keras), in iteration order, each
        the parent of the next, with the content they have now (run `null`, marked `adopted`)."""
        parent = None
        for path in sorted(paths, key=checkpoint_step):
            key = self.key(path)
            if key not in self.data["checkpoints"]:
                self.data["checkpoints"][key] = {
                    "iteration": checkpoint_step(path), "run": None, "parent": parent, "sha256": file_sha256(path),
                    "size": path.stat().st_size, "adopted": "written before checkpoint lineages were recorded",
                }
            parent = key

    def record(self, path: str | os.PathLike, step: int, sha256: str, size: int) -> None:
        """Records the checkpoint `path` of iteration `step` written by the current run (call before it is renamed
        into place: an entry without its file is harmless, a file without its entry would be foreign)."""
        key = self.key(path)
        self.data["checkpoints"][key] = {
            "iteration": int(step), "run": self.run_id, "parent": self.last if self.last != key else
            self.data["checkpoints"].get(key, {}).get("parent"), "sha256": sha256, "size": int(size),
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self.last = key
        self.save()

    def mark_removed(self, paths: list[Path], reason: str) -> None:
        """Marks the entries of deleted or set-aside checkpoint files (the history stays readable)."""
        changed = False
        for path in paths:
            entry = self.data["checkpoints"].get(self.key(path))
            if entry is not None:
                entry["removed"] = reason
                changed = True
        if changed:
            self.save()

    def problem(self, path: str | os.PathLike) -> str | None:
        """Why the checkpoint file `path` cannot be trusted, or None when it is the file its run wrote.

        With a lineage: its size and SHA-256 must equal the recorded ones, and it must be recorded at all. Without
        one (a model_dir of an older version): it must be a complete `.keras` (zip) archive.
        """
        path = Path(path)
        entry = self.entry(path)
        if entry is not None:
            size = path.stat().st_size
            if size != entry.get("size"):
                return (f"its size is {size} bytes, but the run that wrote it recorded {entry.get('size')} bytes in "
                        f"{self.path.name} (truncated or replaced)")
            if file_sha256(path) != entry.get("sha256"):
                return (f"its content differs from the one recorded when it was written ({self.path.name}: "
                        "corrupted or replaced)")
            return None
        if self.recorded and self.data["checkpoints"]:
            return (f"it is not in {self.path.name}: no training run of this model_dir wrote it (copied in from "
                    "elsewhere?)")
        return _archive_problem(path)

    def archive(self, paths: list[Path], name: str) -> Path:
        """Moves the checkpoint files `paths` into `model_dir/branches/<name>/models/` with their lineage entries
        and records the branch; returns the folder."""
        folder = self.model_dir / BRANCHES_DIR / name / CHECKPOINT_DIR
        folder.mkdir(parents=True, exist_ok=False)
        moves = {self.key(path): self.key(folder / path.name) for path in paths}
        for path in paths:
            os.replace(path, folder / path.name)
        self._rekey(moves)
        self.data["branches"][name] = {
            "folder": self.key(folder), "checkpoints": sorted(moves.values()), "archived":
            time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self.save()
        return folder

    def set_aside(self, paths: list[Path], folder: Path) -> list[Path]:
        """Moves invalid checkpoint files into `folder` (a name taken there gets a numbered suffix); returns the new
        paths."""
        folder.mkdir(parents=True, exist_ok=True)
        moved, moves = [], {}
        for path in paths:
            target, number = folder / path.name, 1
            while target.exists():
                target, number = folder / f"{path.stem}.{number}{path.suffix}", number + 1
            os.replace(path, target)
            moves[self.key(path)] = self.key(target)
            moved.append(target)
        self._rekey(moves)
        for key in moves.values():
            if key in self.data["checkpoints"]:
                self.data["checkpoints"][key]["removed"] = "set aside: invalid"
        if self.recorded or self.data["checkpoints"]:
            self.save()
        return moved

    def _rekey(self, moves: dict[str, str]) -> None:
        checkpoints = self.data["checkpoints"]
        for old, new in moves.items():
            if old in checkpoints:
                checkpoints[new] = checkpoints.pop(old)
        for entry in checkpoints.values():
            if entry.get("parent") in moves:
                entry["parent"] = moves[entry["parent"]]

    def history(self, path: str | os.PathLike) -> list[str]:
        """The chain of checkpoints that led to `path` (itself first, then its parent, ...), as recorded."""
        chain, key = [], self.key(path)
        while key is not None and key not in chain:
            chain.append(key)
            key = self.data["checkpoints"].get(key, {}).get("parent")
        return chain

    def archived_copies(self, step: int) -> list[str]:
        """The archived branch checkpoints of iteration `step` (for messages)."""
        return sorted(key for key, entry in self.data["checkpoints"].items()
                      if entry.get("iteration") == step and key.startswith(f"{BRANCHES_DIR}/"))


def _archive_problem(path: Path) -> str | None:
    """Why `path` is not a complete `.keras` archive (every member's CRC is checked), or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        return f"it is not a complete .keras archive ({type(error).__name__}: {error})"
    if bad is not None:
        return f"its member {bad!r} is corrupt (CRC mismatch)"
    return None


def check_branch_name(name: str, model_dir: str | os.PathLike) -> str:
    """Checks `[TRAINING] archive_branch`: letters, digits, `_`, `.`, `-` (not first), not yet used.

    Raises:
        ValueError: naming the value and what was expected.
    """
    if not _BRANCH_NAME.match(name):
        raise ValueError(
            f"[TRAINING] archive_branch = {name!r}: expected a folder name of letters, digits, '_', '.' and '-' "
            "(starting with a letter or digit, at most 64 characters)"
        )
    folder = Path(model_dir) / BRANCHES_DIR / name
    if folder.exists():
        raise FileExistsError(
            f"[TRAINING] archive_branch = {name!r}: {folder} already exists; choose another branch name"
        )
    return name


def select_checkpoint(checkpoint_dir: str | os.PathLike, step: int, lineage: CheckpointLineage
                      ) -> tuple[Path, list[tuple[Path, str]]]:
    """The checkpoint to load: iteration `step`, or for `step = -1` the newest valid one.

    Returns:
        `(path, skipped)`: the checkpoint and, for `step = -1`, the newer files that were skipped with the reason
        (`CheckpointLineage.problem`): the caller warns about each.

    Raises:
        FileNotFoundError: no checkpoint at all, or none of iteration `step` (naming what exists, and archived
            branches holding that iteration).
        ValueError: the checkpoint of `step` is invalid, or no checkpoint is (naming each file and its problem).

    Example:

    ```python
    path, skipped = select_checkpoint(model_dir / CHECKPOINT_DIR, -1, CheckpointLineage(model_dir))
    ```
    """
    checkpoints = list_checkpoints(checkpoint_dir)
    if step == -1:
        skipped = []
        for _, path in sorted(checkpoints.items(), reverse=True):
            problem = lineage.problem(path)
            if problem is None:
                return path, skipped
            skipped.append((path, problem))
        if skipped:
            listed = "; ".join(f"{path.name}: {problem}" for path, problem in skipped)
            raise ValueError(f"No valid checkpoint in {checkpoint_dir}: {listed}. Train again in a new model_dir, or "
                             "restore the files from a backup.")
        raise FileNotFoundError(f"No checkpoint in {checkpoint_dir}")
    if step not in checkpoints:
        archived = lineage.archived_copies(step)
        where = (f"; iteration {step} of an archived branch is in {', '.join(archived)} (not the current lineage: "
                 "copy it back into models/ to use it)") if archived else ""
        raise FileNotFoundError(
            f"No checkpoint for iteration {step} in {checkpoint_dir}. Available iterations: {list(checkpoints)}"
            f"{where}"
        )
    path = checkpoints[step]
    problem = lineage.problem(path)
    if problem is not None:
        valid = [s for s, p in checkpoints.items() if s != step and lineage.problem(p) is None]
        raise ValueError(f"{path} cannot be used: {problem}. Valid checkpoints: iterations {valid}.")
    return path, []


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


def save_checkpoint(model: keras.Model, checkpoint_dir: str | os.PathLike, step: int, max_to_keep: int = 5,
                    lineage: CheckpointLineage | None = None) -> Path:
    """Saves `model` (with its optimizer state) as `model-<step>.keras`, atomically and durably, keeping the newest
    `max_to_keep` checkpoints. A run killed while saving leaves the previous checkpoints intact.

    With a `lineage`, the file's SHA-256 and size are recorded (with the current run and the parent checkpoint)
    before the file is renamed into place, and pruned files are marked removed.

    Example:

    ```python
    save_checkpoint(model, "model_dir/models", 40, lineage=CheckpointLineage("model_dir"))
    ```
    """
    folder = Path(checkpoint_dir)
    final = checkpoint_path(folder, step)
    check_finite_weights(model, final)
    with atomic_path(final, suffix=".keras") as temporary:
        model.save(temporary)
        if lineage is not None:
            lineage.record(final, step, file_sha256(temporary), temporary.stat().st_size)
    checkpoints = list_checkpoints(folder)
    pruned = [checkpoints[old_step] for old_step in list(checkpoints)[: max(0, len(checkpoints) - max_to_keep)]]
    for path in pruned:
        path.unlink(missing_ok=True)
    if lineage is not None and pruned:
        lineage.mark_removed(pruned, "pruned ([TRAINING] max_checkpoints)")
    return final


class PeriodicCheckpoint(keras.callbacks.Callback):
    """Saves a checkpoint every `every_n_steps` optimizer steps and at the end of training.

    Args:
        checkpoint_dir: folder of the `model-<step>.keras` files.
        every_n_steps: int. Period in optimizer iterations.
        max_to_keep: int. Number of checkpoints kept. Defaults to 5.
        lineage: optional `CheckpointLineage` recording each checkpoint (its run, parent and SHA-256).

    Example:

    ```python
    model.fit(ds, callbacks=[PeriodicCheckpoint("model_dir/models", every_n_steps=500)])
    ```
    """

    def __init__(self, checkpoint_dir: str | os.PathLike, every_n_steps: int, max_to_keep: int = 5,
                 lineage: CheckpointLineage | None = None):
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"`every_n_steps` must be >= 1. Received: every_n_steps={every_n_steps}")
        self.checkpoint_dir = Path(checkpoint_dir)
        self.every_n_steps = int(every_n_steps)
        self.max_to_keep = int(max_to_keep)
        self.lineage = lineage
        self.last_saved: int | None = None

    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def _save(self) -> None:
        step = self._step()
        if step != self.last_saved:
            save_checkpoint(self.model, self.checkpoint_dir, step, self.max_to_keep, self.lineage)
            self.last_saved = step

    def on_train_batch_end(self, batch, logs=None):
        if self._step() % self.every_n_steps == 0:
            self._save()

    def on_train_end(self, logs=None):
        self._save()
