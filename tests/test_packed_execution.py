"""Packed execution of fixed-assignment networks equals the dense formulation: outputs, gradients of every trainable
variable and batch-norm moving statistics, for every fixed baseline, T = 2 and 3, under XLA and mixed precision."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from sfg_keras.inference import map_predict, mc_predict
from sfg_keras.losses import RMSE, CrossEntropy
from sfg_keras.models import NetworkOptions, TaskHead, sfg_highresnet, sfg_small_cnn, sfg_vgg11

FIXED = ("hard_sharing", "constant_mask", "single_task", "cross_stitch")
TASKS = {
    2: [TaskHead("digit", "classification", 3), TaskHead("size", "regression", 1)],
    3: [TaskHead("digit", "classification", 3), TaskHead("size", "regression", 1), TaskHead("slant", "regression", 2)],
}


def _images(batch=4, size=8, channels=2, seed=0):
    return tf.constant(np.random.default_rng(seed).normal(size=(batch, size, size, channels)).astype("float32"))


def _perturb(model, seed=0):
    """Distinct non-trivial values for every BN / PReLU / cross-stitch variable, so that a wrong routing shows."""
    rng = np.random.default_rng(seed)
    for variable in model.variables:
        name = variable.path
        if name.endswith(("gamma", "beta", "alpha", "moving_mean")) or "cross_stitch" in name:
            variable.assign(variable + rng.normal(0.0, 0.2, tuple(variable.shape)).astype(variable.dtype))
        if name.endswith("moving_variance"):
            variable.assign(rng.uniform(0.5, 1.5, tuple(variable.shape)).astype(variable.dtype))


def _step(model, x, packed, moving):
    model.packed_execution = packed
    for variable, value in zip(model.non_trainable_variables, moving):
        variable.assign(value)
    with tf.GradientTape() as tape:
        outputs = model(x, training=True)
        loss = sum(tf.reduce_sum(tf.sin(o * (i + 1.0))) for i, o in enumerate(outputs.values()))
    grads = tape.gradient(loss, [v.value for v in model.trainable_variables])
    return (
        {k: np.array(v) for k, v in outputs.items()},
        [None if g is None else np.array(g) for g in grads],
        [np.array(v) for v in model.non_trainable_variables],
    )


def _build(grouping, num_tasks, builder=sfg_small_cnn, size=8, widths=None, **kwargs):
    keras.utils.set_random_seed(1)
    structure = {} if widths is None else {"widths": widths}
    model = builder(TASKS[num_tasks], NetworkOptions(grouping=grouping, seed=3, **kwargs), **structure)
    model.build((None, size, size, 2))
    _perturb(model)
    return model


@pytest.mark.parametrize("num_tasks", [2, 3])
@pytest.mark.parametrize("grouping", FIXED)
def test_packed_training_step_equals_dense(grouping, num_tasks):
    model = _build(grouping, num_tasks, widths=(5, 7, 6))
    assert model.execution_plan.packed
    x = _images()
    moving = [np.array(v) for v in model.non_trainable_variables]
    packed = _step(model, x, True, moving)
    dense = _step(model, x, False, moving)
    for name in packed[0]:
        np.testing.assert_allclose(packed[0][name], dense[0][name], rtol=1e-4, atol=1e-5, err_msg=name)
    for variable, a, b in zip(model.trainable_variables, packed[1], dense[1]):
        assert (a is None) == (b is None), variable.path
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5, err_msg=variable.path)
    for variable, a, b in zip(model.non_trainable_variables, packed[2], dense[2]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=variable.path)
    assert any(not np.allclose(a, m) for a, m in zip(packed[2], moving))  # the BN statistics did move


@pytest.mark.parametrize("grouping", ["constant_mask", "cross_stitch"])
def test_packed_inference_equals_dense_for_every_mode(grouping):
    model = _build(grouping, 2, widths=(4, 6))
    x = _images(batch=6)
    results = {}
    for packed in (True, False):
        model.packed_execution = packed
        results[packed] = {
            "train_false": {k: np.array(v) for k, v in model(x, training=False).items()},
            "map": map_predict(model, np.array(x), batch_size=3),
            "mc": mc_predict(model, np.array(x), num_samples=3, batch_size=3),
        }
        from sfg_keras import inference

        inference._COMPILED.pop(model, None)  # the compiled functions were traced with one path
    for key in ("digit", "size"):
        np.testing.assert_allclose(results[True]["train_false"][key], results[False]["train_false"][key], atol=1e-5)
    np.testing.assert_allclose(results[True]["map"]["size"]["mean"], results[False]["map"]["size"]["mean"],
                               atol=1e-5)
    np.testing.assert_allclose(results[True]["mc"]["digit"]["probabilities"],
                               results[False]["mc"]["digit"]["probabilities"], atol=1e-5)


def test_packed_under_xla_fit_matches_dense_fit():
    x = np.array(_images(batch=8))
    y = {"digit": np.arange(8) % 3, "size": np.linspace(-1, 1, 8).astype("float32")[:, None]}
    weights = {}
    for packed in (True, False):
        model = _build("constant_mask", 2, widths=(4, 6))
        model.packed_execution = packed
        model.compile(keras.optimizers.SGD(0.05), loss={"digit": CrossEntropy(), "size": RMSE()}, jit_compile=True)
        model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
        weights[packed] = [np.array(v) for v in model.weights]
    for a, b in zip(weights[True], weights[False]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_packed_under_mixed_float16_matches_dense():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = _build("single_task", 2, widths=(4, 6))
        x = _images()
        outputs = {}
        for packed in (True, False):
            model.packed_execution = packed
            outputs[packed] = {k: np.array(v, dtype="float32") for k, v in model(x, training=False).items()}
        for key in outputs[True]:
            np.testing.assert_allclose(outputs[True][key], outputs[False][key], rtol=2e-2, atol=2e-2)
    finally:
        keras.config.set_dtype_policy("float32")


def test_which_networks_run_packed():
    assert _build("constant_mask", 2, builder=sfg_vgg11, size=32, width_multiplier=0.05).execution_plan.packed
    assert _build("learned", 2, widths=(4, 6)).execution_plan.packed is False
    assert _build("constant_p", 2, widths=(4, 6)).execution_plan.packed is False
    # Residual blocks have weights per stream: the dense formulation is kept.
    assert _build("hard_sharing", 2, builder=sfg_highresnet, width_multiplier=0.125).execution_plan.packed is False
    concat = _build("constant_mask", 2, widths=(4, 6), merge="concat")
    assert concat.execution_plan.packed is False


def test_execution_plan_says_how_every_layer_runs():
    fixed = _build("constant_mask", 2, widths=(6, 9))
    plan = fixed.execution_plan
    assert plan is fixed.execution_plan  # planned once
    assert plan.packed and plan.assignment_kinds == {"sfg_conv_1": "fixed", "sfg_conv_2": "fixed"}
    sfg_steps = [step for step in plan.steps if step.role == "sfg"]
    assert sfg_steps[0].input_assignment is None  # the image
    np.testing.assert_array_equal(sfg_steps[1].input_assignment, fixed.trunk[0].channel_assignment)
    last = fixed.trunk[2].channel_assignment
    for t, mask in enumerate(plan.head_masks):
        np.testing.assert_array_equal(mask, ((last == t) | (last == 2)).astype("float32"))
    assert plan.describe().splitlines()[-1] == "packed"
    fixed.packed_execution = False
    assert not fixed.execution_plan.packed and fixed.execution_plan.reason == "packed execution is switched off"

    learned = _build("learned", 2, widths=(4, 6))
    plan = learned.execution_plan
    assert not plan.packed and plan.reason == "sfg_conv_1 samples its architecture"
    assert set(plan.assignment_kinds.values()) == {"sampled"}
    assert all(step.input_assignment is None for step in plan.steps)
    version = learned.plan_version
    learned.commit()
    assert learned.plan_version == version + 1
    assert learned.execution_plan.packed and set(learned.execution_plan.assignment_kinds.values()) == {"committed"}


def test_every_trunk_layer_speaks_one_packed_interface():
    model = _build("cross_stitch", 2, widths=(4, 6))
    assignment = None
    for step in model.execution_plan.steps:
        assert step.layer.packable(step.input_assignment)
        assignment = step.layer.packed_assignment(assignment)
        assert step.role != "sfg" or np.array_equal(assignment, step.layer.channel_assignment)
    first, pool, second = model.trunk[0], model.trunk[2], model.trunk[3]  # sfg_conv_1, cross_stitch_1, pool_1, ...
    wrong_width = np.zeros(first.filters + 1, dtype="int32")
    assert second.packable(first.channel_assignment) and not second.packable(wrong_width)
    assert not pool.packable(None)  # a stream transform needs packed streams, not the image


def test_mc_predict_of_a_fixed_network_is_one_pass_and_exact():
    model = _build("constant_mask", 2, widths=(4, 6))
    x = np.array(_images(batch=6))
    mc = mc_predict(model, x, num_samples=7, batch_size=3)
    deterministic = map_predict(model, x, batch_size=3)
    np.testing.assert_allclose(mc["size"]["mean"], deterministic["size"]["mean"], atol=1e-6)
    np.testing.assert_allclose(mc["size"]["std"], 0.0, atol=1e-6)
    np.testing.assert_allclose(mc["digit"]["probabilities"], deterministic["digit"]["probabilities"], atol=1e-6)
    np.testing.assert_array_equal(mc["digit"]["label"], deterministic["digit"]["label"])
    from sfg_keras import inference

    keys = [key for key, _ in inference._COMPILED[model]]
    assert ("monte_carlo", 1) in keys and ("monte_carlo", 7) not in keys
