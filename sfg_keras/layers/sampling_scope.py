"""A scope that tells SFG layers how to sample when the caller cannot pass arguments down.

Keras forwards `training` through nested layers, but not custom call arguments. Two things therefore travel in a
(thread-local, trace-time) scope instead:

* `stochastic`: whether `SFGConv` layers draw fresh group assignments at inference (used for functional models,
  whose `call` only accepts `training`);
* `num_samples`: how many Monte-Carlo passes are stacked along the batch axis. Batch-statistics normalisation then
  normalises each pass's slice separately (so it sees exactly the batch it would see in a sequential pass), and
  `per_batch` sampling draws one assignment per pass.

The scope is read when a function is traced: wrap the *tracing* call (e.g. inside the `tf.function` that
`sfg_keras.inference.mc_predict` builds), not a cached Keras `predict`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

_STATE = threading.local()


def current_stochastic() -> bool | None:
    """Returns the `stochastic` flag of the innermost `sampling_scope`, or None outside any scope."""
    return getattr(_STATE, "stochastic", None)


def current_num_samples() -> int:
    """Returns the number of Monte-Carlo passes stacked along the batch axis (1 outside any scope)."""
    return getattr(_STATE, "num_samples", 1)


@contextlib.contextmanager
def sampling_scope(stochastic: bool | None = None, num_samples: int = 1) -> Iterator[None]:
    """Sets how SFG layers sample inside the `with` block.

    Args:
        stochastic: bool or None. `True` draws fresh group assignments even with `training=False`; `False` uses
            the MAP architecture; `None` leaves the layers' default (sample only when training).
        num_samples: int. Number of equal slices the batch axis holds (Monte-Carlo passes stacked with
            `ops.tile`-like repetition of the whole batch). Defaults to 1.

    Example:

    ```python
    with sampling_scope(stochastic=True):
        y = functional_model(x, training=False)  # a fresh architecture per example
    ```
    """
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"`num_samples` must be a positive int. Received: num_samples={num_samples!r}")
    previous = (getattr(_STATE, "stochastic", None), getattr(_STATE, "num_samples", 1))
    _STATE.stochastic, _STATE.num_samples = stochastic, num_samples
    try:
        yield
    finally:
        _STATE.stochastic, _STATE.num_samples = previous
