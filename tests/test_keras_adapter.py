"""`sfg_keras.keras_adapter`: each private Keras / TensorFlow API it wraps still exists and means what we use it for.

A Keras or TensorFlow upgrade that changes one of them fails here, by name, instead of silently breaking training,
export or inference."""

import keras
import numpy as np
import tensorflow as tf

from sfg_keras import keras_adapter
from sfg_keras.layers import SFGConv
from sfg_keras.models import NetworkOptions, TaskHead, sfg_small_cnn

TASKS = [TaskHead("digit", "classification", 3), TaskHead("size", "regression", 1)]


def _model(compile_it=False):
    model = sfg_small_cnn(TASKS, NetworkOptions(seed=0), widths=(4, 6))
    model.build((None, 8, 8, 1))
    if compile_it:
        model.compile("adam", loss={"digit": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                                    "size": "mse"})
    return model


def test_flatten_layers_walks_every_sublayer_once():
    model = _model()
    layers = list(keras_adapter.flatten_layers(model, include_self=False))
    assert len({id(layer) for layer in layers}) == len(layers)  # each once (names repeat across SFG layers)
    conv = next(layer for layer in layers if isinstance(layer, SFGConv))
    # The group norms of an SFG layer are sublayers of a sublayer: only a recursive walk finds them.
    for norm in conv.group_norms:
        assert any(layer is norm for layer in layers)
    direct = list(keras_adapter.flatten_layers(conv, include_self=False, recursive=False))
    assert all(any(layer is norm for layer in direct) for norm in conv.group_norms)
    assert next(iter(keras_adapter.flatten_layers(model))) is model  # include_self=True puts the layer first


def test_loss_tracker_is_the_logged_loss():
    model = _model(compile_it=True)
    tracker = keras_adapter.loss_tracker(model)
    assert isinstance(tracker, keras.metrics.Mean) and tracker.name == "loss"
    assert any(metric is tracker for metric in model.metrics)
    x = np.zeros((2, 8, 8, 1), "float32")
    y = {"digit": np.array([0, 1]), "size": np.zeros((2, 1), "float32")}
    model.resolve_schedule(10)
    logs = model.train_on_batch(x, y, return_dict=True)
    assert np.isclose(float(tracker.result()), logs["loss"])


def test_loss_tracker_of_an_uncompiled_model_is_refused():
    model = keras.Sequential([keras.layers.Dense(1)])
    try:
        keras_adapter.loss_tracker(model)
    except ValueError as error:
        assert "compile it first" in str(error)
    else:
        raise AssertionError("an uncompiled model has no loss tracker")


def test_seed_generators_and_build_shapes():
    layer = SFGConv(4, 3, seed=5)
    layer.build((None, 8, 8, 1))
    generators = keras_adapter.seed_generators_of(layer)
    assert generators and all(isinstance(g, keras.random.SeedGenerator) for g in generators)
    model = _model()
    assert keras_adapter.build_shapes(model) == {"input_shape": (None, 8, 8, 1)}
    assert keras_adapter.build_shapes(keras.Sequential([keras.layers.Dense(1)])) == {}


def test_strategy_supports_no_merge_call():
    assert keras_adapter.strategy_supports_no_merge_call() in (True, False)
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        assert isinstance(keras_adapter.strategy_supports_no_merge_call(), bool)
