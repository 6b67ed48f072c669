"""`AgeGenderApplication`: multi-task learning on folders of labelled 2-D images (UTKFace layout, or a label CSV).

The images are the `.jpg`, `.jpeg` and `.png` files of the input section `[MULTITASK] image`; labels come from
UTKFace file names (`labels = filename`) or a CSV column (`csv:<column>`), see `labelled_images` and `image_labels`.
The hooks: `prepare(fit)` first checks every input and raises all problems at once before anything is written (the
listing and labels, and every image file decoded as the datasets decode it: `image_checks`), then makes or loads the
seeded 70/15/15 split (`dataset_split.csv`; the seeded `training_fraction` of its Training part is used) and fits or
loads the per-channel training statistics (`image_statistics`). The datasets (`image_datasets`) decode and resize to
`spatial_window_size` (default 200 x 200), standardise every channel, divide regression targets by `[AGE_GENDER]
target_scale` (`age_gender_settings`) and augment. Inference writes `inferred.csv` and evaluation
`age_gender_metrics.csv` (`prediction_tables`), every table atomically.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from sfg_keras.config import SectionSettings, TaskSpec
from sfg_keras.data.sampler import batch_examples
from sfg_keras.engine.application import BaseApplication, InferenceInput
from sfg_keras.evaluation import write_metrics_tables
from sfg_keras.io.atomic import atomic_write_json
from sfg_keras.io.input_checks import SCAN_CACHE_FILE, InputProblems, ScanCache

from .age_gender_settings import (
    APP_KEYS,
    APP_SECTION,
    DEFAULT_IMAGE_SIZE,
    EVALUATIONS,
    evaluations_problem,
    settings_problem,
    target_scale,
)
from .image_checks import ImageDecodeCheck, check_image_files
from .image_datasets import (
    augmenter,
    decode_image,
    prediction_batches,
    standardiser,
    training_batches,
    validation_batches,
)
from .image_serving import image_preprocessor
from .image_statistics import STATISTICS_FILE, fit_image_statistics, load_image_statistics
from .labelled_images import LabelledImages, raise_input_problems, read_labelled_images
from .prediction_tables import InferredTable, metric_table, prediction_rows, read_inferred

if TYPE_CHECKING:
    from sfg_keras.serving import ImagePreprocessor

INFERRED_FILE = "inferred.csv"
METRICS_FILE = "age_gender_metrics.csv"


class AgeGenderApplication(BaseApplication):
    """Multi-task regression and classification on labelled 2-D images (UTKFace age and gender, MNIST digits).

    Args:
        settings: the resolved `Settings` (load them with `extra_sections=AgeGenderApplication.APP_SECTIONS`).

    Example:

    ```python
    settings = load_settings("configs/demo_age_gender.ini", action="train",
                             extra_sections=AgeGenderApplication.APP_SECTIONS)
    app = AgeGenderApplication(settings)
    app.prepare(fit=True)  # model_dir/dataset_split.csv, model_dir/image_statistics.json
    images, targets = next(iter(app.training_dataset(first_batch=0)))
    ```
    """

    APP_SECTIONS = {APP_SECTION: APP_KEYS}
    APP_SECTION = APP_SECTION
    name = "age_gender"

    def __init__(self, settings):
        self._images: LabelledImages | None = None
        self._split: dict[str, str] | None = None
        self._statistics: dict | None = None
        self._scans: ScanCache | None = None
        self._inferred = InferredTable()
        self._to_infer: list[str] | None = None
        super().__init__(settings)

    # === Settings ===

    @property
    def image_section(self) -> str:
        """The name of the input section holding the images (`[MULTITASK] image`), e.g. `"IMAGES"`."""
        return self.settings.multitask.image

    @property
    def image_settings(self) -> SectionSettings:
        """The settings of the image section."""
        return self.settings.inputs[self.image_section]

    @property
    def channels(self) -> int:
        """`[AGE_GENDER] channels`: 3 (RGB) or 1 (grey)."""
        return int(self.app_settings.channels)

    @property
    def image_size(self) -> tuple[int, int]:
        """`(height, width)` images are resized to."""
        window = tuple(int(v) for v in self.image_settings.spatial_window_size)
        return (window[0], window[1]) if window else DEFAULT_IMAGE_SIZE

    def check_settings(self) -> None:
        """Checks the tasks, label sources, image size, channels, augmentation and evaluations against what this
        application supports (`age_gender_settings`).

        Raises:
            ConfigError: naming the file, section, key and value, and what was expected.
        """
        problem = settings_problem(self.settings, self.app_settings, self.tasks)
        if problem:
            raise self.config_error(*problem)
        self.augmentation_ranges()
        problem = evaluations_problem(self.settings.evaluation.evaluations)
        if problem:
            raise self.config_error(*problem)

    def input_shape(self) -> tuple[int, ...]:
        """`(height, width, channels)`, e.g. `(200, 200, 3)`."""
        return (*self.image_size, self.channels)

    def serving_preprocessor(self) -> ImagePreprocessor:
        """Raw decoded pixels in, as the exported SavedModel takes them (`image_serving`): `[N, h, w, channels]`,
        values 0..255, any `h, w`; resized and standardised inside every signature as the datasets do.

        Raises:
            FileNotFoundError, ValueError: the statistics file is missing or was written for other images.
        """
        if self._statistics is None:
            self._statistics = self.load_statistics()
        return image_preprocessor(self.image_statistics, self.image_size, bool(self.settings.network.whitening))

    def target_scale(self, task: TaskSpec) -> float:
        """Divisor of `task`'s regression targets (`age_gender_settings.target_scale`), e.g. 100.0 for the UTKFace
        age."""
        return target_scale(self.app_settings.target_scale, self.tasks, task)

    def regression_scale(self, task: TaskSpec) -> float:
        """`target_scale(task)` for a regression task, else 1."""
        return self.target_scale(task) if task.type == "regression" else 1.0

    def regression_unit(self, task: TaskSpec) -> str:
        """`"years"` for the UTKFace age read from file names, else unnamed."""
        return "years" if task.name == "age" and task.label == "filename" else ""

    # === Images, split and statistics ===

    def image_set(self) -> LabelledImages:
        """All images with their labels, read once (see `labelled_images.read_labelled_images`; writes nothing).

        Example:

        ```python
        images = app.image_set()
        images.subjects[:2], images.labels["age"][:2]
        ```
        """
        if self._images is None:
            self._images = read_labelled_images(self.settings, self.image_section, self.tasks,
                                                **self._reading_options())
        return self._images

    def _reading_options(self) -> dict:
        """Only training needs every label (an image without one is not scored by evaluation); inference and
        evaluation search `[INFERENCE] input_dir` when it is set."""
        return {"labels_required": self.settings.action == "train", "search": self.input_dir}

    def training_image_set(self) -> LabelledImages:
        """The images of the input section itself (never `[INFERENCE] input_dir`), with their labels: where the
        training images are, for the evaluation's baselines."""
        if self.input_dir is None and self.settings.action != "inference":
            return self.image_set()
        return read_labelled_images(self.settings, self.image_section, self.tasks)

    def subject_files(self, subjects: list[str]) -> dict[str, dict[str, str]]:
        """`{image id: {image section: file}}` of `subjects`."""
        images = self.image_set().select(subjects)
        return {subject: {self.image_section: path} for subject, path in zip(images.subjects, images.paths)}

    def num_training_examples(self) -> int | None:
        """The training images used (after `prepare`)."""
        return len(self.training_subjects(self._subject_split())) if self._split is not None else None

    def describe_training_examples(self) -> str:
        """E.g. "training images of [IMAGES] (training_fraction = 1)"."""
        return (f"training images of [{self.image_section}] (training_fraction = "
                f"{self.settings.training.training_fraction:g})")

    def _subject_split(self) -> dict[str, str]:
        """`{subject: phase}` of every image: `split(subjects)` of the base class, made once and cached."""
        if self._split is None:
            self._split = self.split(self.image_set().subjects)
        return self._split

    @property
    def statistics_path(self) -> Path:
        """`model_dir/image_statistics.json`."""
        return self.model_dir / STATISTICS_FILE

    def prepare(self, fit: bool) -> None:
        """Checks every input, then makes or loads the split and fits or loads the statistics.

        Nothing is written before every check passed; the problems are raised together (see `check_inputs`):
        the listing and labels (`labelled_images`) and the image files, decoded as the datasets decode them (all
        images for `train`, from scratch or resumed; the images to infer for `inference`; none for `evaluation`).
        The decodes are cached in `model_dir/.input_scans.json`, written last.

        Args:
            fit: compute the per-channel mean and standard deviation (0..255 scale, after resizing) of the training
                images and write them atomically to `model_dir/image_statistics.json`, replacing an existing file;
                otherwise load that file.

        Raises:
            InputValidationError: (a ValueError) every bad image, row and label, each naming the file, the image id,
                what is wrong and what was expected (the first 20, and how many more).
            FileNotFoundError: an input folder, the CSV or listed images are missing, or `fit` is False and the
                statistics file does not exist.
            ValueError: no image, an empty training set, or saved statistics of another image size or channel count.

        Example:

        ```python
        app.prepare(fit=True)
        json.loads(app.statistics_path.read_text())["mean"]  # e.g. [131.3, 113.5, 117.5]
        ```
        """
        images = self.check_inputs()
        action = self.settings.action
        if not fit:
            statistics = self.load_statistics()
            if action == "train":
                self._subject_split()
            elif action == "inference":
                found = {subject: {self.image_section: path} for subject, path in zip(images.subjects, images.paths)}
                self._to_infer = self.choose_inference_subjects(found)
                where = f"[INFERENCE] input_dir {self.input_dir}" if self.input_dir else f"[{self.image_section}]"
                problems = InputProblems(f"images to infer of {where}")
                self.check_images(images.select(self._to_infer), problems)
                raise_input_problems(problems)
            self._statistics = statistics
            if action == "train":  # inference and evaluation change no file that training wrote
                self.scan_cache().save()
            return
        training = self.training_subjects(self._subject_split())
        if not training:
            raise ValueError(
                f"{self.settings.system.dataset_split_file} has no Training subject among the {len(images.subjects)} "
                f"images of [{self.image_section}]: expected at least one to fit the image statistics"
            )
        statistics = fit_image_statistics(images.select(training).paths, self.scan_cache(), self.decode_check)
        atomic_write_json(self.statistics_path, statistics)
        self._statistics = statistics
        self.scan_cache().save()

    def check_inputs(self) -> LabelledImages:
        """`image_set()`, after checking the listing and every label and, for `train`, decoding every image; all
        problems are raised together, and nothing is written.

        Raises:
            InputValidationError: the problems (a `MissingImagesError`, also a FileNotFoundError, when every one is a
                missing image).

        Example:

        ```python
        images = app.check_inputs()  # raises listing every corrupt image and bad label
        ```
        """
        problems = InputProblems(f"inputs of [{self.image_section}]")
        images = self._images
        if images is None:
            images = read_labelled_images(self.settings, self.image_section, self.tasks, problems,
                                          **self._reading_options())
        if self.settings.action == "train":
            self.check_images(images, problems)
        raise_input_problems(problems)
        self._images = images
        return images

    def check_images(self, images: LabelledImages, problems: InputProblems) -> None:
        """Records in `problems` every image file of `images` the datasets could not decode
        (`image_checks.check_image_files`, with the decodes cached in `model_dir/.input_scans.json`)."""
        check_image_files(images, problems, self.scan_cache(), self.decode_check)

    @property
    def decode_check(self) -> ImageDecodeCheck:
        """The decode of one image file as the datasets decode it (`[AGE_GENDER] channels`, `image_size`)."""
        return ImageDecodeCheck(self.channels, self.image_size)

    def scan_cache(self) -> ScanCache:
        """The `ScanCache` of image decodes, `model_dir/.input_scans.json` (saved by `prepare` after the checks)."""
        if self._scans is None:
            self._scans = ScanCache(self.model_dir / SCAN_CACHE_FILE)
        return self._scans

    def training_files(self) -> list[str]:
        """The files the image statistics were fitted on: the Training images used, plus the label CSV when it holds
        labels or lists the images. Valid after `prepare`; e.g. `files_fingerprint(app.training_files())`."""
        self._check_prepared()
        files = list(self.image_set().select(self.training_subjects(self._subject_split())).paths)
        csv_file = self.image_settings.csv_data_file
        uses_csv = not self.image_settings.path_to_search or any(t.label.startswith("csv:") for t in self.tasks)
        if csv_file and uses_csv:
            files.append(str(Path(csv_file).absolute()))
        return files

    def load_statistics(self) -> dict:
        """The image statistics saved by training (`image_statistics.load_image_statistics`).

        Raises:
            FileNotFoundError, ValueError: the file is missing or holds statistics of other images.
        """
        return load_image_statistics(self.statistics_path, self.decode_check, self.settings.config_path,
                                     self.image_section)

    @property
    def image_statistics(self) -> dict:
        """`{"mean", "std", "num_images", "image_size", "channels"}` of `prepare`."""
        self._check_prepared()
        return self._statistics

    def _check_prepared(self) -> None:
        if self._statistics is None:
            raise RuntimeError(f"{type(self).__name__}: call prepare(fit) before building datasets")

    # === tf.data ===

    def decode(self, path: tf.Tensor) -> tf.Tensor:
        """Reads, decodes (JPEG or PNG) and resizes one image: float32 `[height, width, channels]` in 0..255."""
        return decode_image(path, self.channels, self.image_size)

    def standardiser(self) -> Callable[[tf.Tensor], tf.Tensor]:
        """`image -> standardised image` with the training statistics (`image_datasets.standardiser`; after
        `prepare`)."""
        return standardiser(self.image_statistics, bool(self.settings.network.whitening))

    def _targets(self, images: LabelledImages) -> dict[str, np.ndarray]:
        targets = {}
        for task in self.tasks:
            values = images.labels[task.name]
            if task.type == "regression":
                targets[task.name] = (values / self.target_scale(task)).astype(np.float32)[:, None]
            else:
                targets[task.name] = values.astype(np.int32)
        return targets

    def training_dataset(self, first_batch: int) -> tf.data.Dataset:
        """Infinite batches `(images, {task: target})` of the training images from batch `first_batch` on (batch `k`
        a function of the seed and `k` only: `image_datasets.training_batches`). Regression targets are float32
        `[B, 1]` divided by `target_scale` (NaN = missing), class labels int32 `[B]` (-1 = missing)."""
        standardise = self.standardiser()
        images = self.image_set().select(self.training_subjects(self._subject_split()))
        batch_size = self.batch_size
        print(
            f"Training images: {len(images.subjects)} of "
            f"{len(self.subjects_of(self._subject_split(), 'Training'))} in the Training split "
            f"(training_fraction = {self.settings.training.training_fraction:g}); batch size {batch_size}"
        )
        axes = [axis for axis in self.settings.training.random_flipping_axes if axis >= 0]
        augment = augmenter(axes, *self.augmentation_ranges())
        return training_batches(images.paths, self._targets(images), lambda path: standardise(self.decode(path)),
                                augment, self.seed, batch_size, first_batch)

    def describe_batch(self, batch: int) -> str:
        """The image files of training batch `batch` (the order of `training_dataset`)."""
        images = self.image_set().select(self.training_subjects(self._subject_split()))
        indices = batch_examples(len(images.paths), self.seed, batch, self.batch_size)
        return ", ".join(str(images.paths[index]) for index in indices)

    def validation_dataset(self) -> tf.data.Dataset | None:
        """Repeated batches of the Validation split in a fixed order (no augmentation), or None when it is empty."""
        standardise = self.standardiser()
        subjects = self.subjects_of(self._subject_split(), "Validation")
        if not subjects:
            return None
        images = self.image_set().select(subjects)
        return validation_batches(images.paths, self._targets(images), lambda path: standardise(self.decode(path)),
                                  min(self.batch_size, len(subjects)))

    def prediction_batches(self, paths: list[str], batch_size: int) -> tf.data.Dataset:
        """Standardised images of `paths` in order, in balanced batches of at most `batch_size`
        (`image_datasets.prediction_batches`)."""
        standardise = self.standardiser()
        return prediction_batches(paths, batch_size, lambda path: standardise(self.decode(path)),
                                  (*self.image_size, self.channels))

    # === Inference ===

    def inference_inputs(self) -> Iterator[InferenceInput]:
        """One `InferenceInput` holding every image of `subjects_to_infer`, as balanced prediction batches of
        `[INFERENCE] batch_size`; its `context` is the list of subjects.

        Example:

        ```python
        (item,) = app.inference_inputs()
        item.context[:2]  # the first two subjects
        ```
        """
        self._check_prepared()
        if self._to_infer is None:
            raise RuntimeError(f"{type(self).__name__}.inference_inputs() needs prepare(fit=False) with settings of "
                               f"the inference action (these are for {self.settings.action!r})")
        subjects = list(self._to_infer)
        images = self.image_set().select(subjects)
        self._inferred = InferredTable()
        batch_size = int(self.settings.inference.batch_size)
        print(f"Predicting {len(subjects)} images ({self.settings.inference.inference_mode}).")
        yield InferenceInput(f"{len(subjects)} images", self.prediction_batches(images.paths, batch_size),
                             context=list(subjects))

    def write_outputs(self, item: InferenceInput, predictions: dict) -> list[Path]:
        """Keeps the rows of `item`'s images for `inferred.csv` (written by `finish_inference`); returns `[]`.

        Args:
            item: an item of `inference_inputs()` (`context` = its subjects).
            predictions: `{task: {"mean", "std"}}` for regression (network unit; `std` zeros or absent for a
                deterministic mode) and `{task: {"probabilities", "label", "entropy"}}` for classification
                (`label`: the Monte-Carlo majority vote or the argmax), one entry per subject along the first axis.

        Raises:
            ValueError: a task or a key is missing, or the number of predictions differs from the number of subjects.

        Example:

        ```python
        app.write_outputs(item, {"age": {"mean": mean, "std": std},
                                 "gender": {"probabilities": p, "label": p.argmax(-1), "entropy": h}})
        ```
        """
        self._inferred.add(*prediction_rows(self.tasks, predictions, list(item.context), item.key,
                                            self.regression_scale))
        return []

    def finish_inference(self, written: list[Path]) -> list[Path]:
        """Writes `save_seg_dir/inferred.csv` atomically from the rows kept by `write_outputs`, sorted by subject.

        Columns: `subject`; per regression task `<task>_mean`, `<task>_std` in the original unit (times
        `target_scale`); per classification task `<task>_label`, `<task>_prob_<c>` per class and `<task>_entropy`
        (nats), named as the exported signatures' outputs (`sfg_keras.predictions.output_name`); the provenance
        of each image: `phase` (its phase in the run record, or `new`), `trained_on` and `input_sha256` (of the image
        file).

        Example:

        ```python
        app.finish_inference([])  # [model_dir/output/inferred.csv]
        ```
        """
        written = self._inferred.write(self.output_dir / INFERRED_FILE, self.provenance_columns)
        return [written] if written else []

    # === Evaluation ===

    def evaluate(self) -> list[Path]:
        """Compares `inferred.csv` with the labels and writes `save_csv_dir/age_gender_metrics.csv` and its summary.

        Per image and task: regression `<task>_true`, `<task>_predicted`, `<task>_abs_error` (original unit) and
        `<task>_baseline_abs_error` (predicting the training mean); classification `<task>_true`,
        `<task>_predicted`, `<task>_correct` and `<task>_baseline_correct` (predicting the training majority class).
        Missing labels leave the cells empty. Prints the MAE and accuracy of every task next to the baselines.
        Needs the images and the split, not the image statistics.

        Example:

        ```python
        app.evaluate()  # [.../evaluation/age_gender_metrics.csv, .../age_gender_metrics_summary.csv]
        ```
        """
        path = self.output_dir / INFERRED_FILE
        rows = read_inferred(path, self.tasks, f"sfg_run inference -c {self.settings.config_path}")
        image_set = self.image_set()
        found = {subject: {self.image_section: file} for subject, file in zip(image_set.subjects, image_set.paths)}
        rows = self.evaluation_subjects(rows, found, path)
        images = image_set.select([row["subject"] for row in rows])
        known = self.training_image_set()
        trained = sorted(self.run_record().training_subjects & set(known.subjects))
        training = known.select(trained)
        wanted = {e.lower() for e in self.settings.evaluation.evaluations} or set(EVALUATIONS)
        metric_rows, summaries = metric_table(self.tasks, rows, images, training, wanted, self.regression_unit)
        written = write_metrics_tables(metric_rows, self.evaluation_dir / METRICS_FILE)
        for line in summaries:
            print(line)
        return list(written)
