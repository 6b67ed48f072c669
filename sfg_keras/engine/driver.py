"""`Driver`: the sfg_run engine. Everything an action does that does not depend on the data.

The driver owns runtime setup (seed, threads, devices, mixed precision), the distribution strategy, building the
network from one `NetworkOptions`, compiling, the training loop as ONE `model.fit` over `max_iter` optimizer steps
(validation, checkpoints, TensorBoard and grouping logs are callbacks), resumption, the `model_dir` lock, inference
dispatch, export and analysis. The application (`BaseApplication`) supplies data and writes outputs through hooks.

Runs you can trust:

* A resumed run equals the uninterrupted one: the checkpoint holds the weights, the optimizer state and the SFG
  layers' seed-generator states, and the data pipeline restarts at the checkpoint's batch (`training_dataset(k)`).
* A resume applies changed learning rate, optimiser, `max_iter`, schedule and logging settings, logged, and refuses
  any other change naming the keys (`sfg_keras.engine.run_record`).
* `model_dir` is locked while training (`ModelDirLock`).
* A refused or failed start writes nothing: checks run before the first write, and files created while the run was
  being set up are removed if setting up fails.
* Provenance (`sfg_keras.engine.provenance`, `sfg_keras.training.checkpoints`): `run_record.json` keeps the split and
  the training subjects' fingerprints; `lineage.json` which run wrote each checkpoint from which parent, with its
  SHA-256. A resume or inference uses the newest checkpoint that matches its record (warning about any other);
  `starting_iter = N` refuses later checkpoints unless `archive_branch` moves them aside; inference writes
  `inference_record.json` next to its predictions. Every action starts by removing temporary files that killed runs
  left (`sfg_keras.io.atomic.remove_stale_temporary_files`) and says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import keras
import tensorflow as tf

from sfg_keras.config import ConfigError, write_settings
from sfg_keras.engine import multi_worker
from sfg_keras.engine.application import BaseApplication
from sfg_keras.engine.lock import ModelDirLock, check_model_dir
from sfg_keras.engine.provenance import INFERENCE_RECORD_FILE, RunRecord, relative_to
from sfg_keras.engine.run_record import check_resume, read_record, write_record
from sfg_keras.io.atomic import atomic_write_bytes, atomic_write_json, remove_stale_temporary_files
from sfg_keras.io.input_checks import SCAN_CACHE_FILE, bullet_list, files_fingerprint, fingerprint_changes
from sfg_keras.keras_adapter import flatten_layers
from sfg_keras.layers import BatchStatisticsNormalization
from sfg_keras.losses import get_loss
from sfg_keras.metrics import MaskedAccuracy, MaskedMeanAbsoluteError, MeanDice
from sfg_keras.models import ARCHITECTURES, NetworkOptions, SFGNetwork, TaskHead, build_network
from sfg_keras.physical_outputs import bound_predictions
from sfg_keras.training.checkpoints import (
    CHECKPOINT_DIR,
    CORRUPT_DIR,
    CheckpointLineage,
    PeriodicCheckpoint,
    check_branch_name,
    checkpoint_step,
    find_checkpoint,
    list_checkpoints,
    select_checkpoint,
)

TRAINING_FILES_FILE = "training_files.json"  # the fingerprint of the files the normalisation was fitted on

OPTIMIZERS = {
    "adam": lambda lr: keras.optimizers.Adam(lr),
    "adamw": lambda lr: keras.optimizers.AdamW(lr),
    "sgd": lambda lr: keras.optimizers.SGD(lr),
    "momentum": lambda lr: keras.optimizers.SGD(lr, momentum=0.9),
    "rmsprop": lambda lr: keras.optimizers.RMSprop(lr),
}


def _optimizer_name(optimizer: keras.optimizers.Optimizer) -> str:
    name = type(optimizer).__name__.lower()
    if name == "sgd" and float(getattr(optimizer, "momentum", 0.0) or 0.0) > 0:
        return "momentum"
    return name


def _import_dotted(path: str, what: str):
    module_name, _, attribute = path.rpartition(".")
    if not module_name:
        raise ConfigError(
            f"{what} = {path!r}: expected one of {sorted(ARCHITECTURES)} or a dotted path 'package.module.builder'."
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"{what} = {path!r}: cannot import module {module_name!r} ({error}).") from error
    if not hasattr(module, attribute):
        raise ConfigError(f"{what} = {path!r}: module {module_name!r} has no attribute {attribute!r}.")
    return getattr(module, attribute)


def warn(message: str) -> None:
    """Prints a warning of the run on stderr."""
    print(f"[sfg_run] WARNING: {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class ResumePlan:
    """Where training continues from, and what must be moved out of the way first (after every check passed).

    Attributes:
        resume_from: the checkpoint to load, or None (from scratch).
        invalid: checkpoint files that cannot be trusted (`CheckpointLineage.problem`), set aside into
            `models/corrupt/`.
        archive: later checkpoints of another history moved to `branches/<archive_branch>/models/`.
        archive_branch: the branch name.
    """

    resume_from: Path | None = None
    invalid: list[tuple[Path, str]] = dataclasses.field(default_factory=list)
    archive: list[Path] = dataclasses.field(default_factory=list)
    archive_branch: str | None = None


@contextlib.contextmanager
def _remove_created_on_failure(folders: list[Path], files: list[Path], restored: list[Path] = ()):
    """Removes the files and folders created inside the block (under `folders`, or in `files`) if it raises, and
    puts back the content of the `restored` files (caches the block may rewrite); never touches anything else that
    existed before it."""
    contents = {path: path.read_bytes() for path in restored if path.is_file()}

    def snapshot():
        found = {path for path in files if path.exists()}
        for folder in folders:
            if folder.is_dir():
                found.update(folder.rglob("*"))
                found.add(folder)
        return found

    before = snapshot()
    try:
        yield
    except BaseException:
        created = snapshot() - before
        for path in sorted(created, key=lambda p: len(p.parts), reverse=True):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        for path, content in contents.items():
            if not path.is_file() or path.read_bytes() != content:
                atomic_write_bytes(path, content)
        raise


class Driver:
    """Runs the sfg_run actions of one application.

    Args:
        application: the application instance (its `settings` decide everything).
        progress: what the training progress bar shows: `"tasks"` (task losses and metrics, `loss`, `temperature`)
            or `"all"` (also the internal terms; `sfg_run train --progress=all`). Defaults to `"tasks"`.

    Example:

    ```python
    settings = load_settings("configs/demo_mr_ct.ini", action="train",
                             extra_sections=MRCTApplication.APP_SECTIONS)
    Driver(MRCTApplication(settings)).train()
    ```
    """

    def __init__(self, application: BaseApplication, progress: str = "tasks"):
        self.application = application
        self.progress = progress
        self.settings = application.settings
        self.tasks = application.tasks
        self.model_dir = Path(self.settings.system.model_dir)
        self.worker: multi_worker.WorkerRole | None = None  # this process's role in a multi-worker run
        self.loaded_checkpoint: Path | None = None  # the checkpoint file `load_checkpoint` loaded
        self._strategy: tf.distribute.Strategy | None = None

    @property
    def checkpoint_dir(self) -> Path:
        return self.model_dir / CHECKPOINT_DIR

    @property
    def log_dir(self) -> Path:
        return self.model_dir / "logs"

    def run(self, action: str):
        """Runs `action` (`train`, `inference`, `evaluation`, `export`, `analyse` or `report`) and returns its
        result."""
        actions = {"train": self.train, "inference": self.inference, "evaluation": self.evaluation,
                   "export": self.export, "analyse": self.analyse, "report": self.report}
        if action not in actions:
            raise ValueError(f"`action` must be one of {sorted(actions)}. Received: action={action!r}")
        return actions[action]()

    # === Runtime ===

    def configure_runtime(self) -> None:
        """Applies `[SYSTEM]` runtime settings: seed, threads, visible GPUs, mixed precision; for training with
        `distribute = multi_worker`, reads `TF_CONFIG` and creates the strategy (it must precede any other op).

        Raises:
            ConfigError: `distribute = multi_worker` for training without a valid `TF_CONFIG`.
        """
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
        if system.distribute == "multi_worker" and self.settings.action == "train":
            multi_worker.configure_threads(system.num_threads)
            self.strategy()
        policy = system.mixed_precision
        keras.config.set_dtype_policy("float32" if policy == "none" else policy)

    def strategy(self) -> tf.distribute.Strategy:
        """The `[SYSTEM] distribute` strategy (created once per driver).

        `multi_worker` (training only) is the `MultiWorkerMirroredStrategy` of `TF_CONFIG`, created by
        `configure_runtime` (see `sfg_keras.engine.multi_worker`); other actions run on this machine alone.
        """
        if self._strategy is None:
            mode = self.settings.system.distribute
            if mode == "multi_worker" and self.settings.action == "train":
                try:
                    self.worker = multi_worker.parse_tf_config()
                except ConfigError as error:
                    raise ConfigError(f"{self.settings.config_path}: {error}") from None
                self._strategy = multi_worker.create_strategy()
            elif mode == "mirrored":
                self._strategy = tf.distribute.MirroredStrategy()
            else:
                return tf.distribute.get_strategy()
        return self._strategy

    @property
    def is_chief(self) -> bool:
        """Whether this process writes `model_dir`: always, except on the non-chief workers of a multi-worker run."""
        return self.worker is None or self.worker.is_chief

    # === Model ===

    def build_model(self) -> SFGNetwork:
        """The network of `[NETWORK] name` for the `[MULTITASK]` tasks, configured by `NetworkOptions`."""
        name = self.settings.network.name
        builder = ARCHITECTURES.get(name) or _import_dotted(name, "[NETWORK] name")
        heads = [TaskHead(task.name, task.type, int(task.num_classes)) for task in self.tasks]
        return build_network(builder, heads, NetworkOptions.from_settings(self.settings),
                             self.application.input_shape())

    def optimizer(self) -> keras.optimizers.Optimizer:
        """A new `[TRAINING] optimiser` with learning rate `lr`."""
        training = self.settings.training
        return OPTIMIZERS[training.optimiser](training.lr)

    def task_metrics(self, task) -> list:
        """The metrics logged for one task: MAE (in the application's unit), accuracy, mean Dice."""
        if task.type == "regression":
            return [MaskedMeanAbsoluteError(scale=self.application.regression_scale(task), name="mae")]
        if task.type == "classification":
            return [MaskedAccuracy(name="accuracy")]
        return [MeanDice(int(task.num_classes), name="dice"), MaskedAccuracy(name="accuracy")]

    def compile_model(self, model: SFGNetwork, optimizer: keras.optimizers.Optimizer | None = None) -> None:
        """Compiles with the `[MULTITASK]` losses and weights, the task metrics and `optimizer` (a new one when
        None)."""
        model.compile(
            optimizer=optimizer or self.optimizer(),
            loss={task.name: get_loss(task.loss) for task in self.tasks},
            loss_weights={task.name: float(task.weight) for task in self.tasks},
            metrics={task.name: self.task_metrics(task) for task in self.tasks},
            jit_compile=bool(self.settings.system.jit_compile),
            steps_per_execution=int(self.settings.training.steps_per_execution),
        )

    def select_checkpoint(self, step: int = -1) -> Path:
        """The checkpoint of `step`, or for -1 the newest one that matches its lineage record, warning about each
        newer file that does not (a truncated, corrupted, replaced or foreign file).

        Raises:
            FileNotFoundError: no checkpoint (with the train command), or none of iteration `step`.
            ValueError: the checkpoint of `step` is invalid, or none is (naming each file and why).
        """
        lineage = CheckpointLineage(self.model_dir)
        if not list_checkpoints(self.checkpoint_dir):
            raise FileNotFoundError(
                f"No checkpoint in {self.checkpoint_dir}: train first (sfg_run train -c {self.settings.config_path})."
            )
        path, skipped = select_checkpoint(self.checkpoint_dir, int(step), lineage)
        for bad, problem in skipped:
            warn(f"{bad} cannot be used: {problem}. Using {path.name}, the newest valid checkpoint.")
        return path

    def load_checkpoint(self, step: int = -1, path: Path | None = None) -> tuple[SFGNetwork, int]:
        """Loads the checkpoint of `step` (-1: the newest valid one; see `select_checkpoint`), or the file `path`,
        with its optimizer; returns the model and its iteration."""
        path = path if path is not None else self.select_checkpoint(step)
        self.loaded_checkpoint = path
        model = keras.models.load_model(path)
        iteration = int(model.optimizer.iterations.numpy()) if model.optimizer is not None else checkpoint_step(path)
        # `[NETWORK] batch_norm` decides the inference statistics of this run, whatever the checkpoint was built with.
        for layer in flatten_layers(model, include_self=False, recursive=True):
            if isinstance(layer, BatchStatisticsNormalization):
                layer.inference_statistics = self.settings.network.batch_norm
        return model, iteration

    def _resume(self, model: SFGNetwork, applied: list[tuple]) -> None:
        """Applies the current optimiser, learning rate, schedule and compile settings to a loaded model."""
        for section, key, old, new in applied:
            print(f"[sfg_run] resume: [{section}] {key} changed from {old!r} to {new!r}; applied.")
        training = self.settings.training
        optimizer = model.optimizer
        if optimizer is None or _optimizer_name(optimizer) != training.optimiser:
            previous = _optimizer_name(optimizer) if optimizer is not None else "none"
            print(f"[sfg_run] resume: optimiser {previous} -> {training.optimiser} (a new optimizer state; the step "
                  "count continues).")
            iterations = int(optimizer.iterations.numpy()) if optimizer is not None else 0
            optimizer = self.optimizer()
            optimizer.build(model.trainable_variables)
            optimizer.iterations.assign(iterations)
        elif not math.isclose(float(optimizer.learning_rate.numpy()), float(training.lr), rel_tol=1e-6):
            print(f"[sfg_run] resume: learning rate {float(optimizer.learning_rate.numpy()):g} -> {training.lr:g}.")
            optimizer.learning_rate.assign(float(training.lr))
        model.temperature_schedule = NetworkOptions.from_settings(self.settings).temperature_schedule
        self.compile_model(model, optimizer)

    # === Training ===

    def train(self) -> SFGNetwork:
        """Trains to `[TRAINING] max_iter` optimizer steps with one `fit` (validation, checkpoints, TensorBoard).

        `starting_iter = -1` resumes from the latest checkpoint if there is one; `starting_iter = N` from the
        checkpoint of iteration N; `starting_iter = 0` starts afresh and refuses to overwrite existing checkpoints.
        """
        self.configure_runtime()
        check_model_dir(self.model_dir)
        plan = self.resume_plan()
        resume_from = plan.resume_from
        applied = check_resume(read_record(self.model_dir), self.settings, resume_from) if resume_from else []
        if not self.is_chief:  # a multi-worker run's other workers write nothing in model_dir
            return self._train_non_chief(resume_from, applied)
        with ModelDirLock(self.model_dir, action="train"), multi_worker.stop_on_lost_peers(self.worker):
            with _remove_created_on_failure([self.model_dir], [Path(self.settings.system.dataset_split_file)],
                                            restored=[self.model_dir / SCAN_CACHE_FILE]):
                model, start = self._set_up_training(resume_from, applied)
            lineage = self._start_run(plan, start)
            return self._report_worker(self._fit(model, start, lineage))

    def resume_plan(self) -> ResumePlan:
        """Where `train` starts, from `[TRAINING] starting_iter` and the checkpoints (checked, nothing written).

        `-1`: the newest checkpoint that matches its lineage record (newer invalid files are named and set aside);
        `N`: the checkpoint of iteration N, refusing valid later checkpoints (another history) unless
        `archive_branch` names the branch to move them to; `0`: from scratch, refusing existing checkpoints.

        Raises:
            FileExistsError: checkpoints exist for `starting_iter = 0`, or later ones for `N` without
                `archive_branch` (naming them), or the branch folder exists.
            FileNotFoundError, ValueError: the checkpoint of N is missing or invalid, or no checkpoint is valid.
        """
        training = self.settings.training
        checkpoints = list_checkpoints(self.checkpoint_dir)
        starting_iter = int(training.starting_iter)
        branch = str(training.archive_branch or "").strip() or None
        if starting_iter == 0:
            if checkpoints:
                raise FileExistsError(
                    f"{self.checkpoint_dir} already holds checkpoints (latest {checkpoints[max(checkpoints)].name}). "
                    "Resume with --starting_iter=-1, or choose another [SYSTEM] model_dir."
                )
            return ResumePlan()
        if not checkpoints and starting_iter == -1:
            return ResumePlan()
        lineage = CheckpointLineage(self.model_dir)
        resume_from, skipped = select_checkpoint(self.checkpoint_dir, starting_iter, lineage)
        plan = ResumePlan(resume_from, list(skipped))
        for bad, problem in skipped:
            warn(f"{bad} cannot be used: {problem}. Resuming from {resume_from.name}, the newest valid checkpoint; "
                 f"{bad.name} is moved to {self.checkpoint_dir / CORRUPT_DIR}/.")
        if starting_iter > 0:
            for path in (path for step, path in checkpoints.items() if step > starting_iter):
                problem = lineage.problem(path)
                if problem is not None:
                    plan.invalid.append((path, problem))
                    warn(f"{path} cannot be used: {problem}. It is moved to {self.checkpoint_dir / CORRUPT_DIR}/.")
                else:
                    plan.archive.append(path)
            if plan.archive and branch is None:
                runs = sorted({str((lineage.entry(p) or {}).get("run") or "unrecorded") for p in plan.archive})
                raise FileExistsError(
                    f"{self.settings.config_path}: --starting_iter={starting_iter} would continue from "
                    f"{resume_from.name}, but {self.checkpoint_dir} holds later checkpoints of another history: "
                    f"{', '.join(p.name for p in plan.archive)} (run {', '.join(runs)}). Training on from "
                    f"{starting_iter} would mix the two histories (a later resume or inference would pick up "
                    f"{plan.archive[-1].name}). Continue the newest with --starting_iter=-1, keep the later ones "
                    "aside with --archive_branch=NAME (moves them to model_dir/branches/NAME/models/), or train in "
                    "another [SYSTEM] model_dir."
                )
            if plan.archive:
                plan.archive_branch = check_branch_name(branch, self.model_dir)
            elif branch is not None:
                print(f"[sfg_run] no checkpoint after iteration {starting_iter}: [TRAINING] archive_branch = "
                      f"{branch!r} has nothing to move.")
        elif branch is not None:
            print(f"[sfg_run] [TRAINING] archive_branch = {branch!r} applies with starting_iter = N > 0; ignored.")
        return plan

    def _start_run(self, plan: ResumePlan, start: int) -> CheckpointLineage:
        """After a successful set-up: removes leftovers of killed runs, sets invalid checkpoints aside, archives the
        later history, and records the new run in the lineage (chief only)."""
        self.remove_leftovers()
        lineage = CheckpointLineage(self.model_dir)
        if not lineage.recorded:  # checkpoints of an older sfg-keras: recorded as they are
            invalid = {path for path, _ in plan.invalid}
            lineage.adopt([path for path in list_checkpoints(self.checkpoint_dir).values() if path not in invalid])
        if plan.invalid:
            moved = lineage.set_aside([path for path, _ in plan.invalid], self.checkpoint_dir / CORRUPT_DIR)
            print(f"[sfg_run] set aside {len(moved)} invalid checkpoint(s): "
                  f"{', '.join(str(lineage.key(path)) for path in moved)}")
        if plan.archive:
            folder = lineage.archive(plan.archive, plan.archive_branch)
            print(f"[sfg_run] archived the history after iteration {start} ({', '.join(p.name for p in plan.archive)}"
                  f") as branch {plan.archive_branch!r} in {folder}; training continues from "
                  f"{plan.resume_from.name}.")
        lineage.start_run(plan.resume_from, start, int(self.settings.training.max_iter), plan.archive_branch)
        return lineage

    def remove_leftovers(self, *folders: str | os.PathLike) -> None:
        """Removes the temporary files killed runs left in model_dir (and `folders`), saying so."""
        removed = remove_stale_temporary_files([self.model_dir, *folders])
        if removed:
            shown = ", ".join(str(relative_to(path, self.model_dir)) for path in removed[:10])
            print(f"[sfg_run] removed {len(removed)} temporary file(s) left by a killed run: {shown}"
                  f"{' ...' if len(removed) > 10 else ''}", flush=True)

    # === Several machines (`[SYSTEM] distribute = multi_worker`, see sfg_keras.engine.multi_worker) ===

    def _prepare_application(self, fit: bool) -> None:
        """`application.prepare(fit)`; in a multi-worker run the chief prepares (and writes the split and the
        normalisation) first, and the other workers then load what it wrote."""
        if self.worker is None:
            self.application.prepare(fit=fit)
            return
        if self.is_chief:
            self.application.prepare(fit=fit)
        multi_worker.barrier(self.strategy())
        if not self.is_chief:
            self.application.prepare(fit=False)

    def _train_non_chief(self, resume_from: Path | None, applied: list[tuple]) -> SFGNetwork:
        """Training on a non-chief worker: the same steps and callbacks as the chief (their collective reads must
        match), with everything they write redirected to a temporary folder removed at the end."""
        shared_model_dir = self.model_dir
        with multi_worker.stop_on_lost_peers(self.worker):
            model, start = self._set_up_training(resume_from, applied)
            with multi_worker.scratch_dir(self.worker) as scratch:
                self.model_dir = scratch
                try:
                    model = self._fit(model, start)
                finally:
                    self.model_dir = shared_model_dir
        return self._report_worker(model)

    def _worker_callbacks(self) -> list[keras.callbacks.Callback]:
        """Run before the other callbacks in a multi-worker run: the moving statistics averaged over the replicas."""
        return [] if self.worker is None else [multi_worker.SyncMovingStatistics(self.strategy())]

    def _report_worker(self, model: SFGNetwork) -> SFGNetwork:
        if self.worker is not None:
            print(f"[sfg_run] {self.worker.name} of {self.worker.num_workers}: final weights "
                  f"{multi_worker.weights_digest(model)}", flush=True)
        return model

    def _set_up_training(self, resume_from: Path | None, applied: list[tuple]) -> tuple[SFGNetwork, int]:
        self._prepare_application(fit=resume_from is None)
        with self.strategy().scope():
            if resume_from is None:
                model, start = self.build_model(), 0
                self.compile_model(model)
            else:
                model, start = self.load_checkpoint(path=resume_from)
                self._resume(model, applied)
        training_files = self._check_training_files(resume_from is not None)
        self._check_batch_size()
        record = RunRecord.load(self.model_dir) if resume_from is not None else None
        if record is not None:
            self._check_recorded_split(record)
        if self.is_chief:
            write_settings(self.settings)
            write_record(self.settings, self.model_dir)
            if training_files is not None:
                atomic_write_json(self.model_dir / TRAINING_FILES_FILE, training_files)
            if record is None:
                self._write_run_record(resumed=resume_from is not None)
            self.write_run_info(model)
        return model, start

    def _check_batch_size(self) -> None:
        """Refuses a `[NETWORK] batch_size` larger than the training examples (every batch would repeat them)."""
        count = self.application.num_training_examples()
        batch_size = int(self.settings.network.batch_size)
        if count is not None and batch_size > count:
            raise ConfigError(
                f"{self.settings.config_path}: [NETWORK] batch_size = {batch_size} is larger than the {count} "
                f"training examples ({self.application.describe_training_examples()}): every batch would repeat "
                f"examples, and memory grows with the batch for nothing. Expected at most {count}."
            )

    def _check_recorded_split(self, record: RunRecord) -> None:
        """On resume: the split must be the one the model was trained with (`run_record.json`)."""
        split = self.application.subject_split
        if split is None or split == record.split:
            return
        leaks, others = record.split_differences(split)
        raise ConfigError(
            f"{self.settings.config_path}: {self.settings.system.dataset_split_file} differs from the split this model "
            f"was trained with ({self.model_dir / 'run_record.json'}); resuming would train on other subjects:\n"
            f"{bullet_list(leaks + others)}\nRestore the split file, or train on the new split in another "
            "[SYSTEM] model_dir."
        )

    def _write_run_record(self, resumed: bool) -> None:
        """Writes `run_record.json`: the split and the training subjects with the fingerprints of their files."""
        application = self.application
        split = application.subject_split
        if split is None:
            return  # the application does not use the split file
        training = application.training_subjects(split)
        record = RunRecord.create(self.model_dir, application.name, split, application.subject_files(training),
                                  application.digest)
        record.save(self.model_dir)
        application.save_digests()
        if resumed:
            print(f"[sfg_run] recorded the split and the {len(training)} training subjects in run_record.json (this "
                  "model_dir had none: an older sfg-keras trained it).")

    def _check_training_files(self, resuming: bool) -> dict | None:
        """The fingerprint of `application.training_files()`; on resume, refuses a training set that changed since
        the normalisation was fitted (compared with `model_dir/training_files.json`, when recorded)."""
        files = self.application.training_files()
        if not files:
            return None
        current = files_fingerprint(files, base_dir=self.settings.config_dir)
        recorded_path = self.model_dir / TRAINING_FILES_FILE
        if resuming and recorded_path.is_file():
            recorded = json.loads(recorded_path.read_text(encoding="utf-8"))
            changes = fingerprint_changes(recorded, current)
            if changes:
                raise ConfigError(
                    f"{self.settings.config_path}: the training files changed since this model's normalisation was "
                    f"fitted (recorded in {recorded_path}); resuming would use statistics of other data. Restore "
                    f"the files, or train from scratch in a new [SYSTEM] model_dir:\n{bullet_list(changes)}"
                )
        return current

    def training_callbacks(self, model: SFGNetwork, validation, lineage: CheckpointLineage | None = None
                           ) -> list[keras.callbacks.Callback]:
        """The non-finite guard, checkpoints (recorded in `lineage`), the run monitor (progress, scalars,
        validation) and the grouping logger."""
        from sfg_keras.training.grouping_logger import GroupingLogger
        from sfg_keras.training.monitor import TrainingMonitor
        from sfg_keras.training.non_finite_guard import NonFiniteGuard

        training = self.settings.training
        summaries = int(training.tensorboard_every_n)
        callbacks = [
            # First: a non-finite step stops the run before any checkpoint callback sees it.
            NonFiniteGuard(training.non_finite, describe_batch=lambda step: self.application.describe_batch(step - 1)),
            PeriodicCheckpoint(self.checkpoint_dir, training.save_every_n, training.max_checkpoints, lineage),
            TrainingMonitor(
                int(training.max_iter),
                log_dir=self.log_dir if summaries > 0 or validation is not None else None,
                summary_every_n=max(0, summaries),
                validation_data=validation,
                validation_every_n=int(training.validation_every_n) if validation is not None else 0,
                validation_steps=int(training.validation_max_iter),
                verbose=2 if os.environ.get("SFG_QUIET") == "1" else 1,
                progress=self.progress,
            ),
        ]
        if summaries > 0:
            callbacks.append(GroupingLogger(str(self.log_dir), every_n_steps=summaries,
                                            task_names=[task.name for task in self.tasks], log_metrics=False))
        return callbacks

    def _fit(self, model: SFGNetwork, start: int, lineage: CheckpointLineage | None = None) -> SFGNetwork:
        training = self.settings.training
        max_iter = int(training.max_iter)
        if start >= max_iter:
            print(f"Already trained to iteration {start} (max_iter = {max_iter}); nothing to do.")
            return model
        validation = self.application.validation_dataset() if training.validation_every_n > 0 else None
        dataset = self.application.training_dataset(first_batch=start)
        if self.worker is not None:
            dataset, validation = multi_worker.shard_by_data(dataset), multi_worker.shard_by_data(validation)
        print(f"[sfg_run] training iterations {start + 1}..{max_iter}", flush=True)
        model.fit(
            dataset,
            steps_per_epoch=max_iter - start,
            epochs=1,
            callbacks=self._worker_callbacks() + self.training_callbacks(model, validation, lineage),
            shuffle=False,  # the datasets order themselves (sfg_keras.data.example_order)
            verbose=0,
        )
        return model

    def write_run_info(self, model: SFGNetwork) -> Path:
        """`model_dir/model_info.json`: network, grouping, tasks, parameter counts, input shape."""
        info = {
            "network": self.settings.network.name,
            "grouping": self.settings.sfg.grouping,
            "tasks": [task.name for task in self.tasks],
            "trainable_parameters": int(sum(math.prod(v.shape) for v in model.trainable_weights)),
            "parameters": int(model.count_params()),
            "input_shape": list(self.application.input_shape()),
        }
        return atomic_write_json(self.model_dir / "model_info.json", info)

    # === Inference, evaluation, export, analysis ===

    def inference(self) -> list[Path]:
        """Loads the `[INFERENCE] inference_iter` checkpoint, predicts every `inference_inputs()` unit with the
        `[INFERENCE] inference_mode` and lets the application write the outputs."""
        from sfg_keras.inference import predict

        self.configure_runtime()
        inference = self.settings.inference
        self.application.prepare(fit=False)
        model, iteration = self.load_checkpoint(int(inference.inference_iter))
        self.remove_leftovers(self.application.output_dir)
        write_settings(self.settings)
        print(f"Inference with the checkpoint of iteration {iteration} "
              f"({inference.inference_mode}, num_samples = {inference.num_samples}).")
        outputs = self.application.physical_outputs()
        for output in outputs.values():
            if output.bounded:
                print(f"Output bound: {output.describe()} ([INFERENCE] output_bounds)")
        written: list[Path] = []
        for item in self.application.inference_inputs():
            predictions = predict(
                model,
                item.inputs,
                mode=inference.inference_mode,
                num_samples=int(inference.num_samples),
                batch_size=int(item.batch_size or inference.batch_size),
                samples_per_pass=item.samples_per_pass,
            )
            # Regression means clipped to their physical range, as every exported signature does.
            files = self.application.write_outputs(item, bound_predictions(predictions, outputs))
            print(f"{item.key}: wrote {len(files)} files", flush=True)
            written.extend(files)
        written.extend(self.application.finish_inference(written))
        written.append(self.write_inference_record(iteration))
        print(f"Wrote {len(written)} files to {self.application.output_dir}")
        return written

    def write_inference_record(self, iteration: int) -> Path:
        """`save_seg_dir/inference_record.json`: the checkpoint (file relative to model_dir, iteration, the run that
        wrote it, its SHA-256 and history), the mode, the data and the subjects of the predictions."""
        inference = self.settings.inference
        lineage = CheckpointLineage(self.model_dir)
        path = self.loaded_checkpoint
        entry = lineage.entry(path) or {}
        chosen = self.application.chosen_subjects
        input_dir = self.application.input_dir
        record = {
            "checkpoint": {"file": lineage.key(path), "iteration": int(iteration), "run": entry.get("run"),
                           "sha256": entry.get("sha256"), "history": lineage.history(path)},
            "inference_mode": inference.inference_mode, "num_samples": int(inference.num_samples),
            "dataset_to_infer": inference.dataset_to_infer,
            "input_dir": relative_to(input_dir, self.model_dir) if input_dir is not None else None,
            "subjects": {subject: item.columns() for subject, item in sorted(chosen.items())},
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        return atomic_write_json(self.application.output_dir / INFERENCE_RECORD_FILE, record)

    def evaluation(self) -> list[Path]:
        """Evaluates the inferred outputs and writes per-subject and summary CSVs."""
        self.application.prepare(fit=False)
        self._describe_predictions()
        self.remove_leftovers(self.application.evaluation_dir)
        written = self.application.evaluate()  # checks everything before it writes
        write_settings(self.settings)
        for path in written:
            print(f"Wrote {path}")
        return written

    def _describe_predictions(self) -> None:
        """Says which checkpoint made the predictions evaluation reads (`inference_record.json`), and warns when it
        is no longer a checkpoint of the current lineage."""
        path = self.application.output_dir / INFERENCE_RECORD_FILE
        if not path.is_file():
            warn(f"{path} does not exist (predictions of an older sfg-keras?): which checkpoint made them is unknown.")
            return
        checkpoint = json.loads(path.read_text(encoding="utf-8")).get("checkpoint", {})
        print(f"[sfg_run] evaluating the predictions of {checkpoint.get('file')} (iteration "
              f"{checkpoint.get('iteration')}, run {checkpoint.get('run')})")
        file = self.model_dir / str(checkpoint.get("file"))
        lineage = CheckpointLineage(self.model_dir)
        entry = lineage.entry(file)
        if not file.is_file() or (entry is not None and entry.get("sha256") != checkpoint.get("sha256")):
            warn(f"the checkpoint that made these predictions, {checkpoint.get('file')}, is no longer in "
                 f"{self.checkpoint_dir} as it was (archived to a branch, pruned or replaced): the metrics describe "
                 "that checkpoint, not the current lineage.")

    def export(self) -> dict:
        """Exports the inference checkpoint as the next version under `model_dir/export/`: SavedModels (MC, MAP and
        expected signatures; the compact MAP model) and `.keras` serving models that take the application's raw
        input, check and normalise it inside the graph (`BaseApplication.serving_preprocessor`) and return
        regression outputs in physical units and range (`BaseApplication.physical_outputs`). `[INFERENCE]
        export_seed` fixes the Monte-Carlo stream (-1: a fresh stream per load)."""
        from sfg_keras.export import export_model, next_version

        self.configure_runtime()
        inference = self.settings.inference
        model, iteration = self.load_checkpoint(int(inference.inference_iter))
        self.remove_leftovers()
        preprocessor = self.application.serving_preprocessor()
        write_settings(self.settings)
        export_dir = self.model_dir / "export"
        version = next_version(export_dir, "sfg")
        seed = int(inference.export_seed)
        written = export_model(
            model,
            export_dir,
            name="sfg",
            version=version,
            num_samples=int(inference.num_samples),
            input_shape=(None, *self.application.export_input_shape()),
            preprocessor=preprocessor,
            seed=None if seed < 0 else seed,
            physical_outputs=self.application.physical_outputs(),
        )
        request = preprocessor.description if preprocessor is not None else "normalised network inputs"
        print(f"Exported iteration {iteration} as version {version} to {export_dir}; a request holds {request}")
        return written

    def analyse(self) -> dict:
        """Writes PNG plots of the learned grouping, p trajectories and per-layer summaries to `model_dir/analysis`."""
        from sfg_keras.analysis.report import write_grouping_report

        self.configure_runtime()
        model, iteration = self.load_checkpoint(int(self.settings.inference.inference_iter))
        self.remove_leftovers()
        write_settings(self.settings)
        history = self.log_dir / "grouping_history.npz"
        written = write_grouping_report(
            model, self.model_dir / "analysis", history_path=history if history.exists() else None
        )
        print(f"Analysed iteration {iteration}: {len(written)} files in {self.model_dir / 'analysis'}")
        return written

    def report(self) -> Path:
        """Writes `model_dir/report.html`: one self-contained page (images embedded, no JavaScript) with the run
        settings, training and validation curves, the evaluation tables, the learned grouping and the
        application's figures (`BaseApplication.report_figures`). Runs `analyse` first when `model_dir/analysis`
        has no group-share figure."""
        from sfg_keras.analysis.html_report import write_html_report

        if not (self.model_dir / "analysis" / "group_shares.png").is_file():
            if find_checkpoint(self.checkpoint_dir, -1) is None:
                raise FileNotFoundError(f"No checkpoint in {self.checkpoint_dir}: train first (sfg_run train -c "
                                        f"{self.settings.config_path}).")
            self.analyse()
        write_settings(self.settings)
        path = write_html_report(
            self.model_dir,
            title=f"sfg-keras {self.application.name}: {self.model_dir.name}",
            evaluation_dir=self.application.evaluation_dir,
            extra_figures=self.application.report_figures(),
        )
        print(f"Report: {path}")
        return path
