"""Evaluation of predictions against references."""

from sfg_keras.evaluation.metric_tables import write_metrics_tables
from sfg_keras.evaluation.volume_metrics import (
    dice_per_label,
    evaluate_ct_and_labels,
    mae,
    psnr,
    write_metrics_csv,
)

__all__ = ["dice_per_label", "evaluate_ct_and_labels", "mae", "psnr", "write_metrics_csv", "write_metrics_tables"]
