"""The grouping report of a trained SFG model: PNG figures, a CSV and a JSON summary (what `sfg_run analyse` writes).

Also the reader and writer of the grouping-history file that `sfg_keras.training.GroupingLogger` keeps during
training: an `.npz` archive with `steps` (int64 `[N]`, increasing) and, per SFG layer, `<layer_name>` -> float32
`[N, K, T + 1]` (the layer's grouping probabilities at each step).

Like the rest of `sfg_keras.analysis`, this module needs only numpy and matplotlib: the model is only asked for
`grouping_probabilities()` and `task_names` (any Keras model containing `SFGConv` layers works too; its layers are
then found with `sfg_keras.layers.find_sfg_layers`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sfg_keras.analysis import grouping_summary, plots

HISTORY_STEPS_KEY = "steps"


def save_grouping_history(path: str | Path, steps: Any, history: Mapping[str, Any]) -> Path:
    """Writes a grouping history (`steps [N]` and per layer `[N, K, T + 1]`) as an `.npz` file, atomically.

    Args:
        path: destination file (written as given, even without the `.npz` suffix); parent folders are created.
        steps: increasing training steps of the snapshots, `[N]`.
        history: mapping from layer name to its grouping probabilities at each step, `[N, K, T + 1]`.

    Returns:
        The path written.

    Raises:
        ValueError: if a layer is called `"steps"`, the steps are not strictly increasing, or a layer's array
            does not have one snapshot per step.

    Example:

    >>> p = np.full((2, 4, 3), 1.0 / 3.0)
    >>> save_grouping_history("/tmp/sfg_history/grouping_history.npz", [20, 40], {"sfg_conv_1": p}).name
    'grouping_history.npz'
    """
    path = Path(path)
    steps_array = np.asarray(steps, dtype=np.int64).reshape(-1)
    if steps_array.size > 1 and np.any(np.diff(steps_array) <= 0):
        raise ValueError(
            f"Grouping-history steps written to {str(path)!r} must be strictly increasing; received "
            f"{steps_array.tolist()!r}."
        )
    arrays = {HISTORY_STEPS_KEY: steps_array}
    for layer_name, values in history.items():
        if layer_name == HISTORY_STEPS_KEY:
            raise ValueError(f"A layer may not be called {HISTORY_STEPS_KEY!r} in grouping history {str(path)!r}.")
        array = np.asarray(values, dtype=np.float32)
        if array.ndim != 3 or array.shape[0] != steps_array.size:
            raise ValueError(
                f"Grouping history of layer {layer_name!r} for {str(path)!r} must have shape "
                f"[{steps_array.size}, num_kernels, num_tasks + 1] (one snapshot per step); received {array.shape}."
            )
        arrays[str(layer_name)] = array
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as handle:
        np.savez(handle, **arrays)
    os.replace(partial, path)
    return path


def load_grouping_history(path: str | Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Reads a grouping history written by `save_grouping_history` (or `GroupingLogger`).

    Args:
        path: the `.npz` file.

    Returns:
        `(steps, history)`: int64 `[N]` and a dict from layer name to float32 `[N, K, T + 1]`, in file order.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it has no `steps` array or a layer's array does not match the steps.

    Example:

    >>> steps, history = load_grouping_history("/tmp/sfg_history/grouping_history.npz")
    >>> steps.tolist(), history["sfg_conv_1"].shape
    ([20, 40], (2, 4, 3))
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Grouping-history file {str(path)!r} does not exist.")
    with np.load(path, allow_pickle=False) as archive:
        if HISTORY_STEPS_KEY not in archive.files:
            raise ValueError(
                f"Grouping-history file {str(path)!r} has no {HISTORY_STEPS_KEY!r} array; found {archive.files!r}."
            )
        steps = np.asarray(archive[HISTORY_STEPS_KEY], dtype=np.int64).reshape(-1)
        history = {}
        for key in archive.files:
            if key == HISTORY_STEPS_KEY:
                continue
            array = np.asarray(archive[key], dtype=np.float32)
            if array.ndim != 3 or array.shape[0] != steps.size:
                raise ValueError(
                    f"Grouping-history file {str(path)!r}: layer {key!r} has shape {array.shape}, expected "
                    f"[{steps.size}, num_kernels, num_tasks + 1] (one snapshot per step)."
                )
            history[key] = array
    return steps, history


def _model_probabilities(model: Any) -> tuple[dict[str, np.ndarray], list[str]]:
    """Per-layer grouping probabilities and task names of an `SFGNetwork` or any model with `SFGConv` layers."""
    if hasattr(model, "grouping_probabilities") and hasattr(model, "task_names"):
        return dict(model.grouping_probabilities()), list(model.task_names)
    from sfg_keras.layers.temperature_schedule import find_sfg_layers  # only for plain Keras models

    layers = find_sfg_layers(model)
    if not layers:
        raise ValueError(f"Model {getattr(model, 'name', model)!r} contains no SFGConv layer to report on.")
    probabilities = {layer.name: layer.grouping_probabilities() for layer in layers}
    return probabilities, [f"task_{t + 1}" for t in range(layers[0].num_tasks)]


def _file_stem(layer_name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in layer_name)


def write_grouping_report(model: Any, out_dir: str | Path, history_path: str | Path | None = None) -> dict[str, Path]:
    """Writes the figures and tables of a model's learned grouping into `out_dir`.

    Files (layer names as in the model):

    * `group_shares.png`: per-layer stacked bars of the share of kernels in each group (paper Fig. 6);
    * per SFG layer, `ternary_<layer>.png` (T = 2: density of the kernels' `p` on the simplex, supplementary Fig. 2)
      or `group_share_image_<layer>.png` (other T: every kernel's `p`);
    * with `history_path`, per layer `trajectories_<layer>.png` (mean and 10th-90th percentile of `p` over
      training) and, for T = 2, `ternary_trajectories_<layer>.png`;
    * `grouping_summary.csv` (one row per layer: shares, MAP counts, mean entropy) and `grouping_summary.json`
      (also the MAP assignment and the full `p` of every layer). The numbers are those of
      `model.group_shares()` and `model.map_assignments()`.

    Args:
        model: an `SFGNetwork` (or any Keras model containing `SFGConv` layers; tasks are then `task_1..`).
        out_dir: destination folder (created if missing).
        history_path: the `grouping_history.npz` written by `GroupingLogger`, or None.

    Returns:
        A dict from a short key (`"group_shares"`, `"ternary/<layer>"`, `"group_share_image/<layer>"`,
        `"trajectories/<layer>"`, `"ternary_trajectories/<layer>"`, `"summary_csv"`, `"summary_json"`) to the path.

    Raises:
        FileNotFoundError: if `history_path` does not exist.
        ValueError: if the history lacks one of the model's layers or its shape does not match.

    Example:

    ```python
    paths = write_grouping_report(model, "model_dir/analysis", "model_dir/logs/grouping_history.npz")
    paths["summary_csv"]   # model_dir/analysis/grouping_summary.csv
    ```
    """
    probabilities, task_names = _model_probabilities(model)
    layers, _ = grouping_summary.validate_layer_probabilities(probabilities, task_names)
    history = None
    if history_path is not None:  # checked before anything is written
        steps, history = load_grouping_history(history_path)
        for layer_name, p in layers.items():
            if layer_name not in history:
                raise ValueError(
                    f"Grouping-history file {str(history_path)!r} has no array for layer {layer_name!r}; "
                    f"it holds {sorted(history)!r}."
                )
            if history[layer_name].shape[1:] != p.shape:
                raise ValueError(
                    f"Grouping-history file {str(history_path)!r}: layer {layer_name!r} has snapshots of shape "
                    f"{history[layer_name].shape[1:]}, but the model's layer has {p.shape}."
                )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    two_tasks = len(task_names) == 2
    paths: dict[str, Path] = {}

    def save(key: str, figure, file_stem: str) -> None:
        paths[key] = plots.save_figure(figure, out_dir / f"{file_stem}.png")

    save("group_shares", plots.plot_group_shares(layers, task_names), "group_shares")
    for layer_name, p in layers.items():
        stem = _file_stem(layer_name)
        if two_tasks:
            title = f"{layer_name}: density of grouping probabilities"
            save(f"ternary/{layer_name}", plots.plot_ternary_density(p, task_names, title=title), f"ternary_{stem}")
        else:
            title = f"{layer_name}: grouping probabilities per kernel"
            figure = plots.plot_group_share_image(p, task_names, title=title)
            save(f"group_share_image/{layer_name}", figure, f"group_share_image_{stem}")
        if history is not None:
            arguments = (steps, history[layer_name], task_names, layer_name)
            save(f"trajectories/{layer_name}", plots.plot_trajectories(*arguments), f"trajectories_{stem}")
            if two_tasks:
                figure = plots.plot_ternary_trajectories(*arguments)
                save(f"ternary_trajectories/{layer_name}", figure, f"ternary_trajectories_{stem}")
    rows = grouping_summary.summarize_layers(layers, task_names)
    paths["summary_csv"] = grouping_summary.write_summary_csv(rows, out_dir / "grouping_summary.csv")
    paths["summary_json"] = grouping_summary.write_summary_json(layers, task_names, out_dir / "grouping_summary.json")
    return paths
