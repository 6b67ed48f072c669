"""`TaskHead`: what one task predicts, and the head layer that predicts it."""

from __future__ import annotations

import dataclasses

import keras

TASK_TYPES = ("regression", "classification", "segmentation")


@dataclasses.dataclass(frozen=True)
class TaskHead:
    """One task of a multi-task network.

    Args:
        name: str. Task name (a Python identifier; the model's output key).
        type: str. `"regression"` (`units` real outputs: a vector after global pooling, or a dense map),
            `"classification"` (`units` class logits per example) or `"segmentation"` (`units` class logits per
            pixel).
        units: int. Number of outputs (regression) or classes (classification, segmentation).

    Example:

    ```python
    heads = [TaskHead("age", "regression", 1), TaskHead("gender", "classification", 2)]
    ```
    """

    name: str
    type: str
    units: int = 1

    def __post_init__(self):
        if not self.name.isidentifier():
            raise ValueError(f"Task names must be Python identifiers. Received: name={self.name!r}")
        if self.type not in TASK_TYPES:
            raise ValueError(f"Task {self.name!r}: `type` must be one of {TASK_TYPES}. Received: type={self.type!r}")
        minimum = 1 if self.type == "regression" else 2
        if not isinstance(self.units, int) or self.units < minimum:
            raise ValueError(
                f"Task {self.name!r} ({self.type}) needs units >= {minimum}. Received: units={self.units!r}"
            )

    @property
    def is_categorical(self) -> bool:
        """Whether the head outputs class logits."""
        return self.type != "regression"

    def to_config(self) -> dict:
        return dataclasses.asdict(self)


def as_task_heads(tasks) -> list[TaskHead]:
    """Accepts `TaskHead`s, dicts or `(name, type, units)` tuples and returns `TaskHead`s with unique names."""
    heads = []
    for task in tasks:
        if isinstance(task, TaskHead):
            heads.append(task)
        elif isinstance(task, dict):
            heads.append(TaskHead(**task))
        else:
            heads.append(TaskHead(*task))
    names = [h.name for h in heads]
    if not heads or len(set(names)) != len(names):
        raise ValueError(f"Tasks must be a non-empty list with unique names. Received names: {names}")
    return heads


def make_head(task: TaskHead, dense: bool, rank: int = 2) -> keras.layers.Layer:
    """The output layer of `task`, in float32 (safe under mixed precision).

    Args:
        task: TaskHead.
        dense: bool. True when the head reads a feature map and predicts per pixel (1x1 convolution); False when it
            reads a pooled feature vector (`Dense`).
        rank: int. Spatial rank of dense heads.
    """
    if not dense:
        if task.type == "segmentation":
            raise ValueError(f"Task {task.name!r}: a segmentation head needs a dense (fully convolutional) network.")
        return keras.layers.Dense(task.units, dtype="float32", name=f"head_{task.name}")
    if task.type == "classification":
        return keras.Sequential(
            [
                keras.layers.GlobalAveragePooling2D() if rank == 2 else keras.layers.GlobalAveragePooling3D(),
                keras.layers.Dense(task.units, dtype="float32"),
            ],
            name=f"head_{task.name}",
        )
    conv = keras.layers.Conv2D if rank == 2 else keras.layers.Conv3D
    return conv(task.units, 1, dtype="float32", name=f"head_{task.name}")
