"""What a served model returns and refuses: physical bounds in every signature and exported file, in-graph request
checks (one test per kind, in a fresh process through `tf.saved_model.load`), and `.keras` exports that take the
raw input (a misuse with normalised-input assumptions is impossible; a bare network is refused by `load_exported`).

One tiny SFG network (a regression "ct" task and a classification task) is exported once with the MR volume
preprocessor and CT-like physical outputs; one fresh interpreter loads the SavedModels WITHOUT sfg_keras (what TF
Serving sees), sends a good request and every kind of bad request to every signature, then imports sfg_keras and does
the same with the two `.keras` files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from sfg_keras.physical_outputs import PhysicalOutput, bound_predictions, parse_output_bounds

SIGNATURES = ("serving_default", "map", "expected")
BAD_REQUESTS = ("non_finite", "rank", "channels", "empty")

LOADER = r"""
import json, sys
import numpy as np
import tensorflow as tf

spec = json.load(open(sys.argv[1]))
requests = {name: np.load(path) for name, path in spec["requests"].items()}
outputs, errors = {}, {}


def call(label, function, names=None):
    for name, request in requests.items():
        if names is not None and name not in names:
            continue
        try:
            result = function(tf.constant(request))
        except Exception as error:  # the message is what is tested
            errors[f"{label}/{name}"] = f"{type(error).__name__}: {error}"
        else:
            if name == "good":
                outputs.update({f"{label}/{key}": value.numpy() for key, value in result.items()})
            else:
                errors[f"{label}/{name}"] = "no error"


full = tf.saved_model.load(spec["saved_model"])
for signature in ("serving_default", "map", "expected"):
    call(signature, lambda images, s=signature: full.signatures[s](images=images))
compact = tf.saved_model.load(spec["compact_saved_model"])
call("compact", lambda images: compact.signatures["serving_default"](images=images))
imported_before_keras = sorted({name.split(".")[0] for name in sys.modules} & {"sfg_keras", "sfg_keras_applications"})

from sfg_keras.export import load_exported  # the documented entry point of the .keras files

full_keras = load_exported(spec["keras"])
call("keras", lambda images: full_keras(images))
call("keras_map", lambda images: full_keras(images, mode="map"), names=["good"])
compact_keras = load_exported(spec["compact_keras"])
call("compact_keras", lambda images: compact_keras(images))
np.savez(spec["outputs"], **outputs)
json.dump({"errors": errors, "imported_before_keras": imported_before_keras}, open(spec["report"], "w"))
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from sfg_keras.data import HistogramStandardisation
    from sfg_keras.export import export_model
    from sfg_keras.inference import expected_outputs, map_outputs
    from sfg_keras.models import NetworkOptions, TaskHead, sfg_small_cnn
    from sfg_keras.serving import VolumePreprocessor

    keras.utils.set_random_seed(3)
    model = sfg_small_cnn([TaskHead("ct", "regression", 1), TaskHead("organs", "classification", 3)],
                          NetworkOptions(init_mode="random", seed=5), widths=(4, 4))
    model.build((None, 16, 16, 1))
    rng = np.random.default_rng(0)
    volumes = [np.abs(rng.normal(300.0, 100.0, (13, 11, 9))).astype("float32") for _ in range(3)]
    preprocessor = VolumePreprocessor.from_standardiser(HistogramStandardisation().fit(volumes[:2]), whitening=True)
    request = np.moveaxis(volumes[2], 2, 0)[..., None]  # one raw volume, 9 slices of 13 x 11
    network_input = preprocessor.preprocess(request)
    reference = {"map": map_outputs(model, network_input), "expected": expected_outputs(model, network_input)}
    hu = {mode: np.asarray(values["ct"]["mean"]) * 1024.0 - 1024.0 for mode, values in reference.items()}
    # Bounds inside the range of the MAP predictions, so that the MAP outputs are clipped at both ends.
    low, high = (float(np.quantile(hu["map"], q)) for q in (0.25, 0.75))
    ct = PhysicalOutput("ct", scale=1024.0, offset=-1024.0, unit="HU", minimum=low, maximum=high)
    root = tmp_path_factory.mktemp("served")
    paths = export_model(model, root / "export", num_samples=4, input_shape=(None, None, None, 1),
                         preprocessor=preprocessor, physical_outputs=[ct])
    bad = request.copy()
    bad[4, 5, 6, 0] = np.nan
    requests = {"good": request, "non_finite": bad, "rank": request[..., 0], "channels": np.repeat(request, 2, -1),
                "empty": request[:0]}
    spec = {"requests": {}, "outputs": str(root / "outputs.npz"), "report": str(root / "report.json")}
    for name, array in requests.items():
        np.save(root / f"{name}.npy", array)
        spec["requests"][name] = str(root / f"{name}.npy")
    spec.update({key: str(paths[key]) for key in ("saved_model", "compact_saved_model", "keras", "compact_keras")})
    (root / "spec.json").write_text(json.dumps(spec))
    (root / "loader.py").write_text(LOADER)
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, str(root / "loader.py"), str(root / "spec.json")], capture_output=True,
                            text=True, env=environment, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((root / "report.json").read_text())
    return {"outputs": dict(np.load(root / "outputs.npz")), "errors": report["errors"], "report": report, "hu": hu,
            "ct": ct, "paths": paths, "model": model, "request": request}


# === Physical bounds ===


def test_ct_is_bounded_in_every_signature_and_exported_file(served):
    outputs, ct, hu = served["outputs"], served["ct"], served["hu"]
    assert served["report"]["imported_before_keras"] == []  # the SavedModels need no sfg_keras
    labels = [*SIGNATURES, "compact", "keras", "keras_map", "compact_keras"]
    for label in labels:
        values = outputs[f"{label}/ct_mean"]
        assert values.shape == (9, 1), label
        assert values.min() >= ct.minimum and values.max() <= ct.maximum, label
    for label in ("map", "compact", "keras_map", "compact_keras"):
        values = outputs[f"{label}/ct_mean"]
        assert np.any(values == ct.minimum) and np.any(values == ct.maximum), label  # clipped at both ends
        np.testing.assert_allclose(values, np.clip(hu["map"], ct.minimum, ct.maximum), atol=1e-3, err_msg=label)
    np.testing.assert_allclose(outputs["expected/ct_mean"], np.clip(hu["expected"], ct.minimum, ct.maximum), atol=1e-3)
    assert np.all(outputs["serving_default/ct_std"] >= 0) and np.any(outputs["serving_default/ct_std"] > 0)
    np.testing.assert_array_equal(outputs["map/ct_std"], 0.0)


def test_physical_output_maps_units_and_bounds():
    ct = PhysicalOutput("ct", scale=1024.0, offset=-1024.0, unit="HU", minimum=-1024.0, maximum=3071.0)
    np.testing.assert_array_equal(ct.to_physical(np.array([-0.5, 1.0, 9.0])), [-1024.0, 0.0, 3071.0])
    assert ct.network_bounds() == (0.0, 3071.0 / 1024.0 + 1.0)
    predictions = {"ct": {"mean": np.array([-2.0, 1.5, 5.0], np.float32), "std": np.ones(3, np.float32)},
                   "organs": {"label": np.array([0, 1, 2])}}
    bounded = bound_predictions(predictions, {"ct": ct})
    np.testing.assert_array_equal(bounded["ct"]["mean"], np.array([0.0, 1.5, 3071.0 / 1024.0 + 1.0], np.float32))
    assert bounded["ct"]["mean"].dtype == np.float32 and predictions["ct"]["mean"][0] == -2.0  # input untouched
    np.testing.assert_array_equal(bounded["ct"]["std"], 1.0)
    flipped = PhysicalOutput("t", scale=-2.0, minimum=-1.0, maximum=4.0)
    assert flipped.network_bounds() == (-2.0, 0.5)
    with pytest.raises(ValueError, match="minimum.*below"):
        PhysicalOutput("ct", minimum=3.0, maximum=3.0)
    with pytest.raises(ValueError, match="scale"):
        PhysicalOutput("ct", scale=0.0)


def test_output_bounds_entries_are_parsed_and_bad_ones_named():
    assert parse_output_bounds(["ct:-1024:3071", "age::120"], ["ct", "age"]) == {
        "ct": (-1024.0, 3071.0), "age": (None, 120.0)}
    assert parse_output_bounds(["ct:none"], ["ct"]) == {"ct": None}
    for entry, message in (("organs:0:1", "not a regression task"), ("ct:5:1", "not below"), ("ct:a:1", "'a' is not"),
                           ("ct:1", "expected 'task:low:high'"), ("ct::", "neither end")):
        with pytest.raises(ValueError, match=message):
            parse_output_bounds([entry], ["ct"])
    with pytest.raises(ValueError, match="bounded twice"):
        parse_output_bounds(["ct:0:1", "ct:none"], ["ct"])


MR_CT_CONFIG = """
[SYSTEM]
model_dir = model

[NETWORK]
name = sfg_highresnet

[MULTITASK]
image = MR
tasks = ct, organs
task_types = regression, segmentation
num_classes = 1, 5
labels = CT, LABEL

[MR_CT]

[MR]
path_to_search = data/MR

[CT]
path_to_search = data/CT

[LABEL]
path_to_search = data/LABEL
"""


def test_mr_ct_bounds_ct_to_the_ct_range_by_default_and_the_key_overrides_it(tmp_path):
    from sfg_keras.config import ConfigError, load_settings
    from sfg_keras_applications.mr_ct import MRCTApplication

    config = tmp_path / "mr_ct.ini"
    config.write_text(MR_CT_CONFIG)

    def outputs(*overrides):
        settings = load_settings(str(config), list(overrides), action="inference",
                                 extra_sections=MRCTApplication.APP_SECTIONS)
        return MRCTApplication(settings).physical_outputs()

    ct = outputs()["ct"]
    assert (ct.minimum, ct.maximum, ct.unit, ct.scale, ct.offset) == (-1024.0, 3071.0, "HU", 1024.0, -1024.0)
    assert set(outputs()) == {"ct"}
    assert outputs("--output_bounds=ct:-500:").get("ct").maximum is None
    assert not outputs("--output_bounds=ct:none")["ct"].bounded
    with pytest.raises(ConfigError, match=r"\[INFERENCE\] output_bounds = 'organs:0:1'.*not a regression task"):
        outputs("--output_bounds=organs:0:1")


# === In-graph request checks: one test per kind, every signature, the compact model and both .keras files ===

EXPECTED_MESSAGES = {
    "non_finite": "the request holds non-finite values (NaN or infinity)",
    "rank": "expected a rank-4 request [N, d1, d2, 1]",
    "channels": "expected 1 channel(s) in the last axis of [N, d1, d2, 1]",
    "empty": "the request is empty (an axis of size 0)",
}


def _assert_refused(served, kind: str) -> None:
    for label in (*SIGNATURES, "compact", "keras", "compact_keras"):
        error = served["errors"][f"{label}/{kind}"]
        assert error.startswith("InvalidArgumentError"), (label, error[:500])
        assert "input images: " in error and EXPECTED_MESSAGES[kind] in error, (label, error[:800])
        assert "ONE volume" in error  # what a request holds
        for other, message in EXPECTED_MESSAGES.items():
            if other != kind:
                assert message not in error, (label, other)  # exactly the first failing check answers


def test_serving_refuses_a_non_finite_voxel(served):
    _assert_refused(served, "non_finite")
    assert "received:] [1]" in served["errors"]["map/non_finite"]  # how many


def test_serving_refuses_a_request_of_the_wrong_rank(served):
    _assert_refused(served, "rank")
    assert "[3] [shape] [9 13 11]" in served["errors"]["serving_default/rank"]


def test_serving_refuses_the_wrong_channel_count(served):
    _assert_refused(served, "channels")
    assert "[9 13 11 2]" in served["errors"]["expected/channels"]


def test_serving_refuses_an_empty_volume(served):
    _assert_refused(served, "empty")
    assert "[0 13 11 1]" in served["errors"]["compact/empty"]


# === .keras exports take the raw input; a bare network is refused ===


def test_keras_exports_take_raw_input_and_return_what_the_saved_model_serves(served):
    outputs = served["outputs"]
    for keras_label, saved_label in (("compact_keras", "compact"), ("keras_map", "map")):
        for key in ("ct_mean", "organs_probabilities", "organs_label", "organs_entropy"):
            np.testing.assert_allclose(outputs[f"{keras_label}/{key}"], outputs[f"{saved_label}/{key}"], atol=1e-4,
                                       err_msg=f"{keras_label} {key}")
    assert outputs["keras/organs_probabilities"].shape == (9, 3)  # Monte-Carlo by default, like serving_default


def test_load_exported_refuses_a_bare_network(served, tmp_path):
    from sfg_keras.export import load_exported

    checkpoint = tmp_path / "model-6.keras"
    served["model"].save(checkpoint)
    with pytest.raises(ValueError, match=r"holds a SFGNetwork, not an exported .*normalised, padded input"):
        load_exported(checkpoint)
    with pytest.raises(ValueError, match="expected a .keras file"):
        load_exported(served["paths"]["saved_model"] / "saved_model.pb")
    with pytest.raises(FileNotFoundError):
        load_exported(tmp_path / "missing.keras")
    metadata = json.loads(Path(served["paths"]["metadata"]).read_text())
    assert metadata["physical_outputs"]["ct"]["unit"] == "HU"
    assert "bounded to" in metadata["outputs"]["ct_mean"]
