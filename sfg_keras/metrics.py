"""Keras metrics that skip missing labels (NaN regression targets, negative class labels)."""

from __future__ import annotations

import keras
from keras import ops


class _MaskedMean(keras.metrics.Metric):
    def __init__(self, name: str, **kwargs):
        kwargs.pop("dtype", None)  # always float32 (a reloaded config carries it too)
        super().__init__(name=name, dtype="float32", **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def _accumulate(self, values, valid):
        valid = ops.cast(valid, "float32")
        self.total.assign_add(ops.sum(ops.cast(values, "float32") * valid))
        self.count.assign_add(ops.sum(valid))

    def result(self):
        return self.total / ops.maximum(self.count, 1.0)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)


@keras.saving.register_keras_serializable(package="sfg")
class MaskedMeanAbsoluteError(_MaskedMean):
    """Mean absolute error over non-NaN targets, times `scale` (e.g. 100 to report ages stored as age / 100).

    Args:
        scale: float. Multiplies the error (the unit conversion of the target). Defaults to 1.0.

    Example:

    ```python
    metric = MaskedMeanAbsoluteError(scale=100.0, name="mae_years")
    ```
    """

    def __init__(self, scale: float = 1.0, name: str = "mae", **kwargs):
        super().__init__(name=name, **kwargs)
        self.scale = float(scale)

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_pred = ops.cast(y_pred, "float32")
        y_true = ops.cast(ops.reshape(y_true, ops.shape(y_pred)), "float32")
        valid = ops.logical_not(ops.isnan(y_true))
        self._accumulate(self.scale * ops.abs(ops.where(valid, y_pred - ops.where(valid, y_true, 0.0), 0.0)), valid)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


@keras.saving.register_keras_serializable(package="sfg")
class MaskedAccuracy(_MaskedMean):
    """Accuracy of `argmax(logits)` over labels >= 0 (classification, or pixels for segmentation).

    Example:

    ```python
    metric = MaskedAccuracy(name="accuracy")
    ```
    """

    def __init__(self, name: str = "accuracy", **kwargs):
        super().__init__(name=name, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = ops.cast(ops.reshape(y_true, ops.shape(y_pred)[:-1]), "int32")
        correct = ops.cast(ops.equal(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), labels), "float32")
        self._accumulate(correct, labels >= 0)


@keras.saving.register_keras_serializable(package="sfg")
class MeanDice(keras.metrics.Metric):
    """Hard Dice of `argmax(logits)` averaged over the foreground classes, accumulated over batches.

    Labels < 0 are ignored. A class absent from both prediction and reference so far counts as Dice 1.

    Args:
        num_classes: int. Number of classes including background (class 0, excluded from the mean).

    Example:

    ```python
    metric = MeanDice(num_classes=5, name="dice")
    ```
    """

    def __init__(self, num_classes: int, name: str = "dice", **kwargs):
        kwargs.pop("dtype", None)  # always float32 (a reloaded config carries it too)
        super().__init__(name=name, dtype="float32", **kwargs)
        if num_classes < 2:
            raise ValueError(f"`num_classes` must be >= 2. Received: num_classes={num_classes}")
        self.num_classes = int(num_classes)
        self.intersection = self.add_variable(shape=(num_classes,), initializer="zeros", name="intersection")
        self.denominator = self.add_variable(shape=(num_classes,), initializer="zeros", name="denominator")

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = ops.cast(ops.reshape(y_true, ops.shape(y_pred)[:-1]), "int32")
        valid = ops.expand_dims(ops.cast(labels >= 0, "float32"), -1)
        pred = ops.one_hot(ops.argmax(y_pred, axis=-1), self.num_classes) * valid
        ref = ops.one_hot(ops.where(labels >= 0, labels, 0), self.num_classes) * valid
        axes = list(range(len(pred.shape) - 1))
        self.intersection.assign_add(ops.sum(pred * ref, axis=axes))
        self.denominator.assign_add(ops.sum(pred, axis=axes) + ops.sum(ref, axis=axes))

    def result(self):
        dice = ops.where(self.denominator > 0, 2.0 * self.intersection / ops.maximum(self.denominator, 1e-7), 1.0)
        return ops.mean(dice[1:])

    def reset_state(self):
        self.intersection.assign(ops.zeros((self.num_classes,)))
        self.denominator.assign(ops.zeros((self.num_classes,)))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}
