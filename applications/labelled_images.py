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

What is checked (every problem is collected, then raised as one `InputValidationError` listing the first 20 and how
many more; see `sfg_keras.io.input_checks`): a listed image that does not exist, a folder named like an image, a CSV
row listed twice or with an empty `filename` cell, an image without a CSV row, a missing label column, and every label
cell: regression labels must be finite numbers; an empty cell or `nan`, `na`, `n/a`, `none`, `null` means "missing"
(as before), while `inf`, `-inf` or `infinity` are errors. Class labels must be integers `0..num_classes - 1`;
`-1` or a missing word means "missing". The image files themselves (decodable, not truncated) are checked by the
application (`image_checks.check_image_files`), which decodes them as training does. The label sources and cells are
parsed by `image_labels`.

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
from sfg_keras.io.input_checks import InputCheckFailure, InputProblems, InputValidationError

from .image_labels import FILENAME_TASKS, UTKFACE_NAME_FORMAT, label_value, missing_label

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
#: Every problem text of a listed image that is not on disk contains it (see `raise_input_problems`).
MISSING_FILE = "does not exist"


class MissingImagesError(InputValidationError, FileNotFoundError):
    """An `InputValidationError` whose problems are all missing images; also a `FileNotFoundError`.

    Example:

    ```python
    try:
        read_labelled_images(settings, "IMAGES", tasks)
    except FileNotFoundError as error:  # a MissingImagesError
        print(error.problems[0].path)
    ```
    """


def raise_input_problems(problems: InputProblems) -> None:
    """Raises the collected problems: a `MissingImagesError` when each one is a missing file, else an
    `InputValidationError`; does nothing without problems.

    Example:

    ```python
    problems = InputProblems("inputs of [IMAGES]")
    problems.add("images/b.png", "image 'b.png' does not exist", "an image file", subject="b.png")
    raise_input_problems(problems)  # MissingImagesError (a FileNotFoundError and a ValueError)
    ```
    """
    if problems.items and all(MISSING_FILE in item.problem for item in problems.items):
        raise MissingImagesError(problems.items, problems.context)
    problems.raise_if_any()


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


def read_labelled_images(
    settings: Settings, section: str, tasks: list[TaskSpec], problems: InputProblems | None = None,
    labels_required: bool = True, search: str | os.PathLike | None = None,
) -> LabelledImages:
    """Finds the images of input section `section` and reads the labels of `tasks`, checking every file and cell.

    Args:
        settings: the resolved settings (the config path names the file in messages).
        section: the name of the input section holding the images, e.g. `"IMAGES"`.
        tasks: the tasks; each has `label` `filename` or `csv:<column>`.
        problems: where to record the problems of single files, rows and cells (then the images read so far are
            returned and the caller raises); None raises them here, all together.
        labels_required: False (inference): images need no label: a name that is not a UTKFace name, an image
            without a CSV row, or a missing `csv_data_file` (with `path_to_search`) leaves its labels missing.
        search: a folder searched instead of the section's `path_to_search` (`[INFERENCE] input_dir`; the
            section's `csv_file` is then not used).

    Returns:
        A `LabelledImages` sorted by subject id (a bad label is left missing when `problems` is given).

    Raises:
        FileNotFoundError: a searched folder or the CSV does not exist, or listed images do not exist (a
            `MissingImagesError`, which is also an `InputValidationError`).
        InputValidationError: (a ValueError) the problems of single files, rows and cells (see the module's "What
            is checked"), each naming the file and image.
        ValueError: no image is found, no name is valid, or the CSV has no `filename` column.

    Example:

    ```python
    images = read_labelled_images(settings, "IMAGES", settings.task_specs())
    ```
    """
    reader = _Reader(settings, section, tasks, problems, labels_required, search)
    images = reader.read()
    if problems is None:
        raise_input_problems(reader.problems)
    return images


def _normalise_csv_name(name: str) -> str:
    name = name.strip().replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


class _Reader:
    """Reads the images of one input section: problems of single files, rows and cells go to `problems`; missing
    folders and files, and a CSV without a `filename` column, raise at once, naming the file, section and key."""

    def __init__(self, settings: Settings, section: str, tasks: list[TaskSpec], problems: InputProblems | None = None,
                 labels_required: bool = True, search: str | os.PathLike | None = None):
        self.settings = settings
        self.section = settings.inputs[section]
        if search is not None:
            self.section = self.section.replace(path_to_search=(str(search),), csv_file="")
        self.name = section
        self.tasks = list(tasks)
        self.labels_required = labels_required
        self.problems = problems if problems is not None else InputProblems(f"images and labels of [{section}]")
        self._rows: dict[str, dict[str, str]] | None = None
        self._header: list[str] = []

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
        if csv_tasks and not self.labels_required and not Path(self.section.csv_data_file or "").is_file():
            labels.update({task.name: np.asarray([missing_label(task)] * len(files)) for task in csv_tasks})
        elif csv_tasks:
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
        self.check_folders_named_like_images()
        if not files:
            raise_input_problems(self.problems)
            raise ValueError(
                f"{self.settings.config_path}: [{self.name}] path_to_search {', '.join(section.path_to_search)}: no "
                f".jpg, .jpeg or .png file matches (filename_contains={list(section.filename_contains)}, "
                f"filename_not_contains={list(section.filename_not_contains)})"
            )
        return files

    def wanted(self, name: str) -> bool:
        """Whether a file name is an image name the section's filters keep."""
        section = self.section
        return (
            name.lower().endswith(IMAGE_EXTENSIONS)
            and all(p in name for p in section.filename_contains)
            and not any(p in name for p in section.filename_not_contains)
        )

    def check_folders_named_like_images(self) -> None:
        """Records every folder under `path_to_search` whose name the filters would take for an image."""
        for root in self.section.path_to_search:
            for folder, names, _ in os.walk(root):
                for name in names:
                    if self.wanted(name):
                        self.problems.add(
                            os.path.join(folder, name), "is a folder named like an image",
                            "only image files to have .jpg, .jpeg or .png names (rename or move the folder)", name,
                        )

    def files_from_csv(self) -> list[tuple[str, str]]:
        """The images listed in the CSV's `filename` column, relative to the CSV's folder."""
        csv_path = Path(self.section.csv_data_file)
        files = []
        for entry, row in self.csv_rows().items():
            name = Path(entry).name
            if not self.wanted(name):
                continue
            path = csv_path.parent / entry
            if not path.exists():
                self.problems.add(
                    path.absolute(), f"image '{entry}' {MISSING_FILE} (listed on line {row['_line']} of "
                    f"{self.csv_where})", "an image file; entries are relative to the CSV's folder when "
                    "path_to_search is empty", name,
                )
                continue
            files.append((str(path.absolute()), entry))
        if not files:
            raise_input_problems(self.problems)
            raise ValueError(f"{self.csv_where}: no .jpg, .jpeg or .png file is listed in its 'filename' column")
        return files

    def csv_rows(self) -> dict[str, dict[str, str]]:
        """Rows of the label CSV keyed by their normalised `filename` entry (read once); empty and repeated
        entries are recorded as problems and left out."""
        if self._rows is not None:
            return self._rows
        csv_path = Path(self.section.csv_data_file)
        if not csv_path.is_file():
            raise FileNotFoundError(
                f"{self.csv_where}: the file does not exist: expected a CSV with a 'filename' column"
            )
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            self._header = [column.strip() for column in reader.fieldnames or []]
            reader.fieldnames = self._header
            if "filename" not in self._header:
                raise ValueError(f"{self.csv_where}: no column 'filename'; the CSV has the columns {self._header}")
            rows: dict[str, dict[str, str]] = {}
            for line, row in enumerate(reader, start=2):
                name = _normalise_csv_name(row.get("filename") or "")
                if not name:
                    self.problems.add(self.csv_where, f"line {line}: the 'filename' cell is empty",
                                      "the image's path on every row")
                elif name in rows:
                    self.problems.add(
                        self.csv_where, f"line {line}: file '{name}' is listed twice (first on line "
                        f"{rows[name]['_line']})", "one row per image (its id is the file name)", Path(name).name,
                    )
                else:
                    rows[name] = {**{k: (v or "").strip() for k, v in row.items() if k}, "_line": str(line)}
        self._rows = rows
        return rows

    def csv_columns(self, tasks: list[TaskSpec]) -> set[str]:
        """The label columns of `tasks` the CSV has; each missing one is recorded as a problem."""
        present = set()
        for task in tasks:
            column = task.label[4:]
            if column in self._header:
                present.add(column)
            else:
                self.problems.add(
                    self.csv_where, f"no column {column!r} (task {task.name!r}, [MULTITASK] labels = csv:{column})",
                    f"a column for every csv: label; the CSV has the columns {self._header}",
                )
        return present

    def csv_labels(self, files: list[tuple[str, str]], tasks: list[TaskSpec]) -> dict[str, np.ndarray]:
        """The labels of the `csv:<column>` tasks for `files`, found by relative path or unique base name."""
        rows = self.csv_rows()
        columns = self.csv_columns(tasks)
        by_name: dict[str, str | None] = {}
        for key in rows:
            base = key.rsplit("/", 1)[-1]
            by_name[base] = None if base in by_name else key
        labels: dict[str, list] = {task.name: [] for task in tasks}
        for path, relative in files:
            name = Path(path).name
            key = relative if relative in rows else by_name.get(name)
            if key is None and self.labels_required:
                self.problems.add(
                    path, f"image '{relative}' has no row in {self.csv_where}",
                    f"a 'filename' entry '{relative}' or '{name}' (unique)", name,
                )
            for task in tasks:
                labels[task.name].append(self.cell_label(rows.get(key) if key else None, task, name, columns))
        return {
            task.name: np.asarray(labels[task.name], dtype=np.float64 if task.type == "regression" else np.int64)
            for task in tasks
        }

    def cell_label(self, row: dict[str, str] | None, task: TaskSpec, subject: str, columns: set[str]) -> float:
        """The label of `task` in `row` (missing without a row or column); a bad cell is recorded as a problem."""
        column = task.label[4:]
        missing = missing_label(task)
        if row is None or column not in columns:
            return missing
        try:
            return label_value(row[column], task)
        except InputCheckFailure as failure:
            self.problems.add(self.csv_where, f"line {row['_line']}, column {column!r}: {failure.problem}",
                              failure.expected, subject)
            return missing

    def filename_labels(
        self, files: list[tuple[str, str]], tasks: list[TaskSpec]
    ) -> tuple[list[tuple[str, str]], int, dict[str, np.ndarray]]:
        """`(kept files, number skipped, labels)`: the UTKFace fields of the files whose names follow the scheme."""
        # The UTKFace parser's module also holds the generator, which imports TensorFlow: import it only when needed.
        from sfg_keras.data.generators import parse_utkface_name

        kept, fields, skipped = [], [], []
        for path, relative in files:
            parsed = parse_utkface_name(path)
            if parsed is None and not self.labels_required:
                parsed = (math.nan, -1, -1)  # an image to infer needs no label
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
            raise_input_problems(self.problems)
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
        """Records every image whose file name (the subject id) an earlier image already has."""
        names: dict[str, str] = {}
        for path, _ in files:
            name = Path(path).name
            if name in names:
                self.problems.add(
                    path, f"has the same file name (the image id) as '{names[name]}' ([{self.name}])",
                    "unique file names: use filename_not_contains or separate runs", name,
                )
            else:
                names[name] = path
