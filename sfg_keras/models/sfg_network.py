"""`SFGNetwork`: the routed multi-stream Keras model (trunk of SFG layers and per-stream transforms, task heads)."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from sfg_keras import groups
from sfg_keras.keras_adapter import loss_tracker, strategy_supports_no_merge_call
from sfg_keras.layers.sfg_conv import SFGConv
from sfg_keras.layers.stream_merge import StreamMerge
from sfg_keras.layers.temperature_schedule import TemperatureSchedule, apply_temperature, find_sfg_layers
from sfg_keras.models.execution_plan import SFG, ExecutionPlan
from sfg_keras.models.task_head import TaskHead, as_task_heads


def _all_finite(tensors) -> tf.Tensor:
    """True when every given tensor (None entries ignored) holds only finite values."""
    checks = [tf.reduce_all(tf.math.is_finite(tf.cast(t, tf.float32))) for t in tensors if t is not None]
    return tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)


@keras.saving.register_keras_serializable(package="sfg")
class SFGNetwork(keras.Model):
    """A multi-task network routed through Stochastic Filter Groups.

    The trunk is a list of layers applied in order: `SFGConv` layers (one tensor or `T + 1` streams in, `T + 1`
    streams out), and stream-wise layers such as `PerStream(...)` and `CrossStitch(...)`. After the trunk, task `t`
    reads `merge(F_t, F_s)` (`StreamMerge`) and its head produces the output named after the task. Outputs are a
    dict `{task_name: tensor}`; classification and segmentation heads output logits.

    `call` declares `training` and `stochastic`: `training=True` (as in `fit`) samples architectures and updates
    batch-norm statistics; `training=False` uses the MAP architecture unless `stochastic=True`. Every training step
    first sets the Gumbel-softmax temperature of all SFG layers from the optimizer's step counter
    (`temperature_schedule`), so the schedule is exact per step, under XLA and under tf.distribute.

    Execution plan (`execution_plan`, `sfg_keras.models.ExecutionPlan`): which SFG layers sample, are fixed or are
    committed, and whether the network runs packed. When no SFG layer samples (the baselines `hard_sharing`,
    `constant_mask`, `single_task`, `cross_stitch`, or a learned network after `commit()`), merges are sums and the
    transforms between SFG layers have no weights, the network runs on packed streams (`SFGConv.call_packed`): one
    tensor per layer instead of `T + 1` mostly-zero ones, with the same values and gradients, at the cost of a plain
    network of the same width. Set `packed_execution = False` to run the dense formulation (the reference).

    Search, then commit: `commit()` freezes every learned SFG layer to its MAP assignment; the rest of training
    trains that fixed-assignment network (packed, at hard-sharing cost), which is then the network MAP inference
    and the compact export compute. `commit_step` (from the temperature schedule's `commit_at`) makes `fit` and
    `train_on_batch` commit by themselves once the optimizer has taken that many steps.

    Logged during `fit`/`evaluate` besides Keras' per-task losses and metrics: `data_loss` (weighted task losses),
    `weight_term` (L2 penalties), `entropy_term` (`-lambda2 * sum H(p)`) and `temperature`.

    Args:
        trunk: list of layers.
        heads: list of `TaskHead` (or dicts / tuples) describing the tasks, in stream order.
        head_layers: list of Keras layers, one per task (see `sfg_keras.models.make_head`).
        merge: str. How heads merge task and shared streams: `"sum"` or `"concat"`. Defaults to `"sum"`.
        temperature_schedule: `TemperatureSchedule` or its config dict. Defaults to `TemperatureSchedule()`.

    Example:

    ```python
    tasks = [TaskHead("digit", "classification", 10), TaskHead("thickness", "regression", 1)]
    model = SFGNetwork(
        trunk=[SFGConv(16, 3, seed=0), PerStream(keras.layers.MaxPooling2D()), SFGConv(32, 3, seed=1),
               PerStream(keras.layers.GlobalAveragePooling2D())],
        heads=tasks,
        head_layers=[keras.layers.Dense(10), keras.layers.Dense(1)],
    )
    model.compile("adam", loss={"digit": CrossEntropy(), "thickness": RMSE()})
    ```
    """

    def __init__(
        self,
        trunk: Sequence[keras.layers.Layer],
        heads: Sequence[TaskHead],
        head_layers: Sequence[keras.layers.Layer],
        merge: str = "sum",
        temperature_schedule: TemperatureSchedule | dict | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.tasks = as_task_heads(heads)
        if len(head_layers) != len(self.tasks):
            raise ValueError(
                f"Need one head layer per task ({len(self.tasks)}). Received {len(head_layers)} head layers."
            )
        if isinstance(temperature_schedule, dict):
            temperature_schedule = TemperatureSchedule.from_config(temperature_schedule)
        self.temperature_schedule = temperature_schedule or TemperatureSchedule()
        self.trunk = list(trunk)
        self.head_layers = list(head_layers)
        self.merge = merge
        self.stream_merge = StreamMerge(len(self.tasks), mode=merge, name="stream_merge")
        sfg = [layer for layer in self.trunk if isinstance(layer, SFGConv)]
        if not sfg:
            raise ValueError("The trunk needs at least one SFGConv layer.")
        for layer in sfg:
            if layer.num_tasks != len(self.tasks):
                raise ValueError(
                    f"{layer.name} has num_tasks={layer.num_tasks} but the network has {len(self.tasks)} tasks."
                )
        self.data_loss_tracker = keras.metrics.Mean(name="data_loss")
        self.weight_term_tracker = keras.metrics.Mean(name="weight_term")
        self.entropy_term_tracker = keras.metrics.Mean(name="entropy_term")
        self.temperature_tracker = keras.metrics.Mean(name="temperature")
        self._allow_packed = True
        self._plan = None
        self.plan_version = 0

    # === Forward ===

    def build(self, input_shape):
        # Build every sublayer with one eager MAP pass on zeros (cheap, and reproducible on reload).
        shape = [2 if d is None else d for d in input_shape]
        self.call(ops.zeros(shape, dtype=self.compute_dtype), training=False, stochastic=False)
        self.built = True

    @property
    def execution_plan(self) -> ExecutionPlan:
        """How the network runs (`ExecutionPlan`): planned once the network is built, again after a commit or a
        change of `packed_execution`."""
        if self._plan is not None:
            return self._plan
        plan = ExecutionPlan.for_trunk(self.trunk, len(self.tasks), self.merge, allow_packed=self._allow_packed)
        if self.built:
            self._plan = plan
        return plan

    @property
    def packed_execution(self) -> bool:
        """Whether the network may run packed (default True); False runs the dense formulation (the reference)."""
        return self._allow_packed

    @packed_execution.setter
    def packed_execution(self, value: bool) -> None:
        self._allow_packed = bool(value)
        self._plan = None

    def call(self, inputs, training=None, stochastic=None):
        plan = self.execution_plan
        if plan.packed:
            return self._call_packed(inputs, plan, training)
        x = inputs
        for step in plan.steps:
            if step.role == SFG:
                x = step.layer(x, training=training, stochastic=stochastic)
            else:
                x = step.layer(x, training=training)
        features = self.stream_merge(x)
        return {
            task.name: head(feature, training=training)
            for task, head, feature in zip(self.tasks, self.head_layers, features)
        }

    def _call_packed(self, inputs, plan: ExecutionPlan, training):
        x = inputs
        for step in plan.steps:
            x = step.layer.call_packed(x, step.input_assignment, training=training)
        outputs = {}
        for task, head, mask in zip(self.tasks, self.head_layers, plan.head_masks):
            feature = x if mask.all() else x * ops.cast(ops.convert_to_tensor(mask), x.dtype)
            outputs[task.name] = head(feature, training=training)
        return outputs

    # === Search, then commit ===

    @property
    def committed(self) -> bool:
        """Whether the network has learned SFG layers and every one of them is committed."""
        learned = [layer for layer in self.sfg_layers if not layer.is_fixed]
        return bool(learned) and all(layer.is_committed for layer in learned)

    @property
    def commit_step(self) -> int | None:
        """The optimizer step after which training commits (`temperature_schedule.commit_step`), or None (also while
        a schedule relative to the run is unresolved)."""
        return self.temperature_schedule.commit_step

    def resolve_schedule(self, run_steps: int) -> None:
        """Resolves a schedule given in fractions of the run (`TemperatureSchedule.relative`) for a run of
        `run_steps` optimizer steps in all (nothing to do for a schedule in steps). `fit` calls it by itself.

        Example:

        ```python
        model.resolve_schedule(2000)
        for x, y in batches:
            model.train_on_batch(x, y)
        ```
        """
        if not self.temperature_schedule.is_relative:
            return
        self.temperature_schedule = self.temperature_schedule.resolved(int(run_steps))
        if self.train_function is not None:  # traced with the unresolved schedule
            self.make_train_function(force=True)

    def commit(self) -> dict[str, np.ndarray]:
        """Freezes every learned SFG layer to its MAP assignment (`SFGConv.commit`) and re-plans execution.

        The network then runs packed where it can, and every compiled function (`fit`'s step, `evaluate`,
        `predict`, this package's inference functions) is traced again on its next use. Committing a committed
        network changes nothing.

        Returns:
            Per SFG layer name the committed assignment (fixed layers are left out).

        Example:

        ```python
        model.fit(data, steps_per_epoch=500)   # search
        model.commit()                          # freeze to the MAP architecture
        model.fit(data, steps_per_epoch=1500)   # train the committed network at hard-sharing cost
        ```
        """
        committed = {}
        for layer in self.sfg_layers:
            if not layer.is_fixed:
                committed[layer.name] = layer.channel_assignment if layer.is_committed else layer.commit()
        self._plan = None
        self.plan_version += 1
        if self.train_function is not None:
            self.make_train_function(force=True)
        self.test_function = None
        self.predict_function = None
        return committed

    def maybe_commit(self) -> bool:
        """Commits (`commit`) when `commit_step` is set, the optimizer has taken at least that many steps and the
        network is not committed yet; returns whether it committed now. `fit` (through `GroupingCommit`) and
        `train_on_batch` call it between steps."""
        step = self.commit_step
        if step is None or self.committed or not any(not layer.is_fixed for layer in self.sfg_layers):
            return False
        if int(self.optimizer.iterations.numpy()) < step:
            return False
        self.commit()
        return True

    def fit(self, *args, callbacks=None, **kwargs):
        """Keras `fit`, committing at `commit_step` when the schedule has one (a `GroupingCommit` callback is added
        unless one is given)."""
        from sfg_keras.models.grouping_commit import GroupingCommit

        callbacks = list(callbacks or [])
        schedule = self.temperature_schedule
        needs = schedule.commit_step is not None or schedule.is_relative
        if needs and not any(isinstance(c, GroupingCommit) for c in callbacks):
            callbacks.insert(0, GroupingCommit())
        self.build_step_state(*_x_and_y(args, kwargs), optimizer=True)
        return super().fit(*args, callbacks=callbacks, **kwargs)

    def evaluate(self, *args, **kwargs):
        """Keras `evaluate`, with the compiled losses' and metrics' states created first (`build_step_state`)."""
        self.build_step_state(*_x_and_y(args, kwargs), optimizer=False)
        return super().evaluate(*args, **kwargs)

    def build_step_state(self, x, y=None, optimizer: bool = True) -> bool:
        """Creates, eagerly, the variables that the first traced training or test step would otherwise create: the
        optimizer's slots (`optimizer=True`) and the states of the compiled losses and metrics.

        TensorFlow traces a function that creates variables twice, once to create them and once without, so a
        whole network was traced twice per `fit` and per first `evaluate`. Creating them here first halves that
        (measured: a 6-step `sfg_run train` of the test config, 208 s -> 131 s). `fit` and `evaluate` call it. It
        needs the shape of one example: a `tf.data.Dataset` whose elements have a known shape apart from the batch
        axis, or arrays / tensors (`x` and `y`, or dicts of them). For other inputs (generators, PyDatasets), and
        under a `tf.distribute` strategy, where Keras builds the state itself, it leaves the work to Keras. Before
        the step's first trace it runs one MAP forward pass on a batch of zeros, which changes no weight, statistic
        or random state, and resets the metrics (as `fit` and `evaluate` do when they start).

        Args:
            x: what `fit` / `evaluate` received as `x`.
            y: what they received as `y` (None with a dataset).
            optimizer: also build the optimizer's slots (for `fit`).

        Returns:
            Whether it built anything (False when there was nothing to build or it was left to Keras).

        Example:

        ```python
        model.compile(keras.optimizers.Adam(1e-3), loss={"age": RMSE(), "gender": CrossEntropy()})
        model.build_step_state(dataset)   # fit then traces its step once
        ```
        """
        if not self.built or tf.distribute.has_strategy():
            return False
        if self.distribute_strategy is not tf.distribute.get_strategy():  # built under a strategy: Keras builds
            return False
        specs = _example_specs(x, y)
        if specs is None:
            return False
        built = False
        if optimizer and self.optimizer is not None and not self.optimizer.built:
            self.optimizer.build(self.trainable_weights)  # as `train_step` would: every trainable variable
            built = True
        step_function = self.train_function if optimizer else self.test_function
        if self.compiled and step_function is None:  # not traced since `compile` (or the commit)
            batch = tf.nest.map_structure(lambda s: tf.zeros([1, *s.shape[1:]], s.dtype), specs)
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
            y_pred = self(x, training=False, stochastic=False)
            self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=False)
            self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
            self.reset_metrics()
            built = True
        return built

    def train_on_batch(self, *args, **kwargs):
        """Keras `train_on_batch`, committing before the step once `commit_step` is reached."""
        if self.optimizer is not None and self.optimizer.built:
            self.maybe_commit()
        return super().train_on_batch(*args, **kwargs)

    # === Training ===

    @property
    def sfg_layers(self) -> list[SFGConv]:
        """The `SFGConv` layers of the trunk, in order."""
        return find_sfg_layers(self)

    def train_step(self, data):
        """One optimizer step that never applies a non-finite update.

        When the loss or any gradient is NaN or infinite (on any replica), the weights, the optimizer's slots and
        the batch-normalisation statistics keep their values, the iteration counter still advances (the batch was
        consumed) and the returned logs hold `non_finite_step = 1` (0 otherwise); `NonFiniteGuard` stops or
        counts on it.
        """
        if self.temperature_schedule.is_relative:
            raise ValueError(
                f"{self.name}: its grouping schedule is given in fractions of the run and is not resolved yet. "
                "`fit` resolves it from its number of steps; before `train_on_batch` or a custom loop call "
                "`model.resolve_schedule(total_steps)`."
            )
        apply_temperature(self, self.optimizer.iterations, self.temperature_schedule)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        # Statistics updated by the forward pass (batch normalisation) are restored after a non-finite step.
        updated = [v for v in self.non_trainable_variables if "float" in str(v.dtype)]
        # Read before the forward pass writes them (tf.function orders reads and writes of a variable as written;
        # no explicit control dependency, under which variables created while tracing could not be lifted for XLA).
        before = [tf.identity(v.value) for v in updated]
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            batch = tf.shape(next(t for t in tf.nest.flatten(x) if t is not None))[0]
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            loss_tracker(self).update_state(loss * ops.cast(replicas, loss.dtype), sample_weight=batch)
            scaled = self.optimizer.scale_loss(loss)
        variables = self.trainable_weights
        gradients = tape.gradient(scaled, variables)
        if not self.optimizer.built:  # its slots cannot be created inside the `cond` below (XLA, tf.distribute)
            self.optimizer.build(variables)  # every trainable variable, so that checkpoints keep one layout
        # Variables the loss does not reach (the grouping logits of committed layers) are left as they are.
        pairs = [(g, v) for g, v in zip(gradients, variables) if g is not None]
        gradients, variables = [g for g, _ in pairs], [v for _, v in pairs]
        finite = _all_finite([loss, *gradients])
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:  # every replica takes the same branch
            finite = context.all_reduce("sum", 1.0 - tf.cast(finite, tf.float32)) < 0.5

        non_finite = self._apply_if_finite(gradients, variables, finite, updated, before)
        logs = self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        return {**logs, "non_finite_step": non_finite}

    def _apply_if_finite(self, gradients, variables, finite, updated, before) -> tf.Tensor:
        """Applies `gradients` when `finite`, else restores `updated` to `before` and only advances the iteration
        counter; returns 1.0 for a skipped step, 0.0 otherwise."""

        def apply():
            self.optimizer.apply_gradients(zip(gradients, variables))
            return tf.constant(0.0)

        def skip(restore: bool = True):
            if restore:
                for variable, value in zip(updated, before):
                    variable.assign(value)
            self.optimizer.iterations.assign_add(1)
            return tf.constant(1.0)

        if not tf.distribute.has_strategy() or strategy_supports_no_merge_call():
            return tf.cond(finite, apply, skip)

        # The optimizer synchronises the replicas with `merge_call`, which a `cond` in replica context cannot hold:
        # decide in cross-replica context (every replica has the same all-reduced `finite`), as Keras'
        # LossScaleOptimizer does. The mirrored statistics are restored from the first replica's copy.
        def cross_replica(distribution, gradients, finite, before):
            flag = distribution.experimental_local_results(finite)[0]

            def apply_all():
                distribution.extended.call_for_each_replica(
                    lambda grads: self.optimizer.apply_gradients(zip(grads, variables)), args=(gradients,)
                )
                return tf.constant(0.0)

            def skip_all():
                for variable, value in zip(updated, before):
                    variable.assign(distribution.experimental_local_results(value)[0])
                return skip(restore=False)

            return tf.cond(flag, apply_all, skip_all)

        return tf.distribute.get_replica_context().merge_call(cross_replica, args=(gradients, finite, before))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        total = super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
        # Under tf.distribute Keras divides every term of the total by the number of replicas (the gradients are
        # summed across replicas); the logged terms are per-replica values, like Keras' own `loss`.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        logged = ops.cast(total, "float32") * float(replicas) if replicas > 1 else ops.cast(total, "float32")
        entropy = ops.zeros((), "float32")
        for layer in self.sfg_layers:
            entropy = entropy + layer.entropy_penalty()
        penalties = ops.zeros((), "float32")
        for loss in self.losses:
            penalties = penalties + ops.cast(loss, "float32")
        self.data_loss_tracker.update_state(logged - penalties)
        self.weight_term_tracker.update_state(penalties - entropy)
        self.entropy_term_tracker.update_state(entropy)
        self.temperature_tracker.update_state(ops.cast(self.sfg_layers[0].temperature, "float32"))
        return total

    @property
    def metrics(self):
        return super().metrics + [
            self.data_loss_tracker,
            self.weight_term_tracker,
            self.entropy_term_tracker,
            self.temperature_tracker,
        ]

    # === Introspection ===

    @property
    def task_names(self) -> list[str]:
        """Task names in stream order."""
        return [task.name for task in self.tasks]

    @property
    def group_names(self) -> list[str]:
        """Group names in stream order: the task names, then `"shared"` (`sfg_keras.groups.group_names`)."""
        return groups.group_names(self.task_names)

    def grouping_probabilities(self) -> dict[str, np.ndarray]:
        """Per SFG layer (by name, in order) the probabilities `[filters, T + 1]` (one-hot if fixed)."""
        return {layer.name: layer.grouping_probabilities() for layer in self.sfg_layers}

    def group_shares(self) -> dict[str, dict[str, float]]:
        """Per SFG layer the share of kernels in each group: `sum_k p[k, g] / K` (paper Fig. 6), keyed by group.

        Example:

        ```python
        model.group_shares()["sfg_conv_1"]   # {"age": 0.21, "gender": 0.19, "shared": 0.60}
        ```
        """
        return {
            name: dict(zip(self.group_names, p.mean(axis=0).tolist()))
            for name, p in self.grouping_probabilities().items()
        }

    def map_assignments(self) -> dict[str, np.ndarray]:
        """Per SFG layer the MAP group index of every kernel (`argmax p`, ties to the later group)."""
        return {layer.name: layer.map_assignment() for layer in self.sfg_layers}

    def map_counts(self) -> dict[str, dict[str, int]]:
        """Per SFG layer the number of kernels whose MAP group is each group, keyed by group name."""
        num_groups = len(self.group_names)
        return {
            name: dict(zip(self.group_names, np.bincount(a, minlength=num_groups).tolist()))
            for name, a in self.map_assignments().items()
        }

    # === Saving ===

    _SEED_STATE_PREFIX = "seed_state_"

    def save_own_variables(self, store):
        """Saves the network's own variables and the state of every SFG layer's seed generator, so that a resumed
        run continues the sampling sequence instead of replaying it (Keras does not save `SeedGenerator` states)."""
        super().save_own_variables(store)
        for layer in self.sfg_layers:
            store[self._SEED_STATE_PREFIX + layer.name] = ops.convert_to_numpy(layer.seed_generator.state)

    def load_own_variables(self, store):
        """Loads what `save_own_variables` saved; files written without seed states load as before."""
        keys = list(store.keys())
        prefix = self._SEED_STATE_PREFIX
        super().load_own_variables({key: store[key] for key in keys if not key.startswith(prefix)})
        layers = {layer.name: layer for layer in self.sfg_layers}
        for key in keys:
            layer = layers.get(key[len(prefix):]) if key.startswith(prefix) else None
            if layer is not None:
                layer.seed_generator.state.assign(np.asarray(store[key]))

    # === Config ===

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "trunk": [keras.saving.serialize_keras_object(layer) for layer in self.trunk],
            "heads": [task.to_config() for task in self.tasks],
            "head_layers": [keras.saving.serialize_keras_object(layer) for layer in self.head_layers],
            "merge": self.merge,
            "temperature_schedule": self.temperature_schedule.get_config(),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["trunk"] = [keras.saving.deserialize_keras_object(c) for c in config["trunk"]]
        config["head_layers"] = [keras.saving.deserialize_keras_object(c) for c in config["head_layers"]]
        return cls(**config)


def _x_and_y(args: tuple, kwargs: dict) -> tuple:
    """`x` and `y` of a `fit` / `evaluate` call."""
    x = args[0] if args else kwargs.get("x")
    y = args[1] if len(args) > 1 else kwargs.get("y")
    return x, y


def _example_specs(x, y):
    """`TensorSpec`s of one batch of `x` (a dataset, or arrays / tensors with `y`), with every axis but the batch
    axis known; None when they cannot be told without reading the data. Float arrays are specified as Keras casts
    them (`floatx`)."""
    if isinstance(x, tf.data.Dataset):
        specs = x.element_spec
    else:
        def spec(value):
            if not isinstance(value, (np.ndarray, tf.Tensor)) or not value.shape:
                raise TypeError
            dtype = tf.as_dtype(value.dtype)
            return tf.TensorSpec(value.shape, keras.backend.floatx() if dtype.is_floating else dtype)

        try:
            specs = tf.nest.map_structure(spec, (x, y) if y is not None else (x,))
        except (TypeError, ValueError):
            return None
    flat = tf.nest.flatten(specs)
    if not flat or not all(isinstance(s, tf.TensorSpec) and s.shape.rank and None not in s.shape[1:] for s in flat):
        return None
    return specs
