"""`PhysicalOutput`: a regression output in its physical unit and range (e.g. synthetic CT in -1024..3071 HU).

A network regresses a normalised target `y` (the mr_ct CT target is `HU / 1024 + 1`, the UTKFace age is
`years / 100`). A `PhysicalOutput` says how `y` maps to the unit a user reads, `value = scale * y + offset`, and the
range a value may take, `[minimum, maximum]` (either end may be open). The same object bounds every place a value
leaves the package: `sfg_run inference` (`bound_predictions`, before the application writes its files), every
exported SavedModel signature and both exported `.keras` files (`sfg_keras.serving.ServingModel`), so the command
line, the served model and the compact model agree.

A Monte-Carlo prediction is bounded after aggregation: the mean is clipped, the standard deviation is the spread of
the unclipped samples (scaled to the unit).

`[INFERENCE] output_bounds` sets the range per task in a config file (`parse_output_bounds`); an application gives
the unit (`BaseApplication.physical_outputs`) and its default range (the mr_ct application bounds CT to the
-1024..3071 HU of a 12-bit CT).

This module needs only numpy; the graph code passes `xp=tf` (or `keras.ops`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

#: `[INFERENCE] output_bounds` entry that removes an application's default bound of a task.
NO_BOUND = "none"


@dataclasses.dataclass(frozen=True)
class PhysicalOutput:
    """How a regression output maps to its physical unit, and the range it is bounded to.

    Attributes:
        task: the regression task's name.
        scale: `value = scale * y + offset` (`y` the network's output). Defaults to 1.
        offset: see `scale`. Defaults to 0.
        unit: the unit's name for messages and metadata, e.g. `"HU"`. Defaults to `""`.
        minimum: the lowest value in the unit, or None (open). Defaults to None.
        maximum: the highest value in the unit, or None (open). Defaults to None.

    Example:

    ```python
    ct = PhysicalOutput("ct", scale=1024.0, offset=-1024.0, unit="HU", minimum=-1024.0, maximum=3071.0)
    ct.to_physical(np.array([-0.5, 1.0, 9.0]))   # [-1024., 0., 3071.]: clipped to the CT range
    ct.network_bounds()                          # (0.0, 3.9990234375): the same range for y
    ```
    """

    task: str
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    minimum: float | None = None
    maximum: float | None = None

    def __post_init__(self):
        if not isinstance(self.task, str) or not self.task.isidentifier():
            raise ValueError(f"`task` must be a task name (an identifier). Received: task={self.task!r}")
        for name in ("scale", "offset"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"`{name}` must be a finite number. Received: {name}={value!r}")
        if self.scale == 0:
            raise ValueError(f"`scale` must not be 0 (task {self.task!r}). Received: scale={self.scale!r}")
        for name in ("minimum", "maximum"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            ):
                raise ValueError(f"`{name}` must be None or a finite number. Received: {name}={value!r}")
        if self.minimum is not None and self.maximum is not None and self.minimum >= self.maximum:
            raise ValueError(
                f"Task {self.task!r}: `minimum` must be below `maximum`. Received: minimum={self.minimum!r}, "
                f"maximum={self.maximum!r}"
            )
        object.__setattr__(self, "scale", float(self.scale))
        object.__setattr__(self, "offset", float(self.offset))
        for name in ("minimum", "maximum"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, float(getattr(self, name)))

    @property
    def bounded(self) -> bool:
        """Whether either end of the range is set."""
        return self.minimum is not None or self.maximum is not None

    def network_bounds(self) -> tuple[float | None, float | None]:
        """The range in the network's unit `y` (`(value - offset) / scale`, ends swapped for a negative scale)."""
        ends = [None if v is None else (v - self.offset) / self.scale for v in (self.minimum, self.maximum)]
        return (ends[0], ends[1]) if self.scale > 0 else (ends[1], ends[0])

    def clip(self, value, xp: Any = np):
        """`value` (in the unit) clipped to `[minimum, maximum]`; `xp` is numpy or a tensor module."""
        if self.minimum is not None:
            value = xp.maximum(value, self.minimum)
        if self.maximum is not None:
            value = xp.minimum(value, self.maximum)
        return value

    def to_physical(self, y, xp: Any = np):
        """Network output `y` -> bounded value in the unit."""
        return self.clip(y * self.scale + self.offset, xp=xp)

    def std_to_physical(self, std):
        """A standard deviation of `y` in the unit (`|scale| * std`; not bounded)."""
        return std * abs(self.scale)

    def bound_network(self, y, xp: Any = np):
        """`y` clipped to the range expressed in the network's unit (what `sfg_run inference` applies before an
        application converts its outputs)."""
        low, high = self.network_bounds()
        if low is not None:
            y = xp.maximum(y, low)
        if high is not None:
            y = xp.minimum(y, high)
        return y

    def describe(self) -> str:
        """e.g. `"ct in HU = 1024 * y - 1024, bounded to [-1024, 3071]"` (`y` the network's output)."""
        unit = f" in {self.unit}" if self.unit else ""
        low = "-inf" if self.minimum is None else f"{self.minimum:g}"
        high = "inf" if self.maximum is None else f"{self.maximum:g}"
        bound = f", bounded to [{low}, {high}]" if self.bounded else ", unbounded"
        offset = f" {'-' if self.offset < 0 else '+'} {abs(self.offset):g}" if self.offset else ""
        return f"{self.task}{unit} = {self.scale:g} * y{offset}{bound}"

    def get_config(self) -> dict:
        """A JSON-able dict; `PhysicalOutput(**config)` rebuilds it."""
        return dataclasses.asdict(self)


def bound_predictions(
    predictions: Mapping[str, Mapping[str, np.ndarray]], outputs: Mapping[str, PhysicalOutput]
) -> dict[str, dict[str, np.ndarray]]:
    """Predictions in the schema of `sfg_keras.inference.predict` with every bounded task's `mean` clipped to its
    range, in the network's unit (the other keys are unchanged; the input is not modified).

    Args:
        predictions: `{task: {key: array}}`.
        outputs: `{task: PhysicalOutput}`; tasks without an entry, or unbounded, are unchanged.

    Returns:
        A new `{task: {key: array}}`.

    Example:

    ```python
    ct = PhysicalOutput("ct", scale=1024.0, offset=-1024.0, minimum=-1024.0, maximum=3071.0)
    bound_predictions({"ct": {"mean": np.array([-1.5, 1.0])}}, {"ct": ct})["ct"]["mean"]   # [0., 1.]
    ```
    """
    bounded = {}
    for task, values in predictions.items():
        values = dict(values)
        output = outputs.get(task)
        if output is not None and output.bounded and "mean" in values:
            mean = np.asarray(values["mean"])
            values["mean"] = output.bound_network(mean).astype(mean.dtype, copy=False)
        bounded[task] = values
    return bounded


def parse_output_bounds(
    entries: Iterable[str], regression_tasks: Sequence[str]
) -> dict[str, tuple[float | None, float | None] | None]:
    """Reads `[INFERENCE] output_bounds` entries `task:low:high` (either number may be empty: an open end) or
    `task:none` (no bound, also not the application's default).

    Args:
        entries: the entries as written, e.g. `("ct:-1024:3071",)`.
        regression_tasks: the names of the regression tasks (only those can be bounded).

    Returns:
        `{task: (low, high)}`, or `{task: None}` for `task:none`.

    Raises:
        ValueError: a malformed entry, an unknown or non-regression task, a task given twice, or low >= high; the
            message quotes the entry and says what was expected.

    Example:

    ```python
    parse_output_bounds(["ct:-1024:3071", "age:0:"], ["ct", "age"])   # {"ct": (-1024.0, 3071.0), "age": (0.0, None)}
    ```
    """
    expected = "expected 'task:low:high' (an empty low or high leaves that end open) or 'task:none'"
    bounds: dict[str, tuple[float | None, float | None] | None] = {}
    for entry in entries:
        parts = [part.strip() for part in str(entry).split(":")]
        task = parts[0]
        if task not in regression_tasks:
            known = ", ".join(regression_tasks) or "none"
            raise ValueError(
                f"entry {entry!r}: {task!r} is not a regression task; only regression outputs are bounded "
                f"(regression tasks: {known}); {expected}"
            )
        if task in bounds:
            raise ValueError(f"entry {entry!r}: task {task!r} is bounded twice; expected one entry per task")
        if len(parts) == 2 and parts[1].lower() == NO_BOUND:
            bounds[task] = None
            continue
        if len(parts) != 3:
            raise ValueError(f"entry {entry!r}: {expected}")
        ends = []
        for text in parts[1:]:
            if not text:
                ends.append(None)
                continue
            try:
                number = float(text)
            except ValueError:
                raise ValueError(f"entry {entry!r}: {text!r} is not a number; {expected}") from None
            if not math.isfinite(number):
                raise ValueError(f"entry {entry!r}: {text!r} is not finite; {expected}")
            ends.append(number)
        if ends[0] is not None and ends[1] is not None and ends[0] >= ends[1]:
            raise ValueError(f"entry {entry!r}: low {ends[0]:g} is not below high {ends[1]:g}; {expected}")
        if ends == [None, None]:
            raise ValueError(f"entry {entry!r}: neither end is given; {expected}")
        bounds[task] = (ends[0], ends[1])
    return bounds
