"""Timing helpers shared by the benchmarks: interleaved side-by-side medians and Markdown output.

Every benchmark times its variants in one process, interleaved round by round (each round calls every variant
once, in a rotating order), after untimed warm-up calls that also trigger `tf.function` tracing. The reported
figure is the median over the rounds, so a burst of load on a shared machine affects all variants alike.

Example:

```python
medians = interleaved_medians({"a": step_a, "b": step_b}, repeats=10, warmup=2)
print(markdown_table(["variant", "ms"], [[k, f"{v * 1e3:.1f}"] for k, v in medians.items()]))
```
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf


def block_until_ready(value) -> None:
    """Forces the computation behind `value` (tensors, numpy arrays or nests of them) to finish."""
    for leaf in tf.nest.flatten(value):
        if isinstance(leaf, (tf.Tensor, tf.Variable)):
            leaf.numpy()
        elif leaf is not None and not isinstance(leaf, (np.ndarray, float, int)):
            np.asarray(leaf)


def interleaved_medians(
    functions: dict[str, Callable[[], object]], repeats: int, warmup: int = 2
) -> dict[str, float]:
    """Median wall time in seconds of each zero-argument function, measured side by side.

    Args:
        functions: name -> callable; each call is one timed unit (e.g. one compiled train step).
        repeats: number of timed rounds.
        warmup: untimed calls of every function first (tracing, allocator warm-up).

    Returns:
        name -> median seconds, in the order of `functions`.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"Need repeats >= 1 and warmup >= 0. Received: repeats={repeats}, warmup={warmup}")
    names = list(functions)
    for name in names:
        for _ in range(warmup):
            block_until_ready(functions[name]())
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            block_until_ready(functions[name]())
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(times[name]) for name in names}


def machine_description() -> str:
    """Platform, CPU count, accelerator and library versions, in one line."""
    gpus = tf.config.list_physical_devices("GPU")
    accelerator = f"{len(gpus)} GPU(s)" if gpus else "CPU only"
    return (
        f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {accelerator}; "
        f"Python {platform.python_version()}, TensorFlow {tf.__version__}, Keras {keras.__version__}"
    )


def header(title: str, command: str) -> str:
    """A Markdown heading with the machine, the date and the command that reproduces the table."""
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"### {title}\n\n- machine: {machine_description()}\n- date: {date}\n- command: `{command}`\n"


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table from column names and rows of already formatted cells."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def milliseconds(seconds: float) -> str:
    """Seconds formatted as milliseconds with one decimal."""
    return f"{seconds * 1e3:.1f}"
