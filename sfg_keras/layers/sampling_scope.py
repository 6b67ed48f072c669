"""A scope that tells SFG layers how to sample when the caller cannot pass arguments down.

Keras forwards `training` through nested layers, but not custom call arguments. Two things therefore travel in a
(thread-local, trace-time) scope instead:

* `stochastic`: whether `SFGConv` layers draw fresh group assignments at inference (used for functional models,
  whose `call` only accepts `training`);
* `num_samples`: how many Monte-Carlo passes are stacked along the batch axis. Batch-statistics normalisation then
  normalises each pass's slice separately (so it sees exactly the batch it would see in a sequential pass), and
  `per_batch` sampling draws one assignment per pass;
* `deterministic`: which deterministic network a non-sampling pass computes: `"map"` (the MAP architecture,
  `argmax p` per kernel) or `"expected"` (the expected network: every kernel weighted by its expected assignment,
  `p` for straight-through hard sampling, the mean relaxed sample for soft sampling).

The scope is read when a function is traced: wrap the *tracing* call (e.g. inside the `tf.function` that
`sfg_keras.inference.mc_predict` builds), not a cached Keras `predict`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

_STATE = threading.local()

DETERMINISTIC_MODES = ("map", "expected")


def current_stochastic() -> bool | None:
    """Returns the `stochastic` flag of the innermost `sampling_scope`, or None outside any scope."""
    return getattr(_STATE, "stochastic", None)


def current_deterministic() -> str:
    """Returns the deterministic mode of the innermost `sampling_scope`: `"map"` (default) or `"expected"`."""
    return getattr(_STATE, "deterministic", "map")


def current_num_samples() -> int:
    """Returns the number of Monte-Carlo passes stacked along the batch axis (1 outside any scope)."""
    return getattr(_STATE, "num_samples", 1)


@contextlib.contextmanager
def sampling_scope(
    stochastic: bool | None = None, num_samples: int = 1, deterministic: str = "map"
) -> Iterator[None]:
    """Sets how SFG layers sample inside the `with` block.

    Args:
        stochastic: bool or None. `True` draws fresh group assignments even with `training=False`; `False` uses
            the MAP architecture; `None` leaves the layers' default (sample only when training).
        num_samples: int. Number of equal slices the batch axis holds (Monte-Carlo passes stacked with
            `ops.tile`-like repetition of the whole batch). Defaults to 1.
        deterministic: str. What a pass that does not sample computes: `"map"` (the MAP architecture) or
            `"expected"` (the expected network). Defaults to `"map"`.

    Example:

    ```python
    with sampling_scope(stochastic=True):
        y = functional_model(x, training=False)  # a fresh architecture per example
    with sampling_scope(stochastic=False, deterministic="expected"):
        y = functional_model(x, training=False)  # the expected network (mask = p)
    ```
    """
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"`num_samples` must be a positive int. Received: num_samples={num_samples!r}")
    if deterministic not in DETERMINISTIC_MODES:
        raise ValueError(
            f"`deterministic` must be one of {DETERMINISTIC_MODES}. Received: deterministic={deterministic!r}"
        )
    previous = (
        getattr(_STATE, "stochastic", None),
        getattr(_STATE, "num_samples", 1),
        getattr(_STATE, "deterministic", "map"),
    )
    _STATE.stochastic, _STATE.num_samples, _STATE.deterministic = stochastic, num_samples, deterministic
    try:
        yield
    finally:
        _STATE.stochastic, _STATE.num_samples, _STATE.deterministic = previous
