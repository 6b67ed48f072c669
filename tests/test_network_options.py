"""`NetworkOptions`: the one map from config keys to layer arguments, its checks, and the builders that take it."""

import dataclasses
import math
import textwrap

import numpy as np
import pytest

from sfg_keras.config import load_settings
from sfg_keras.layers import CrossStitch, PerStream, ResidualBlock, SFGConv, TemperatureSchedule
from sfg_keras.models import (
    ARCHITECTURES,
    GROUPINGS,
    NetworkOptions,
    SFGNetwork,
    TaskHead,
    build_network,
    sfg_highresnet,
    sfg_small_cnn,
    sfg_vgg11,
)
from sfg_keras.recipes import DEFAULT_RECIPE, recipe_values

TASKS = [TaskHead("age", "regression", 1), TaskHead("gender", "classification", 2)]
DENSE_TASKS = [TaskHead("ct", "regression", 1), TaskHead("organs", "segmentation", 3)]

EVERY_KEY = """
[SYSTEM]
seed = 7

[NETWORK]
name = sfg_small_cnn
width_multiplier = 0.5
activation_function = elu
batch_norm = moving

[TRAINING]
max_iter = 200

[IMAGES]
path_to_search = images

[MULTITASK]
image = images
tasks = age, gender
task_types = regression, classification
num_classes = 1, 2
labels = filename, filename

[SFG]
grouping = constant_p
p0 = 0.1, 0.2, 0.7
init = random
hard = False
sampling = per_batch
merge = concat
grouping_lr_multiplier = 3.0
lambda1 = 1e-3
lambda2 = 0.02
tau0 = 2.0
tau_min = 0.5
tau_decay = 0.01
tau_decay_until = {tau_decay_until}
sampling_warmup = 0.1
"""


def _settings(tmp_path, text):
    path = tmp_path / "config.ini"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_settings(path)


def _every_key_settings(tmp_path, tau_decay_until="0.0"):
    return _settings(tmp_path, EVERY_KEY.format(tau_decay_until=tau_decay_until))


# === from_settings: the one map from config keys ===


def test_from_settings_maps_every_key(tmp_path):
    options = NetworkOptions.from_settings(_every_key_settings(tmp_path))
    assert options.width_multiplier == 0.5
    assert options.activation == "elu"
    assert options.inference_statistics == "moving"  # [NETWORK] batch_norm
    assert options.grouping == "constant_p"
    assert options.p_init == (0.1, 0.2, 0.7)  # [SFG] p0
    assert options.init_mode == "random"  # [SFG] init
    assert options.hard is False
    assert options.sampling == "per_batch"
    assert options.merge == "concat"
    assert options.grouping_lr_multiplier == 3.0
    assert options.kernel_l2 == 1e-3  # [SFG] lambda1
    assert options.entropy_weight == 0.02  # [SFG] lambda2
    assert options.seed == 7  # [SYSTEM] seed
    assert options.rank == 2
    schedule = options.temperature_schedule
    assert (schedule.tau0, schedule.tau_min, schedule.decay_rate) == (2.0, 0.5, 0.01)
    assert schedule.sampling_warmup == 20  # 0.1 of [TRAINING] max_iter = 200


def test_from_settings_schedule_relative_to_the_run(tmp_path):
    schedule = NetworkOptions.from_settings(_every_key_settings(tmp_path, "0.5")).temperature_schedule
    assert schedule.decay_rate == pytest.approx(math.log(2.0 / 0.5) / 100)  # reaches tau_min at 0.5 * 200 steps
    assert schedule.value(100) == pytest.approx(0.5)


FIELDS = ("init_mode", "hard", "sampling", "grouping_lr_multiplier", "grouping_step", "kernel_l2", "entropy_weight")


def test_from_settings_defaults_are_the_default_recipe(tmp_path):
    settings = _settings(tmp_path, EVERY_KEY.split("[SFG]")[0])
    options = NetworkOptions.from_settings(settings)
    default = NetworkOptions.from_recipe(DEFAULT_RECIPE, num_tasks=2, max_iter=200)
    assert DEFAULT_RECIPE == "search_commit"
    assert options.p_init == pytest.approx((1 / 3, 1 / 3, 1 / 3)) and options.p_init == default.p_init
    for field in FIELDS:
        assert getattr(options, field) == getattr(default, field), field
    assert vars(options.temperature_schedule) == vars(default.temperature_schedule)
    assert (options.grouping, options.merge) == ("learned", "sum")
    # 200 iterations: entropy boosted 1e5 x to step 20, back to lambda2 at 40, commit at 40, warm-up over 40 steps.
    schedule = options.temperature_schedule
    assert (schedule.entropy_hold, schedule.entropy_until, schedule.commit_step) == (20, 40, 40)
    assert schedule.entropy_boost == pytest.approx(1e5) and schedule.sampling_warmup == 40
    assert (options.grouping_step, options.hard, options.grouping_lr_multiplier) == ("normalized", False, 10.0)


def test_network_options_defaults_are_the_default_recipe_relative_to_the_run():
    options, default = NetworkOptions(), NetworkOptions.from_recipe(DEFAULT_RECIPE, num_tasks=3)
    for field in FIELDS:
        assert getattr(options, field) == getattr(default, field), field
    assert options.temperature_schedule.is_relative and options.temperature_schedule.commit_step is None
    resolved = options.temperature_schedule.resolved(1000)
    assert vars(resolved) == vars(NetworkOptions.from_recipe(DEFAULT_RECIPE, 3, max_iter=1000).temperature_schedule)
    assert options.sfg_conv_kwargs(4, num_tasks=3)["p_init"] == pytest.approx([0.25] * 4)
    paper = NetworkOptions.from_recipe("paper", num_tasks=2, max_iter=100)
    assert (paper.hard, paper.grouping_step, paper.temperature_schedule.commit_step) == (True, "raw", None)
    assert paper.p_init == (0.2, 0.2, 0.6)


def test_from_settings_spells_leakyrelu_as_keras_does(tmp_path):
    text = EVERY_KEY.format(tau_decay_until="0.0").replace(
        "activation_function = elu", "activation_function = leakyrelu"
    )
    options = NetworkOptions.from_settings(_settings(tmp_path, text))
    assert options.activation == "leaky_relu"
    model = build_network("sfg_small_cnn", TASKS, options.replace(width_multiplier=0.25), (8, 8, 1))
    assert {layer.activation for layer in model.sfg_layers} == {"leaky_relu"}


def test_from_settings_builds_layers_with_the_config_values(tmp_path):
    settings = _every_key_settings(tmp_path)
    model = build_network(settings.network.name, TASKS, NetworkOptions.from_settings(settings), (8, 8, 1))
    layer = model.sfg_layers[0]
    assert layer.kernel_l2 == settings.sfg.lambda1
    assert layer.entropy_weight == settings.sfg.lambda2
    assert layer.get_config()["temperature"] == settings.sfg.tau0
    assert layer.p_init == pytest.approx([1 / 3] * 3)  # constant_p: uniform, whatever p0 says
    assert (layer.hard, layer.sampling, layer.merge) == (False, "per_batch", "concat")
    assert (layer.activation, layer.inference_statistics) == ("elu", "moving")
    assert [sfg.seed for sfg in model.sfg_layers] == [8, 9, 10]
    assert [sfg.filters for sfg in model.sfg_layers] == [8, 16, 16]  # (16, 32, 32) * 0.5
    learned = build_network(
        "sfg_small_cnn", TASKS, NetworkOptions.from_settings(settings).replace(grouping="learned"), (8, 8, 1)
    )
    assert learned.sfg_layers[0].p_init == pytest.approx(list(settings.sfg.p0))
    assert learned.sfg_layers[0].init_mode == "random"
    assert learned.sfg_layers[0].grouping_lr_multiplier == 3.0


# === Construction, validation, immutability ===


def test_defaults():
    options = NetworkOptions()
    assert (options.grouping, options.p_init, options.kernel_l2, options.entropy_weight) == (
        "learned",
        None,
        1e-6,
        1e-5,
    )
    assert options.temperature_schedule.tau0 == 1.0 and options.seed is None and options.rank == 2


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("width_multiplier", 0.0),
        ("width_multiplier", "wide"),
        ("grouping", "dense"),
        ("p_init", (0.5, 0.6)),
        ("p_init", (1.0,)),
        ("p_init", "0.2,0.8"),
        ("p_init", (0.0, 0.4, 0.6)),
        ("init_mode", "zeros"),
        ("hard", "yes"),
        ("sampling", "per_pixel"),
        ("merge", "max"),
        ("activation", "no_such_activation"),
        ("inference_statistics", "running"),
        ("kernel_l2", -1e-3),
        ("entropy_weight", -0.1),
        ("temperature_schedule", 1.0),
        ("seed", -1),
        ("seed", 1.5),
        ("grouping_lr_multiplier", 0.0),
        ("rank", 1),
    ],
)
def test_invalid_values_name_the_field_and_the_value(field, value):
    with pytest.raises(ValueError, match=rf"{field}") as error:
        NetworkOptions(**{field: value})
    assert repr(value) in str(error.value) or str(list(value)) in str(error.value)


def test_frozen_and_replace_revalidates():
    options = NetworkOptions(grouping="learned", p_init=[0.3, 0.3, 0.4])
    assert options.p_init == (0.3, 0.3, 0.4)  # stored as a tuple
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.grouping = "hard_sharing"
    hard = options.replace(grouping="hard_sharing")
    assert (hard.grouping, options.grouping, hard.p_init) == ("hard_sharing", "learned", (0.3, 0.3, 0.4))
    with pytest.raises(ValueError, match="merge='max'"):
        options.replace(merge="max")
    with pytest.raises(TypeError):
        NetworkOptions("learned")  # keyword-only
    assert hash(options) == hash(options) and options == options


def test_from_recipe_and_explicit_fields_win():
    fast = NetworkOptions.from_recipe("fast", num_tasks=2, max_iter=1000, seed=3, hard=True)
    values = recipe_values("fast", 2)
    assert fast.p_init == pytest.approx(values["p0"])
    assert fast.grouping_lr_multiplier == values["grouping_lr_multiplier"]
    assert (fast.kernel_l2, fast.entropy_weight) == (values["lambda1"], values["lambda2"])
    assert fast.hard is True and fast.seed == 3  # explicit fields win
    assert fast.temperature_schedule.value(500) == pytest.approx(values["tau_min"])  # tau_decay_until = 0.5
    with pytest.raises(ValueError, match="recipe"):
        NetworkOptions.from_recipe("slow", 2, 1000)


# === Layer arguments ===


def test_sfg_conv_kwargs_rename_and_grouping():
    schedule = TemperatureSchedule(tau0=3.0, tau_min=0.2)
    options = NetworkOptions(
        p_init=(0.1, 0.1, 0.8),
        kernel_l2=1e-4,
        entropy_weight=0.5,
        temperature_schedule=schedule,
        grouping_lr_multiplier=2.0,
        init_mode="vertex",
    )
    kwargs = options.sfg_conv_kwargs(8, num_tasks=2)
    assert kwargs["p_init"] == [0.1, 0.1, 0.8] and kwargs["learn_p"] is True
    assert (kwargs["kernel_l2"], kwargs["entropy_weight"], kwargs["temperature"]) == (1e-4, 0.5, 3.0)
    assert (kwargs["init_mode"], kwargs["grouping_lr_multiplier"], kwargs["num_tasks"]) == ("vertex", 2.0, 2)
    layer = SFGConv(8, 3, **kwargs)
    assert layer.get_config()["temperature"] == 3.0
    fixed = options.replace(grouping="hard_sharing").sfg_conv_kwargs(8, num_tasks=2)
    assert fixed["fixed_assignment"] == [2] * 8
    assert "init_mode" not in fixed and "grouping_lr_multiplier" not in fixed and "p_init" not in fixed
    assert NetworkOptions().sfg_conv_kwargs(4, num_tasks=3)["p_init"] == pytest.approx([0.25] * 4)
    block = ResidualBlock(8, **options.replace(activation="relu", rank=3).residual_block_kwargs())
    assert (block.rank, block.activation, block.kernel_l2) == (3, "relu", 1e-4)


@pytest.mark.parametrize("grouping", GROUPINGS)
@pytest.mark.parametrize("architecture", ["sfg_vgg11", "sfg_highresnet", "sfg_small_cnn"])
def test_builders_pass_every_option_to_the_layers(architecture, grouping):
    schedule = TemperatureSchedule(tau0=2.0, decay_rate=0.01, tau_min=0.5)
    options = NetworkOptions(
        width_multiplier=0.25,
        grouping=grouping,
        p_init=(0.3, 0.3, 0.4),
        init_mode="random",
        hard=False,
        sampling="per_batch",
        merge="concat",
        activation="elu",
        inference_statistics="moving",
        kernel_l2=1e-3,
        entropy_weight=0.02,
        temperature_schedule=schedule,
        seed=4,
        grouping_lr_multiplier=3.0,
    )
    tasks = DENSE_TASKS if architecture == "sfg_highresnet" else TASKS
    model = ARCHITECTURES[architecture](tasks, options)
    assert model.merge == "concat" and model.temperature_schedule is schedule
    for index, layer in enumerate(model.sfg_layers, start=1):
        config = layer.get_config()
        assert (config["kernel_l2"], config["entropy_weight"], config["temperature"]) == (1e-3, 0.02, 2.0)
        assert (layer.hard, layer.sampling, layer.merge, layer.activation) == (False, "per_batch", "concat", "elu")
        assert layer.inference_statistics == "moving" and layer.seed == 4 + index and layer.rank == 2
        if grouping == "learned":
            assert layer.p_init == pytest.approx([0.3, 0.3, 0.4]) and layer.init_mode == "random"
            assert layer.grouping_lr_multiplier == 3.0
        elif grouping != "constant_p":
            assert layer.fixed_assignment is not None and layer.grouping_lr_multiplier == 1.0
    templates = [layer.get_config()["layer"] for layer in model.trunk if isinstance(layer, PerStream)]
    blocks = [template["config"] for template in templates if template["class_name"] == "ResidualBlock"]
    assert len(blocks) == (6 if architecture == "sfg_highresnet" else 0)
    for block in blocks:
        assert (block["activation"], block["inference_statistics"], block["kernel_l2"]) == ("elu", "moving", 1e-3)
    stitches = [layer for layer in model.trunk if isinstance(layer, CrossStitch)]
    assert len(stitches) == (len(model.sfg_layers) if grouping == "cross_stitch" else 0)


def test_builders_default_options_and_structure():
    assert [layer.filters for layer in sfg_vgg11(TASKS).sfg_layers] == [64, 128, 256, 256, 512, 512, 512, 512]
    assert [layer.filters for layer in sfg_highresnet(DENSE_TASKS).sfg_layers] == [16, 32, 64, 64, 64]
    small = sfg_small_cnn(TASKS, widths=(4, 6), dense=False, name="tiny")
    assert [layer.filters for layer in small.sfg_layers] == [4, 6] and small.name == "tiny"
    with pytest.raises(TypeError):
        sfg_small_cnn(TASKS, None, (4, 6))  # structure is keyword-only
    with pytest.raises(TypeError):
        sfg_vgg11(TASKS, grouping="learned")  # no threaded layer keywords


# === build_network ===


def test_build_network_by_name_and_by_callable():
    options = NetworkOptions(width_multiplier=0.125, seed=0)
    model = build_network("sfg_vgg11", TASKS, options, (16, 16, 3))
    assert isinstance(model, SFGNetwork) and model.built
    assert model.sfg_layers[0].kernel.shape == (3, 3, 3, 8)

    def tiny(tasks, options):
        return sfg_small_cnn(tasks, options, widths=(4,), name="tiny")

    custom = build_network(tiny, TASKS, None, (8, 8, 1))
    assert custom.name == "tiny" and custom.built
    outputs = custom(np.zeros((2, 8, 8, 1), "float32"))
    assert tuple(outputs["gender"].shape) == (2, 2)
    volume = build_network("sfg_small_cnn", TASKS, NetworkOptions(rank=3, width_multiplier=0.25), (8, 8, 8, 1))
    assert volume.sfg_layers[0].rank == 3


def test_build_network_errors():
    with pytest.raises(ValueError, match=r"Did you mean 'sfg_vgg11'.*architecture='vgg11'"):
        build_network("vgg11", TASKS, None, (16, 16, 3))
    with pytest.raises(ValueError, match=r"architecture=3"):
        build_network(3, TASKS, None, (16, 16, 3))
    with pytest.raises(ValueError, match=r"options.rank=2.*input_shape=\(8, 8, 8, 1\)"):
        build_network("sfg_small_cnn", TASKS, None, (8, 8, 8, 1))
    with pytest.raises(ValueError, match="must return an `SFGNetwork`"):
        build_network(lambda tasks, options: object(), TASKS, None, (8, 8, 1))
