"""Tests of the masked task losses (and metrics): numpy references, missing labels, padded pixels."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from sfg_keras.losses import MAE, RMSE, CrossEntropy, Dice, DicePlusCrossEntropy, Huber, L2Loss, get_loss
from sfg_keras.metrics import MaskedAccuracy, MaskedMeanAbsoluteError, MeanDice

_RNG = np.random.default_rng(0)


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _np_cross_entropy(labels, logits):
    valid = labels >= 0
    log_p = np.log(_softmax(logits))
    picked = np.take_along_axis(log_p, np.where(valid, labels, 0)[..., None], -1)[..., 0]
    return -(picked * valid).sum() / max(valid.sum(), 1)


def _np_dice_loss(labels, logits, eps=1e-7):
    valid = (labels >= 0)[..., None].astype("float64")
    probs = _softmax(logits)
    onehot = np.eye(logits.shape[-1])[np.where(labels >= 0, labels, 0)]
    axes = tuple(range(logits.ndim - 1))
    inter = (probs * onehot * valid).sum(axes)
    denom = (probs * valid).sum(axes) + (onehot * valid).sum(axes)
    return 1.0 - ((2 * inter + eps) / (denom + eps)).mean()


_REGRESSION = {
    "rmse": (RMSE(), lambda d: np.sqrt(np.mean(d**2))),
    "mae": (MAE(), lambda d: np.mean(np.abs(d))),
    "l2": (L2Loss(), lambda d: np.mean(d**2)),
    "huber": (Huber(delta=0.7), lambda d: np.mean(np.where(np.abs(d) <= 0.7, 0.5 * d**2, 0.7 * (np.abs(d) - 0.35)))),
}


def _value_and_grad(loss, y_true, y_pred):
    y_pred = tf.convert_to_tensor(y_pred, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(y_pred)
        value = loss(y_true, y_pred)
    return float(value), keras.ops.convert_to_numpy(tape.gradient(value, y_pred))


@pytest.mark.parametrize("name", sorted(_REGRESSION))
def test_regression_losses_match_numpy_and_ignore_nan(name):
    loss, reference = _REGRESSION[name]
    y_pred = _RNG.normal(size=(6, 2)).astype("float32")
    y_true = _RNG.normal(size=(6, 2)).astype("float32")
    value, _ = _value_and_grad(loss, y_true, y_pred)
    assert value == pytest.approx(reference((y_pred - y_true).astype("float64")), rel=1e-5)
    # missing labels: a whole example and a single value
    y_missing = y_true.copy()
    y_missing[1] = np.nan
    y_missing[4, 0] = np.nan
    valid = ~np.isnan(y_missing)
    value, grad = _value_and_grad(loss, y_missing, y_pred)
    assert value == pytest.approx(reference((y_pred - y_true)[valid].astype("float64")), rel=1e-5)
    assert np.all(np.isfinite(grad))
    assert np.all(grad[~valid] == 0.0)
    assert np.all(grad[valid] != 0.0)
    # a wild prediction on a missing label changes nothing
    wild = y_pred.copy()
    wild[~valid] = 1e6
    assert _value_and_grad(loss, y_missing, wild)[0] == pytest.approx(value, rel=1e-6)


def test_regression_all_missing_gives_zero_loss_and_gradient():
    for name, (loss, _) in _REGRESSION.items():
        value, grad = _value_and_grad(loss, np.full((4, 1), np.nan, "float32"), _RNG.normal(size=(4, 1)))
        assert value == 0.0, name
        np.testing.assert_array_equal(grad, 0.0, err_msg=name)


def test_rmse_gradient_is_finite_at_zero_error():
    value, grad = _value_and_grad(RMSE(), np.ones((3, 1), "float32"), np.ones((3, 1), "float32"))
    assert value == pytest.approx(0.0, abs=1e-5)
    assert np.all(np.isfinite(grad))


def test_regression_dense_targets_with_padding():
    y_pred = _RNG.normal(size=(2, 5, 5, 1)).astype("float32")
    y_true = _RNG.normal(size=(2, 5, 5, 1)).astype("float32")
    padded = y_true.copy()
    padded[:, :, 3:] = np.nan  # padded pixels
    value, grad = _value_and_grad(MAE(), padded, y_pred)
    assert value == pytest.approx(np.abs(y_pred[:, :, :3] - y_true[:, :, :3]).mean(), rel=1e-5)
    np.testing.assert_array_equal(grad[:, :, 3:], 0.0)
    # targets without the channel axis are reshaped to the prediction
    assert _value_and_grad(MAE(), y_true[..., 0], y_pred)[0] == pytest.approx(np.abs(y_pred - y_true).mean(), rel=1e-5)


def test_cross_entropy_classification():
    logits = _RNG.normal(size=(6, 4)).astype("float32") * 3
    labels = np.array([0, 3, -1, 2, -1, 1])
    value, grad = _value_and_grad(CrossEntropy(), labels, logits)
    assert value == pytest.approx(_np_cross_entropy(labels, logits.astype("float64")), rel=1e-5)
    np.testing.assert_array_equal(grad[labels < 0], 0.0)
    assert np.all(np.abs(grad[labels >= 0]).sum(-1) > 0)
    # labels as a column vector
    assert _value_and_grad(CrossEntropy(), labels[:, None], logits)[0] == pytest.approx(value, rel=1e-6)
    value, grad = _value_and_grad(CrossEntropy(), np.full(6, -1), logits)
    assert value == 0.0
    np.testing.assert_array_equal(grad, 0.0)


def test_cross_entropy_segmentation_ignores_padded_pixels():
    logits = _RNG.normal(size=(2, 4, 4, 3)).astype("float32")
    labels = _RNG.integers(0, 3, size=(2, 4, 4))
    labels[:, 3, :] = -1
    value, grad = _value_and_grad(CrossEntropy(), labels[..., None], logits)
    assert value == pytest.approx(_np_cross_entropy(labels, logits.astype("float64")), rel=1e-5)
    np.testing.assert_array_equal(grad[:, 3], 0.0)


@pytest.mark.parametrize("loss_class", [Dice, DicePlusCrossEntropy])
def test_dice_losses_match_numpy_and_ignore_padding(loss_class):
    logits = _RNG.normal(size=(2, 6, 6, 3)).astype("float32") * 2
    labels = _RNG.integers(0, 3, size=(2, 6, 6))
    def reference(lab, log):
        dice = _np_dice_loss(lab, log.astype("float64"))
        return dice + (_np_cross_entropy(lab, log.astype("float64")) if loss_class is DicePlusCrossEntropy else 0.0)

    value, _ = _value_and_grad(loss_class(), labels, logits)
    assert value == pytest.approx(reference(labels, logits), rel=1e-5)
    # zero padding to 8x8 with label -1: same value as the unpadded crop, no gradient on the padding
    padded_logits = np.zeros((2, 8, 8, 3), "float32")
    padded_logits[:, 1:7, 1:7] = logits
    padded_logits[:, 0, :, 0] = 50.0  # confident nonsense on the padding
    padded_labels = np.full((2, 8, 8), -1)
    padded_labels[:, 1:7, 1:7] = labels
    padded_value, grad = _value_and_grad(loss_class(), padded_labels, padded_logits)
    assert padded_value == pytest.approx(value, rel=1e-5)
    mask = padded_labels < 0
    np.testing.assert_array_equal(grad[mask], 0.0)
    assert np.all(np.abs(grad[~mask]).sum(-1) > 0)
    # all pixels missing
    value, grad = _value_and_grad(loss_class(), np.full((2, 6, 6), -1), logits)
    assert value == 0.0
    np.testing.assert_array_equal(grad, 0.0)


def test_dice_of_a_perfect_prediction_is_near_zero():
    labels = _RNG.integers(0, 3, size=(2, 5, 5))
    logits = np.eye(3)[labels].astype("float32") * 40.0
    assert _value_and_grad(Dice(), labels, logits)[0] == pytest.approx(0.0, abs=1e-5)


def test_losses_compute_in_float32_and_serialise():
    for loss in (RMSE(), MAE(), L2Loss(), Huber(delta=2.0), CrossEntropy(), Dice(), DicePlusCrossEntropy()):
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
        assert type(restored) is type(loss) and restored.get_config() == loss.get_config()
    assert Huber.from_config(Huber(delta=2.0).get_config()).delta == 2.0
    value = RMSE()(np.ones((2, 1), "float32"), tf.constant([[0.0], [2.0]], tf.float16))
    assert value.dtype == tf.float32 and float(value) == pytest.approx(1.0, rel=1e-5)


def test_get_loss_names():
    assert isinstance(get_loss("RMSE"), RMSE)
    assert isinstance(get_loss("DicePlusXEnt"), DicePlusCrossEntropy)
    assert isinstance(get_loss("cross_entropy"), CrossEntropy)
    assert isinstance(get_loss("l2loss"), L2Loss)
    with pytest.raises(ValueError, match="'Hinge'"):
        get_loss("Hinge")


# === Metrics ===


def test_masked_metrics_accumulate_over_valid_entries():
    mae = MaskedMeanAbsoluteError(scale=100.0)
    mae.update_state(np.array([[0.2], [np.nan]]), np.array([[0.25], [5.0]]))
    mae.update_state(np.array([[0.5]]), np.array([[0.4]]))
    assert float(mae.result()) == pytest.approx((5.0 + 10.0) / 2, rel=1e-5)
    accuracy = MaskedAccuracy()
    accuracy.update_state(np.array([1, -1, 0]), np.array([[0.0, 1.0], [5.0, 0.0], [0.0, 1.0]]))
    assert float(accuracy.result()) == pytest.approx(0.5)
    accuracy.reset_state()
    assert float(accuracy.result()) == 0.0


def test_mean_dice_metric():
    labels = np.array([[0, 1, 1, 2, -1]])
    logits = np.eye(3)[np.array([[0, 1, 2, 2, 1]])]
    dice = MeanDice(num_classes=3)
    dice.update_state(labels, logits)
    # class 1: 2*1 / (1 + 2); class 2: 2*1 / (2 + 1); background excluded; the ignored pixel does not count
    assert float(dice.result()) == pytest.approx(2 / 3, rel=1e-5)
    with pytest.raises(ValueError, match="num_classes=1"):
        MeanDice(num_classes=1)
