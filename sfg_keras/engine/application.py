"""`BaseApplication`: the hooks an sfg_run application implements; the engine (`Driver`) does the rest.

An application turns settings into data and outputs and nothing else: it finds the input files, splits subjects,
fits (or loads) its normalisation, builds the `tf.data` pipelines, and writes and evaluates predictions. Building the
network, the training loop, checkpoints, resumption, TensorBoard, locking, inference dispatch, export and analysis
are the engine's (`sfg_keras.engine.Driver`), NiftyNet's application / engine split.

The driver calls the hooks in this order:

1. `__init__(settings)` then `check_settings()` (config mistakes: raise `ConfigError`).
2. `prepare(fit)` before any dataset is built: read and check the inputs; with `fit=True` (training from scratch)
   fit the normalisation on the training subjects and save it under `model_dir`, otherwise load the saved one.
   Nothing is written before the inputs passed their checks.
3. Training: `input_shape()`, `training_dataset(first_batch)`, `validation_dataset()`, `regression_scale(task)`.
4. Inference: `inference_inputs()` yields `InferenceInput`s; the driver predicts each with the `[INFERENCE]`
   mode and hands the predictions (the schema of `sfg_keras.inference.predict`) to `write_outputs`; then
   `finish_inference(written)`.
5. Evaluation: `evaluate()`.
6. Export: `export_input_shape()`, `serving_preprocessor()` (the raw-input normalisation inside every exported
   model), `physical_outputs()` (units and range of regression outputs; also applied by inference).

Provenance (`sfg_keras.engine.provenance`): `subject_files(subjects)` lists each subject's input files; the engine
records the split and the training subjects' fingerprints in `model_dir/run_record.json` when training starts.
At inference, `choose_inference_subjects(found)` picks the subjects of `[INFERENCE] dataset_to_infer` among those
found (the split file is read, never written; `[INFERENCE] input_dir` searches another folder) and refuses a subject
the model was trained on; `provenance_columns(subject)` adds its phase, `trained_on` and input SHA-256 to the
predictions table. At evaluation, `evaluation_subjects(rows, found)` refuses predictions of a trained-on subject or
of another file than the one found now.

Example:

```python
class MyApplication(BaseApplication):
    name = "my_app"

    def prepare(self, fit):
        self.images, self.labels = read_my_data(self.settings)

    def input_shape(self):
        return (64, 64, 1)

    def training_dataset(self, first_batch):
        order = example_order(len(self.images), seed=self.seed, first_position=first_batch * self.batch_size)
        return order.map(lambda position, index: (tf.gather(self.images, index), ...)).batch(self.batch_size)
    ...
```
"""

from __future__ import annotations

import abc
import dataclasses
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from sfg_keras.config import ConfigError, SectionSettings, Settings, TaskSpec, section_schema
from sfg_keras.engine import provenance
from sfg_keras.engine.provenance import ChosenSubject, RunRecord, TrainedSubjectError
from sfg_keras.io.input_checks import SCAN_CACHE_FILE, ScanCache, bullet_list, cached_sha256
from sfg_keras.physical_outputs import PhysicalOutput, parse_output_bounds

if TYPE_CHECKING:
    from sfg_keras.serving import ServingPreprocessor

#: `[INFERENCE] dataset_to_infer` choice -> phase of the split ("" = the Inference split; `all` = every subject).
PHASE_OF_DATASET = {"": "Inference", "inference": "Inference", "training": "Training", "validation": "Validation"}


@dataclasses.dataclass
class InferenceInput:
    """One unit of inference: network inputs and what the application needs to write their predictions.

    Attributes:
        key: name of the unit in messages (a subject, or a batch of images).
        inputs: network inputs `[N, ...]` (numpy) or a `tf.data.Dataset` of input batches.
        batch_size: prediction batch size for numpy inputs; `[INFERENCE] batch_size` when None.
        samples_per_pass: Monte-Carlo samples stacked in one forward pass (memory control); automatic when None.
        context: anything `write_outputs` needs (e.g. the reference volume and its original slice size).

    Example:

    ```python
    yield InferenceInput(subject, slices, context={"reference": mr})
    ```
    """

    key: str
    inputs: object
    batch_size: int | None = None
    samples_per_pass: int | None = None
    context: object = None


REQUIRED_HOOKS = ("input_shape", "training_dataset", "inference_inputs", "write_outputs", "evaluate")
"""The hooks every application implements (the others have defaults)."""


class IncompleteApplicationError(TypeError):
    """An application class that does not implement every required hook (`REQUIRED_HOOKS`), raised when the class
    is created."""


class BaseApplication(abc.ABC):
    """Base class of the sfg_run applications: the data and output hooks the engine calls.

    Args:
        settings: the resolved `Settings` of the run.

    Subclasses set `name` and `APP_SECTIONS` (a mapping `{SECTION: [KeySpec, ...]}` of the sections they read), and
    `APP_SECTION` (the section `app_settings` returns); they must implement the abstract hooks (`REQUIRED_HOOKS`:
    `input_shape`, `training_dataset`, `inference_inputs`, `write_outputs`, `evaluate`) and may override the others;
    see the module docstring for the order the engine calls them in. A subclass that misses a required hook fails
    when the class is created, with an `IncompleteApplicationError` naming the hooks; an intermediate base class
    that leaves hooks to its own subclasses says so: `class MyBase(BaseApplication, abstract=True)`.
    """

    #: Application sections this application reads: `{SECTION: [KeySpec, ...]}`.
    APP_SECTIONS: dict = {}
    #: The section of `APP_SECTIONS` that `app_settings` returns (None: the application has none).
    APP_SECTION: str | None = None
    #: Name used in messages.
    name = "application"

    def __init_subclass__(cls, abstract: bool = False, **kwargs):
        super().__init_subclass__(**kwargs)
        missing = [hook for hook in REQUIRED_HOOKS if getattr(getattr(cls, hook), "__isabstractmethod__", False)]
        if missing and not abstract:
            raise IncompleteApplicationError(
                f"{cls.__module__}.{cls.__qualname__} does not implement the application hook(s) "
                f"{', '.join(missing)} (required of every sfg_keras.engine.BaseApplication; declare "
                f"`class {cls.__name__}(BaseApplication, abstract=True)` for a base class that leaves them to its "
                "subclasses)."
            )

    def __init__(self, settings: Settings):
        self.settings = settings
        self.model_dir = Path(settings.system.model_dir)
        self.tasks: list[TaskSpec] = settings.task_specs()
        #: The split of this run (set by `split`, for training).
        self.subject_split: dict[str, str] | None = None
        #: The subjects chosen by `choose_inference_subjects`, by id.
        self.chosen_subjects: dict[str, ChosenSubject] = {}
        self._record: RunRecord | None = None
        self._digests: ScanCache | None = None
        self.check_settings()
        self._check_input_dir()

    # === Settings ===

    def check_settings(self) -> None:  # noqa: B027 (optional hook: the default checks nothing)
        """Validates application-specific settings (raise `ConfigError` naming section, key and value)."""

    def _check_input_dir(self) -> None:
        input_dir = self.input_dir
        if input_dir is None:
            return
        choice = self.settings.inference.dataset_to_infer
        if choice not in ("", "all"):
            raise self.config_error(
                "INFERENCE", "dataset_to_infer", choice,
                f"with [INFERENCE] input_dir = {input_dir} every subject found there is inferred (the split does not "
                "apply to another folder): expected '' or all",
            )
        if self.settings.action in ("inference", "evaluation") and not input_dir.is_dir():
            raise self.config_error("INFERENCE", "input_dir", str(input_dir), "expected an existing folder")

    @property
    def input_dir(self) -> Path | None:
        """`[INFERENCE] input_dir` for inference and evaluation: the folder searched instead of every input
        section's `path_to_search` (None: the input sections' own folders)."""
        value = self.settings.inference.input_dir
        return Path(value) if value and self.settings.action in ("inference", "evaluation") else None

    @property
    def app_settings(self) -> SectionSettings:
        """The settings of the application's own section `APP_SECTION`: the loaded section, or its defaults (from
        `APP_SECTIONS`) when the settings were loaded without it.

        Raises:
            ConfigError: the class names no `APP_SECTION` of its `APP_SECTIONS`.

        Example:

        ```python
        MRCTApplication(settings).app_settings.patch_size  # (128, 128) by default
        ```
        """
        name = self.APP_SECTION
        if name in self.settings.app_sections:
            return self.settings.app_sections[name]
        if name not in self.APP_SECTIONS:
            raise ConfigError(
                f"{type(self).__name__}.APP_SECTION = {name!r}: expected a section of its APP_SECTIONS "
                f"({', '.join(self.APP_SECTIONS) or 'none'})"
            )
        schema = section_schema(self.APP_SECTIONS[name], name)
        return SectionSettings(name, {key: spec.default for key, spec in schema.items()}, schema=schema)

    def config_error(self, section: str, key: str, value, expected: str) -> ConfigError:
        """A `ConfigError` naming the config file, `[section] key`, the received value and what was expected."""
        return ConfigError(f"{self.settings.config_path}: [{section}] {key} = {value!r}: {expected}")

    @property
    def seed(self) -> int:
        """`[SYSTEM] seed`."""
        return int(self.settings.system.seed)

    @property
    def batch_size(self) -> int:
        """`[NETWORK] batch_size`."""
        return int(self.settings.network.batch_size)

    # === Subjects ===

    def split(self, subjects: list[str]) -> dict[str, str]:
        """`{subject: "Training" | "Validation" | "Inference"}` of `[SYSTEM] dataset_split_file`, made with the
        `[TRAINING] exclude_fraction_for_*` fractions and `[SYSTEM] seed` the first time (reused when it exists)."""
        from sfg_keras.data.split import make_or_load_split

        training = self.settings.training
        validation, inference = training.exclude_fraction_for_validation, training.exclude_fraction_for_inference
        if validation + inference >= 1.0:
            raise self.config_error(
                "TRAINING", "exclude_fraction_for_validation", validation,
                f"with exclude_fraction_for_inference = {inference} nothing is left for training; expected the two "
                "fractions to sum to less than 1",
            )
        split_file = Path(self.settings.system.dataset_split_file)
        record = RunRecord.load(self.model_dir) if self.settings.action == "train" else None
        if record is not None and not split_file.exists():
            from sfg_keras.data.split import write_split

            write_split(record.split, split_file)
            print(f"[sfg_run] {split_file} was missing: restored the split this model was trained with "
                  f"({provenance.RUN_RECORD_FILE}).")
        self.subject_split = make_or_load_split(
            subjects, split_file, fractions=(1.0 - validation - inference, validation, inference), seed=self.seed,
        )
        return self.subject_split

    @staticmethod
    def subjects_of(split: dict[str, str], phase: str) -> list[str]:
        """The sorted subjects of one phase of `split` (`Training`, `Validation` or `Inference`)."""
        return sorted(subject for subject, value in split.items() if value == phase)

    def training_subjects(self, split: dict[str, str]) -> list[str]:
        """The Training subjects used: a seeded `[TRAINING] training_fraction` of the Training split."""
        from sfg_keras.data.split import subsample_training

        return subsample_training(split, float(self.settings.training.training_fraction), seed=self.seed)

    # === Provenance (see sfg_keras.engine.provenance) ===

    def subject_files(self, subjects: list[str]) -> dict[str, dict[str, str]]:
        """`{subject: {input section: file}}` of the given subjects (after `prepare`), fingerprinted in the run
        record (training subjects) and compared at inference and evaluation. The default lists no file: then only
        subject ids are compared.

        Example:

        ```python
        app.subject_files(["subj_000"])  # {"subj_000": {"MR": ".../subj_000_mr.nii.gz", "CT": ..., "LABEL": ...}}
        ```
        """
        return {subject: {} for subject in subjects}

    def digest(self, path: str) -> str:
        """The SHA-256 of a file, cached in `model_dir/.input_scans.json` by size and modification time (the cache
        is saved only by training: inference and evaluation change no file that training wrote)."""
        if self._digests is None:
            self._digests = ScanCache(self.model_dir / SCAN_CACHE_FILE)
        return cached_sha256(path, self._digests)

    def save_digests(self) -> None:
        """Saves the digests computed by `digest` (training only)."""
        if self._digests is not None and self.settings.action == "train":
            self._digests.save()

    def run_record(self) -> RunRecord:
        """The run record of `model_dir` (read once). A model_dir of an older sfg-keras has none: then the split
        file's Training subjects (after `training_fraction`) count as trained on, said once.

        Raises:
            FileNotFoundError: neither a run record nor a split file tells which subjects were trained on.
        """
        if self._record is not None:
            return self._record
        record = RunRecord.load(self.model_dir)
        if record is None:
            split_file = Path(self.settings.system.dataset_split_file)
            split = provenance.read_split_file(split_file)
            if split is None:
                raise FileNotFoundError(
                    f"{self.model_dir} has no {provenance.RUN_RECORD_FILE} (trained by an older sfg-keras, or not "
                    f"trained) and no split file {split_file}: the subjects this model was trained on are unknown, "
                    f"so none can be inferred or scored as held out. Train first (sfg_run train -c "
                    f"{self.settings.config_path}), or restore the split file."
                )
            trained = set(self.training_subjects(split)) | set(self.legacy_training_subjects())
            record = RunRecord(split, {subject: {} for subject in sorted(trained)}, legacy=True)
            print(f"[sfg_run] {self.model_dir} has no {provenance.RUN_RECORD_FILE} (an older sfg-keras trained it): "
                  f"the {len(trained)} Training subjects of {split_file} count as trained on; files are not "
                  "fingerprinted, so copies of them under other names are not recognised.")
        self._record = record
        return record

    def legacy_training_subjects(self) -> list[str]:
        """Training subjects recorded by an older version in the application's own files (default: none)."""
        return []

    def choose_inference_subjects(self, found: dict[str, dict[str, str]]) -> list[str]:
        """The subjects of `[INFERENCE] dataset_to_infer` among `found` (`{subject: {section: file}}`), checked
        against the run record (see `sfg_keras.engine.provenance`); their provenance is kept for
        `provenance_columns`.

        Raises:
            TrainedSubjectError: a subject to infer as held out was trained on, or the split file lists a training
                subject in another phase (nothing is written).
            ValueError: no subject to infer.
        """
        record = self.run_record()
        other_folder = self.input_dir is not None
        if not other_folder and not record.legacy:
            for note in provenance.check_split_file(record, self.settings.system.dataset_split_file, "inference"):
                print(f"[sfg_run] {note}")
        chosen = provenance.choose_subjects(
            record, found, self.settings.multitask.image, self.settings.inference.dataset_to_infer, other_folder,
            self.digest, str(self.settings.config_path),
        )
        self.chosen_subjects = {item.subject: item for item in chosen}
        trained = [item.subject for item in chosen if item.trained_on]
        where = f"[INFERENCE] input_dir {self.input_dir}" if other_folder else "the input sections"
        print(f"[sfg_run] inference of {len(chosen)} subjects from {where} "
              f"({provenance.describe_phases(record, [c.subject for c in chosen], other_folder)})"
              + (f"; {len(trained)} trained on, on purpose: their predictions are marked trained_on = yes and "
                 "evaluation leaves them out" if trained else ""))
        return [item.subject for item in chosen]

    def provenance_columns(self, subject: str) -> dict[str, str]:
        """The `inferred.csv` provenance columns of a subject chosen by `choose_inference_subjects` (empty values
        for a subject it did not choose)."""
        item = self.chosen_subjects.get(subject)
        return item.columns() if item is not None else dict.fromkeys(provenance.PROVENANCE_COLUMNS, "")

    def evaluation_subjects(self, rows: list[dict], found: dict[str, dict[str, str]], inferred_path: Path
                            ) -> list[dict]:
        """The rows of `inferred.csv` to score, checked against the files found now and the run record.

        A row whose subject was trained on is left out (said once) when inference marked it `trained_on = yes`, and
        refused otherwise; a row predicted from another file than the subject's input found now is refused.

        Raises:
            ValueError: a subject without files, predictions of another file, or nothing left to score.
            TrainedSubjectError: a trained-on subject not marked as such.
        """
        record = self.run_record()
        other_folder = self.input_dir is not None
        image = self.settings.multitask.image
        index = record.content_index()
        where = f"[INFERENCE] input_dir {self.input_dir}" if other_folder else "the input sections"
        kept, skipped, leaks, changed, missing = [], [], [], [], []
        unchecked = 0
        for row in rows:
            subject = str(row["subject"])
            files = found.get(subject)
            if files is None:
                missing.append(subject)
                continue
            recorded = (row.get("input_sha256") or "").strip()
            if not recorded:
                unchecked += 1
            elif image in files and self.digest(files[image]) != recorded:
                changed.append(f"'{subject}': predicted from a file with SHA-256 {recorded[:12]}..., but its [{image}] "
                               f"file found now is {files[image]} (SHA-256 {self.digest(files[image])[:12]}...)")
            reason = provenance.trained_reason(record, subject, files, other_folder, self.digest, index)
            if not reason:
                kept.append(row)
            elif str(row.get("trained_on", "")).strip().lower() == "yes":
                skipped.append(subject)
            else:
                leaks.append(f"'{subject}': {reason}")
        if missing:
            raise ValueError(
                f"{inferred_path}: {len(missing)} inferred subject(s) are not found in {where}: "
                f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}; expected the input and reference "
                "files of every inferred subject (evaluate with the [INFERENCE] input_dir inference used)."
            )
        if changed:
            raise ValueError(
                f"{inferred_path}: {len(changed)} prediction(s) were made from other files than the ones evaluation "
                f"finds in {where}; scoring them against these references would mix subjects:\n{bullet_list(changed)}"
                "\nEvaluate with the data inference used (the same input sections or [INFERENCE] input_dir), or run "
                "inference again."
            )
        if leaks:
            raise TrainedSubjectError(
                f"{inferred_path}: the model was trained on {len(leaks)} subject(s) whose predictions are not marked "
                "trained_on = yes; their scores would not measure generalisation, and nothing was written:\n"
                f"{bullet_list(leaks)}\nRun inference again (it marks or refuses trained-on subjects)."
            )
        if unchecked:
            print(f"[sfg_run] WARNING: {inferred_path} has no input_sha256 for {unchecked} subject(s) (written by an "
                  "older sfg-keras): evaluation cannot check they were predicted from the files it finds now.",
                  file=sys.stderr)
        if skipped:
            print(f"[sfg_run] evaluation leaves out {len(skipped)} subject(s) the model was trained on (inferred on "
                  f"purpose, trained_on = yes): {', '.join(skipped[:10])}{' ...' if len(skipped) > 10 else ''}")
        if not kept:
            raise TrainedSubjectError(
                f"{inferred_path}: nothing to score: the model was trained on every inferred subject. Infer held-out "
                "subjects (dataset_to_infer = '' or validation, or [INFERENCE] input_dir = a folder of new subjects)."
            )
        return kept

    def augmentation_ranges(self) -> tuple[float, float]:
        """`(scale, degrees)`: the largest absolute `[TRAINING] scaling_percentage` (as a fraction) and
        `rotation_angle`; both 0 without augmentation."""
        training = self.settings.training
        scale = max((abs(v) for v in training.scaling_percentage), default=0.0) / 100.0
        degrees = max((abs(v) for v in training.rotation_angle), default=0.0)
        if scale >= 1.0:
            raise self.config_error(
                "TRAINING", "scaling_percentage", training.scaling_percentage, "expected values within (-100, 100)"
            )
        return scale, degrees

    # === Data ===

    def prepare(self, fit: bool) -> None:  # noqa: B027 (optional hook: the default reads nothing)
        """Reads and checks the inputs, then fits and saves (`fit=True`) or loads the normalisation.

        Called once by the engine before any dataset hook. Raise `ValueError` / `FileNotFoundError` naming the file
        for bad inputs; write nothing before every check passed.
        """

    @abc.abstractmethod
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one network input without the batch axis, e.g. `(200, 200, 3)`."""
        raise ConfigError(f"{type(self).__name__} does not define input_shape().")

    def export_input_shape(self) -> tuple[int | None, ...]:
        """Network input shape of the exported signatures (without batch); spatial sizes may be None."""
        return self.input_shape()

    def serving_preprocessor(self) -> ServingPreprocessor | None:
        """How an exported model turns a raw request into the network input, or None (requests are already
        normalised network inputs).

        Build it from the normalisation saved at training time (read the files here: `prepare` is not called by
        export) as a serialisable `sfg_keras.serving.ServingPreprocessor` layer holding its constants in its config
        (`VolumePreprocessor`, `ImagePreprocessor`, or your own subclass), so that every exported signature and
        `.keras` file reproduces the application's own input pipeline: a request then holds the input as a user
        has it (decoded pixels, MR intensities).

        Returns:
            A `sfg_keras.serving.ServingPreprocessor`, or None.

        Example:

        ```python
        def serving_preprocessor(self):
            statistics = json.loads((self.model_dir / "image_statistics.json").read_text())
            return ImagePreprocessor((64, 64), mean=statistics["mean"], std=statistics["std"])
        ```
        """
        return None

    @abc.abstractmethod
    def training_dataset(self, first_batch: int):
        """Infinite, batched `tf.data.Dataset` of `(images, {task: target})` starting at batch `first_batch`.

        Batch `k` must depend only on `[SYSTEM] seed` and `k` (see `sfg_keras.data.example_order`), so that a run
        resumed at batch `k` sees what the uninterrupted run saw.
        """
        raise ConfigError(f"{type(self).__name__} does not define training_dataset().")

    def validation_dataset(self):
        """Batched, repeated validation dataset in a fixed order, or None without a validation split."""
        return None

    def regression_scale(self, task: TaskSpec) -> float:
        """Factor from the network's regression target to the reported unit (e.g. 100 for age / 100)."""
        return 1.0

    def regression_offset(self, task: TaskSpec) -> float:
        """Offset of the reported unit: `value = regression_scale(task) * y + regression_offset(task)` (e.g. -1024
        for CT in HU from the target `HU / 1024 + 1`)."""
        return 0.0

    def regression_unit(self, task: TaskSpec) -> str:
        """Name of the reported unit of a regression task (e.g. `"HU"`), `""` when it has none."""
        return ""

    def default_output_bounds(self, task: TaskSpec) -> tuple[float | None, float | None] | None:
        """The physical range a regression task's outputs are bounded to unless `[INFERENCE] output_bounds` says
        otherwise (e.g. -1024..3071 HU for CT), or None."""
        return None

    def physical_outputs(self) -> dict[str, PhysicalOutput]:
        """Per regression task its `PhysicalOutput`: unit mapping (`regression_scale`, `regression_offset`,
        `regression_unit`) and range (`[INFERENCE] output_bounds`, else `default_output_bounds`). `sfg_run
        inference` and every exported signature and `.keras` file bound the outputs with it.

        Example:

        ```python
        app.physical_outputs()["ct"].describe()   # "ct in HU = 1024 * y - 1024, bounded to [-1024, 3071]"
        ```
        """
        regression = [task for task in self.tasks if task.type == "regression"]
        try:
            configured = parse_output_bounds(self.settings.inference.output_bounds, [t.name for t in regression])
        except ValueError as error:
            raise self.config_error("INFERENCE", "output_bounds", self.settings.inference.output_bounds,
                                    str(error)) from None
        outputs = {}
        for task in regression:
            bounds = configured[task.name] if task.name in configured else self.default_output_bounds(task)
            low, high = bounds if bounds is not None else (None, None)
            outputs[task.name] = PhysicalOutput(
                task.name, scale=self.regression_scale(task), offset=self.regression_offset(task),
                unit=self.regression_unit(task), minimum=low, maximum=high,
            )
        return outputs

    def describe_batch(self, batch: int) -> str:
        """What training batch `batch` (0-based, as in `training_dataset`) holds, e.g. its files, for messages about
        a bad step; "" when unknown."""
        return ""

    def num_training_examples(self) -> int | None:
        """How many examples training draws its batches from (after `prepare`), or None when unknown; a larger
        `[NETWORK] batch_size` is refused."""
        return None

    def describe_training_examples(self) -> str:
        """What the training examples are, for messages (e.g. "273 axial slices of 7 subjects")."""
        return ""

    def training_files(self) -> list[str]:
        """The files the normalisation and training statistics were fitted on (after `prepare`); a resume compares
        their fingerprint with the one recorded at the start. Empty when the application fits nothing."""
        return []

    # === Inference and evaluation ===

    @abc.abstractmethod
    def inference_inputs(self) -> Iterable[InferenceInput]:
        """The units to predict, in order (after `prepare(fit=False)`)."""
        raise ConfigError(f"{type(self).__name__} does not define inference_inputs().")

    @abc.abstractmethod
    def write_outputs(self, item: InferenceInput, predictions: dict) -> list[Path]:
        """Writes the predictions of one unit (`{task: {key: array}}`, see `sfg_keras.inference.predict`)."""
        raise ConfigError(f"{type(self).__name__} does not define write_outputs().")

    def finish_inference(self, written: list[Path]) -> list[Path]:
        """Called after the last unit, with every file written so far; returns the files it writes (a table)."""
        return []

    @abc.abstractmethod
    def evaluate(self) -> list[Path]:
        """Compares written outputs with references; returns the CSV files written."""
        raise ConfigError(f"{type(self).__name__} does not define evaluate().")

    def report_figures(self) -> list:
        """Application sections of the HTML report (`sfg_run report`): `[(heading, [(caption, figure), ...])]`
        with matplotlib figures (or PNG bytes), e.g. views of the inferred outputs. Defaults to none."""
        return []

    # === Paths ===

    @property
    def output_dir(self) -> Path:
        """`[INFERENCE] save_seg_dir`."""
        return Path(self.settings.inference.save_seg_dir)

    @property
    def evaluation_dir(self) -> Path:
        """`[EVALUATION] save_csv_dir`."""
        return Path(self.settings.evaluation.save_csv_dir)
