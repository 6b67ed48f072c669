"""Numeric summaries of learned SFG grouping probabilities.

An SFG layer with `K` kernels and `T` tasks holds grouping probabilities `p`, a
`[K, T + 1]` array whose columns are ordered `(task_1, ..., task_T, shared)` and
whose rows sum to 1. This module turns such arrays (one per layer) into the
per-layer numbers reported in the paper: the share of kernels in each group
(Fig. 6), the maximum-a-posteriori (MAP) assignment of every kernel, the counts of
that assignment and the mean entropy of the kernels' distributions. The results can
be written as CSV (one row per layer) or JSON (everything, including the full `p`).

Only numpy and the standard library are used, so the module can run wherever the
probabilities were exported, without TensorFlow.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sfg_keras.groups import SHARED, entropy, group_names, map_group

SHARED_GROUP_NAME = SHARED  # the name of the shared group (kept for backward compatibility)
__all__ = [
    "SHARED_GROUP_NAME",
    "group_names",
    "group_shares",
    "grouping_report",
    "kernel_entropies",
    "map_assignment",
    "map_counts",
    "summarize_layers",
    "validate_layer_probabilities",
    "validate_probabilities",
    "write_summary_csv",
    "write_summary_json",
]
ROW_SUM_TOLERANCE = 1e-4


def validate_probabilities(p: Any, name: str = "p") -> np.ndarray:
    """Checks that `p` is a valid `[K, T + 1]` grouping-probability array.

    Every public function of `sfg_keras.analysis` calls this on its inputs.

    Args:
        p: array-like of grouping probabilities, one row per kernel, columns
            `(task_1, ..., task_T, shared)`.
        name: what `p` is (e.g. a layer name), quoted in error messages.

    Returns:
        `p` as a float64 numpy array.

    Raises:
        ValueError: if `p` is not 2-D, has fewer than 2 columns or no rows,
            holds non-finite or negative values, or has a row whose sum differs
            from 1 by more than `1e-4`.

    Example:

    >>> validate_probabilities([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]], "sfg_conv_1").shape
    (2, 3)
    """
    try:
        array = np.asarray(p, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"Grouping probabilities `{name}` must be a numeric array of shape [num_kernels, num_tasks + 1]; "
            f"could not convert the received value of type {type(p).__name__}: {error}"
        ) from error
    if array.ndim != 2:
        raise ValueError(
            f"Grouping probabilities `{name}` must be 2-D with shape [num_kernels, num_tasks + 1]; "
            f"received shape {array.shape}."
        )
    if array.shape[1] < 2:
        raise ValueError(
            f"Grouping probabilities `{name}` need at least 2 columns (one task and 'shared'); "
            f"received shape {array.shape}."
        )
    if array.shape[0] < 1:
        raise ValueError(
            f"Grouping probabilities `{name}` need at least one kernel (row); received shape {array.shape}."
        )
    if not np.all(np.isfinite(array)):
        bad_rows = np.unique(np.nonzero(~np.isfinite(array))[0])
        raise ValueError(
            f"Grouping probabilities `{name}` (shape {array.shape}) contain NaN or infinite values "
            f"in rows {bad_rows[:10].tolist()}."
        )
    if np.any(array < 0.0):
        row, column = np.argwhere(array < 0.0)[0]
        raise ValueError(
            f"Grouping probabilities `{name}` (shape {array.shape}) must be non-negative; "
            f"received {float(array[row, column])!r} at row {row}, column {column}."
        )
    row_sums = array.sum(axis=1)
    deviation = np.abs(row_sums - 1.0)
    if np.any(deviation > ROW_SUM_TOLERANCE):
        worst = int(np.argmax(deviation))
        num_bad = int(np.sum(deviation > ROW_SUM_TOLERANCE))
        raise ValueError(
            f"Every row of grouping probabilities `{name}` (shape {array.shape}) must sum to 1 within "
            f"{ROW_SUM_TOLERANCE}; {num_bad} row(s) do not, e.g. row {worst} sums to {float(row_sums[worst])!r} "
            f"(row sums range from {float(row_sums.min())!r} to {float(row_sums.max())!r})."
        )
    return array


def group_shares(p: Any) -> np.ndarray:
    """Share of kernels in each group: the column sums of `p` divided by `K`.

    This is the quantity plotted per layer in Fig. 6 of the SFG paper. The shares
    sum to 1.

    Args:
        p: grouping probabilities `[K, T + 1]`.

    Returns:
        float64 array `[T + 1]` in the column order of `p`.

    Example:

    >>> group_shares([[0.5, 0.0, 0.5], [0.1, 0.3, 0.6]]).tolist()
    [0.3, 0.15, 0.55]
    """
    array = validate_probabilities(p)
    return array.sum(axis=0) / array.shape[0]


def map_assignment(p: Any) -> np.ndarray:
    """Maximum-a-posteriori group of every kernel (argmax over the columns).

    Ties go to the highest column index, i.e. `shared` before a task (as `SFGConv.map_assignment`).

    Args:
        p: grouping probabilities `[K, T + 1]`.

    Returns:
        int64 array `[K]` of group indices in `0 .. T` (`T` means shared).

    Example:

    >>> map_assignment([[0.5, 0.1, 0.4], [0.1, 0.3, 0.6]]).tolist()
    [0, 2]
    """
    return map_group(validate_probabilities(p)).astype(np.int64)


def map_counts(p: Any) -> np.ndarray:
    """Number of kernels whose MAP group is each group.

    Args:
        p: grouping probabilities `[K, T + 1]`.

    Returns:
        int64 array `[T + 1]` that sums to `K`.

    Example:

    >>> map_counts([[0.5, 0.1, 0.4], [0.1, 0.3, 0.6], [0.0, 0.0, 1.0]]).tolist()
    [1, 0, 2]
    """
    array = validate_probabilities(p)
    return np.bincount(map_assignment(array), minlength=array.shape[1]).astype(np.int64)


def kernel_entropies(p: Any) -> np.ndarray:
    """Entropy in nats of every kernel's grouping distribution (`0 log 0 = 0`).

    Args:
        p: grouping probabilities `[K, T + 1]`.

    Returns:
        float64 array `[K]`, each value in `[0, log(T + 1)]`.

    Example:

    >>> kernel_entropies([[1.0, 0.0], [0.5, 0.5]]).round(4).tolist()
    [0.0, 0.6931]
    """
    return entropy(validate_probabilities(p), axis=1)


def validate_layer_probabilities(
    probabilities: Mapping[str, Any], task_names: Sequence[str]
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Validates the grouping probabilities of several layers against the task names.

    Args:
        probabilities: mapping from layer name to grouping probabilities `[K, T + 1]`.
        task_names: the `T` task names, in column order.

    Returns:
        `(layers, groups)`: a dict from layer name to its float64 array, in the
        original order, and the group names `[*task_names, "shared"]`.

    Raises:
        ValueError: if the mapping is empty, a layer is malformed (see
            `validate_probabilities`) or has other than `len(task_names) + 1` columns.

    Example:

    >>> layers, groups = validate_layer_probabilities({"sfg_conv_1": [[0.9, 0.1]]}, ["age"])
    >>> groups
    ['age', 'shared']
    """
    if not isinstance(probabilities, Mapping):
        raise ValueError(
            "`probabilities` must be a mapping from layer name to a [num_kernels, num_tasks + 1] array; "
            f"received {type(probabilities).__name__}."
        )
    if not probabilities:
        raise ValueError("`probabilities` must hold at least one layer; received an empty mapping.")
    names = group_names(task_names)
    layers = {}
    for layer_name, p in probabilities.items():
        array = validate_probabilities(p, str(layer_name))
        if array.shape[1] != len(names):
            raise ValueError(
                f"Layer {layer_name!r} has grouping probabilities of shape {array.shape}, but the task names "
                f"{list(task_names)!r} need {len(names)} columns ({', '.join(names)})."
            )
        layers[str(layer_name)] = array
    return layers, names


def summarize_layers(probabilities: Mapping[str, Any], task_names: Sequence[str]) -> list[dict[str, Any]]:
    """One summary row per SFG layer, in the order of `probabilities`.

    Each row holds `layer`, `num_kernels`, `share_<group>` for every task and
    `shared` (see `group_shares`), `map_count_<group>` (see `map_counts`) and
    `mean_entropy` (mean over kernels of the entropy of `p`, in nats).

    Args:
        probabilities: mapping from layer name (e.g. `"sfg_conv_1"`) to its
            grouping probabilities `[K, T + 1]`; layers may differ in `K`.
        task_names: the `T` task names, in column order.

    Returns:
        A list of dicts of Python scalars, ready for `write_summary_csv`.

    Raises:
        ValueError: if a layer's probabilities are malformed or do not have
            `len(task_names) + 1` columns.

    Example:

    >>> rows = summarize_layers({"sfg_conv_1": [[0.9, 0.1], [0.2, 0.8]]}, ["age"])
    >>> rows[0]["share_age"], rows[0]["map_count_shared"]
    (0.55, 1)
    """
    layers, names = validate_layer_probabilities(probabilities, task_names)
    rows = []
    for layer_name, array in layers.items():
        shares = group_shares(array)
        counts = map_counts(array)
        row: dict[str, Any] = {"layer": layer_name, "num_kernels": int(array.shape[0])}
        row.update({f"share_{name}": float(share) for name, share in zip(names, shares)})
        row.update({f"map_count_{name}": int(count) for name, count in zip(names, counts)})
        row["mean_entropy"] = float(np.mean(kernel_entropies(array)))
        rows.append(row)
    return rows


def write_summary_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Writes summary rows (from `summarize_layers`) as a CSV file with a header.

    Floats are written at full precision, so reading the file back gives the same
    numbers. Missing parent folders are created.

    Args:
        rows: non-empty list of dicts that all have the same keys.
        path: destination `.csv` file.

    Returns:
        The path written.

    Raises:
        ValueError: if `rows` is empty or the rows do not share the same keys.

    Example:

    >>> rows = summarize_layers({"sfg_conv_1": [[0.9, 0.1], [0.2, 0.8]]}, ["age"])
    >>> write_summary_csv(rows, "/tmp/grouping_summary.csv").name
    'grouping_summary.csv'
    """
    if not rows:
        raise ValueError(f"`rows` must hold at least one summary row to write to {str(path)!r}; received none.")
    fieldnames = list(rows[0].keys())
    for index, row in enumerate(rows):
        if list(row.keys()) != fieldnames:
            raise ValueError(
                f"Every summary row written to {str(path)!r} must have the columns {fieldnames!r}; "
                f"row {index} has {list(row.keys())!r}."
            )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: repr(value) if isinstance(value, float) else value for key, value in row.items()})
    return path


def grouping_report(probabilities: Mapping[str, Any], task_names: Sequence[str]) -> dict[str, Any]:
    """Everything known about the grouping of every layer, as JSON-ready Python objects.

    Args:
        probabilities: mapping from layer name to grouping probabilities `[K, T + 1]`.
        task_names: the `T` task names, in column order.

    Returns:
        A dict with `task_names`, `groups` (column order, ending in `"shared"`)
        and `layers`: one dict per layer with `layer`, `num_kernels`, `shares` and
        `map_counts` (both keyed by group name), `mean_entropy` (nats),
        `map_assignment` (list of group indices, one per kernel, indexing `groups`)
        and `probabilities` (the full `p` as nested lists).

    Example:

    >>> report = grouping_report({"sfg_conv_1": [[0.9, 0.1], [0.2, 0.8]]}, ["age"])
    >>> report["groups"], report["layers"][0]["map_assignment"]
    (['age', 'shared'], [0, 1])
    """
    layers, names = validate_layer_probabilities(probabilities, task_names)
    layer_reports = []
    for layer_name, array in layers.items():
        layer_reports.append(
            {
                "layer": layer_name,
                "num_kernels": int(array.shape[0]),
                "shares": {name: float(share) for name, share in zip(names, group_shares(array))},
                "map_counts": {name: int(count) for name, count in zip(names, map_counts(array))},
                "mean_entropy": float(np.mean(kernel_entropies(array))),
                "map_assignment": map_assignment(array).tolist(),
                "probabilities": array.tolist(),
            }
        )
    return {"task_names": names[:-1], "groups": names, "layers": layer_reports}


def write_summary_json(probabilities: Mapping[str, Any], task_names: Sequence[str], path: str | Path) -> Path:
    """Writes `grouping_report(probabilities, task_names)` as an indented JSON file.

    Missing parent folders are created.

    Args:
        probabilities: mapping from layer name to grouping probabilities `[K, T + 1]`.
        task_names: the `T` task names, in column order.
        path: destination `.json` file.

    Returns:
        The path written.

    Example:

    >>> p = {"sfg_conv_1": [[0.9, 0.1], [0.2, 0.8]]}
    >>> write_summary_json(p, ["age"], "/tmp/grouping_summary.json").name
    'grouping_summary.json'
    """
    report = grouping_report(probabilities, task_names)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2, allow_nan=False)
        handle.write("\n")
    return path

