"""Group bookkeeping shared by SFG layers: `p0` checks, block assignments and probability initialisation.

Arrays over groups are ordered `(task_1, ..., task_T, shared)`: with `T` tasks, group `T` is the shared group.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

INIT_MODES = ("constant", "random", "vertex")


def validate_p0(p0: Sequence[float], num_tasks: int, name: str = "p_init") -> np.ndarray:
    """Checks that `p0` is a probability vector over `num_tasks + 1` groups and returns it as float64."""
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
    raise ValueError(f"`init_mode` must be one of {INIT_MODES}. Received: init_mode={init_mode!r}")


def inverse_softplus(p: np.ndarray) -> np.ndarray:
    """`log(exp(p) - 1)`, the logit that `softplus` maps back to `p` (stable for small and large `p`)."""
    p = np.asarray(p, dtype="float64")
    return p + np.log(-np.expm1(-p))
