"""Names and small numpy rules shared by the library.

Every array over groups is ordered `(task_1, ..., task_T, shared)`: with `T` tasks, group `T` is the shared group.
This module holds the few names and rules that the layers, models, inference, export, configuration and analysis
must agree on: the shared group's name, the grouping modes, the default initial probabilities, the MAP and
majority-vote tie-breaks and predictive entropy (a prediction's keys are in `sfg_keras.predictions`).

It imports numpy only (no TensorFlow, no Keras), so configuration and analysis code can use it anywhere. The
array functions take an `xp` argument: `numpy` (the default) or `keras.ops`, so graph code (layers, exported
signatures) and numpy code apply the same rule.

Example:

>>> group_names(["age", "gender"])
['age', 'gender', 'shared']
>>> default_p0(2)
(0.2, 0.2, 0.6)
>>> map_group(np.array([[0.5, 0.1, 0.4], [0.4, 0.2, 0.4]])).tolist()
[0, 2]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

SHARED = "shared"
"""The name of the shared group, the last column of every array over groups."""

GROUPINGS = ("learned", "constant_p", "constant_mask", "hard_sharing", "single_task", "cross_stitch")
"""Learned SFG and the baselines of the paper (section 4.1), as values of the `grouping` argument / `[SFG]` key."""

DEFAULT_SHARED_PROBABILITY = 0.6
"""The shared group's initial probability in `default_p0` (the paper's `[0.2, 0.6, 0.2]`)."""

_ENTROPY_FLOOR = 1e-12


def group_names(task_names: Sequence[str], num_groups: int | None = None) -> list[str]:
    """Returns the group names `[*task_names, "shared"]`, in stream and column order.

    Args:
        task_names: one distinct, non-empty name per task, e.g. `["age", "gender"]`. No task may be called
            `"shared"`.
        num_groups: int or None. If given, the number of groups (columns of `p`) the names must describe
            (`len(task_names) + 1`).

    Returns:
        The list of group names.

    Raises:
        ValueError: if the names are not distinct non-empty strings, if one is `"shared"`, or if they do not
            match `num_groups`.

    Example:

    >>> group_names(["age", "gender"])
    ['age', 'gender', 'shared']
    """
    if isinstance(task_names, str) or not isinstance(task_names, Sequence):
        raise ValueError(f"`task_names` must be a list of task-name strings; received {task_names!r}.")
    names = list(task_names)
    if not names:
        raise ValueError("`task_names` must name at least one task; received an empty list.")
    for task_name in names:
        if not isinstance(task_name, str) or not task_name:
            raise ValueError(f"Every task name must be a non-empty string; received {task_name!r} in {names!r}.")
    if len(set(names)) != len(names):
        raise ValueError(f"Task names must be distinct; received {names!r}.")
    if SHARED in names:
        raise ValueError(
            f"No task may be called {SHARED!r}: it is the name of the last (shared) group; "
            f"received task names {names!r}."
        )
    if num_groups is not None and num_groups != len(names) + 1:
        raise ValueError(
            f"Grouping probabilities have {num_groups} columns, so {num_groups - 1} task name(s) are expected "
            f"(the last column is {SHARED!r}); received {len(names)} task name(s): {names!r}."
        )
    return [*names, SHARED]


def default_p0(num_tasks: int, shared: float = DEFAULT_SHARED_PROBABILITY) -> tuple[float, ...]:
    """The default initial grouping probabilities: `shared` for the shared group, the rest split over the tasks.

    Args:
        num_tasks: int. Number of tasks `T` (>= 1).
        shared: float. Probability of the shared group, in `(0, 1)`. Defaults to 0.6 (the paper's
            `[0.2, 0.6, 0.2]` for `T = 2`).

    Returns:
        A tuple of `T + 1` floats ordered `(task_1, ..., task_T, shared)`.

    Raises:
        ValueError: for `num_tasks < 1` or `shared` outside `(0, 1)`.

    Example:

    >>> default_p0(2)  # (task_1, task_2, shared): the paper's [0.2, 0.6, 0.2] reordered
    (0.2, 0.2, 0.6)
    """
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, (int, np.integer)) or num_tasks < 1:
        raise ValueError(f"`num_tasks` must be an int >= 1. Received: num_tasks={num_tasks!r}")
    if not 0.0 < shared < 1.0:
        raise ValueError(f"`shared` must be in (0, 1). Received: shared={shared!r}")
    task_share = (1.0 - shared) / int(num_tasks)
    return (task_share,) * int(num_tasks) + (float(shared),)


def map_group(probabilities: Any, xp: Any = np) -> Any:
    """The MAP group of every kernel: `argmax p` over the last axis, ties to the LATER group.

    A kernel whose shared probability ties the maximum is therefore shared: the uniform `p` of the constant-p
    baseline gives the hard-sharing architecture. (Contrast `majority_vote`, whose ties go to the lower class.)

    Args:
        probabilities: array `[..., T + 1]` of grouping probabilities (numpy, or a tensor with `xp=keras.ops`).
        xp: the array module, `numpy` (default) or `keras.ops`.

    Returns:
        Integer array `[...]` of group indices in `0 .. T` (`T` is shared).

    Example:

    >>> map_group(np.array([[0.5, 0.1, 0.4], [1 / 3, 1 / 3, 1 / 3]])).tolist()
    [0, 2]
    """
    num_groups = probabilities.shape[-1]
    return num_groups - 1 - xp.argmax(xp.flip(probabilities, axis=-1), axis=-1)


def majority_vote(votes: Any, axis: int = -1, xp: Any = np) -> Any:
    """The class with the most votes (or the highest score), ties to the LOWER class index.

    This is the label rule of every prediction: the argmax of one pass's logits, and the majority vote of the
    per-pass argmax over Monte-Carlo passes (`votes` holds per-class counts).

    Args:
        votes: array `[..., C]` of per-class counts or scores (numpy, or a tensor with `xp=keras.ops`).
        axis: int. The class axis. Defaults to -1.
        xp: the array module, `numpy` (default) or `keras.ops`.

    Returns:
        Integer array of class indices, `votes` without `axis`.

    Example:

    >>> majority_vote(np.array([[2, 5, 5], [4, 1, 0]])).tolist()
    [1, 0]
    """
    return xp.argmax(votes, axis=axis)


def entropy(probabilities: Any, axis: int = -1, xp: Any = np) -> Any:
    """Entropy in nats of categorical distributions along `axis` (`0 log 0 = 0`).

    Used for the predictive entropy of categorical predictions and for the entropy `H(p)` of a kernel's grouping
    distribution.

    Args:
        probabilities: array of probabilities that sum to 1 along `axis` (numpy, or a tensor with
            `xp=keras.ops`).
        axis: int. The category axis. Defaults to -1.
        xp: the array module, `numpy` (default) or `keras.ops`.

    Returns:
        Array of entropies, `probabilities` without `axis`, each in `[0, log(num_categories)]`.

    Example:

    >>> entropy(np.array([[1.0, 0.0], [0.5, 0.5]])).round(4).tolist()
    [0.0, 0.6931]
    """
    logs = xp.log(xp.maximum(probabilities, _ENTROPY_FLOOR))
    return 0.0 - xp.sum(probabilities * logs, axis=axis)
