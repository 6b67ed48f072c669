"""Evaluation of the mr_ct application: the inferred volumes against the reference CT and labels.

Per subject of `save_seg_dir/inferred.csv` (first regression task = CT, first segmentation task = labels): `psnr`,
`mae`, `psnr_bone`, `mae_bone`, `mae_in_<organ>`, `dice_<organ>`, `dice_mean` (see
`sfg_keras.evaluation.evaluate_ct_and_labels`), the trivial references `reference_mean_ct_mae` (predicting the mean
training CT everywhere) and `reference_background_dice_mean` (predicting background everywhere), and
`<task>_mae` / `<task>_dice_mean` for further tasks. `[EVALUATION] evaluations`, when given, keeps only the listed
columns.

Before anything is computed: every inferred subject must be found with its MR and references (in the input
sections, or `[INFERENCE] input_dir` when inference used one), its MR must be the file the predictions were made
from (`input_sha256`), the model must not have been trained on it (`BaseApplication.evaluation_subjects`), and every
reference is checked like a training input (`mr_ct_checks.check_references`: NaN, label range, shape, Hounsfield
units); `MRCTApplication.evaluate` does these checks and calls this module's functions, which take what they need
(an `EvaluationInputs`), not the application. Prediction files are read relative to `inferred.csv`'s folder.

Example:

```python
inputs = EvaluationInputs(tuple(tasks), ("background", "bone"), bone_label=1, statistics=training_statistics)
rows = [evaluate_subject(inputs, subject, predicted[subject], references[subject]) for subject in subjects]
write_metrics_tables(rows, Path("model/evaluation") / METRICS_FILE)  # sfg_keras.evaluation
```
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from sfg_keras.config import TaskSpec
from sfg_keras.evaluation import dice_per_label, evaluate_ct_and_labels, mae, psnr
from sfg_keras.io import NiftiVolume, check_same_geometry, load_nifti
from sfg_keras.io.input_checks import bullet_list

from .mr_ct_data import TaskKinds, load_volume
from .mr_ct_outputs import main_column

INFERRED_FILE = "inferred.csv"
METRICS_FILE = "mr_ct_metrics.csv"


@dataclasses.dataclass(frozen=True)
class EvaluationInputs(TaskKinds):
    """What the evaluation of one subject needs of the run: its tasks, `[MR_CT]` label names and bone label, and the
    training statistics.

    Attributes:
        tasks: the `[MULTITASK]` tasks, in task order (the first regression task is the CT, the first segmentation
            task the organ labels).
        label_names: the name of every label value of the segmentation task (`[MR_CT] label_names`).
        bone_label: the label of the bone metrics (`[MR_CT] bone_label`).
        statistics: the training statistics (`<task>_mean_hu` of the CT task for the mean-CT reference).

    Example:

    ```python
    EvaluationInputs(tuple(settings.task_specs()), ("background", "bone"), 1, {"ct_mean_hu": -400.0})
    ```
    """

    tasks: tuple[TaskSpec, ...]
    label_names: tuple[str, ...]
    bone_label: int
    statistics: Mapping = dataclasses.field(default_factory=dict)

    def describe(self, count: int) -> str:
        """The message evaluation prints first, e.g. "Evaluating 3 subjects; bone metrics over label 1 ('bone')"."""
        message = f"Evaluating {count} subjects"
        if self.segmentation_tasks and self.regression_tasks:
            message += f"; bone metrics over label {self.bone_label} ({self.label_names[self.bone_label]!r})"
        return message


def read_inferred(path: Path, tasks: Sequence[TaskSpec], config_path: str) -> list[dict[str, str]]:
    """The rows of `inferred.csv`, each with the main volume of every task (`<task>_mean` / `<task>_label`, or the
    `<task>` column of an older table) resolved against the table's folder, under the task's name.

    An absolute path (written by older versions) is accepted only inside the table's folder: in a copied or moved
    output folder it would point at another folder's predictions.

    Raises:
        FileNotFoundError: the file does not exist (with the inference command).
        ValueError: a row lacks a task's file, or names one outside the table's folder (naming the file, the line
            and the subject).

    Example:

    ```python
    rows = read_inferred(Path("model/output/inferred.csv"), tasks, "configs/demo_mr_ct.ini")
    rows[0]["ct"]  # ".../model/output/ct_mean_subj_004_niftynet_out.nii.gz"
    ```
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run inference first (sfg_run inference -c {config_path}).")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    folder = path.parent.absolute()
    for number, row in enumerate(rows, start=2):
        columns = {task.name: main_column(task, row) for task in tasks}
        missing = [column for column in columns.values() if not row.get(column)]
        if missing:
            raise ValueError(
                f"{path}, line {number}: subject {row.get('subject')!r} has no {missing} column value; expected "
                f"the columns subject, {', '.join(columns.values())} written by inference."
            )
        for name, key in columns.items():
            file = Path(row[key])
            if file.is_absolute() and file.parent != folder:
                raise ValueError(
                    f"{path}, line {number}: subject {row.get('subject')!r}: [{key}] is the absolute path {file}, "
                    f"outside this table's folder {folder} (written by an older sfg-keras in another folder: a copied "
                    "or moved model_dir would read that folder's predictions). Run sfg_run inference again."
                )
            row[name] = str(folder / file)
    return rows


def _labels(volume: np.ndarray) -> np.ndarray:
    return np.round(volume).astype(np.int64)


class _Subject:
    """The reference volumes of one subject and its predictions, loaded on demand with a shape check."""

    def __init__(self, subject: str, predicted: Mapping[str, str], references: Mapping[str, str]):
        self.subject = subject
        self.predicted = predicted
        self.references: dict[str, NiftiVolume] = {name: load_volume(path) for name, path in references.items()}
        check_same_geometry(self.references, subject)

    def reference(self, task: TaskSpec) -> np.ndarray:
        return self.references[task.label].data

    def prediction(self, task: TaskSpec) -> np.ndarray:
        volume = load_nifti(self.predicted[task.name])
        reference = self.references[task.label]
        if volume.spatial_shape != reference.spatial_shape:
            raise ValueError(
                f"Subject '{self.subject}': prediction {volume.path} has shape {volume.spatial_shape} but the "
                f"reference [{task.label}] {reference.path} has {reference.spatial_shape}."
            )
        return volume.data


def _main_metrics(data: _Subject, ct_task, organ_task, label_names: dict[int, str], bone_label: int) -> dict:
    """PSNR / MAE of the CT task and Dice of the label task (both: also bone and per-organ CT metrics)."""
    foreground = [label for label in label_names if label != 0]
    if ct_task is not None and organ_task is not None:
        return evaluate_ct_and_labels(
            data.prediction(ct_task), data.reference(ct_task), _labels(data.prediction(organ_task)),
            _labels(data.reference(organ_task)), label_names, bone_label=bone_label,
        )
    if ct_task is not None:
        ct_ref, ct_pred = data.reference(ct_task), data.prediction(ct_task)
        data_range = float(ct_ref.max() - ct_ref.min()) or 1.0
        return {"psnr": psnr(ct_pred, ct_ref, data_range), "mae": mae(ct_pred, ct_ref)}
    if organ_task is not None:
        dice = dice_per_label(np.round(data.prediction(organ_task)), _labels(data.reference(organ_task)), foreground)
        row = {f"dice_{label_names[label]}": value for label, value in dice.items()}
        row["dice_mean"] = float(np.mean(list(dice.values())))
        return row
    return {}


def _reference_metrics(data: _Subject, ct_task, organ_task, label_names: dict[int, str], statistics: Mapping):
    """The trivial references: the mean training CT everywhere, background everywhere."""
    row = {}
    if ct_task is not None:
        key = f"{ct_task.name}_mean_hu"
        if key not in statistics:
            raise ValueError(
                f"The training statistics have no {key!r} (keys: {sorted(statistics)}); expected them written by "
                "training with the same [MULTITASK] tasks."
            )
        ct_ref = data.reference(ct_task)
        row["reference_mean_ct_mae"] = mae(np.full(ct_ref.shape, float(statistics[key])), ct_ref)
    if organ_task is not None:
        labels_ref = _labels(data.reference(organ_task))
        foreground = [label for label in label_names if label != 0]
        background = dice_per_label(np.zeros_like(labels_ref), labels_ref, foreground)
        row["reference_background_dice_mean"] = float(np.mean(list(background.values())))
    return row


def evaluate_subject(
    inputs: EvaluationInputs, subject: str, predicted: Mapping[str, str], references: Mapping[str, str]
) -> dict[str, object]:
    """The metrics of one subject (see the module docstring).

    Args:
        inputs: the tasks, label names, bone label and training statistics.
        subject: the subject id.
        predicted: `{task: file}` (a row of `inferred.csv`).
        references: `{section: file}` of the reference sections.

    Example:

    ```python
    row = evaluate_subject(inputs, "subj_004", {"ct": "ct_mean_subj_004.nii.gz", ...}, {"CT": ..., "LABEL": ...})
    ```
    """
    data = _Subject(subject, predicted, references)
    regression, segmentation = inputs.regression_tasks, inputs.segmentation_tasks
    ct_task = regression[0] if regression else None
    organ_task = segmentation[0] if segmentation else None
    label_names = dict(enumerate(inputs.label_names))
    row: dict[str, object] = {"subject": subject}
    row.update(_main_metrics(data, ct_task, organ_task, label_names, int(inputs.bone_label)))
    row.update(_reference_metrics(data, ct_task, organ_task, label_names, inputs.statistics))
    for task in regression[1:]:
        row[f"{task.name}_mae"] = mae(data.prediction(task), data.reference(task))
    for task in segmentation[1:]:
        dice = dice_per_label(np.round(data.prediction(task)), _labels(data.reference(task)),
                              range(1, int(task.num_classes)))
        row[f"{task.name}_dice_mean"] = float(np.mean(list(dice.values())))
    return row


def select_metrics(rows: list[dict], wanted: Sequence[str]) -> list[dict]:
    """Keeps the `wanted` metric columns (`[EVALUATION] evaluations`) and `subject`; all when `wanted` is empty.

    Raises:
        ValueError: an unknown metric name (naming the available names; the application names the config key).

    Example:

    ```python
    select_metrics([{"subject": "s1", "mae": 40.0, "psnr": 27.1}], ["mae"])  # [{'subject': 's1', 'mae': 40.0}]
    ```
    """
    wanted = list(wanted)
    if not wanted:
        return rows
    available = list(dict.fromkeys(key for row in rows for key in row if key != "subject"))
    unknown = [name for name in wanted if name not in available]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; expected names among: {', '.join(available)}")
    return [{"subject": row["subject"], **{k: row[k] for k in wanted if k in row}} for row in rows]


def _mean(rows: Sequence[Mapping], key: str) -> float:
    values = [float(row[key]) for row in rows if key in row and not math.isnan(float(row[key]))]
    return float(np.mean(values)) if values else math.nan


def summary_text(rows: Sequence[Mapping]) -> str:
    """A table of the main metrics' means next to their trivial references.

    Example:

    ```python
    print(summary_text([{"subject": "s", "mae": 80.0, "reference_mean_ct_mae": 300.0}]))
    ```
    """
    lines = [
        f"mr_ct evaluation of {len(rows)} subjects (mean over subjects)",
        f"{'metric':<22}{'model':>12}{'reference':>12}",
    ]
    pairs = [
        ("CT MAE (HU)", "mae", "reference_mean_ct_mae"),
        ("CT MAE bone (HU)", "mae_bone", None),
        ("CT PSNR (dB)", "psnr", None),
        ("Dice mean", "dice_mean", "reference_background_dice_mean"),
    ]
    for title, key, reference in pairs:
        if not any(key in row for row in rows):
            continue
        ref_text = f"{_mean(rows, reference):>12.4g}" if reference else f"{'':>12}"
        lines.append(f"{title:<22}{_mean(rows, key):>12.4g}{ref_text}")
    return "\n".join(lines)


def inferred_references(matched: Sequence[Mapping[str, str | None]], inferred: Sequence[Mapping[str, str]],
                        sections: Sequence[str], inferred_path: Path, where: str) -> dict[str, dict[str, str | None]]:
    """`{subject: {"subject", section: file}}` of the inferred subjects among the `matched` rows (`match_subjects`
    of the MR and reference sections, none required).

    Args:
        matched: the rows found in the input sections (or `[INFERENCE] input_dir`).
        inferred: the rows of `inferred.csv`.
        sections: the sections every inferred subject must have a file of (the MR and the references).
        inferred_path: `inferred.csv`, for messages.
        where: where the files were searched, for messages (e.g. "the input sections").

    Raises:
        ValueError: inferred subjects without a file of a section, listed.

    Example:

    ```python
    references = inferred_references(app.match_files(["MR", "CT"], required=[]), inferred, ["MR", "CT"], path,
                                     "the input sections")
    ```
    """
    wanted = {str(entry["subject"]) for entry in inferred}
    references = {str(row["subject"]): dict(row) for row in matched if str(row["subject"]) in wanted}
    incomplete = [f"'{subject}' has no [{name}] file" for subject, row in sorted(references.items())
                  for name in sections if row[name] is None]
    if incomplete:
        raise ValueError(f"{inferred_path}: inferred subjects without their MR or reference files in {where}; "
                         f"expected every inferred subject to have them:\n{bullet_list(incomplete)}")
    return references
