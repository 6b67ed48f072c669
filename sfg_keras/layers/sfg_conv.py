"""`SFGConv`: a convolution whose kernels are stochastically assigned to task-specific and shared groups."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from sfg_keras import groups
from sfg_keras.layers.batch_statistics_normalization import BatchStatisticsNormalization, batch_moments
from sfg_keras.layers.sampling_scope import current_deterministic, current_num_samples, current_stochastic
from sfg_keras.layers.stream_merge import merge_streams, projection_weights


@tf.custom_gradient
def _unit_rms_gradient(logits):
    """Identity whose gradient is rescaled to unit root-mean-square (the normalized grouping step)."""

    def gradient(upstream):
        rms = tf.sqrt(tf.reduce_mean(tf.square(upstream)))
        return upstream / tf.maximum(rms, 1e-12)

    return tf.identity(logits), gradient


def _distributions():
    """`tfp.distributions`, imported on first use: TensorFlow Probability adds about a second to every start of
    `sfg_run` (and of every process that only loads or serves a model)."""
    import tensorflow_probability as tfp

    return tfp.distributions


def _as_tuple(value, rank: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * rank
    value = tuple(int(v) for v in value)
    if len(value) != rank:
        raise ValueError(f"`{name}` must be an int or a tuple of {rank} ints. Received: {name}={value}")
    return value


def _side_by_side(tensors, axis):
    """`ops.concatenate`, without a copy for a single tensor."""
    return tensors[0] if len(tensors) == 1 else ops.concatenate(tensors, axis=axis)


def _is_single_shape(shape) -> bool:
    return all(d is None or isinstance(d, int) for d in shape)


def _validate_arguments(
    filters, num_tasks, rank, padding, init_mode, sampling, merge, grouping_lr_multiplier, grouping_step, temperature
) -> None:
    """Raises `ValueError` for an invalid `SFGConv` argument (the checks that need no conversion)."""
    if not isinstance(filters, int) or filters < 1:
        raise ValueError(f"`filters` must be a positive int. Received: filters={filters!r}")
    if not isinstance(num_tasks, int) or num_tasks < 1:
        raise ValueError(f"`num_tasks` must be a positive int. Received: num_tasks={num_tasks!r}")
    if rank not in (2, 3):
        raise ValueError(f"`rank` must be 2 (images) or 3 (volumes). Received: rank={rank!r}")
    if padding not in ("same", "valid"):
        raise ValueError(f"`padding` must be 'same' or 'valid'. Received: padding={padding!r}")
    groups.check_choice("init_mode", init_mode, groups.INIT_MODES)
    groups.check_choice("sampling", sampling, groups.SAMPLING_MODES)
    groups.check_choice("merge", merge, groups.MERGE_MODES)
    groups.check_choice("grouping_step", grouping_step, groups.GROUPING_STEPS)
    if not grouping_lr_multiplier > 0:
        raise ValueError(
            f"`grouping_lr_multiplier` must be > 0. Received: grouping_lr_multiplier={grouping_lr_multiplier!r}"
        )
    if temperature <= 0:
        raise ValueError(f"`temperature` must be > 0. Received: temperature={temperature!r}")


def _validated_assignment(
    assignment, filters: int, num_tasks: int, name: str = "fixed_assignment"
) -> list[int] | None:
    """`assignment` as a list of ints, or None; raises `ValueError` unless it is one group index per kernel."""
    if assignment is None:
        return None
    array = np.asarray(assignment)
    if (
        array.shape != (filters,)
        or not np.issubdtype(array.dtype, np.integer)
        or array.min() < 0
        or array.max() > num_tasks
    ):
        raise ValueError(
            f"`{name}` must hold one group index in [0, {num_tasks}] per kernel ({filters} ints). "
            f"Received: {name}={list(assignment)}"
        )
    return [int(v) for v in array]


def _validated_assignments(fixed, committed, filters: int, num_tasks: int) -> tuple[list[int] | None, ...]:
    """`(fixed_assignment, committed_assignment)` checked (`_validated_assignment`); at most one of them is set."""
    if fixed is not None and committed is not None:
        raise ValueError(
            "`committed_assignment` is the frozen assignment of a learned layer; a layer with a "
            f"`fixed_assignment` has none. Received: committed_assignment={list(committed)}"
        )
    return (
        _validated_assignment(fixed, filters, num_tasks),
        _validated_assignment(committed, filters, num_tasks, name="committed_assignment"),
    )


@keras.saving.register_keras_serializable(package="sfg")
class SFGConv(keras.layers.Layer):
    """Stochastic Filter Group convolution (Bragman et al., ICCV 2019).

    With `T = num_tasks` tasks the layer's `filters` kernels are split into `T` task-specific groups and one shared
    group. Arrays over groups are ordered `(task_1, ..., task_T, shared)`.

    The layer owns one kernel `W` of shape `[*kernel_size, C_in, filters]` (the parameter count of a plain
    convolution) and grouping logits `r` of shape `[filters, T + 1]`; the grouping probabilities are
    `p = softplus(r) / sum_groups softplus(r)`. Each forward pass draws an assignment
    `z ~ RelaxedOneHotCategorical(temperature, probs=p)` (Gumbel noise on `log p`, so a kernel joins group `g` with
    probability `p_g`). With `hard=True` the forward pass uses the one-hot argmax and gradients flow through the
    relaxed sample (straight-through); with `hard=False` the relaxed sample weights the kernels.

    Routing: the layer takes one tensor (the image, convolved by every group) or the `T + 1` streams
    `(F_1, ..., F_T, F_s)` of the previous SFG layer. Task `t` convolves `merge(F_t, F_s)` and the shared group
    convolves `F_s`, all with the same `W`; each group then has its own batch normalisation and activation, and the
    mask comes last: `F'_g = z_g * act_g(BN_g(conv(X_g, W)))`. A kernel assigned to task `t` is exactly zero in every
    other group's output, so it receives no gradient from the other tasks' losses.

    Inference: with `training=False` the layer uses the MAP architecture (`argmax p` per kernel) unless
    `stochastic=True` (or an enclosing `sampling_scope(stochastic=True)`), which samples without touching any batch
    normalisation state. Inside `sampling_scope(deterministic="expected")` a non-sampling pass computes the expected
    network instead: each group's output weighted by the kernel's expected assignment (`p` with `hard=True`, the
    mean relaxed sample at the current temperature with `hard=False`), i.e. the network that training averages over.

    Step size of the grouping logits: `grouping_lr_multiplier = m` multiplies the step the compiled optimizer takes
    on the logits by `m`, whatever the optimizer. The layer stores `v = r / m` and computes `r = m * v` with the
    gradient of `r` passed to `v` unchanged, so the optimizer computes the update it would compute for `r` and `r`
    moves `m` times as far (a gradient multiplier would not work: Adam normalises gradient scale away).
    `grouping_step="normalized"` rescales the layer's whole logit gradient (data loss and entropy term together) to
    unit root-mean-square at every step before the optimizer sees it, so `p` moves at the same rate whatever the
    scale of the losses, and a phase of large gradients (a strong entropy bonus) does not shrink the steps of the
    next phase through Adam's running second moment (`"raw"`, the paper, passes the gradient as it is).

    Regularisation (paper eq. 5) goes through Keras' loss collection: `kernel_l2 * ||W||^2` (as a weight
    regulariser) and `-entropy_weight * sum_kernels H(p)` (an `add_loss` term, only when `p` is learned).

    Baselines: `learn_p=False` keeps `p` constant (still sampled); `fixed_assignment` (one group index per kernel)
    turns sampling off and computes each group's convolution with its own kernels only, so groups without kernels
    cost nothing and produce `None` streams.

    Search, then commit: `commit()` freezes a learned layer to an assignment (by default its MAP assignment,
    `argmax p` per kernel). From then on the layer never samples, `p` is the one-hot of that assignment (the grouping
    logits keep their searched values but receive no gradient and no entropy term), and the layer can run packed
    (`call_packed`) at the cost of a plain convolution. The assignment is part of the config
    (`committed_assignment`), so a saved committed layer loads committed.

    Args:
        filters: int. Number of kernels `K`.
        kernel_size: int or tuple. Spatial size of the kernel.
        num_tasks: int. Number of tasks `T` (>= 1). Defaults to 2.
        strides: int or tuple. Defaults to 1.
        padding: str. `"same"` or `"valid"`. Defaults to `"same"`.
        dilation_rate: int or tuple. Defaults to 1.
        rank: int. 2 for images (`Conv2D`), 3 for volumes (`Conv3D`). Defaults to 2.
        p_init: sequence of `T + 1` floats or None. Initial probabilities (`constant` mode) or block proportions
            (`vertex` mode), ordered `(task_1, ..., task_T, shared)`. Defaults to shared 0.6, the rest split evenly.
        init_mode: str. `"constant"`, `"random"` (Dirichlet(1, ..., 1) per kernel) or `"vertex"`. Defaults to
            `"constant"`.
        learn_p: bool. Whether the grouping logits are trainable. Defaults to True.
        grouping_lr_multiplier: float. Multiplier of the optimizer's step on the grouping logits (their learning rate
            relative to the weights'). Defaults to 1.0.
        grouping_step: str. `"raw"` (the gradient as it is) or `"normalized"` (the layer's logit gradient rescaled to
            unit root-mean-square at every step). Defaults to `"raw"`.
        fixed_assignment: sequence of `filters` ints in `[0, T]` or None. A fixed group per kernel (no sampling).
        committed_assignment: sequence of `filters` ints in `[0, T]` or None. The assignment a learned layer was
            committed to (`commit()`); None while it searches. Not allowed with `fixed_assignment`.
        hard: bool. Straight-through hard samples (True) or relaxed soft weights (False). Defaults to True.
        sampling: str. `"per_example"` (a fresh architecture per data point, paper eq. 3) or `"per_batch"` (one
            draw per layer per step). Defaults to `"per_example"`.
        merge: str. How task streams are merged with the shared stream at the input: `"sum"` or `"concat"`
            (channel concat then a 1x1 convolution per task). Defaults to `"sum"`.
        activation: str. `"prelu"` or any Keras activation name. Defaults to `"prelu"`.
        inference_statistics: str. `"batch"` (normalise with the batch's statistics at inference, as the paper) or
            `"moving"`. Defaults to `"batch"`.
        kernel_initializer: initializer for `W`. Defaults to `"he_normal"`.
        kernel_l2: float. `lambda1`, the weight of `||W||^2`. Defaults to 1e-6.
        entropy_weight: float. `lambda2`, the weight of the (subtracted) entropy of `p`. Defaults to 1e-5.
        temperature: float. Initial Gumbel-softmax temperature (set every training step by the schedule).
            Defaults to 1.0.
        bn_momentum: float. Batch-norm momentum. Defaults to 0.9.
        bn_epsilon: float. Batch-norm epsilon. Defaults to 1e-5.
        seed: int or None. Seed of the layer's `keras.random.SeedGenerator` (and of `"random"` initialisation).

    Example:

    ```python
    images = keras.random.normal((8, 32, 32, 3))
    first = SFGConv(filters=16, kernel_size=3, num_tasks=3, p_init=[0.1, 0.1, 0.1, 0.7], seed=0)
    streams = first(images)                          # tuple of 4 tensors (task_1, task_2, task_3, shared)
    streams = SFGConv(32, 3, num_tasks=3)(streams)   # streams in, streams out
    first.grouping_probabilities()                   # numpy [16, 4], rows sum to 1
    first(images, training=False, stochastic=True)   # sample without touching batch-norm state
    ```
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int | Sequence[int],
        num_tasks: int = 2,
        strides: int | Sequence[int] = 1,
        padding: str = "same",
        dilation_rate: int | Sequence[int] = 1,
        rank: int = 2,
        p_init: Sequence[float] | None = None,
        init_mode: str = "constant",
        learn_p: bool = True,
        grouping_lr_multiplier: float = 1.0,
        grouping_step: str = "raw",
        fixed_assignment: Sequence[int] | None = None,
        committed_assignment: Sequence[int] | None = None,
        hard: bool = True,
        sampling: str = "per_example",
        merge: str = "sum",
        activation: str = "prelu",
        inference_statistics: str = "batch",
        kernel_initializer="he_normal",
        kernel_l2: float = 1e-6,
        entropy_weight: float = 1e-5,
        temperature: float = 1.0,
        bn_momentum: float = 0.9,
        bn_epsilon: float = 1e-5,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _validate_arguments(
            filters, num_tasks, rank, padding, init_mode, sampling, merge, grouping_lr_multiplier, grouping_step,
            temperature,
        )
        self.filters = filters
        self.num_tasks = num_tasks
        self.num_groups = num_tasks + 1
        self.rank = rank
        self.kernel_size = _as_tuple(kernel_size, rank, "kernel_size")
        self.strides = _as_tuple(strides, rank, "strides")
        self.dilation_rate = _as_tuple(dilation_rate, rank, "dilation_rate")
        self.padding = padding
        p_init = groups.default_p0(num_tasks) if p_init is None else p_init
        self.p_init = [float(v) for v in groups.validate_p0(p_init, num_tasks)]
        self.init_mode = init_mode
        self.learn_p = bool(learn_p)
        self.grouping_lr_multiplier = float(grouping_lr_multiplier)
        self.grouping_step = grouping_step
        self.fixed_assignment, self.committed_assignment = _validated_assignments(
            fixed_assignment, committed_assignment, filters, num_tasks
        )
        self._packing = None  # per-channel gather indices of the packed path, computed on first use
        self.hard = bool(hard)
        self.sampling = sampling
        self.merge = merge
        self.activation = activation
        self.inference_statistics = inference_statistics
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_l2 = float(kernel_l2)
        self.entropy_weight = float(entropy_weight)
        self.initial_temperature = float(temperature)
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed, name="seed_generator")
        # Drawn once, so that an unbuilt layer reports the probabilities its build will start from.
        self._initial_probabilities = groups.initial_probabilities(filters, self.p_init, init_mode, seed=seed)
        if self.is_fixed:
            self.active_groups = sorted(set(self.fixed_assignment))
        else:
            self.active_groups = list(range(self.num_groups))
        self._compute_group_indices(filters)
        self.group_norms = []
        self.group_activations = []
        self.merge_projections = []
        self._create_schedule_weights()

    def _create_schedule_weights(self) -> None:
        """Creates the non-trainable weights the training schedule sets: `temperature`, then `sampling_noise` and
        `entropy_scale` (layers that sample)."""
        # Created eagerly (not in `build`) so that a train step can set it before the first forward pass.
        self.temperature = self.add_weight(
            name="temperature",
            shape=(),
            initializer=keras.initializers.Constant(self.initial_temperature),
            trainable=False,
            autocast=False,
        )
        # Weight of the sampled assignment in the training mask, `mask = s * z + (1 - s) * E[z]`: 1 is the paper's
        # sampling; a warm-up (`TemperatureSchedule(sampling_warmup=...)`) ramps it from 0 (the expected network).
        # A fixed assignment never samples and has none.
        self.sampling_noise = None
        # Multiplier of `entropy_weight` (1 is lambda2 itself); an entropy schedule boosts it early in the search.
        self.entropy_scale = None
        if not self.is_fixed:
            self.sampling_noise = self.add_weight(
                name="sampling_noise",
                shape=(),
                initializer=keras.initializers.Constant(1.0),
                trainable=False,
                autocast=False,
            )
            self.entropy_scale = self.add_weight(
                name="entropy_scale",
                shape=(),
                initializer=keras.initializers.Constant(1.0),
                trainable=False,
                autocast=False,
            )

    def _compute_group_indices(self, filters: int) -> None:
        """Per-group conv-output channel indices (fixed mode) and scatter maps back to `filters` channels."""
        self._group_channels = {}
        self._scatter_index = {}
        self._group_block = {}  # (start, stop) when a group's kernels are consecutive: slice and pad, no gathers
        if self.is_fixed:
            assignment = np.asarray(self.fixed_assignment)
            for g in self.active_groups:
                channels = np.flatnonzero(assignment == g).astype("int32")
                scatter = np.full(filters, len(channels), dtype="int32")
                scatter[channels] = np.arange(len(channels), dtype="int32")
                self._group_channels[g], self._scatter_index[g] = channels, scatter
                start, stop = int(channels[0]), int(channels[-1]) + 1
                self._group_block[g] = (start, stop) if stop - start == len(channels) else None

    # === Properties ===

    @property
    def is_fixed(self) -> bool:
        """Whether the assignment is fixed (no sampling, no grouping logits)."""
        return self.fixed_assignment is not None

    @property
    def is_committed(self) -> bool:
        """Whether a learned layer has been committed to an assignment (`commit()`): it no longer samples."""
        return self.committed_assignment is not None

    @property
    def samples(self) -> bool:
        """Whether the layer draws assignments (neither fixed nor committed)."""
        return not (self.is_fixed or self.is_committed)

    @property
    def channel_assignment(self) -> np.ndarray | None:
        """The group of every output channel when it does not change from pass to pass (a fixed or committed
        assignment), int numpy `[filters]`; None while the layer samples."""
        if self.is_fixed:
            return np.asarray(self.fixed_assignment)
        if self.is_committed:
            return np.asarray(self.committed_assignment)
        return None

    @property
    def learns_p(self) -> bool:
        """Whether the grouping probabilities are trained (and regularised by the entropy term)."""
        return self.learn_p and self.samples

    # === Build ===

    def build(self, input_shape):
        if _is_single_shape(input_shape):
            self._streamed_input = False
            shapes = [tuple(input_shape)]
        else:
            if len(input_shape) != self.num_groups:
                raise ValueError(
                    f"{self.name}: expected one tensor or a list of {self.num_groups} streams "
                    f"(task_1..task_{self.num_tasks}, shared). Received {len(input_shape)} shapes: {input_shape}"
                )
            self._streamed_input = True
            shapes = [tuple(s) for s in input_shape if s is not None]
        if not shapes:
            raise ValueError(f"{self.name}: every input stream is None.")
        for shape in shapes:
            if len(shape) != self.rank + 2:
                raise ValueError(
                    f"{self.name}: rank={self.rank} needs inputs of rank {self.rank + 2} "
                    f"(batch, {'spatial, ' * self.rank}channels). Received shape {shape}"
                )
        channels = {s[-1] for s in shapes}
        if len(channels) != 1 or None in channels:
            raise ValueError(f"{self.name}: all input streams need the same known channel count. Received {shapes}")
        in_channels = channels.pop()
        self.kernel = self.add_weight(
            name="kernel",
            shape=(*self.kernel_size, in_channels, self.filters),
            initializer=self.kernel_initializer,
            regularizer=keras.regularizers.L2(self.kernel_l2) if self.kernel_l2 > 0 else None,
        )
        if not self.is_fixed:
            probs = self._initial_probabilities
            self.grouping_logits = self.add_weight(
                name="grouping_logits",
                shape=(self.filters, self.num_groups),
                initializer=keras.initializers.Constant(
                    (groups.inverse_softplus(probs) / self.grouping_lr_multiplier).astype("float32")
                ),
                trainable=self.learn_p,
                autocast=False,
            )
        spatial = shapes[0][:-1]
        for g in self.active_groups:
            width = len(self._group_channels[g]) if self.is_fixed else self.filters
            norm = BatchStatisticsNormalization(
                inference_statistics=self.inference_statistics,
                momentum=self.bn_momentum,
                epsilon=self.bn_epsilon,
                dtype=self.dtype_policy,
                name=f"bn_{self._group_name(g)}",
            )
            norm.build((*spatial, width))
            if self.activation == "prelu":
                act = keras.layers.PReLU(
                    shared_axes=list(range(1, self.rank + 1)),
                    dtype=self.dtype_policy,
                    name=f"prelu_{self._group_name(g)}",
                )
                act.build((*spatial, width))
            else:
                act = keras.layers.Activation(
                    self.activation, dtype=self.dtype_policy, name=f"act_{self._group_name(g)}"
                )
            self.group_norms.append(norm)
            self.group_activations.append(act)
        if self._streamed_input and self.merge == "concat":
            conv = keras.layers.Conv2D if self.rank == 2 else keras.layers.Conv3D
            for t in range(self.num_tasks):
                projection = conv(in_channels, 1, dtype=self.dtype_policy, name=f"merge_task_{t + 1}")
                projection.build((*spatial, 2 * in_channels))
                self.merge_projections.append(projection)
        self.built = True

    def _group_name(self, g: int) -> str:
        return groups.SHARED if g == self.num_tasks else f"task_{g + 1}"

    # === Grouping probabilities ===

    def logits(self):
        """The grouping logits `r` as a float32 tensor `[filters, T + 1]` (`p = softplus(r) / sum softplus(r)`).

        The variable `grouping_logits` stores `r / grouping_lr_multiplier`; the multiplication passes the gradient
        of `r` through unchanged, so the optimizer's step on `r` is `grouping_lr_multiplier` times its usual step.
        With `grouping_step="normalized"` the gradient reaching the variable is rescaled to unit root-mean-square;
        call it once per forward pass, so that the rescaling acts on the total gradient.
        """
        stored = ops.cast(self.grouping_logits, "float32")
        if self.grouping_step == "normalized":
            stored = _unit_rms_gradient(stored)
        if self.grouping_lr_multiplier == 1.0:
            return stored
        return stored + (self.grouping_lr_multiplier - 1.0) * ops.stop_gradient(stored)

    def set_logits(self, logits) -> None:
        """Assigns the grouping logits `r` (`[filters, T + 1]`), honouring `grouping_lr_multiplier`."""
        self.grouping_logits.assign(ops.cast(logits, "float32") / self.grouping_lr_multiplier)

    def probabilities(self):
        """Grouping probabilities `p` as a float32 tensor `[filters, T + 1]` (one-hot for a fixed assignment; before
        the layer is built, the initial probabilities)."""
        assignment = self.channel_assignment
        if assignment is not None:
            return ops.one_hot(ops.convert_to_tensor(assignment, "int32"), self.num_groups)
        return self.searched_probabilities()

    def searched_probabilities(self):
        """The probabilities the grouping logits hold, float32 `[filters, T + 1]`: `p` while the layer searches,
        and the searched `p` it was committed from after `commit()` (`probabilities()` is then one-hot)."""
        if self.is_fixed:
            return self.probabilities()
        if not self.built:  # before the first call: the initial probabilities the logits will hold
            return ops.convert_to_tensor(self._initial_probabilities.astype("float32"))
        positive = ops.softplus(self.logits())
        return positive / ops.sum(positive, axis=-1, keepdims=True)

    def grouping_probabilities(self) -> np.ndarray:
        """Grouping probabilities as numpy `[filters, T + 1]`, columns `(task_1, ..., task_T, shared)`."""
        return np.asarray(ops.convert_to_numpy(self.probabilities()), dtype="float64")

    def group_channels(self, g: int) -> np.ndarray:
        """The output channels (kernel indices) that group `g`'s batch normalisation and activation cover.

        Every kernel (`arange(filters)`) for a sampled layer; the group's own kernels, in increasing order, for a
        fixed assignment (where the group convolves only those). Channel `group_channels(g)[i]` is channel `i` of
        the group's norm and activation.

        Args:
            g: int. A group index in `active_groups` (`T` is shared).

        Returns:
            int numpy array.

        Example:

        ```python
        layer.group_channels(layer.num_tasks)   # the shared group's channels
        ```
        """
        if g not in self.active_groups:
            raise ValueError(f"{self.name}: group {g!r} has no kernels; active groups are {self.active_groups}.")
        if self.is_fixed:
            return self._group_channels[g].copy()
        return np.arange(self.filters)

    def merge_weights(self, task: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The `"concat"` input merge of task `task` (0-based) as a linear map: `(kernel [2 * C_in, C_in], bias
        [C_in] or None)`, the rows reading `concat(F_t, F_s)` (the 1x1 convolution's kernel, reshaped).

        Raises:
            ValueError: if the layer has no merge projections (`merge="sum"`, or an image input).

        Example:

        ```python
        kernel, bias = layer.merge_weights(0)
        ```
        """
        if not self.merge_projections:
            raise ValueError(
                f"{self.name}: no concat merge projections (merge={self.merge!r}; a layer that takes the image has "
                "none)."
            )
        if not 0 <= task < self.num_tasks:
            raise ValueError(f"`task` must be in [0, {self.num_tasks - 1}]. Received: task={task!r}")
        return projection_weights(self.merge_projections[task])

    def map_assignment(self) -> np.ndarray:
        """The MAP group of every kernel (`argmax p`), numpy int `[filters]`; the committed assignment once committed.

        Ties go to the later group, so a kernel whose shared probability ties the maximum is shared (the uniform
        `p` of the constant-p baseline gives the hard-sharing architecture).
        """
        return groups.map_group(self.grouping_probabilities())

    def commit(self, assignment: Sequence[int] | None = None) -> np.ndarray:
        """Freezes the layer to `assignment` (default: the MAP assignment of the current `p`) and stops sampling.

        After the commit the layer computes the fixed-assignment network of that assignment: no sampling, no
        entropy term, `probabilities()` one-hot, the grouping logits frozen at their searched values
        (`searched_probabilities()`), and packed execution available (`call_packed`). Compiled functions that
        traced the layer before must be traced again (`SFGNetwork.commit` does it for a network).

        Args:
            assignment: sequence of `filters` group indices in `[0, T]`, or None for the MAP assignment.

        Returns:
            The committed assignment, int numpy `[filters]`.

        Raises:
            ValueError: for a layer with a `fixed_assignment` (nothing to commit), or an invalid assignment.

        Example:

        ```python
        layer.commit()               # the MAP assignment
        layer.channel_assignment     # e.g. array([2, 2, 0, 1, ...])
        ```
        """
        if self.is_fixed:
            raise ValueError(f"{self.name}: a layer with a fixed_assignment has no grouping to commit.")
        if assignment is None:
            assignment = groups.map_group(np.asarray(ops.convert_to_numpy(self.searched_probabilities())))
        self.committed_assignment = _validated_assignment(
            assignment, self.filters, self.num_tasks, name="committed_assignment"
        )
        self._packing = None
        return self.channel_assignment

    def entropy(self, probs=None):
        """Sum over kernels of the entropy `H(p)` (nats), a float32 scalar tensor (of `probs` if given)."""
        return ops.sum(groups.entropy(self.probabilities() if probs is None else probs, xp=ops))

    def entropy_penalty(self, probs=None):
        """The entropy term this layer adds to the objective: `-entropy_weight * entropy_scale * sum H(p)` (0 if `p`
        is fixed or committed; `entropy_scale` is 1 unless the schedule boosts it)."""
        if not self.learns_p or self.entropy_weight == 0:
            return ops.zeros((), "float32")
        return -self.entropy_weight * ops.cast(self.entropy_scale, "float32") * self.entropy(probs)

    def weight_penalty(self):
        """The weight term this layer adds to the objective: `kernel_l2 * ||W||^2`."""
        return self.kernel_l2 * ops.sum(ops.square(ops.cast(self.kernel, "float32")))

    def set_temperature(self, value) -> None:
        """Assigns the Gumbel-softmax temperature (a float or a scalar tensor)."""
        self.temperature.assign(ops.cast(value, "float32"))

    def set_entropy_scale(self, value) -> None:
        """Assigns the multiplier of `entropy_weight` (a float or a scalar tensor; a fixed assignment has none)."""
        if self.entropy_scale is not None:
            self.entropy_scale.assign(ops.cast(value, "float32"))

    def set_sampling_noise(self, value) -> None:
        """Assigns the weight `s` of the sampled assignment in the training mask `s * z + (1 - s) * E[z]` (a fixed
        assignment has no sampling: nothing to set)."""
        if self.sampling_noise is not None:
            self.sampling_noise.assign(ops.cast(value, "float32"))

    # === Forward ===

    def _next_seed(self):
        seed = ops.cast(ops.mod(self.seed_generator.next(), 2**31 - 2), "int32")
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            # Replicas share the generator state; fold the replica id in so they draw different assignments.
            seed = seed + ops.stack([0, ops.cast(context.replica_id_in_sync_group, "int32")])
        return seed

    def expected_assignment(self, num_draws: int = 256, probs=None):
        """The expected assignment `E[z]` as a float32 tensor `[filters, T + 1]` (the expected network's mask).

        With `hard=True` the forward pass uses one-hot samples whose frequencies are `p`, so `E[z] = p`. With
        `hard=False` it is the mean of `num_draws` relaxed samples at the current temperature, drawn with a fixed
        seed so that the expected network is deterministic. `probs` (default `probabilities()`) is the `p` to use.
        """
        probs = self.probabilities() if probs is None else probs
        if self.hard or self.is_fixed:
            return probs
        distribution = _distributions().RelaxedOneHotCategorical(
            temperature=ops.cast(self.temperature, "float32"), probs=probs
        )
        return ops.mean(distribution.sample([num_draws], seed=ops.convert_to_tensor([20191027, 2], "int32")), axis=0)

    def _assignment(self, probs, batch_size, stochastic: bool, training: bool = False):
        """Float32 assignment `[batch or 1, filters, T + 1]` from `p` (`probs`): sampled, the MAP one-hot or the
        expected one.

        In training, the sample is blended with the expected assignment by the `sampling_noise` weight `s`
        (`s = 1`, the default, is the sample itself).
        """
        assignment = self._sampled_or_deterministic(probs, batch_size, stochastic)
        if not (training and stochastic and self.samples):
            return assignment
        noise = ops.cast(self.sampling_noise, "float32")
        # The expected assignment (256 relaxed draws for soft samples) is only computed during a warm-up.
        return ops.cond(
            noise < 1.0,
            lambda: noise * assignment + (1.0 - noise) * self.expected_assignment(probs=probs)[None],
            lambda: assignment,
        )

    def _sampled_or_deterministic(self, probs, batch_size, stochastic: bool):
        if self.is_committed:
            return probs[None]
        if not stochastic:
            if current_deterministic() == "expected":
                return self.expected_assignment(probs=probs)[None]
            # MAP; ties go to the later group (see `map_assignment`)
            return ops.one_hot(groups.map_group(probs, xp=ops), self.num_groups)[None]
        num_samples = current_num_samples()
        sample_shape = [batch_size] if self.sampling == "per_example" else [num_samples]
        distribution = _distributions().RelaxedOneHotCategorical(
            temperature=ops.cast(self.temperature, "float32"), probs=probs
        )
        relaxed = distribution.sample(sample_shape, seed=self._next_seed())
        if self.sampling == "per_batch" and num_samples > 1:
            relaxed = ops.repeat(relaxed, batch_size // num_samples, axis=0)
        if not self.hard:
            return relaxed
        hard = ops.one_hot(ops.argmax(relaxed, axis=-1), self.num_groups)
        # Straight-through: the forward value is exactly `hard`, the gradient is that of `relaxed`.
        return hard + (relaxed - ops.stop_gradient(relaxed))

    def _merge(self, task_stream, shared_stream, task: int):
        projection = self.merge_projections[task] if self.merge_projections else None
        return merge_streams(task_stream, shared_stream, self.merge, projection)

    def _convolve(self, inputs, kernel):
        return ops.conv(
            inputs,
            kernel,
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            data_format="channels_last",
        )

    def call(self, inputs, training=None, stochastic=None):
        if stochastic is None:
            stochastic = current_stochastic()
        if stochastic is None:
            stochastic = bool(training)
        if isinstance(inputs, (list, tuple)):
            if len(inputs) != self.num_groups:
                raise ValueError(f"{self.name}: expected {self.num_groups} streams. Received {len(inputs)}")
            shared = inputs[self.num_tasks]
            group_inputs = {
                g: shared if g == self.num_tasks else self._merge(inputs[g], shared, g) for g in self.active_groups
            }
        else:
            group_inputs = {g: inputs for g in self.active_groups}
        if any(x is None for x in group_inputs.values()):
            # A group with kernels whose task and shared inputs are both empty (a narrow fixed-assignment layer
            # before it left them without kernels) convolves zeros, exactly what the dense formulation computes.
            present = [x for x in (inputs if isinstance(inputs, (list, tuple)) else [inputs]) if x is not None]
            if not present:
                raise ValueError(f"{self.name}: every input stream is None.")
            group_inputs = {g: ops.zeros_like(present[0]) if x is None else x for g, x in group_inputs.items()}
        outputs = [None] * self.num_groups
        if self.is_fixed:
            for i, g in enumerate(self.active_groups):
                block = self._group_block[g]
                if block is None:
                    kernel = ops.take(self.kernel, self._group_channels[g], axis=-1)
                else:
                    kernel = self.kernel[..., block[0] : block[1]]
                y = self._convolve(group_inputs[g], kernel)
                y = self.group_activations[i](self.group_norms[i](y, training=training))
                if block is None:
                    padded = ops.concatenate([y, ops.zeros_like(y[..., :1])], axis=-1)
                    outputs[g] = ops.take(padded, self._scatter_index[g], axis=-1)
                elif block[1] - block[0] == self.filters:
                    outputs[g] = y  # the group holds every kernel (hard sharing): nothing to place
                else:
                    outputs[g] = ops.pad(y, [[0, 0]] * (self.rank + 1) + [[block[0], self.filters - block[1]]])
            return tuple(outputs)
        first = next(iter(group_inputs.values()))
        batch_size = ops.shape(first)[0]
        probs = self.probabilities()  # once per pass: the logits' gradient is the total of every use
        assignment = self._assignment(probs, batch_size, stochastic, training=bool(training))
        mask_shape = [-1] + [1] * self.rank + [self.filters]
        convolved = {}
        for i, g in enumerate(self.active_groups):
            x = group_inputs[g]
            key = id(x)
            if key not in convolved:  # the first layer convolves the image once for every group
                convolved[key] = self._convolve(x, self.kernel)
            y = self.group_activations[i](self.group_norms[i](convolved[key], training=training))
            mask = ops.reshape(ops.cast(assignment[..., g], y.dtype), mask_shape)
            outputs[g] = y * mask
        if self.learns_p and self.entropy_weight > 0:
            self.add_loss(self.entropy_penalty(probs))
        return tuple(outputs)

    # === Packed execution of a fixed or committed assignment ===

    def packable(self, input_assignment: np.ndarray | None = None) -> bool:
        """Whether the layer can run on packed streams (`call_packed`): it does not sample (a fixed assignment, in any
        kernel order, or a committed one), merges streams by `"sum"`, and `input_assignment` (the group of every
        packed input channel; None for the image) has one entry per input channel.

        Example:

        ```python
        layer = SFGConv(8, 3, fixed_assignment=[0, 0, 1, 1, 2, 2, 2, 2])
        layer.packable(None)  # True: a fixed assignment, summed merges
        ```
        """
        if self.channel_assignment is None or self.merge != "sum":
            return False
        if input_assignment is None or not self.built:
            return True
        return self.kernel.shape[-2] == len(input_assignment)

    def packed_assignment(self, input_assignment: np.ndarray | None = None) -> np.ndarray | None:
        """The group of every channel of the packed output (`channel_assignment`), whatever the input's."""
        return self.channel_assignment

    def _norm_channels(self, i: int) -> np.ndarray:
        """The output channels that group `active_groups[i]`'s norm and activation cover, in their order."""
        return self.group_channels(self.active_groups[i])

    def _packing_indices(self) -> dict:
        """Gather indices between packed output channels and the groups' norm / activation parameters.

        The groups' parameters are concatenated in `active_groups` order (`flat`); output channel `k` of group
        `a[k]` reads position `flat_index[k]`. A fixed group's norm covers its own channels only; a committed layer's
        norms cover every channel, of which each group owns those assigned to it (`owned[i]`).
        """
        if self._packing is None:
            assignment = self.channel_assignment
            offsets, flat_index, owned = 0, np.zeros(self.filters, dtype="int32"), []
            for i, g in enumerate(self.active_groups):
                channels = self._norm_channels(i)
                mine = assignment[channels] == g
                flat_index[channels[mine]] = offsets + np.flatnonzero(mine)
                owned.append(mine)
                offsets += len(channels)
            identity = offsets == self.filters and np.array_equal(flat_index, np.arange(self.filters))
            self._packing = {"flat_index": None if identity else flat_index, "owned": owned}
        return self._packing

    def call_packed(self, inputs, input_assignment=None, training=None):
        """The layer on packed streams: one tensor holding every group's channels side by side.

        With an assignment that does not change from pass to pass (fixed or committed) the groups' output channels
        are disjoint, so the `T + 1` streams of the dense formulation (each `filters` wide, zero outside its own
        channels) add up to one tensor without losing anything: `packed = sum_g F_g`. Given the previous layer's
        packed output and its assignment, task `t`'s input `merge(F_t, F_s)` is the packed tensor restricted to the
        channels of `t` and `shared`, so every group is computed by one convolution with the kernel masked to the
        (input group, output group) pairs the dense formulation connects: `mask[i, k] = a_in[i] in (a[k], shared)`.
        Then each group's batch norm and activation run on its own channels (one per-channel operation when the
        groups' norms and activations are alike, gathering each channel's parameters from its group). Values,
        gradients and the batch-norm updates of every channel a group owns equal the dense formulation; the cost is
        that of one plain convolution layer.

        Args:
            inputs: the image (first layer; `input_assignment=None`) or the packed output of the previous SFG layer.
            input_assignment: int array `[C_in]`, the previous layer's group per channel, or None for an image.
            training: bool or None.

        Returns:
            The packed output `[batch, *spatial, filters]` (channel `k` is kernel `k`'s output in its group).
        """
        if not self.packable(input_assignment):
            raise ValueError(
                f"{self.name}: packed execution needs an assignment that does not change (fixed, or committed with "
                f"`commit()`), merge='sum' and one input group per input channel. Received: a sampling layer, "
                f"merge={self.merge!r} or an input assignment of another width."
            )
        inputs = ops.cast(inputs, self.compute_dtype)
        kernel = ops.cast(self.kernel, self.compute_dtype)
        if input_assignment is not None:
            source = np.asarray(input_assignment)[:, None]
            target = self.channel_assignment[None, :]
            connected = (source == target) | (source == self.num_tasks)
            if not connected.all():
                kernel = kernel * ops.cast(ops.convert_to_tensor(connected.astype("float32")), kernel.dtype)
        y = self._convolve(inputs, kernel)
        if self._packed_fusable():
            return self._packed_normalise_and_activate(y, training)
        parts = []
        for i in range(len(self.active_groups)):
            channels = self._norm_channels(i)
            block = y if len(channels) == self.filters else ops.take(y, channels, axis=-1)
            parts.append(self.group_activations[i](self.group_norms[i](block, training=training)))
        return self._gather_channels(_side_by_side(parts, axis=-1))

    def _gather_channels(self, flat):
        """The packed tensor (or per-channel parameter) from the groups' side-by-side channels (`_packing_indices`)."""
        index = self._packing_indices()["flat_index"]
        return flat if index is None else ops.take(flat, index, axis=-1)

    def _packed_fusable(self) -> bool:
        """Whether the groups' batch norms and activations can run as one per-channel operation on packed output:
        batch norm is per channel, so the groups' norms over their own channels are one norm with their parameters
        gathered per channel (likewise PReLU)."""
        norms = self.group_norms
        return (
            all(type(n) is BatchStatisticsNormalization and n.scale and n.center and not n.renorm for n in norms)
            and all(n.axis in (-1, self.rank + 1) for n in norms)
            and len({(n.epsilon, n.momentum, n.trainable, n.inference_statistics) for n in norms}) == 1
            and (
                all(isinstance(a, keras.layers.PReLU) for a in self.group_activations)
                or all(type(a) is keras.layers.Activation for a in self.group_activations)
            )
        )

    def _per_channel(self, variables):
        """One parameter per packed output channel from the groups' variables (float32)."""
        flat = _side_by_side([ops.reshape(ops.cast(v, "float32"), [-1]) for v in variables], axis=0)
        return self._gather_channels(flat)

    def _update_moving_statistics(self, mean, variance) -> None:
        """Moves each group's statistics of the channels it owns towards the batch's (`momentum` as Keras' BN)."""
        owned = self._packing_indices()["owned"]
        for i, norm in enumerate(self.group_norms):
            channels = self._norm_channels(i)
            decay = 1.0 - norm.momentum
            for statistic, batch in ((norm.moving_mean, mean), (norm.moving_variance, variance)):
                batch = batch if len(channels) == self.filters else ops.take(batch, channels, axis=0)
                updated = statistic * (1.0 - decay) + ops.cast(batch, statistic.dtype) * decay
                if not owned[i].all():  # a committed layer's norm: other groups' channels keep their statistics
                    updated = ops.where(ops.convert_to_tensor(owned[i]), updated, statistic)
                statistic.assign(updated)

    def _packed_normalise_and_activate(self, y, training):
        norms, first = self.group_norms, self.group_norms[0]
        x = ops.cast(y, "float32")
        axes = list(range(self.rank + 1))
        if training and first.trainable:
            mean, variance = ops.moments(x, axes=axes)
            self._update_moving_statistics(mean, variance)
        elif first.inference_statistics == "batch":
            mean, variance = batch_moments(x, current_num_samples())
        else:
            mean = self._per_channel([n.moving_mean for n in norms])
            variance = self._per_channel([n.moving_variance for n in norms])
        gamma = self._per_channel([n.gamma for n in norms])
        beta = self._per_channel([n.beta for n in norms])
        out = (x - mean) * (ops.rsqrt(variance + first.epsilon) * gamma) + beta
        if isinstance(self.group_activations[0], keras.layers.PReLU):
            alpha = self._per_channel([a.alpha for a in self.group_activations])
            out = ops.relu(out) - alpha * ops.relu(-out)
        else:
            out = self.group_activations[0].activation(out)
        return ops.cast(out, self.compute_dtype)

    # === Shapes and config ===

    def _output_spatial(self, spatial):
        out = []
        for n, k, s, d in zip(spatial, self.kernel_size, self.strides, self.dilation_rate):
            if n is None:
                out.append(None)
            elif self.padding == "same":
                out.append(-(-n // s))
            else:
                out.append((n - d * (k - 1) - 1) // s + 1)
        return tuple(out)

    def compute_output_shape(self, input_shape):
        if _is_single_shape(input_shape):
            shape = tuple(input_shape)
        else:
            shape = tuple(next(s for s in input_shape if s is not None))
        out = (shape[0], *self._output_spatial(shape[1:-1]), self.filters)
        return tuple(out if g in self.active_groups else None for g in range(self.num_groups))

    def compute_output_spec(self, inputs, training=None, stochastic=None):
        if isinstance(inputs, (list, tuple)):
            shape = next(x.shape for x in inputs if x is not None)
        else:
            shape = inputs.shape
        out = (shape[0], *self._output_spatial(shape[1:-1]), self.filters)
        return tuple(
            keras.KerasTensor(out, dtype=self.compute_dtype) if g in self.active_groups else None
            for g in range(self.num_groups)
        )

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "num_tasks": self.num_tasks,
            "strides": self.strides,
            "padding": self.padding,
            "dilation_rate": self.dilation_rate,
            "rank": self.rank,
            "p_init": self.p_init,
            "init_mode": self.init_mode,
            "learn_p": self.learn_p,
            "grouping_lr_multiplier": self.grouping_lr_multiplier,
            "grouping_step": self.grouping_step,
            "fixed_assignment": self.fixed_assignment,
            "committed_assignment": self.committed_assignment,
            "hard": self.hard,
            "sampling": self.sampling,
            "merge": self.merge,
            "activation": self.activation,
            "inference_statistics": self.inference_statistics,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "kernel_l2": self.kernel_l2,
            "entropy_weight": self.entropy_weight,
            "temperature": self.initial_temperature,
            "bn_momentum": self.bn_momentum,
            "bn_epsilon": self.bn_epsilon,
            "seed": self.seed,
        }
