"""Compatibility patches: Keras 3.15 `fit` / `evaluate` under `tf.distribute.MultiWorkerMirroredStrategy`.

COMPATIBILITY MODULE. Keras 3.15's TensorFlow trainer fails under `MultiWorkerMirroredStrategy` (MWMS) for two
local reasons, both in `keras/src/backend/tensorflow/trainer.py`:

1. `TensorFlowTrainer._maybe_symbolic_build` calls `strategy.reduce("MEAN", batch, axis=None)` on the whole nested
   batch to get one concrete batch for the symbolic build; MWMS (`CollectiveAllReduceStrategy`) cannot reduce a
   nest: `ValueError: Attempt to convert a value ({...PerReplica...}) ... to a Tensor`
   (related: keras-team/keras#20329).
   Patch: build from the first local replica's batch, which has the per-replica shapes the build needs.
2. `reduce_per_replica(..., reduction="auto")` becomes `strategy.reduce("MEAN", v, axis=0)` for multi-worker, which
   fails on the scalar logs of every train and test step: `Invalid reduction dimension 0 for input with 0
   dimensions` (tensorflow/tensorflow#72388, closed as stale).
   Patch: reduce scalar logs with `axis=None` (the mean over all replicas, as Keras computes for
   `MirroredStrategy`); everything else goes to the original function.

`apply_patches()` installs both, idempotently; the engine calls it only for `[SYSTEM] distribute = multi_worker`,
so single-machine runs use Keras unchanged.

When to drop this module: when `tests/test_multi_worker.py::test_keras_multi_worker_bugs_still_present` fails, a
Keras release has fixed one or both bugs. Delete the matching patch (or the module and its call in
`sfg_keras.engine.multi_worker`) and that test's expectation; keep `test_two_workers_train_in_sync`.

Example:

```python
from sfg_keras.engine import keras_compat

keras_compat.apply_patches()  # before model.fit under MultiWorkerMirroredStrategy
```
"""

from __future__ import annotations

import functools

import tensorflow as tf
from keras.src import tree
from keras.src.backend.tensorflow import trainer as _trainer

#: Names of the patches installed in this process.
APPLIED: set[str] = set()

_ORIGINALS = {
    "symbolic_build": _trainer.TensorFlowTrainer._maybe_symbolic_build,
    "reduce_per_replica": _trainer.reduce_per_replica,
}


def _is_multi_worker(strategy) -> bool:
    return bool(strategy is not None and _trainer._collective_all_reduce_multi_worker(strategy))


def _first_local(value, strategy):
    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.experimental_local_results(value)[0]
    return value


def _maybe_symbolic_build(self, iterator=None, data_batch=None):
    """`TensorFlowTrainer._maybe_symbolic_build` building from the first local replica's batch (bug 1)."""
    strategy = self._distribute_strategy
    if iterator is None or not _is_multi_worker(strategy):
        return _ORIGINALS["symbolic_build"](self, iterator=iterator, data_batch=data_batch)
    for _, _, batches in iterator:
        data_batch = tree.map_structure(functools.partial(_first_local, strategy=strategy), next(batches))
        break
    with strategy.scope():
        self._symbolic_build(data_batch=data_batch)


def _is_scalar_per_replica(value, strategy) -> bool:
    if not isinstance(value, (tf.distribute.DistributedValues, tf.Tensor)):
        return False
    local = strategy.experimental_local_results(value) if isinstance(
        value, tf.distribute.DistributedValues) else (value,)
    return all(getattr(v, "shape", None) is not None and v.shape.rank == 0 for v in local)


def reduce_per_replica(values, strategy, reduction):
    """`keras...trainer.reduce_per_replica` that reduces scalars with `axis=None` under multi-worker (bug 2)."""
    original = _ORIGINALS["reduce_per_replica"]
    if reduction not in ("auto", "mean") or not _is_multi_worker(strategy):
        return original(values, strategy, reduction)

    def reduce(value):
        if _is_scalar_per_replica(value, strategy):
            return strategy.reduce("MEAN", value, axis=None)
        return original(value, strategy, reduction)

    return tree.map_structure(reduce, values)


def patch_symbolic_build() -> None:
    """Installs the fix of bug 1 (see the module docstring); idempotent."""
    _trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    APPLIED.add("symbolic_build")


def patch_reduce_per_replica() -> None:
    """Installs the fix of bug 2 (see the module docstring); idempotent."""
    _trainer.reduce_per_replica = reduce_per_replica
    APPLIED.add("reduce_per_replica")


def apply_patches() -> None:
    """Installs both patches (idempotent). Harmless without a multi-worker strategy: the patched functions defer to
    Keras' originals unless the model's strategy is a multi-worker `MultiWorkerMirroredStrategy`."""
    patch_symbolic_build()
    patch_reduce_per_replica()


def remove_patches() -> None:
    """Restores Keras' original functions (for tests)."""
    _trainer.TensorFlowTrainer._maybe_symbolic_build = _ORIGINALS["symbolic_build"]
    _trainer.reduce_per_replica = _ORIGINALS["reduce_per_replica"]
    APPLIED.clear()
