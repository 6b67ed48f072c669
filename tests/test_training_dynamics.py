"""Training dynamics of learned SFG: the grouping-logit step size, relative temperature schedules, recipes and the
expected-network inference mode."""

import math

import keras
import numpy as np
import pytest

from sfg_keras.config import load_settings
from sfg_keras.inference import expected_outputs, expected_predict, map_predict, mc_predict
from sfg_keras.layers import SFGConv, TemperatureSchedule, sampling_scope
from sfg_keras.losses import RMSE, CrossEntropy
from sfg_keras.models import NetworkOptions, TaskHead, sfg_small_cnn
from sfg_keras.recipes import DEFAULT_RECIPE, RECIPES, recipe_p0, recipe_values

TASKS = [TaskHead("digit", "classification", 3), TaskHead("size", "regression", 1)]


def _images(batch=4, size=8, channels=3, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, size, size, channels)).astype("float32")


def _functional(multiplier, seed=0):
    layer = SFGConv(4, 3, num_tasks=2, grouping_lr_multiplier=multiplier, seed=seed)
    inputs = keras.Input((8, 8, 3))
    streams = layer(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(streams[0] + streams[2])
    model = keras.Model(inputs, keras.layers.Dense(1)(pooled))
    return model, layer


# === Step size of the grouping logits ===


@pytest.mark.parametrize("multiplier", [1.0, 10.0, 0.1])
def test_adam_step_on_logits_is_multiplier_times_lr(multiplier):
    keras.utils.set_random_seed(0)
    model, layer = _functional(multiplier)
    lr = 1e-3
    model.compile(keras.optimizers.Adam(lr), "mse")
    kernel_before = np.array(layer.kernel)
    before = np.array(layer.logits())
    model.train_on_batch(_images(), np.ones((4, 1), "float32"))
    moved = np.abs(np.array(layer.logits()) - before)
    # Adam's first step moves every parameter with a non-zero gradient by lr (up to epsilon): here lr * multiplier.
    assert np.median(moved) == pytest.approx(multiplier * lr, rel=1e-2)
    assert moved.max() == pytest.approx(multiplier * lr, rel=1e-2)
    # The weights still move by lr.
    assert np.abs(np.array(layer.kernel) - kernel_before).max() == pytest.approx(lr, rel=1e-2)


def test_sgd_step_on_logits_scales_exactly():
    moves = {}
    for multiplier in (1.0, 5.0):
        keras.utils.set_random_seed(0)
        model, layer = _functional(multiplier)
        model.compile(keras.optimizers.SGD(0.1), "mse")
        before = np.array(layer.logits())
        model.train_on_batch(_images(), np.ones((4, 1), "float32"))
        moves[multiplier] = np.array(layer.logits()) - before
    assert np.abs(moves[1.0]).max() > 0
    np.testing.assert_allclose(moves[5.0], 5.0 * moves[1.0], rtol=1e-4, atol=1e-8)


def test_multiplier_keeps_initial_probabilities_and_round_trips(tmp_path):
    layer = SFGConv(6, 3, num_tasks=2, p_init=[0.1, 0.3, 0.6], grouping_lr_multiplier=20.0, seed=0)
    layer(_images())
    np.testing.assert_allclose(layer.grouping_probabilities(), np.tile([0.1, 0.3, 0.6], (6, 1)), atol=1e-6)
    # The variable stores r / multiplier.
    np.testing.assert_allclose(np.array(layer.grouping_logits) * 20.0, np.array(layer.logits()), rtol=1e-6)
    assert layer.get_config()["grouping_lr_multiplier"] == 20.0
    layer.set_logits(np.tile([0.0, 1.0, 2.0], (6, 1)))
    np.testing.assert_allclose(np.array(layer.logits()), np.tile([0.0, 1.0, 2.0], (6, 1)), atol=1e-6)
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, layer(inputs)[2])
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    reloaded = next(x for x in loaded.layers if isinstance(x, SFGConv))
    assert reloaded.grouping_lr_multiplier == 20.0
    np.testing.assert_allclose(reloaded.grouping_probabilities(), layer.grouping_probabilities(), atol=1e-7)


def test_invalid_multiplier_is_refused():
    with pytest.raises(ValueError, match="grouping_lr_multiplier"):
        SFGConv(4, 3, grouping_lr_multiplier=0.0)


def test_network_builder_passes_the_multiplier_to_learned_layers_only():
    options = NetworkOptions(grouping="learned", grouping_lr_multiplier=7.0, seed=0)
    learned = sfg_small_cnn(TASKS, options, widths=(4, 4))
    assert {layer.grouping_lr_multiplier for layer in learned.sfg_layers} == {7.0}
    hard = sfg_small_cnn(TASKS, options.replace(grouping="hard_sharing"), widths=(4, 4))
    assert {layer.grouping_lr_multiplier for layer in hard.sfg_layers} == {1.0}


# === Temperature schedule relative to the run ===


def test_schedule_reaching_minimum_at_a_step():
    schedule = TemperatureSchedule.reaching_minimum(steps=400, tau0=2.0, tau_min=0.2)
    assert schedule.value(0) == pytest.approx(2.0)
    assert schedule.value(400) == pytest.approx(0.2, rel=1e-9)
    assert schedule.value(200) == pytest.approx(2.0 * math.sqrt(0.1), rel=1e-9)
    assert schedule.value(10_000) == pytest.approx(0.2)
    assert float(schedule(400)) == pytest.approx(0.2, rel=1e-5)
    with pytest.raises(ValueError, match="steps"):
        TemperatureSchedule.reaching_minimum(steps=0)


def test_schedule_for_a_run_relative_to_max_iter():
    assert TemperatureSchedule.for_run(5000, 1.0, 0.1, 1e-5, 0.0).decay_rate == 1e-5
    assert TemperatureSchedule.for_run(2000, 1.0, 0.1, 1e-5, 0.5).decay_rate == pytest.approx(math.log(10) / 1000)
    assert TemperatureSchedule.for_run(2000, 0.1, 0.1, 1e-5, 0.5).decay_rate == 0.0
    assert TemperatureSchedule.for_run(2000, sampling_warmup=0.1).sampling_warmup == 200


# === Recipes ===


def _config(tmp_path, sfg="", multitask_tasks="age, gender, race"):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    text = f"""
[IMAGES]
path_to_search = {data}

[MULTITASK]
image = IMAGES
tasks = {multitask_tasks}
task_types = {", ".join("regression" for _ in multitask_tasks.split(","))}
num_classes = {", ".join("1" for _ in multitask_tasks.split(","))}
labels = {", ".join("IMAGES" for _ in multitask_tasks.split(","))}

[TRAINING]
max_iter = 2000

[SFG]
{sfg}
"""
    path = tmp_path / "config.ini"
    path.write_text(text)
    return path


def test_paper_recipe_is_the_supplement(tmp_path):
    settings = load_settings(_config(tmp_path, "recipe = paper", "age, gender"))
    sfg = settings.sfg
    assert sfg.p0 == pytest.approx((0.2, 0.2, 0.6))  # the paper's [0.2, 0.6, 0.2], shared last
    assert (sfg.tau0, sfg.tau_decay, sfg.tau_min, sfg.tau_decay_until) == (1.0, 1e-5, 0.1, 0.0)
    assert (sfg.lambda1, sfg.lambda2) == (1e-6, 1e-5)
    assert sfg.grouping_lr_multiplier == 1.0
    assert (sfg.hard, sfg.sampling, sfg.init) == (True, "per_example", "constant")
    assert sfg.origin("tau_decay") == "recipe"
    # A config without a recipe key is the default recipe (search, then commit), not the paper's setup.
    default = load_settings(_config(tmp_path, "", "age, gender")).sfg.as_dict()
    assert default == load_settings(_config(tmp_path, f"recipe = {DEFAULT_RECIPE}", "age, gender")).sfg.as_dict()
    assert default != sfg.as_dict() and DEFAULT_RECIPE == "search_commit"
    options = NetworkOptions.from_recipe("paper", 2, max_iter=10)
    schedule = options.temperature_schedule
    assert (schedule.tau0, schedule.decay_rate, schedule.tau_min) == (1.0, 1e-5, 0.1)


def test_fast_recipe_values_and_order_for_three_tasks(tmp_path):
    settings = load_settings(_config(tmp_path, "recipe = fast"))
    sfg = settings.sfg
    expected = recipe_values("fast", 3)
    assert sfg.p0 == pytest.approx(expected["p0"])
    assert sfg.p0[-1] == max(sfg.p0) and math.fsum(sfg.p0) == pytest.approx(1.0)
    assert sfg.grouping_lr_multiplier == expected["grouping_lr_multiplier"] > 1
    assert sfg.tau_decay_until == expected["tau_decay_until"] > 0
    assert {sfg.origin(k) for k in expected} == {"recipe"}


def test_explicit_keys_beat_the_recipe(tmp_path):
    path = _config(tmp_path, "recipe = fast\ngrouping_lr_multiplier = 3\np0 = 0.1, 0.1, 0.1, 0.7", "a, b, c")
    settings = load_settings(path, ["--SFG.tau_decay_until=0.25", "--sampling=per_batch"])
    sfg = settings.sfg
    assert sfg.grouping_lr_multiplier == 3.0 and sfg.origin("grouping_lr_multiplier") == "file"
    assert sfg.p0 == pytest.approx((0.1, 0.1, 0.1, 0.7)) and sfg.origin("p0") == "file"
    assert sfg.tau_decay_until == 0.25 and sfg.origin("tau_decay_until") == "command line"
    assert sfg.sampling == "per_batch" and sfg.origin("sampling") == "command line"
    assert sfg.tau_min == recipe_values("fast", 3)["tau_min"] and sfg.origin("tau_min") == "recipe"


def test_recipe_errors_name_the_key(tmp_path):
    from sfg_keras.config import ConfigError

    expected = r"\[SFG\] recipe = 'fastest': expected one of: 'search_commit', 'paper', 'fast'"
    with pytest.raises(ConfigError, match=expected):
        load_settings(_config(tmp_path, "recipe = fastest"))
    with pytest.raises(ConfigError, match=r"tau_decay_until"):
        load_settings(_config(tmp_path, "tau_decay_until = 1.5"))
    with pytest.raises(ValueError, match="recipe"):
        recipe_p0("slow", 2)
    assert set(RECIPES) == {"search_commit", "paper", "fast"}


# === Expected-network inference ===


def test_expected_mode_equals_the_monte_carlo_mean_for_one_layer_and_a_linear_head():
    keras.utils.set_random_seed(3)
    layer = SFGConv(6, 3, num_tasks=2, seed=3)
    x = _images(batch=2, size=6)
    layer(x)
    layer.set_logits(np.random.default_rng(0).normal(size=(6, 3)).astype("float32"))
    for act in layer.group_activations:
        act.alpha.assign(np.full(act.alpha.shape, 0.25, dtype="float32"))
    head = keras.layers.Dense(2)
    merge = StreamMergeLike(2)

    def network(stochastic):
        streams = layer(x, training=False, stochastic=stochastic)
        return np.array(head(merge(streams)))

    with sampling_scope(stochastic=False, deterministic="expected"):
        expected = network(False)
    draws = 4000
    with sampling_scope(stochastic=True, num_samples=1):
        tiled = np.tile(x, (draws, 1, 1, 1))
        streams = layer(tiled, training=False, stochastic=True)
        samples = np.array(head(merge(streams))).reshape(draws, *expected.shape)
    mean, sem = samples.mean(axis=0), samples.std(axis=0) / math.sqrt(draws)
    assert np.all(np.abs(mean - expected) <= 4 * sem + 1e-6)
    with sampling_scope(stochastic=False):
        map_out = network(False)
    assert np.abs(map_out - expected).max() > 10 * sem.max()  # the MAP network is a different one


class StreamMergeLike:
    """Task 1's head input: merge(F_1, F_s) = F_1 + F_s, then global average pooling (linear)."""

    def __init__(self, num_tasks):
        self.num_tasks = num_tasks

    def __call__(self, streams):
        return keras.ops.mean(streams[0] + streams[self.num_tasks], axis=(1, 2))


def test_expected_mode_for_soft_samples_is_the_mean_relaxed_sample():
    layer = SFGConv(5, 3, num_tasks=2, hard=False, temperature=0.5, seed=0)
    layer(_images())
    expected = np.array(layer.expected_assignment(num_draws=4096))
    probs = layer.grouping_probabilities()
    np.testing.assert_allclose(expected.sum(axis=-1), 1.0, atol=1e-5)
    assert np.abs(expected - probs).max() > 0.01  # a relaxed sample's mean is not p at a finite temperature
    again = np.array(layer.expected_assignment(num_draws=4096))
    np.testing.assert_array_equal(expected, again)  # deterministic


def test_expected_predict_on_a_network_is_deterministic_and_matches_map_at_a_vertex():
    keras.utils.set_random_seed(0)
    model = sfg_small_cnn(TASKS, NetworkOptions(grouping="learned", seed=0), widths=(4, 6))
    x = _images(batch=6, size=8)
    model.build((None, 8, 8, 3))
    model.compile("adam", loss={"digit": CrossEntropy(), "size": RMSE()})
    first = expected_predict(model, x, batch_size=3)
    second = expected_predict(model, x, batch_size=3)
    np.testing.assert_array_equal(first["size"]["mean"], second["size"]["mean"])
    assert set(first["digit"]) == {"probabilities", "label", "entropy"}
    assert not np.allclose(first["size"]["mean"], map_predict(model, x, batch_size=3)["size"]["mean"])
    # At a vertex (one-hot p), the expected network is the MAP network.
    for layer in model.sfg_layers:
        logits = np.full((layer.filters, 3), -30.0, "float32")
        logits[:, 2] = 30.0
        layer.set_logits(logits)
    np.testing.assert_allclose(
        expected_predict(model, x, batch_size=3)["size"]["mean"],
        map_predict(model, x, batch_size=3)["size"]["mean"],
        atol=1e-5,
    )
    graph = expected_outputs(model, keras.ops.convert_to_tensor(x[:3]))
    assert tuple(graph["digit"]["probabilities"].shape) == (3, 3)
    mc = mc_predict(model, x, num_samples=4, batch_size=3)
    np.testing.assert_allclose(mc["size"]["mean"], map_predict(model, x, batch_size=3)["size"]["mean"],
                               atol=1e-4)


# === Sampling warm-up ===


def test_schedule_noise_ramps_over_the_warmup():
    schedule = TemperatureSchedule(sampling_warmup=100)
    assert [schedule.noise_value(t) for t in (0, 50, 100, 500)] == [0.0, 0.5, 1.0, 1.0]
    assert float(schedule.noise(25)) == pytest.approx(0.25)
    assert float(TemperatureSchedule().noise(0)) == 1.0
    assert TemperatureSchedule.from_config(schedule.get_config()).sampling_warmup == 100
    with pytest.raises(ValueError, match="sampling_warmup"):
        TemperatureSchedule(sampling_warmup=-1)


def test_zero_sampling_noise_trains_the_expected_network_and_still_learns_p():
    keras.utils.set_random_seed(1)
    layer = SFGConv(6, 3, num_tasks=2, seed=1)
    x = _images(batch=3, size=6)
    layer(x)
    layer.set_logits(np.random.default_rng(1).normal(size=(6, 3)).astype("float32"))
    layer.set_sampling_noise(0.0)
    with sampling_scope(stochastic=False, deterministic="expected"):
        expected = [np.array(s) for s in layer(x, training=False)]
    import tensorflow as tf

    with tf.GradientTape() as tape:
        trained = layer(x, training=True)
        loss = keras.ops.sum(trained[0] + trained[2])
    for a, b in zip(expected, trained):
        np.testing.assert_allclose(a, np.array(b), atol=1e-5)
    gradient = tape.gradient(loss, layer.grouping_logits.value)
    assert np.abs(np.array(gradient)).max() > 0
    layer.set_sampling_noise(1.0)
    sampled = layer(x, training=True)
    assert any(not np.allclose(np.array(a), np.array(b)) for a, b in zip(sampled, trained))


def test_network_sets_the_noise_weight_every_step():
    keras.utils.set_random_seed(0)
    schedule = TemperatureSchedule(sampling_warmup=8)
    options = NetworkOptions(grouping="learned", seed=0, temperature_schedule=schedule)
    model = sfg_small_cnn(TASKS, options, widths=(4, 4))
    model.build((None, 8, 8, 3))
    model.compile("adam", loss={"digit": CrossEntropy(), "size": RMSE()})
    x = _images(batch=8, size=8)
    y = {"digit": np.arange(8) % 3, "size": np.ones((8, 1), "float32")}
    model.fit(x, y, batch_size=2, epochs=1, verbose=0)  # 4 steps: the last one ran at t = 3
    assert [float(layer.sampling_noise.numpy()) for layer in model.sfg_layers] == pytest.approx([3 / 8, 3 / 8])
