"""Tests of Monte-Carlo, MAP and expected inference (`sfg_keras.inference`) and their common output schema."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from sfg_keras.inference import (
    MODES,
    deterministic_predict,
    expected_outputs,
    map_outputs,
    map_predict,
    mc_predict,
    monte_carlo_outputs,
    monte_carlo_sums,
    predict,
    stochastic_pass,
)
from sfg_keras.models import NetworkOptions, TaskHead, sfg_small_cnn
from sfg_keras.predictions import PREDICTION_KEYS

_TASKS = [TaskHead("size", "regression", 1), TaskHead("side", "classification", 3)]
_DENSE_TASKS = [TaskHead("ct", "regression", 1), TaskHead("organs", "segmentation", 3)]


def _images(n=10, size=8, seed=0):
    return np.random.default_rng(seed).normal(size=(n, size, size, 1)).astype("float32")


def _model(tasks=_TASKS, dense=False, grouping="learned", sampling="per_example", seed=0):
    options = NetworkOptions(grouping=grouping, sampling=sampling, p_init=(0.3, 0.3, 0.4), seed=seed)
    model = sfg_small_cnn(tasks, options, widths=(6, 6), dense=dense)
    model.build((4, 8, 8, 1))
    rng = np.random.default_rng(seed)
    for weight in model.trainable_weights:  # a less symmetric, trained-looking state
        if "grouping_logits" not in weight.path:
            weight.assign(keras.ops.convert_to_numpy(weight) + 0.2 * rng.normal(size=weight.shape).astype("float32"))
    return model


def _state(model):
    return {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.variables if "seed_generator" not in v.path}


def test_mc_predict_shapes_per_task_type():
    model = _model()
    x = _images(10)
    out = mc_predict(model, x, num_samples=5, batch_size=4)  # batches 4, 4, 2
    assert set(out) == {"size", "side"}
    assert set(out["size"]) == {"mean", "std"} and set(out["side"]) == {"probabilities", "label", "entropy"}
    assert out["size"]["mean"].shape == (10, 1) and out["size"]["std"].shape == (10, 1)
    assert out["side"]["probabilities"].shape == (10, 3)
    assert out["side"]["label"].shape == (10,) and out["side"]["label"].dtype == np.int64
    assert out["side"]["entropy"].shape == (10,)
    np.testing.assert_allclose(out["side"]["probabilities"].sum(-1), 1.0, atol=1e-5)
    assert np.all(out["size"]["std"] >= 0) and np.any(out["size"]["std"] > 0)
    assert np.all((out["side"]["entropy"] >= -1e-6) & (out["side"]["entropy"] <= np.log(3) + 1e-6))
    assert set(np.unique(out["side"]["label"])) <= {0, 1, 2}

    dense = _model(_DENSE_TASKS, dense=True)
    out = mc_predict(dense, x[:5], num_samples=3, batch_size=5)
    assert out["ct"]["mean"].shape == (5, 8, 8, 1) and out["ct"]["std"].shape == (5, 8, 8, 1)
    assert out["organs"]["probabilities"].shape == (5, 8, 8, 3)
    assert out["organs"]["label"].shape == (5, 8, 8) and out["organs"]["entropy"].shape == (5, 8, 8)


def test_mc_predict_accepts_datasets_and_validates():
    model = _model()
    x = _images(8)
    dataset = tf.data.Dataset.from_tensor_slices((x, np.zeros(8))).batch(4)
    out = mc_predict(model, dataset, num_samples=2)
    assert out["side"]["probabilities"].shape == (8, 3)
    with pytest.raises(ValueError, match="num_samples=0"):
        mc_predict(model, x, num_samples=0)


def test_fixed_architecture_gives_the_deterministic_prediction_exactly():
    """No sampling (hard sharing): every pass equals the MAP pass, whatever the chunking of the passes."""
    model = _model(grouping="hard_sharing")
    x = _images(6)
    deterministic = map_predict(model, x, batch_size=3)
    out = mc_predict(model, x, num_samples=10, batch_size=3, samples_per_pass=3)  # chunks of 3, 3, 3, 1
    np.testing.assert_allclose(out["size"]["mean"], deterministic["size"]["mean"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["size"]["std"], 0.0, atol=2e-3)
    np.testing.assert_allclose(out["side"]["probabilities"], deterministic["side"]["probabilities"], atol=1e-5)
    np.testing.assert_array_equal(out["side"]["label"], deterministic["side"]["label"])
    predicted = model.predict(x, batch_size=3, verbose=0)
    np.testing.assert_allclose(deterministic["size"]["mean"], predicted["size"], atol=1e-5)


def test_map_predict_matches_keras_predict():
    model = _model()
    x = _images(8)
    out = map_predict(model, x, batch_size=4)
    predicted = model.predict(x, batch_size=4, verbose=0)
    np.testing.assert_allclose(out["size"]["mean"], predicted["size"], atol=1e-5)
    np.testing.assert_array_equal(out["side"]["label"], np.argmax(predicted["side"], -1))
    graph = tf.function(lambda v: map_outputs(model, v))(tf.constant(x[:4]))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(graph["size"]["mean"]), predicted["size"][:4],
                               atol=1e-5)


@pytest.mark.parametrize("sampling", ["per_example", "per_batch"])
def test_monte_carlo_mean_converges(sampling):
    model = _model(sampling=sampling)
    x = _images(4)
    first = mc_predict(model, x, num_samples=400, batch_size=4)
    second = mc_predict(model, x, num_samples=400, batch_size=4)
    assert not np.array_equal(first["size"]["mean"], second["size"]["mean"])  # independent draws
    std = np.maximum(first["size"]["std"], second["size"]["std"])
    assert np.all(std > 0)
    np.testing.assert_array_less(np.abs(first["size"]["mean"] - second["size"]["mean"]),
                                 5 * np.sqrt(2 / 400) * std + 1e-6)
    p = first["side"]["probabilities"]
    bound = 5 * np.sqrt(2 * p * (1 - p) / 400) + 1e-4  # a probability's per-pass variance is at most p (1 - p)
    np.testing.assert_array_less(np.abs(p - second["side"]["probabilities"]), bound)
    np.testing.assert_allclose(first["size"]["std"], second["size"]["std"], rtol=0.3)


@pytest.mark.parametrize("sampling", ["per_example", "per_batch"])
def test_vectorised_passes_match_a_loop_of_stochastic_passes(sampling):
    model = _model(sampling=sampling, seed=1)
    x = _images(4, seed=1)
    n = 200
    vectorised = mc_predict(model, x, num_samples=n, batch_size=4)
    one_pass = tf.function(lambda v: stochastic_pass(model, v))
    sizes, probabilities = [], []
    for _ in range(n):
        out = one_pass(x)
        sizes.append(keras.ops.convert_to_numpy(out["size"]))
        probabilities.append(keras.ops.convert_to_numpy(tf.nn.softmax(out["side"])))
    sizes, probabilities = np.stack(sizes), np.stack(probabilities)
    loop_std = sizes.std(0)
    tolerance = 5 * np.sqrt((vectorised["size"]["std"] ** 2 + loop_std**2) / n) + 1e-5
    np.testing.assert_array_less(np.abs(vectorised["size"]["mean"] - sizes.mean(0)), tolerance)
    np.testing.assert_allclose(vectorised["size"]["std"], loop_std, rtol=0.3)
    tolerance = 5 * np.sqrt((probabilities.std(0) ** 2) * 2 / n) + 1e-4
    np.testing.assert_array_less(np.abs(vectorised["side"]["probabilities"] - probabilities.mean(0)), tolerance)


def test_vectorised_passes_equal_sequential_passes_for_the_same_architectures():
    """With the sampled assignments pinned, the stacked passes equal the passes run one by one: batch statistics
    are computed per pass, and the per-pass outputs are split back correctly."""
    model = _model(seed=2)
    x = _images(3, seed=2)
    n, batch = 4, 3
    rng = np.random.default_rng(0)
    pinned = {}
    for layer in model.sfg_layers:
        groups = rng.integers(0, layer.num_groups, size=(n, batch, layer.filters))
        pinned[layer.name] = np.eye(layer.num_groups, dtype="float32")[groups]  # [n, B, K, G]
    current = {}

    def pin(layer):
        def assignment(probs, batch_size, stochastic, training=False):
            return tf.constant(current[layer.name].reshape(-1, layer.filters, layer.num_groups))

        layer._assignment = assignment

    for layer in model.sfg_layers:
        pin(layer)
    current.update(pinned)
    sums = monte_carlo_sums(model, tf.constant(x), n)
    total_size, total_probs = 0.0, 0.0
    for i in range(n):
        current.update({name: a[i] for name, a in pinned.items()})
        out = stochastic_pass(model, x)
        total_size = total_size + keras.ops.convert_to_numpy(out["size"])
        total_probs = total_probs + keras.ops.convert_to_numpy(tf.nn.softmax(out["side"]))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(sums["size"]["sum"]), total_size, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(sums["side"]["prob_sum"]), total_probs, atol=1e-4)
    # the check is sensitive: normalising the stacked passes as one batch (no per-pass slices) does not match
    current.update(pinned)
    pooled = model(tf.tile(tf.constant(x), [n, 1, 1, 1]), training=False, stochastic=True)
    pooled_sum = keras.ops.convert_to_numpy(pooled["size"]).reshape(n, batch, 1).sum(0)
    assert np.abs(pooled_sum - total_size).max() > 1e-3


def test_inference_changes_no_model_weight():
    model = _model()
    x = _images(6)
    before = _state(model)
    mc_predict(model, x, num_samples=8, batch_size=3)
    map_predict(model, x, batch_size=3)
    model.predict(x, verbose=0)
    stochastic_pass(model, x)
    after = _state(model)
    assert before.keys() == after.keys() and len(before) > 10
    for path, value in before.items():
        np.testing.assert_array_equal(value, after[path], err_msg=path)
    # the seed generators did advance (fresh samples on the next call)
    assert any("seed_generator" in v.path for v in model.variables)


def test_compiled_inference_is_reused_across_calls():
    from sfg_keras import inference

    model = _model()
    x = _images(4)
    mc_predict(model, x, num_samples=3, batch_size=4)
    mc_predict(model, x + 1.0, num_samples=3, batch_size=4)
    map_predict(model, x, batch_size=4)
    map_predict(model, x, batch_size=4)
    functions = inference._COMPILED[model]
    assert functions[(("monte_carlo", 3), 0)].experimental_get_tracing_count() == 1
    state, compact = inference._COMPACT[model]  # MAP runs the compact network, built and traced once
    assert compact.experimental_get_tracing_count() == 1
    other = _model(seed=5)
    mc_predict(other, x, num_samples=3, batch_size=4)
    assert inference._COMPILED[other] is not functions  # one cache per model


def test_every_mode_returns_the_same_schema():
    model = _model()
    dense = _model(_DENSE_TASKS, dense=True)
    x = _images(5)
    for mode in MODES:
        for net, regression, categorical in ((model, "size", "side"), (dense, "ct", "organs")):
            out = predict(net, x, mode=mode, num_samples=3, batch_size=5)
            assert tuple(out[regression]) == PREDICTION_KEYS["regression"], mode
            assert tuple(out[categorical]) == PREDICTION_KEYS["categorical"], mode
            values = out[categorical]
            assert values["label"].dtype == np.int64 and values["probabilities"].dtype == np.float32
            assert values["label"].shape == values["entropy"].shape == values["probabilities"].shape[:-1]
            assert out[regression]["std"].shape == out[regression]["mean"].shape
            if mode != "mc":
                np.testing.assert_array_equal(out[regression]["std"], 0.0)
                np.testing.assert_array_equal(values["label"], values["probabilities"].argmax(-1))
            p = values["probabilities"].astype("float64")
            np.testing.assert_allclose(values["entropy"], -(p * np.log(np.maximum(p, 1e-12))).sum(-1), atol=1e-5)
    graph = {
        "mc": monte_carlo_outputs(model, tf.constant(x), num_samples=2),
        "map": map_outputs(model, tf.constant(x)),
        "expected": expected_outputs(model, tf.constant(x)),
    }
    for mode, values in graph.items():
        assert {task: tuple(v) for task, v in values.items()} == {
            "size": PREDICTION_KEYS["regression"], "side": PREDICTION_KEYS["categorical"]
        }, mode


def test_predict_dispatches_and_validates_the_mode():
    model = _model()
    x = _images(4)
    np.testing.assert_array_equal(predict(model, x, mode="map", batch_size=4)["size"]["mean"],
                                  map_predict(model, x, batch_size=4)["size"]["mean"])
    np.testing.assert_array_equal(deterministic_predict(model, x, mode="expected", batch_size=4)["side"]["label"],
                                  predict(model, x, mode="expected", batch_size=4)["side"]["label"])
    with pytest.raises(ValueError, match="mode='sample'"):
        predict(model, x, mode="sample")
    with pytest.raises(ValueError, match="mode='mc'"):
        deterministic_predict(model, x, mode="mc")


def test_monte_carlo_label_is_the_majority_vote_with_ties_to_the_lower_class():
    from sfg_keras.inference import _finalise
    from sfg_keras.models import TaskHead

    task = TaskHead("side", "classification", 3)
    votes = np.array([[1.0, 2.0, 2.0], [3.0, 0.0, 2.0], [0.0, 2.5, 2.5]])
    sums = {"side": {"prob_sum": np.full((3, 3), 5.0 / 3), "votes": votes}}
    out = _finalise(sums, [task], num_samples=5, module=np)["side"]
    assert out["label"].tolist() == [1, 0, 1]
    np.testing.assert_allclose(out["entropy"], np.log(3.0))


def test_map_predict_runs_the_compact_network_of_the_current_weights():
    from sfg_keras import inference

    model = _model()
    model.compile(keras.optimizers.Adam(0.05), loss={"size": "mse", "side": "sparse_categorical_crossentropy"})
    x = _images(8)
    y = {"size": np.linspace(-1, 1, 8).astype("float32")[:, None], "side": np.arange(8) % 3}

    def sfg_map_pass():  # the SFG network's own MAP pass, the reference
        return {k: np.array(v) for k, v in model(tf.constant(x), training=False).items()}

    for _ in range(2):  # before and after training continues
        reference = sfg_map_pass()
        out = map_predict(model, x, batch_size=8)
        assert inference._COMPACT[model][1] is not None  # computed by the compact MAP network
        np.testing.assert_allclose(out["size"]["mean"], reference["size"], rtol=1e-5, atol=1e-5)
        probabilities = tf.nn.softmax(reference["side"]).numpy()
        np.testing.assert_allclose(out["side"]["probabilities"], probabilities, rtol=1e-5, atol=1e-5)
        built = inference._COMPACT[model][0]
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        assert inference.weights_digest(model) != built[1]  # the next call rebuilds it
