"""Task losses that tolerate missing labels and padded pixels.

Missing labels are encoded in the targets, so that one `tf.data` pipeline can mix examples labelled for different
tasks and pad dense targets:

* regression targets: `NaN` marks a missing value (a whole example, or single pixels such as padding);
* class labels and segmentation maps: a negative label (e.g. -1) marks a missing example or an ignored pixel.

Every loss averages over the valid entries only and is exactly 0 (with zero gradient) when a batch has none, so a
missing label contributes nothing to its task's loss or gradient. Losses compute in float32 (safe under mixed
precision). Classification and segmentation losses take logits.
"""

from __future__ import annotations

import keras
from keras import ops

_EPS = 1e-7


def _safe_mean(values, valid):
    valid = ops.cast(valid, "float32")
    return ops.sum(values * valid) / ops.maximum(ops.sum(valid), 1.0)


def _regression_terms(y_true, y_pred):
    y_pred = ops.cast(y_pred, "float32")
    y_true = ops.cast(ops.reshape(y_true, ops.shape(y_pred)), "float32")
    valid = ops.logical_not(ops.isnan(y_true))
    diff = ops.where(valid, y_pred - ops.where(valid, y_true, 0.0), 0.0)
    return diff, valid


def _class_terms(y_true, logits):
    logits = ops.cast(logits, "float32")
    labels = ops.cast(ops.reshape(y_true, ops.shape(logits)[:-1]), "int32")
    valid = labels >= 0
    safe = ops.where(valid, labels, 0)
    return logits, safe, valid


class _MaskedLoss(keras.losses.Loss):
    def __init__(self, name: str, reduction="sum_over_batch_size", **kwargs):
        super().__init__(name=name, reduction=reduction, dtype="float32", **kwargs)


@keras.saving.register_keras_serializable(package="sfg")
class RMSE(_MaskedLoss):
    """Root mean squared error over the valid (non-NaN) targets of the batch.

    Example:

    ```python
    RMSE()(np.array([[1.0], [np.nan]]), np.array([[0.5], [9.0]]))  # 0.5: the NaN target is ignored
    ```
    """

    def __init__(self, name: str = "rmse", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        diff, valid = _regression_terms(y_true, y_pred)
        # The epsilon keeps the gradient finite at zero error; `any_valid` makes an all-missing batch exactly 0.
        any_valid = ops.cast(ops.any(valid), "float32")
        return any_valid * ops.sqrt(_safe_mean(ops.square(diff), valid) + 1e-12)


@keras.saving.register_keras_serializable(package="sfg")
class MAE(_MaskedLoss):
    """Mean absolute error over the valid (non-NaN) targets.

    Example:

    ```python
    MAE()(np.array([[1.0], [np.nan]]), np.array([[0.5], [9.0]]))  # 0.5
    ```
    """

    def __init__(self, name: str = "mae", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        diff, valid = _regression_terms(y_true, y_pred)
        return _safe_mean(ops.abs(diff), valid)


@keras.saving.register_keras_serializable(package="sfg")
class L2Loss(_MaskedLoss):
    """Mean squared error over the valid (non-NaN) targets.

    Example:

    ```python
    L2Loss()(np.array([[1.0]]), np.array([[0.0]]))  # 1.0
    ```
    """

    def __init__(self, name: str = "l2_loss", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        diff, valid = _regression_terms(y_true, y_pred)
        return _safe_mean(ops.square(diff), valid)


@keras.saving.register_keras_serializable(package="sfg")
class Huber(_MaskedLoss):
    """Huber loss (quadratic below `delta`, linear above) over the valid (non-NaN) targets.

    Args:
        delta: float. The switch point. Defaults to 1.0.

    Example:

    ```python
    Huber(delta=1.0)(np.array([[0.0]]), np.array([[3.0]]))  # 2.5
    ```
    """

    def __init__(self, delta: float = 1.0, name: str = "huber", **kwargs):
        super().__init__(name=name, **kwargs)
        self.delta = float(delta)

    def call(self, y_true, y_pred):
        diff, valid = _regression_terms(y_true, y_pred)
        a = ops.abs(diff)
        quadratic = ops.minimum(a, self.delta)
        return _safe_mean(0.5 * ops.square(quadratic) + self.delta * (a - quadratic), valid)

    def get_config(self):
        return {**super().get_config(), "delta": self.delta}


@keras.saving.register_keras_serializable(package="sfg")
class CrossEntropy(_MaskedLoss):
    """Sparse softmax cross-entropy from logits; labels < 0 are ignored (missing example or ignored pixel).

    Works for classification (`y_true [B]`, logits `[B, C]`) and segmentation (`y_true [B, H, W]` or
    `[B, H, W, 1]`, logits `[B, H, W, C]`).

    Example:

    ```python
    CrossEntropy()(np.array([1, -1]), np.array([[0.0, 2.0], [5.0, 0.0]]))  # only the first example counts
    ```
    """

    def __init__(self, name: str = "cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        logits, labels, valid = _class_terms(y_true, y_pred)
        per_entry = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        return _safe_mean(per_entry, valid)


def _soft_dice(labels, logits, valid, num_classes):
    probs = ops.softmax(logits, axis=-1)
    onehot = ops.one_hot(labels, num_classes)
    weight = ops.expand_dims(ops.cast(valid, "float32"), -1)
    axes = list(range(len(probs.shape) - 1))
    intersection = ops.sum(probs * onehot * weight, axis=axes)
    denominator = ops.sum(probs * weight, axis=axes) + ops.sum(onehot * weight, axis=axes)
    return (2.0 * intersection + _EPS) / (denominator + _EPS)


@keras.saving.register_keras_serializable(package="sfg")
class Dice(_MaskedLoss):
    """Soft Dice loss `1 - mean_c Dice_c` over the valid pixels of the batch (background included).

    Example:

    ```python
    Dice()(labels, logits)   # labels [B, H, W] ints (-1 = ignore), logits [B, H, W, C]
    ```
    """

    def __init__(self, name: str = "dice", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        logits, labels, valid = _class_terms(y_true, y_pred)
        dice = _soft_dice(labels, logits, valid, logits.shape[-1])
        any_valid = ops.cast(ops.any(valid), "float32")
        return any_valid * (1.0 - ops.mean(dice))


@keras.saving.register_keras_serializable(package="sfg")
class DicePlusCrossEntropy(_MaskedLoss):
    """Soft Dice loss plus cross-entropy (NiftyNet's `DicePlusXEnt`, with `1 - Dice` rather than `-Dice`).

    Example:

    ```python
    DicePlusCrossEntropy()(labels, logits)   # labels [B, H, W] (-1 = ignore), logits [B, H, W, C]
    ```
    """

    def __init__(self, name: str = "dice_plus_xent", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        logits, labels, valid = _class_terms(y_true, y_pred)
        cross_entropy = _safe_mean(
            keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True), valid
        )
        dice = _soft_dice(labels, logits, valid, logits.shape[-1])
        any_valid = ops.cast(ops.any(valid), "float32")
        return cross_entropy + any_valid * (1.0 - ops.mean(dice))


LOSSES = {
    "rmse": RMSE,
    "mae": MAE,
    "l2loss": L2Loss,
    "huber": Huber,
    "crossentropy": CrossEntropy,
    "dice": Dice,
    "diceplusxent": DicePlusCrossEntropy,
}


def get_loss(name: str) -> keras.losses.Loss:
    """Returns a loss instance from its NiftyNet-style config name (`RMSE`, `MAE`, `Huber`, `L2Loss`,
    `CrossEntropy`, `Dice`, `DicePlusXEnt`; case-insensitive).

    Example:

    ```python
    loss = get_loss("DicePlusXEnt")
    ```
    """
    key = name.replace("_", "").lower()
    if key not in LOSSES:
        raise ValueError(
            f"Unknown loss {name!r}. Expected one of: RMSE, MAE, Huber, L2Loss, CrossEntropy, Dice, DicePlusXEnt."
        )
    return LOSSES[key]()
