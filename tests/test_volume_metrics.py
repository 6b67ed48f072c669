"""Tests for sfg_keras.evaluation.volume_metrics: known values of PSNR, MAE, Dice and the CSV tables."""

import csv
import math

import numpy as np
import pytest

from sfg_keras.evaluation import dice_per_label, evaluate_ct_and_labels, mae, psnr, write_metrics_csv

LABEL_NAMES = {0: "background", 1: "bone", 2: "bladder", 3: "Prostate Gland"}


def _subject():
    ref_labels = np.zeros((4, 4, 2), np.int32)
    ref_labels[0, :, :] = 1
    ref_labels[1, :2, :] = 2
    ref_labels[2, 0, 0] = 3
    ref_ct = np.where(ref_labels == 1, 1000.0, 0.0) - 1000.0 * (ref_labels == 0)
    return ref_ct, ref_labels


def test_mae_and_psnr_known_values():
    ref = np.array([0.0, 10.0, 20.0, 30.0])
    pred = np.array([1.0, 10.0, 18.0, 30.0])
    assert mae(pred, ref) == pytest.approx(0.75)
    # MSE = (1 + 4) / 4 = 1.25.
    assert psnr(pred, ref, data_range=30.0) == pytest.approx(10 * math.log10(900 / 1.25))
    mask = np.array([True, False, True, False])
    assert mae(pred, ref, mask) == pytest.approx(1.5)
    assert psnr(pred, ref, 30.0, mask) == pytest.approx(10 * math.log10(900 / 2.5))


def test_perfect_prediction_and_empty_mask():
    ref = np.arange(8.0).reshape(2, 2, 2)
    assert mae(ref, ref) == 0.0
    assert psnr(ref, ref, data_range=7.0) == math.inf
    empty = np.zeros_like(ref, dtype=bool)
    assert math.isnan(mae(ref + 1, ref, empty))
    assert math.isnan(psnr(ref + 1, ref, 7.0, empty))
    with pytest.raises(ValueError, match=r"data_range must be positive. Received: data_range=0"):
        psnr(ref, ref, data_range=0)
    with pytest.raises(ValueError, match=r"\(2, 2, 2\).*\(8,\)"):
        mae(ref, ref.ravel())


def test_dice_per_label_hand_made():
    pred = np.array([[0, 1, 1], [2, 2, 0]])
    ref = np.array([[0, 1, 2], [2, 2, 2]])
    scores = dice_per_label(pred, ref, labels=[1, 2, 5])
    assert scores[1] == pytest.approx(2 * 1 / (2 + 1))
    assert scores[2] == pytest.approx(2 * 2 / (2 + 4))
    assert scores[5] == 1.0  # absent in both
    assert dice_per_label(pred, np.zeros_like(ref), [1])[1] == 0.0
    assert all(not math.isnan(v) for v in scores.values())


def test_evaluate_ct_and_labels_keys_and_values():
    ref_ct, ref_labels = _subject()
    perfect = evaluate_ct_and_labels(ref_ct, ref_ct, ref_labels, ref_labels, LABEL_NAMES)
    assert set(perfect) == {
        "psnr",
        "mae",
        "psnr_bone",
        "mae_bone",
        "mae_in_background",
        "mae_in_bone",
        "mae_in_bladder",
        "mae_in_prostate_gland",
        "dice_bone",
        "dice_bladder",
        "dice_prostate_gland",
        "dice_mean",
    }
    assert perfect["mae"] == 0.0 and perfect["psnr"] == math.inf and perfect["dice_mean"] == 1.0

    pred_ct = ref_ct + np.where(ref_labels == 1, 100.0, 10.0)
    pred_labels = ref_labels.copy()
    pred_labels[2, 0, 0] = 0  # prostate missed entirely
    metrics = evaluate_ct_and_labels(pred_ct, ref_ct, pred_labels, ref_labels, LABEL_NAMES, data_range=2000.0)
    bone_voxels, other_voxels = 8, 24
    assert metrics["mae_bone"] == pytest.approx(100.0)
    assert metrics["mae_in_bladder"] == pytest.approx(10.0) and metrics["mae_in_bone"] == metrics["mae_bone"]
    assert metrics["mae"] == pytest.approx((100.0 * bone_voxels + 10.0 * other_voxels) / 32)
    assert metrics["psnr_bone"] == pytest.approx(10 * math.log10(2000.0**2 / 100.0**2))
    assert metrics["dice_prostate_gland"] == 0.0 and metrics["dice_bone"] == 1.0
    assert metrics["dice_mean"] == pytest.approx(2.0 / 3.0)

    default_range = evaluate_ct_and_labels(pred_ct, ref_ct, pred_labels, ref_labels, LABEL_NAMES)
    assert default_range["psnr"] == pytest.approx(
        10 * math.log10(2000.0**2 / ((100.0**2 * bone_voxels + 10.0**2 * other_voxels) / 32))
    )
    with pytest.raises(ValueError, match="share one shape"):
        evaluate_ct_and_labels(ref_ct, ref_ct, ref_labels[:2], ref_labels, LABEL_NAMES)


def test_absent_organ_gives_nan_mae_and_unit_dice():
    ref_ct, ref_labels = _subject()
    names = {**LABEL_NAMES, 7: "rectum"}
    metrics = evaluate_ct_and_labels(ref_ct + 1.0, ref_ct, ref_labels, ref_labels, names)
    assert math.isnan(metrics["mae_in_rectum"])
    assert metrics["dice_rectum"] == 1.0


def test_write_metrics_csv_rows_and_summary(tmp_path):
    rows = [
        {"subject": "subj_001", "mae": 40.0, "psnr": 30.0, "dice_bone": 0.8},
        {"subject": "subj_002", "mae": 50.0, "psnr": math.inf, "dice_bone": 0.6},
        {"subject": "subj_003", "mae": 60.0, "dice_bone": float("nan"), "note": "rescan"},
    ]
    path, summary_path = write_metrics_csv(rows, tmp_path / "evaluation" / "metrics.csv")
    assert summary_path == tmp_path / "evaluation" / "metrics_summary.csv"
    with open(path, newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["subject", "mae", "psnr", "dice_bone", "note"]
    assert [row[0] for row in table[1:]] == ["subj_001", "subj_002", "subj_003"]
    assert table[2][2] == "inf" and table[3][2] == "" and table[3][4] == "rescan"

    with open(summary_path, newline="") as handle:
        summary = {row["statistic"]: row for row in csv.DictReader(handle)}
    assert set(summary) == {"mean", "std"}
    assert float(summary["mean"]["mae"]) == pytest.approx(50.0)
    assert float(summary["std"]["mae"]) == pytest.approx(np.std([40.0, 50.0, 60.0]))
    assert float(summary["mean"]["dice_bone"]) == pytest.approx(0.7)  # nan skipped
    assert float(summary["mean"]["psnr"]) == math.inf
    assert math.isnan(float(summary["mean"]["note"]))
    with pytest.raises(ValueError, match=r"row 0 has no 'subject' key"):
        write_metrics_csv([{"mae": 1.0}], tmp_path / "x.csv")


def test_per_label_metrics_never_overwrite_the_bone_metrics():
    """Issue 20: a label named 'bone' that is not `bone_label` once wrote its MAE over `mae_bone`."""
    ref_ct, ref_labels = _subject()
    names = {0: "background", 1: "prostate", 2: "bone", 3: "bladder"}  # bone_label 1 is the prostate here
    pred_ct = ref_ct + np.where(ref_labels == 1, 100.0, 10.0)
    metrics = evaluate_ct_and_labels(pred_ct, ref_ct, ref_labels, ref_labels, names, bone_label=1)
    assert metrics["mae_bone"] == pytest.approx(100.0)  # over bone_label
    assert metrics["mae_in_bone"] == pytest.approx(10.0)  # over the label named 'bone': its own column
    with pytest.raises(ValueError, match="label named 'mean' would write its Dice over dice_mean"):
        evaluate_ct_and_labels(ref_ct, ref_ct, ref_labels, ref_labels, {0: "background", 1: "mean"})
    with pytest.raises(ValueError, match="bone_label must be a foreground label"):
        evaluate_ct_and_labels(ref_ct, ref_ct, ref_labels, ref_labels, names, bone_label=0)
    with pytest.raises(ValueError, match="bone_label must be a foreground label.*bone_label=7"):
        evaluate_ct_and_labels(ref_ct, ref_ct, ref_labels, ref_labels, names, bone_label=7)


def test_label_names_that_become_one_metric_name_are_refused():
    ref_ct, ref_labels = _subject()
    with pytest.raises(ValueError, match=r"label_names must give distinct names.*'Gross Tumour'.*'gross-tumour'"):
        evaluate_ct_and_labels(
            ref_ct, ref_ct, ref_labels, ref_labels, {0: "background", 1: "Gross Tumour", 2: "gross-tumour"}
        )
