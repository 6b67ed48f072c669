"""Training on several machines: `MultiWorkerMirroredStrategy` from `TF_CONFIG` (`[SYSTEM] distribute = multi_worker`).

Every worker runs the same `sfg_run train` command with its own `TF_CONFIG`. `model_dir` must be one folder that
every worker can read (a shared file system): all workers resume from the chief's latest checkpoint and read the
chief's dataset split and normalisation files. Only the chief writes there (checkpoints, TensorBoard logs,
settings, run record, model info, normalisation files, the lock). The other workers run exactly the same
callbacks, whose saves take part in the same collective reads, but write them into a worker-specific temporary
folder that is removed when training ends.

`TF_CONFIG` (the standard TensorFlow variable), e.g. for the second of two workers:

```
{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 1}}
```

The chief is the `chief` task if the cluster has one, else worker 0. `[NETWORK] batch_size` is the global batch
(split over all replicas of all workers); the training data are sharded by data (`AutoShardPolicy.DATA`): every
worker builds the same seeded stream and keeps its part of every global batch, so the run sees the batches a
single-machine run sees.

Under this strategy each worker's batch-normalisation moving statistics follow only its own part of the batches
(Keras 3.15 creates them with aggregation `"none"`; measured: every other weight was equal on two workers, these
were not); `SyncMovingStatistics` averages them over all replicas after every step, so every worker ends with the
same weights and the chief's checkpoints hold statistics of the whole batch. Collective ops can starve a small
inter-op thread pool, so a worker uses at least `MIN_INTER_OP_THREADS` of them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from sfg_keras.config import ConfigError
from sfg_keras.keras_adapter import flatten_layers

_EXAMPLE = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}} '
            "(the same cluster on every worker, each with its own task index)")
_TASK_TYPES = ("chief", "worker")
#: Inter-op threads a worker uses at least: with 2 (the default on 2 cores) the workers deadlock while creating the
#: variables of a network of a few hundred weights (measured with TensorFlow 2.21 on 2 CPU cores).
MIN_INTER_OP_THREADS = 4


@dataclasses.dataclass(frozen=True)
class WorkerRole:
    """This process's place in the cluster described by `TF_CONFIG`.

    Attributes:
        task_type: `"chief"` or `"worker"`.
        task_index: index among the tasks of that type.
        num_workers: number of chief and worker tasks in the cluster.
        is_chief: whether this process writes `model_dir` (the chief task, else worker 0).
    """

    task_type: str
    task_index: int
    num_workers: int
    is_chief: bool

    @property
    def name(self) -> str:
        """E.g. `"worker 1"`."""
        return f"{self.task_type} {self.task_index}"


def _tf_config_error(detail: str) -> ConfigError:
    return ConfigError(
        f"[SYSTEM] distribute = multi_worker needs the TF_CONFIG environment variable of this worker: {detail}. "
        f"Expected JSON like {_EXAMPLE}."
    )


def _cluster(config: Mapping) -> dict[str, list[str]]:
    cluster = config.get("cluster")
    if not isinstance(cluster, Mapping) or not cluster:
        raise _tf_config_error(f"'cluster' must be an object of task lists; received cluster={cluster!r}")
    if set(cluster) - set(_TASK_TYPES):
        raise _tf_config_error(
            f"only 'chief' and 'worker' tasks are supported; received cluster task types {sorted(cluster)}"
        )
    for task_type, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses or not all(
                isinstance(a, str) and a.rpartition(":")[2].isdigit() for a in addresses):
            raise _tf_config_error(
                f"cluster.{task_type} must be a non-empty list of 'host:port' strings; received {addresses!r}"
            )
    if len(cluster.get("chief", [])) > 1:
        raise _tf_config_error(f"a cluster has at most one chief; received chief={cluster['chief']!r}")
    return {task_type: list(addresses) for task_type, addresses in cluster.items()}


def parse_tf_config(environ: Mapping[str, str] | None = None) -> WorkerRole:
    """Validates `TF_CONFIG` and returns this worker's role.

    Args:
        environ: the environment to read (defaults to `os.environ`).

    Returns:
        The `WorkerRole` of the task named in `TF_CONFIG`.

    Raises:
        ConfigError: `TF_CONFIG` is missing, not JSON, or does not name this task in a chief/worker cluster
            (the message names TF_CONFIG and shows the expected form).

    Example:

    ```python
    role = parse_tf_config({"TF_CONFIG": json.dumps(
        {"cluster": {"worker": ["a:2222", "b:2222"]}, "task": {"type": "worker", "index": 1}})})
    role.is_chief  # False: worker 0 is the chief
    ```
    """
    environ = os.environ if environ is None else environ
    text = environ.get("TF_CONFIG", "")
    if not text.strip():
        raise _tf_config_error("TF_CONFIG is not set")
    try:
        config = json.loads(text)
    except ValueError as error:
        raise _tf_config_error(f"TF_CONFIG={text!r} is not valid JSON ({error})") from None
    if not isinstance(config, Mapping):
        raise _tf_config_error(f"TF_CONFIG must be a JSON object; received {text!r}")
    cluster = _cluster(config)
    task = config.get("task")
    if not isinstance(task, Mapping) or "type" not in task or "index" not in task:
        raise _tf_config_error(f"'task' must be an object with 'type' and 'index'; received task={task!r}")
    task_type, index = task["type"], task["index"]
    if task_type not in cluster or isinstance(index, bool) or not isinstance(index, int) or not (
            0 <= index < len(cluster[task_type])):
        counts = {name: len(addresses) for name, addresses in cluster.items()}
        raise _tf_config_error(f"task {dict(task)!r} is not in the cluster (tasks per type: {counts})")
    num_workers = sum(len(addresses) for addresses in cluster.values())
    is_chief = task_type == "chief" or ("chief" not in cluster and index == 0)
    return WorkerRole(str(task_type), int(index), num_workers, is_chief)


def create_strategy() -> tf.distribute.MultiWorkerMirroredStrategy:
    """Applies the Keras compatibility patches and creates the strategy from `TF_CONFIG`.

    Create it before any other TensorFlow op of the process (TensorFlow configures the collective ops at start-up);
    it waits until every worker of the cluster has started.

    Example:

    ```python
    role = parse_tf_config()  # a clear ConfigError first, when TF_CONFIG is wrong
    strategy = create_strategy()
    ```
    """
    from sfg_keras.engine import keras_compat

    keras_compat.apply_patches()
    return tf.distribute.MultiWorkerMirroredStrategy()


def barrier(strategy: tf.distribute.Strategy) -> None:
    """Returns on every worker once every worker has called it (a collective all-reduce of a scalar).

    Example:

    ```python
    if role.is_chief:
        write_shared_files()
    barrier(strategy)  # the other workers read them from here on
    ```
    """

    @tf.function
    def all_reduce():
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None)

    all_reduce()


@contextlib.contextmanager
def stop_on_lost_peers(role: WorkerRole | None) -> Iterator[None]:
    """Turns the collective-op errors raised when another worker stops into a `ConnectionError` naming this worker
    (the `sfg_run` exit status 2, no traceback); a no-op for `role=None` (a single-machine run).

    Example:

    ```python
    with stop_on_lost_peers(role):
        model.fit(dataset)  # the chief failed: "worker 1: training stopped: another worker of the cluster ..."
    ```
    """
    if role is None:
        yield
        return
    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError) as error:
        found = re.search(r"aborted by: ([^\n]+)", str(error))
        detail = found.group(1).strip() if found else (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConnectionError(
            f"{role.name}: training stopped: another worker of the cluster in TF_CONFIG stopped or cannot be reached "
            f"({detail}). The chief's output says why when it failed; then start every worker again."
        ) from error


def shard_by_data(dataset: tf.data.Dataset | None) -> tf.data.Dataset | None:
    """`dataset` with `AutoShardPolicy.DATA`: each worker keeps its part of every batch (None stays None).

    Example:

    ```python
    model.fit(shard_by_data(application.training_dataset(first_batch=0)), steps_per_epoch=100)
    ```
    """
    if dataset is None:
        return None
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def weights_digest(model) -> str:
    """SHA-256 (first 16 hex digits) of the model's weights in order: equal on workers that trained in sync.

    Example:

    ```python
    weights_digest(keras.models.load_model("model_dir/models/model-4.keras"))  # e.g. '3f1c0e9a5b7d2c44'
    ```
    """
    digest = hashlib.sha256()
    for variable in model.weights:
        array = np.ascontiguousarray(np.asarray(variable))
        digest.update(str((variable.path, array.dtype.str, array.shape)).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def configure_threads(num_threads: int) -> None:
    """Sets the inter-op threads to `max(num_threads or cpu_count, MIN_INTER_OP_THREADS)` (before the first op).

    Example:

    ```python
    configure_threads(settings.system.num_threads)
    strategy = create_strategy()
    ```
    """
    wanted = max(int(num_threads) or os.cpu_count() or 1, MIN_INTER_OP_THREADS)
    if tf.config.threading.get_inter_op_parallelism_threads() < wanted:
        try:
            tf.config.threading.set_inter_op_parallelism_threads(wanted)
        except RuntimeError:
            pass  # TensorFlow already started in this process; the setting only applies before the first op


class SyncMovingStatistics(keras.callbacks.Callback):
    """Averages every `BatchNormalization` layer's moving mean and variance over all replicas after each step.

    Args:
        strategy: the `tf.distribute` strategy the model trains under.

    Example:

    ```python
    model.fit(dataset, callbacks=[SyncMovingStatistics(strategy), PeriodicCheckpoint(...)])
    ```
    """

    def __init__(self, strategy: tf.distribute.Strategy):
        super().__init__()
        self.strategy = strategy
        self._sync = None

    def _variables(self) -> list:
        found = []
        for layer in flatten_layers(self.model, include_self=False, recursive=True):
            if isinstance(layer, keras.layers.BatchNormalization):
                found.extend(v for v in (layer.moving_mean, layer.moving_variance) if v is not None)
        return found

    def on_train_begin(self, logs=None):
        variables = self._variables()
        strategy = self.strategy

        def local_values():
            return tf.concat([tf.reshape(tf.cast(v.value, tf.float32), [-1]) for v in variables], axis=0)

        @tf.function
        def sync():
            mean = strategy.reduce(tf.distribute.ReduceOp.MEAN, strategy.run(local_values), axis=None)
            offset = 0
            for variable in variables:
                size = int(np.prod(variable.shape))
                variable.assign(tf.cast(tf.reshape(mean[offset:offset + size], variable.shape), variable.dtype))
                offset += size

        self._sync = sync if variables else None

    def on_train_batch_end(self, batch, logs=None):
        if self._sync is not None:
            self._sync()


@contextlib.contextmanager
def scratch_dir(role: WorkerRole) -> Iterator[Path]:
    """A temporary folder for a non-chief worker's outputs, removed on exit (also after an error).

    Example:

    ```python
    with scratch_dir(role) as folder:
        model.fit(dataset, callbacks=[PeriodicCheckpoint(folder / "models", every_n_steps=100)])
    ```
    """
    folder = Path(tempfile.mkdtemp(prefix=f"sfg_run_{role.task_type}{role.task_index}_"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
