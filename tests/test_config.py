"""Tests of the `.ini` configuration: schema, parsing, validation, overrides and the settings dump."""

import copy
import os
import pickle
import subprocess
import sys
import textwrap
import warnings

import pytest

from sfg_keras.config import (
    FIXED_SECTION_SCHEMAS,
    INPUT_SECTION_SCHEMA,
    CompatibilityKeyWarning,
    ConfigError,
    InputSectionSettings,
    KeySpec,
    SectionSettings,
    Settings,
    TaskSpec,
    dump_schema_markdown,
    load_settings,
    write_settings,
)
from sfg_keras.config.settings import SECTION_CLASSES
from sfg_keras.recipes import DEFAULT_RECIPE, recipe_p0

FULL_CONFIG = """
[SYSTEM]
seed = 7
num_threads = 2
distribute = Mirrored
jit_compile = yes

[NETWORK]
name = sfg_highresnet
width_multiplier = 0.5
batch_size = 4
normalisation = True
cutoff = (0.02, 0.98)

[TRAINING]
lr = 1e-4
max_iter = 250
validation_every_n = 25
rotation_angle = -5, 5
random_flipping_axes = 0, 1

[INFERENCE]
num_samples = 8
inference_mode = map
border = (4, 4)

[EVALUATION]
evaluations = mae, psnr, dice

[MULTITASK]
image = mr
tasks = synthesis, organs
task_types = regression, Segmentation
num_classes = 1, 5
loss_types = mae, dice
labels = CT, label

[SFG]
p0 = 0.2, 0.2, 0.6
hard = False
tau0 = 2.0

# An input source per modality; names are case-insensitive.
[MR]
path_to_search = data/mr
filename_contains = _mr
pixdim = 1.0, 1.0, 1.0
axcodes = r, a, s

[CT]
path_to_search = data/ct, ~/more_ct
filename_contains = _ct

[label]
path_to_search = data/label
interp_order = 0
"""

MINIMAL_CONFIG = """
[IMAGES]
path_to_search = images

[MULTITASK]
image = images
tasks = age, gender
task_types = regression, classification
num_classes = 1, 2
labels = filename, filename
"""


def write_config(tmp_path, text, name="config.ini"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def minimal_with(**sections):
    """MINIMAL_CONFIG with extra `[SECTION]` blocks given as `SECTION="key = value"` text."""
    extra = "".join(f"\n[{name}]\n{textwrap.dedent(body)}\n" for name, body in sections.items())
    return MINIMAL_CONFIG + extra


def compatibility_warnings(path, overrides=None, **kwargs):
    """`(settings, messages)`: the settings of `path` and the `CompatibilityKeyWarning` messages loading it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        settings = load_settings(path, overrides, **kwargs)
    return settings, [str(w.message) for w in caught if w.category is CompatibilityKeyWarning]


# FULL_CONFIG sets four NiftyNet-compatibility keys (border, pixdim, axcodes, interp_order): each load warns.
ignore_compatibility_keys = pytest.mark.filterwarnings("ignore::sfg_keras.config.CompatibilityKeyWarning")


def load_error(tmp_path, text, overrides=None, **kwargs):
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, overrides, **kwargs)
    return str(info.value), path


# ---------------------------------------------------------------------------------------------- valid configs


def test_full_config_types_values_and_defaults(tmp_path):
    path = write_config(tmp_path, FULL_CONFIG)
    settings, messages = compatibility_warnings(path)
    assert [message.split(" has no effect")[0] for message in messages] == [
        f"{path}: [INFERENCE] border = '(4, 4)'",
        f"{path}: [MR] pixdim = '1.0, 1.0, 1.0'",
        f"{path}: [MR] axcodes = 'r, a, s'",
        f"{path}: [label] interp_order = '0'",
    ]
    assert isinstance(settings, Settings)
    assert settings.config_path == str(path)
    assert settings.config_dir == str(tmp_path)
    assert settings.action == "train"

    assert settings.system.seed == 7 and isinstance(settings.system.seed, int)
    assert settings.system.distribute == "mirrored"  # choices are case-insensitive, stored canonical
    assert settings.system.jit_compile is True
    assert settings.system.mixed_precision == "none"
    assert settings.system.model_dir == str(tmp_path / "model")
    assert settings.system.dataset_split_file == str(tmp_path / "model" / "dataset_split.csv")

    assert settings.network.name == "sfg_highresnet"
    assert settings.network.width_multiplier == 0.5 and isinstance(settings.network.width_multiplier, float)
    assert settings.network.normalisation is True
    assert settings.network.cutoff == (0.02, 0.98)
    assert settings.network.histogram_ref_file == str(tmp_path / "model" / "histogram_ref_file.txt")
    assert settings.network.activation_function == "prelu"

    assert settings.training.lr == pytest.approx(1e-4)
    assert settings.training.max_iter == 250
    assert settings.training.rotation_angle == (-5.0, 5.0)
    assert settings.training.random_flipping_axes == (0, 1)
    assert settings.training.scaling_percentage == (-10.0, 10.0)
    assert settings.training.optimiser == "adam"

    assert settings.inference.inference_mode == "map"
    assert settings.inference.border == (4, 4)
    assert settings.inference.batch_size == 4  # 0 = the [NETWORK] batch size
    assert settings.inference.save_seg_dir == str(tmp_path / "model" / "output")
    assert settings.inference.spatial_window_size == ()
    assert settings.evaluation.evaluations == ("mae", "psnr", "dice")
    assert settings.evaluation.save_csv_dir == str(tmp_path / "model" / "evaluation")

    multitask = settings.multitask
    assert multitask.image == "MR"  # resolved to the input section's spelling
    assert multitask.tasks == ("synthesis", "organs")
    assert multitask.task_types == ("regression", "segmentation")
    assert multitask.num_classes == (1, 5)
    assert multitask.loss_types == ("MAE", "Dice")
    assert multitask.loss_weights == (1.0, 1.0)
    assert multitask.labels == ("CT", "label")

    assert settings.sfg.p0 == (0.2, 0.2, 0.6)
    assert settings.sfg.hard is False
    assert settings.sfg.tau0 == 2.0
    assert settings.sfg.tau_min == 0.1
    assert settings.sfg.grouping == "learned"

    assert list(settings.inputs) == ["MR", "CT", "label"]
    assert all(isinstance(section, InputSectionSettings) for section in settings.inputs.values())
    mr = settings.inputs["MR"]
    assert mr.path_to_search == (str(tmp_path / "data" / "mr"),)
    assert mr.pixdim == (1.0, 1.0, 1.0)
    assert mr.axcodes == ("R", "A", "S")
    assert mr.interp_order == 1
    assert mr.csv_file == ""
    ct = settings.inputs["CT"]
    assert ct.path_to_search == (str(tmp_path / "data" / "ct"), os.path.join(os.path.expanduser("~"), "more_ct"))
    assert settings.inputs["label"].interp_order == 0

    assert settings.training.origin("lr") == "file"
    assert settings.training.origin("optimiser") == "default"
    assert settings.app_sections == {}


@ignore_compatibility_keys
def test_task_specs(tmp_path):
    settings = load_settings(write_config(tmp_path, FULL_CONFIG))
    assert settings.task_specs() == [
        TaskSpec(name="synthesis", type="regression", num_classes=1, loss="MAE", weight=1.0, label="CT"),
        TaskSpec(name="organs", type="segmentation", num_classes=5, loss="Dice", weight=1.0, label="label"),
    ]


def test_minimal_config_defaults(tmp_path):
    settings = load_settings(write_config(tmp_path, MINIMAL_CONFIG))
    assert settings.multitask.loss_types == ("RMSE", "CrossEntropy")
    assert settings.multitask.labels == ("filename", "filename")
    assert settings.sfg.p0 == pytest.approx((1 / 3, 1 / 3, 1 / 3))  # the default recipe: a balanced start
    assert settings.sfg.origin("p0") == "recipe" and settings.sfg.recipe == "search_commit"  # it fills every key
    assert settings.sfg.origin("recipe") == "default"
    assert (settings.sfg.commit_at, settings.sfg.grouping_step, settings.sfg.lambda2_start) == (0.2, "normalized", 1.0)
    paper = load_settings(write_config(tmp_path, minimal_with(SFG="recipe = paper")))
    assert paper.sfg.p0 == pytest.approx((0.2, 0.2, 0.6)) and (paper.sfg.commit_at, paper.sfg.hard) == (0.0, True)
    assert settings.network.batch_size == 10 and settings.inference.batch_size == 10
    assert settings.training.max_iter == 1000
    assert settings.system.model_dir == str(tmp_path / "model")


@pytest.mark.parametrize(
    "text, expected",
    [("True", True), ("false", False), ("YES", True), ("no", False), ("1", True), ("0", False)],
)
def test_bool_spellings(tmp_path, text, expected):
    settings = load_settings(write_config(tmp_path, minimal_with(SFG=f"hard = {text}")))
    assert settings.sfg.hard is expected


@pytest.mark.parametrize("text", ["(0.3, 0.3, 0.4)", "0.3,0.3,0.4", "[0.3, 0.3, 0.4]", "0.3, 0.3, 0.4,"])
def test_list_spellings(tmp_path, text):
    settings = load_settings(write_config(tmp_path, minimal_with(SFG=f"p0 = {text}")))
    assert settings.sfg.p0 == (0.3, 0.3, 0.4)


def test_three_tasks_default_p0_and_weights(tmp_path):
    text = MINIMAL_CONFIG.replace("tasks = age, gender", "tasks = age, gender, race")
    text = text.replace("regression, classification", "regression, classification, classification")
    text = text.replace("num_classes = 1, 2", "num_classes = 1, 2, 5").replace("filename, filename", "filename, " * 2)
    text = text.replace("labels = filename, filename, ", "labels = filename, filename, csv:race")
    text += "\nloss_weights = 1, 0.5, 2\n"
    settings = load_settings(write_config(tmp_path, text))
    assert settings.sfg.p0 == pytest.approx((0.25, 0.25, 0.25, 0.25))
    assert recipe_p0(DEFAULT_RECIPE, 3) == settings.sfg.p0
    assert settings.multitask.loss_weights == (1.0, 0.5, 2.0)
    assert settings.task_specs()[2] == TaskSpec("race", "classification", 5, "CrossEntropy", 2.0, "csv:race")


def test_paths_resolve_against_config_dir_and_model_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    text = minimal_with(
        SYSTEM="model_dir = runs/exp1\ndataset_split_file = ../split.csv",
        INFERENCE="save_seg_dir = /abs/out",
    )
    settings = load_settings(write_config(tmp_path, text))
    assert settings.system.model_dir == str(tmp_path / "runs" / "exp1")
    assert settings.system.dataset_split_file == str(tmp_path / "runs" / "split.csv")
    assert settings.inference.save_seg_dir == os.path.normpath("/abs/out")

    settings = load_settings(write_config(tmp_path, minimal_with(SYSTEM="model_dir = ~/models/a")))
    assert settings.system.model_dir == str(tmp_path / "home" / "models" / "a")


def test_sections_are_read_only_and_suggest_attribute_names(tmp_path):
    settings = load_settings(write_config(tmp_path, MINIMAL_CONFIG))
    with pytest.raises(AttributeError, match="read-only"):
        settings.training.lr = 1.0
    with pytest.raises(AttributeError, match="Did you mean 'max_iter'"):
        _ = settings.training.max_iters
    assert settings.training["lr"] == settings.training.lr
    changed = settings.training.replace(max_iter=3)
    assert changed.max_iter == 3 and changed.origin("max_iter") == "code"
    assert settings.training.max_iter == 1000
    assert settings.section("training") is settings.training
    assert settings.section("images") is settings.inputs["IMAGES"]


@ignore_compatibility_keys
def test_settings_copy_and_pickle(tmp_path):
    settings = load_settings(write_config(tmp_path, FULL_CONFIG), ["--lr=0.5"])
    for clone in (copy.deepcopy(settings), pickle.loads(pickle.dumps(settings))):
        assert clone == settings
        assert clone.training.origin("lr") == "command line"
        assert isinstance(clone.training, type(settings.training))
        assert clone.to_text() == settings.to_text()


# ------------------------------------------------------------------------------------ misspelt keys and values


@pytest.mark.parametrize("key, value, suggestion", [("lr_rate", "0.01", "'lr'"), ("max_iters", "10", "'max_iter'")])
def test_misspelt_key_suggests_and_names_file_section_value(tmp_path, key, value, suggestion):
    message, path = load_error(tmp_path, minimal_with(TRAINING=f"{key} = {value}"))
    assert str(path) in message
    assert "[TRAINING]" in message
    assert f"{key} = '{value}'" in message
    assert f"did you mean {suggestion}?" in message


def test_key_in_wrong_section_names_its_section(tmp_path):
    message, _ = load_error(tmp_path, minimal_with(NETWORK="lr = 0.1"))
    assert "[NETWORK]" in message and "'lr' is a key of [TRAINING]" in message


def test_old_niftynet_key_suggests_its_replacement_in_other_section(tmp_path):
    message, _ = load_error(tmp_path, minimal_with(TRAINING="decay = 1e-4"))
    assert "did you mean 'lambda1' in [SFG]?" in message


def test_input_section_unknown_key_suggests(tmp_path):
    message, path = load_error(
        tmp_path, MINIMAL_CONFIG.replace("path_to_search = images", "path_to_search = images\nfilename_contain = x")
    )
    assert str(path) in message and "[IMAGES] filename_contain = 'x'" in message
    assert "did you mean 'filename_contains'?" in message


def test_wrong_type_names_key_value_and_expected_type(tmp_path):
    message, path = load_error(tmp_path, minimal_with(TRAINING="max_iter = ten"))
    assert str(path) in message
    assert "[TRAINING] max_iter = 'ten'" in message
    assert "expected an integer >= 0" in message


@pytest.mark.parametrize(
    "section, line, expected",
    [
        ("TRAINING", "lr = 0", "expected a number > 0"),
        ("TRAINING", "validation_every_n = 0", "expected an integer >= 1 or -1"),
        ("TRAINING", "exclude_fraction_for_validation = 1", "in [0, 1)"),
        ("SFG", "hard = maybe", "True or False"),
        ("SFG", "p0 = 0.5, abc, 0.5", "entry 'abc' is not a number"),
        ("INFERENCE", "border = 1.5, 2", "entry '1.5' is not an integer"),
        ("NETWORK", "name = vgg11", "did you mean 'sfg_vgg11'?"),
        ("TRAINING", "rotation_angle = 10, -10", "low <= high"),
        ("TRAINING", "exclude_fraction_for_validation = 0.5\nexclude_fraction_for_inference = 0.5", "sum < 1"),
    ],
)
def test_value_errors(tmp_path, section, line, expected):
    message, _ = load_error(tmp_path, minimal_with(**{section: line}))
    assert f"[{section}]" in message and expected in message


def test_special_values_are_accepted(tmp_path):
    text = minimal_with(TRAINING="validation_every_n = -1\ntensorboard_every_n = -1\nmax_iter = 1e3")
    settings = load_settings(write_config(tmp_path, text))
    assert settings.training.validation_every_n == -1
    assert settings.training.max_iter == 1000 and isinstance(settings.training.max_iter, int)


def test_bad_choice_lists_valid_choices(tmp_path):
    message, path = load_error(tmp_path, minimal_with(TRAINING="optimiser = adagrad"))
    assert str(path) in message and "[TRAINING] optimiser = 'adagrad'" in message
    for choice in ("adam", "adamw", "sgd", "momentum", "rmsprop"):
        assert f"'{choice}'" in message


def test_unknown_section_suggests_closest(tmp_path):
    message, path = load_error(tmp_path, minimal_with(TRAINNG="lr = 0.1"))
    assert str(path) in message and "[TRAINNG]" in message and "Did you mean [TRAINING]?" in message


def test_unknown_section_suggested_from_its_keys(tmp_path):
    message, _ = load_error(tmp_path, minimal_with(OPTIMISATION="lr = 0.1\nmax_iter = 3"))
    assert "Did you mean [TRAINING]?" in message


def test_missing_file_names_path(tmp_path):
    missing = tmp_path / "nope.ini"
    with pytest.raises(ConfigError, match="not found") as info:
        load_settings(missing)
    assert str(missing) in str(info.value)


def test_key_given_twice(tmp_path):
    message, path = load_error(tmp_path, minimal_with(TRAINING="lr = 0.1\nLR = 0.2"))
    assert str(path) in message and "'lr' is given twice" in message


def test_section_given_twice_case_insensitively(tmp_path):
    message, _ = load_error(tmp_path, minimal_with(TRAINING="lr = 0.1", training="max_iter = 2"))
    assert "same section" in message


def test_missing_multitask_section(tmp_path):
    message, path = load_error(tmp_path, "[IMAGES]\npath_to_search = x\n")
    assert str(path) in message and "[MULTITASK] is missing" in message and "tasks" in message


def test_missing_required_key(tmp_path):
    message, _ = load_error(tmp_path, MINIMAL_CONFIG.replace("num_classes = 1, 2", ""))
    assert "[MULTITASK] num_classes is missing" in message


def test_path_to_search_required_unless_csv_file_exists(tmp_path):
    text = MINIMAL_CONFIG.replace("path_to_search = images", "filename_contains = _img")
    message, _ = load_error(tmp_path, text)
    assert "[IMAGES] path_to_search is missing" in message
    message, _ = load_error(tmp_path, text.replace("_img", "_img\ncsv_file = a.csv"))
    assert "csv_file = 'a.csv'" in message and "does not exist" in message
    (tmp_path / "a.csv").write_text("subject,path\n")
    settings = load_settings(write_config(tmp_path, text.replace("_img", "_img\ncsv_file = a.csv")))
    assert settings.inputs["IMAGES"].csv_file == str(tmp_path / "a.csv")
    assert settings.inputs["IMAGES"].path_to_search == ()


def test_bad_action(tmp_path):
    with pytest.raises(ConfigError, match="Unknown action 'training'"):
        load_settings(write_config(tmp_path, MINIMAL_CONFIG), action="training")


# ------------------------------------------------------------------------------------------------- overrides


def test_override_wins_and_is_recorded_as_command_line(tmp_path):
    path = write_config(tmp_path, minimal_with(TRAINING="lr = 0.1\nmax_iter = 100"))
    settings = load_settings(path, ["--lr=0.5", "--max_iter", "7", "seed=3"])
    assert settings.training.lr == 0.5 and settings.training.origin("lr") == "command line"
    assert settings.training.max_iter == 7 and settings.training.origin("max_iter") == "command line"
    assert settings.system.seed == 3 and settings.system.origin("seed") == "command line"
    text = settings.to_text()
    assert "lr = 0.5" in text and "# command line" in text


def test_override_as_mapping_with_typed_values(tmp_path):
    settings = load_settings(
        write_config(tmp_path, MINIMAL_CONFIG), {"lr": 0.25, "--hard": False, "SFG.p0": (0.1, 0.1, 0.8)}
    )
    assert settings.training.lr == 0.25
    assert settings.sfg.hard is False
    assert settings.sfg.p0 == (0.1, 0.1, 0.8)


def test_section_qualified_overrides(tmp_path):
    path = write_config(tmp_path, minimal_with(NETWORK="batch_size = 6"))
    settings = load_settings(
        path, ["--INFERENCE.batch_size=3", "--images.filename_contains=_face", "--network.batch_size=2"]
    )
    assert settings.inference.batch_size == 3
    assert settings.network.batch_size == 2
    assert settings.inputs["IMAGES"].filename_contains == ("_face",)
    assert settings.inputs["IMAGES"].origin("filename_contains") == "command line"


def test_override_of_key_in_two_sections_needs_the_section(tmp_path):
    message, _ = load_error(tmp_path, MINIMAL_CONFIG, ["--batch_size=2"])
    assert "command line" in message and "[NETWORK]" in message and "[INFERENCE]" in message
    assert "--NETWORK.batch_size=2" in message


def test_input_key_override_needs_the_section(tmp_path):
    message, _ = load_error(tmp_path, MINIMAL_CONFIG, ["--path_to_search=x"])
    assert "command line" in message and "--IMAGES.path_to_search=..." in message


@pytest.mark.parametrize(
    "token, expected",
    [
        ("--lr_rate=0.1", "did you mean 'lr' in [TRAINING]?"),
        ("--learning_rate=0.1", "did you mean 'lr' in [TRAINING]?"),
        ("--lrate=0.1", "did you mean 'lr' in [TRAINING]?"),
        ("--foo=1", "Expected a key of [SYSTEM]"),
        ("--TRAINING.max_iters=3", "did you mean 'max_iter'?"),
        ("--TRAINNG.lr=3", "Did you mean [TRAINING]?"),
    ],
)
def test_unknown_override_suggests(tmp_path, token, expected):
    message, _ = load_error(tmp_path, MINIMAL_CONFIG, [token])
    assert message.startswith(f"command line ({token})")
    assert expected in message


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["--max_iter=ten"], "command line (--max_iter=ten): [TRAINING] max_iter = 'ten': expected an integer"),
        (["--lr=0.1", "--TRAINING.lr=0.2"], "given twice on the command line"),
        (["--lr"], "has no value"),
        (["-c"], "cannot read override"),
    ],
)
def test_bad_overrides(tmp_path, overrides, expected):
    message, _ = load_error(tmp_path, MINIMAL_CONFIG, overrides)
    assert expected in message


# ------------------------------------------------------------------------------------- cross-field validation


def test_p0_length_error_tells_the_order(tmp_path):
    message, path = load_error(tmp_path, minimal_with(SFG="p0 = 0.5, 0.5"))
    assert str(path) in message and "[SFG] p0 = '0.5, 0.5'" in message
    assert "expected 3 probabilities" in message and "task_1..task_T, shared (age, gender, shared)" in message


def test_p0_sum_error(tmp_path):
    message, _ = load_error(tmp_path, minimal_with(SFG="p0 = 0.2, 0.2, 0.5"))
    assert "sum to 0.9" in message and "expected a sum of 1" in message


def test_p0_from_command_line_is_named_in_error(tmp_path):
    message, _ = load_error(tmp_path, MINIMAL_CONFIG, ["--p0=0.3,0.3,0.3"])
    assert message.startswith("command line (--p0=0.3,0.3,0.3): [SFG] p0")


def test_p0_entries_must_be_positive(tmp_path):
    message, _ = load_error(tmp_path, minimal_with(SFG="p0 = 0, 0.4, 0.6"))
    assert "out of range" in message and "> 0" in message


def test_mismatched_task_list_lengths(tmp_path):
    text = MINIMAL_CONFIG.replace("num_classes = 1, 2", "num_classes = 1, 2, 3").replace(
        "labels = filename, filename", "labels = filename"
    )
    message, path = load_error(tmp_path, text)
    assert str(path) in message and "[MULTITASK]" in message
    assert "tasks has 2 (age, gender)" in message
    assert "num_classes has 3" in message and "labels has 1" in message
    assert "task_types" not in message.split("but")[1]


def test_labels_naming_missing_section(tmp_path):
    text = MINIMAL_CONFIG.replace("labels = filename, filename", "labels = filename, GENDR")
    message, path = load_error(tmp_path, text + "\n[GENDER]\ncsv_data_file = g.csv\n")
    assert str(path) in message and "[MULTITASK] labels" in message
    assert "'GENDR'" in message and "[IMAGES], [GENDER]" in message and "did you mean 'GENDER'?" in message


def test_labels_may_name_existing_section(tmp_path):
    text = MINIMAL_CONFIG.replace("labels = filename, filename", "labels = csv:age, gender")
    settings = load_settings(write_config(tmp_path, text + "\n[Gender]\ncsv_data_file = g.csv\n"))
    assert settings.multitask.labels == ("csv:age", "Gender")
    assert settings.inputs["Gender"].csv_data_file == str(tmp_path / "g.csv")


def test_image_must_name_input_section(tmp_path):
    message, _ = load_error(tmp_path, MINIMAL_CONFIG.replace("image = images", "image = photos"))
    assert "[MULTITASK] image = 'photos'" in message and "[IMAGES]" in message


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("num_classes = 1, 2", "num_classes = 1, 1", "num_classes 1; expected >= 2"),
        ("num_classes = 1, 2", "num_classes = 0, 2", "expected a comma-separated list of integers, each >= 1"),
        ("tasks = age, gender", "tasks = age, age", "repeated: age"),
        ("tasks = age, gender", "tasks = age, 2nd", "not an identifier"),
        ("tasks = age, gender", "tasks = age, shared", "reserved"),
        ("task_types = regression, classification", "task_types = regression, ordinal", "'segmentation'"),
        ("labels = filename, filename", "labels = filename, filename\nloss_types = Dice, CrossEntropy", "'Dice'"),
    ],
)
def test_multitask_rules(tmp_path, old, new, expected):
    message, _ = load_error(tmp_path, MINIMAL_CONFIG.replace(old, new))
    assert "[MULTITASK]" in message and expected in message


def test_sfg_temperature_and_grouping_rules(tmp_path):
    message, _ = load_error(tmp_path, minimal_with(SFG="tau0 = 0.5\ntau_min = 0.6"))
    assert "tau_min <= tau0" in message
    one_task = (
        MINIMAL_CONFIG.replace("age, gender", "age")
        .replace("regression, classification", "regression")
        .replace("1, 2", "1")
        .replace("filename, filename", "filename")
    )
    message, _ = load_error(tmp_path, one_task + "\n[SFG]\ngrouping = cross_stitch\n")
    assert "cross_stitch needs at least 2 tasks" in message
    settings = load_settings(write_config(tmp_path, one_task + "\n[SFG]\ngrouping = single_task\n"))
    assert settings.sfg.p0 == pytest.approx((0.5, 0.5))
    message, _ = load_error(tmp_path, minimal_with(SFG="lambda2_start = 1e-6"))
    assert "lambda2_start" in message and "not above lambda2" in message
    message, _ = load_error(tmp_path, minimal_with(SFG="lambda2_hold = 0.5\nlambda2_until = 0.3"))
    assert "lambda2_hold <= lambda2_until" in message


# ------------------------------------------------------------------------------- NiftyNet compatibility keys

COMPATIBILITY_KEYS = {
    ("NETWORK", "weight_initializer"),
    ("NETWORK", "volume_padding_size"),
    ("NETWORK", "window_sampling"),
    ("TRAINING", "sample_per_volume"),
    ("INFERENCE", "spatial_window_size"),
    ("INFERENCE", "border"),
    ("MULTITASK", "loss_border"),
    ("input", "interp_order"),
    ("input", "pixdim"),
    ("input", "axcodes"),
}


def with_key(section, line):
    """MINIMAL_CONFIG with `line` added to `[section]` (`IMAGES` is its input section)."""
    if section == "MULTITASK":
        return MINIMAL_CONFIG + line + "\n"
    if section == "IMAGES":
        return MINIMAL_CONFIG.replace("path_to_search = images\n", f"path_to_search = images\n{line}\n")
    return minimal_with(**{section: line})


def test_compatibility_keys_are_marked_in_the_schema_and_the_reference():
    schemas = {**FIXED_SECTION_SCHEMAS, "input": INPUT_SECTION_SCHEMA}
    marked = {(name, key) for name, schema in schemas.items() for key, spec in schema.items() if spec.ignored_reason}
    assert all(spec.compatibility_only == ((name, key) in marked) for name, schema in schemas.items()
               for key, spec in schema.items())
    assert marked == COMPATIBILITY_KEYS
    markdown = dump_schema_markdown()
    for name, key in COMPATIBILITY_KEYS:
        reason = schemas[name][key].ignored_reason
        assert reason and "\n" not in reason
        assert f"(compatibility only: ignored; {reason})." in markdown
    assert markdown.count("(compatibility only: ignored;") == len(COMPATIBILITY_KEYS)
    with pytest.raises(ValueError, match="ignored_reason must be one line"):
        KeySpec("x", "int", 0, "x", ignored_reason="two\nlines")


@pytest.mark.parametrize(
    "section, key, text, expected",
    [
        ("NETWORK", "weight_initializer", "glorot_uniform", "glorot_uniform"),
        ("NETWORK", "volume_padding_size", "8, 8", (8, 8)),
        ("NETWORK", "window_sampling", "resize", "resize"),
        ("TRAINING", "sample_per_volume", "4", 4),
        ("INFERENCE", "spatial_window_size", "64, 64", (64, 64)),
        ("INFERENCE", "border", "2, 2", (2, 2)),
        ("MULTITASK", "loss_border", "3", 3),
        ("IMAGES", "interp_order", "0", 0),
        ("IMAGES", "pixdim", "1.5, 1.5, 3", (1.5, 1.5, 3.0)),
        ("IMAGES", "axcodes", "L, P, S", ("L", "P", "S")),
    ],
)
def test_compatibility_key_set_to_another_value_warns_once_naming_section_key_value_and_reason(
    tmp_path, section, key, text, expected
):
    path = write_config(tmp_path, with_key(section, f"{key} = {text}"))
    settings, messages = compatibility_warnings(path)
    schema = INPUT_SECTION_SCHEMA if section == "IMAGES" else FIXED_SECTION_SCHEMAS[section]
    assert messages == [
        f"{path}: [{section}] {key} = {text!r} has no effect: {schema[key].ignored_reason}. The key is accepted so "
        "that NiftyNet configs load; remove it to silence this warning."
    ]
    assert settings.section(section)[key] == expected  # still parsed, validated and readable


@pytest.mark.parametrize(
    "section, line",
    [
        ("NETWORK", "weight_initializer = HE_NORMAL"),
        ("NETWORK", "volume_padding_size = (0, 0)"),
        ("NETWORK", "window_sampling = uniform"),
        ("TRAINING", "sample_per_volume = 1"),
        ("INFERENCE", "spatial_window_size = ()"),
        ("INFERENCE", "border = 0, 0"),
        ("MULTITASK", "loss_border = 0"),
        ("IMAGES", "interp_order = 1"),
        ("IMAGES", "pixdim = ()"),
        ("IMAGES", "axcodes ="),
    ],
)
def test_compatibility_key_at_its_default_does_not_warn(tmp_path, section, line):
    _, messages = compatibility_warnings(write_config(tmp_path, with_key(section, line)))
    assert messages == []


def test_absent_compatibility_keys_do_not_warn(tmp_path):
    _, messages = compatibility_warnings(write_config(tmp_path, MINIMAL_CONFIG))
    assert messages == []


def test_compatibility_key_on_the_command_line_warns_naming_the_token(tmp_path):
    path = write_config(tmp_path, MINIMAL_CONFIG)
    _, messages = compatibility_warnings(path, ["--border=2,2", "--IMAGES.pixdim=2,2,2", "--lr=0.01"])
    assert [message.split(" has no effect")[0] for message in messages] == [
        "command line (--IMAGES.pixdim=2,2,2): [IMAGES] pixdim = '2,2,2'",  # sections in the file's order first
        "command line (--border=2,2): [INFERENCE] border = '2,2'",
    ]


def test_invalid_compatibility_key_is_still_an_error(tmp_path):
    message, path = load_error(tmp_path, minimal_with(NETWORK="window_sampling = patches"))
    assert message == f"{path}: [NETWORK] window_sampling = 'patches': expected one of: 'resize', 'uniform'"


def test_shipped_configs_set_no_compatibility_key_to_another_value():
    import configparser
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "configs"
    paths = sorted(folder.glob("*.ini"))
    assert paths
    for path in paths:
        parser = configparser.ConfigParser(inline_comment_prefixes=("#", ";"))
        parser.read(path, encoding="utf-8")
        for name in parser.sections():
            schema = FIXED_SECTION_SCHEMAS.get(name.upper())
            if schema is None:
                schema = INPUT_SECTION_SCHEMA if any(key in INPUT_SECTION_SCHEMA for key in parser[name]) else {}
            for key, text in parser[name].items():
                spec = schema.get(key)
                if spec is not None and spec.compatibility_only:
                    assert spec.parse(text) == spec.default, f"{path.name}: [{name}] {key} = {text} is ignored"


# ---------------------------------------------------------------------------- application sections


def test_application_sections(tmp_path):
    extra = {
        "AGE_GENDER": [
            KeySpec("image_size", "int_list", (200, 200), "Height and width images are resized to.", minimum=1),
            KeySpec("age_scale", "float", 100.0, "Ages are divided by this.", minimum=0, exclusive_minimum=True),
        ]
    }
    path = write_config(tmp_path, minimal_with(age_gender="image_size = 64, 64"))
    settings = load_settings(path, ["--age_scale=50"], extra_sections=extra)
    section = settings.app_sections["AGE_GENDER"]
    assert isinstance(section, SectionSettings)
    assert section.image_size == (64, 64) and section.origin("image_size") == "file"
    assert section.age_scale == 50.0 and section.origin("age_scale") == "command line"
    assert "[AGE_GENDER]" in settings.to_text()

    message, _ = load_error(tmp_path, minimal_with(AGE_GENDER="image_sise = 3"), extra_sections=extra)
    assert "did you mean 'image_size'?" in message
    message, _ = load_error(tmp_path, minimal_with(AGE_GENDER="image_size = 3"))  # not registered
    assert "[AGE_GENDER] is not a known section" in message


# ------------------------------------------------------------------------------- settings dump and schema


@ignore_compatibility_keys
def test_write_settings_writes_every_section_and_key(tmp_path):
    path = write_config(tmp_path, FULL_CONFIG)
    settings = load_settings(path, ["--max_iter=9"], action="inference")
    written = write_settings(settings, settings.system.model_dir, "inference")
    assert written == str(tmp_path / "model" / "settings_inference.txt")
    text = (tmp_path / "model" / "settings_inference.txt").read_text()
    for name, schema in FIXED_SECTION_SCHEMAS.items():
        assert f"[{name}]" in text
        for key in schema:
            assert f"\n{key} = " in text
    for name in ("MR", "CT", "label"):
        assert f"[{name}]" in text
    assert "action 'inference'" in text and str(path) in text
    lines = {line.split(" = ")[0]: line for line in text.splitlines() if " = " in line}
    assert lines["max_iter"].endswith("# command line")
    assert lines["lr"].endswith("# file")
    assert lines["optimiser"].endswith("# default")

    # The dump is itself a config that reproduces the same values.
    reloaded = load_settings(written, action="inference")
    for name, section in settings.sections().items():
        assert reloaded.section(name).as_dict() == section.as_dict(), name


def test_write_settings_defaults_to_model_dir_and_action(tmp_path):
    settings = load_settings(write_config(tmp_path, MINIMAL_CONFIG), action="evaluation")
    written = write_settings(settings)
    assert written == os.path.join(settings.system.model_dir, "settings_evaluation.txt")
    assert os.path.isfile(written)


def test_schema_markdown_lists_every_key_with_meaning():
    markdown = dump_schema_markdown()
    for name, schema in FIXED_SECTION_SCHEMAS.items():
        assert f"### [{name}]" in markdown
        for key, spec in schema.items():
            assert f"| `{key}` |" in markdown
            assert spec.meaning and "\n" not in spec.meaning
    assert "### Input sections" in markdown
    for key, spec in INPUT_SECTION_SCHEMA.items():
        assert f"| `{key}` |" in markdown and spec.meaning
    row = next(line for line in markdown.splitlines() if line.startswith("| `lr` |"))
    assert "float > 0" in row and "0.001" in row
    extra = dump_schema_markdown({"AGE_GENDER": [KeySpec("image_size", "int", 200, "Side of resized images.")]})
    assert "### [AGE_GENDER]" in extra and "| `image_size` |" in extra


def test_bare_keys_of_fixed_sections_are_unique_except_batch_size():
    owners = {}
    for name, schema in FIXED_SECTION_SCHEMAS.items():
        for key in schema:
            owners.setdefault(key, []).append(name)
    shared = {key: names for key, names in owners.items() if len(names) > 1}
    assert shared == {"batch_size": ["NETWORK", "INFERENCE"]}


def test_typed_section_classes_match_schema():
    reserved = {name for name in dir(SectionSettings) if not name.startswith("__")}
    for name, schema in FIXED_SECTION_SCHEMAS.items():
        assert list(SECTION_CLASSES[name].__annotations__) == list(schema), name
        assert not reserved & set(schema), name
    assert list(InputSectionSettings.__annotations__) == list(INPUT_SECTION_SCHEMA)


def test_key_spec_rejects_bad_definitions():
    with pytest.raises(ValueError, match="kind"):
        KeySpec("x", "integer", 0, "x")
    with pytest.raises(ValueError, match="choices"):
        KeySpec("x", "choice", "a", "x")
    with pytest.raises(ValueError, match="lower-case"):
        KeySpec("Bad", "int", 0, "x")


def test_importing_config_does_not_import_tensorflow():
    code = "import sys, sfg_keras.config; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
