"""Acceptance tests of the SFG networks: every architecture and grouping, training, saving, missing labels."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from sfg_keras.layers import CrossStitch, SFGConv, TemperatureSchedule, block_assignment
from sfg_keras.losses import RMSE, CrossEntropy, DicePlusCrossEntropy
from sfg_keras.models import (
    GROUPINGS,
    NetworkOptions,
    SFGNetwork,
    TaskHead,
    sfg_highresnet,
    sfg_small_cnn,
    sfg_vgg11,
)

_TASKS = {
    2: [TaskHead("a", "regression", 1), TaskHead("b", "classification", 2)],
    3: [TaskHead("a", "regression", 1), TaskHead("b", "classification", 2), TaskHead("c", "regression", 1)],
}
_DENSE_TASKS = {
    2: [TaskHead("ct", "regression", 1), TaskHead("organs", "segmentation", 3)],
    3: [TaskHead("ct", "regression", 1), TaskHead("organs", "segmentation", 3), TaskHead("edges", "segmentation", 2)],
}


def _losses(tasks):
    return {t.name: (RMSE() if t.type == "regression" else CrossEntropy()) for t in tasks}


def _two_task_data(n=96, size=12, num_tasks=2, seed=0):
    """Noisy images with one bar: `a` its contrast (absolute value), `b` its polarity (bright or dark), `c` its
    length."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 0.3, size=(n, size, size, 1)).astype("float32")
    contrast = rng.uniform(0.5, 2.0, n).astype("float32")
    bright = rng.integers(0, 2, n)
    length = rng.integers(4, 9, n)
    for i in range(n):
        r, c = rng.integers(0, size - length[i] + 1), rng.integers(0, size - 2 + 1)
        x[i, r : r + length[i], c : c + 2, 0] += contrast[i] * (2 * bright[i] - 1)
    y = {"a": contrast[:, None], "b": bright}
    if num_tasks == 3:
        y["c"] = (length / 8).astype("float32")[:, None]
    return x, y


def _expected_assignment(grouping, filters, num_tasks):
    groups = num_tasks + 1
    if grouping == "hard_sharing":
        return np.full(filters, num_tasks)
    if grouping == "constant_mask":
        return block_assignment(filters, [1.0 / groups] * groups)
    if grouping in ("single_task", "cross_stitch"):
        return block_assignment(filters, [1.0 / num_tasks] * num_tasks + [0.0])
    return None


def _check_grouping(model, grouping, num_tasks):
    groups = num_tasks + 1
    layers = model.sfg_layers
    assert layers, "no SFG layer"
    for layer in layers:
        k = layer.filters
        if grouping == "learned":
            p0 = [1.0 / groups] * groups  # the default recipe's balanced start
            np.testing.assert_allclose(layer.grouping_probabilities(), np.tile(p0, (k, 1)), atol=1e-6)
            assert layer.grouping_logits.trainable and not layer.is_fixed
        elif grouping == "constant_p":
            np.testing.assert_allclose(layer.grouping_probabilities(), 1.0 / groups, atol=1e-6)
            assert not layer.grouping_logits.trainable and not layer.is_fixed and not layer.learns_p
        else:
            expected = _expected_assignment(grouping, k, num_tasks)
            np.testing.assert_array_equal(layer.fixed_assignment, expected)
            counts = np.bincount(expected, minlength=groups)
            assert np.all(np.diff(expected) >= 0)  # consecutive blocks
            if grouping == "constant_mask":
                assert counts.max() - counts.min() <= 1
            if grouping in ("single_task", "cross_stitch"):
                assert counts[-1] == 0 and counts[:-1].max() - counts[:-1].min() <= 1
            assert layer.active_groups == [g for g in range(groups) if counts[g] > 0]
    cross_stitch = [layer for layer in model.trunk if isinstance(layer, CrossStitch)]
    if grouping == "cross_stitch":
        assert len(cross_stitch) == len(layers)
        for unit, layer in zip(cross_stitch, layers):  # a unit right after each SFG conv
            assert model.trunk.index(unit) == model.trunk.index(layer) + 1
    else:
        assert not cross_stitch


_BUILDS = {
    "sfg_vgg11": (
        lambda tasks, g: sfg_vgg11(tasks, NetworkOptions(width_multiplier=1 / 8, grouping=g, seed=0)),
        (2, 16, 16, 1),
        False,
    ),
    "sfg_highresnet": (
        lambda tasks, g: sfg_highresnet(tasks, NetworkOptions(width_multiplier=0.25, grouping=g, seed=0)),
        (2, 8, 8, 1),
        True,
    ),
    "sfg_small_cnn": (
        lambda tasks, g: sfg_small_cnn(tasks, NetworkOptions(grouping=g, seed=0), widths=(6, 8)),
        (2, 8, 8, 1),
        False,
    ),
}


@pytest.mark.parametrize("num_tasks", [2, 3])
@pytest.mark.parametrize("architecture", sorted(_BUILDS))
def test_every_architecture_builds_for_every_grouping(architecture, num_tasks):
    build, shape, dense = _BUILDS[architecture]
    tasks = (_DENSE_TASKS if dense else _TASKS)[num_tasks]
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    counts = {}
    for grouping in GROUPINGS:
        model = build(tasks, grouping)
        model.build(shape)  # one eager MAP pass
        outputs = model(x, training=True)  # one eager sampled pass
        counts[grouping] = model.count_params()
        message = f"{architecture} T={num_tasks} grouping={grouping}: {counts}"
        assert sorted(outputs) == sorted(t.name for t in tasks), message
        for task in tasks:
            expected = (shape[0], task.units) if not dense else (*shape[:-1], task.units)
            assert tuple(outputs[task.name].shape) == expected, message
            assert outputs[task.name].dtype == tf.float32, message
        assert all(np.all(np.isfinite(keras.ops.convert_to_numpy(v))) for v in outputs.values()), message
        _check_grouping(model, grouping, num_tasks)
        assert len(model.sfg_layers) == {"sfg_vgg11": 8, "sfg_highresnet": 5, "sfg_small_cnn": 2}[architecture]
    message = f"{architecture} T={num_tasks} parameter counts: {counts}"
    assert counts["learned"] == counts["constant_p"], message
    assert counts["cross_stitch"] > counts["single_task"], message
    if architecture == "sfg_highresnet":
        # residual blocks exist once per present stream: 1 (hard sharing), T (single task), T + 1 (the others)
        assert counts["hard_sharing"] < counts["single_task"] < counts["constant_mask"] < counts["learned"], message
    else:
        # same kernels everywhere; fixed groupings re-split BN / PReLU channels, learned adds logits and groups
        assert counts["hard_sharing"] == counts["constant_mask"] == counts["single_task"] < counts["learned"], message


def _plain_vgg11_gap(tasks, width_multiplier):
    inputs = keras.Input((16, 16, 1))
    x = inputs
    for i, width in enumerate((64, 128, 256, 256, 512, 512, 512, 512)):
        x = keras.layers.Conv2D(max(1, round(width * width_multiplier)), 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.PReLU(shared_axes=[1, 2])(x)
        if i in (0, 1, 3, 5):
            x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, [keras.layers.Dense(t.units)(x) for t in tasks])


@pytest.mark.parametrize("num_tasks", [2, 3])
def test_hard_sharing_vgg11_has_plain_vgg11_parameter_count(num_tasks):
    tasks = _TASKS[num_tasks]
    model = sfg_vgg11(tasks, NetworkOptions(width_multiplier=0.125, grouping="hard_sharing"))
    model.build((2, 16, 16, 1))
    plain = _plain_vgg11_gap(tasks, 0.125)
    temperatures = len(model.sfg_layers)  # one non-trainable temperature scalar per SFG layer
    assert temperatures == 8
    assert model.count_params() == plain.count_params() + temperatures, (model.count_params(), plain.count_params())
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == sum(int(np.prod(w.shape)) for w in plain.trainable_weights)
    # learned SFG adds only the grouping logits and the per-group BN / PReLU of the extra groups
    learned = sfg_vgg11(tasks, NetworkOptions(width_multiplier=0.125, grouping="learned"))
    learned.build((2, 16, 16, 1))
    kernels = sum(int(np.prod(layer.kernel.shape)) for layer in learned.sfg_layers)
    assert kernels == sum(int(np.prod(layer.kernel.shape)) for layer in model.sfg_layers)
    logits = sum(layer.filters * (num_tasks + 1) for layer in learned.sfg_layers)
    per_group = sum(layer.filters * 5 for layer in learned.sfg_layers) * num_tasks  # gamma, beta, mean, var, alpha
    schedule = 2 * len(learned.sfg_layers)  # non-trainable sampling-noise and entropy-scale weights per learned layer
    assert learned.count_params() == model.count_params() + logits + per_group + schedule


def test_learned_default_p0_and_custom_p0():
    model = sfg_small_cnn(_TASKS[2], NetworkOptions(grouping="learned", p_init=(0.5, 0.3, 0.2)), widths=(4,))
    model.build((2, 8, 8, 1))
    np.testing.assert_allclose(model.sfg_layers[0].grouping_probabilities(), np.tile([0.5, 0.3, 0.2], (4, 1)),
                               atol=1e-6)
    shares = model.group_shares()["sfg_conv_1"]
    assert list(shares) == ["a", "b", "shared"]
    assert shares["a"] == pytest.approx(0.5, abs=1e-6)
    assert model.map_counts()["sfg_conv_1"] == {"a": 4, "b": 0, "shared": 0}


def _fit_and_compare(model, tasks, x, y, epochs, batch_size=16, evaluate=True):
    model.build((batch_size, *x.shape[1:]))
    model.compile(keras.optimizers.Adam(0.03), loss=_losses(tasks))
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=0).batch(batch_size, drop_remainder=True)
    before = model.evaluate(x, y, batch_size=batch_size, verbose=0, return_dict=True) if evaluate else None
    history = model.fit(dataset, epochs=epochs, verbose=0)
    after = model.evaluate(x, y, batch_size=batch_size, verbose=0, return_dict=True) if evaluate else None
    return before, after, history


@pytest.mark.slow
@pytest.mark.parametrize(("grouping", "num_tasks"), [(g, 2) for g in GROUPINGS] + [("learned", 3)])
def test_fit_lowers_every_task_loss(grouping, num_tasks):
    keras.utils.set_random_seed(0)
    tasks = _TASKS[num_tasks]
    x, y = _two_task_data(num_tasks=num_tasks)
    model = sfg_small_cnn(tasks, NetworkOptions(grouping=grouping, seed=0), widths=(8, 8))
    # deterministic (MAP) evaluation before / after for a sampled and a fixed grouping; uniform p (constant_p) has
    # no MAP architecture (argmax ties), it is only ever used with sampled architectures
    evaluate = grouping in ("learned", "hard_sharing")
    before, after, history = _fit_and_compare(model, tasks, x, y, epochs=5, evaluate=evaluate)
    for task in tasks:
        key = f"{task.name}_loss"
        first, last = history.history[key][0], history.history[key][-1]  # sampled architectures, as trained
        assert last < 0.9 * first, (grouping, key, history.history[key])
        if evaluate:
            assert after[key] < 0.85 * before[key], (grouping, key, before[key], after[key])
    for key in ("data_loss", "weight_term", "entropy_term", "temperature"):
        assert key in history.history
    if grouping == "learned":  # the default recipe: an entropy bonus while searching, none after the commit
        assert history.history["entropy_term"][0] < 0.0 and model.committed
        assert history.history["entropy_term"][-1] == 0.0
    else:
        assert history.history["entropy_term"][-1] == 0.0


@pytest.mark.slow
def test_three_layer_network_learns_both_tasks_and_moves_p():
    keras.utils.set_random_seed(0)
    tasks = _TASKS[2]
    x, y = _two_task_data(n=160)
    model = sfg_small_cnn(tasks, NetworkOptions(grouping="learned", seed=1), widths=(8, 8, 8))
    before, after, history = _fit_and_compare(model, tasks, x, y, epochs=30)  # 300 steps
    assert int(model.optimizer.iterations.numpy()) == 300
    for task in tasks:
        key = f"{task.name}_loss"
        assert after[key] < 0.6 * before[key], (key, before[key], after[key])
    moved = [np.abs(p - np.array([0.2, 0.2, 0.6])).max() for p in model.grouping_probabilities().values()]
    assert len(moved) == 3 and min(moved) > 1e-3, moved


def test_evaluate_predict_and_keras_save_load(tmp_path):
    tasks = _TASKS[2]
    x, y = _two_task_data(n=16)
    model = sfg_small_cnn(tasks, NetworkOptions(grouping="cross_stitch", merge="concat", seed=0), widths=(6, 6))
    model.build((8, 12, 12, 1))
    rng = np.random.default_rng(0)
    for weight in model.trainable_weights:  # a trained-looking state (mixing weights, BN, heads) without a fit
        weight.assign(keras.ops.convert_to_numpy(weight) + 0.1 * rng.normal(size=weight.shape).astype("float32"))
    model.compile("adam", loss=_losses(tasks))
    predicted = model.predict(x, batch_size=8, verbose=0)
    again = model.predict(x, batch_size=8, verbose=0)
    for name in predicted:
        np.testing.assert_array_equal(predicted[name], again[name])  # MAP inference is deterministic
    evaluated = model.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored, SFGNetwork)
    assert [type(layer).__name__ for layer in restored.trunk] == [type(layer).__name__ for layer in model.trunk]
    loaded = restored.predict(x, batch_size=8, verbose=0)
    for name in predicted:
        np.testing.assert_allclose(loaded[name], predicted[name], atol=1e-6)
    restored.compile("adam", loss=_losses(tasks))
    reevaluated = restored.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    for task in tasks:
        assert reevaluated[f"{task.name}_loss"] == pytest.approx(evaluated[f"{task.name}_loss"], rel=1e-5)


def test_learned_network_save_load_keeps_p_and_outputs(tmp_path):
    tasks = _TASKS[3]
    model = sfg_small_cnn(tasks, NetworkOptions(grouping="learned", init_mode="random", seed=4), widths=(6, 6))
    x, _ = _two_task_data(n=8, num_tasks=3)
    model.build(x.shape)
    path = tmp_path / "learned.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    for (name, p), (_, q) in zip(model.grouping_probabilities().items(), restored.grouping_probabilities().items()):
        np.testing.assert_array_equal(p, q, err_msg=name)
    out, loaded = model(x, training=False), restored(x, training=False)
    for name in out:
        np.testing.assert_allclose(keras.ops.convert_to_numpy(out[name]), keras.ops.convert_to_numpy(loaded[name]),
                                   atol=1e-6)
    assert restored.get_config()["temperature_schedule"] == model.get_config()["temperature_schedule"]


def test_same_seed_same_outputs():
    x, _ = _two_task_data(n=8)

    def run():
        keras.utils.set_random_seed(11)
        model = sfg_small_cnn(_TASKS[2], NetworkOptions(seed=5), widths=(6, 6))
        model.build(x.shape)
        return [keras.ops.convert_to_numpy(model(x, training=True)["a"]) for _ in range(2)]

    first, second = run(), run()
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert not np.array_equal(first[0], first[1])  # fresh architectures on every call


def test_fit_with_xla_sets_temperature():
    schedule = TemperatureSchedule(tau0=1.0, decay_rate=0.05, tau_min=0.1)
    tasks = _TASKS[2]
    model = sfg_small_cnn(tasks, NetworkOptions(seed=0, temperature_schedule=schedule), widths=(4,))
    x, y = _two_task_data(n=16)
    model.build((8, 12, 12, 1))
    model.compile("adam", loss=_losses(tasks), jit_compile=True)
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["temperature"][0] == pytest.approx((schedule.value(0) + schedule.value(1)) / 2, rel=1e-5)
    assert float(model.sfg_layers[0].temperature.numpy()) == pytest.approx(schedule.value(1), rel=1e-6)


def test_mixed_float16_fit_with_dense_heads_and_missing_pixels():
    keras.config.set_dtype_policy("mixed_float16")
    tasks = _DENSE_TASKS[2]
    model = sfg_small_cnn(tasks, NetworkOptions(seed=0), widths=(4, 4), dense=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 8, 8, 1)).astype("float32")
    ct = rng.normal(size=(4, 8, 8, 1)).astype("float32")
    ct[:, :, 6:] = np.nan  # padding
    organs = rng.integers(0, 3, size=(4, 8, 8))
    organs[:, 6:] = -1
    model.build(x.shape)
    assert model.sfg_layers[0].compute_dtype == "float16" and model.sfg_layers[0].kernel.dtype == "float32"
    model.compile("adam", loss={"ct": RMSE(), "organs": DicePlusCrossEntropy()})
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    history = model.fit(x, {"ct": ct, "organs": organs}, batch_size=4, epochs=3, verbose=0)
    assert all(np.all(np.isfinite(v)) for v in history.history.values())
    # `loss` includes the scheduled entropy bonus of the search; the task losses are `data_loss`
    assert history.history["data_loss"][-1] < history.history["data_loss"][0]
    outputs = model(x, training=False)
    assert all(v.dtype == tf.float32 for v in outputs.values())  # float32 heads
    assert tuple(outputs["organs"].shape) == (4, 8, 8, 3)
    predicted = model.predict(x, verbose=0)
    assert all(np.all(np.isfinite(v)) for v in predicted.values())


def test_missing_label_contributes_nothing_through_the_model():
    tasks = _TASKS[2]
    model = sfg_small_cnn(tasks, NetworkOptions(seed=0), widths=(6, 6))
    x, y = _two_task_data(n=8)
    model.build(x.shape)
    missing_a = y["a"].copy()
    missing_a[[0, 3]] = np.nan
    missing_b = y["b"].copy()
    missing_b[[1, 3]] = -1
    keep_a = np.array([i not in (0, 3) for i in range(8)])
    keep_b = np.array([i not in (1, 3) for i in range(8)])
    with tf.GradientTape(persistent=True) as tape:
        out = model(x, training=True)  # one sampled architecture shared by both computations
        masked = RMSE()(missing_a, out["a"]) + CrossEntropy()(missing_b, out["b"])
        reference = RMSE()(y["a"][keep_a], tf.boolean_mask(out["a"], keep_a)) + CrossEntropy()(
            y["b"][keep_b], tf.boolean_mask(out["b"], keep_b)
        )
    assert float(masked) == pytest.approx(float(reference), rel=1e-6)
    variables = model.trainable_variables
    for g_masked, g_ref, v in zip(tape.gradient(masked, variables), tape.gradient(reference, variables), variables):
        if g_ref is None:
            assert g_masked is None or np.all(keras.ops.convert_to_numpy(g_masked) == 0), v.path
            continue
        np.testing.assert_allclose(keras.ops.convert_to_numpy(g_masked), keras.ops.convert_to_numpy(g_ref),
                                   rtol=1e-5, atol=1e-7, err_msg=v.path)
    head_grads = tape.gradient(masked, out["a"])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(head_grads)[[0, 3]], 0.0)


def test_task_without_any_label_leaves_its_head_unchanged():
    tasks = _TASKS[2]
    model = sfg_small_cnn(tasks, NetworkOptions(seed=0), widths=(6,))
    x, y = _two_task_data(n=16)
    model.build((8, 12, 12, 1))
    model.compile("adam", loss=_losses(tasks))
    head_a = [keras.ops.convert_to_numpy(w).copy() for w in model.head_layers[0].weights]
    head_b = [keras.ops.convert_to_numpy(w).copy() for w in model.head_layers[1].weights]
    y = {"a": np.full_like(y["a"], np.nan), "b": y["b"]}
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert history.history["a_loss"][0] == 0.0
    for before, weight in zip(head_a, model.head_layers[0].weights):
        np.testing.assert_array_equal(before, keras.ops.convert_to_numpy(weight))
    head_b_now = [keras.ops.convert_to_numpy(w) for w in model.head_layers[1].weights]
    assert any(not np.array_equal(b, w) for b, w in zip(head_b, head_b_now))


def test_model_losses_are_the_regularisation_terms():
    model = sfg_small_cnn(
        _TASKS[2], NetworkOptions(kernel_l2=1e-3, entropy_weight=0.1, init_mode="random", seed=2), widths=(5, 6)
    )
    x, _ = _two_task_data(n=4)
    model.build(x.shape)
    model(x, training=True)
    weight = sum(1e-3 * (keras.ops.convert_to_numpy(layer.kernel) ** 2).sum() for layer in model.sfg_layers)
    entropy = 0.0
    for p in model.grouping_probabilities().values():
        entropy += -(p * np.log(p)).sum()
    total = sum(float(v) for v in model.losses)
    assert len(model.losses) == 4
    assert total == pytest.approx(weight - 0.1 * entropy, rel=1e-5)
    entropy_terms = sorted(float(v) for v in model.losses)[:2]  # the two negative terms
    assert sum(entropy_terms) == pytest.approx(-0.1 * entropy, rel=1e-5)


def test_network_errors():
    with pytest.raises(ValueError, match="grouping"):
        sfg_small_cnn(_TASKS[2], NetworkOptions(grouping="dense"))
    with pytest.raises(ValueError, match="num_tasks=3"):
        SFGNetwork(trunk=[SFGConv(4, 3, num_tasks=3)], heads=_TASKS[2],
                   head_layers=[keras.layers.Dense(1), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="one head layer per task"):
        SFGNetwork(trunk=[SFGConv(4, 3)], heads=_TASKS[2], head_layers=[keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="segmentation"):
        sfg_vgg11([TaskHead("a", "segmentation", 2), TaskHead("b", "regression", 1)])


def test_constant_mask_with_fewer_kernels_than_groups_runs():
    """A layer narrower than T + 1 leaves a group empty; the next layer's group then convolves zeros."""
    import numpy as _np

    from sfg_keras.models import TaskHead as _TaskHead
    from sfg_keras.models import sfg_vgg11 as _sfg_vgg11

    model = _sfg_vgg11(
        [_TaskHead("a", "regression", 1), _TaskHead("b", "classification", 2)],
        NetworkOptions(width_multiplier=0.03, grouping="constant_mask"),
    )
    model.build((None, 32, 32, 3))
    assert model.sfg_layers[0].filters == 2 and model.sfg_layers[0].active_groups == [0, 1]
    outputs = model(_np.ones((2, 32, 32, 3), "float32"), training=True)
    assert outputs["a"].shape == (2, 1) and outputs["b"].shape == (2, 2)
    assert _np.all(_np.isfinite(outputs["b"]))


def test_fit_traces_the_train_step_once_and_building_its_state_changes_no_weight():
    """`fit` creates the optimizer's slots and the losses' and metrics' states before its step is traced
    (`SFGNetwork.build_step_state`): TensorFlow then traces the step once instead of twice (once to create them,
    once without), and the zero batch it runs changes no weight, statistic or random state."""
    from sfg_keras.metrics import MaskedAccuracy

    tasks = [TaskHead("a", "regression", 1), TaskHead("b", "classification", 2)]
    model = sfg_small_cnn(tasks, NetworkOptions.from_recipe("fast", 2, seed=0), widths=(4, 4))
    model.build((None, 8, 8, 1))
    model.compile(keras.optimizers.Adam(0.01), loss={"a": RMSE(), "b": CrossEntropy()},
                  metrics={"b": [MaskedAccuracy(name="accuracy")]})
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8, 8, 1)).astype("float32")
    y = {"a": rng.normal(size=(16, 1)).astype("float32"), "b": rng.integers(0, 2, 16)}
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(4, drop_remainder=True)
    before = [v.numpy().copy() for v in model.weights]
    assert model.build_step_state(dataset) and model.optimizer.built
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(before, model.weights))
    unknown = tf.data.Dataset.from_generator(
        lambda: iter(dataset), output_signature=(tf.TensorSpec((None, None, None, 1)), dataset.element_spec[1]))
    assert not model.build_step_state(unknown)  # the image size is not known before the data is read: left to Keras
    traces = []
    step = model.train_step
    model.train_step = lambda data: traces.append(1) or step(data)
    history = model.fit(dataset, epochs=1, verbose=0)
    assert len(traces) == 1
    assert set(history.history) >= {"loss", "a_loss", "b_loss", "b_accuracy"}

    # Arrays (float64 images, as numpy makes them): the same, from their shapes.
    arrays = sfg_small_cnn(tasks, NetworkOptions.from_recipe("fast", 2, seed=0), widths=(4, 4))
    arrays.build((None, 8, 8, 1))
    arrays.compile(keras.optimizers.Adam(0.01), loss={"a": RMSE(), "b": CrossEntropy()})
    traces.clear()
    step = arrays.train_step
    arrays.train_step = lambda data: traces.append(1) or step(data)
    arrays.fit(x.astype("float64"), y, batch_size=4, epochs=1, verbose=0)
    assert len(traces) == 1 and arrays.optimizer.built
