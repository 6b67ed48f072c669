"""Per-image labels of the age_gender application: where a task takes them from and how one label cell is read.

A task's `[MULTITASK] labels` entry is `filename` (the UTKFace name `{age}_{gender}_{race}_{datetime}.jpg`, for tasks
named `age`, `gender` or `race`) or `csv:<column>` (a column of the image section's `csv_data_file`).
`label_source_problem` says what is wrong with a task's label source; `label_value` / `parse_label` read one cell:
regression labels must be finite numbers; an empty cell or `nan`, `na`, `n/a`, `none`, `null` means "missing",
while `inf`, `-inf` or `infinity` are errors. Class labels must be integers `0..num_classes - 1`; `-1` or a missing
word means "missing".

Example:

```python
label_value("31", age_task), label_value("", gender_task)  # 31.0, -1
```
"""

from __future__ import annotations

import math

from sfg_keras.config import TaskSpec
from sfg_keras.io.input_checks import InputCheckFailure

#: Tasks whose labels `filename` reads from UTKFace names, with the task type and the classes they need.
FILENAME_TASKS = {"age": ("regression", 1), "gender": ("classification", 2), "race": ("classification", 5)}
UTKFACE_NAME_FORMAT = "{age}_{gender}_{race}_{datetime}.jpg"
#: Cells that mean "no label" (case-insensitive).
MISSING_WORDS = ("", "nan", "na", "n/a", "none", "null")


def label_source_problem(task: TaskSpec, section: str, has_csv: bool) -> tuple[str, object, str] | None:
    """What is wrong with `task` for this reader, as `([MULTITASK] key, value, expected)`, or None.

    Args:
        task: the task.
        section: the name of the image section (in messages).
        has_csv: whether the image section sets `csv_data_file`.

    Example:

    ```python
    label_source_problem(TaskSpec("smile", "classification", 2, "CrossEntropy", 1.0, "filename"), "IMAGES", False)
    # ('labels', 'filename', "task 'smile' takes its label from the file name, ...")
    ```
    """
    if task.type == "segmentation":
        return "task_types", task.type, (
            f"task {task.name!r} is a segmentation task; age_gender predicts one value per image: expected "
            "regression or classification"
        )
    if task.type == "regression" and task.num_classes != 1:
        return "num_classes", task.num_classes, (
            f"regression task {task.name!r} has {task.num_classes} outputs; age_gender reads one value per image: "
            "expected 1"
        )
    if task.label == "filename":
        if task.name not in FILENAME_TASKS:
            return "labels", task.label, (
                f"task {task.name!r} takes its label from the file name, which holds only age, gender and race "
                f"({UTKFACE_NAME_FORMAT}): name the task age, gender or race, or use csv:<column>"
            )
        task_type, classes = FILENAME_TASKS[task.name]
        if task.type != task_type or (task_type == "classification" and task.num_classes < classes):
            need = "regression" if task_type == "regression" else f"classification with >= {classes} classes"
            return "task_types", task.type, (
                f"task {task.name!r} with filename labels is {task.type} with {task.num_classes} outputs: expected "
                f"{need}"
            )
    elif task.label.startswith("csv:"):
        if not has_csv:
            return "labels", task.label, (
                f"task {task.name!r} reads column {task.label[4:]!r} of a CSV, but [{section}] csv_data_file is not "
                "set: expected the CSV of per-image labels"
            )
    else:
        return "labels", task.label, (
            f"task {task.name!r} takes its label from input section [{task.label}]; age_gender reads labels from "
            "file names or a CSV: expected filename or csv:<column>"
        )
    return None


def label_value(text: str, task: TaskSpec) -> float | int:
    """One stripped CSV cell as a label of `task`: a finite float (NaN if missing) or a class index (-1 if missing).

    Missing: an empty cell or `nan`, `na`, `n/a`, `none`, `null` (any case); for a class label also `-1`.

    Raises:
        InputCheckFailure: not a number, not finite (`inf`), not an integer, or a class outside
            `0..num_classes - 1`; with what was expected.

    Example:

    ```python
    label_value("31", age_task), label_value("NaN", age_task), label_value("", gender_task)  # 31.0, nan, -1
    label_value("inf", age_task)  # InputCheckFailure: 'inf' is not a finite number (task 'age')
    ```
    """
    missing = text.lower() in MISSING_WORDS
    if task.type == "regression":
        if missing:
            return math.nan
        expected = "a finite number, or an empty cell (or nan, na, n/a, none, null) for a missing label"
        try:
            value = float(text)
        except ValueError:
            raise InputCheckFailure(f"{text!r} is not a number (task {task.name!r})", expected) from None
        if not math.isfinite(value):
            raise InputCheckFailure(f"{text!r} is not a finite number (task {task.name!r})", expected)
        return value
    if missing:
        return -1
    expected = (f"a class index 0..{task.num_classes - 1} ([MULTITASK] num_classes = {task.num_classes}), or an "
                "empty cell (or -1) for a missing label")
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value.is_integer():
        raise InputCheckFailure(f"{text!r} is not a class index (task {task.name!r})", expected)
    if value >= task.num_classes:
        raise InputCheckFailure(
            f"class {int(value)} of task {task.name!r} is not below [MULTITASK] num_classes = {task.num_classes}",
            expected,
        )
    if value < -1:
        raise InputCheckFailure(f"class {int(value)} of task {task.name!r} is negative", expected)
    return int(value)


def parse_label(text: str, task: TaskSpec, where: str) -> float | int:
    """One CSV cell as a label of `task`: a float (NaN if missing) or a class index (-1 if missing).

    Args:
        text: the cell, stripped.
        task: the task (its type and number of classes).
        where: the place in messages, e.g. `"labels.csv, line 3, column 'kind'"`.

    Raises:
        ValueError: the problems of `label_value`, prefixed with `where`.

    Example:

    ```python
    parse_label("1", gender_task, "labels.csv, line 2")  # 1
    parse_label("", age_task, "labels.csv, line 2")  # nan
    ```
    """
    try:
        return label_value(text, task)
    except InputCheckFailure as failure:
        raise ValueError(f"{where}: {failure.problem}; expected {failure.expected}") from None


def missing_label(task: TaskSpec) -> float | int:
    """The missing label of a task: NaN (regression) or -1 (classification).

    Example:

    ```python
    missing_label(age_task), missing_label(gender_task)  # (nan, -1)
    ```
    """
    return math.nan if task.type == "regression" else -1
