"""The `grouping` argument: SFG and every baseline of paper section 4.1 as settings of `SFGConv`."""

from __future__ import annotations

import numpy as np

from sfg_keras.groups import GROUPINGS, default_p0
from sfg_keras.layers.grouping import block_assignment

__all__ = ["GROUPINGS", "check_grouping", "sfg_conv_options", "single_task_assignment"]


def check_grouping(grouping: str, num_tasks: int) -> None:
    """Raises a ValueError for an unknown `grouping` or one that the number of tasks cannot support."""
    if grouping not in GROUPINGS:
        raise ValueError(f"`grouping` must be one of {GROUPINGS}. Received: grouping={grouping!r}")
    if grouping in ("single_task", "cross_stitch") and num_tasks < 2:
        raise ValueError(f"grouping={grouping!r} needs at least 2 tasks. Received: num_tasks={num_tasks}")


def single_task_assignment(filters: int, num_tasks: int) -> np.ndarray:
    """Kernels split evenly into consecutive task blocks, no shared group (the single-task baseline)."""
    return block_assignment(filters, [1.0 / num_tasks] * num_tasks + [0.0])


def sfg_conv_options(grouping: str, filters: int, num_tasks: int, p0=None) -> dict:
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
