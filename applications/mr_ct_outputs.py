"""The inference outputs of the mr_ct application: the volumes of one subject, their file names and `inferred.csv`.

Per subject and task, every volume is named as the exported signatures name the same output
(`sfg_keras.predictions.output_name`, `<task>_<key>`): a regression task writes `<task>_mean_<subject><postfix>.nii.gz`
(synthetic CT in HU, float32) and, with `inference_mode = mc`, `<task>_std_...` (its standard deviation in HU); a
segmentation task writes `<task>_label_...` (label map, uint8) and `<task>_entropy_...` (predictive entropy, nats).
`inferred.csv` has a row per subject with the columns `subject`, `image` (the MR), one per volume with the same
`<task>_<key>` name (file names relative to the table's folder) and the provenance columns. (Tables written before
this naming have a `<task>` column for the main volume; evaluation reads those too.)

Example:

```python
for key, volume, dtype in task_volumes(predictions, ct_task, "subj_004", len(slices), (200, 180), mc=True):
    save_nifti(output_dir / output_file_name("ct", "subj_004", "_niftynet_out", key), volume, dtype=dtype)
```
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from sfg_keras.config import TaskSpec
from sfg_keras.data import target_to_ct
from sfg_keras.data.intensity import CT_SCALE
from sfg_keras.io import atomic_path
from sfg_keras.predictions import output_name

from .mr_ct_data import slices_back_to_volume


def main_key(task: TaskSpec) -> str:
    """The prediction key of a task's main volume: `"label"` (segmentation) or `"mean"` (regression).

    Example:

    ```python
    main_key(ct_task), main_key(organs_task)  # ('mean', 'label')
    ```
    """
    return "label" if task.type == "segmentation" else "mean"


def main_column(task: TaskSpec, row: Mapping[str, str] | None = None) -> str:
    """The `inferred.csv` column of a task's main volume, `<task>_mean` / `<task>_label`; for a `row` of a table
    written before this naming that has only the old `<task>` column, that one.

    Example:

    ```python
    main_column(ct_task)  # 'ct_mean'
    ```
    """
    column = output_name(task.name, main_key(task))
    if row is not None and not row.get(column) and row.get(task.name):
        return task.name
    return column


def output_file_name(task: str, subject: str, postfix: str, key: str) -> str:
    """`<task>_<key>_<subject><postfix>.nii.gz`, its stem the `inferred.csv` column (`output_name`).

    Example:

    ```python
    output_file_name("ct", "subj_004", "_niftynet_out", "std")  # 'ct_std_subj_004_niftynet_out.nii.gz'
    ```
    """
    return f"{output_name(task, key)}_{subject}{postfix}.nii.gz"


def task_volumes(predictions: Mapping[str, Mapping[str, np.ndarray]], task: TaskSpec, subject: str,
                 num_slices: int, slice_size: Sequence[int], mc: bool) -> list[tuple[str, np.ndarray, type]]:
    """The volumes of one task of one subject, `[(key, volume, dtype)]`: the CT in HU (`mean`; with `mc` also its
    standard deviation in HU, `std`), or the label map (`label`) and its `entropy`.

    Args:
        predictions: `{task: {key: [S, H, W(, 1)]}}` (the schema of `sfg_keras.inference.predict`), in the network's
            unit.
        task: a regression or segmentation task.
        subject: the subject, for messages.
        num_slices: the number of slices `S` predicted.
        slice_size: the original slice size, to crop the padded slices back to.
        mc: whether inference ran Monte-Carlo sampling (then regression needs `std`).

    Raises:
        ValueError: a key is missing, or a prediction is not one map per slice (naming the subject and task).

    Example:

    ```python
    task_volumes({"ct": {"mean": mean}}, ct_task, "subj_004", 80, (200, 180), mc=False)  # [('mean', ct_hu, float32)]
    ```
    """
    values = predictions.get(task.name, {})
    needed = ("label", "entropy") if task.type == "segmentation" else ("mean", "std") if mc else ("mean",)
    missing = [key for key in needed if key not in values]
    if missing:
        raise ValueError(
            f"Predictions of subject '{subject}' have no {missing} for task {task.name!r}: expected "
            f"{{task: {{key: array}}}} with keys {list(needed)} (the schema of sfg_keras.inference.predict). "
            f"Received tasks {sorted(predictions)}."
        )

    def volume(key: str) -> np.ndarray:
        slices = np.asarray(values[key])
        if slices.ndim == 4 and slices.shape[-1] == 1:
            slices = slices[..., 0]
        if slices.ndim != 3 or slices.shape[0] != num_slices:
            raise ValueError(
                f"Predictions of subject '{subject}': {task.name}.{key} has shape {slices.shape}; expected "
                f"[{num_slices}, H, W(, 1)], one map per slice."
            )
        return slices_back_to_volume(slices, slice_size)

    if task.type == "segmentation":
        return [("label", volume("label"), np.uint8), ("entropy", volume("entropy"), np.float32)]
    outputs = [("mean", target_to_ct(volume("mean")), np.float32)]
    if mc:
        outputs.append(("std", volume("std") * CT_SCALE, np.float32))
    return outputs


def write_inferred_table(path: Path, entries: Sequence[Mapping[str, str]]) -> Path:
    """Writes `inferred.csv` atomically: a row per entry, the columns in order of first appearance (`subject` alone
    without entries).

    Example:

    ```python
    write_inferred_table(output_dir / "inferred.csv", [{"subject": "s1", "ct_mean": "ct_mean_s1.nii.gz"}])
    ```
    """
    columns = list(dict.fromkeys(key for entry in entries for key in entry)) or ["subject"]
    with atomic_path(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(entries)
    return path
