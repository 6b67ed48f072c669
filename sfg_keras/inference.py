"""Monte-Carlo, MAP and expected-network prediction for SFG networks, with one output schema.

Three inference modes, one entry point `predict(model, x, mode=...)`:

* `mc` (`mc_predict`, the paper): `N` sampled architectures, aggregated (below). Use it when you want
  uncertainty (standard deviation, predictive entropy) or to reproduce the paper.
* `map` (`map_predict`): the MAP architecture, `argmax p` per kernel, one pass; what the compact export computes.
  Use it once `p` is near one-hot (the paper's converged models), after a search-then-commit run (the committed
  network is the MAP network), or for deployment without sampling. `predict` runs it with the compact MAP network
  (`sfg_keras.compact`: only the kernels each group keeps, cheaper than a hard-sharing pass), rebuilt whenever the
  model's weights or execution plan change, so it is never stale.
* `expected` (`expected_predict`): the expected network, each kernel weighted by its expected assignment (`p`, or
  the mean relaxed sample for `hard=False`), one pass. It is the network training averages over, so it tracks
  the Monte-Carlo mean without its cost; use it while `p` is still far from one-hot (short runs, the `fast`
  recipe's soft samples), where the MAP network was never trained as such.

Every mode returns the same keys per task (`sfg_keras.predictions.PREDICTION_KEYS`):

* regression: `mean` and `std` (Monte-Carlo: mean and population standard deviation over the passes;
  deterministic modes: the pass itself and zeros);
* classification / segmentation: `probabilities` (softmax; Monte-Carlo: mean softmax over the passes), `label`
  (argmax; Monte-Carlo: majority vote of the per-pass argmax; ties go to the lower class) and `entropy`
  (predictive entropy of `probabilities`, nats).

The numpy functions (`predict`, `mc_predict`, `map_predict`, `expected_predict`) return `label` as int64 and the
rest as float32; the graph functions (`prediction_outputs`, `monte_carlo_outputs`, `map_outputs`,
`expected_outputs`, used by the exported signatures) return tensors with the same keys.

Sampling is vectorised: a batch of `B` inputs is tiled `n` times along the batch axis and run as one forward pass
inside `sampling_scope(stochastic=True, num_samples=n)`, so per-example sampling gives `n` independent
architectures per input, `per_batch` sampling draws one architecture per pass, and batch-statistics normalisation
normalises each pass's `B` examples on their own, exactly as `n` sequential passes would. No variable other than
the layers' seed generators changes.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable, Iterable

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from sfg_keras.compact import compact_map_model
from sfg_keras.groups import entropy, majority_vote
from sfg_keras.keras_adapter import flatten_layers
from sfg_keras.layers.sampling_scope import sampling_scope
from sfg_keras.models.sfg_network import SFGNetwork
from sfg_keras.predictions import INFERENCE_MODES, PREDICTION_KEYS, prediction_kind

MODES = INFERENCE_MODES
"""The inference modes of `predict`: Monte-Carlo, MAP architecture, expected network."""

# Compiled inference functions per model, reused across calls (tracing a deep network costs seconds). Keyed weakly
# by the model; the functions reach the model through a weak reference, so a deleted model frees its entry.
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# The compact MAP network of each model, with the state (plan version and weights digest) it was built from.
_COMPACT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _compiled(model: SFGNetwork, key, build: Callable) -> Callable:
    # A commit changes what the network computes (`SFGNetwork.plan_version`): functions traced before are dropped.
    key = (key, getattr(model, "plan_version", 0))
    functions = _COMPILED.setdefault(model, {})
    if key not in functions:
        model_ref = weakref.ref(model)
        functions[key] = tf.function(lambda xb: build(model_ref(), xb), reduce_retracing=True)
    return functions[key]


def weights_digest(model: keras.Model) -> str:
    """A digest of every variable's value (BLAKE2b over the raw bytes): it changes whenever a weight does.

    Example:

    ```python
    before = weights_digest(model)
    model.fit(data, steps_per_epoch=1)
    assert weights_digest(model) != before
    ```
    """
    digest = hashlib.blake2b(digest_size=16)
    for variable in model.variables:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(variable)).tobytes())
    return digest.hexdigest()


def _compact_map_function(model: SFGNetwork) -> Callable | None:
    """The compiled MAP prediction by the compact MAP network, or None if the network has a layer the compact
    translation does not support (then the SFG network's own MAP pass is used; the values are the same)."""
    # Batch-norm layers decide at build time between batch and moving statistics (the driver may switch them).
    statistics = tuple(
        getattr(layer, "inference_statistics", None) for layer in flatten_layers(model, include_self=False)
    )
    state = (getattr(model, "plan_version", 0), weights_digest(model), statistics)
    cached = _COMPACT.get(model)
    if cached is not None and cached[0] == state:
        return cached[1]
    rank = model.sfg_layers[0].rank
    try:
        compact = compact_map_model(model, input_shape=(None,) * (rank + 1) + (_input_channels(model),))
    except ValueError:
        function = None
    else:
        tasks = model.tasks
        function = tf.function(
            lambda xb: single_pass_predictions(tasks, compact(xb, training=False)), reduce_retracing=True
        )
    _COMPACT[model] = (state, function)
    return function


def _input_channels(model: SFGNetwork) -> int:
    """The number of input channels an SFG network was built for (its first SFG layer's kernel)."""
    return int(model.sfg_layers[0].kernel.shape[-2])


def _split_passes(outputs: dict, tasks, num_samples: int) -> dict:
    split = {}
    for task in tasks:
        y = ops.cast(outputs[task.name], "float32")
        split[task.name] = ops.reshape(y, [num_samples, -1, *ops.shape(y)[1:]])
    return split


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}. Received: mode={mode!r}")
    return mode


def _task_prediction(task, first, second, xp=ops) -> dict:
    """One task's prediction in the common schema.

    Categorical tasks: `first` are the probabilities, `second` the labels; the entropy is computed here. Regression
    tasks: `first` is the mean, `second` the standard deviation.
    """
    kind = prediction_kind(task.is_categorical)
    values = (first, second, entropy(first, xp=xp)) if kind == "categorical" else (first, second)
    return dict(zip(PREDICTION_KEYS[kind], values))


def single_pass_predictions(tasks, outputs: dict) -> dict[str, dict[str, tf.Tensor]]:
    """The prediction schema of one deterministic pass, from the raw head outputs (graph-compatible).

    Regression: `{"mean": y, "std": zeros}`; categorical: `{"probabilities": softmax(y), "label": argmax(y),
    "entropy": H(softmax(y))}` (argmax ties go to the lower class).

    Args:
        tasks: the model's `TaskHead`s.
        outputs: `{task_name: tensor}`, the raw head outputs (regression values, class logits), e.g. of
            `model(x, training=False)` or of a compact MAP model.

    Returns:
        `{task_name: {key: tensor}}` with the keys of `sfg_keras.predictions.PREDICTION_KEYS`.

    Example:

    ```python
    single_pass_predictions(model.tasks, compact(images))["gender"]["label"]
    ```
    """
    results = {}
    for task in tasks:
        y = ops.cast(outputs[task.name], "float32")
        if task.is_categorical:
            results[task.name] = _task_prediction(task, ops.softmax(y, axis=-1), majority_vote(y, xp=ops))
        else:
            results[task.name] = _task_prediction(task, y, ops.zeros_like(y))
    return results


def monte_carlo_sums(model: SFGNetwork, x, num_samples: int) -> dict[str, dict[str, tf.Tensor]]:
    """One vectorised chunk of `num_samples` stochastic passes, returned as sums (graph- and XLA-compatible).

    Returns per task: regression `{"sum", "sum_sq"}`; categorical `{"prob_sum", "votes"}` (votes: per-class counts
    of the per-pass argmax). Use `monte_carlo_outputs` for the aggregated statistics.
    """
    tiled = ops.tile(x, [num_samples] + [1] * (len(x.shape) - 1))
    with sampling_scope(stochastic=True, num_samples=num_samples):
        outputs = model(tiled, training=False, stochastic=True)
    sums = {}
    for task in model.tasks:
        y = _split_passes(outputs, [task], num_samples)[task.name]
        if task.is_categorical:
            sums[task.name] = {
                "prob_sum": ops.sum(ops.softmax(y, axis=-1), axis=0),
                "votes": ops.sum(ops.one_hot(majority_vote(y, xp=ops), task.units), axis=0),
            }
        else:
            sums[task.name] = {"sum": ops.sum(y, axis=0), "sum_sq": ops.sum(ops.square(y), axis=0)}
    return sums


def _finalise(sums: dict, tasks, num_samples: int, module=ops) -> dict:
    results = {}
    for task in tasks:
        s = sums[task.name]
        if task.is_categorical:
            label = majority_vote(s["votes"], xp=module)
            results[task.name] = _task_prediction(task, s["prob_sum"] / num_samples, label, xp=module)
        else:
            mean = s["sum"] / num_samples
            variance = module.maximum(s["sum_sq"] / num_samples - module.square(mean), 0.0)
            results[task.name] = _task_prediction(task, mean, module.sqrt(variance), xp=module)
    return results


def monte_carlo_outputs(model: SFGNetwork, x, num_samples: int = 50) -> dict[str, dict[str, tf.Tensor]]:
    """Aggregated Monte-Carlo prediction of one batch in a single vectorised pass (graph-compatible; used by the
    exported `serving_default` signature).

    Returns the schema of `predict` as tensors.

    Example:

    ```python
    out = monte_carlo_outputs(model, images, num_samples=20)
    out["age"]["mean"], out["age"]["std"], out["gender"]["entropy"]
    ```
    """
    return _finalise(monte_carlo_sums(model, x, num_samples), model.tasks, num_samples)


def map_outputs(model: SFGNetwork, x) -> dict[str, dict[str, tf.Tensor]]:
    """Deterministic prediction with the MAP architecture (`argmax p` per kernel), graph-compatible.

    Returns the schema of `predict` as tensors (`std` is zero).

    Example:

    ```python
    map_outputs(model, images)["gender"]["label"]
    ```
    """
    return _deterministic_outputs(model, x, "map")


def expected_outputs(model: SFGNetwork, x) -> dict[str, dict[str, tf.Tensor]]:
    """Deterministic prediction with the expected network, graph-compatible.

    Every SFG layer weights each group's output by the kernel's expected assignment (`p` for straight-through hard
    sampling, the mean relaxed sample for `hard=False`): the network that training averages over, so its
    predictions track the Monte-Carlo mean at the cost of one pass. Same schema as `map_outputs`.

    Example:

    ```python
    expected_outputs(model, images)["age"]["mean"]
    ```
    """
    return _deterministic_outputs(model, x, "expected")


def _deterministic_outputs(model: SFGNetwork, x, mode: str) -> dict[str, dict[str, tf.Tensor]]:
    with sampling_scope(stochastic=False, deterministic=mode):
        outputs = model(x, training=False, stochastic=False)
    return single_pass_predictions(model.tasks, outputs)


def prediction_outputs(model: SFGNetwork, x, mode: str = "mc", num_samples: int = 50) -> dict[str, dict]:
    """The prediction of one batch in any mode, graph-compatible (what the exported signatures compute).

    Args:
        model: an `SFGNetwork`.
        x: one batch, a tensor `[B, ...]`.
        mode: str. `"mc"` (`monte_carlo_outputs`), `"map"` (`map_outputs`) or `"expected"`
            (`expected_outputs`). Defaults to `"mc"`.
        num_samples: int. Sampled architectures of `"mc"`. Defaults to 50.

    Returns:
        `{task: {key: tensor}}` with the keys of `sfg_keras.predictions.PREDICTION_KEYS`.

    Example:

    ```python
    tf.function(lambda images: prediction_outputs(model, images, mode="map"))(batch)
    ```
    """
    if _check_mode(mode) == "mc":
        return monte_carlo_outputs(model, x, num_samples=num_samples)
    return _deterministic_outputs(model, x, mode)


def _batches(x, batch_size: int) -> Iterable[np.ndarray]:
    if isinstance(x, tf.data.Dataset):
        for element in x:
            yield element[0] if isinstance(element, tuple) else element
        return
    x = np.asarray(x)
    for start in range(0, len(x), batch_size):
        yield x[start : start + batch_size]


def _collect(x, batch_size: int, predict_batch: Callable) -> dict[str, dict[str, np.ndarray]]:
    """`predict_batch` over every batch of `x`, concatenated: integer arrays (labels) as int64, the rest float32."""
    collected: dict[str, dict[str, list]] = {}
    for batch in _batches(x, batch_size):
        for task, values in predict_batch(batch).items():
            for key, value in values.items():
                collected.setdefault(task, {}).setdefault(key, []).append(np.asarray(value))
    results = {}
    for task, values in collected.items():
        results[task] = {}
        for key, parts in values.items():
            array = np.concatenate(parts, axis=0)
            results[task][key] = array.astype("int64" if np.issubdtype(array.dtype, np.integer) else "float32")
    return results


def predict(
    model: SFGNetwork,
    x,
    mode: str = "mc",
    num_samples: int = 50,
    batch_size: int = 8,
    samples_per_pass: int | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Prediction in any inference mode, with the same output keys for every mode.

    Args:
        model: an `SFGNetwork`.
        x: numpy array `[N, ...]` or a `tf.data.Dataset` of batches (of inputs or `(inputs, targets)`).
        mode: str. `"mc"` (`mc_predict`: `num_samples` sampled architectures, the paper), `"map"` (`map_predict`:
            the MAP architecture) or `"expected"` (`expected_predict`: the expected network). Defaults to `"mc"`.
        num_samples: int. Sampled architectures of `"mc"` (ignored otherwise). Defaults to 50.
        batch_size: int. Batch size for numpy input: the batch whose statistics batch-statistics normalisation
            uses. Defaults to 8.
        samples_per_pass: int or None. Passes stacked in one forward pass by `"mc"` (see `mc_predict`).

    Returns:
        `{task: {"mean", "std"}}` for regression and `{task: {"probabilities", "label", "entropy"}}` for
        classification and segmentation (`sfg_keras.predictions.PREDICTION_KEYS`): numpy arrays with the inputs'
        leading dimension, `label` int64, the rest float32. Deterministic modes give `std = 0`.

    Raises:
        ValueError: for an unknown `mode` or a bad `num_samples`.

    Example:

    ```python
    out = predict(model, images, mode="expected")
    out["age"]["mean"], out["gender"]["label"], out["gender"]["entropy"]
    ```
    """
    if _check_mode(mode) == "mc":
        return mc_predict(model, x, num_samples=num_samples, batch_size=batch_size, samples_per_pass=samples_per_pass)
    function = _compact_map_function(model) if mode == "map" else None
    if function is None:
        function = _compiled(model, mode, map_outputs if mode == "map" else expected_outputs)
    return _collect(x, batch_size, lambda batch: function(tf.convert_to_tensor(batch)))


def mc_predict(
    model: SFGNetwork,
    x,
    num_samples: int = 50,
    batch_size: int = 8,
    samples_per_pass: int | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Monte-Carlo prediction with `num_samples` stochastic architectures per input (`predict(mode="mc")`).

    A network without sampled layers (every SFG layer has a fixed assignment, the baselines, or is committed) gives
    the same pass every time, so it is computed once: its spread then comes from nothing but the batch (zero).

    Args:
        model, x, batch_size: as for `predict`.
        num_samples: int. Number of sampled architectures. Defaults to 50.
        samples_per_pass: int or None. How many passes are stacked in one vectorised forward pass (memory
            control). Defaults to `num_samples` capped so that one pass holds at most 512 examples.

    Returns:
        `{task: {"mean", "std"}}` for regression, `{task: {"probabilities", "label", "entropy"}}` for
        classification and segmentation (`label`: majority vote of the per-pass argmax, ties to the lower class;
        `entropy`: of the mean probabilities), numpy arrays with the inputs' leading dimension.

    Example:

    ```python
    out = mc_predict(model, images, num_samples=50)
    age, age_std = out["age"]["mean"], out["age"]["std"]
    ```
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"`num_samples` must be a positive int. Received: num_samples={num_samples!r}")

    def chunk_function(n: int):
        return _compiled(model, ("monte_carlo", n), lambda m, xb: monte_carlo_sums(m, xb, n))

    # A network whose SFG layers do not sample (fixed assignments: the baselines; a committed network) computes the
    # same pass every time: one pass stands for all of them.
    samples_differ = any(layer.samples for layer in model.sfg_layers)

    def predict_batch(batch):
        batch = tf.convert_to_tensor(batch, dtype=model.compute_dtype if model.compute_dtype != "float16" else None)
        per_pass = samples_per_pass or max(1, min(num_samples, 512 // max(1, int(batch.shape[0]))))
        totals = None
        remaining = num_samples
        if not samples_differ:
            sums = chunk_function(1)(batch)
            totals = {t: {k: v.numpy().astype("float64") * num_samples for k, v in d.items()} for t, d in sums.items()}
            for values in totals.values():
                if "sum_sq" in values:  # from the pass itself in float64: the spread is exactly zero
                    values["sum_sq"] = np.square(values["sum"]) / num_samples
            remaining = 0
        while remaining > 0:
            n = min(per_pass, remaining)
            sums = chunk_function(n)(batch)
            sums = {t: {k: v.numpy().astype("float64") for k, v in d.items()} for t, d in sums.items()}
            totals = sums if totals is None else {t: {k: totals[t][k] + sums[t][k] for k in d} for t, d in sums.items()}
            remaining -= n
        return _finalise(totals, model.tasks, num_samples, module=np)

    return _collect(x, batch_size, predict_batch)


def map_predict(model: SFGNetwork, x, batch_size: int = 8) -> dict[str, dict[str, np.ndarray]]:
    """`map_outputs` over numpy input or a dataset, batch by batch, as numpy arrays (`predict(mode="map")`).

    Computed by the compact MAP network of the model's current weights (rebuilt after any weight change or commit;
    equal to the SFG network's MAP pass within float rounding), falling back to the SFG network's own MAP pass for
    a layer the compact translation does not support.

    Example:

    ```python
    out = map_predict(model, images)
    out["gender"]["label"], out["age"]["mean"]
    ```
    """
    return predict(model, x, mode="map", batch_size=batch_size)


def expected_predict(model: SFGNetwork, x, batch_size: int = 8) -> dict[str, dict[str, np.ndarray]]:
    """`expected_outputs` over numpy input or a dataset, as numpy arrays (`predict(mode="expected")`).

    Use it instead of `map_predict` while `p` is far from one-hot (early in training, or with a soft recipe): the
    MAP architecture is then a network that was never trained, the expected network is the one training averaged.

    Example:

    ```python
    out = expected_predict(model, images)
    out["age"]["mean"]
    ```
    """
    return predict(model, x, mode="expected", batch_size=batch_size)


def deterministic_predict(
    model: SFGNetwork, x, mode: str = "map", batch_size: int = 8
) -> dict[str, dict[str, np.ndarray]]:
    """`map_predict` (`mode="map"`) or `expected_predict` (`mode="expected"`); prefer `predict`.

    Example:

    ```python
    out = deterministic_predict(model, images, mode="expected")
    ```
    """
    if mode not in ("map", "expected"):
        raise ValueError(f"`mode` must be 'map' or 'expected'. Received: mode={mode!r}")
    return predict(model, x, mode=mode, batch_size=batch_size)


def stochastic_pass(model: keras.Model, x):
    """One stochastic forward pass (fresh architecture per example) without touching batch-norm state."""
    return model(x, training=False, stochastic=True)
