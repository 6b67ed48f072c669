"""Acceptance tests of `SFGConv`: shapes, initialisation, faithful sampling, masking and gradient isolation."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from sfg_keras.layers import SFGConv, StreamMerge, block_assignment, sampling_scope


def _images(batch=4, size=8, channels=3, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, size, size, channels)).astype("float32")


def _active(streams, num_groups):
    """Boolean `[batch, filters, groups]`: whether channel k of group g is non-zero anywhere in the example."""
    present = [s for s in streams if s is not None]
    batch, filters = present[0].shape[0], present[0].shape[-1]
    active = np.zeros((batch, filters, num_groups), dtype=bool)
    for g, stream in enumerate(streams):
        if stream is not None:
            values = np.abs(keras.ops.convert_to_numpy(stream)).reshape(batch, -1, filters)
            active[:, :, g] = values.max(axis=1) > 0
    return active


def _set_prelu_alpha(layer, value=0.25):
    """PReLU starts as ReLU (alpha 0); a non-zero slope makes every unmasked channel non-zero almost surely."""
    for act in layer.group_activations:
        act.alpha.assign(np.full(act.alpha.shape, value, dtype="float32"))


# === Shapes and dtypes ===


_SHAPE_CASES = [(hard, sampling, merge) for hard, sampling in ((True, "per_example"), (False, "per_batch"))
                for merge in ("sum", "concat")]


@pytest.mark.parametrize("num_tasks", [2, 3])
def test_output_shapes_and_dtypes(num_tasks):
    for hard, sampling, merge in _SHAPE_CASES:
        _check_shapes(num_tasks, hard, sampling, merge)


def _check_shapes(num_tasks, hard, sampling, merge):
    first = SFGConv(6, 3, num_tasks=num_tasks, hard=hard, sampling=sampling, merge=merge, seed=1)
    second = SFGConv(5, 3, num_tasks=num_tasks, hard=hard, sampling=sampling, merge=merge, strides=2, seed=2)
    x = _images(batch=3, size=8)
    for training in (True, False):
        streams = first(x, training=training)
        assert isinstance(streams, tuple) and len(streams) == num_tasks + 1
        assert all(tuple(s.shape) == (3, 8, 8, 6) and s.dtype == tf.float32 for s in streams)
        out = second(streams, training=training)
        assert len(out) == num_tasks + 1
        assert all(tuple(s.shape) == (3, 4, 4, 5) and s.dtype == tf.float32 for s in out)
    assert tuple(first.kernel.shape) == (3, 3, 3, 6)
    assert tuple(second.kernel.shape) == (3, 3, 6, 5)
    assert tuple(first.grouping_logits.shape) == (6, num_tasks + 1)
    # concat merge adds one 1x1 projection per task, only where the input is a list of streams
    assert len(first.merge_projections) == 0
    assert len(second.merge_projections) == (num_tasks if merge == "concat" else 0)
    # symbolic shapes agree with eager ones
    spec = second.compute_output_spec([keras.KerasTensor((None, 8, 8, 6))] * (num_tasks + 1))
    assert [tuple(s.shape) for s in spec] == [(None, 4, 4, 5)] * (num_tasks + 1)


def test_rank3_volumes():
    layer = SFGConv(4, 3, rank=3, seed=0)
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 6, 1)).astype("float32")
    streams = layer(x, training=True)
    assert [tuple(s.shape) for s in streams] == [(2, 6, 6, 6, 4)] * 3
    out = SFGConv(3, 3, rank=3, padding="valid", seed=1)(streams, training=False)
    assert [tuple(s.shape) for s in out] == [(2, 4, 4, 4, 3)] * 3
    assert tuple(layer.kernel.shape) == (3, 3, 3, 1, 4)


def test_fixed_assignment_with_empty_groups_returns_none_streams():
    layer = SFGConv(4, 3, num_tasks=3, fixed_assignment=[0, 0, 3, 3])
    out = layer(_images(), training=True)
    assert out[1] is None and out[2] is None
    assert tuple(out[0].shape) == (4, 8, 8, 4) and tuple(out[3].shape) == (4, 8, 8, 4)
    # groups without kernels cost nothing: no normalisation, activation or grouping logits for them
    assert layer.active_groups == [0, 3]
    assert len(layer.group_norms) == 2
    assert not hasattr(layer, "grouping_logits")
    # each group's output is non-zero exactly on its own kernels' channels
    active = _active(out, 4)
    assert np.all(active[:, :2, 0]) and not np.any(active[:, 2:, 0])
    assert np.all(active[:, 2:, 3]) and not np.any(active[:, :2, 3])
    # the next layer accepts the None streams
    nxt = SFGConv(4, 3, num_tasks=3, fixed_assignment=[0, 3, 3, 3])(out, training=False)
    assert nxt[1] is None and nxt[2] is None


def test_invalid_arguments_name_the_value():
    with pytest.raises(ValueError, match="fixed_assignment"):
        SFGConv(4, 3, fixed_assignment=[0, 1, 3, 0])
    with pytest.raises(ValueError, match="sampling='per_pixel'"):
        SFGConv(4, 3, sampling="per_pixel")
    with pytest.raises(ValueError, match="p_init"):
        SFGConv(4, 3, p_init=[0.5, 0.5])
    with pytest.raises(ValueError, match="rank"):
        SFGConv(4, 3, rank=1)
    layer = SFGConv(4, 3, num_tasks=2)
    with pytest.raises(ValueError, match="3 streams"):
        layer([_images(), _images()])


# === Initialisation ===


def test_constant_init_matches_p0():
    for num_tasks in (2, 3):
        p0 = np.linspace(1.0, 2.0, num_tasks + 1)
        p0 = p0 / p0.sum()
        layer = SFGConv(7, 3, num_tasks=num_tasks, p_init=p0.tolist())
        layer.build((None, 8, 8, 2))
        p = layer.grouping_probabilities()
        assert p.shape == (7, num_tasks + 1)
        np.testing.assert_allclose(p, np.tile(p0, (7, 1)), atol=1e-6)


def test_default_p0_is_shared_06():
    layer = SFGConv(5, 3)
    layer.build((None, 8, 8, 1))
    np.testing.assert_allclose(layer.grouping_probabilities(), np.tile([0.2, 0.2, 0.6], (5, 1)), atol=1e-6)
    layer3 = SFGConv(5, 3, num_tasks=3)
    layer3.build((None, 8, 8, 1))
    np.testing.assert_allclose(layer3.grouping_probabilities()[0], [0.4 / 3] * 3 + [0.6], atol=1e-6)


@pytest.mark.parametrize("num_tasks", [2, 3])
def test_random_init_rows_are_dirichlet_draws(num_tasks):
    layer = SFGConv(3000, 1, num_tasks=num_tasks, init_mode="random", seed=5)
    layer.build((None, 2, 2, 1))
    p = layer.grouping_probabilities()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(p > 0)
    assert p.std(axis=0).min() > 0.1  # rows vary
    groups = num_tasks + 1
    # Dirichlet(1, ..., 1) marginals are Beta(1, T): mean 1/(T+1), variance T / ((T+1)^2 (T+2))
    standard_error = np.sqrt(num_tasks / (groups**2 * (groups + 1)) / p.shape[0])
    np.testing.assert_allclose(p.mean(axis=0), 1.0 / groups, atol=4 * standard_error)
    expected_var = num_tasks / (groups**2 * (groups + 1))
    np.testing.assert_allclose(p.var(axis=0), expected_var, rtol=0.15)
    # the seed makes the draws reproducible
    again = SFGConv(3000, 1, num_tasks=num_tasks, init_mode="random", seed=5)
    again.build((None, 2, 2, 1))
    np.testing.assert_allclose(again.grouping_probabilities(), p, atol=1e-7)


def test_vertex_init_gives_block_proportions():
    cases = [(10, [0.2, 0.2, 0.6], [2, 2, 6]), (20, [0.25, 0.25, 0.5], [5, 5, 10]), (12, [0.25] * 4, [3] * 4)]
    for filters, p0, counts in cases:
        layer = SFGConv(filters, 3, num_tasks=len(p0) - 1, p_init=p0, init_mode="vertex")
        layer.build((None, 8, 8, 1))
        assignment = layer.map_assignment()
        assert np.bincount(assignment, minlength=len(p0)).tolist() == counts
        np.testing.assert_array_equal(assignment, np.repeat(np.arange(len(p0)), counts))  # consecutive blocks
        p = layer.grouping_probabilities()
        np.testing.assert_allclose(p[np.arange(filters), assignment], 0.98, atol=1e-5)
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)


# === Sampling ===

_P = np.array([0.1, 0.2, 0.7])
_ORIGINAL_BUG = np.exp(_P) / np.exp(_P).sum()  # Gumbel noise on p instead of log p: softmax(p)


def _check_frequencies(counts, draws):
    frequency = counts / draws
    standard_error = np.sqrt(_P * (1 - _P) / draws)
    assert np.all(np.abs(frequency - _P) < 3 * standard_error), (frequency, _P, standard_error)
    assert np.all(np.abs(frequency - _ORIGINAL_BUG) > 0.05), frequency
    assert frequency[2] > 0.65  # the original code could never exceed about 0.58


def _fixed_p_layer(sampling, filters=4, activation="prelu", seed=11):
    layer = SFGConv(filters, 3, p_init=_P.tolist(), learn_p=False, sampling=sampling, activation=activation, seed=seed)
    layer.build((None, 6, 6, 2))
    return layer


@pytest.mark.parametrize("sampling", ["per_example", "per_batch"])
def test_hard_assignment_frequencies_match_p(sampling):
    layer = _fixed_p_layer(sampling)
    draws = 3000
    if sampling == "per_example":
        assignment = keras.ops.convert_to_numpy(layer._assignment(layer.probabilities(), draws, True))
        assert assignment.shape == (draws, 4, 3)
    else:
        # one architecture per pass: `num_samples` passes stacked along the batch axis (2 examples per pass)
        with sampling_scope(stochastic=True, num_samples=draws):
            assignment = keras.ops.convert_to_numpy(layer._assignment(layer.probabilities(), 2 * draws, True))
        assert assignment.shape == (2 * draws, 4, 3)
        np.testing.assert_array_equal(assignment[0::2], assignment[1::2])  # constant within a pass
        assignment = assignment[0::2]
    assert set(np.unique(assignment)) == {0.0, 1.0}
    np.testing.assert_array_equal(assignment.sum(axis=-1), 1.0)
    _check_frequencies(assignment.reshape(-1, 3).sum(axis=0), assignment.shape[0] * 4)


def test_per_batch_draws_one_architecture_per_call():
    layer = _fixed_p_layer("per_batch", activation="linear")
    x = _images(batch=3, size=4, channels=2)
    sample = tf.function(lambda v: layer(v, training=False, stochastic=True))
    counts, draws = np.zeros(3), 0
    for _ in range(500):
        active = _active(sample(x), 3)
        assert np.all(active == active[:1])  # every example of the call shares the architecture
        counts += active[0].sum(axis=0)
        draws += active.shape[1]
    np.testing.assert_array_equal(counts.sum(), draws)
    _check_frequencies(counts, draws)


def test_layer_outputs_follow_p_per_example():
    """End to end: which group's output channel is non-zero, over 3000 example-kernel draws."""
    layer = _fixed_p_layer("per_example", filters=6, activation="linear")
    x = _images(batch=500, size=4, channels=2)
    active = _active(layer(x, training=True), 3)
    np.testing.assert_array_equal(active.sum(axis=-1), 1)  # exactly one group per example and kernel
    _check_frequencies(active.reshape(-1, 3).sum(axis=0), active.shape[0] * active.shape[1])
    # per-example sampling: examples of the same batch get different architectures
    assert len({a.tobytes() for a in active}) > 100


def test_map_inference_is_argmax_and_deterministic():
    layer = SFGConv(6, 3, p_init=[0.5, 0.3, 0.2], init_mode="vertex", activation="linear", seed=0)
    x = _images()
    first = [keras.ops.convert_to_numpy(s) for s in layer(x, training=False)]
    second = [keras.ops.convert_to_numpy(s) for s in layer(x, training=False)]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    active = _active(first, 3)
    expected = np.eye(3, dtype=bool)[layer.map_assignment()]
    np.testing.assert_array_equal(active, np.broadcast_to(expected, active.shape))
    # `stochastic=True` samples at inference: not every call equals the MAP one
    samples = [_active(layer(x, training=False, stochastic=True), 3) for _ in range(5)]
    assert any(not np.array_equal(s, active) for s in samples)


def test_same_seed_same_samples():
    for sampling in ("per_example", "per_batch"):
        _check_same_seed(sampling)


def _check_same_seed(sampling):
    x = _images()

    def run(seed):
        keras.utils.set_random_seed(3)
        layer = SFGConv(6, 3, sampling=sampling, seed=seed)
        return [np.concatenate([keras.ops.convert_to_numpy(s) for s in layer(x, training=True)]) for _ in range(3)]

    a, b, c = run(7), run(7), run(8)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], a[1])  # the generator advances between calls
    assert any(not np.array_equal(u, w) for u, w in zip(a, c))


def test_sampling_under_xla_is_reproducible_and_fresh():
    layer = _fixed_p_layer("per_example", activation="linear")
    x = _images(batch=8, size=6, channels=2)
    step = tf.function(lambda v: layer(v, training=False, stochastic=True), jit_compile=True)
    first = _active(step(x), 3)
    second = _active(step(x), 3)
    np.testing.assert_array_equal(first.sum(axis=-1), 1)
    assert not np.array_equal(first, second)


# === Masking: channels outside a group are exactly zero ===


@pytest.mark.parametrize("num_tasks", [2, 3])
def test_hard_masks_are_exact_after_bn_and_activation(num_tasks):
    for sampling in ("per_example", "per_batch"):
        _check_exact_masks(sampling, num_tasks)


def _check_exact_masks(sampling, num_tasks):
    first = SFGConv(8, 3, num_tasks=num_tasks, sampling=sampling, seed=3)
    second = SFGConv(8, 3, num_tasks=num_tasks, sampling=sampling, seed=4)
    x = _images(batch=6)
    first.build(x.shape)
    second.build([(None, 8, 8, 8)] * (num_tasks + 1))
    _set_prelu_alpha(first)
    _set_prelu_alpha(second)
    for layer in (first, second):  # non-zero beta: masking before BN would leak it into masked channels
        for norm in layer.group_norms:
            norm.beta.assign(np.full(norm.beta.shape, 0.5, dtype="float32"))
    groups = num_tasks + 1
    for kwargs in ({"training": True}, {"training": False, "stochastic": True}, {"training": False}):
        streams = first(x, **kwargs)
        for layer_out in (streams, second(streams, **kwargs)):
            active = _active(layer_out, groups)
            np.testing.assert_array_equal(active.sum(axis=-1), 1, err_msg=str(kwargs))
    # MAP: every example uses argmax p
    active = _active(first(x, training=False), groups)
    expected = np.eye(groups, dtype=bool)[first.map_assignment()]
    np.testing.assert_array_equal(active, np.broadcast_to(expected, active.shape))


def test_soft_mode_weights_every_group():
    layer = SFGConv(4, 3, hard=False, seed=0, activation="linear")
    streams = layer(_images(), training=True)
    active = _active(streams, 3)
    assert np.all(active)  # relaxed weights are positive for every group


# === Gradient isolation (paper Fig. 4) ===


def _two_layer_net(first, second, num_tasks=2):
    merge = StreamMerge(num_tasks)
    heads = [keras.layers.Dense(1, name=f"head_{t}") for t in range(num_tasks)]

    def forward(x, **kwargs):
        a = first(x, **kwargs)
        b = second(a, **kwargs)
        features = merge(b)
        return a, b, [head(keras.ops.mean(f, axis=(1, 2))) for head, f in zip(heads, features)]

    return forward


def _task_gradient(forward, layers, x, target, task, **kwargs):
    """Gradients of one task's loss wrt every layer's kernel (numpy) and logits, plus the forward streams."""
    with tf.GradientTape() as tape:
        a, b, outputs = forward(x, **kwargs)
        loss = keras.ops.mean(keras.ops.square(outputs[task] - target))
    logits = [layer.grouping_logits for layer in layers if hasattr(layer, "grouping_logits")]
    grads = tape.gradient(loss, [layer.kernel for layer in layers] + logits)
    return [keras.ops.convert_to_numpy(g) for g in grads[: len(layers)]], grads[len(layers) :], a, b


def _task_gradients(forward, layers, x, targets, **kwargs):
    return [_task_gradient(forward, layers, x, target, t, **kwargs) for t, target in enumerate(targets)]


def _assert_isolated(task, kernel_grads, first_assignment, second_assignment, num_tasks=2):
    """Kernels of other tasks: exactly zero gradient; own and shared kernels: non-zero."""
    shared = num_tasks
    g1, g2 = kernel_grads
    for grad, assignment in ((g1, first_assignment), (g2, second_assignment)):
        for k, group in enumerate(assignment):
            column = grad[..., k]
            if group not in (task, shared):
                assert np.all(column == 0.0), f"task {task} leaks into kernel {k} of group {group}"
            else:
                assert np.any(column != 0.0), f"task {task} gives no gradient to kernel {k} of group {group}"
    # second layer, input rows fed by other tasks' kernels of the first layer: exactly zero
    other_rows = [c for c, group in enumerate(first_assignment) if group not in (task, shared)]
    assert np.all(g2[:, :, other_rows, :] == 0.0)
    # a task kernel of the second layer reads merge(F_task, F_shared): rows of both are non-zero
    own_rows = [c for c, group in enumerate(first_assignment) if group in (task, shared)]
    task_cols = [k for k, group in enumerate(second_assignment) if group == task]
    assert np.all(np.abs(g2[:, :, own_rows][..., task_cols]).sum(axis=(0, 1)) > 0)
    # a shared kernel of the second layer reads F_shared only: rows of task kernels are zero, shared rows not
    shared_rows = [c for c, group in enumerate(first_assignment) if group == shared]
    task_rows = [c for c, group in enumerate(first_assignment) if group != shared]
    shared_cols = [k for k, group in enumerate(second_assignment) if group == shared]
    assert np.all(g2[:, :, task_rows][..., shared_cols] == 0.0)
    assert np.all(np.abs(g2[:, :, shared_rows][..., shared_cols]).sum(axis=(0, 1)) > 0)


def test_gradient_isolation_fixed_assignment():
    first_assignment = [0, 0, 1, 1, 2, 2]
    second_assignment = [0, 1, 2, 0, 1, 2]
    first = SFGConv(6, 3, fixed_assignment=first_assignment)
    second = SFGConv(6, 3, fixed_assignment=second_assignment)
    forward = _two_layer_net(first, second)
    x = _images(batch=5)
    targets = [np.ones((5, 1), "float32"), -np.ones((5, 1), "float32")]
    for task, (grads, _, _, _) in enumerate(_task_gradients(forward, [first, second], x, targets, training=True)):
        _assert_isolated(task, grads, first_assignment, second_assignment)


def _assignment_from_outputs(streams, num_groups):
    active = _active(streams, num_groups)
    np.testing.assert_array_equal(active.sum(axis=-1), 1)
    assert np.all(active == active[:1]), "per_batch sampling must give one architecture per batch"
    return np.argmax(active[0], axis=-1)


def test_gradient_isolation_learned_per_batch_sampling():
    for seed in (0, 1, 2):  # three sampled architectures
        _check_isolation_per_batch(seed)


def _check_isolation_per_batch(seed):
    p0 = [0.3, 0.3, 0.4]
    first = SFGConv(8, 3, p_init=p0, sampling="per_batch", seed=10 + seed)
    second = SFGConv(8, 3, p_init=p0, sampling="per_batch", seed=20 + seed)
    x = _images(batch=5)
    first.build(x.shape)
    second.build([(None, 8, 8, 8)] * 3)
    _set_prelu_alpha(first)
    _set_prelu_alpha(second)
    forward = _two_layer_net(first, second)
    targets = [np.ones((5, 1), "float32"), -np.ones((5, 1), "float32")]
    # same seeds for the two task tapes: both see the same sampled architecture
    state = [keras.ops.convert_to_numpy(layer.seed_generator.state) for layer in (first, second)]
    per_task = []
    for task in range(2):
        for layer, s in zip((first, second), state):
            layer.seed_generator.state.assign(s)
        per_task.append(_task_gradient(forward, [first, second], x, targets[task], task, training=True))
    assignments = []
    for _, logit_grads, a, b in per_task:
        assignments.append((_assignment_from_outputs(a, 3), _assignment_from_outputs(b, 3)))
        assert all(np.any(keras.ops.convert_to_numpy(g) != 0) for g in logit_grads)  # p is learned
    np.testing.assert_array_equal(assignments[0][0], assignments[1][0])
    np.testing.assert_array_equal(assignments[0][1], assignments[1][1])
    first_assignment, second_assignment = assignments[0]
    for assignment in assignments[0]:  # the seeds give every group at least one kernel: a meaningful check
        assert set(assignment.tolist()) == {0, 1, 2}, assignment
    for task, (grads, _, _, _) in enumerate(per_task):
        _assert_isolated(task, grads, first_assignment, second_assignment)


def test_gradient_isolation_learned_map_three_tasks():
    p0 = [0.25, 0.25, 0.25, 0.25]
    first = SFGConv(8, 3, num_tasks=3, p_init=p0, init_mode="vertex")
    second = SFGConv(8, 3, num_tasks=3, p_init=p0, init_mode="vertex")
    forward = _two_layer_net(first, second, num_tasks=3)
    x = _images(batch=4)
    targets = [np.full((4, 1), v, "float32") for v in (1.0, -1.0, 0.5)]
    first_assignment = [0, 0, 1, 1, 2, 2, 3, 3]
    results = _task_gradients(forward, [first, second], x, targets, training=False)
    np.testing.assert_array_equal(first.map_assignment(), first_assignment)
    for task, (grads, _, _, _) in enumerate(results):
        _assert_isolated(task, grads, first_assignment, first_assignment, num_tasks=3)


# === Regularisation terms ===


def test_losses_are_weight_and_entropy_terms():
    layer = SFGConv(5, 3, kernel_l2=1e-3, entropy_weight=0.5, init_mode="random", seed=4)
    layer(_images(), training=True)
    assert len(layer.losses) == 2
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    p = layer.grouping_probabilities()
    entropy = -(p * np.log(p)).sum()
    expected = sorted([1e-3 * (kernel**2).sum(), -0.5 * entropy])
    np.testing.assert_allclose(sorted(float(v) for v in layer.losses), expected, rtol=1e-5)
    np.testing.assert_allclose(float(layer.entropy_penalty()), -0.5 * entropy, rtol=1e-5)
    np.testing.assert_allclose(float(layer.weight_penalty()), 1e-3 * (kernel**2).sum(), rtol=1e-5)
    # fixed p: no entropy term
    fixed = SFGConv(5, 3, learn_p=False)
    fixed(_images(), training=True)
    assert len(fixed.losses) == 1
    assert float(fixed.entropy_penalty()) == 0.0


# === Config and saving (Keras harness: tests/test_keras_conformance.py) ===


def test_config_round_trip():
    layer = SFGConv(
        6, (3, 3), num_tasks=3, p_init=[0.1, 0.2, 0.3, 0.4], init_mode="vertex", hard=False, sampling="per_batch",
        merge="concat", activation="relu", inference_statistics="moving", kernel_l2=1e-4, entropy_weight=1e-3,
        temperature=0.5, seed=9, name="sfg",
    )
    clone = SFGConv.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, SFGConv) and restored.get_config() == layer.get_config()
    fixed = SFGConv(4, 3, fixed_assignment=[0, 2, 2, 1])
    assert SFGConv.from_config(fixed.get_config()).fixed_assignment == [0, 2, 2, 1]


def _functional_model(seed=0):
    inputs = keras.Input((8, 8, 1))
    streams = SFGConv(6, 3, seed=seed, name="sfg_1")(inputs)
    streams = SFGConv(6, 3, seed=seed + 1, merge="concat", name="sfg_2")(streams)
    features = StreamMerge(2)(streams)
    outputs = [keras.layers.Dense(1, name=f"head_{t}")(keras.layers.GlobalAveragePooling2D()(f)) for t, f in
               enumerate(features)]
    return keras.Model(inputs, outputs)


def test_functional_model_keras_save_and_load(tmp_path):
    model = _functional_model()
    x = _images(batch=4, channels=1)
    rng = np.random.default_rng(1)
    for weight in model.weights:  # a trained-looking state: learned p, BN statistics, temperature
        weight.assign(keras.ops.convert_to_numpy(weight) + 0.1 * np.abs(rng.normal(size=weight.shape)))
    before = [keras.ops.convert_to_numpy(o) for o in model.predict(x, verbose=0)]
    path = tmp_path / "functional.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    after = [keras.ops.convert_to_numpy(o) for o in restored.predict(x, verbose=0)]
    for a, b in zip(before, after):
        np.testing.assert_allclose(a, b, atol=1e-6)
    original = model.get_layer("sfg_2")
    loaded = restored.get_layer("sfg_2")
    np.testing.assert_array_equal(original.grouping_probabilities(), loaded.grouping_probabilities())
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(original.temperature), keras.ops.convert_to_numpy(
        loaded.temperature))
    # stochastic inference of a functional model goes through `sampling_scope`
    with sampling_scope(stochastic=True):
        sampled = [keras.ops.convert_to_numpy(o) for o in restored(x, training=False)]
    assert any(not np.allclose(a, b) for a, b in zip(after, sampled))


def test_mixed_float16():
    keras.config.set_dtype_policy("mixed_float16")
    layer = SFGConv(4, 3, seed=0)
    streams = layer(_images(), training=True)
    assert all(s.dtype == tf.float16 for s in streams)
    assert layer.kernel.dtype == "float32" and layer.grouping_logits.dtype == "float32"
    assert layer.temperature.dtype == "float32"
    assert all(np.all(np.isfinite(keras.ops.convert_to_numpy(s))) for s in streams)
    np.testing.assert_array_equal(_active(streams, 3).sum(axis=-1), 1)


def test_block_assignment_splits_the_remainder_fairly():
    assert block_assignment(10, [0.2, 0.2, 0.6]).tolist() == [0, 0, 1, 1, 2, 2, 2, 2, 2, 2]
    assert np.bincount(block_assignment(64, [1 / 3] * 3)).tolist() == [22, 21, 21]
    assert np.bincount(block_assignment(8, [1 / 3] * 3)).tolist() == [3, 3, 2]
    assert np.bincount(block_assignment(8, [1 / 3] * 3 + [0.0]), minlength=4).tolist() == [3, 3, 2, 0]
    assert np.bincount(block_assignment(64, [0.2, 0.2, 0.6])).tolist() == [13, 13, 38]
    with pytest.raises(ValueError, match="proportions"):
        block_assignment(4, [0.5, 0.6])


def test_map_ties_go_to_the_shared_group():
    """Constant-p with uniform p: the deterministic (MAP) architecture is hard sharing, not 'all task 1'."""
    import keras as _keras

    from sfg_keras.layers import SFGConv as _SFGConv

    layer = _SFGConv(6, 3, num_tasks=2, p_init=[1 / 3, 1 / 3, 1 / 3], learn_p=False, seed=0)
    x = _keras.random.normal((4, 8, 8, 2), seed=1)
    outputs = layer(x, training=False, stochastic=False)
    assert layer.map_assignment().tolist() == [2] * 6
    assert float(_keras.ops.max(_keras.ops.abs(outputs[0]))) == 0.0
    assert float(_keras.ops.max(_keras.ops.abs(outputs[1]))) == 0.0
    assert float(_keras.ops.max(_keras.ops.abs(outputs[2]))) > 0.0
