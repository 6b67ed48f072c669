"""The grouping vocabulary: every name, choice list, validator and small numpy rule of SFG groupings, in one place.

Every array over groups is ordered `(task_1, ..., task_T, shared)`: with `T` tasks, group `T` is the shared group.
The layers, models, options, configuration schema, inference, export and analysis all read their groupings' words
from this module:

* names: `SHARED`, `group_names`;
* choice lists (the values a layer argument, a `NetworkOptions` field and an `[SFG]` / `[NETWORK]` key accept):
  `GROUPINGS`, `INIT_MODES`, `SAMPLING_MODES`, `MERGE_MODES`, `GROUPING_STEPS`, `INFERENCE_STATISTICS`,
  `NETWORK_NAMES`, and their one validator `check_choice`;
* initial probabilities: `default_p0`, `validate_p0`, `initial_probabilities`, `block_assignment`,
  `inverse_softplus`;
* groupings as layer settings (SFG and every baseline of paper section 4.1): `check_grouping`,
  `single_task_assignment`, `sfg_conv_options`;
* rules: the MAP group (`map_group`), the majority vote (`majority_vote`) and the entropy (`entropy`).

(A prediction's keys and output names are in `sfg_keras.predictions`.)

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
>>> sfg_conv_options("hard_sharing", filters=4, num_tasks=2)
{'fixed_assignment': [2, 2, 2, 2]}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

SHARED = "shared"
"""The name of the shared group, the last column of every array over groups."""

GROUPINGS = ("learned", "constant_p", "constant_mask", "hard_sharing", "single_task", "cross_stitch")
"""Learned SFG and the baselines of the paper (section 4.1), as values of the `grouping` argument / `[SFG]` key."""

INIT_MODES = ("constant", "random", "vertex")
"""Initial `p` per kernel: `p0` for every kernel, Dirichlet(1, ..., 1) draws, or blocks near the vertices."""

SAMPLING_MODES = ("per_example", "per_batch")
"""One architecture sample per data point (paper eq. 3) or one per layer per step."""

MERGE_MODES = ("sum", "concat")
"""How a task stream meets the shared stream at a layer's input: a sum, or a channel concat and a 1x1 projection."""

GROUPING_STEPS = ("raw", "normalized")
"""The grouping logits' gradient as it is (the paper), or rescaled to unit root-mean-square at every step."""

INFERENCE_STATISTICS = ("batch", "moving")
"""The statistics batch normalisation uses at inference: the batch's own (the paper) or the moving averages."""

NETWORK_NAMES = ("sfg_vgg11", "sfg_highresnet", "sfg_small_cnn")
"""The built-in architectures, by `[NETWORK] name` (`sfg_keras.models.ARCHITECTURES` builds each)."""

DEFAULT_SHARED_PROBABILITY = 0.6
"""The shared group's initial probability in `default_p0` (the paper's `[0.2, 0.6, 0.2]`)."""

_ENTROPY_FLOOR = 1e-12


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """Raises a `ValueError` naming the argument, the choices and the received value unless `value` is a choice.

    Args:
        name: str. The argument's name, e.g. `"merge"`.
        value: the received value.
        choices: the accepted values, e.g. `MERGE_MODES`.

    Raises:
        ValueError: if `value` is not one of `choices`.

    Example:

    >>> check_choice("merge", "sum", MERGE_MODES)
    >>> check_choice("merge", "max", MERGE_MODES)
    Traceback (most recent call last):
    ...
    ValueError: `merge` must be one of ('sum', 'concat'). Received: merge='max'
    """
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}. Received: {name}={value!r}")


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


# === Initial probabilities ===


def validate_p0(p0: Sequence[float], num_tasks: int, name: str = "p_init") -> np.ndarray:
    """Checks that `p0` is a probability vector over `num_tasks + 1` groups and returns it as float64.

    Args:
        p0: sequence of `num_tasks + 1` floats, ordered `(task_1, ..., task_T, shared)`.
        num_tasks: int. Number of tasks `T`.
        name: str. The argument's name in the error message. Defaults to `"p_init"`.

    Returns:
        float64 array `[T + 1]`.

    Raises:
        ValueError: if `p0` has the wrong length, a non-positive value, or does not sum to 1.

    Example:

    >>> validate_p0([0.25, 0.25, 0.5], num_tasks=2).tolist()
    [0.25, 0.25, 0.5]
    """
    p = np.asarray(p0, dtype="float64").reshape(-1)
    if p.shape[0] != num_tasks + 1:
        raise ValueError(
            f"`{name}` needs one probability per group, ordered (task_1, ..., task_{num_tasks}, shared): "
            f"{num_tasks + 1} values. Received: {name}={list(p0)}"
        )
    if np.any(p <= 0) or abs(p.sum() - 1.0) > 1e-6:
        raise ValueError(f"`{name}` must be positive and sum to 1. Received: {name}={list(p0)} (sum {p.sum():.6g})")
    return p


def block_assignment(filters: int, proportions: Sequence[float]) -> np.ndarray:
    """Splits `filters` kernels into consecutive blocks, one per group, in the given proportions.

    Each group gets `floor(proportion * filters)` kernels; the rounding remainder is handed out one kernel per
    group, largest fractional part first (ties go to the larger proportion, then to the earlier group), so equal
    proportions give counts that differ by at most one and a zero proportion never gets a kernel. Group order is
    `(task_1, ..., task_T, shared)`.

    Args:
        filters: int. Number of kernels.
        proportions: sequence of non-negative floats, one per group, summing to 1.

    Returns:
        int32 array `[filters]`: the group index of every kernel.

    Example:

    >>> block_assignment(8, [0.25, 0.25, 0.5]).tolist()
    [0, 0, 1, 1, 2, 2, 2, 2]
    >>> block_assignment(8, [1 / 3, 1 / 3, 1 / 3]).tolist()
    [0, 0, 0, 1, 1, 1, 2, 2]
    """
    props = np.asarray(proportions, dtype="float64")
    if props.ndim != 1 or np.any(props < 0) or abs(props.sum() - 1.0) > 1e-6:
        raise ValueError(f"`proportions` must be non-negative and sum to 1. Received: {list(proportions)}")
    exact = props * filters
    counts = np.floor(exact + 1e-9).astype(int)
    fractions = np.round(exact - counts, 9)
    order = sorted(range(len(props)), key=lambda g: (-fractions[g], -props[g], g))
    counts[order[: filters - counts.sum()]] += 1
    return np.repeat(np.arange(len(props), dtype="int32"), counts)


def initial_probabilities(
    filters: int, p0: Sequence[float], init_mode: str = "constant", seed: int | None = None, vertex: float = 0.98
) -> np.ndarray:
    """Initial grouping probabilities `[filters, T + 1]` for the three initialisation modes of the paper.

    Args:
        filters: int. Number of kernels `K`.
        p0: sequence of floats `[T + 1]`. The initial probabilities (`constant`) or block proportions (`vertex`).
        init_mode: str. `"constant"` (every kernel starts at `p0`), `"random"` (each kernel drawn from
            Dirichlet(1, ..., 1)) or `"vertex"` (consecutive blocks in the proportions of `p0`, each kernel near the
            vertex of its group: `vertex` on its group, the rest spread evenly).
        seed: int or None. Seed of the Dirichlet draws for `"random"`.
        vertex: float. Probability of the own group in `"vertex"` mode. Defaults to 0.98.

    Returns:
        float64 array `[filters, T + 1]` whose rows sum to 1.
    """
    p0 = np.asarray(p0, dtype="float64")
    groups = p0.shape[0]
    if init_mode == "constant":
        return np.tile(p0, (filters, 1))
    if init_mode == "random":
        return np.random.default_rng(seed).dirichlet(np.ones(groups), size=filters)
    if init_mode == "vertex":
        assignment = block_assignment(filters, p0)
        probs = np.full((filters, groups), (1.0 - vertex) / (groups - 1))
        probs[np.arange(filters), assignment] = vertex
        return probs
    check_choice("init_mode", init_mode, INIT_MODES)
    raise AssertionError(init_mode)  # unreachable: every choice is handled above


def inverse_softplus(p: np.ndarray) -> np.ndarray:
    """`log(exp(p) - 1)`, the logit that `softplus` maps back to `p` (stable for small and large `p`).

    Example:

    >>> round(float(np.log1p(np.exp(inverse_softplus(0.3)))), 6)
    0.3
    """
    p = np.asarray(p, dtype="float64")
    return p + np.log(-np.expm1(-p))


# === Groupings as layer settings (SFG and the baselines of paper section 4.1) ===


def check_grouping(grouping: str, num_tasks: int) -> None:
    """Raises a ValueError for an unknown `grouping` or one that the number of tasks cannot support.

    Example:

    >>> check_grouping("single_task", num_tasks=1)
    Traceback (most recent call last):
    ...
    ValueError: grouping='single_task' needs at least 2 tasks. Received: num_tasks=1
    """
    check_choice("grouping", grouping, GROUPINGS)
    if grouping in ("single_task", "cross_stitch") and num_tasks < 2:
        raise ValueError(f"grouping={grouping!r} needs at least 2 tasks. Received: num_tasks={num_tasks}")


def single_task_assignment(filters: int, num_tasks: int) -> np.ndarray:
    """Kernels split evenly into consecutive task blocks, no shared group (the single-task baseline).

    Example:

    >>> single_task_assignment(5, num_tasks=2).tolist()
    [0, 0, 0, 1, 1]
    """
    return block_assignment(filters, [1.0 / num_tasks] * num_tasks + [0.0])


def sfg_conv_options(grouping: str, filters: int, num_tasks: int, p0: Sequence[float] | None = None) -> dict:
    """`SFGConv` keyword arguments that realise `grouping` for a layer of `filters` kernels.

    * `learned`: SFG; `p` learned from `p0` (default: shared 0.6, the rest split evenly over the tasks).
    * `constant_p`: `p` fixed at uniform `1 / (T + 1)`, still sampled.
    * `constant_mask`: fixed consecutive blocks of `1 / (T + 1)` each (task_1, ..., task_T, shared).
    * `hard_sharing`: every kernel shared.
    * `single_task` / `cross_stitch`: kernels split evenly over the tasks, no shared group (T networks of width
      `filters / T`); `cross_stitch` adds cross-stitch units between them (placed by the network builder).

    Example:

    ```python
    SFGConv(64, 3, num_tasks=2, **sfg_conv_options("hard_sharing", 64, 2))
    ```
    """
    check_grouping(grouping, num_tasks)
    groups = num_tasks + 1
    if grouping == "learned":
        return {"p_init": list(default_p0(num_tasks) if p0 is None else p0), "learn_p": True}
    if grouping == "constant_p":
        return {"p_init": [1.0 / groups] * groups, "learn_p": False, "init_mode": "constant"}
    if grouping == "constant_mask":
        return {"fixed_assignment": block_assignment(filters, [1.0 / groups] * groups).tolist()}
    if grouping == "hard_sharing":
        return {"fixed_assignment": [num_tasks] * filters}
    return {"fixed_assignment": single_task_assignment(filters, num_tasks).tolist()}
