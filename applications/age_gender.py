"""`AgeGenderApplication`: multi-task learning on folders of labelled 2-D images (UTKFace layout, or a label CSV).

The images are the `.jpg`, `.jpeg` and `.png` files of the input section named by `[MULTITASK] image`. Each task takes
its labels from `[MULTITASK] labels`:

* `filename`: parsed from UTKFace names `{age}_{gender}_{race}_{datetime}.jpg` (also the aligned release's
  `.jpg.chip.jpg`) for tasks named `age`, `gender` or `race`. Files whose names do not follow the scheme are skipped
  with one warning that counts them.
* `csv:<column>`: read from the image section's `csv_data_file`, a CSV with a `filename` column (the image path
  relative to the searched folder, or its base name) and the named column. An empty cell is a missing label.
  Without `path_to_search`, the images are the CSV's `filename` entries, relative to the CSV's folder.

The subject id of an image is its file name. Images are split 70/15/15 (from `[TRAINING]
exclude_fraction_for_validation` / `exclude_fraction_for_inference`) into `dataset_split.csv`; `training_fraction`
keeps a seeded share of the training split (the small-data experiments). The `tf.data` pipeline decodes and resizes
the images to the image section's `spatial_window_size` (default 200 x 200), standardises every channel with the mean
and standard deviation of the training images (saved as `model_dir/image_statistics.json`), divides regression
targets by their `[AGE_GENDER] target_scale` (age in years / 100 by default), and augments with the `[TRAINING]`
flips, rotations and scalings.

Inference writes `inferred.csv` (per image the Monte-Carlo mean and standard deviation of every regression task in
its original unit, and the mode, class probabilities and predictive entropy of every classification task);
evaluation writes the per-image absolute errors and correctness, with the error of predicting the training mean and
the majority class as a baseline, to `age_gender_metrics.csv` and its summary.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from applications.base_application import BaseApplication
from sfg_keras.config import ConfigError, KeySpec, SectionSettings, TaskSpec
from sfg_keras.data import make_or_load_split, random_scale_rotate, subsample_training
from sfg_keras.data.generators import parse_utkface_name
from sfg_keras.evaluation import write_metrics_csv
from sfg_keras.inference import deterministic_predict, mc_predict
from sfg_keras.io import InputSection, match_section
from sfg_keras.models import SFGNetwork

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
#: Tasks whose labels `filename` reads from UTKFace names, with the field they take and the classes they need.
FILENAME_TASKS = {"age": ("regression", 1), "gender": ("classification", 2), "race": ("classification", 5)}
UTKFACE_NAME_FORMAT = "{age}_{gender}_{race}_{datetime}.jpg"
DEFAULT_IMAGE_SIZE = (200, 200)
STATISTICS_FILE = "image_statistics.json"
INFERRED_FILE = "inferred.csv"
METRICS_FILE = "age_gender_metrics.csv"
EVALUATIONS = ("mae", "accuracy")
PHASE_OF_DATASET = {"": "Inference", "inference": "Inference", "training": "Training", "validation": "Validation"}
MISSING_WORDS = ("", "nan", "na", "n/a", "none", "null")

APP_SECTION = "AGE_GENDER"
APP_KEYS = [
    KeySpec("channels", "int", 3, "Colour channels images are decoded to: 3 (RGB) or 1 (grey).", minimum=1, maximum=3),
    KeySpec(
        "target_scale",
        "float_list",
        (),
        "Per task (or per regression task): regression targets are divided by it (e.g. 100: age in years / 100).",
        minimum=0,
        exclusive_minimum=True,
        default_text="100 for a task named age with filename labels, else 1",
    ),
]


@dataclasses.dataclass
class LabelledImages:
    """The images of an application and their labels, in subject order.

    Attributes:
        subjects: the subject ids (file names), sorted.
        paths: the absolute image paths, aligned with `subjects`.
        labels: per task, the labels aligned with `subjects`: float64 in the original unit with NaN for a missing
            regression label, int64 with -1 for a missing class label.
        num_skipped: files skipped because their names do not follow the UTKFace scheme.

    Example:

    ```python
    images = app.image_set()
    test = images.select(app.subjects_of("Inference"))
    test.paths[0], test.labels["age"][0]
    ```
    """

    subjects: list[str]
    paths: list[str]
    labels: dict[str, np.ndarray]
    num_skipped: int = 0

    def select(self, subjects: list[str]) -> LabelledImages:
        """The subset of `subjects`, in the given order."""
        index = {subject: i for i, subject in enumerate(self.subjects)}
        rows = [index[subject] for subject in subjects]
        return LabelledImages(
            subjects=list(subjects),
            paths=[self.paths[i] for i in rows],
            labels={task: values[rows] for task, values in self.labels.items()},
        )


def _normalise_csv_name(name: str) -> str:
    name = name.strip().replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


def _format_float(value: float) -> str:
    return "" if not np.isfinite(value) else f"{float(value):.6g}"


class AgeGenderApplication(BaseApplication):
    """Multi-task regression and classification on labelled 2-D images (UTKFace age and gender, MNIST digits).

    Args:
        settings: the resolved `Settings` (load them with `extra_sections=AgeGenderApplication.APP_SECTIONS`).

    Example:

    ```python
    settings = load_settings("configs/demo_age_gender.ini", action="train",
                             extra_sections=AgeGenderApplication.APP_SECTIONS)
    AgeGenderApplication(settings).train()
    settings = load_settings("configs/demo_age_gender.ini", action="inference",
                             extra_sections=AgeGenderApplication.APP_SECTIONS)
    AgeGenderApplication(settings).inference()  # model_dir/output/inferred.csv
    ```
    """

    APP_SECTIONS = {APP_SECTION: APP_KEYS}
    name = "age_gender"

    def __init__(self, settings):
        self._image_set: LabelledImages | None = None
        self._split: dict[str, str] | None = None
        super().__init__(settings)

    # === Settings ===

    @property
    def app_settings(self) -> SectionSettings:
        """The `[AGE_GENDER]` section (the defaults when the settings were loaded without it)."""
        section = self.settings.app_sections.get(APP_SECTION)
        if section is None:
            section = SectionSettings(APP_SECTION, {spec.name: spec.default for spec in APP_KEYS},
                                      schema={spec.name: spec for spec in APP_KEYS})
        return section

    @property
    def image_section(self) -> SectionSettings:
        """The input section holding the images (`[MULTITASK] image`)."""
        return self.settings.inputs[self.settings.multitask.image]

    @property
    def channels(self) -> int:
        return int(self.app_settings.channels)

    @property
    def image_size(self) -> tuple[int, int]:
        """`(height, width)` images are resized to."""
        window = tuple(int(v) for v in self.image_section.spatial_window_size)
        return (window[0], window[1]) if window else DEFAULT_IMAGE_SIZE

    def _where(self, section: SectionSettings, key: str) -> str:
        origin = section.origin(key) if key in section else "default"
        return "command line" if origin == "command line" else self.settings.config_path

    def _error(self, section: SectionSettings, key: str, message: str) -> ConfigError:
        value = section[key] if key in section else ""
        shown = section.section_schema[key].format_value(value) if key in section.section_schema else str(value)
        return ConfigError(f"{self._where(section, key)}: [{section.section_name}] {key} = {shown}: {message}")

    def check_settings(self) -> None:
        """Checks the tasks, label sources, image size, channels and augmentation against what this application
        supports.

        Raises:
            ConfigError: naming the file, section, key and value, and what was expected.
        """
        multitask, image = self.settings.multitask, self.image_section
        for task in self.tasks:
            if task.type == "segmentation":
                raise self._error(
                    multitask, "task_types", f"task {task.name!r} is a segmentation task; age_gender predicts one "
                    "value per image: expected regression or classification"
                )
            if task.type == "regression" and task.num_classes != 1:
                raise self._error(
                    multitask, "num_classes", f"regression task {task.name!r} has {task.num_classes} outputs; "
                    "age_gender reads one value per image: expected 1"
                )
            if task.label == "filename":
                if task.name not in FILENAME_TASKS:
                    raise self._error(
                        multitask, "labels", f"task {task.name!r} takes its label from the file name, which holds "
                        f"only age, gender and race ({UTKFACE_NAME_FORMAT}): name the task age, gender or race, or "
                        "use csv:<column>"
                    )
                task_type, classes = FILENAME_TASKS[task.name]
                if task.type != task_type or (task_type == "classification" and task.num_classes < classes):
                    need = "regression" if task_type == "regression" else f"classification with >= {classes} classes"
                    raise self._error(
                        multitask, "task_types", f"task {task.name!r} with filename labels is {task.type} with "
                        f"{task.num_classes} outputs: expected {need}"
                    )
            elif task.label.startswith("csv:"):
                if not image.csv_data_file:
                    raise self._error(
                        multitask, "labels", f"task {task.name!r} reads column {task.label[4:]!r} of a CSV, but "
                        f"[{image.section_name}] csv_data_file is not set: expected the CSV of per-image labels"
                    )
            else:
                raise self._error(
                    multitask, "labels", f"task {task.name!r} takes its label from input section [{task.label}]; "
                    "age_gender reads labels from file names or a CSV: expected filename or csv:<column>"
                )
        window = image.spatial_window_size
        if window and not (len(window) == 2 or (len(window) == 3 and window[2] == 1)):
            raise self._error(image, "spatial_window_size", "expected 'height, width' (or 'height, width, 1')")
        if self.channels not in (1, 3):
            raise self._error(self.app_settings, "channels", "expected 1 (grey) or 3 (RGB)")
        scales = self.app_settings.target_scale
        regression = [t for t in self.tasks if t.type == "regression"]
        if scales and len(scales) not in (len(self.tasks), len(regression)):
            raise self._error(
                self.app_settings, "target_scale", f"expected one value per task ({len(self.tasks)}) or per "
                f"regression task ({len(regression)})"
            )
        if image.loader == "nibabel":
            raise self._error(image, "loader", "age_gender reads JPEG and PNG images: expected tf_image or empty")
        if self.settings.network.normalisation:
            raise self._error(
                self.settings.network, "normalisation", "Nyul histogram standardisation is for MR volumes; "
                "age_gender standardises each channel with training statistics: expected False"
            )
        training = self.settings.training
        if any(axis not in (-1, 0, 1) for axis in training.random_flipping_axes):
            raise self._error(training, "random_flipping_axes", "expected 0 (up-down), 1 (left-right) or -1 (none)")
        for key in ("rotation_angle", "scaling_percentage"):
            value = training[key]
            if value and not math.isclose(value[0], -value[1]):
                raise self._error(training, key, "age_gender draws from a symmetric range: expected '-a, a' or ()")
        for evaluation in self.settings.evaluation.evaluations:
            if evaluation.lower() not in EVALUATIONS:
                raise self._error(
                    self.settings.evaluation, "evaluations", f"unknown evaluation {evaluation!r}: expected "
                    f"{', '.join(EVALUATIONS)} (empty = all)"
                )

    def input_shape(self) -> tuple[int, ...]:
        return (*self.image_size, self.channels)

    def target_scale(self, task: TaskSpec) -> float:
        """Divisor of `task`'s regression targets: `[AGE_GENDER] target_scale`, else 100 for `age` read from file
        names, else 1.

        Example:

        ```python
        app.target_scale(app.tasks[0])  # 100.0 for the UTKFace age task
        ```
        """
        scales = self.app_settings.target_scale
        if scales:
            if len(scales) == len(self.tasks):
                return float(scales[self.tasks.index(task)])
            regression = [t for t in self.tasks if t.type == "regression"]
            if task in regression:
                return float(scales[regression.index(task)])
        return 100.0 if task.name == "age" and task.label == "filename" else 1.0

    def regression_scale(self, task: TaskSpec) -> float:
        return self.target_scale(task) if task.type == "regression" else 1.0

    def unit(self, task: TaskSpec) -> str:
        """The unit of a regression task in messages: `years` for the UTKFace age, else empty."""
        return " years" if task.name == "age" and task.label == "filename" else ""

    # === Images and labels ===

    def _find_files(self) -> list[tuple[str, str]]:
        """`(path, name relative to its search folder)` of every image of the image section."""
        section = self.image_section
        name = section.section_name
        if not section.path_to_search:
            return self._files_from_csv()
        for folder in section.path_to_search:
            if not os.path.isdir(folder):
                raise FileNotFoundError(
                    f"{self._where(section, 'path_to_search')}: [{name}] path_to_search folder '{folder}' does not "
                    "exist: expected a folder of .jpg/.jpeg/.png images"
                )
        matcher = InputSection(
            name,
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
                f"{self.settings.config_path}: [{name}] path_to_search {', '.join(section.path_to_search)}: no "
                f".jpg, .jpeg or .png file matches (filename_contains={list(section.filename_contains)}, "
                f"filename_not_contains={list(section.filename_not_contains)})"
            )
        return files

    def _files_from_csv(self) -> list[tuple[str, str]]:
        section = self.image_section
        csv_path = Path(section.csv_data_file)
        folder = csv_path.parent
        files = []
        for entry in self._read_csv(csv_path, []):
            name = Path(entry).name
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            if not all(p in name for p in section.filename_contains):
                continue
            if any(p in name for p in section.filename_not_contains):
                continue
            path = folder / entry
            if not path.is_file():
                raise FileNotFoundError(
                    f"{csv_path} ([{section.section_name}] csv_data_file): image '{entry}' does not exist "
                    f"(resolved to '{path}'); entries are relative to the CSV's folder when path_to_search is empty"
                )
            files.append((str(path.absolute()), entry))
        if not files:
            raise ValueError(
                f"{csv_path} ([{section.section_name}] csv_data_file): no .jpg, .jpeg or .png file is listed in its "
                "'filename' column"
            )
        return files

    def _read_csv(self, csv_path: Path, columns: list[str]) -> dict[str, dict[str, str]]:
        """Rows of the label CSV keyed by their normalised `filename` entry; checks the columns exist."""
        section = self.image_section
        where = f"{csv_path} ([{section.section_name}] csv_data_file)"
        if not csv_path.is_file():
            raise FileNotFoundError(f"{where}: the file does not exist: expected a CSV with a 'filename' column")
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [column.strip() for column in reader.fieldnames or []]
            reader.fieldnames = header
            for column in ["filename", *columns]:
                if column not in header:
                    users = [t.name for t in self.tasks if t.label == f"csv:{column}"]
                    needed = f" (task {users[0]!r}, [MULTITASK] labels = csv:{column})" if users else ""
                    raise ValueError(
                        f"{where}: no column {column!r}{needed}; the CSV has the columns {header}"
                    )
            rows: dict[str, dict[str, str]] = {}
            for line, row in enumerate(reader, start=2):
                name = _normalise_csv_name(row.get("filename") or "")
                if not name:
                    raise ValueError(f"{where}, line {line}: the 'filename' cell is empty")
                if name in rows:
                    raise ValueError(f"{where}, line {line}: file '{name}' is listed twice")
                rows[name] = {**{k: (v or "").strip() for k, v in row.items() if k}, "_line": str(line)}
        return rows

    def _csv_labels(self, files: list[tuple[str, str]], tasks: list[TaskSpec]) -> dict[str, np.ndarray]:
        section = self.image_section
        csv_path = Path(section.csv_data_file)
        where = f"{csv_path} ([{section.section_name}] csv_data_file)"
        rows = self._read_csv(csv_path, [task.label[4:] for task in tasks])
        by_name: dict[str, str | None] = {}
        for key in rows:
            base = key.rsplit("/", 1)[-1]
            by_name[base] = None if base in by_name else key
        labels = {task.name: [] for task in tasks}
        for path, relative in files:
            key = relative if relative in rows else by_name.get(Path(path).name)
            if key is None:
                raise ValueError(
                    f"Image '{path}' has no row in {where}: expected a 'filename' entry '{relative}' or "
                    f"'{Path(path).name}' (unique)"
                )
            row = rows[key]
            for task in tasks:
                column = task.label[4:]
                text = row[column]
                labels[task.name].append(self._parse_label(text, task, f"{where}, line {row['_line']}, column "
                                                                      f"{column!r}"))
        return {
            task.name: np.asarray(labels[task.name], dtype=np.float64 if task.type == "regression" else np.int64)
            for task in tasks
        }

    @staticmethod
    def _parse_label(text: str, task: TaskSpec, where: str) -> float | int:
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

    def image_set(self) -> LabelledImages:
        """All images with their labels (read once: files found, names parsed, CSV read).

        Returns:
            A `LabelledImages` sorted by subject id.

        Raises:
            FileNotFoundError: a searched folder, the CSV or a listed image does not exist.
            ValueError: no image is found, no name is valid, two images share a file name, a CSV column or row
                is missing, or a label is invalid; the message names the file, section and key.

        Example:

        ```python
        images = app.image_set()
        images.subjects[:2], images.labels["age"][:2]
        ```
        """
        if self._image_set is not None:
            return self._image_set
        section = self.image_section
        files = self._find_files()
        filename_tasks = [t for t in self.tasks if t.label == "filename"]
        parsed = {}
        skipped = []
        if filename_tasks:
            kept = []
            for path, relative in files:
                fields = parse_utkface_name(path)
                if fields is None:
                    skipped.append(Path(path).name)
                    continue
                parsed[path] = fields
                kept.append((path, relative))
            files = kept
            if skipped:
                print(
                    f"WARNING: [{section.section_name}] skipped {len(skipped)} files whose names do not follow "
                    f"{UTKFACE_NAME_FORMAT} (e.g. '{skipped[0]}')"
                )
            if not files:
                raise ValueError(
                    f"{self.settings.config_path}: [{section.section_name}] path_to_search "
                    f"{', '.join(section.path_to_search)}: no valid images: none of the {len(skipped)} image names "
                    f"follows {UTKFACE_NAME_FORMAT} ([MULTITASK] labels = filename)"
                )
        names: dict[str, str] = {}
        for path, _ in files:
            name = Path(path).name
            if name in names:
                raise ValueError(
                    f"{self.settings.config_path}: [{section.section_name}]: two images share the file name "
                    f"'{name}' (the subject id): '{names[name]}' and '{path}'; use filename_not_contains or "
                    "separate runs"
                )
            names[name] = path
        labels: dict[str, np.ndarray] = {}
        for task in filename_tasks:
            field = list(FILENAME_TASKS).index(task.name)
            values = [parsed[path][field] for path, _ in files]
            labels[task.name] = np.asarray(values, dtype=np.float64 if task.type == "regression" else np.int64)
        csv_tasks = [t for t in self.tasks if t.label.startswith("csv:")]
        if csv_tasks:
            labels.update(self._csv_labels(files, csv_tasks))
        order = sorted(range(len(files)), key=lambda i: Path(files[i][0]).name)
        self._image_set = LabelledImages(
            subjects=[Path(files[i][0]).name for i in order],
            paths=[files[i][0] for i in order],
            labels={task.name: labels[task.name][order] for task in self.tasks},
            num_skipped=len(skipped),
        )
        return self._image_set

    def split(self) -> dict[str, str]:
        """`{subject: "Training" | "Validation" | "Inference"}`, made once with the `[SYSTEM] seed` and written to
        `[SYSTEM] dataset_split_file` (reused when it exists).

        Example:

        ```python
        app.split()["26_1_2_20170116174525125.jpg.chip.jpg"]  # "Training"
        ```
        """
        if self._split is None:
            training = self.settings.training
            validation = float(training.exclude_fraction_for_validation)
            inference = float(training.exclude_fraction_for_inference)
            self._split = make_or_load_split(
                self.image_set().subjects,
                self.settings.system.dataset_split_file,
                fractions=(1.0 - validation - inference, validation, inference),
                seed=int(self.settings.system.seed),
            )
        return self._split

    def subjects_of(self, phase: str) -> list[str]:
        """The sorted subjects of one phase of the split (`Training`, `Validation` or `Inference`)."""
        return [subject for subject, value in self.split().items() if value == phase]

    def training_subjects(self) -> list[str]:
        """The training images used: the Training split, or the seeded `[TRAINING] training_fraction` of it.

        Example:

        ```python
        len(app.training_subjects())  # ceil(0.1 * n_train) with training_fraction = 0.1
        ```
        """
        fraction = float(self.settings.training.training_fraction)
        if fraction >= 1.0:
            return self.subjects_of("Training")
        return subsample_training(self.split(), fraction, seed=int(self.settings.system.seed))

    # === tf.data ===

    def decode(self, path: tf.Tensor) -> tf.Tensor:
        """Reads, decodes (JPEG or PNG) and resizes one image: float32 `[height, width, channels]` in 0..255."""
        image = tf.io.decode_image(tf.io.read_file(path), channels=self.channels, expand_animations=False)
        image.set_shape([None, None, self.channels])
        image = tf.image.resize(image, self.image_size, antialias=True)
        return tf.ensure_shape(tf.cast(image, tf.float32), [*self.image_size, self.channels])

    def _standardiser(self, statistics: dict):
        mean = tf.constant(statistics["mean"], tf.float32)
        std = tf.constant(np.maximum(statistics["std"], 1e-6), tf.float32)
        whitening = bool(self.settings.network.whitening)

        def standardise(image):
            image = (image - mean) / std
            return tf.image.per_image_standardization(image) if whitening else image

        return standardise

    @property
    def statistics_path(self) -> Path:
        return self.model_dir / STATISTICS_FILE

    def image_statistics(self, create: bool = False) -> dict:
        """Per-channel mean and standard deviation (0..255 scale) of the training images after resizing.

        Computed once with a `tf.data` pass over `training_subjects()` and saved as `model_dir/image_statistics.json`;
        later calls (and inference) load that file.

        Args:
            create: compute and save the statistics when the file does not exist.

        Returns:
            `{"mean": [C floats], "std": [C floats], "num_images", "image_size", "channels"}`.

        Raises:
            FileNotFoundError: the file does not exist and `create` is False.
            ValueError: the saved statistics are for another image size or channel count.

        Example:

        ```python
        app.image_statistics(create=True)["mean"]  # e.g. [131.3, 113.5, 117.5]
        ```
        """
        path = self.statistics_path
        if path.is_file():
            statistics = json.loads(path.read_text())
            size = tuple(statistics.get("image_size", ()))
            if statistics.get("channels") != self.channels or size != self.image_size:
                raise ValueError(
                    f"{path} holds statistics of {statistics.get('channels')}-channel images of size "
                    f"{statistics.get('image_size')}, but the settings ask for {self.channels} channels at "
                    f"{list(self.image_size)} ([AGE_GENDER] channels, [{self.image_section.section_name}] "
                    "spatial_window_size); delete the file or restore the settings"
                )
            return statistics
        if not create:
            raise FileNotFoundError(
                f"{path} not found: it is written by training (sfg_run train -c {self.settings.config_path})"
            )
        paths = self.image_set().select(self.training_subjects()).paths
        dataset = (
            tf.data.Dataset.from_tensor_slices(paths)
            .map(self.decode, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(64)
            .prefetch(tf.data.AUTOTUNE)
        )
        total = np.zeros(self.channels, np.float64)
        total_sq = np.zeros(self.channels, np.float64)
        count = 0
        for batch in dataset:
            values = batch.numpy().astype(np.float64).reshape(-1, self.channels)
            total += values.sum(axis=0)
            total_sq += np.square(values).sum(axis=0)
            count += values.shape[0]
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
        statistics = {
            "mean": mean.tolist(),
            "std": std.tolist(),
            "num_images": len(paths),
            "image_size": list(self.image_size),
            "channels": self.channels,
        }
        self.model_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(statistics, indent=2))
        return statistics

    def _targets(self, images: LabelledImages) -> dict[str, np.ndarray]:
        targets = {}
        for task in self.tasks:
            values = images.labels[task.name]
            if task.type == "regression":
                targets[task.name] = (values / self.target_scale(task)).astype(np.float32)[:, None]
            else:
                targets[task.name] = values.astype(np.int32)
        return targets

    def _augmenter(self):
        training = self.settings.training
        axes = [axis for axis in training.random_flipping_axes if axis >= 0]
        max_degrees = abs(training.rotation_angle[1]) if training.rotation_angle else 0.0
        scale_range = abs(training.scaling_percentage[1]) / 100.0 if training.scaling_percentage else 0.0

        def augment(image, seed):
            seeds = tf.random.experimental.stateless_split(seed, 3)
            if 1 in axes:
                image = tf.image.stateless_random_flip_left_right(image, seeds[0])
            if 0 in axes:
                image = tf.image.stateless_random_flip_up_down(image, seeds[1])
            if max_degrees > 0 or scale_range > 0:
                image = random_scale_rotate(
                    {"image": image}, seeds[2], scale_range=scale_range, max_degrees=max_degrees, nearest=()
                )["image"]
            return image

        return augment

    def _labelled_dataset(self, images: LabelledImages) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices((images.paths, self._targets(images)))

    def training_dataset(self, seed: int) -> tf.data.Dataset:
        """Infinite batches `(images, {task: target})` of the training images, shuffled and augmented.

        Regression targets are float32 `[B, 1]` divided by `target_scale` (NaN = missing), class labels int32
        `[B]` (-1 = missing).

        Example:

        ```python
        images, targets = next(iter(app.training_dataset(seed=0)))
        ```
        """
        statistics = self.image_statistics(create=True)
        images = self.image_set().select(self.training_subjects())
        standardise = self._standardiser(statistics)
        augment = self._augmenter()
        batch_size = int(self.settings.network.batch_size)
        print(
            f"Training images: {len(images.subjects)} of {len(self.subjects_of('Training'))} in the Training split "
            f"(training_fraction = {self.settings.training.training_fraction:g}); batch size {batch_size}"
        )

        def load(index, example):
            path, targets = example
            image = augment(standardise(self.decode(path)), tf.stack([tf.constant(seed, tf.int64), index]))
            return image, targets

        return (
            self._labelled_dataset(images)
            .shuffle(len(images.subjects), seed=seed, reshuffle_each_iteration=True)
            .repeat()
            .enumerate()
            .map(load, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size, drop_remainder=True)
            .prefetch(tf.data.AUTOTUNE)
        )

    def validation_dataset(self) -> tf.data.Dataset | None:
        """Repeated batches of the Validation split (no augmentation), or None when it is empty."""
        subjects = self.subjects_of("Validation")
        if not subjects:
            return None
        images = self.image_set().select(subjects)
        standardise = self._standardiser(self.image_statistics(create=True))
        batch_size = min(int(self.settings.network.batch_size), len(subjects))
        return (
            self._labelled_dataset(images)
            .map(lambda path, targets: (standardise(self.decode(path)), targets),
                 num_parallel_calls=tf.data.AUTOTUNE)
            .repeat()
            .batch(batch_size, drop_remainder=True)
            .prefetch(tf.data.AUTOTUNE)
        )

    def prediction_batches(self, paths: list[str], batch_size: int) -> tf.data.Dataset:
        """Standardised images of `paths` in order, in batches of nearly equal size (at most `batch_size`).

        Batches are balanced (e.g. 9 images with batch size 4 give 3, 3, 3) because batch-statistics normalisation
        normalises each prediction batch on its own, and a batch of one image would carry no statistics.

        Example:

        ```python
        images = app.image_set().select(app.inference_subjects())
        outputs = mc_predict(model, app.prediction_batches(images.paths, 10), num_samples=50)
        ```
        """
        standardise = self._standardiser(self.image_statistics())
        count = len(paths)
        num_batches = max(1, math.ceil(count / max(1, batch_size)))
        bounds = np.round(np.linspace(0, count, num_batches + 1)).astype(np.int64)
        all_paths = tf.constant(paths)
        spec = tf.TensorSpec([*self.image_size, self.channels], tf.float32)

        def load_batch(start, end):
            return tf.map_fn(lambda path: standardise(self.decode(path)), all_paths[start:end],
                             fn_output_signature=spec)

        return (
            tf.data.Dataset.from_tensor_slices((bounds[:-1], bounds[1:]))
            .map(load_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(tf.data.AUTOTUNE)
        )

    # === Inference and evaluation ===

    def inference_subjects(self) -> list[str]:
        """The subjects of `[INFERENCE] dataset_to_infer` (empty = the Inference split; `all` = every image)."""
        choice = self.settings.inference.dataset_to_infer
        if choice == "all":
            return list(self.image_set().subjects)
        subjects = self.subjects_of(PHASE_OF_DATASET[choice])
        if not subjects:
            raise self._error(
                self.settings.inference, "dataset_to_infer", f"the {PHASE_OF_DATASET[choice]} split of "
                f"{self.settings.system.dataset_split_file} is empty: expected all, training, validation or inference "
                "with images in it"
            )
        return subjects

    def infer(self, model: SFGNetwork) -> list[Path]:
        """Predicts every image of `inference_subjects()` and writes `save_seg_dir/inferred.csv`.

        Columns: `subject`; per regression task `<task>_mean`, `<task>_std` in the original unit (times
        `target_scale`); per classification task `<task>_mode`, `<task>_prob_<c>` per class and `<task>_entropy`
        (nats). `[INFERENCE] inference_mode = mc` aggregates `num_samples` sampled architectures, `map` uses the
        MAP architecture and `expected` the expected network (both: std 0, mode = argmax).

        Example:

        ```python
        model, _ = app.load_checkpoint()
        app.infer(model)  # [model_dir/output/inferred.csv]
        ```
        """
        inference = self.settings.inference
        images = self.image_set().select(self.inference_subjects())
        batches = self.prediction_batches(images.paths, int(inference.batch_size))
        print(f"Predicting {len(images.subjects)} images ({inference.inference_mode}).")
        if inference.inference_mode == "mc":
            outputs = mc_predict(model, batches, num_samples=int(inference.num_samples))
        else:
            outputs = self._deterministic_outputs(model, batches, inference.inference_mode)
        header = ["subject"]
        columns: list[np.ndarray] = []
        for task in self.tasks:
            values = outputs[task.name]
            if task.type == "regression":
                scale = self.target_scale(task)
                header += [f"{task.name}_mean", f"{task.name}_std"]
                columns += [values["mean"].reshape(-1) * scale, values["std"].reshape(-1) * scale]
            else:
                probabilities = values["probabilities"].reshape(len(images.subjects), -1)
                header += [f"{task.name}_mode"]
                header += [f"{task.name}_prob_{c}" for c in range(probabilities.shape[1])]
                header += [f"{task.name}_entropy"]
                columns += [values["mode"].reshape(-1), *probabilities.T, values["entropy"].reshape(-1)]
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / INFERRED_FILE
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            for row, subject in enumerate(images.subjects):
                cells = [subject]
                for name, column in zip(header[1:], columns):
                    value = column[row]
                    cells.append(str(int(value)) if name.endswith("_mode") else _format_float(value))
                writer.writerow(cells)
        return [path]

    @staticmethod
    def _deterministic_outputs(
        model: SFGNetwork, batches: tf.data.Dataset, mode: str
    ) -> dict[str, dict[str, np.ndarray]]:
        outputs = deterministic_predict(model, batches, mode)
        results = {}
        for task in model.tasks:
            values = outputs[task.name]
            if task.is_categorical:
                probabilities = values["probabilities"].astype(np.float64)
                entropy = -(probabilities * np.log(np.maximum(probabilities, 1e-12))).sum(axis=-1)
                results[task.name] = {"probabilities": probabilities, "mode": values["label"], "entropy": entropy}
            else:
                prediction = values["prediction"]
                results[task.name] = {"mean": prediction, "std": np.zeros_like(prediction)}
        return results

    def _read_inferred(self) -> list[dict[str, str]]:
        path = self.output_dir / INFERRED_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found ([INFERENCE] save_seg_dir): run inference first "
                f"(sfg_run inference -c {self.settings.config_path})"
            )
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            for task in self.tasks:
                column = f"{task.name}_mean" if task.type == "regression" else f"{task.name}_mode"
                if column not in header:
                    raise ValueError(
                        f"{path}: no column {column!r} for task {task.name!r}; columns {header}. Run inference "
                        "again with the current [MULTITASK] tasks"
                    )
            return list(reader)

    def evaluate(self) -> list[Path]:
        """Compares `inferred.csv` with the labels and writes `save_csv_dir/age_gender_metrics.csv` and its summary.

        Per image and task: regression `<task>_true`, `<task>_predicted`, `<task>_abs_error` (original unit) and
        `<task>_baseline_abs_error` (predicting the training mean); classification `<task>_true`,
        `<task>_predicted`, `<task>_correct` and `<task>_baseline_correct` (predicting the training majority class).
        Missing labels leave the cells empty. Prints the MAE and accuracy of every task next to the baselines.

        Example:

        ```python
        app.evaluate()  # [.../evaluation/age_gender_metrics.csv, .../age_gender_metrics_summary.csv]
        ```
        """
        rows = self._read_inferred()
        image_set = self.image_set()
        known = set(image_set.subjects)
        unknown = [row["subject"] for row in rows if row["subject"] not in known]
        if unknown:
            raise ValueError(
                f"{self.output_dir / INFERRED_FILE}: subjects {unknown[:5]} are not among the images of "
                f"[{self.image_section.section_name}]; run inference again"
            )
        images = image_set.select([row["subject"] for row in rows])
        training = image_set.select(self.training_subjects())
        wanted = {e.lower() for e in self.settings.evaluation.evaluations} or set(EVALUATIONS)
        metric_rows = [{"subject": subject} for subject in images.subjects]
        summaries = []
        for task in self.tasks:
            truth = images.labels[task.name]
            known_truth = training.labels[task.name]
            if task.type == "regression":
                if "mae" not in wanted:
                    continue
                baseline = float(np.nanmean(known_truth)) if np.isfinite(known_truth).any() else math.nan
                errors, baseline_errors = [], []
                for metric_row, row, value in zip(metric_rows, rows, truth):
                    predicted = float(row[f"{task.name}_mean"]) if row[f"{task.name}_mean"] else math.nan
                    metric_row[f"{task.name}_true"] = float(value)
                    metric_row[f"{task.name}_predicted"] = predicted
                    metric_row[f"{task.name}_abs_error"] = abs(predicted - value)
                    metric_row[f"{task.name}_baseline_abs_error"] = abs(baseline - value)
                    if np.isfinite(value):
                        errors.append(abs(predicted - value))
                        baseline_errors.append(abs(baseline - value))
                unit = self.unit(task)
                summaries.append(
                    f"{task.name}: MAE {np.mean(errors) if errors else math.nan:.3f}{unit} over {len(errors)} images "
                    f"(predicting the training mean {baseline:.3f}{unit}: "
                    f"{np.mean(baseline_errors) if baseline_errors else math.nan:.3f}{unit})"
                )
            else:
                if "accuracy" not in wanted:
                    continue
                valid = known_truth[known_truth >= 0]
                majority = int(np.bincount(valid).argmax()) if valid.size else -1
                correct, baseline_correct = [], []
                for metric_row, row, value in zip(metric_rows, rows, truth):
                    predicted = int(row[f"{task.name}_mode"])
                    metric_row[f"{task.name}_true"] = int(value) if value >= 0 else math.nan
                    metric_row[f"{task.name}_predicted"] = predicted
                    metric_row[f"{task.name}_correct"] = float(predicted == value) if value >= 0 else math.nan
                    metric_row[f"{task.name}_baseline_correct"] = float(majority == value) if value >= 0 else math.nan
                    if value >= 0:
                        correct.append(predicted == value)
                        baseline_correct.append(majority == value)
                summaries.append(
                    f"{task.name}: accuracy {np.mean(correct) if correct else math.nan:.3f} over {len(correct)} "
                    f"images (predicting the training majority class {majority}: "
                    f"{np.mean(baseline_correct) if baseline_correct else math.nan:.3f})"
                )
        written = write_metrics_csv(metric_rows, self.evaluation_dir / METRICS_FILE)
        for line in summaries:
            print(line)
        return list(written)
