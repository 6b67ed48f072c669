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

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from sfg_keras.config import ConfigError, Settings, TaskSpec
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


class BaseApplication:
    """Base class of the sfg_run applications: the data and output hooks the engine calls.

    Args:
        settings: the resolved `Settings` of the run.

    Subclasses set `name` and `APP_SECTIONS` (a mapping `{SECTION: [KeySpec, ...]}` of the sections they read) and
    implement the hooks below; see the module docstring for the order the engine calls them in.
    """

    #: Application sections this application reads: `{SECTION: [KeySpec, ...]}`.
    APP_SECTIONS: dict = {}
    #: Name used in messages.
    name = "application"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.model_dir = Path(settings.system.model_dir)
        self.tasks: list[TaskSpec] = settings.task_specs()
        self.check_settings()

    # === Settings ===

    def check_settings(self) -> None:
        """Validates application-specific settings (raise `ConfigError` naming section, key and value)."""

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
        return make_or_load_split(
            subjects, self.settings.system.dataset_split_file,
            fractions=(1.0 - validation - inference, validation, inference), seed=self.seed,
        )

    @staticmethod
    def subjects_of(split: dict[str, str], phase: str) -> list[str]:
        """The sorted subjects of one phase of `split` (`Training`, `Validation` or `Inference`)."""
        return sorted(subject for subject, value in split.items() if value == phase)

    def training_subjects(self, split: dict[str, str]) -> list[str]:
        """The Training subjects used: a seeded `[TRAINING] training_fraction` of the Training split."""
        from sfg_keras.data.split import subsample_training

        return subsample_training(split, float(self.settings.training.training_fraction), seed=self.seed)

    def subjects_to_infer(self, split: dict[str, str]) -> list[str]:
        """The subjects of `[INFERENCE] dataset_to_infer` (`all`, or one phase; empty = the Inference split)."""
        choice = self.settings.inference.dataset_to_infer
        if choice == "all":
            return sorted(split)
        phase = PHASE_OF_DATASET[choice]
        chosen = self.subjects_of(split, phase)
        if not chosen:
            raise self.config_error(
                "INFERENCE", "dataset_to_infer", choice,
                f"the split {self.settings.system.dataset_split_file} has no '{phase}' subject; expected a phase "
                "with subjects in it, or dataset_to_infer = all",
            )
        return chosen

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

    def prepare(self, fit: bool) -> None:
        """Reads and checks the inputs, then fits and saves (`fit=True`) or loads the normalisation.

        Called once by the engine before any dataset hook. Raise `ValueError` / `FileNotFoundError` naming the file
        for bad inputs; write nothing before every check passed.
        """

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

    def training_files(self) -> list[str]:
        """The files the normalisation and training statistics were fitted on (after `prepare`); a resume compares
        their fingerprint with the one recorded at the start. Empty when the application fits nothing."""
        return []

    # === Inference and evaluation ===

    def inference_inputs(self) -> Iterable[InferenceInput]:
        """The units to predict, in order (after `prepare(fit=False)`)."""
        raise ConfigError(f"{type(self).__name__} does not define inference_inputs().")

    def write_outputs(self, item: InferenceInput, predictions: dict) -> list[Path]:
        """Writes the predictions of one unit (`{task: {key: array}}`, see `sfg_keras.inference.predict`)."""
        raise ConfigError(f"{type(self).__name__} does not define write_outputs().")

    def finish_inference(self, written: list[Path]) -> list[Path]:
        """Called after the last unit, with every file written so far; returns the files it writes (a table)."""
        return []

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
