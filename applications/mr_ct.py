"""`MRCTApplication`: MR to CT synthesis and organ segmentation from NIfTI volumes (the paper's pelvis experiment).

Per subject the config names three input sections: the MR (`[MULTITASK] image`), the CT (label of the regression
task) and the organ label map (label of the segmentation task), matched by file name as in NiftyNet. The network
works on 2-D axial slices:

- MR intensities: histogram standardisation learned on the training subjects, then whitening (`mr_ct_normalisation`).
- CT target: `HU / 1024 + 1`; predictions are mapped back to Hounsfield units.
- Training: augmented `[MR_CT] patch_size` patches of every axial slice of the training subjects, batch `k` a
  function of the seed and `k` only (`mr_ct_datasets`).
- Inference: the subjects of `[INFERENCE] dataset_to_infer` among those found (the input sections' folders, or
  `[INFERENCE] input_dir`), checked against the run record (`sfg_keras.engine.provenance`: a subject the model was
  trained on is refused, the split file is never written); whole slices padded to a multiple of 8 (one
  `InferenceInput` per subject), stitched back into volumes and written as NIfTI with the MR's affine and header,
  plus `inferred.csv` (`mr_ct_outputs`).
- Evaluation (`mr_ct_evaluation`): the references checked up front, then PSNR and MAE (whole volume, bone, per organ)
  and Dice per organ against the reference CT and labels, next to two trivial references.

The `[MR_CT]` section is in `mr_ct_settings`, the input checks in `mr_ct_checks`, the volume and slice handling in
`mr_ct_data`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from sfg_keras.config import TaskSpec
from sfg_keras.data import HistogramStandardisation, batch_examples
from sfg_keras.data.intensity import CT_SCALE
from sfg_keras.engine.application import BaseApplication, InferenceInput
from sfg_keras.evaluation import write_metrics_tables
from sfg_keras.io import save_nifti
from sfg_keras.io.input_checks import SCAN_CACHE_FILE, ScanCache
from sfg_keras.predictions import output_name

from .mr_ct_checks import check_references, check_subjects, section_roles
from .mr_ct_data import (
    SliceData,
    SubjectContext,
    TaskKinds,
    inference_slices,
    load_mr,
    load_subject,
    match_files,
    samples_per_pass,
    stack_slices,
    training_statistics,
)
from .mr_ct_datasets import SliceAugmentation, training_batches, validation_batches
from .mr_ct_evaluation import (
    INFERRED_FILE,
    METRICS_FILE,
    EvaluationInputs,
    evaluate_subject,
    inferred_references,
    read_inferred,
    select_metrics,
    summary_text,
)
from .mr_ct_normalisation import MRNormalisation
from .mr_ct_outputs import output_file_name, task_volumes, write_inferred_table
from .mr_ct_settings import APP_KEYS, SECTION, section_problem, task_problem

if TYPE_CHECKING:
    from sfg_keras.serving import VolumePreprocessor

__all__ = ["CT_RANGE_HU", "MRCTApplication"]

#: Default range of synthetic CT (`[INFERENCE] output_bounds`): a 12-bit CT, air at -1024 HU.
CT_RANGE_HU = (-1024.0, 3071.0)

class MRCTApplication(BaseApplication, TaskKinds):
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

    APP_SECTIONS = {SECTION: APP_KEYS}
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
        for task in self.tasks:
            problem = task_problem(task, self.settings.multitask, list(self.settings.inputs))
            if problem:
                raise self.config_error("MULTITASK", *problem)
        problem = section_problem(self.app_settings, self.segmentation_tasks)
        if problem:
            raise self.config_error(SECTION, *problem)
        self.augmentation_ranges()
        axes = self.settings.training.random_flipping_axes
        if any(axis not in (-1, 0, 1) for axis in axes):
            raise self.config_error("TRAINING", "random_flipping_axes", axes,
                                    "axial slices can be flipped along axis 0 (x) or 1 (y); expected -1, 0 or 1")

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

        return volume_preprocessor(self.normalisation.saved_standardiser(), bool(self.settings.network.whitening))

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
        return match_files(self.settings, sections, self.input_dir, required)

    def subject_files(self, subjects: list[str]) -> dict[str, dict[str, str]]:
        """`{subject: {section: file}}` of the MR and reference files of `subjects` (after `prepare`)."""
        rows = self._prepared(self._rows, "subject_files")
        sections = [self.image_section, *self.reference_sections]
        return {subject: {name: str(rows[subject][name]) for name in dict.fromkeys(sections)} for subject in subjects}

    def legacy_training_subjects(self) -> list[str]:
        """The training subjects listed in `training_statistics.json` by older versions."""
        return self.normalisation.legacy_training_subjects()

    def num_training_examples(self) -> int | None:
        """The training slices (after `prepare`)."""
        return len(self.training_data) if self.training_data is not None else None

    def describe_training_examples(self) -> str:
        """E.g. "axial slices of 7 training subjects"."""
        data = self.training_data
        return f"axial slices of {len(data.subjects)} training subjects" if data is not None else ""

    # === Normalisation ===

    @property
    def normalisation(self) -> MRNormalisation:
        """The MR normalisation of the run and the files it is saved in (`mr_ct_normalisation`)."""
        return MRNormalisation.from_settings(self.settings)

    def normalise_mr(self, mr: np.ndarray, standardiser: HistogramStandardisation | None) -> np.ndarray:
        """Histogram standardisation (when given) then whitening (when `[NETWORK] whitening`), float32."""
        return self.normalisation.normalise(mr, standardiser)

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
            self.standardiser = self.normalisation.saved_standardiser()
            rows = self.match_files([self.image_section])
            by_subject = {str(row["subject"]): row for row in rows}
            found = {subject: {self.image_section: str(row[self.image_section])} for subject, row in by_subject.items()}
            rows = [by_subject[s] for s in self.choose_inference_subjects(found)]
            self._check_inputs(rows, "MR inputs to infer", [], keep=False)  # the cache is training's: not saved
            self._rows_to_infer = rows
        elif action == "evaluation":
            self.statistics = self.normalisation.training_statistics()

    def _prepare_training(self, fit: bool) -> None:
        saved = None if fit else self.normalisation.saved_standardiser()  # reported before anything is written
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
            standardiser = self.normalisation.fit_standardiser([volumes[s][self.image_section].data for s in training])
            statistics = training_statistics(training, volumes, self.tasks)
        else:
            standardiser, statistics = saved, None
        normalise = functools.partial(self.normalise_mr, standardiser=standardiser)
        self.training_data = stack_slices(training, volumes, self.image_section, self.tasks, normalise)
        self.validation_data = (
            stack_slices(validation, volumes, self.image_section, self.tasks, normalise) if validation else None
        )
        if fit:
            self.normalisation.save(standardiser, statistics)
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

    def _prepared(self, value, hook: str):
        if value is None:
            raise RuntimeError(
                f"MRCTApplication.{hook}() needs the prepared data: call prepare(fit) first (with settings of the "
                f"action that needs it; these are for {self.settings.action!r})."
            )
        return value

    # === Datasets ===

    def slice_augmentation(self) -> SliceAugmentation:
        """The augmentation of the training slices: `[TRAINING]` flips, scaling and rotation, the `[MR_CT]` crop and
        padding (see `mr_ct_datasets`)."""
        scale, degrees = self.augmentation_ranges()
        return SliceAugmentation(
            flip_axes=tuple(sorted({axis for axis in self.settings.training.random_flipping_axes if axis in (0, 1)})),
            scale_range=scale, max_degrees=degrees, patch_size=self.patch_size, padded_size=self.padded_patch_size,
            regression=frozenset(task.name for task in self.regression_tasks),
            segmentation=frozenset(task.name for task in self.segmentation_tasks),
        )

    def training_dataset(self, first_batch: int) -> tf.data.Dataset:
        """Infinite batches of augmented `[MR_CT] padded_size` patches from batch `first_batch` on.

        Elements are `(mr [B, H, W, 1], {task: target})`: regression targets `[B, H, W, 1]` float32 (NaN =
        masked), segmentation targets `[B, H, W]` int32 (-1 = masked). Batch `k` depends only on `[SYSTEM] seed`
        and `k`: `training_dataset(k)` yields the batches `k, k+1, ...` of `training_dataset(0)`.
        """
        data: SliceData = self._prepared(self.training_data, "training_dataset")
        return training_batches(data, self.slice_augmentation(), self.seed, self.batch_size, first_batch)

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
        return validation_batches(data, self.tasks, self.seed, self.batch_size, self.patch_size, self.padded_patch_size)

    # === Inference ===

    def inference_inputs(self) -> Iterator[InferenceInput]:
        """One `InferenceInput` per subject of `[INFERENCE] dataset_to_infer`: its normalised MR slices padded to a
        multiple of 8, `[S, H, W, 1]`, with the MR volume and original slice size as context."""
        rows = self._prepared(self._rows_to_infer, "inference_inputs")
        self._inferred = {}
        inference = self.settings.inference
        batch_size = int(inference.batch_size)
        for row in rows:
            subject = str(row["subject"])
            mr = load_mr(row[self.image_section], self.image_section, subject)
            inputs, size = inference_slices(self.normalise_mr(mr.data, self.standardiser))
            samples = None
            if inference.inference_mode == "mc":
                samples = samples_per_pass(int(inference.num_samples), min(batch_size, len(inputs)), inputs.shape[1:3])
            yield InferenceInput(subject, inputs, batch_size=batch_size, samples_per_pass=samples,
                                 context=SubjectContext(reference=mr, slice_size=size))

    def write_outputs(self, item: InferenceInput, predictions: dict) -> list[Path]:
        """Writes the NIfTI volumes of one subject (atomically) with the MR's affine and header.

        Args:
            item: an `InferenceInput` of `inference_inputs()`.
            predictions: `{task: {...}}`: regression `{"mean", "std"}` `[S, H, W(, 1)]` in the network's unit
                (std written only with `inference_mode = mc`), segmentation `{"probabilities", "label",
                "entropy"}` (`label` and `entropy` `[S, H, W]`).

        Returns:
            The files written: `<task>_mean_<subject><postfix>.nii.gz` (CT in HU, float32) and `<task>_std_...`
            (CT std in HU), or `<task>_label_...` (label map, uint8) and `<task>_entropy_...` (nats), named as the
            exported signatures name the same outputs; `inferred.csv` gets their names in the same columns.
        """
        context: SubjectContext = item.context
        entry = {"subject": item.key, "image": str(context.reference.path or "")}
        written: list[Path] = []
        mc, postfix = self.settings.inference.inference_mode == "mc", self.settings.inference.output_postfix
        for task in self.tasks:
            for key, data, dtype in task_volumes(predictions, task, item.key, len(item.inputs),
                                                 context.slice_size, mc):
                path = self.output_dir / output_file_name(task.name, item.key, postfix, key)
                save_nifti(path, np.asarray(data).astype(dtype), reference=context.reference, dtype=dtype)  # atomic
                written.append(path)
                entry[output_name(task.name, key)] = path.name  # relative to the table
        entry.update(self.provenance_columns(item.key))
        self._inferred[item.key] = entry
        return written

    def finish_inference(self, written: list[Path]) -> list[Path]:
        """Writes `save_seg_dir/inferred.csv`: a row per subject, its file for every task and statistic (relative
        to the table's folder, so that a copied or moved output folder reads its own files), and its provenance
        (`phase`, `trained_on`, `input_sha256`)."""
        return [write_inferred_table(self.output_dir / INFERRED_FILE, list(self._inferred.values()))]

    def report_figures(self) -> list:
        """Mid-slices of MR, synthetic CT, labels and uncertainty of every inferred subject (`mr_ct_report`)."""
        from .mr_ct_report import report_figures

        return report_figures(self)

    # === Evaluation ===

    def evaluate(self) -> list[Path]:
        """Metrics of the inferred volumes against the references (see `mr_ct_evaluation`), after checking that every
        inferred subject has its MR and references, was predicted from the MR found now and was not trained on
        (`evaluation_subjects`), and that its references pass the input checks (`mr_ct_checks.check_references`).

        Returns:
            `[save_csv_dir/mr_ct_metrics.csv, save_csv_dir/mr_ct_metrics_summary.csv]`.

        Raises:
            FileNotFoundError: no `inferred.csv` (run inference first).
            ValueError: an inferred subject without reference volumes, or a prediction of another shape.
            ConfigError: an unknown metric in `[EVALUATION] evaluations`.
        """
        statistics = self.statistics if self.statistics is not None else self.normalisation.training_statistics()
        inputs = EvaluationInputs(tuple(self.tasks), tuple(self.app_settings.label_names),
                                  int(self.app_settings.bone_label), statistics)
        inferred_path = self.output_dir / INFERRED_FILE
        inferred = read_inferred(inferred_path, self.tasks, self.settings.config_path)
        names = list(dict.fromkeys([self.image_section, *self.reference_sections]))
        where = f"[INFERENCE] input_dir {self.input_dir}" if self.input_dir else "the input sections"
        references = inferred_references(self.match_files(names, required=[]), inferred, names, inferred_path, where)
        found = {subject: {name: str(row[name]) for name in names} for subject, row in references.items()}
        inferred = self.evaluation_subjects(inferred, found, inferred_path)
        cache = ScanCache(self.model_dir / SCAN_CACHE_FILE)  # read only: evaluation changes no file of training
        check_references([references[entry["subject"]] for entry in inferred], self.image_section, self.tasks, cache,
                         bool(self.app_settings.check_hounsfield),
                         f"references to evaluate of {self.settings.config_path}")
        print(inputs.describe(len(inferred)))
        rows = [evaluate_subject(inputs, entry["subject"], entry,
                                 {name: references[entry["subject"]][name] for name in self.reference_sections})
                for entry in inferred]
        evaluations = self.settings.evaluation.evaluations
        try:
            rows = select_metrics(rows, evaluations)
        except ValueError as error:
            raise self.config_error("EVALUATION", "evaluations", evaluations, str(error)) from None
        written = write_metrics_tables(rows, self.evaluation_dir / METRICS_FILE)
        print(summary_text(rows))
        return list(written)
