"""Per-volume metrics of the mr_ct application (numpy): PSNR, MAE, Dice, and CSV tables of them.

Conventions:
- `psnr` returns `inf` when the prediction equals the reference on every voxel considered.
- Metrics over an empty region (for example `mae_<organ>` when the organ is absent from the reference) are `nan`.
- Dice of a label absent from both prediction and reference is 1.0, so Dice values are never `nan`.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def _pair(pred, ref, mask, function: str) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if pred.shape != ref.shape:
        raise ValueError(f"{function}: prediction has shape {pred.shape} but reference has shape {ref.shape}.")
    if mask is None:
        return pred.ravel(), ref.ravel()
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != ref.shape:
        raise ValueError(f"{function}: mask has shape {mask.shape}, expected the reference's shape {ref.shape}.")
    return pred[mask], ref[mask]


def mae(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute error over all voxels, or over `mask`; `nan` for an empty mask.

    Example:

    ```python
    mae(synthetic_hu, ct_hu, mask=labels == 1)  # bone MAE in HU
    ```
    """
    pred, ref = _pair(pred, ref, mask, "mae")
    if ref.size == 0:
        return math.nan
    return float(np.mean(np.abs(pred - ref)))


def psnr(pred: np.ndarray, ref: np.ndarray, data_range: float, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB, `10 * log10(data_range**2 / MSE)`.

    Args:
        pred: prediction.
        ref: reference, same shape.
        data_range: float > 0. The intensity range of the reference (e.g. `ref.max() - ref.min()`).
        mask: optional boolean array restricting the voxels. Defaults to `None`.

    Returns:
        PSNR as a float; `inf` for a perfect prediction, `nan` for an empty mask.

    Example:

    ```python
    psnr(synthetic_hu, ct_hu, data_range=ct_hu.max() - ct_hu.min())
    ```
    """
    if not data_range > 0:
        raise ValueError(f"psnr: data_range must be positive. Received: data_range={data_range}")
    pred, ref = _pair(pred, ref, mask, "psnr")
    if ref.size == 0:
        return math.nan
    mse = float(np.mean((pred - ref) ** 2))
    if mse == 0.0:
        return math.inf
    return float(10.0 * np.log10(float(data_range) ** 2 / mse))


def dice_per_label(pred_labels: np.ndarray, ref_labels: np.ndarray, labels: Sequence[int]) -> dict[int, float]:
    """Dice overlap `2 |P & R| / (|P| + |R|)` of each label; 1.0 for a label absent from both maps.

    Example:

    ```python
    dice_per_label(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), labels=[1, 2])  # {1: 0.667, 2: 0.667}
    ```
    """
    pred_labels = np.asarray(pred_labels)
    ref_labels = np.asarray(ref_labels)
    if pred_labels.shape != ref_labels.shape:
        raise ValueError(
            f"dice_per_label: prediction has shape {pred_labels.shape} but reference has shape {ref_labels.shape}."
        )
    scores = {}
    for label in labels:
        predicted = pred_labels == label
        reference = ref_labels == label
        total = int(predicted.sum()) + int(reference.sum())
        overlap = int(np.logical_and(predicted, reference).sum())
        scores[int(label)] = 1.0 if total == 0 else 2.0 * overlap / total
    return scores


def _metric_name(name: str) -> str:
    return re.sub(r"[^0-9a-zA-Z]+", "_", str(name)).strip("_").lower() or "label"


def _label_metric_names(label_names: Mapping[int, str], bone_label: int) -> dict[int, str]:
    """`{label: metric name}` of `evaluate_ct_and_labels`, refusing names that collide or a bone label not listed."""
    names = {int(label): _metric_name(name) for label, name in label_names.items()}
    if len(set(names.values())) != len(names):
        raise ValueError(f"label_names must give distinct names. Received: label_names={dict(label_names)}")
    clashing = [name for label, name in names.items() if label != 0 and f"dice_{name}" == "dice_mean"]
    if clashing:
        raise ValueError(f"label_names: a label named {clashing[0]!r} would write its Dice over dice_mean, the mean "
                         f"Dice; expected another name. Received: label_names={dict(label_names)}")
    if bone_label not in names or bone_label == 0:
        raise ValueError(f"bone_label must be a foreground label of label_names. Received: bone_label={bone_label}, "
                         f"label_names={dict(label_names)}")
    return names


def evaluate_ct_and_labels(
    ct_pred_hu: np.ndarray,
    ct_ref_hu: np.ndarray,
    label_pred: np.ndarray,
    label_ref: np.ndarray,
    label_names: Mapping[int, str],
    bone_label: int = 1,
    data_range: float | None = None,
) -> dict[str, float]:
    """All metrics of one subject of the mr_ct application.

    Regions are defined by the reference label map. Label 0 is the background.

    Keys:
    - `psnr`, `mae`: over the whole volume (Hounsfield units).
    - `psnr_bone`, `mae_bone`: over reference voxels with `bone_label`.
    - `mae_in_<name>` for every label in `label_names` (background included; `nan` if the label is absent from the
      reference): a prefix of its own, so that no label name can overwrite `mae_bone` or `psnr_bone`.
    - `dice_<name>` for every non-background label, and `dice_mean`, their mean (a label named `mean` is refused).

    Names are lower-cased with non-alphanumeric runs replaced by `_`.

    Args:
        ct_pred_hu: synthetic CT in Hounsfield units.
        ct_ref_hu: reference CT in Hounsfield units.
        label_pred: predicted label map (integers).
        label_ref: reference label map.
        label_names: `{label value: organ name}`, e.g. `{0: "background", 1: "bone", 2: "bladder"}`.
        bone_label: int. The bone label. Defaults to `1`.
        data_range: optional float. PSNR peak; defaults to `None`: `ct_ref_hu.max() - ct_ref_hu.min()`.

    Returns:
        `{metric name: value}`.

    Example:

    ```python
    row = {"subject": "subj_001", **evaluate_ct_and_labels(sct, ct, seg, ref_seg, {0: "background", 1: "bone"})}
    ```
    """
    ct_pred_hu = np.asarray(ct_pred_hu, dtype=np.float64)
    ct_ref_hu = np.asarray(ct_ref_hu, dtype=np.float64)
    label_pred = np.asarray(label_pred)
    label_ref = np.asarray(label_ref)
    shapes = {
        "ct_pred_hu": ct_pred_hu.shape,
        "ct_ref_hu": ct_ref_hu.shape,
        "label_pred": label_pred.shape,
        "label_ref": label_ref.shape,
    }
    if len(set(shapes.values())) != 1:
        raise ValueError(f"evaluate_ct_and_labels: inputs must share one shape. Received: {shapes}")
    if data_range is None:
        data_range = float(ct_ref_hu.max() - ct_ref_hu.min())
        if data_range == 0:
            data_range = 1.0
    names = _label_metric_names(label_names, bone_label)

    bone = label_ref == bone_label
    metrics = {
        "psnr": psnr(ct_pred_hu, ct_ref_hu, data_range),
        "mae": mae(ct_pred_hu, ct_ref_hu),
        "psnr_bone": psnr(ct_pred_hu, ct_ref_hu, data_range, mask=bone),
        "mae_bone": mae(ct_pred_hu, ct_ref_hu, mask=bone),
    }
    for label, name in names.items():
        metrics[f"mae_in_{name}"] = mae(ct_pred_hu, ct_ref_hu, mask=label_ref == label)
    foreground = [label for label in names if label != 0]
    dice = dice_per_label(label_pred, label_ref, foreground)
    for label in foreground:
        metrics[f"dice_{names[label]}"] = dice[label]
    metrics["dice_mean"] = float(np.mean(list(dice.values()))) if dice else math.nan
    return metrics


def _format(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, float, np.integer, np.floating)):
        return repr(float(value)) if isinstance(value, (float, np.floating)) else str(int(value))
    return str(value)


def write_metrics_csv(rows: Sequence[Mapping[str, object]], path: str | Path) -> tuple[Path, Path]:
    """Writes one CSV row per subject, and the mean and standard deviation of every metric to a summary CSV.

    `path` gets the columns `subject` followed by every metric (in first-seen order); a metric missing from a row
    is left empty. The summary is written next to it as `<stem>_summary.csv`, with the first column `statistic`
    and the rows `mean` and `std` (population standard deviation), computed over the subjects that have a
    non-`nan` numeric value. An `inf` (perfect PSNR) makes the mean `inf` and the std `nan`.

    Args:
        rows: one mapping per subject, each with a `"subject"` key.
        path: str or `Path`, e.g. `model_dir / "evaluation" / "metrics.csv"`. Parent folders are created.

    Returns:
        `(path, summary_path)`.

    Example:

    ```python
    write_metrics_csv([{"subject": "s1", "mae": 40.0}, {"subject": "s2", "mae": 50.0}], "eval/metrics.csv")
    # eval/metrics.csv and eval/metrics_summary.csv (mean mae 45.0, std 5.0)
    ```
    """
    path = Path(path)
    columns: list[str] = ["subject"]
    for index, row in enumerate(rows):
        if "subject" not in row:
            raise ValueError(f"write_metrics_csv: row {index} has no 'subject' key. Received keys: {list(row)}")
        for key in row:
            if key not in columns:
                columns.append(key)
    metrics = columns[1:]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_format(row[key]) if key in row else "" for key in columns])

    means, stds = [], []
    for key in metrics:
        values = [
            float(row[key])
            for row in rows
            if key in row
            and isinstance(row[key], (int, float, np.integer, np.floating))
            and not isinstance(row[key], (bool, np.bool_))
            and not math.isnan(float(row[key]))
        ]
        with np.errstate(invalid="ignore", over="ignore"):
            means.append(float(np.mean(values)) if values else math.nan)
            stds.append(float(np.std(values)) if values else math.nan)
    summary_path = path.with_name(f"{path.stem}_summary.csv")
    with open(summary_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["statistic", *metrics])
        writer.writerow(["mean", *(_format(v) for v in means)])
        writer.writerow(["std", *(_format(v) for v in stds)])
    return path, summary_path
