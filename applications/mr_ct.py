"""`MRCTApplication`: MR to CT synthesis and organ segmentation from NIfTI volumes (the paper's pelvis experiment).

Per subject the config names three input sections: the MR (`[MULTITASK] image`), the CT (label of the regression
task) and the organ label map (label of the segmentation task), matched by file name as in NiftyNet. The network
works on 2-D axial slices:

- MR intensities: Nyul histogram standardisation learned on the training subjects (`[NETWORK] normalisation`,
  saved to `histogram_ref_file` when training starts from scratch and loaded, never refitted, afterwards), then zero
  mean and unit variance per volume (`whitening`).
- CT target: `HU / 1024 + 1`; predictions are mapped back to Hounsfield units.
- Training: every axial slice of the training subjects is held in memory; the order is
  `sfg_keras.data.example_order` and each slice gets one random flip, scaling and rotation seeded by
  `([SYSTEM] seed, position)` (nearest neighbour for labels), a random `[MR_CT] patch_size` crop and zero padding to
  `padded_size`, so batch `k` depends only on the seed and `k`. Padding and pixels rotated in from outside the slice
  are masked out of the losses (CT target NaN, label -1).
- Inference: the subjects of `[INFERENCE] dataset_to_infer` among those found (the input sections' folders, or
  `[INFERENCE] input_dir`), checked against the run record (`sfg_keras.engine.provenance`: a subject the model was
  trained on is refused, the split file is never written); whole slices padded to a multiple of 8 (one
  `InferenceInput` per subject), stitched back into volumes and written as NIfTI with the MR's affine and header:
  `<task>_<subject><postfix>.nii.gz` (synthetic CT in HU, label map) and `<task>_<stat>_<subject><postfix>.nii.gz`
  (CT standard deviation in HU with `inference_mode = mc`, label entropy), plus `inferred.csv` (file names relative
  to its folder; the subject's phase, `trained_on` and the SHA-256 of its MR).
- Evaluation (`mr_ct_evaluation`): the references checked up front, then PSNR and MAE (whole volume, bone, per organ)
  and Dice per organ against the reference CT and labels, next to two trivial references.

The volume and slice handling is in `mr_ct_data`, the evaluation in `mr_ct_evaluation`.
"""

from __future__ import annotations

import csv
import functools
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from sfg_keras.config import KeySpec, TaskSpec
from sfg_keras.data import (
    HistogramStandardisation,
    batch_examples,
    example_order,
    random_crop_pad,
    random_scale_rotate,
    target_to_ct,
    whiten,
)
from sfg_keras.data.intensity import CT_SCALE
from sfg_keras.engine.application import BaseApplication, InferenceInput
from sfg_keras.io import (
    InputSection,
    atomic_path,
    atomic_write_json,
    match_subjects,
    save_nifti,
)
from sfg_keras.io.input_checks import SCAN_CACHE_FILE, ScanCache

from . import mr_ct_evaluation
from .mr_ct_checks import FileRole, check_subjects, section_roles
from .mr_ct_data import (
    SliceData,
    SubjectContext,
    centre_patch,
    fill_value,
    inference_slices,
    load_subject,
    load_volume,
    samples_per_pass,
    slices_back_to_volume,
    stack_slices,
    training_statistics,
)
from .mr_ct_evaluation import INFERRED_FILE, METRICS_FILE

if TYPE_CHECKING:
    from sfg_keras.serving import VolumePreprocessor

__all__ = ["INFERRED_FILE", "METRICS_FILE", "MRCTApplication", "SubjectContext", "TRAINING_STATISTICS_FILE"]

SECTION = "MR_CT"
DEFAULT_LABEL_NAMES = ("background", "bone", "bladder", "prostate", "rectum")
TRAINING_STATISTICS_FILE = "training_statistics.json"
#: Default range of synthetic CT (`[INFERENCE] output_bounds`): a 12-bit CT, air at -1024 HU.
CT_RANGE_HU = (-1024.0, 3071.0)

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
    app = MRCTApplication(settings)
    app.prepare(fit=True)  # histogram_ref_file.txt, training_statistics.json
    images, targets = next(iter(app.training_dataset(first_batch=0)))
    ```
    """

    APP_SECTIONS = {
        SECTION: [
            KeySpec(
                "patch_size", "int_list", (128, 128), "Height and width of the random training patches.", minimum=1
            ),
            KeySpec(
                "padded_size", "int_list", (136, 136),
                "Size the patches are zero-padded to; the padding is masked out of the losses.", minimum=1,
            ),
            KeySpec(
                "label_names", "str_list", DEFAULT_LABEL_NAMES,
                "Name of each label value 0..C-1 of the segmentation task (metric column names).",
            ),
            KeySpec(
                "bone_label", "int", 1,
                "Label value of bone (regions of psnr_bone and mae_bone); must be the label named 'bone' when "
                "label_names has one.", minimum=1,
            ),
            KeySpec(
                "check_hounsfield", "bool", True,
                "Refuse CT references whose values cannot be Hounsfield units (no voxel below -900 HU, e.g. HU + 1024 "
                "stored unsigned); False accepts them.",
            ),
        ]
    }
    APP_SECTION = SECTION
    name = "mr_ct"

    def __init__(self, settings):
        self.standardiser: HistogramStandardisation | None = None
        self.statistics: dict | None = None
        self.training_data: SliceData | None = None
        self.validation_data: SliceData | None = None
        self._rows_to_infer: list[dict[str, str | None]] | None = None
        self._rows: dict[str, dict] | None = None  # the matched files of every subject (training)
        self._training_files: list[str] | None = None
        self._inferred: dict[str, dict[str, str]] = {}
        super().__init__(settings)

    # === Settings ===

    def check_settings(self) -> None:
        """Checks the task list, the `[MR_CT]` sizes and label names, the augmentation and the flipping axes."""
        self._check_tasks()
        self._check_app_section()
        self.augmentation_ranges()
        flips = [axis for axis in self.settings.training.random_flipping_axes if axis != -1]
        if any(axis not in (0, 1) for axis in flips):
            raise self.config_error(
                "TRAINING", "random_flipping_axes", self.settings.training.random_flipping_axes,
                "axial slices can be flipped along axis 0 (x) or 1 (y); expected -1, 0 or 1",
            )

    def _check_tasks(self) -> None:
        multitask = self.settings.multitask
        for task in self.tasks:
            if task.type not in ("regression", "segmentation"):
                raise self.config_error(
                    "MULTITASK", "task_types", multitask.task_types,
                    f"the mr_ct application predicts volumes; task {task.name!r} is {task.type}, expected "
                    "regression (CT) or segmentation (labels)",
                )
            if task.label not in self.settings.inputs:
                raise self.config_error(
                    "MULTITASK", "labels", multitask.labels,
                    f"task {task.name!r} takes its reference from {task.label!r}; expected the name of an input "
                    f"section holding NIfTI volumes ({', '.join(self.settings.inputs)})",
                )
            if task.type == "regression" and int(task.num_classes) != 1:
                raise self.config_error(
                    "MULTITASK", "num_classes", multitask.num_classes,
                    f"regression task {task.name!r} predicts one CT channel; expected num_classes 1",
                )

    def _check_app_section(self) -> None:
        app = self.app_settings
        for key in ("patch_size", "padded_size"):
            if len(app[key]) != 2:
                raise self.config_error(SECTION, key, app[key], "expected two sizes: height, width")
        if any(p < c for p, c in zip(app.padded_size, app.patch_size)):
            raise self.config_error(
                SECTION, "padded_size", app.padded_size, f"expected at least patch_size {tuple(app.patch_size)}"
            )
        segmentation = self.segmentation_tasks
        if segmentation:
            classes = int(segmentation[0].num_classes)
            if len(app.label_names) != classes:
                raise self.config_error(
                    SECTION, "label_names", app.label_names,
                    f"expected {classes} names, one per class of task {segmentation[0].name!r} (num_classes "
                    f"{classes}), in label order starting with the background",
                )
            if app.bone_label >= classes:
                raise self.config_error(
                    SECTION, "bone_label", app.bone_label, f"expected a label value in 1..{classes - 1}"
                )
            names = [str(name).strip().lower() for name in app.label_names]
            if "mean" in names[1:]:
                raise self.config_error(
                    SECTION, "label_names", app.label_names,
                    "a label named 'mean' would write its Dice over dice_mean, the mean Dice; expected another name",
                )
            if "bone" in names and names.index("bone") != app.bone_label:
                raise self.config_error(
                    SECTION, "bone_label", app.bone_label,
                    f"label_names = {', '.join(app.label_names)} names label {names.index('bone')} 'bone', but "
                    f"bone_label {app.bone_label} is {app.label_names[app.bone_label]!r}: psnr_bone and mae_bone would "
                    f"describe another tissue; expected bone_label = {names.index('bone')}",
                )

    @property
    def regression_tasks(self) -> list[TaskSpec]:
        """The regression (CT) tasks, in task order."""
        return [task for task in self.tasks if task.type == "regression"]

    @property
    def segmentation_tasks(self) -> list[TaskSpec]:
        """The segmentation (label map) tasks, in task order."""
        return [task for task in self.tasks if task.type == "segmentation"]

    @property
    def patch_size(self) -> tuple[int, int]:
        """`[MR_CT] patch_size`."""
        return tuple(int(v) for v in self.app_settings.patch_size)

    @property
    def padded_patch_size(self) -> tuple[int, int]:
        """`[MR_CT] padded_size`."""
        return tuple(int(v) for v in self.app_settings.padded_size)

    def regression_scale(self, task: TaskSpec) -> float:
        """CT targets are `HU / 1024 + 1`: errors are reported in Hounsfield units."""
        return CT_SCALE if task.type == "regression" else 1.0

    def regression_offset(self, task: TaskSpec) -> float:
        """`HU = 1024 * y - 1024` for the CT target `y = HU / 1024 + 1`."""
        return -CT_SCALE if task.type == "regression" else 0.0

    def regression_unit(self, task: TaskSpec) -> str:
        """Hounsfield units."""
        return "HU"

    def default_output_bounds(self, task: TaskSpec) -> tuple[float, float]:
        """The range of a 12-bit CT, `CT_RANGE_HU` (-1024..3071 HU): air to dense cortical bone."""
        return CT_RANGE_HU

    def input_shape(self) -> tuple[int, ...]:
        """Training patches: `(*padded_size, 1)`."""
        return (*self.padded_patch_size, 1)

    def export_input_shape(self) -> tuple[int | None, ...]:
        """Whole slices of any size (SFG-HighResNet is fully convolutional): `(None, None, 1)`."""
        return (None, None, 1)

    def serving_preprocessor(self) -> VolumePreprocessor:
        """Raw MR in, as the exported SavedModel takes it: one request = the axial slices of ONE volume, `[Z, X, Y, 1]`
        raw intensities of any slice size (see `mr_ct_serving`).

        Every signature normalises the request as `normalise_mr` does (the histogram landmarks saved at training
        time as constants, then whitening; per-volume statistics over the request), pads the slices to a multiple of
        8 and crops the outputs back, as `sfg_run inference` does.

        Raises:
            FileNotFoundError: `[NETWORK] normalisation` is on and the histogram file does not exist.

        Example:

        ```python
        slices = np.moveaxis(load_nifti("subj_000_mr.nii.gz").data, 2, 0)[..., None]
        network_input = app.serving_preprocessor().preprocess(tf.constant(slices, tf.float32))
        ```
        """
        from .mr_ct_serving import volume_preprocessor

        return volume_preprocessor(self.saved_standardiser(), bool(self.settings.network.whitening))

    # === Files and subjects ===

    @property
    def image_section(self) -> str:
        """The name of the MR input section (`[MULTITASK] image`)."""
        return self.settings.multitask.image

    @property
    def reference_sections(self) -> list[str]:
        """The input sections holding the tasks' references, in task order without repeats."""
        return list(dict.fromkeys(task.label for task in self.tasks))

    def match_files(self, sections: Sequence[str], required: Sequence[str] | None = None
                    ) -> list[dict[str, str | None]]:
        """`match_subjects` over the named input sections (searching `[INFERENCE] input_dir` instead of their
        folders when it is set; `required`: the sections every subject must have, default all).

        Raises:
            FileNotFoundError, ValueError: from `sfg_keras.io` (missing folder, subject missing a section, ...).
        """
        inputs = []
        other_folder = self.input_dir
        for name in dict.fromkeys(sections):
            section = self.settings.inputs[name]
            inputs.append(InputSection(
                name=name,
                path_to_search=[str(other_folder)] if other_folder else list(section.path_to_search),
                filename_contains=list(section.filename_contains),
                filename_not_contains=list(section.filename_not_contains),
                filename_removefromid=section.filename_removefromid or None,
                csv_file=None if other_folder else section.csv_file or None,
            ))
        return match_subjects(inputs, base_dir=self.settings.config_dir, required=required)

    def subject_files(self, subjects: list[str]) -> dict[str, dict[str, str]]:
        """`{subject: {section: file}}` of the MR and reference files of `subjects` (after `prepare`)."""
        rows = self._prepared(self._rows, "subject_files")
        sections = [self.image_section, *self.reference_sections]
        return {subject: {name: str(rows[subject][name]) for name in dict.fromkeys(sections)} for subject in subjects}

    def legacy_training_subjects(self) -> list[str]:
        """The training subjects listed in `training_statistics.json` by older versions."""
        if not self.statistics_file.is_file():
            return []
        return list(json.loads(self.statistics_file.read_text(encoding="utf-8")).get("training_subjects", []))

    def num_training_examples(self) -> int | None:
        """The training slices (after `prepare`)."""
        return len(self.training_data) if self.training_data is not None else None

    def describe_training_examples(self) -> str:
        """E.g. "axial slices of 7 training subjects"."""
        data = self.training_data
        return f"axial slices of {len(data.subjects)} training subjects" if data is not None else ""

    # === Normalisation ===

    @property
    def histogram_file(self) -> Path:
        """`[NETWORK] histogram_ref_file`."""
        return Path(self.settings.network.histogram_ref_file)

    @property
    def statistics_file(self) -> Path:
        """`model_dir/training_statistics.json`."""
        return self.model_dir / TRAINING_STATISTICS_FILE

    def _missing(self, path: Path, what: str) -> FileNotFoundError:
        return FileNotFoundError(
            f"{path} does not exist: {what} is written when training starts from scratch (sfg_run train -c "
            f"{self.settings.config_path})."
        )

    def saved_standardiser(self) -> HistogramStandardisation | None:
        """The histogram standardisation saved at training time (never refitted), or None when it is off."""
        if not self.settings.network.normalisation:
            return None
        if not self.histogram_file.is_file():
            raise self._missing(self.histogram_file, "the histogram file of [NETWORK] normalisation")
        return HistogramStandardisation.load(self.histogram_file)

    def training_statistics(self) -> dict:
        """The statistics written at training time (`model_dir/training_statistics.json`)."""
        if not self.statistics_file.is_file():
            raise self._missing(self.statistics_file, "the training statistics file")
        return json.loads(self.statistics_file.read_text(encoding="utf-8"))

    def normalise_mr(self, mr: np.ndarray, standardiser: HistogramStandardisation | None) -> np.ndarray:
        """Histogram standardisation (when given) then whitening (when `[NETWORK] whitening`), float32."""
        data = np.asarray(mr, dtype=np.float32)
        if standardiser is not None:
            data = standardiser.transform(data)
        if self.settings.network.whitening:
            data = whiten(data)
        return data.astype(np.float32)

    # === prepare ===

    def prepare(self, fit: bool) -> None:
        """Matches, splits, loads and checks what the action needs; fits and saves (`fit`) or loads the normalisation.

        - `fit=True` (training from scratch): checks every file of the training and validation subjects
          (`mr_ct_checks`: readable, decodable, 3-D, same grid as the MR, finite, an MR foreground with
          `normalisation`, labels in 0..num_classes-1), loads them, fits the histogram standardisation on the
          training subjects and, only then, writes `[NETWORK] histogram_ref_file` and
          `model_dir/training_statistics.json` atomically (replacing earlier ones).
        - `fit=False`: the saved files are loaded. Training (resume) checks and loads the subjects too; inference
          loads only the standardiser and checks the MR files of `[INFERENCE] dataset_to_infer`; evaluation loads
          the statistics.

        Scans of the files' voxels are cached in `model_dir/.input_scans.json`, written once the checks passed.

        Raises:
            FileNotFoundError: a missing input folder, or (`fit=False`) a missing saved file, with the train command.
            InputValidationError: every bad file at once (a `ValueError`), each naming subject, file, problem and
                what was expected.
            ValueError: a subject missing a section, naming the subject and the section.
        """
        action = self.settings.action
        if fit or action == "train":
            self._prepare_training(fit)
        elif action == "inference":
            self.standardiser = self.saved_standardiser()
            rows = self.match_files([self.image_section])
            by_subject = {str(row["subject"]): row for row in rows}
            found = {subject: {self.image_section: str(row[self.image_section])} for subject, row in by_subject.items()}
            rows = [by_subject[s] for s in self.choose_inference_subjects(found)]
            self._check_inputs(rows, "MR inputs to infer", [], keep=False)  # the cache is training's: not saved
            self._rows_to_infer = rows
        elif action == "evaluation":
            self.statistics = self.training_statistics()

    def _prepare_training(self, fit: bool) -> None:
        saved = None if fit else self.saved_standardiser()  # a missing file is reported before anything is written
        sections = [self.image_section, *self.reference_sections]
        rows = {str(row["subject"]): row for row in self.match_files(sections)}
        split = self.split(list(rows))
        training, validation = self.training_subjects(split), self.subjects_of(split, "Validation")
        if not training:
            raise ValueError(
                f"No training subject in {self.settings.system.dataset_split_file}: expected at least one "
                "'Training' row (lower [TRAINING] exclude_fraction_for_validation / exclude_fraction_for_inference)."
            )
        subjects = [*training, *validation]
        loaded, cache = self._check_inputs([rows[s] for s in subjects], "training and validation inputs", self.tasks,
                                           keep=True)
        volumes = {s: load_subject(rows[s], sections, self.segmentation_tasks, loaded) for s in subjects}
        del loaded
        if fit:
            standardiser = self._fit_standardiser([volumes[s][self.image_section].data for s in training])
            statistics = training_statistics(training, volumes, self.tasks)
        else:
            standardiser, statistics = saved, None
        normalise = functools.partial(self.normalise_mr, standardiser=standardiser)
        self.training_data = stack_slices(training, volumes, self.image_section, self.tasks, normalise)
        self.validation_data = (
            stack_slices(validation, volumes, self.image_section, self.tasks, normalise) if validation else None
        )
        if fit:
            self._save_normalisation(standardiser, statistics)
        cache.save()
        self._rows = rows
        self.standardiser, self.statistics = standardiser, statistics
        self._training_files = [str(rows[s][name]) for s in training for name in dict.fromkeys(sections)]
        print(
            f"mr_ct: {len(training)} training subjects ({len(self.training_data)} slices), {len(validation)} "
            f"validation subjects; split in {self.settings.system.dataset_split_file}"
        )

    def _check_inputs(self, rows: list[dict], context: str, tasks: Sequence[TaskSpec], keep: bool) -> tuple:
        """Checks the MR and the `tasks`' reference files of `rows` (`mr_ct_checks.check_subjects`); returns the
        volumes read (`keep`) and the scan cache, to be saved once the action's preparation succeeded."""
        cache = ScanCache(self.model_dir / SCAN_CACHE_FILE)
        roles = section_roles(self.image_section, tasks, foreground=bool(self.settings.network.normalisation),
                              hounsfield=bool(self.app_settings.check_hounsfield))
        context = f"{context} of {self.settings.config_path}"
        return check_subjects(rows, roles, cache, context, keep=keep), cache

    def check_references(self, rows: list[dict]) -> None:
        """Checks the reference files of `rows` up front, as training checks its inputs (readable 3-D volumes on
        the MR's grid, finite, a CT in Hounsfield units, labels in range); raises every problem at once."""
        cache = ScanCache(self.model_dir / SCAN_CACHE_FILE)  # read only: evaluation changes no file of training
        roles = [FileRole(self.image_section), *section_roles(
            None, self.tasks, foreground=False, hounsfield=bool(self.app_settings.check_hounsfield))]
        check_subjects(rows, roles, cache, f"references to evaluate of {self.settings.config_path}")

    def training_files(self) -> list[str]:
        """The files the normalisation and the training statistics are fitted on: the MR and reference files of the
        training subjects (after `prepare`; for other actions read from the existing split file).

        Example:

        ```python
        app.prepare(fit=True)
        files_fingerprint(app.training_files(), base_dir=app.settings.config_dir)
        ```
        """
        if self._training_files is None:
            if not Path(self.settings.system.dataset_split_file).is_file():
                self._prepared(None, "training_files")
            sections = [self.image_section, *self.reference_sections]
            rows = {str(row["subject"]): row for row in self.match_files(sections)}
            training = self.training_subjects(self.split(list(rows)))
            self._training_files = [str(rows[s][name]) for s in training for name in dict.fromkeys(sections)]
        return list(self._training_files)

    def _fit_standardiser(self, training_mr: list[np.ndarray]) -> HistogramStandardisation | None:
        if not self.settings.network.normalisation:
            return None
        network = self.settings.network
        return HistogramStandardisation(cutoff=network.cutoff, landmarks=network.norm_type).fit(training_mr)

    def _save_normalisation(self, standardiser: HistogramStandardisation | None, statistics: dict) -> None:
        if standardiser is not None:
            with atomic_path(self.histogram_file) as temporary:
                standardiser.save(temporary)
            print(f"Histogram standardisation: learned on the training subjects -> {self.histogram_file}")
        atomic_write_json(self.statistics_file, statistics)

    def _prepared(self, value, hook: str):
        if value is None:
            raise RuntimeError(
                f"MRCTApplication.{hook}() needs the prepared data: call prepare(fit) first (with settings of the "
                f"action that needs it; these are for {self.settings.action!r})."
            )
        return value

    # === Datasets ===

    def _augment(self, position, image, targets, seed):
        """One training element: flips, scaling and rotation, random crop and padding, masking."""
        seeds = tf.random.experimental.stateless_split(tf.stack([seed, position]), 3)
        entries = {"image": image, "valid": tf.ones_like(image)}
        entries.update({f"task_{name}": target for name, target in targets.items()})
        flips = sorted({axis for axis in self.settings.training.random_flipping_axes if axis in (0, 1)})
        if flips:
            draws = tf.random.stateless_uniform([len(flips)], seed=seeds[2])
            for number, axis in enumerate(flips):
                flip = draws[number] < 0.5
                entries = {
                    key: tf.cond(flip, lambda v=value, a=axis: tf.reverse(v, [a]), lambda v=value: v)
                    for key, value in entries.items()
                }
        scale, degrees = self.augmentation_ranges()
        if scale > 0 or degrees > 0:
            # Rotate the MR relative to its darkest value, so that pixels entering from outside look like air.
            background = tf.reduce_min(entries["image"])
            entries["image"] = entries["image"] - background
            nearest = {"valid"} | {f"task_{task.name}" for task in self.segmentation_tasks}
            entries = random_scale_rotate(entries, seeds[0], scale_range=scale, max_degrees=degrees, nearest=nearest)
            entries["image"] = entries["image"] + background
        entries, mask = random_crop_pad(entries, seeds[1], crop=self.patch_size, pad_to=self.padded_patch_size)
        keep = (mask > 0.5) & (entries["valid"] > 0.5)
        regression = {task.name for task in self.regression_tasks}
        outputs = {}
        for name in targets:
            value = entries[f"task_{name}"]
            if name in regression:
                outputs[name] = tf.where(keep, value, tf.fill(tf.shape(value), np.float32(np.nan)))
            else:
                outputs[name] = tf.cast(tf.where(keep, value, -1.0), tf.int32)[..., 0]
        return entries["image"], outputs

    def training_dataset(self, first_batch: int) -> tf.data.Dataset:
        """Infinite batches of augmented `[MR_CT] padded_size` patches from batch `first_batch` on.

        Elements are `(mr [B, H, W, 1], {task: target})`: regression targets `[B, H, W, 1]` float32 (NaN =
        masked), segmentation targets `[B, H, W]` int32 (-1 = masked). Batch `k` depends only on `[SYSTEM] seed`
        and `k`: `training_dataset(k)` yields the batches `k, k+1, ...` of `training_dataset(0)`.
        """
        data: SliceData = self._prepared(self.training_data, "training_dataset")
        images = tf.constant(data.images)
        targets = {name: tf.constant(values) for name, values in data.targets.items()}
        seed = tf.constant(self.seed, tf.int64)

        def element(position, index):
            target = {name: tf.gather(values, index) for name, values in targets.items()}
            return self._augment(position, tf.gather(images, index), target, seed)

        order = example_order(len(data), seed=self.seed, first_position=int(first_batch) * self.batch_size)
        dataset = order.map(element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return dataset.batch(self.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    def describe_batch(self, batch: int) -> str:
        """The subjects and slices of training batch `batch`, e.g. "subj_003 slice 41, subj_000 slice 7"."""
        data: SliceData = self._prepared(self.training_data, "describe_batch")
        indices = batch_examples(len(data), self.seed, batch, self.batch_size)
        return ", ".join(data.slice_source(index) for index in indices)

    def validation_dataset(self) -> tf.data.Dataset | None:
        """Validation slices in a fixed (seeded) order, centre-cropped to `patch_size` and padded to `padded_size`
        (masked), batched and repeated; None without validation subjects."""
        self._prepared(self.training_data, "validation_dataset")
        data = self.validation_data
        if data is None:
            return None
        order = np.random.default_rng(self.seed).permutation(len(data))
        images = centre_patch(data.images[order], 0.0, self.patch_size, self.padded_patch_size)
        targets = {}
        for task in self.tasks:
            target = centre_patch(data.targets[task.name][order], fill_value(task), self.patch_size,
                                  self.padded_patch_size)
            targets[task.name] = target if task.type == "regression" else target[..., 0].astype(np.int32)
        dataset = tf.data.Dataset.from_tensor_slices((images, targets))
        return dataset.batch(self.batch_size).repeat().prefetch(tf.data.AUTOTUNE)

    # === Inference ===

    def output_name(self, task: str, subject: str, statistic: str = "") -> str:
        """`<task>[_<statistic>]_<subject><postfix>.nii.gz`."""
        key = f"{task}_{statistic}" if statistic else task
        return f"{key}_{subject}{self.settings.inference.output_postfix}.nii.gz"

    def inference_inputs(self) -> Iterator[InferenceInput]:
        """One `InferenceInput` per subject of `[INFERENCE] dataset_to_infer`: its normalised MR slices padded to a
        multiple of 8, `[S, H, W, 1]`, with the MR volume and original slice size as context."""
        rows = self._prepared(self._rows_to_infer, "inference_inputs")
        self._inferred = {}
        inference = self.settings.inference
        batch_size = int(inference.batch_size)
        for row in rows:
            subject = str(row["subject"])
            mr = load_volume(row[self.image_section])
            if mr.data.ndim != 3:
                raise ValueError(
                    f"Subject '{subject}': [{self.image_section}] {mr.path} has shape {mr.data.shape}; expected a "
                    "3-D volume [X, Y, Z]."
                )
            inputs, size = inference_slices(self.normalise_mr(mr.data, self.standardiser))
            samples = None
            if inference.inference_mode == "mc":
                samples = samples_per_pass(int(inference.num_samples), min(batch_size, len(inputs)), inputs.shape[1:3])
            yield InferenceInput(subject, inputs, batch_size=batch_size, samples_per_pass=samples,
                                 context=SubjectContext(reference=mr, slice_size=size))

    def _task_volumes(self, item: InferenceInput, task: TaskSpec, predictions: dict) -> list[tuple]:
        """`[(statistic, volume, dtype)]` of one task: CT (and its MC std) in HU, or the label map and entropy."""
        values = predictions.get(task.name, {})
        mc = self.settings.inference.inference_mode == "mc"
        needed = ("label", "entropy") if task.type == "segmentation" else ("mean", "std") if mc else ("mean",)
        missing = [key for key in needed if key not in values]
        if missing:
            raise ValueError(
                f"Predictions of subject '{item.key}' have no {missing} for task {task.name!r}: expected "
                f"{{task: {{key: array}}}} with keys {list(needed)} (the schema of sfg_keras.inference.predict). "
                f"Received tasks {sorted(predictions)}."
            )

        def volume(key: str) -> np.ndarray:
            slices = np.asarray(values[key])
            if slices.ndim == 4 and slices.shape[-1] == 1:
                slices = slices[..., 0]
            if slices.ndim != 3 or slices.shape[0] != len(item.inputs):
                raise ValueError(
                    f"Predictions of subject '{item.key}': {task.name}.{key} has shape {slices.shape}; expected "
                    f"[{len(item.inputs)}, H, W(, 1)], one map per slice."
                )
            return slices_back_to_volume(slices, item.context.slice_size)

        if task.type == "segmentation":
            return [("", volume("label"), np.uint8), ("entropy", volume("entropy"), np.float32)]
        outputs = [("", target_to_ct(volume("mean")), np.float32)]
        if mc:
            outputs.append(("std", volume("std") * CT_SCALE, np.float32))
        return outputs

    def write_outputs(self, item: InferenceInput, predictions: dict) -> list[Path]:
        """Writes the NIfTI volumes of one subject (atomically) with the MR's affine and header.

        Args:
            item: an `InferenceInput` of `inference_inputs()`.
            predictions: `{task: {...}}`: regression `{"mean", "std"}` `[S, H, W(, 1)]` in the network's unit
                (std written only with `inference_mode = mc`), segmentation `{"probabilities", "label",
                "entropy"}` (`label` and `entropy` `[S, H, W]`).

        Returns:
            The files written: `<task>_<subject><postfix>.nii.gz` (CT in HU, float32; label map, uint8) and
            `<task>_std_...` (CT std in HU) / `<task>_entropy_...` (nats); `inferred.csv` gets their names.
        """
        context: SubjectContext = item.context
        entry = {"subject": item.key, "image": str(context.reference.path or "")}
        written: list[Path] = []
        for task in self.tasks:
            for statistic, data, dtype in self._task_volumes(item, task, predictions):
                path = self.output_dir / self.output_name(task.name, item.key, statistic)
                save_nifti(path, np.asarray(data).astype(dtype), reference=context.reference, dtype=dtype)  # atomic
                written.append(path)
                entry[f"{task.name}_{statistic}" if statistic else task.name] = path.name  # relative to the table
        entry.update(self.provenance_columns(item.key))
        self._inferred[item.key] = entry
        return written

    def finish_inference(self, written: list[Path]) -> list[Path]:
        """Writes `save_seg_dir/inferred.csv`: a row per subject, its file for every task and statistic (relative
        to the table's folder, so that a copied or moved output folder reads its own files), and its provenance
        (`phase`, `trained_on`, `input_sha256`)."""
        table = list(self._inferred.values())
        columns = list(dict.fromkeys(key for entry in table for key in entry)) or ["subject"]
        path = self.output_dir / INFERRED_FILE
        with atomic_path(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(table)
        return [path]

    def report_figures(self) -> list:
        """Mid-slices of MR, synthetic CT, labels and uncertainty of every inferred subject (`mr_ct_report`)."""
        from .mr_ct_report import report_figures

        return report_figures(self)

    # === Evaluation ===

    def evaluate(self) -> list[Path]:
        """Metrics of the inferred volumes against the references (see `mr_ct_evaluation`).

        Returns:
            `[save_csv_dir/mr_ct_metrics.csv, save_csv_dir/mr_ct_metrics_summary.csv]`.
        """
        statistics = self.statistics if self.statistics is not None else self.training_statistics()
        return mr_ct_evaluation.evaluate(self, statistics)
