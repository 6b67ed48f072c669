"""Finding labelled 2-D images: the file listing and label parsing of the age_gender application, without TensorFlow.

The images are the `.jpg`, `.jpeg` and `.png` files of one input section. Each task takes its labels from
`[MULTITASK] labels`:

* `filename`: parsed from UTKFace names `{age}_{gender}_{race}_{datetime}.jpg` (also the aligned release's
  `.jpg.chip.jpg`) for tasks named `age`, `gender` or `race`. Files whose names do not follow the scheme are skipped
  with one warning that counts them.
* `csv:<column>`: read from the section's `csv_data_file`, a CSV with a `filename` column (the image path relative to
  the searched folder, or its base name) and the named column. An empty cell (or `nan`, `none`, ...) is a missing
  label. Without `path_to_search`, the images are the CSV's `filename` entries, relative to the CSV's folder.

The subject id of an image is its file name, so two images with the same file name are an error.

Example:

```python
images = read_labelled_images(settings, "IMAGES", settings.task_specs())
images.subjects[:2], images.labels["age"][:2]
```
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from pathlib import Path

import numpy as np

from sfg_keras.config import Settings, TaskSpec
from sfg_keras.io import InputSection, match_section

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
#: Tasks whose labels `filename` reads from UTKFace names, with the task type and the classes they need.
FILENAME_TASKS = {"age": ("regression", 1), "gender": ("classification", 2), "race": ("classification", 5)}
UTKFACE_NAME_FORMAT = "{age}_{gender}_{race}_{datetime}.jpg"
#: Cells that mean "no label" (case-insensitive).
MISSING_WORDS = ("", "nan", "na", "n/a", "none", "null")


@dataclasses.dataclass
class LabelledImages:
    """Images and their labels, in subject order.

    Attributes:
        subjects: the subject ids (file names), sorted.
        paths: the absolute image paths, aligned with `subjects`.
        labels: per task, the labels aligned with `subjects`: float64 in the original unit with NaN for a missing
            regression label, int64 with -1 for a missing class label.
        num_skipped: files skipped because their names do not follow the UTKFace scheme.

    Example:

    ```python
    test = images.select(["26_1_2_20170116174525125.jpg.chip.jpg"])
    test.paths[0], test.labels["age"][0]
    ```
    """

    subjects: list[str]
    paths: list[str]
    labels: dict[str, np.ndarray]
    num_skipped: int = 0

    def select(self, subjects: list[str]) -> LabelledImages:
        """The subset of `subjects`, in the given order.

        Raises:
            KeyError: a subject is not among the images.
        """
        index = {subject: i for i, subject in enumerate(self.subjects)}
        rows = [index[subject] for subject in subjects]
        return LabelledImages(
            subjects=list(subjects),
            paths=[self.paths[i] for i in rows],
            labels={task: values[rows] for task, values in self.labels.items()},
        )


def read_labelled_images(settings: Settings, section: str, tasks: list[TaskSpec]) -> LabelledImages:
    """Finds the images of input section `section` and reads the labels of `tasks`.

    Args:
        settings: the resolved settings (the config path names the file in messages).
        section: the name of the input section holding the images, e.g. `"IMAGES"`.
        tasks: the tasks; each has `label` `filename` or `csv:<column>`.

    Returns:
        A `LabelledImages` sorted by subject id.

    Raises:
        FileNotFoundError: a searched folder, the CSV or a listed image does not exist.
        ValueError: no image is found, no name is valid, two images share a file name, a CSV column or row is
            missing, or a label is invalid; the message names the file, section and key.

    Example:

    ```python
    images = read_labelled_images(settings, "IMAGES", settings.task_specs())
    ```
    """
    return _Reader(settings, section, tasks).read()


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


def parse_label(text: str, task: TaskSpec, where: str) -> float | int:
    """One CSV cell as a label of `task`: a float (NaN if missing) or a class index (-1 if missing).

    Args:
        text: the cell, stripped.
        task: the task (its type and number of classes).
        where: the place in messages, e.g. `"labels.csv, line 3, column 'kind'"`.

    Raises:
        ValueError: not a number, not a class index, or a class not below `num_classes`.

    Example:

    ```python
    parse_label("1", gender_task, "labels.csv, line 2")  # 1
    parse_label("", age_task, "labels.csv, line 2")  # nan
    ```
    """
    missing = text.lower() in MISSING_WORDS
    if task.type == "regression":
        if missing:
            return math.nan
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{where}: {text!r} is not a number (task {task.name!r})") from None
    if missing:
        return -1
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value.is_integer():
        raise ValueError(f"{where}: {text!r} is not a class index (task {task.name!r})")
    if value >= task.num_classes:
        raise ValueError(
            f"{where}: class {int(value)} of task {task.name!r} is not below [MULTITASK] num_classes = "
            f"{task.num_classes}"
        )
    return max(int(value), -1)


def _normalise_csv_name(name: str) -> str:
    name = name.strip().replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


class _Reader:
    """Reads the images of one input section; each method raises with the file, section and key."""

    def __init__(self, settings: Settings, section: str, tasks: list[TaskSpec]):
        self.settings = settings
        self.section = settings.inputs[section]
        self.name = section
        self.tasks = list(tasks)

    @property
    def csv_where(self) -> str:
        return f"{self.section.csv_data_file} ([{self.name}] csv_data_file)"

    def read(self) -> LabelledImages:
        files = self.find_files()
        filename_tasks = [t for t in self.tasks if t.label == "filename"]
        skipped = 0
        labels: dict[str, np.ndarray] = {}
        if filename_tasks:
            files, skipped, labels = self.filename_labels(files, filename_tasks)
        self.check_unique_names(files)
        csv_tasks = [t for t in self.tasks if t.label.startswith("csv:")]
        if csv_tasks:
            labels.update(self.csv_labels(files, csv_tasks))
        order = sorted(range(len(files)), key=lambda i: Path(files[i][0]).name)
        return LabelledImages(
            subjects=[Path(files[i][0]).name for i in order],
            paths=[files[i][0] for i in order],
            labels={task.name: labels[task.name][order] for task in self.tasks},
            num_skipped=skipped,
        )

    def find_files(self) -> list[tuple[str, str]]:
        """`(path, name relative to its search folder)` of every image of the section."""
        section = self.section
        if not section.path_to_search:
            return self.files_from_csv()
        for folder in section.path_to_search:
            if not os.path.isdir(folder):
                raise FileNotFoundError(
                    f"{self.settings.config_path}: [{self.name}] path_to_search folder '{folder}' does not exist: "
                    "expected a folder of .jpg/.jpeg/.png images"
                )
        matcher = InputSection(
            self.name,
            path_to_search=list(section.path_to_search),
            filename_contains=list(section.filename_contains),
            filename_not_contains=list(section.filename_not_contains),
            csv_file=section.csv_file,
        )
        try:
            matched = match_section(matcher, self.settings.config_dir)
        except ValueError as error:
            raise ValueError(f"{self.settings.config_path}: {error}") from error
        files = []
        for path in matched.values():
            if not path.lower().endswith(IMAGE_EXTENSIONS):
                continue
            folder = next((f for f in section.path_to_search if Path(path).is_relative_to(f)), None)
            relative = Path(path).relative_to(folder).as_posix() if folder else Path(path).name
            files.append((path, relative))
        if not files:
            raise ValueError(
                f"{self.settings.config_path}: [{self.name}] path_to_search {', '.join(section.path_to_search)}: no "
                f".jpg, .jpeg or .png file matches (filename_contains={list(section.filename_contains)}, "
                f"filename_not_contains={list(section.filename_not_contains)})"
            )
        return files

    def files_from_csv(self) -> list[tuple[str, str]]:
        """The images listed in the CSV's `filename` column, relative to the CSV's folder."""
        section = self.section
        csv_path = Path(section.csv_data_file)
        files = []
        for entry in self.read_csv([]):
            name = Path(entry).name
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            if not all(p in name for p in section.filename_contains):
                continue
            if any(p in name for p in section.filename_not_contains):
                continue
            path = csv_path.parent / entry
            if not path.is_file():
                raise FileNotFoundError(
                    f"{self.csv_where}: image '{entry}' does not exist (resolved to '{path}'); entries are relative "
                    "to the CSV's folder when path_to_search is empty"
                )
            files.append((str(path.absolute()), entry))
        if not files:
            raise ValueError(f"{self.csv_where}: no .jpg, .jpeg or .png file is listed in its 'filename' column")
        return files

    def read_csv(self, columns: list[str]) -> dict[str, dict[str, str]]:
        """Rows of the label CSV keyed by their normalised `filename` entry; checks the columns exist."""
        csv_path = Path(self.section.csv_data_file)
        if not csv_path.is_file():
            raise FileNotFoundError(
                f"{self.csv_where}: the file does not exist: expected a CSV with a 'filename' column"
            )
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [column.strip() for column in reader.fieldnames or []]
            reader.fieldnames = header
            for column in ["filename", *columns]:
                if column not in header:
                    users = [t.name for t in self.tasks if t.label == f"csv:{column}"]
                    needed = f" (task {users[0]!r}, [MULTITASK] labels = csv:{column})" if users else ""
                    raise ValueError(
                        f"{self.csv_where}: no column {column!r}{needed}; the CSV has the columns {header}"
                    )
            rows: dict[str, dict[str, str]] = {}
            for line, row in enumerate(reader, start=2):
                name = _normalise_csv_name(row.get("filename") or "")
                if not name:
                    raise ValueError(f"{self.csv_where}, line {line}: the 'filename' cell is empty")
                if name in rows:
                    raise ValueError(f"{self.csv_where}, line {line}: file '{name}' is listed twice")
                rows[name] = {**{k: (v or "").strip() for k, v in row.items() if k}, "_line": str(line)}
        return rows

    def csv_labels(self, files: list[tuple[str, str]], tasks: list[TaskSpec]) -> dict[str, np.ndarray]:
        """The labels of the `csv:<column>` tasks for `files`, found by relative path or unique base name."""
        rows = self.read_csv([task.label[4:] for task in tasks])
        by_name: dict[str, str | None] = {}
        for key in rows:
            base = key.rsplit("/", 1)[-1]
            by_name[base] = None if base in by_name else key
        labels: dict[str, list] = {task.name: [] for task in tasks}
        for path, relative in files:
            key = relative if relative in rows else by_name.get(Path(path).name)
            if key is None:
                raise ValueError(
                    f"Image '{path}' has no row in {self.csv_where}: expected a 'filename' entry '{relative}' or "
                    f"'{Path(path).name}' (unique)"
                )
            row = rows[key]
            for task in tasks:
                column = task.label[4:]
                where = f"{self.csv_where}, line {row['_line']}, column {column!r}"
                labels[task.name].append(parse_label(row[column], task, where))
        return {
            task.name: np.asarray(labels[task.name], dtype=np.float64 if task.type == "regression" else np.int64)
            for task in tasks
        }

    def filename_labels(
        self, files: list[tuple[str, str]], tasks: list[TaskSpec]
    ) -> tuple[list[tuple[str, str]], int, dict[str, np.ndarray]]:
        """`(kept files, number skipped, labels)`: the UTKFace fields of the files whose names follow the scheme."""
        # The UTKFace parser's module also holds the generator, which imports TensorFlow: import it only when needed.
        from sfg_keras.data.generators import parse_utkface_name

        kept, fields, skipped = [], [], []
        for path, relative in files:
            parsed = parse_utkface_name(path)
            if parsed is None:
                skipped.append(Path(path).name)
            else:
                kept.append((path, relative))
                fields.append(parsed)
        if skipped:
            print(
                f"WARNING: [{self.name}] skipped {len(skipped)} files whose names do not follow "
                f"{UTKFACE_NAME_FORMAT} (e.g. '{skipped[0]}')"
            )
        if not kept:
            raise ValueError(
                f"{self.settings.config_path}: [{self.name}] path_to_search {', '.join(self.section.path_to_search)}: "
                f"no valid images: none of the {len(skipped)} image names follows {UTKFACE_NAME_FORMAT} "
                "([MULTITASK] labels = filename)"
            )
        labels = {}
        for task in tasks:
            field = list(FILENAME_TASKS).index(task.name)
            values = [parsed[field] for parsed in fields]
            labels[task.name] = np.asarray(values, dtype=np.float64 if task.type == "regression" else np.int64)
        return kept, len(skipped), labels

    def check_unique_names(self, files: list[tuple[str, str]]) -> None:
        """Raises `ValueError` when two images share a file name (the subject id)."""
        names: dict[str, str] = {}
        for path, _ in files:
            name = Path(path).name
            if name in names:
                raise ValueError(
                    f"{self.settings.config_path}: [{self.name}]: two images share the file name '{name}' (the "
                    f"subject id): '{names[name]}' and '{path}'; use filename_not_contains or separate runs"
                )
            names[name] = path
