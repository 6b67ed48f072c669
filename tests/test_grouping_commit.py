"""Search, then commit: a learned network frozen to its MAP assignment trains and predicts packed, exactly as the
dense formulation of that assignment, keeps its state through save/load, and a run resumed across the commit
point equals an uninterrupted one."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from sfg_keras.inference import map_predict, mc_predict
from sfg_keras.layers import SFGConv, TemperatureSchedule
from sfg_keras.losses import RMSE, CrossEntropy
from sfg_keras.models import GroupingCommit, NetworkOptions, TaskHead, sfg_small_cnn

TASKS = {
    2: [TaskHead("digit", "classification", 3), TaskHead("size", "regression", 1)],
    3: [TaskHead("digit", "classification", 3), TaskHead("size", "regression", 1), TaskHead("slant", "regression", 2)],
}
LOSSES = {"digit": CrossEntropy(), "size": RMSE(), "slant": RMSE()}


def _images(batch=4, size=8, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, size, size, 2)).astype("float32")


def _targets(batch, num_tasks=2, seed=1):
    rng = np.random.default_rng(seed)
    y = {"digit": rng.integers(0, 3, batch), "size": rng.normal(size=(batch, 1)).astype("float32")}
    if num_tasks == 3:
        y["slant"] = rng.normal(size=(batch, 2)).astype("float32")
    return y


def _learned(num_tasks=2, widths=(6, 7, 5), commit_step=None, **kwargs):
    """A learned network with random (Dirichlet) p, so that MAP assignments are in no block order."""
    keras.utils.set_random_seed(1)
    schedule = TemperatureSchedule(commit_step=commit_step)
    options = NetworkOptions(init_mode="random", seed=3, temperature_schedule=schedule, **kwargs)
    model = sfg_small_cnn(TASKS[num_tasks], options, widths=widths)
    model.build((None, 8, 8, 2))
    rng = np.random.default_rng(0)
    for variable in model.variables:  # distinct BN / PReLU values, so that a wrong gather shows
        if variable.path.endswith(("gamma", "beta", "alpha", "moving_mean")):
            variable.assign(variable + rng.normal(0.0, 0.2, tuple(variable.shape)).astype(variable.dtype))
    return model


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


@pytest.mark.parametrize("num_tasks", [2, 3])
def test_committed_network_runs_packed_and_equals_dense(num_tasks):
    model = _learned(num_tasks)
    before = {layer.name: layer.map_assignment() for layer in model.sfg_layers}
    assert any(np.any(np.diff(a) < 0) for a in before.values())  # not block-ordered: the gathers are exercised
    assert not model.execution_plan.packed
    committed = model.commit()
    for layer in model.sfg_layers:
        np.testing.assert_array_equal(committed[layer.name], before[layer.name])
        assert layer.is_committed and not layer.samples and not layer.learns_p and layer.packable(None)
    assert model.execution_plan.packed
    x = _images()
    moving = [np.array(v) for v in model.non_trainable_variables]
    packed = _step(model, x, True, moving)
    dense = _step(model, x, False, moving)
    for name in packed[0]:
        np.testing.assert_allclose(packed[0][name], dense[0][name], rtol=1e-4, atol=1e-5, err_msg=name)
    for variable, a, b in zip(model.trainable_variables, packed[1], dense[1]):
        assert (a is None) == (b is None), variable.path
        if "grouping_logits" in variable.path:
            assert a is None  # frozen: the committed network does not read them
        elif a is not None:
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5, err_msg=variable.path)
    # Batch-norm statistics: every channel a group owns moves as in the dense formulation (the dense formulation
    # also moves the statistics of channels a group does not own, which never reach an output).
    owned = {}
    for layer in model.sfg_layers:
        for i, g in enumerate(layer.active_groups):
            mask = layer.channel_assignment == g
            for variable in (layer.group_norms[i].moving_mean, layer.group_norms[i].moving_variance):
                owned[variable.path] = mask
    for variable, a, b, m in zip(model.non_trainable_variables, packed[2], dense[2], moving):
        if variable.path in owned:
            mask = owned[variable.path]
            np.testing.assert_allclose(a[mask], b[mask], rtol=1e-5, atol=1e-6, err_msg=variable.path)
            np.testing.assert_array_equal(a[~mask], m[~mask])  # packed leaves the others alone


def test_commit_freezes_probabilities_entropy_and_logits():
    model = _learned()
    layer = model.sfg_layers[1]
    searched = np.array(layer.searched_probabilities())
    layer.commit()
    p = layer.grouping_probabilities()
    np.testing.assert_array_equal(p, np.eye(3)[layer.channel_assignment])
    np.testing.assert_allclose(np.array(layer.searched_probabilities()), searched)
    assert float(layer.entropy_penalty()) == 0.0
    with pytest.raises(ValueError, match="fixed_assignment has no grouping to commit"):
        SFGConv(4, 3, fixed_assignment=[2, 2, 0, 1]).commit()
    with pytest.raises(ValueError, match="committed_assignment"):
        SFGConv(4, 3, fixed_assignment=[2, 2, 0, 1], committed_assignment=[0, 0, 0, 0])
    with pytest.raises(ValueError, match=r"committed_assignment=\[0, 5\]"):
        SFGConv(2, 3, committed_assignment=[0, 5])


def test_fit_commits_at_the_step_and_trains_the_committed_network(tmp_path):
    model = _learned(commit_step=3)
    model.compile(keras.optimizers.Adam(0.01), loss={k: LOSSES[k] for k in ("digit", "size")})
    x, y = _images(batch=8), _targets(8)
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)  # 2 steps: still searching
    assert not model.committed and model.optimizer.iterations.numpy() == 2
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)  # step 3 searches, step 4 is committed
    assert model.committed and model.execution_plan.packed
    logits = [np.array(layer.grouping_logits) for layer in model.sfg_layers]
    kernels = [np.array(layer.kernel) for layer in model.sfg_layers]
    slots = len(model.optimizer.variables)
    model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    for layer, before in zip(model.sfg_layers, logits):
        np.testing.assert_array_equal(np.array(layer.grouping_logits), before)
    assert all(not np.allclose(np.array(layer.kernel), k) for layer, k in zip(model.sfg_layers, kernels))
    assert len(model.optimizer.variables) == slots  # one optimizer layout before and after the commit
    # MC inference of a committed network is one deterministic pass: equal to MAP, zero spread.
    mc, deterministic = mc_predict(model, x, num_samples=5, batch_size=4), map_predict(model, x, batch_size=4)
    np.testing.assert_allclose(mc["size"]["mean"], deterministic["size"]["mean"], atol=1e-5)
    np.testing.assert_allclose(mc["size"]["std"], 0.0, atol=1e-6)
    # A committed checkpoint loads committed, with its optimizer state, and predicts the same.
    path = tmp_path / "committed.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.committed and loaded.execution_plan.packed
    assert len(loaded.optimizer.variables) == slots
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    again = map_predict(loaded, x, batch_size=4)
    np.testing.assert_allclose(again["size"]["mean"], deterministic["size"]["mean"], atol=1e-5)


def test_resume_across_the_commit_point_equals_an_uninterrupted_run(tmp_path):
    x, y = _images(batch=12, seed=4), _targets(12, seed=5)
    batches = [(x[i : i + 4], {k: v[i : i + 4] for k, v in y.items()}) for i in range(0, 12, 4)] * 2

    def run(model, steps):
        for xb, yb in steps:
            model.train_on_batch(xb, yb)
        return model

    def fresh():
        model = _learned(commit_step=3)
        model.compile(keras.optimizers.Adam(0.01), loss={k: LOSSES[k] for k in ("digit", "size")})
        return model

    uninterrupted = run(fresh(), batches)
    assert uninterrupted.committed
    half = run(fresh(), batches[:3])  # three steps searched, not committed yet
    assert not half.committed
    path = tmp_path / "model-3.keras"
    half.save(path)
    resumed = run(keras.models.load_model(path), batches[3:])
    assert resumed.committed
    for a, b in zip(resumed.sfg_layers, uninterrupted.sfg_layers):
        np.testing.assert_array_equal(a.channel_assignment, b.channel_assignment)
    for a, b in zip(resumed.weights, uninterrupted.weights):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-5, atol=1e-6, err_msg=a.path)


def test_grouping_commit_refuses_other_models():
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile("sgd", "mse")
    with pytest.raises(ValueError, match="GroupingCommit needs an SFGNetwork"):
        model.fit(np.zeros((2, 2)), np.zeros((2, 1)), verbose=0, callbacks=[GroupingCommit()])
