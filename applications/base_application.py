"""`BaseApplication`: what every sfg_run application shares (model, training driver, inference, export, analysis).

An application turns settings into data and outputs: it matches input files, splits subjects, learns and applies
normalisation, builds the `tf.data` pipelines and writes predictions and metric tables. Everything that does not
depend on the data lives here: building and compiling the network from `[NETWORK]`, `[MULTITASK]` and `[SFG]`,
the training loop with validation, checkpoints, resumption and TensorBoard, loading a checkpoint for inference,
export and the grouping analysis.

Subclasses implement `input_shape`, `training_dataset`, `validation_dataset`, `infer` and `evaluate`, and may add
an application section through `APP_SECTIONS` (a mapping `{SECTION: [KeySpec, ...]}`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import keras
import tensorflow as tf

from sfg_keras.config import ConfigError, Settings, TaskSpec
from sfg_keras.layers import BatchStatisticsNormalization, TemperatureSchedule
from sfg_keras.losses import get_loss
from sfg_keras.metrics import MaskedAccuracy, MaskedMeanAbsoluteError, MeanDice
from sfg_keras.models import ARCHITECTURES, SFGNetwork, TaskHead
from sfg_keras.training.checkpoints import PeriodicCheckpoint, find_checkpoint


def _import_dotted(path: str, what: str):
    module_name, _, attribute = path.rpartition(".")
    if not module_name:
        raise ConfigError(f"{what} {path!r} is neither a built-in name nor a dotted path 'package.module.name'.")
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"{what} {path!r}: cannot import module {module_name!r} ({error}).") from error
    if not hasattr(module, attribute):
        raise ConfigError(f"{what} {path!r}: module {module_name!r} has no attribute {attribute!r}.")
    return getattr(module, attribute)


class BaseApplication:
    """Base class of the sfg_run applications.

    Args:
        settings: the resolved `Settings` of the run.

    Example:

    ```python
    settings = load_settings("configs/demo_mr_ct.ini", action="train", extra_sections=MRCTApplication.APP_SECTIONS)
    MRCTApplication(settings).train()
    ```
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

    # === Hooks for subclasses ===

    def check_settings(self) -> None:
        """Validates application-specific settings (raise `ConfigError`)."""

    def input_shape(self) -> tuple[int, ...]:
        """Shape of one network input without the batch axis, e.g. `(200, 200, 3)`."""
        raise ConfigError(f"{type(self).__name__} does not define input_shape().")

    def training_dataset(self, seed: int) -> tf.data.Dataset:
        """Infinite, batched `tf.data.Dataset` of `(images, {task: target})` for training."""
        raise ConfigError(f"{type(self).__name__} does not define training_dataset().")

    def validation_dataset(self) -> tf.data.Dataset | None:
        """Batched validation dataset, or None when there is no validation split."""
        return None

    def infer(self, model: SFGNetwork) -> list[Path]:
        """Runs inference with `model` and writes the outputs; returns the files written."""
        raise ConfigError(f"{type(self).__name__} does not define infer().")

    def evaluate(self) -> list[Path]:
        """Compares written outputs with references; returns the CSV files written."""
        raise ConfigError(f"{type(self).__name__} does not define evaluate().")

    def regression_scale(self, task: TaskSpec) -> float:
        """Factor from the network's regression target to the reported unit (e.g. 100 for age / 100)."""
        return 1.0

    # === Paths ===

    @property
    def checkpoint_dir(self) -> Path:
        return self.model_dir / "models"

    @property
    def log_dir(self) -> Path:
        return self.model_dir / "logs"

    @property
    def output_dir(self) -> Path:
        return Path(self.settings.inference.save_seg_dir)

    @property
    def evaluation_dir(self) -> Path:
        return Path(self.settings.evaluation.save_csv_dir)

    # === Model ===

    def task_heads(self) -> list[TaskHead]:
        return [TaskHead(task.name, task.type, int(task.num_classes)) for task in self.tasks]

    def strategy(self) -> tf.distribute.Strategy:
        mode = self.settings.system.distribute
        if mode == "mirrored":
            return tf.distribute.MirroredStrategy()
        if mode == "multi_worker":
            raise ConfigError(
                f"{self.settings.config_path}: [SYSTEM] distribute = multi_worker: Keras 3.15's model.fit fails under "
                "MultiWorkerMirroredStrategy (keras-team/keras#20329); use 'mirrored' on one machine."
            )
        return tf.distribute.get_strategy()

    def configure_runtime(self) -> None:
        """Applies `[SYSTEM]` runtime settings: seed, threads, mixed precision."""
        system = self.settings.system
        keras.utils.set_random_seed(int(system.seed))
        if system.num_threads > 0:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(system.num_threads)
                tf.config.threading.set_inter_op_parallelism_threads(system.num_threads)
            except RuntimeError:
                pass  # already initialised in this process; the setting only applies before the first op
        if system.cuda_devices:
            wanted = {int(i) for i in str(system.cuda_devices).split(",") if i.strip()}
            gpus = tf.config.list_physical_devices("GPU")
            try:
                tf.config.set_visible_devices([g for i, g in enumerate(gpus) if i in wanted], "GPU")
            except RuntimeError:
                pass  # devices already initialised in this process: CUDA_VISIBLE_DEVICES must be set before start
        policy = system.mixed_precision
        keras.config.set_dtype_policy("float32" if policy == "none" else policy)

    def build_model(self) -> SFGNetwork:
        """The network of `[NETWORK] name` with the tasks of `[MULTITASK]` and the method of `[SFG]`."""
        network, sfg = self.settings.network, self.settings.sfg
        builder = ARCHITECTURES.get(network.name) or _import_dotted(network.name, "[NETWORK] name")
        model = builder(
            self.task_heads(),
            width_multiplier=network.width_multiplier,
            grouping=sfg.grouping,
            p0=list(sfg.p0) or None,
            init_mode=sfg.init,
            hard=sfg.hard,
            sampling=sfg.sampling,
            merge=sfg.merge,
            activation=network.activation_function,
            inference_statistics=network.batch_norm,
            lambda1=sfg.lambda1,
            lambda2=sfg.lambda2,
            temperature_schedule=TemperatureSchedule.for_run(
                int(self.settings.training.max_iter),
                tau0=sfg.tau0,
                tau_min=sfg.tau_min,
                tau_decay=sfg.tau_decay,
                tau_decay_until=sfg.tau_decay_until,
                sampling_warmup=sfg.sampling_warmup,
            ),
            seed=int(self.settings.system.seed),
            grouping_lr_multiplier=sfg.grouping_lr_multiplier,
        )
        model.build((None, *self.input_shape()))
        return model

    def optimizer(self) -> keras.optimizers.Optimizer:
        training = self.settings.training
        lr = training.lr
        return {
            "adam": lambda: keras.optimizers.Adam(lr),
            "adamw": lambda: keras.optimizers.AdamW(lr),
            "sgd": lambda: keras.optimizers.SGD(lr),
            "momentum": lambda: keras.optimizers.SGD(lr, momentum=0.9),
            "rmsprop": lambda: keras.optimizers.RMSprop(lr),
        }[training.optimiser]()

    def task_metrics(self, task: TaskSpec) -> list:
        if task.type == "regression":
            return [MaskedMeanAbsoluteError(scale=self.regression_scale(task), name="mae")]
        if task.type == "classification":
            return [MaskedAccuracy(name="accuracy")]
        return [MeanDice(int(task.num_classes), name="dice"), MaskedAccuracy(name="accuracy")]

    def compile_model(self, model: SFGNetwork) -> None:
        model.compile(
            optimizer=self.optimizer(),
            loss={task.name: get_loss(task.loss) for task in self.tasks},
            loss_weights={task.name: float(task.weight) for task in self.tasks},
            metrics={task.name: self.task_metrics(task) for task in self.tasks},
            jit_compile=bool(self.settings.system.jit_compile),
            steps_per_execution=int(self.settings.training.steps_per_execution),
        )

    def load_checkpoint(self, step: int = -1) -> tuple[SFGNetwork, int]:
        """Loads the checkpoint of `step` (-1: latest) with its optimizer; returns the model and its iteration."""
        path = find_checkpoint(self.checkpoint_dir, step)
        if path is None:
            raise FileNotFoundError(
                f"No checkpoint in {self.checkpoint_dir}: train first (sfg_run train -c {self.settings.config_path})."
            )
        model = keras.models.load_model(path)
        iteration = int(model.optimizer.iterations.numpy()) if model.optimizer is not None else int(path.stem[6:])
        # `[NETWORK] batch_norm` decides the inference statistics of this run, whatever the checkpoint was built with.
        for layer in model._flatten_layers(include_self=False, recursive=True):
            if isinstance(layer, BatchStatisticsNormalization):
                layer.inference_statistics = self.settings.network.batch_norm
        return model, iteration

    # === Actions ===

    def train(self) -> SFGNetwork:
        """Trains for `[TRAINING] max_iter` steps with validation, checkpoints and TensorBoard logs.

        `starting_iter = -1` resumes from the latest checkpoint (same step count, temperature and optimizer
        state); `starting_iter = 0` starts afresh and refuses to overwrite existing checkpoints.
        """
        self.configure_runtime()
        training = self.settings.training
        strategy = self.strategy()
        existing = find_checkpoint(self.checkpoint_dir, -1)
        with strategy.scope():
            if training.starting_iter == 0:
                if existing is not None:
                    raise FileExistsError(
                        f"{self.checkpoint_dir} already holds checkpoints (latest {existing.name}). Resume with "
                        "--starting_iter=-1, or choose another [SYSTEM] model_dir."
                    )
                model = self.build_model()
                self.compile_model(model)
                start = 0
            else:
                if existing is None and training.starting_iter == -1:
                    model = self.build_model()
                    self.compile_model(model)
                    start = 0
                else:
                    model, start = self.load_checkpoint(training.starting_iter)
        max_iter = int(training.max_iter)
        if start >= max_iter:
            print(f"Already trained to iteration {start} (max_iter = {max_iter}); nothing to do.")
            return model
        validation = self.validation_dataset() if training.validation_every_n > 0 else None
        period = int(training.validation_every_n) if training.validation_every_n > 0 else min(max_iter, 100)
        callbacks = [
            PeriodicCheckpoint(self.checkpoint_dir, training.save_every_n, training.max_checkpoints),
        ]
        if training.tensorboard_every_n > 0:
            from sfg_keras.training.grouping_logger import GroupingLogger

            callbacks.append(
                keras.callbacks.TensorBoard(str(self.log_dir), update_freq=int(training.tensorboard_every_n))
            )
            callbacks.append(
                GroupingLogger(str(self.log_dir), every_n_steps=int(training.tensorboard_every_n),
                               task_names=[t.name for t in self.tasks])
            )
        self.write_run_info(model)
        step = start
        while step < max_iter:
            epoch = step // period
            chunk_end = min(max_iter, (epoch + 1) * period)
            dataset = self.training_dataset(seed=int(self.settings.system.seed) + step)
            model.fit(
                dataset,
                steps_per_epoch=chunk_end - step,
                initial_epoch=epoch,
                epochs=epoch + 1,
                validation_data=validation,
                validation_steps=int(training.validation_max_iter) if validation is not None else None,
                callbacks=callbacks,
                shuffle=False,  # the datasets shuffle themselves
                verbose=1 if os.environ.get("SFG_QUIET") != "1" else 2,
            )
            step = int(model.optimizer.iterations.numpy())
        return model

    def write_run_info(self, model: SFGNetwork) -> None:
        self.model_dir.mkdir(parents=True, exist_ok=True)
        info = {
            "network": self.settings.network.name,
            "grouping": self.settings.sfg.grouping,
            "tasks": [t.name for t in self.tasks],
            "trainable_parameters": int(sum(math.prod(v.shape) for v in model.trainable_weights)),
            "parameters": int(model.count_params()),
            "input_shape": list(self.input_shape()),
        }
        (self.model_dir / "model_info.json").write_text(json.dumps(info, indent=2))

    def inference(self) -> list[Path]:
        """Loads the `[INFERENCE] inference_iter` checkpoint and writes predictions."""
        self.configure_runtime()
        model, iteration = self.load_checkpoint(int(self.settings.inference.inference_iter))
        print(f"Inference with the checkpoint of iteration {iteration} "
              f"({self.settings.inference.inference_mode}, num_samples = {self.settings.inference.num_samples}).")
        written = self.infer(model)
        print(f"Wrote {len(written)} files to {self.output_dir}")
        return written

    def evaluation(self) -> list[Path]:
        """Evaluates the inferred outputs and writes per-subject and summary CSVs."""
        written = self.evaluate()
        for path in written:
            print(f"Wrote {path}")
        return written

    def export(self) -> dict:
        """Exports the inference checkpoint as versioned SavedModels (MC and MAP signatures), a `.keras` file and
        the compact MAP model, under `model_dir/export/`."""
        from sfg_keras.export import export_model

        self.configure_runtime()
        model, iteration = self.load_checkpoint(int(self.settings.inference.inference_iter))
        export_dir = self.model_dir / "export"
        version = 1
        while (export_dir / "sfg" / str(version)).exists():
            version += 1
        written = export_model(
            model,
            export_dir,
            name="sfg",
            version=version,
            num_samples=int(self.settings.inference.num_samples),
            input_shape=(None, *self.export_input_shape()),
        )
        print(f"Exported iteration {iteration} as version {version} to {export_dir}")
        return written

    def export_input_shape(self) -> tuple[int | None, ...]:
        """Input shape of the exported signatures (without batch); spatial sizes may be None."""
        return self.input_shape()

    def analyse(self) -> dict:
        """Writes PNG plots of the learned grouping, p trajectories and per-layer summaries to `model_dir/analysis`."""
        from sfg_keras.analysis.report import write_grouping_report

        self.configure_runtime()
        model, iteration = self.load_checkpoint(int(self.settings.inference.inference_iter))
        history = self.log_dir / "grouping_history.npz"
        written = write_grouping_report(
            model, self.model_dir / "analysis", history_path=history if history.exists() else None
        )
        print(f"Analysed iteration {iteration}: {len(written)} files in {self.model_dir / 'analysis'}")
        return written
