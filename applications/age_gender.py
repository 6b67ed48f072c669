"""`AgeGenderApplication`: multi-task learning on folders of labelled 2-D images (UTKFace layout, or a label CSV).

The images are the `.jpg`, `.jpeg` and `.png` files of the input section `[MULTITASK] image`; labels come from
UTKFace file names (`labels = filename`) or a CSV column (`csv:<column>`), see `labelled_images`. The hooks:
`prepare(fit)` first checks every input and raises all problems at once before anything is written (the listing
and labels, and every image file decoded as the datasets decode it, cached in `model_dir/.input_scans.json`: see
`check_inputs`), then makes or loads the seeded 70/15/15 split (`dataset_split.csv`; the
seeded `training_fraction` of its Training part is used) and fits (written atomically) or loads the per-channel
training statistics `model_dir/image_statistics.json`. The datasets decode and resize to `spatial_window_size`
(default 200 x 200), standardise every channel, divide regression targets by `[AGE_GENDER] target_scale` (age in
years / 100 by default) and augment with the `[TRAINING]` flips, rotations and scalings; training batch `k` depends
only on `[SYSTEM] seed` and `k`. Inference writes `inferred.csv` (mean and standard deviation of every regression
task in its original unit; label, class probabilities and entropy of every classification task); evaluation writes
per-image errors and correctness next to predicting the training mean / majority class (`age_gender_metrics.csv`);
every table is written atomically (a failed write names the file and leaves no partial one).
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from sfg_keras.config import KeySpec, SectionSettings, TaskSpec
from sfg_keras.data import random_scale_rotate
from sfg_keras.data.sampler import batch_examples, example_order
from sfg_keras.engine import provenance
from sfg_keras.engine.application import BaseApplication, InferenceInput
from sfg_keras.io.atomic import atomic_write_json
from sfg_keras.io.input_checks import SCAN_CACHE_FILE, InputCheckFailure, InputProblems, ScanCache

from .labelled_images import (
    LabelledImages,
    describe_image_bytes,
    label_source_problem,
    raise_input_problems,
    read_labelled_images,
)
from .prediction_tables import (
    classification_metrics,
    format_row,
    prediction_columns,
    read_inferred,
    regression_metrics,
    write_metrics_tables,
    write_table,
)

if TYPE_CHECKING:
    from sfg_keras.serving import ImagePreprocessor

DEFAULT_IMAGE_SIZE = (200, 200)
STATISTICS_FILE = "image_statistics.json"
INFERRED_FILE = "inferred.csv"
METRICS_FILE = "age_gender_metrics.csv"
EVALUATIONS = ("mae", "accuracy")

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
        self._inferred: dict[str, list[str]] = {}
        self._inferred_header: list[str] = []
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
        application supports.

        Raises:
            ConfigError: naming the file, section, key and value, and what was expected.
        """
        for task in self.tasks:
            problem = label_source_problem(task, self.image_section, bool(self.image_settings.csv_data_file))
            if problem:
                key, value, expected = problem
                raise self.config_error("MULTITASK", key, value, expected)
        self._check_image_settings()
        training = self.settings.training
        if any(axis not in (-1, 0, 1) for axis in training.random_flipping_axes):
            raise self.config_error(
                "TRAINING", "random_flipping_axes", training.random_flipping_axes,
                "expected 0 (up-down), 1 (left-right) or -1 (none)",
            )
        for key in ("rotation_angle", "scaling_percentage"):
            value = training[key]
            if value and not (len(value) == 2 and math.isclose(value[0], -value[1])):
                raise self.config_error(
                    "TRAINING", key, value, "age_gender draws from a symmetric range: expected '-a, a' or ()"
                )
        self.augmentation_ranges()
        for evaluation in self.settings.evaluation.evaluations:
            if evaluation.lower() not in EVALUATIONS:
                raise self.config_error(
                    "EVALUATION", "evaluations", evaluation,
                    f"unknown evaluation: expected {', '.join(EVALUATIONS)} (empty = all)",
                )

    def _check_image_settings(self) -> None:
        image, section = self.image_settings, self.image_section
        window = image.spatial_window_size
        if window and not (len(window) == 2 or (len(window) == 3 and window[2] == 1)):
            raise self.config_error(section, "spatial_window_size", window, "expected 'height, width' (or "
                                    "'height, width, 1')")
        if self.channels not in (1, 3):
            raise self.config_error(APP_SECTION, "channels", self.channels, "expected 1 (grey) or 3 (RGB)")
        scales = self.app_settings.target_scale
        regression = [t for t in self.tasks if t.type == "regression"]
        if scales and len(scales) not in (len(self.tasks), len(regression)):
            raise self.config_error(
                APP_SECTION, "target_scale", scales, f"expected one value per task ({len(self.tasks)}) or per "
                f"regression task ({len(regression)})"
            )
        if image.loader == "nibabel":
            raise self.config_error(section, "loader", image.loader, "age_gender reads JPEG and PNG images: "
                                    "expected tf_image or empty")
        if self.settings.network.normalisation:
            raise self.config_error(
                "NETWORK", "normalisation", self.settings.network.normalisation, "Nyul histogram standardisation is "
                "for MR volumes; age_gender standardises each channel with training statistics: expected False"
            )

    def input_shape(self) -> tuple[int, ...]:
        """`(height, width, channels)`, e.g. `(200, 200, 3)`."""
        return (*self.image_size, self.channels)

    def serving_preprocessor(self) -> ImagePreprocessor:
        """Raw decoded pixels in, as the exported SavedModel takes them: `[N, h, w, channels]`, values 0..255 (uint8
        pixels sent as numbers), any `h, w` (one size per request).

        Inside every signature the images are resized to `spatial_window_size` exactly as `decode` does
        (`tf.image.resize(..., antialias=True)`) and standardised with the training statistics of
        `model_dir/image_statistics.json` (then per image with `[NETWORK] whitening`), saved as constants.

        Raises:
            FileNotFoundError, ValueError: the statistics file is missing or was written for other images.

        Example:

        ```python
        pixels = tf.io.decode_image(tf.io.read_file("face.jpg"), channels=3)[None]
        app.serving_preprocessor().preprocess(pixels)  # what the network was trained on
        ```
        """
        from sfg_keras.serving import ImagePreprocessor

        if self._statistics is None:
            self._statistics = self._load_statistics()
        statistics = self.image_statistics
        return ImagePreprocessor(self.image_size, mean=statistics["mean"], std=statistics["std"],
                                 whitening=bool(self.settings.network.whitening), name="images")

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
        """`target_scale(task)` for a regression task, else 1."""
        return self.target_scale(task) if task.type == "regression" else 1.0

    def regression_unit(self, task: TaskSpec) -> str:
        """`"years"` for the UTKFace age read from file names, else unnamed."""
        return "years" if task.name == "age" and task.label == "filename" else ""

    def unit(self, task: TaskSpec) -> str:
        """The unit of a regression task in messages: ` years` for the UTKFace age, else empty."""
        return " years" if task.name == "age" and task.label == "filename" else ""

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
            statistics = self._load_statistics()
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
                self._scan_cache().save()
            return
        training = self.training_subjects(self._subject_split())
        if not training:
            raise ValueError(
                f"{self.settings.system.dataset_split_file} has no Training subject among the {len(images.subjects)} "
                f"images of [{self.image_section}]: expected at least one to fit the image statistics"
            )
        statistics = self._fit_statistics(images.select(training).paths)
        atomic_write_json(self.statistics_path, statistics)
        self._statistics = statistics
        self._scan_cache().save()

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
        """Records in `problems` every image file of `images` the datasets could not decode.

        A folder, an unreadable or empty file, an unknown format, a truncated or corrupt file, or an image that the
        decoder cannot convert to `[AGE_GENDER] channels` (e.g. a CMYK JPEG, GIF or BMP for channels = 1) is a
        problem. Any size and any channel count the decoder converts (grey, RGB, RGBA, 16-bit PNG) is accepted:
        `decode` converts the channels and resizes to `spatial_window_size`. Successful decodes are cached by path,
        size and modification time (`ScanCache`), so a second run over unchanged files only reads their metadata.

        Example:

        ```python
        problems = InputProblems("images of [IMAGES]")
        app.check_images(app.image_set(), problems)
        problems.raise_if_any()
        ```
        """
        cache, scan_name, expected = self._scan_cache(), self._scan_name, self._expected()

        def check(subject: str, path: str) -> list:
            found = InputProblems()
            if os.path.isdir(path):
                found.add(path, "is a folder, not an image file", expected, subject)
            elif os.path.exists(path) and not os.access(path, os.R_OK):
                found.add(path, "cannot be read (permission denied)", expected, subject)
            else:
                found.run(path, subject, lambda p: cache.get_or_scan(p, scan_name, self._decode_check), expected)
            return found.items

        # Decoding releases the GIL: a few threads decode in parallel; problems keep the order of the images.
        with concurrent.futures.ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
            for found in pool.map(check, images.subjects, images.paths):
                problems.items.extend(found)

    def _expected(self) -> str:
        return (f"a complete JPEG or PNG image that decodes to {self.channels} channel"
                f"{'s' if self.channels > 1 else ''} ([{APP_SECTION}] channels)")

    @property
    def _scan_name(self) -> str:
        height, width = self.image_size
        return f"age_gender-decode-{self.channels}ch-{height}x{width}-v2"

    def _decode_check(self, path: str) -> dict:
        """Decodes one file as `decode` does: `{"height", "width", "sum", "sum_sq"}` (the per-channel sums of the
        resized image, which `_fit_statistics` adds up without decoding again), or an `InputCheckFailure`."""
        data = Path(path).read_bytes()
        if not data:
            raise InputCheckFailure("is empty (0 bytes)", self._expected())
        try:
            image = tf.io.decode_image(data, channels=self.channels, expand_animations=False)
            shape = image.shape
        except tf.errors.OpError as error:
            reason = error.message.split("}} ")[-1].replace(" [Op:DecodeImage]", "").strip()
            raise InputCheckFailure(
                f"cannot be decoded: it is {describe_image_bytes(data)}; TensorFlow: {reason}", self._expected()
            ) from None
        resized = tf.image.resize(image, self.image_size, antialias=True)
        values = resized.numpy().astype(np.float64).reshape(-1, self.channels)
        return {"height": int(shape[0]), "width": int(shape[1]), "pixels": int(values.shape[0]),
                "sum": values.sum(axis=0).tolist(), "sum_sq": np.square(values).sum(axis=0).tolist()}

    def _scan_cache(self) -> ScanCache:
        """The `ScanCache` of image decodes, `model_dir/.input_scans.json` (saved by `prepare` after the checks)."""
        if self._scans is None:
            self._scans = ScanCache(self.model_dir / SCAN_CACHE_FILE)
        return self._scans

    def training_files(self) -> list[str]:
        """The files the image statistics were fitted on: the Training images used, plus the label CSV when it holds
        labels or lists the images. Valid after `prepare`.

        Example:

        ```python
        app.prepare(fit=True)
        files_fingerprint(app.training_files(), base_dir=app.settings.config_dir)
        ```
        """
        self._check_prepared()
        files = list(self.image_set().select(self.training_subjects(self._subject_split())).paths)
        csv_file = self.image_settings.csv_data_file
        uses_csv = not self.image_settings.path_to_search or any(t.label.startswith("csv:") for t in self.tasks)
        if csv_file and uses_csv:
            files.append(str(Path(csv_file).absolute()))
        return files

    def _load_statistics(self) -> dict:
        path = self.statistics_path
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: it is written by training (sfg_run train -c {self.settings.config_path})"
            )
        statistics = json.loads(path.read_text())
        size = tuple(statistics.get("image_size", ()))
        if statistics.get("channels") != self.channels or size != self.image_size:
            raise ValueError(
                f"{path} holds statistics of {statistics.get('channels')}-channel images of size "
                f"{statistics.get('image_size')}, but the settings ask for {self.channels} channels at "
                f"{list(self.image_size)} ([{APP_SECTION}] channels, [{self.image_section}] spatial_window_size); "
                "delete the file or restore the settings"
            )
        return statistics

    def _fit_statistics(self, paths: list[str]) -> dict:
        """Per-channel mean and std of the resized training images, from the sums `check_images` cached (a file
        changed since is decoded again)."""
        total = np.zeros(self.channels, np.float64)
        total_sq = np.zeros(self.channels, np.float64)
        count = 0
        cache = self._scan_cache()
        for path in paths:
            scan = cache.get_or_scan(path, self._scan_name, self._decode_check)
            total += np.asarray(scan["sum"], np.float64)
            total_sq += np.asarray(scan["sum_sq"], np.float64)
            count += int(scan["pixels"])
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
        return {
            "mean": mean.tolist(),
            "std": std.tolist(),
            "num_images": len(paths),
            "image_size": list(self.image_size),
            "channels": self.channels,
        }

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
        image = tf.io.decode_image(tf.io.read_file(path), channels=self.channels, expand_animations=False)
        image.set_shape([None, None, self.channels])
        image = tf.image.resize(image, self.image_size, antialias=True)
        return tf.ensure_shape(tf.cast(image, tf.float32), [*self.image_size, self.channels])

    def _standardiser(self):
        statistics = self.image_statistics
        mean = tf.constant(statistics["mean"], tf.float32)
        std = tf.constant(np.maximum(statistics["std"], 1e-6), tf.float32)
        whitening = bool(self.settings.network.whitening)

        def standardise(image):
            image = (image - mean) / std
            return tf.image.per_image_standardization(image) if whitening else image

        return standardise

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
        axes = [axis for axis in self.settings.training.random_flipping_axes if axis >= 0]
        scale_range, max_degrees = self.augmentation_ranges()

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

    def training_dataset(self, first_batch: int) -> tf.data.Dataset:
        """Infinite batches `(images, {task: target})` of the training images from batch `first_batch` on.

        The order is `example_order(n, seed, first_batch * batch_size)` and the augmentation of the example at
        global position `i` is seeded with `(seed, i)`, so batch `k` is the same whether the run started at 0 or
        resumed at `k`. Regression targets are float32 `[B, 1]` divided by `target_scale` (NaN = missing), class
        labels int32 `[B]` (-1 = missing).

        Example:

        ```python
        images, targets = next(iter(app.training_dataset(first_batch=0)))
        ```
        """
        standardise, augment = self._standardiser(), self._augmenter()
        images = self.image_set().select(self.training_subjects(self._subject_split()))
        batch_size = self.batch_size
        print(
            f"Training images: {len(images.subjects)} of "
            f"{len(self.subjects_of(self._subject_split(), 'Training'))} in the Training split "
            f"(training_fraction = {self.settings.training.training_fraction:g}); batch size {batch_size}"
        )
        paths = tf.constant(images.paths)
        targets = {name: tf.constant(values) for name, values in self._targets(images).items()}
        seed = tf.constant(self.seed, tf.int64)

        def load(position, index):
            image = augment(standardise(self.decode(tf.gather(paths, index))), tf.stack([seed, position]))
            return image, {name: tf.gather(values, index) for name, values in targets.items()}

        order = example_order(len(images.paths), seed=self.seed, first_position=int(first_batch) * batch_size)
        return (
            order.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(batch_size, drop_remainder=True)
            .prefetch(tf.data.AUTOTUNE)
        )

    def describe_batch(self, batch: int) -> str:
        """The image files of training batch `batch` (the order of `training_dataset`)."""
        images = self.image_set().select(self.training_subjects(self._subject_split()))
        indices = batch_examples(len(images.paths), self.seed, batch, self.batch_size)
        return ", ".join(str(images.paths[index]) for index in indices)

    def validation_dataset(self) -> tf.data.Dataset | None:
        """Repeated batches of the Validation split in a fixed order (no augmentation), or None when it is empty."""
        standardise = self._standardiser()
        subjects = self.subjects_of(self._subject_split(), "Validation")
        if not subjects:
            return None
        images = self.image_set().select(subjects)
        return (
            tf.data.Dataset.from_tensor_slices((images.paths, self._targets(images)))
            .map(lambda path, targets: (standardise(self.decode(path)), targets),
                 num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .repeat()
            .batch(min(self.batch_size, len(subjects)), drop_remainder=True)
            .prefetch(tf.data.AUTOTUNE)
        )

    def prediction_batches(self, paths: list[str], batch_size: int) -> tf.data.Dataset:
        """Standardised images of `paths` in order, in batches of nearly equal size (at most `batch_size`).

        Batches are balanced (e.g. 9 images with batch size 4 give 3, 3, 3) because batch-statistics normalisation
        normalises each prediction batch on its own, and a batch of one image would carry no statistics.

        Example:

        ```python
        batches = app.prediction_batches(app.image_set().paths, 10)
        ```
        """
        standardise = self._standardiser()
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
        self._inferred, self._inferred_header = {}, []
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
        subjects = list(item.context)
        header, columns = ["subject"], []
        for task in self.tasks:
            try:
                names, values = prediction_columns(
                    task, predictions[task.name], len(subjects), self.regression_scale(task)
                )
            except (KeyError, ValueError) as error:
                raise ValueError(
                    f"Predictions of {item.key}, task {task.name!r}: {error!r}; expected {{task: {{'mean', 'std'}}}} "
                    "(regression) or {task: {'probabilities', 'label', 'entropy'}} (classification), one row per "
                    f"image; received tasks {sorted(predictions)}"
                ) from error
            header += names
            columns += values
        self._inferred_header = header
        for row, subject in enumerate(subjects):
            self._inferred[subject] = format_row(subject, header[1:], columns, row)
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
        if not self._inferred:
            return []
        columns = list(provenance.PROVENANCE_COLUMNS)
        rows = [self._inferred[subject] + [self.provenance_columns(subject)[c] for c in columns]
                for subject in sorted(self._inferred)]
        return [write_table(self.output_dir / INFERRED_FILE, self._inferred_header + columns, rows)]

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
        metric_rows = [{"subject": subject} for subject in images.subjects]
        summaries = []
        for task in self.tasks:
            truth, training_truth = images.labels[task.name], training.labels[task.name]
            if task.type == "regression" and "mae" in wanted:
                summaries.append(
                    regression_metrics(task, rows, truth, training_truth, metric_rows, self.unit(task))
                )
            elif task.type == "classification" and "accuracy" in wanted:
                summaries.append(classification_metrics(task, rows, truth, training_truth, metric_rows))
        written = write_metrics_tables(metric_rows, self.evaluation_dir / METRICS_FILE)
        for line in summaries:
            print(line)
        return list(written)
