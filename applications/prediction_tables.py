"""Per-image prediction and metric tables of the age_gender application, without TensorFlow.

`inferred.csv` has one row per image: `subject`; per regression task `<task>_mean` and `<task>_std` in the original
unit; per classification task `<task>_label`, `<task>_prob_<c>` per class and `<task>_entropy` (nats). The names are
those of the exported signatures' outputs (`sfg_keras.predictions.output_name`). A table written by an older version
names the label column `<task>_mode` (`LEGACY_LABEL_KEY`): it is still read. The metric rows compare it with the
labels, next to trivial baselines (the training mean, the training majority class).

Example:

```python
names, columns = prediction_columns(age_task, {"mean": mean, "std": std}, len(subjects), scale=100.0)
write_table("output/inferred.csv", ["subject", *names], [format_row(s, names, columns, i) for i, s in ...])
```
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

import numpy as np

from sfg_keras.config import TaskSpec
from sfg_keras.engine.provenance import PROVENANCE_COLUMNS
from sfg_keras.io.atomic import atomic_path
from sfg_keras.predictions import output_name

from .labelled_images import LabelledImages

#: The key of a classification task's label column written by older versions: `<task>_mode` (now `<task>_label`).
LEGACY_LABEL_KEY = "mode"


def prediction_columns(
    task: TaskSpec, predictions: dict, count: int, scale: float = 1.0
) -> tuple[list[str], list[np.ndarray]]:
    """The `inferred.csv` columns of one task from its predictions (`sfg_keras.predictions.PREDICTION_KEYS` schema).

    Args:
        task: the task.
        predictions: regression `{"mean", "std"}` (`std` may be absent: zeros), classification
            `{"probabilities", "label", "entropy"}`; one entry per image along the first axis.
        count: number of images.
        scale: regression values are multiplied by it (the network unit to the original unit).

    Returns:
        `(names, columns)`: the column names and one array of `count` values per name.

    Raises:
        KeyError: a key of the schema is missing.
        ValueError: the arrays do not hold `count` images.

    Example:

    ```python
    prediction_columns(age, {"mean": np.array([[0.3]]), "std": np.array([[0.01]])}, 1, scale=100.0)
    # (['age_mean', 'age_std'], [array([30.]), array([1.])])
    ```
    """
    values = {key: np.asarray(value) for key, value in predictions.items()}
    if task.type == "regression":
        mean = values["mean"].reshape(count, -1)[:, 0].astype(np.float64)
        std = values["std"].reshape(count, -1)[:, 0].astype(np.float64) if "std" in values else np.zeros(count)
        return [output_name(task.name, "mean"), output_name(task.name, "std")], [mean * scale, std * scale]
    probabilities = values["probabilities"].reshape(count, -1).astype(np.float64)
    names = [output_name(task.name, "label"), *(output_name(task.name, f"prob_{c}") for c in
                                                range(probabilities.shape[1])), output_name(task.name, "entropy")]
    return names, [values["label"].reshape(count), *probabilities.T, values["entropy"].reshape(count)]


def prediction_rows(tasks: Sequence[TaskSpec], predictions: Mapping[str, Mapping], subjects: Sequence[str], key: str,
                    scale: Callable[[TaskSpec], float]) -> tuple[list[str], dict[str, list[str]]]:
    """The `inferred.csv` header and the formatted row of every subject of one prediction batch.

    Args:
        tasks: the tasks, in column order.
        predictions: `{task: {key: array}}` (`prediction_columns`), one entry per subject along the first axis.
        subjects: the subjects, in prediction order.
        key: the name of the predicted unit, for messages.
        scale: `task -> factor` from the network unit to the original unit (`regression_scale`).

    Returns:
        `(header, {subject: cells})`: `["subject", <task columns>...]` and each subject's cells.

    Raises:
        ValueError: a task or a key is missing, or the number of predictions differs from the number of subjects.

    Example:

    ```python
    header, rows = prediction_rows([age], {"age": {"mean": mean, "std": std}}, ["a.png"], "1 image", lambda t: 100.0)
    ```
    """
    header, columns = ["subject"], []
    for task in tasks:
        try:
            names, values = prediction_columns(task, predictions[task.name], len(subjects), scale(task))
        except (KeyError, ValueError) as error:
            raise ValueError(
                f"Predictions of {key}, task {task.name!r}: {error!r}; expected {{task: {{'mean', 'std'}}}} "
                "(regression) or {task: {'probabilities', 'label', 'entropy'}} (classification), one row per "
                f"image; received tasks {sorted(predictions)}"
            ) from error
        header += names
        columns += values
    return header, {subject: format_row(subject, header[1:], columns, row) for row, subject in enumerate(subjects)}


def format_row(subject: str, names: Sequence[str], columns: Sequence[np.ndarray], row: int) -> list[str]:
    """The cells of one image: the subject, then `<task>_label` as an integer and other values with 6 significant
    digits (empty for NaN).

    Example:

    ```python
    format_row("a.png", ["age_mean", "gender_label"], [np.array([31.25]), np.array([1])], 0)  # ['a.png', '31.25', '1']
    ```
    """
    cells = [subject]
    for name, column in zip(names, columns):
        value = column[row]
        if name.endswith("_label"):
            cells.append(str(int(value)))
        else:
            cells.append("" if not np.isfinite(value) else f"{float(value):.6g}")
    return cells


class InferredTable:
    """The rows of `inferred.csv`, kept while inference predicts (`add`) and written at its end (`write`).

    Example:

    ```python
    table = InferredTable()
    table.add(*prediction_rows(tasks, predictions, subjects, "9 images", app.regression_scale))
    table.write(output_dir / "inferred.csv", app.provenance_columns)
    ```
    """

    def __init__(self):
        self.header: list[str] = []
        self.rows: dict[str, list[str]] = {}

    def add(self, header: list[str], rows: Mapping[str, list[str]]) -> None:
        """Keeps `rows` (`{subject: cells}`) with their `header` (`prediction_rows`)."""
        self.header = header
        self.rows.update(rows)

    def write(self, path: str | os.PathLike, provenance: Callable[[str], Mapping[str, str]]) -> Path | None:
        """Writes the rows sorted by subject, each followed by its provenance columns
        (`sfg_keras.engine.provenance.PROVENANCE_COLUMNS`, from `provenance(subject)`), atomically; None without
        rows (nothing written)."""
        if not self.rows:
            return None
        columns = list(PROVENANCE_COLUMNS)
        rows = [self.rows[subject] + [provenance(subject)[c] for c in columns] for subject in sorted(self.rows)]
        return write_table(path, self.header + columns, rows)


def write_table(path: str | os.PathLike, header: Sequence[str], rows: Sequence[Sequence[str]]) -> Path:
    """Writes a CSV atomically (a reader sees the old file or the complete new one) and returns its path.

    Raises:
        OSError: the file cannot be written; the message names `path` and no partial file is left.

    Example:

    ```python
    write_table("output/inferred.csv", ["subject", "age_mean"], [["a.png", "31.2"]])
    ```
    """
    with atomic_path(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return Path(path)


def read_inferred(path: Path, tasks: Sequence[TaskSpec], command: str) -> list[dict[str, str]]:
    """The rows of `inferred.csv`, checked to have a column for every task.

    A table written by an older version names a classification task's label column `<task>_mode`: when
    `<task>_label` is absent, that column is read as `<task>_label`.

    Args:
        path: the file.
        tasks: the tasks (regression needs `<task>_mean`, classification `<task>_label`).
        command: the command that writes it, for the message when it is missing.

    Raises:
        FileNotFoundError: no such file (naming the command to run).
        ValueError: a task's column is missing.

    Example:

    ```python
    rows = read_inferred(Path("output/inferred.csv"), tasks, "sfg_run inference -c run.ini")
    rows[0]["gender_label"]  # '1' (also from an older table's gender_mode column)
    ```
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found ([INFERENCE] save_seg_dir): run inference first ({command})")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        renamed = {}
        for task in tasks:
            column = output_name(task.name, "mean" if task.type == "regression" else "label")
            legacy = output_name(task.name, LEGACY_LABEL_KEY)
            if column not in header and task.type != "regression" and legacy in header:
                renamed[legacy] = column
            elif column not in header:
                raise ValueError(
                    f"{path}: no column {column!r} for task {task.name!r}; columns {header}. Run inference "
                    "again with the current [MULTITASK] tasks"
                )
        rows = list(reader)
    for row in rows:
        for legacy, column in renamed.items():
            row[column] = row.pop(legacy)
    return rows


def metric_table(tasks: Sequence[TaskSpec], rows: list[dict], images: LabelledImages, training: LabelledImages,
                 wanted: Collection[str], unit: Callable[[TaskSpec], str]) -> tuple[list[dict], list[str]]:
    """The per-image metric rows of `inferred.csv` rows against the labels, and a summary line per task.

    Args:
        tasks: the tasks.
        rows: the `inferred.csv` rows to score (`read_inferred`), aligned with `images`.
        images: the scored images with their labels.
        training: the training images with their labels (the baselines).
        wanted: the evaluations: `mae` (regression tasks), `accuracy` (classification tasks).
        unit: `task -> unit` of a regression task in messages (e.g. "years"; "" for none).

    Example:

    ```python
    metric_rows, summaries = metric_table(tasks, rows, images, training, {"mae", "accuracy"}, app.regression_unit)
    ```
    """
    metric_rows = [{"subject": subject} for subject in images.subjects]
    summaries = []
    for task in tasks:
        truth, training_truth = images.labels[task.name], training.labels[task.name]
        if task.type == "regression" and "mae" in wanted:
            name = unit(task)
            summaries.append(regression_metrics(task, rows, truth, training_truth, metric_rows,
                                                f" {name}" if name else ""))
        elif task.type == "classification" and "accuracy" in wanted:
            summaries.append(classification_metrics(task, rows, truth, training_truth, metric_rows))
    return metric_rows, summaries


def regression_metrics(
    task: TaskSpec, rows: list[dict], truth: np.ndarray, training_truth: np.ndarray, metric_rows: list[dict],
    unit: str = "",
) -> str:
    """Fills `<task>_true`, `_predicted`, `_abs_error` and `_baseline_abs_error` (predicting the training mean) of
    `metric_rows` from `inferred.csv` rows; returns the summary line.

    Example:

    ```python
    regression_metrics(age, rows, truth, training_truth, metric_rows, " years")
    # 'age: MAE 7.412 years over 9 images (predicting the training mean 33.1 years: 15.2 years)'
    ```
    """
    baseline = float(np.nanmean(training_truth)) if np.isfinite(training_truth).any() else math.nan
    errors, baseline_errors = [], []
    for metric_row, row, value in zip(metric_rows, rows, truth):
        cell = row[output_name(task.name, "mean")]
        predicted = float(cell) if cell else math.nan
        metric_row[f"{task.name}_true"] = float(value)
        metric_row[f"{task.name}_predicted"] = predicted
        metric_row[f"{task.name}_abs_error"] = abs(predicted - value)
        metric_row[f"{task.name}_baseline_abs_error"] = abs(baseline - value)
        if np.isfinite(value):
            errors.append(abs(predicted - value))
            baseline_errors.append(abs(baseline - value))
    return (
        f"{task.name}: MAE {np.mean(errors) if errors else math.nan:.3f}{unit} over {len(errors)} images "
        f"(predicting the training mean {baseline:.3f}{unit}: "
        f"{np.mean(baseline_errors) if baseline_errors else math.nan:.3f}{unit})"
    )


def classification_metrics(
    task: TaskSpec, rows: list[dict], truth: np.ndarray, training_truth: np.ndarray, metric_rows: list[dict]
) -> str:
    """Fills `<task>_true`, `_predicted`, `_correct` and `_baseline_correct` (predicting the training majority
    class) of `metric_rows` from `inferred.csv` rows; returns the summary line. Missing labels (-1) leave NaN.

    Example:

    ```python
    classification_metrics(gender, rows, truth, training_truth, metric_rows)
    # 'gender: accuracy 0.778 over 9 images (predicting the training majority class 1: 0.556)'
    ```
    """
    valid = training_truth[training_truth >= 0]
    majority = int(np.bincount(valid).argmax()) if valid.size else -1
    correct, baseline_correct = [], []
    for metric_row, row, value in zip(metric_rows, rows, truth):
        predicted = int(row[output_name(task.name, "label")])
        metric_row[f"{task.name}_true"] = int(value) if value >= 0 else math.nan
        metric_row[f"{task.name}_predicted"] = predicted
        metric_row[f"{task.name}_correct"] = float(predicted == value) if value >= 0 else math.nan
        metric_row[f"{task.name}_baseline_correct"] = float(majority == value) if value >= 0 else math.nan
        if value >= 0:
            correct.append(predicted == value)
            baseline_correct.append(majority == value)
    return (
        f"{task.name}: accuracy {np.mean(correct) if correct else math.nan:.3f} over {len(correct)} "
        f"images (predicting the training majority class {majority}: "
        f"{np.mean(baseline_correct) if baseline_correct else math.nan:.3f})"
    )
