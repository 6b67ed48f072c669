"""`StreamMerge`: the per-task inputs of the heads, `merge(F_t, F_s)`."""

from __future__ import annotations

import keras
from keras import ops

_MODES = ("sum", "concat")


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

    def call(self, inputs):
        shared = inputs[-1]
        outputs = []
        for t in range(self.num_tasks):
            task = inputs[t]
            if task is None or shared is None:
                merged = shared if task is None else task
                if merged is None:
                    raise ValueError(f"{self.name}: task {t + 1} has neither its own nor a shared stream.")
            elif self.mode == "sum":
                merged = task + shared
            else:
                merged = self.projections[self._projection_slot[t]](ops.concatenate([task, shared], axis=-1))
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
