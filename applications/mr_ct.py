"""`MRCTApplication`: MR to CT synthesis and organ segmentation from NIfTI volumes (the paper's pelvis experiment).

Per subject the config names three input sections: the MR (`[MULTITASK] image`), the CT (label of the regression
task) and the organ label map (label of the segmentation task), matched by file name as in NiftyNet. The network
works on 2-D axial slices:

- MR intensities: Nyul histogram standardisation learned on the training split (`[NETWORK] normalisation`, saved
  to `histogram_ref_file` in `model_dir` and reused, never refitted, afterwards), then zero mean and unit variance
  per volume (`whitening`).
- CT target: `HU / 1024 + 1`; predictions are mapped back to Hounsfield units.
- Training: every axial slice of the training subjects is held in memory; `tf.data` shuffles them, applies one
  random scaling and rotation to MR, CT and labels together (nearest neighbour for labels), takes a random
  `[MR_CT] patch_size` crop and zero-pads it to `padded_size`. Padding and pixels rotated in from outside the slice
  are masked out of the losses (CT target NaN, label -1).
- Inference: whole slices padded to a multiple of 8, Monte-Carlo (or MAP) prediction, stitched back into volumes
  and written as NIfTI with the MR's affine and header: `<task>_<subject><postfix>.nii.gz` (synthetic CT in HU,
  label map) and `<task>_<stat>_<subject><postfix>.nii.gz` (CT standard deviation in HU, label entropy), plus
  `inferred.csv`.
- Evaluation: PSNR and MAE (whole volume, bone, per organ) and Dice per organ against the reference CT and labels,
  next to two trivial references (predicting the mean training CT; predicting background everywhere).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import tensorflow as tf

from applications.base_application import BaseApplication
from sfg_keras.config import ConfigError, KeySpec, SectionSettings, TaskSpec
from sfg_keras.config.schema import section_schema
from sfg_keras.data import (
    HistogramStandardisation,
    crop_slices_from,
    ct_to_target,
    make_or_load_split,
    pad_slices_to,
    padded_size,
    random_crop_pad,
    random_scale_rotate,
    slices_to_volume,
    subsample_training,
    target_to_ct,
    volume_to_slices,
    whiten,
)
from sfg_keras.data.intensity import CT_SCALE
from sfg_keras.evaluation import dice_per_label, evaluate_ct_and_labels, mae, psnr, write_metrics_csv
from sfg_keras.inference import deterministic_predict, mc_predict
from sfg_keras.io import InputSection, NiftiVolume, check_same_geometry, load_nifti, match_subjects, save_nifti

SECTION = "MR_CT"
DEFAULT_LABEL_NAMES = ("background", "bone", "bladder", "prostate", "rectum")
SLICE_MULTIPLE = 8
TRAINING_STATISTICS_FILE = "training_statistics.json"
INFERRED_FILE = "inferred.csv"
METRICS_FILE = "mr_ct_metrics.csv"
# Pixels of one vectorised Monte-Carlo pass (slices x samples x height x width): bounds inference memory.
PIXELS_PER_PASS = 2**20
_PHASE_BY_CHOICE = {"": "Inference", "inference": "Inference", "training": "Training", "validation": "Validation"}


class _SubjectData:
    """The slices of one phase: MR `[N, H, W, 1]` and one target array per task, all float32."""

    def __init__(self, images: np.ndarray, targets: dict[str, np.ndarray], subjects: list[str]):
        self.images = images
        self.targets = targets
        self.subjects = subjects

    def __len__(self) -> int:
        return int(self.images.shape[0])


class MRCTApplication(BaseApplication):
    """MR-to-CT synthesis plus organ segmentation on axial slices of NIfTI volumes.

    Tasks come from `[MULTITASK]`: every regression task predicts a CT-like volume in Hounsfield units (target
    `HU / 1024 + 1`, one channel) and every segmentation task a label map; each task's `labels` entry names the
    input section holding its reference volumes. The paper's setting is `tasks = ct, organs` with
    `labels = CT, LABEL`. Evaluation compares the first regression task with its reference CT and the first
    segmentation task with its reference labels; further tasks add `<task>_mae` / `<task>_dice_mean` columns.

    Args:
        settings: the resolved `Settings` (load them with `extra_sections=MRCTApplication.APP_SECTIONS`; without
            a `[MR_CT]` section the defaults of `APP_SECTIONS` apply).

    Example:

    ```python
    settings = load_settings("configs/demo_mr_ct.ini", action="train", extra_sections=MRCTApplication.APP_SECTIONS)
    MRCTApplication(settings).train()
    MRCTApplication(settings).inference()  # NIfTI files in model_dir/output
    MRCTApplication(settings).evaluation()  # model_dir/evaluation/mr_ct_metrics.csv
    ```
    """

    APP_SECTIONS = {
        SECTION: [
            KeySpec(
                "patch_size", "int_list", (128, 128), "Height and width of the random training patches.", minimum=1
            ),
            KeySpec(
                "padded_size",
                "int_list",
                (136, 136),
                "Size the patches are zero-padded to; the padding is masked out of the losses.",
                minimum=1,
            ),
            KeySpec(
                "label_names",
                "str_list",
                DEFAULT_LABEL_NAMES,
                "Name of each label value 0..C-1 of the segmentation task (metric column names).",
            ),
            KeySpec("bone_label", "int", 1, "Label value of bone (regions of psnr_bone and mae_bone).", minimum=0),
        ]
    }
    name = "mr_ct"

    def __init__(self, settings):
        self._cache: dict[str, object] = {}
        super().__init__(settings)

    # === Settings ===

    @property
    def app_settings(self) -> SectionSettings:
        """The `[MR_CT]` section (its defaults when the settings were loaded without `APP_SECTIONS`)."""
        if SECTION in self.settings.app_sections:
            return self.settings.app_sections[SECTION]
        schema = section_schema(self.APP_SECTIONS[SECTION], SECTION)
        return SectionSettings(SECTION, {key: spec.default for key, spec in schema.items()}, schema=schema)

    def _config_error(self, section: str, key: str, value, expected: str) -> ConfigError:
        return ConfigError(f"{self.settings.config_path}: [{section}] {key} = {value!r}: {expected}")

    def check_settings(self) -> None:
        """Checks the task list, the `[MR_CT]` sizes and label names, and the flipping axes."""
        multitask = self.settings.multitask
        for task in self.tasks:
            if task.type not in ("regression", "segmentation"):
                raise self._config_error(
                    "MULTITASK",
                    "task_types",
                    multitask.task_types,
                    f"the mr_ct application predicts volumes; task {task.name!r} is {task.type}, expected "
                    "regression (CT) or segmentation (labels)",
                )
            if task.label not in self.settings.inputs:
                raise self._config_error(
                    "MULTITASK",
                    "labels",
                    multitask.labels,
                    f"task {task.name!r} takes its reference from {task.label!r}; expected the name of an input "
                    f"section holding NIfTI volumes ({', '.join(self.settings.inputs)})",
                )
            if task.type == "regression" and int(task.num_classes) != 1:
                raise self._config_error(
                    "MULTITASK",
                    "num_classes",
                    multitask.num_classes,
                    f"regression task {task.name!r} predicts one CT channel; expected num_classes 1",
                )
        app = self.app_settings
        for key in ("patch_size", "padded_size"):
            if len(app[key]) != 2:
                raise self._config_error(SECTION, key, app[key], "expected two sizes: height, width")
        if any(p < c for p, c in zip(app.padded_size, app.patch_size)):
            raise self._config_error(
                SECTION, "padded_size", app.padded_size, f"expected at least patch_size {tuple(app.patch_size)}"
            )
        segmentation = self.segmentation_tasks
        if segmentation:
            classes = int(segmentation[0].num_classes)
            if len(app.label_names) != classes:
                raise self._config_error(
                    SECTION,
                    "label_names",
                    app.label_names,
                    f"expected {classes} names, one per class of task {segmentation[0].name!r} (num_classes "
                    f"{classes}), in label order starting with the background",
                )
            if app.bone_label >= classes:
                raise self._config_error(
                    SECTION, "bone_label", app.bone_label, f"expected a label value in 0..{classes - 1}"
                )
        self._augmentation_ranges()
        flips = [axis for axis in self.settings.training.random_flipping_axes if axis != -1]
        if any(axis not in (0, 1) for axis in flips):
            raise self._config_error(
                "TRAINING",
                "random_flipping_axes",
                self.settings.training.random_flipping_axes,
                "axial slices can be flipped along axis 0 (x) or 1 (y); expected -1, 0 or 1",
            )

    @property
    def regression_tasks(self) -> list[TaskSpec]:
        return [task for task in self.tasks if task.type == "regression"]

    @property
    def segmentation_tasks(self) -> list[TaskSpec]:
        return [task for task in self.tasks if task.type == "segmentation"]

    @property
    def patch_size(self) -> tuple[int, int]:
        return tuple(int(v) for v in self.app_settings.patch_size)

    @property
    def padded_patch_size(self) -> tuple[int, int]:
        return tuple(int(v) for v in self.app_settings.padded_size)

    def regression_scale(self, task: TaskSpec) -> float:
        """CT targets are `HU / 1024 + 1`: errors are reported in Hounsfield units."""
        return CT_SCALE if task.type == "regression" else 1.0

    def input_shape(self) -> tuple[int, ...]:
        """Training patches: `(*padded_size, 1)`."""
        return (*self.padded_patch_size, 1)

    def export_input_shape(self) -> tuple[int | None, ...]:
        """Whole slices of any size (SFG-HighResNet is fully convolutional): `(None, None, 1)`."""
        return (None, None, 1)

    # === Subjects, split and normalisation ===

    def _input_section(self, name: str) -> InputSection:
        section = self.settings.inputs[name]
        return InputSection(
            name=name,
            path_to_search=list(section.path_to_search),
            filename_contains=list(section.filename_contains),
            filename_not_contains=list(section.filename_not_contains),
            filename_removefromid=section.filename_removefromid or None,
            csv_file=section.csv_file or None,
        )

    @property
    def image_section(self) -> str:
        return self.settings.multitask.image

    @property
    def reference_sections(self) -> list[str]:
        """The input sections holding the tasks' references, in task order without repeats."""
        return list(dict.fromkeys(task.label for task in self.tasks))

    def match_files(self, with_references: bool = True) -> list[dict[str, str | None]]:
        """`match_subjects` over the MR section and (optionally) the reference sections; every one is required.

        Raises:
            FileNotFoundError, ValueError: from `sfg_keras.io` (missing folder, subject missing a section, ...).
        """
        names = [self.image_section] + (self.reference_sections if with_references else [])
        names = list(dict.fromkeys(names))
        return match_subjects([self._input_section(name) for name in names], base_dir=self.settings.config_dir)

    def dataset_split(self, subjects: list[str]) -> dict[str, str]:
        """`{subject: phase}` from `[SYSTEM] dataset_split_file` (written on the first call)."""
        training = self.settings.training
        validation, inference = training.exclude_fraction_for_validation, training.exclude_fraction_for_inference
        if validation + inference >= 1.0:
            raise self._config_error(
                "TRAINING",
                "exclude_fraction_for_validation",
                validation,
                f"with exclude_fraction_for_inference = {inference} nothing is left for training; expected the "
                "two fractions to sum to less than 1",
            )
        return make_or_load_split(
            subjects,
            self.settings.system.dataset_split_file,
            fractions=(1.0 - validation - inference, validation, inference),
            seed=int(self.settings.system.seed),
        )

    def training_subjects(self, split: dict[str, str]) -> list[str]:
        """The Training subjects used (a seeded `training_fraction` of the Training split)."""
        return subsample_training(
            split, float(self.settings.training.training_fraction), seed=int(self.settings.system.seed)
        )

    @property
    def histogram_file(self) -> Path:
        return Path(self.settings.network.histogram_ref_file)

    def _fit_or_load_standardiser(self, training_mr: dict[str, np.ndarray]) -> HistogramStandardisation | None:
        if not self.settings.network.normalisation:
            return None
        if self.histogram_file.is_file():
            print(f"Histogram standardisation: using {self.histogram_file}")
            return HistogramStandardisation.load(self.histogram_file)
        network = self.settings.network
        standardiser = HistogramStandardisation(cutoff=network.cutoff, landmarks=network.norm_type)
        standardiser.fit(training_mr[subject] for subject in sorted(training_mr))
        standardiser.save(self.histogram_file)
        print(f"Histogram standardisation: learned on {len(training_mr)} training subjects -> {self.histogram_file}")
        return standardiser

    def saved_standardiser(self) -> HistogramStandardisation | None:
        """The histogram standardisation saved at training time (never refitted), or None when it is off."""
        if not self.settings.network.normalisation:
            return None
        if not self.histogram_file.is_file():
            raise FileNotFoundError(
                f"[NETWORK] normalisation is on but the histogram file {self.histogram_file} does not exist. It is "
                f"learned on the training split during training: run sfg_run train -c {self.settings.config_path}."
            )
        return HistogramStandardisation.load(self.histogram_file)

    def normalise_mr(self, mr: np.ndarray, standardiser: HistogramStandardisation | None) -> np.ndarray:
        """Histogram standardisation (when given) then whitening (when `[NETWORK] whitening`), float32."""
        data = np.asarray(mr, dtype=np.float32)
        if standardiser is not None:
            data = standardiser.transform(data)
        if self.settings.network.whitening:
            data = whiten(data)
        return data.astype(np.float32)

    def _load_subject(self, row: dict[str, str | None]) -> dict[str, NiftiVolume]:
        subject = str(row["subject"])
        volumes = {name: load_nifti(row[name]) for name in [self.image_section, *self.reference_sections]}
        check_same_geometry(volumes, subject)
        for task in self.segmentation_tasks:
            labels = volumes[task.label].data
            classes = int(task.num_classes)
            bad = np.unique(labels[(labels != np.round(labels)) | (labels < -1) | (labels >= classes)])
            if bad.size:
                raise ValueError(
                    f"Subject '{subject}': [{task.label}] ({volumes[task.label].path}) holds values "
                    f"{[int(v) if float(v).is_integer() else float(v) for v in bad[:10]]} that are not labels of "
                    f"task {task.name!r}; expected integers in "
                    f"0..{classes - 1} (-1 = unlabelled)."
                )
        return volumes

    def _task_target(self, task: TaskSpec, volume: NiftiVolume) -> np.ndarray:
        if task.type == "regression":
            return ct_to_target(volume.data.astype(np.float32)).astype(np.float32)
        return np.round(volume.data).astype(np.float32)

    def _prepare(self) -> dict[str, object]:
        """Loads the training and validation subjects once: split, histogram model, statistics and slices."""
        if "prepared" in self._cache:
            return self._cache["prepared"]
        rows = self.match_files(with_references=True)
        split = self.dataset_split([str(row["subject"]) for row in rows])
        used_training = self.training_subjects(split)
        validation = sorted(s for s, phase in split.items() if phase == "Validation")
        if not used_training:
            raise ValueError(
                f"No training subject in {self.settings.system.dataset_split_file}: expected at least one "
                "'Training' row (lower [TRAINING] exclude_fraction_for_validation / exclude_fraction_for_inference)."
            )
        by_subject = {str(row["subject"]): row for row in rows}
        volumes = {subject: self._load_subject(by_subject[subject]) for subject in [*used_training, *validation]}
        standardiser = self._fit_or_load_standardiser(
            {subject: volumes[subject][self.image_section].data for subject in used_training}
        )
        self._write_training_statistics(used_training, volumes)
        prepared = {
            "training": self._slices(used_training, volumes, standardiser),
            "validation": self._slices(validation, volumes, standardiser) if validation else None,
        }
        print(
            f"mr_ct: {len(used_training)} training subjects ({len(prepared['training'])} slices), "
            f"{len(validation)} validation subjects; split in {self.settings.system.dataset_split_file}"
        )
        self._cache["prepared"] = prepared
        return prepared

    def _slices(
        self, subjects: list[str], volumes: dict[str, dict[str, NiftiVolume]], standardiser
    ) -> _SubjectData:
        images, targets = [], {task.name: [] for task in self.tasks}
        for subject in subjects:
            subject_volumes = volumes[subject]
            mr = self.normalise_mr(subject_volumes[self.image_section].data, standardiser)
            images.append(volume_to_slices(mr)[..., None])
            for task in self.tasks:
                targets[task.name].append(volume_to_slices(self._task_target(task, subject_volumes[task.label])))
        sizes = {image.shape[1:3] for image in images}
        if len(sizes) > 1:
            # Subjects differ in slice size: bring every slice to the largest one (padding is masked out).
            height, width = (max(size[i] for size in sizes) for i in range(2))
            images = [pad_slices_to(image, (height, width)) for image in images]
            for task in self.tasks:
                fill = np.nan if task.type == "regression" else -1.0
                targets[task.name] = [pad_slices_to(t, (height, width), fill) for t in targets[task.name]]
        return _SubjectData(
            np.concatenate(images).astype(np.float32),
            {name: np.concatenate(parts)[..., None].astype(np.float32) for name, parts in targets.items()},
            list(subjects),
        )

    def _write_training_statistics(self, subjects: list[str], volumes: dict[str, dict[str, NiftiVolume]]) -> Path:
        statistics: dict[str, object] = {"training_subjects": list(subjects)}
        for task in self.regression_tasks:
            total, count = 0.0, 0
            for subject in subjects:
                values = volumes[subject][task.label].data
                finite = np.isfinite(values)
                total += float(values[finite].sum(dtype=np.float64))
                count += int(finite.sum())
            statistics[f"{task.name}_mean_hu"] = total / max(count, 1)
        for task in self.segmentation_tasks:
            counts = np.zeros(int(task.num_classes), dtype=np.int64)
            for subject in subjects:
                labels = np.round(volumes[subject][task.label].data).astype(np.int64)
                counts += np.bincount(labels[labels >= 0].ravel(), minlength=counts.size)[: counts.size]
            statistics[f"{task.name}_label_counts"] = counts.tolist()
        path = self.model_dir / TRAINING_STATISTICS_FILE
        self.model_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(statistics, indent=2), encoding="utf-8")
        return path

    def training_statistics(self) -> dict:
        """The statistics written at training time (`model_dir/training_statistics.json`)."""
        path = self.model_dir / TRAINING_STATISTICS_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} does not exist: it is written when training starts (sfg_run train -c "
                f"{self.settings.config_path})."
            )
        return json.loads(path.read_text(encoding="utf-8"))

    # === tf.data ===

    def _augmentation_ranges(self) -> tuple[float, float]:
        training = self.settings.training
        scale = max((abs(v) for v in training.scaling_percentage), default=0.0) / 100.0
        degrees = max((abs(v) for v in training.rotation_angle), default=0.0)
        if scale >= 1.0:
            raise self._config_error(
                "TRAINING", "scaling_percentage", training.scaling_percentage, "expected values within (-100, 100)"
            )
        return scale, degrees

    def _augment(self, index, image, targets, seed):
        """One training element: flips, scaling and rotation, random crop and padding, masking."""
        seeds = tf.random.experimental.stateless_split(tf.stack([tf.cast(seed, tf.int64), index]), 3)
        regression = {task.name for task in self.regression_tasks}
        entries = {"image": image, "valid": tf.ones_like(image)}
        entries.update({f"task_{name}": target for name, target in targets.items()})
        flips = sorted({axis for axis in self.settings.training.random_flipping_axes if axis in (0, 1)})
        if flips:
            draws = tf.random.stateless_uniform([len(flips)], seed=seeds[2])
            for position, axis in enumerate(flips):
                flip = draws[position] < 0.5
                entries = {
                    key: tf.cond(flip, lambda v=value, a=axis: tf.reverse(v, [a]), lambda v=value: v)
                    for key, value in entries.items()
                }
        scale, degrees = self._augmentation_ranges()
        if scale > 0 or degrees > 0:
            # Rotate the MR relative to its darkest value, so that pixels entering from outside look like air.
            background = tf.reduce_min(entries["image"])
            entries["image"] = entries["image"] - background
            nearest = {"valid"} | {f"task_{task.name}" for task in self.segmentation_tasks}
            entries = random_scale_rotate(entries, seeds[0], scale_range=scale, max_degrees=degrees, nearest=nearest)
            entries["image"] = entries["image"] + background
        entries, mask = random_crop_pad(entries, seeds[1], crop=self.patch_size, pad_to=self.padded_patch_size)
        keep = (mask > 0.5) & (entries["valid"] > 0.5)
        outputs = {}
        for name in targets:
            value = entries[f"task_{name}"]
            if name in regression:
                outputs[name] = tf.where(keep, value, tf.fill(tf.shape(value), np.float32(np.nan)))
            else:
                outputs[name] = tf.cast(tf.where(keep, value, -1.0), tf.int32)[..., 0]
        return entries["image"], outputs

    def training_dataset(self, seed: int) -> tf.data.Dataset:
        """Infinite batches of augmented `[MR_CT] padded_size` patches: `(mr [B, H, W, 1], {task: target})`.

        Regression targets are `[B, H, W, 1]` float32 (NaN = masked), segmentation targets `[B, H, W]` int32
        (-1 = masked).
        """
        data: _SubjectData = self._prepare()["training"]
        batch_size = int(self.settings.network.batch_size)
        seed_tensor = tf.constant(int(seed), tf.int64)
        dataset = tf.data.Dataset.from_tensor_slices((data.images, data.targets))
        dataset = dataset.shuffle(len(data), seed=int(seed), reshuffle_each_iteration=True).repeat()
        dataset = dataset.enumerate().map(
            lambda index, element: self._augment(index, element[0], element[1], seed_tensor),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    def validation_dataset(self) -> tf.data.Dataset | None:
        """Validation slices, centre-cropped to `patch_size` and padded to `padded_size` (masked), batched,
        repeated; None without validation subjects."""
        data: _SubjectData | None = self._prepare()["validation"]
        if data is None:
            return None
        images = self._centre_patch(data.images, 0.0)
        targets = {}
        for task in self.tasks:
            fill = np.nan if task.type == "regression" else -1.0
            target = self._centre_patch(data.targets[task.name], fill)
            targets[task.name] = target if task.type == "regression" else target[..., 0].astype(np.int32)
        dataset = tf.data.Dataset.from_tensor_slices((images, targets))
        dataset = dataset.shuffle(len(data), seed=int(self.settings.system.seed), reshuffle_each_iteration=False)
        return dataset.batch(int(self.settings.network.batch_size)).repeat().prefetch(tf.data.AUTOTUNE)

    def _centre_patch(self, slices: np.ndarray, fill: float) -> np.ndarray:
        height, width = slices.shape[1:3]
        patch = self.patch_size
        grown = pad_slices_to(slices, (max(height, patch[0]), max(width, patch[1])), fill)
        cropped = crop_slices_from(grown, patch)
        return pad_slices_to(cropped, self.padded_patch_size, fill).astype(np.float32)

    # === Inference ===

    def subjects_to_infer(self) -> list[dict[str, str | None]]:
        """The MR file rows of `[INFERENCE] dataset_to_infer` ("" = the Inference split)."""
        rows = self.match_files(with_references=False)
        choice = self.settings.inference.dataset_to_infer
        if choice == "all":
            return rows
        split = self.dataset_split([str(row["subject"]) for row in rows])
        phase = _PHASE_BY_CHOICE[choice]
        chosen = [row for row in rows if split[str(row["subject"])] == phase]
        if not chosen:
            raise ValueError(
                f"[INFERENCE] dataset_to_infer = {choice!r}: the split {self.settings.system.dataset_split_file} has "
                f"no '{phase}' subject. Expected at least one, or dataset_to_infer = all."
            )
        return chosen

    def output_name(self, task: str, subject: str, statistic: str = "") -> str:
        """`<task>[_<statistic>]_<subject><postfix>.nii.gz`."""
        key = f"{task}_{statistic}" if statistic else task
        return f"{key}_{subject}{self.settings.inference.output_postfix}.nii.gz"

    def _samples_per_pass(self, num_slices: int, size: tuple[int, int]) -> int:
        """Monte-Carlo samples stacked in one forward pass: at most `PIXELS_PER_PASS` pixels, in equal chunks."""
        num_samples = int(self.settings.inference.num_samples)
        most = max(1, PIXELS_PER_PASS // max(1, num_slices * size[0] * size[1]))
        chunks = -(-num_samples // most)
        return -(-num_samples // chunks)

    def predict_volume(self, model, mr: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
        """Predicts every axial slice of a normalised MR volume `[X, Y, Z]`.

        Returns:
            `{task: {statistic: volume [X, Y, Z]}}`: regression `mean` and (MC) `std` in the network's target
            unit; segmentation `label` and `entropy`.
        """
        inference = self.settings.inference
        slices = volume_to_slices(mr)
        size = padded_size(slices.shape[1:3], SLICE_MULTIPLE)
        batch = pad_slices_to(slices, size)[..., None].astype(np.float32)
        batch_size = int(inference.batch_size)
        if inference.inference_mode == "mc":
            raw = mc_predict(
                model,
                batch,
                num_samples=int(inference.num_samples),
                batch_size=batch_size,
                samples_per_pass=self._samples_per_pass(min(batch_size, len(batch)), size),
            )
        else:
            raw = deterministic_predict(model, batch, inference.inference_mode, batch_size=batch_size)
        original = slices.shape[1:3]
        results = {}
        for task in self.tasks:
            values = raw[task.name]
            if task.type == "regression":
                mean = values["mean"] if "mean" in values else values["prediction"]
                result = {"mean": mean[..., 0]}
                if "std" in values:
                    result["std"] = values["std"][..., 0]
            else:
                probabilities = values["probabilities"]
                label = values["mode"] if "mode" in values else values["label"]
                entropy = values.get("entropy")
                if entropy is None:
                    entropy = -np.sum(probabilities * np.log(np.maximum(probabilities, 1e-12)), axis=-1)
                result = {"label": label, "entropy": entropy}
            results[task.name] = {
                key: slices_to_volume(crop_slices_from(np.asarray(value), original)) for key, value in result.items()
            }
        return results

    def infer(self, model) -> list[Path]:
        """Writes the NIfTI predictions of every subject to infer and `inferred.csv`; returns the files written."""
        standardiser = self.saved_standardiser()
        rows = self.subjects_to_infer()
        out_dir = self.output_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        table: list[dict[str, str]] = []
        for number, row in enumerate(rows, start=1):
            subject = str(row["subject"])
            mr = load_nifti(row[self.image_section])
            if mr.data.ndim != 3:
                raise ValueError(
                    f"Subject '{subject}': [{self.image_section}] {mr.path} has shape {mr.data.shape}; expected a "
                    "3-D volume [X, Y, Z]."
                )
            predictions = self.predict_volume(model, self.normalise_mr(mr.data, standardiser))
            entry = {"subject": subject}
            for task in self.tasks:
                values = predictions[task.name]
                if task.type == "regression":
                    outputs = [("", target_to_ct(values["mean"]), np.float32)]
                    if "std" in values:
                        outputs.append(("std", values["std"] * CT_SCALE, np.float32))
                else:
                    outputs = [("", values["label"], np.uint8), ("entropy", values["entropy"], np.float32)]
                for statistic, data, dtype in outputs:
                    path = out_dir / self.output_name(task.name, subject, statistic)
                    save_nifti(path, np.asarray(data).astype(dtype), reference=mr, dtype=dtype)
                    written.append(path)
                    entry[f"{task.name}_{statistic}" if statistic else task.name] = str(path)
            table.append(entry)
            print(f"[{number}/{len(rows)}] {subject}: wrote {len(entry) - 1} volumes")
        columns = list(dict.fromkeys(key for entry in table for key in entry))
        csv_path = out_dir / INFERRED_FILE
        with open(csv_path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(table)
        written.append(csv_path)
        return written

    # === Evaluation ===

    def read_inferred(self) -> list[dict[str, str]]:
        """Rows of `save_seg_dir/inferred.csv`."""
        path = self.output_dir / INFERRED_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} does not exist: run inference first (sfg_run inference -c {self.settings.config_path})."
            )
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        needed = [task.name for task in self.tasks]
        for number, row in enumerate(rows, start=2):
            missing = [key for key in needed if not row.get(key)]
            if missing:
                raise ValueError(
                    f"{path}, line {number}: subject {row.get('subject')!r} has no {missing} column value; expected "
                    f"the columns subject, {', '.join(needed)} written by inference."
                )
        return rows

    def evaluate_subject(self, subject: str, predicted: dict[str, str], references: dict[str, str], statistics: dict):
        """Metrics of one subject (see `evaluate`)."""
        ref_volumes = {name: load_nifti(path) for name, path in references.items()}
        check_same_geometry(ref_volumes, subject)
        row: dict[str, object] = {"subject": subject}
        regression, segmentation = self.regression_tasks, self.segmentation_tasks
        app = self.app_settings
        label_names = dict(enumerate(app.label_names))

        def prediction(task: TaskSpec) -> np.ndarray:
            volume = load_nifti(predicted[task.name])
            reference = ref_volumes[task.label]
            if volume.spatial_shape != reference.spatial_shape:
                raise ValueError(
                    f"Subject '{subject}': prediction {volume.path} has shape {volume.spatial_shape} but the "
                    f"reference [{task.label}] {reference.path} has {reference.spatial_shape}."
                )
            return volume.data

        ct_task = regression[0] if regression else None
        organ_task = segmentation[0] if segmentation else None
        if ct_task is not None and organ_task is not None:
            labels_ref = np.round(ref_volumes[organ_task.label].data).astype(np.int64)
            row.update(
                evaluate_ct_and_labels(
                    prediction(ct_task),
                    ref_volumes[ct_task.label].data,
                    np.round(prediction(organ_task)).astype(np.int64),
                    labels_ref,
                    label_names,
                    bone_label=int(app.bone_label),
                )
            )
        elif ct_task is not None:
            ct_ref = ref_volumes[ct_task.label].data
            ct_pred = prediction(ct_task)
            data_range = float(ct_ref.max() - ct_ref.min()) or 1.0
            row.update({"psnr": psnr(ct_pred, ct_ref, data_range), "mae": mae(ct_pred, ct_ref)})
        elif organ_task is not None:
            labels_ref = np.round(ref_volumes[organ_task.label].data).astype(np.int64)
            foreground = [label for label in label_names if label != 0]
            dice = dice_per_label(np.round(prediction(organ_task)), labels_ref, foreground)
            row.update({f"dice_{label_names[label]}": value for label, value in dice.items()})
            row["dice_mean"] = float(np.mean(list(dice.values())))
        if ct_task is not None:
            mean_hu = float(statistics[f"{ct_task.name}_mean_hu"])
            ct_ref = ref_volumes[ct_task.label].data
            row["reference_mean_ct_mae"] = mae(np.full(ct_ref.shape, mean_hu), ct_ref)
        if organ_task is not None:
            labels_ref = np.round(ref_volumes[organ_task.label].data).astype(np.int64)
            foreground = [label for label in label_names if label != 0]
            background = dice_per_label(np.zeros_like(labels_ref), labels_ref, foreground)
            row["reference_background_dice_mean"] = float(np.mean(list(background.values())))
        for task in regression[1:]:
            row[f"{task.name}_mae"] = mae(prediction(task), ref_volumes[task.label].data)
        for task in segmentation[1:]:
            labels_ref = np.round(ref_volumes[task.label].data).astype(np.int64)
            dice = dice_per_label(np.round(prediction(task)), labels_ref, range(1, int(task.num_classes)))
            row[f"{task.name}_dice_mean"] = float(np.mean(list(dice.values())))
        return row

    def evaluate(self) -> list[Path]:
        """Per-subject metrics of the inferred volumes against the references, and their summary.

        Columns (first regression task = CT, first segmentation task = labels): `psnr`, `mae`, `psnr_bone`,
        `mae_bone`, `mae_<organ>`, `dice_<organ>`, `dice_mean` (see `evaluate_ct_and_labels`), and the trivial
        references `reference_mean_ct_mae` (predicting the mean training CT everywhere) and
        `reference_background_dice_mean` (predicting background everywhere). `[EVALUATION] evaluations`, when
        given, keeps only the listed columns.

        Returns:
            `[save_csv_dir/mr_ct_metrics.csv, save_csv_dir/mr_ct_metrics_summary.csv]`.
        """
        inferred = self.read_inferred()
        statistics = self.training_statistics()
        references = {
            str(row["subject"]): row
            for row in match_subjects(
                [self._input_section(name) for name in self.reference_sections], base_dir=self.settings.config_dir
            )
        }
        rows = []
        for entry in inferred:
            subject = entry["subject"]
            if subject not in references:
                raise ValueError(
                    f"Subject '{subject}' of {self.output_dir / INFERRED_FILE} has no reference in "
                    f"{', '.join(f'[{name}]' for name in self.reference_sections)}; expected every inferred "
                    "subject to have its reference volumes."
                )
            reference_paths = {name: references[subject][name] for name in self.reference_sections}
            rows.append(self.evaluate_subject(subject, entry, reference_paths, statistics))
        rows = self._select_metrics(rows)
        paths = write_metrics_csv(rows, self.evaluation_dir / METRICS_FILE)
        self._print_summary(rows)
        return list(paths)

    def _select_metrics(self, rows: list[dict]) -> list[dict]:
        wanted = list(self.settings.evaluation.evaluations)
        if not wanted:
            return rows
        available = list(dict.fromkeys(key for row in rows for key in row if key != "subject"))
        unknown = [name for name in wanted if name not in available]
        if unknown:
            raise self._config_error(
                "EVALUATION",
                "evaluations",
                self.settings.evaluation.evaluations,
                f"unknown metrics {unknown}; expected names among: {', '.join(available)}",
            )
        return [{"subject": row["subject"], **{k: row[k] for k in wanted if k in row}} for row in rows]

    @staticmethod
    def _mean(rows: list[dict], key: str) -> float:
        values = [float(row[key]) for row in rows if key in row and not math.isnan(float(row[key]))]
        return float(np.mean(values)) if values else math.nan

    def _print_summary(self, rows: list[dict]) -> None:
        lines = [f"mr_ct evaluation of {len(rows)} subjects (mean over subjects)", f"{'metric':<22}{'model':>12}"
                 f"{'reference':>12}"]
        pairs = [
            ("CT MAE (HU)", "mae", "reference_mean_ct_mae"),
            ("CT MAE bone (HU)", "mae_bone", None),
            ("CT PSNR (dB)", "psnr", None),
            ("Dice mean", "dice_mean", "reference_background_dice_mean"),
        ]
        for title, key, reference in pairs:
            if not any(key in row for row in rows):
                continue
            ref_text = f"{self._mean(rows, reference):>12.4g}" if reference else f"{'':>12}"
            lines.append(f"{title:<22}{self._mean(rows, key):>12.4g}{ref_text}")
        print("\n".join(lines))
