"""The compact MAP model equals deterministic SFG inference and is built from stock layers only."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from sfg_keras.compact import compact_map_model, model_input_shape, save_compact_model
from sfg_keras.inference import map_outputs
from sfg_keras.layers import BatchStatisticsNormalization
from sfg_keras.models import NetworkOptions, TaskHead, sfg_highresnet, sfg_small_cnn, sfg_vgg11

ALLOWED_FOREIGN_CLASSES = {("sfg_keras.layers.batch_statistics_normalization", "BatchStatisticsNormalization")}

POOLED_T2 = [TaskHead("age", "regression", 1), TaskHead("gender", "classification", 3)]
POOLED_T3 = POOLED_T2 + [TaskHead("smile", "classification", 2)]
DENSE_T2 = [TaskHead("ct", "regression", 1), TaskHead("organs", "segmentation", 3)]
DENSE_T3 = DENSE_T2 + [TaskHead("kind", "classification", 2)]

CASES = {
    "small_pooled_learned_random_T2_sum": (sfg_small_cnn, POOLED_T2, 16, {"widths": (8, 8, 8), "init_mode": "random"}),
    "small_dense_learned_vertex_T3_concat": (
        sfg_small_cnn,
        DENSE_T3,
        12,
        {"widths": (8, 8), "dense": True, "init_mode": "vertex", "merge": "concat"},
    ),
    "small_pooled_constant_p_T2": (sfg_small_cnn, POOLED_T2, 12, {"widths": (6, 6), "grouping": "constant_p"}),
    "small_pooled_hard_sharing_T2": (sfg_small_cnn, POOLED_T2, 12, {"widths": (8, 8), "grouping": "hard_sharing"}),
    "small_dense_single_task_T2_concat": (
        sfg_small_cnn,
        DENSE_T2,
        12,
        {"widths": (8, 8), "dense": True, "grouping": "single_task", "merge": "concat"},
    ),
    "small_pooled_constant_mask_T3": (sfg_small_cnn, POOLED_T3, 12, {"widths": (9, 9), "grouping": "constant_mask"}),
    "small_pooled_cross_stitch_T3_uneven": (
        sfg_small_cnn,
        POOLED_T3,
        12,
        {"widths": (7, 8), "grouping": "cross_stitch"},
    ),
    "small_pooled_learned_moving_statistics": (
        sfg_small_cnn,
        POOLED_T2,
        12,
        {"widths": (8, 8), "init_mode": "random", "inference_statistics": "moving"},
    ),
    "small_rank3_learned_random": (sfg_small_cnn, POOLED_T2, 6, {"widths": (4, 4), "init_mode": "random", "rank": 3}),
    "highresnet_learned_random_T2_sum": (
        sfg_highresnet,
        DENSE_T2,
        12,
        {"width_multiplier": 0.25, "init_mode": "random"},
    ),
    "highresnet_learned_vertex_T3_concat": (
        sfg_highresnet,
        DENSE_T3,
        12,
        {"width_multiplier": 0.25, "init_mode": "vertex", "merge": "concat"},
    ),
    "vgg11_learned_vertex_T2_sum": (sfg_vgg11, POOLED_T2, 16, {"width_multiplier": 0.125, "init_mode": "vertex"}),
    "vgg11_hard_sharing_T3_concat": (
        sfg_vgg11,
        POOLED_T3,
        16,
        {"width_multiplier": 0.0625, "grouping": "hard_sharing", "merge": "concat"},
    ),
}


def _perturb_normalisation(model, seed=0):
    """Non-trivial batch-norm and PReLU parameters, so that every channel restriction is checked."""
    rng = np.random.default_rng(seed)
    for variable in model.variables:
        path = variable.path
        shape = tuple(variable.shape)
        if path.endswith("gamma") or path.endswith("moving_variance"):
            variable.assign(rng.uniform(0.6, 1.4, shape).astype("float32"))
        elif path.endswith("beta") or path.endswith("moving_mean") or path.endswith("alpha"):
            variable.assign(rng.normal(0.0, 0.2, shape).astype("float32"))


def _build(builder, tasks, size, kwargs):
    rank = kwargs.get("rank", 2)
    structure = {key: kwargs[key] for key in ("widths", "dense") if key in kwargs}
    options = NetworkOptions(seed=3, **{key: v for key, v in kwargs.items() if key not in structure})
    model = builder(tasks, options, **structure)
    model.build((None, *([size] * rank), 3))
    _perturb_normalisation(model)
    return model


def _layer_classes(model):
    return {(type(layer).__module__, type(layer).__name__) for layer in model.layers}


@pytest.mark.parametrize("case", list(CASES))
def test_compact_model_equals_map_inference(case):
    builder, tasks, size, kwargs = CASES[case]
    model = _build(builder, tasks, size, kwargs)
    if kwargs.get("grouping", "learned") == "learned":
        mixed = [sum(count > 0 for count in counts.values()) for counts in model.map_counts().values()]
        assert max(mixed) >= 2, f"MAP groups are not mixed: {model.map_counts()}"
    compact = compact_map_model(model)
    rank = kwargs.get("rank", 2)
    x = np.random.default_rng(1).normal(size=(4, *([size] * rank), 3)).astype("float32")

    raw = model(x, training=False, stochastic=False)
    got = compact(x, training=False)
    assert set(got) == {task.name for task in tasks}
    for task in tasks:
        assert got[task.name].shape == raw[task.name].shape
        # float32 sums of the packed kernels in another order: a relative tolerance for deep networks
        np.testing.assert_allclose(np.asarray(got[task.name]), np.asarray(raw[task.name]), rtol=1e-4, atol=1e-5)

    foreign = {c for c in _layer_classes(compact) if not c[0].startswith("keras.")}
    assert foreign <= ALLOWED_FOREIGN_CLASSES, foreign
    if kwargs.get("inference_statistics") == "moving":
        assert not foreign


@pytest.fixture(scope="module")
def learned_pair():
    keras.utils.set_random_seed(0)
    model = _build(*CASES["small_pooled_learned_random_T2_sum"])
    return model, compact_map_model(model)


def test_compact_matches_map_outputs(learned_pair):
    model, compact = learned_pair
    x = np.random.default_rng(5).normal(size=(5, 16, 16, 3)).astype("float32")
    reference = map_outputs(model, x)
    got = compact.predict(x, batch_size=5, verbose=0)
    np.testing.assert_allclose(got["age"], reference["age"]["mean"], atol=1e-5)
    probabilities = keras.ops.softmax(got["gender"], axis=-1)
    np.testing.assert_allclose(probabilities, reference["gender"]["probabilities"], atol=1e-5)
    np.testing.assert_array_equal(np.argmax(got["gender"], axis=-1), reference["gender"]["label"])


def test_compact_convolutions_hold_only_map_kernels(learned_pair):
    model, compact = learned_pair
    for layer in model.sfg_layers:
        convs = [c for c in compact.layers if c.name.startswith(f"{layer.name}_") and c.name.endswith("_conv")]
        counts = model.map_counts()[layer.name]
        assert sorted(c.filters for c in convs) == sorted(n for n in counts.values() if n > 0)
        assert sum(c.filters for c in convs) == layer.filters
        assert all(not c.use_bias for c in convs)


def test_hard_sharing_compact_matches_plain_network_size():
    model = _build(*CASES["small_pooled_hard_sharing_T2"])
    compact = compact_map_model(model)
    convs = [layer for layer in compact.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [8, 8]


def test_compact_graph_has_no_sampling(learned_pair):
    _, compact = learned_pair
    function = tf.function(lambda x: compact(x, training=False))
    graph = function.get_concrete_function(tf.TensorSpec((None, 16, 16, 3), tf.float32)).graph
    op_types = {op.type for op in graph.get_operations()}
    assert not {t for t in op_types if "Random" in t or "Multinomial" in t}, op_types


def test_stock_batch_norm_node_training_flag_is_overridden_by_keras():
    """Why the compact model does not use a stock `BatchNormalization(momentum=1.0)` node with `training=True`.

    Keras 3 replaces a node's explicit `training=True` by the outer call's value, so `predict` and
    `model(x, training=False)` normalise with the moving statistics instead of the batch's. If this test starts
    failing, Keras changed this behaviour and the stock layer could be used again.
    """
    inputs = keras.Input((4, 4, 3))
    norm = keras.layers.BatchNormalization(momentum=1.0, epsilon=1e-5)
    model = keras.Model(inputs, norm(inputs, training=True))
    x = (np.random.default_rng(0).normal(size=(5, 4, 4, 3)) * 3.0 + 2.0).astype("float32")
    batch_normalised = (x - x.mean((0, 1, 2))) / np.sqrt(x.var((0, 1, 2)) + 1e-5)
    np.testing.assert_allclose(model(x), batch_normalised, atol=1e-4)  # training=None keeps the node's flag
    assert np.abs(model(x, training=False) - batch_normalised).max() > 1.0  # ... training=False overrides it
    assert np.abs(model.predict(x, verbose=0) - batch_normalised).max() > 1.0


def test_compact_uses_batch_statistics_and_never_writes_moving_statistics(learned_pair):
    model, compact = learned_pair
    norms = [layer for layer in compact.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(isinstance(layer, BatchStatisticsNormalization) for layer in norms)
    before = [(n.moving_mean.numpy().copy(), n.moving_variance.numpy().copy()) for n in norms]
    x = np.random.default_rng(2).normal(size=(6, 16, 16, 3)).astype("float32") * 2.0 + 1.0
    outputs = [
        compact(x, training=False),
        compact(x),
        compact.predict(x, batch_size=6, verbose=0),
        tf.function(lambda z: compact(z, training=False))(x),
    ]
    raw = model(x, training=False, stochastic=False)
    for output in outputs:
        for task in POOLED_T2:
            np.testing.assert_allclose(np.asarray(output[task.name]), np.asarray(raw[task.name]), atol=1e-5)
    for norm, (mean, variance) in zip(norms, before):
        assert np.array_equal(norm.moving_mean.numpy(), mean)
        assert np.array_equal(norm.moving_variance.numpy(), variance)
    # Batch statistics: the prediction of an example depends on the rest of its batch (documented contract).
    alone = compact(x[:2], training=False)["age"]
    assert np.abs(np.asarray(alone) - np.asarray(outputs[0]["age"][:2])).max() > 1e-4


def test_save_compact_model_round_trip(tmp_path, learned_pair):
    model, _ = learned_pair
    path = save_compact_model(model, tmp_path / "compact" / "model.keras")
    assert path.is_file()
    loaded = keras.models.load_model(path)
    x = np.random.default_rng(3).normal(size=(3, 16, 16, 3)).astype("float32")
    raw = model(x, training=False, stochastic=False)
    out = loaded(x, training=False)
    for task in POOLED_T2:
        np.testing.assert_allclose(np.asarray(out[task.name]), np.asarray(raw[task.name]), atol=1e-5)


def test_compact_accepts_unknown_spatial_size(learned_pair):
    model, _ = learned_pair
    compact = compact_map_model(model, input_shape=(None, None, None, 3))
    x = np.random.default_rng(4).normal(size=(2, 24, 20, 3)).astype("float32")
    raw = model(x, training=False, stochastic=False)
    np.testing.assert_allclose(np.asarray(compact(x)["gender"]), np.asarray(raw["gender"]), atol=1e-5)


def test_compact_errors(tmp_path):
    with pytest.raises(ValueError, match="must be an SFGNetwork"):
        compact_map_model(keras.Sequential([keras.layers.Dense(2)]))
    unbuilt = sfg_small_cnn(POOLED_T2, widths=(4,))
    with pytest.raises(ValueError, match="not built"):
        model_input_shape(unbuilt)
    with pytest.raises(ValueError, match="input_shape"):
        compact_map_model(unbuilt, input_shape=(None, 8, 8))
    with pytest.raises(ValueError, match=r"must end in '\.keras'"):
        save_compact_model(unbuilt, tmp_path / "model.h5", input_shape=(None, 8, 8, 3))
