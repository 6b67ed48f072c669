"""`ExecutionPlan`: how an `SFGNetwork` runs, decided once from its layers and read by every forward path.

An SFG network's trunk is a list of `SFGConv` layers and stream transforms (`PerStream`, `CrossStitch`). How it runs
depends on what each SFG layer's assignment is:

* `"sampled"`: a learned (or constant-p) layer that draws an architecture per pass in training and uses its MAP
  architecture at inference;
* `"fixed"`: a baseline's fixed assignment (`hard_sharing`, `constant_mask`, `single_task`, `cross_stitch`);
* `"committed"`: a learned layer frozen to its MAP assignment by `SFGNetwork.commit()` (search, then commit).

When no layer samples, every trunk layer can run *packed* (one tensor per layer holding every group's channels
side by side, at the cost of a plain network of the same width) and the plan records, per layer, the group of every
channel it receives. Otherwise the network runs *dense*: `T + 1` streams per layer, the paper's formulation.

Every trunk layer speaks one packed interface (`SFGConv`, `PerStream` and `CrossStitch` alike):

* `packable(input_assignment) -> bool`: whether it can run on a packed tensor whose channels belong to the groups
  `input_assignment` (None: the image);
* `packed_assignment(input_assignment) -> array | None`: the group of each of its packed output channels;
* `call_packed(inputs, input_assignment=None, training=None)`.

The network's `call` (dense or packed) and the compact MAP model (`sfg_keras.compact`) both walk the plan's
`steps`; the network builds its plan once it is built and again after a commit (`plan_version` counts the plans).

Example:

```python
model = sfg_small_cnn(tasks, NetworkOptions(grouping="hard_sharing"))
model.build((None, 28, 28, 1))
plan = model.execution_plan
plan.packed                 # True
print(plan.describe())      # one line per trunk layer: role, assignment kind, channels per group
```
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import keras
import numpy as np

from sfg_keras.layers.cross_stitch import CrossStitch
from sfg_keras.layers.per_stream import PerStream
from sfg_keras.layers.sfg_conv import SFGConv

SAMPLED = "sampled"
FIXED = "fixed"
COMMITTED = "committed"
ASSIGNMENT_KINDS = (SAMPLED, FIXED, COMMITTED)
"""How an SFG layer's kernels are assigned to groups: drawn per pass, fixed by the grouping, or frozen by a commit."""

SFG = "sfg"
PER_STREAM = "per_stream"
CROSS_STITCH = "cross_stitch"
OTHER = "other"
ROLES = (SFG, PER_STREAM, CROSS_STITCH, OTHER)
"""The roles of trunk layers: an SFG convolution, a layer applied to every stream, a cross-stitch unit, or another
layer that maps the tuple of streams itself (it runs dense; the compact model cannot translate it)."""


def assignment_kind(layer: SFGConv) -> str:
    """`"fixed"`, `"committed"` or `"sampled"`: how `layer`'s kernels are assigned to groups.

    Example:

    ```python
    assignment_kind(SFGConv(8, 3, fixed_assignment=[2] * 8))  # "fixed"
    ```
    """
    if layer.is_fixed:
        return FIXED
    return COMMITTED if layer.is_committed else SAMPLED


def trunk_role(layer: keras.layers.Layer) -> str:
    """The role of a trunk layer (`ROLES`): `"sfg"`, `"per_stream"`, `"cross_stitch"` or `"other"`.

    Example:

    ```python
    trunk_role(PerStream(keras.layers.MaxPooling2D()))  # "per_stream"
    ```
    """
    if isinstance(layer, SFGConv):
        return SFG
    if isinstance(layer, PerStream):
        return PER_STREAM
    if isinstance(layer, CrossStitch):
        return CROSS_STITCH
    return OTHER


@dataclasses.dataclass(frozen=True)
class PlanStep:
    """One trunk layer in the plan.

    Attributes:
        layer: the trunk layer.
        role: str. One of `ROLES`.
        assignment_kind: str or None. For SFG layers, one of `ASSIGNMENT_KINDS`; None for stream transforms.
        input_assignment: int array `[C_in]` or None. In a packed plan, the group of every packed input channel
            (None for the first layer, which reads the image); None in a dense plan.
    """

    layer: keras.layers.Layer
    role: str
    assignment_kind: str | None = None
    input_assignment: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class ExecutionPlan:
    """How a network runs: its trunk in order, and whether it runs packed.

    Attributes:
        steps: tuple of `PlanStep`, one per trunk layer.
        packed: bool. Whether the network runs on packed streams.
        head_masks: tuple of float32 arrays `[C]`, one per task: the channels of `merge(F_t, F_s)` on the last
            packed output (empty for a dense plan).
        reason: str. Why the plan is dense (empty for a packed plan).
    """

    steps: tuple[PlanStep, ...]
    packed: bool
    head_masks: tuple[np.ndarray, ...] = ()
    reason: str = ""

    @classmethod
    def for_trunk(
        cls, trunk: Sequence[keras.layers.Layer], num_tasks: int, merge: str = "sum", allow_packed: bool = True
    ) -> ExecutionPlan:
        """Plans a built trunk of `num_tasks` tasks whose heads merge streams by `merge`.

        Args:
            trunk: the trunk layers, built.
            num_tasks: int. Number of tasks `T`.
            merge: str. The heads' stream merge, `"sum"` or `"concat"`.
            allow_packed: bool. False plans the dense formulation whatever the layers (the reference path).

        Returns:
            The plan.
        """
        steps = []
        for layer in trunk:
            role = trunk_role(layer)
            steps.append(PlanStep(layer, role, assignment_kind(layer) if role == SFG else None))
        if not allow_packed:
            return cls(tuple(steps), packed=False, reason="packed execution is switched off")
        packed_steps, assignment = [], None
        for step in steps:
            reason = _why_not_packed(step.layer, assignment)
            if reason:
                return cls(tuple(steps), packed=False, reason=reason)
            packed_steps.append(dataclasses.replace(step, input_assignment=assignment))
            assignment = step.layer.packed_assignment(assignment)
        if merge != "sum":
            return cls(tuple(steps), packed=False, reason=f"the heads merge streams by {merge!r}, not 'sum'")
        masks = tuple(((assignment == t) | (assignment == num_tasks)).astype("float32") for t in range(num_tasks))
        if any(not mask.any() for mask in masks):
            return cls(tuple(steps), packed=False, reason="a task head would read no channel")
        return cls(tuple(packed_steps), packed=True, head_masks=masks)

    @property
    def assignment_kinds(self) -> dict[str, str]:
        """`{layer name: assignment kind}` of the SFG layers, in trunk order."""
        return {step.layer.name: step.assignment_kind for step in self.steps if step.role == SFG}

    def describe(self) -> str:
        """One line per trunk layer (role, assignment kind, input channels per group when packed), then the mode.

        Example:

        ```python
        print(model.execution_plan.describe())
        # sfg_conv_1: sfg, fixed
        # per_stream_pool_1: per_stream
        # ...
        # packed
        ```
        """
        lines = []
        for step in self.steps:
            text = f"{step.layer.name}: {step.role}"
            if step.assignment_kind:
                text += f", {step.assignment_kind}"
            if step.input_assignment is not None:
                counts = np.bincount(np.asarray(step.input_assignment), minlength=1).tolist()
                text += f", input channels per group {counts}"
            lines.append(text)
        lines.append("packed" if self.packed else f"dense ({self.reason})")
        return "\n".join(lines)


def _why_not_packed(layer: keras.layers.Layer, input_assignment: np.ndarray | None) -> str:
    """Why `layer` cannot run on packed input of `input_assignment`, or "" when it can."""
    if not layer.built:
        return f"{layer.name} is not built"
    if trunk_role(layer) == OTHER:
        return f"{layer.name} ({type(layer).__name__}) has no packed form"
    if layer.packable(input_assignment):
        return ""
    if isinstance(layer, SFGConv) and layer.samples:
        return f"{layer.name} samples its architecture"
    return f"{layer.name} ({type(layer).__name__}) cannot run on packed streams"
