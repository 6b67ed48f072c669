"""`StreamMerge`: the per-task inputs of the heads, `merge(F_t, F_s)`; and `merge_streams`, the one merge rule that
`SFGConv` (at its input) and `StreamMerge` (before the heads) share."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

_MODES = ("sum", "concat")


def merge_streams(task_stream, shared_stream, mode: str = "sum", projection: keras.layers.Layer | None = None):
    """`merge(F_t, F_s)`: a task stream merged with the shared stream.

    `"sum"` adds them; `"concat"` concatenates them along channels (task channels first) and applies `projection`,
    a per-task linear map back to the stream width (a 1x1 convolution or a `Dense` on the channel axis). When one
    of the two streams is `None` (a group without kernels) the other is returned as it is; both `None` gives
    `None`.

    Args:
        task_stream: tensor `[..., C]` or None.
        shared_stream: tensor `[..., C]` or None.
        mode: str. `"sum"` or `"concat"`. Defaults to `"sum"`.
        projection: the layer applied to the concatenation in `"concat"` mode.

    Returns:
        The merged tensor, or None.

    Example:

    ```python
    merged = merge_streams(streams[0], streams[-1])   # F_1 + F_s
    ```
    """
    if task_stream is None or shared_stream is None:
        return shared_stream if task_stream is None else task_stream
    if mode == "sum":
        return task_stream + shared_stream
    return projection(ops.concatenate([task_stream, shared_stream], axis=-1))


def projection_weights(projection: keras.layers.Layer) -> tuple[np.ndarray, np.ndarray | None]:
    """The weights of a `"concat"` merge projection as a linear map on channels.

    Args:
        projection: a built 1x1 convolution or `Dense` layer.

    Returns:
        `(kernel, bias)`: float numpy `[2 * C, C]` (rows: the task stream's channels, then the shared stream's) and
        `[C]`, or None for a projection without bias.

    Example:

    ```python
    kernel, bias = projection_weights(merge.projection(0))
    ```
    """
    kernel = np.asarray(ops.convert_to_numpy(projection.kernel))
    bias = np.asarray(ops.convert_to_numpy(projection.bias)) if projection.use_bias else None
    return kernel.reshape(-1, kernel.shape[-1]), bias


@keras.saving.register_keras_serializable(package="sfg")
class StreamMerge(keras.layers.Layer):
    """Turns the streams `(F_1, ..., F_T, F_s)` into the `T` task features `merge(F_t, F_s)`.

    `"sum"` adds the shared stream to every task stream; `"concat"` concatenates them along channels and projects
    back to the stream width with a per-task 1x1 convolution (a `Dense` on the channel axis). A `None` task or
    shared stream (a group without kernels) is skipped.

    Args:
        num_tasks: int. Number of tasks `T`.
        mode: str. `"sum"` or `"concat"`. Defaults to `"sum"`.

    Example:

    ```python
    task_features = StreamMerge(num_tasks=2)(streams)   # list of 2 tensors
    ```
    """

    def __init__(self, num_tasks: int, mode: str = "sum", **kwargs):
        super().__init__(**kwargs)
        if mode not in _MODES:
            raise ValueError(f"`mode` must be one of {_MODES}. Received: mode={mode!r}")
        self.num_tasks = num_tasks
        self.mode = mode
        self.projections = []
        self._projection_slot = {}

    def build(self, input_shape):
        if len(input_shape) != self.num_tasks + 1:
            raise ValueError(
                f"{self.name}: expected {self.num_tasks + 1} streams (tasks then shared). Received {len(input_shape)}"
            )
        shared = input_shape[-1]
        for t in range(self.num_tasks):
            task = input_shape[t]
            if self.mode == "concat" and task is not None and shared is not None:
                projection = keras.layers.Dense(task[-1], dtype=self.dtype_policy, name=f"merge_task_{t + 1}")
                projection.build((*task[:-1], task[-1] + shared[-1]))
                self._projection_slot[t] = len(self.projections)
                self.projections.append(projection)
        self.built = True

    def projection(self, task: int) -> keras.layers.Dense | None:
        """The `"concat"` projection of task `task` (0-based): a `Dense` from `2 * C` to `C` channels, or None
        (`"sum"` mode, or a task or shared stream that was None at build time: nothing to project).

        Example:

        ```python
        merge.projection(0).kernel.shape   # (2 * C, C)
        ```
        """
        if not 0 <= task < self.num_tasks:
            raise ValueError(f"`task` must be in [0, {self.num_tasks - 1}]. Received: task={task!r}")
        slot = self._projection_slot.get(task)
        return None if slot is None else self.projections[slot]

    def merge_weights(self, task: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The `"concat"` merge of task `task` as a linear map: `(kernel [2 * C, C], bias [C] or None)`, the rows
        reading `concat(F_t, F_s)` (see `projection_weights`).

        Raises:
            ValueError: if task `task` has no projection (`"sum"` mode, or a None stream at build time).
        """
        projection = self.projection(task)
        if projection is None:
            raise ValueError(f"{self.name}: task {task + 1} has no concat projection (mode={self.mode!r}).")
        return projection_weights(projection)

    def call(self, inputs):
        shared = inputs[-1]
        outputs = []
        for t in range(self.num_tasks):
            merged = merge_streams(inputs[t], shared, self.mode, self.projection(t))
            if merged is None:
                raise ValueError(f"{self.name}: task {t + 1} has neither its own nor a shared stream.")
            outputs.append(merged)
        return tuple(outputs)

    def compute_output_spec(self, inputs):
        shared = inputs[-1]
        return tuple(
            keras.KerasTensor((inputs[t] if inputs[t] is not None else shared).shape, dtype=self.compute_dtype)
            for t in range(self.num_tasks)
        )

    def get_config(self):
        return {**super().get_config(), "num_tasks": self.num_tasks, "mode": self.mode}
