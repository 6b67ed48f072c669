"""SavedModel export for TF Serving: signatures, named inputs/outputs, no state mutation, a loader without sfg_keras."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from sfg_keras.export import export_model, next_version, serving_request_examples, signature_outputs
from sfg_keras.inference import expected_predict, map_outputs, mc_predict, predict
from sfg_keras.models import NetworkOptions, TaskHead, sfg_small_cnn
from sfg_keras.predictions import PREDICTION_KEYS

TASKS = [TaskHead("age", "regression", 1), TaskHead("gender", "classification", 3)]
NUM_SAMPLES = 40
SIZE = 12

# Runs in a fresh interpreter that never imports sfg_keras: what TF Serving sees.
LOADER = r"""
import json, sys
import numpy as np
import tensorflow as tf

saved_dir, compact_dir, inputs_path, outputs_path, report_path = sys.argv[1:6]
images = tf.constant(np.load(inputs_path))
model = tf.saved_model.load(saved_dir)
variables = list(model.variables)
before = [v.numpy().copy() for v in variables]
outputs = {}
for key, value in model.signatures["map"](images=images).items():
    outputs["map_first/" + key] = value.numpy()
for call in range(3):
    for key, value in model.signatures["serving_default"](images=images).items():
        outputs[f"mc_{call}/" + key] = value.numpy()
for key, value in model.signatures["map"](images=images).items():
    outputs["map_after/" + key] = value.numpy()
for key, value in model.signatures["expected"](images=images).items():
    outputs["expected/" + key] = value.numpy()
changed = [v.name for v, old in zip(variables, before) if not np.array_equal(v.numpy(), old)]

def op_types(signature):
    graph_def = signature.graph.as_graph_def()
    types = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        types |= {node.op for node in function.node_def}
    return sorted(types)

compact = tf.saved_model.load(compact_dir)
for key, value in compact.signatures["serving_default"](images=images).items():
    outputs["compact/" + key] = value.numpy()
np.savez(outputs_path, **outputs)
report = {
    "num_variables": len(variables),
    "changed": changed,
    "map_ops": op_types(model.signatures["map"]),
    "expected_ops": op_types(model.signatures["expected"]),
    "default_ops": op_types(model.signatures["serving_default"]),
    "compact_ops": op_types(compact.signatures["serving_default"]),
    "sfg_keras_imported": any(name.split(".")[0] == "sfg_keras" for name in sys.modules),
    "tfp_imported": "tensorflow_probability" in sys.modules,
}
with open(report_path, "w") as handle:
    json.dump(report, handle)
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.utils.set_random_seed(7)
    model = sfg_small_cnn(TASKS, NetworkOptions(init_mode="random", seed=11), widths=(8, 8))
    model.build((None, SIZE, SIZE, 3))
    rng = np.random.default_rng(0)
    for variable in model.variables:
        if variable.path.endswith("beta"):
            variable.assign(rng.normal(0.0, 0.2, tuple(variable.shape)).astype("float32"))
    root = tmp_path_factory.mktemp("export")
    paths = export_model(model, root / "export", name="sfg", version=1, num_samples=NUM_SAMPLES)
    images = rng.normal(size=(4, SIZE, SIZE, 3)).astype("float32")
    np.save(root / "images.npy", images)
    script = root / "load_saved_model.py"
    script.write_text(LOADER)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [
            sys.executable,
            str(script),
            str(paths["saved_model"]),
            str(paths["compact_saved_model"]),
            str(root / "images.npy"),
            str(root / "outputs.npz"),
            str(root / "report.json"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    outputs = dict(np.load(root / "outputs.npz"))
    report = json.loads((root / "report.json").read_text())
    return {"model": model, "paths": paths, "images": images, "outputs": outputs, "report": report, "root": root}


def test_export_layout(exported):
    paths = exported["paths"]
    export_dir = exported["root"] / "export"
    assert paths["saved_model"] == export_dir / "sfg" / "1"
    assert paths["compact_saved_model"] == export_dir / "sfg_compact" / "1"
    for key in ("saved_model", "compact_saved_model"):
        assert (paths[key] / "saved_model.pb").is_file()
        assert (paths[key] / "variables").is_dir()
    assert paths["keras"] == export_dir / "sfg-1.keras" and paths["keras"].is_file()
    assert paths["compact_keras"] == export_dir / "sfg_compact-1.keras" and paths["compact_keras"].is_file()
    assert not [p.name for p in (export_dir / "sfg").iterdir() if p.name != "1"]  # no staging leftovers
    assert not [p.name for p in export_dir.iterdir() if p.name.startswith(".")]
    metadata = json.loads((paths["saved_model"] / "assets.extra" / "sfg_serving.json").read_text())
    assert metadata["num_samples"] == NUM_SAMPLES and metadata["seed"] is None
    assert metadata["input_shape"] == [None, SIZE, SIZE, 3]
    assert metadata["signatures"]["map"]["network"] == "compact MAP network"
    assert metadata["signatures"]["serving_default"]["mode"] == "mc"
    assert set(metadata["signatures"]["expected"]["outputs"]) == set(signature_outputs(exported["model"])["expected"])
    # The version's metadata file names every file and what it takes and returns.
    assert paths["metadata"] == export_dir / "sfg-1.json"
    files = json.loads(paths["metadata"].read_text())["files"]
    assert set(files) == {"sfg/1/", "sfg-1.keras", "sfg_compact/1/", "sfg_compact-1.keras"}
    assert all(entry["takes"].startswith("images [N, 12, 12, 3] float32") for entry in files.values())


def test_loader_did_not_import_sfg_keras(exported):
    assert exported["report"]["sfg_keras_imported"] is False


def test_map_signature_is_the_compact_network_and_equals_the_sfg_map_pass(exported):
    """The exported `map` signature computes with the compact MAP network (no grouping probabilities, no sampling in
    its graph), and equals the SFG network's MAP pass within float tolerance."""
    outputs, model, report = exported["outputs"], exported["model"], exported["report"]
    reference = map_outputs(model, exported["images"])
    np.testing.assert_allclose(outputs["map_first/age_mean"], reference["age"]["mean"], atol=1e-5)
    np.testing.assert_allclose(
        outputs["map_first/gender_probabilities"], reference["gender"]["probabilities"], atol=1e-5
    )
    np.testing.assert_array_equal(outputs["map_first/gender_label"], reference["gender"]["label"])
    assert "Softplus" in report["expected_ops"]  # the SFG network computes p = softplus(r) / sum
    assert "Softplus" not in report["map_ops"] and not [op for op in report["map_ops"] if "Random" in op]


def test_serving_default_is_monte_carlo(exported):
    outputs = exported["outputs"]
    n = len(exported["images"])
    assert outputs["mc_0/age_mean"].shape == (n, 1) and outputs["mc_0/age_std"].shape == (n, 1)
    assert outputs["mc_0/gender_probabilities"].shape == (n, 3)
    assert outputs["mc_0/gender_label"].shape == (n,) and outputs["mc_0/gender_entropy"].shape == (n,)
    for call in range(3):
        probabilities = outputs[f"mc_{call}/gender_probabilities"]
        np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)
        assert np.all(outputs[f"mc_{call}/age_std"] >= 0)
        assert np.all(outputs[f"mc_{call}/gender_entropy"] >= -1e-6)
        assert np.all(outputs[f"mc_{call}/gender_entropy"] <= np.log(3) + 1e-5)
        assert set(np.unique(outputs[f"mc_{call}/gender_label"])) <= {0, 1, 2}
    # Fresh samples on every request: the seed generator advances.
    assert not np.array_equal(outputs["mc_0/age_mean"], outputs["mc_1/age_mean"])
    assert np.any(outputs["mc_0/age_std"] > 0)
    # The served mean agrees with a long in-process Monte-Carlo run (same batch, hence same batch statistics).
    reference = mc_predict(exported["model"], exported["images"], num_samples=400, batch_size=n)
    std = reference["age"]["std"]
    tolerance = 5.0 * std / np.sqrt(NUM_SAMPLES) + 1e-4
    assert np.all(np.abs(outputs["mc_0/age_mean"] - reference["age"]["mean"]) <= tolerance)
    np.testing.assert_allclose(outputs["mc_0/gender_probabilities"], reference["gender"]["probabilities"], atol=0.2)


def test_serving_never_mutates_model_state(exported):
    outputs, report = exported["outputs"], exported["report"]
    for key in ("age_mean", "age_std", "gender_probabilities", "gender_label", "gender_entropy"):
        assert np.array_equal(outputs[f"map_first/{key}"], outputs[f"map_after/{key}"])
    assert report["num_variables"] > 0
    assert report["changed"] and all("seed_generator" in name for name in report["changed"]), report["changed"]
    assert not [op for op in report["map_ops"] if op.startswith("Assign")], report["map_ops"]
    assert not [op for op in report["compact_ops"] if op.startswith("Assign")], report["compact_ops"]
    assert not [op for op in report["compact_ops"] if "Random" in op]


def test_expected_signature_matches_expected_predict(exported):
    outputs = exported["outputs"]
    local = expected_predict(exported["model"], exported["images"], batch_size=4)
    np.testing.assert_allclose(outputs["expected/age_mean"], local["age"]["mean"], atol=1e-5)
    np.testing.assert_allclose(outputs["expected/gender_probabilities"], local["gender"]["probabilities"], atol=1e-5)
    assert not np.allclose(outputs["expected/age_mean"], outputs["map_first/age_mean"], atol=1e-4)


def test_compact_saved_model_matches_map(exported):
    outputs = exported["outputs"]
    for key in ("age_mean", "age_std", "gender_probabilities", "gender_entropy"):
        np.testing.assert_allclose(outputs[f"compact/{key}"], outputs[f"map_first/{key}"], atol=1e-5)
    np.testing.assert_array_equal(outputs["compact/gender_label"], outputs["map_first/gender_label"])
    assert {k.split("/", 1)[1] for k in outputs if k.startswith("compact/")} == set(
        signature_outputs(exported["model"])["map"]
    )


def test_saved_model_cli_lists_signatures(exported):
    cli = Path(sys.executable).parent / "saved_model_cli"
    result = subprocess.run(
        [str(cli), "show", "--dir", str(exported["paths"]["saved_model"]), "--all"],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    expected = signature_outputs(exported["model"])
    for signature in ("serving_default", "map", "expected"):
        block = text.split(f"signature_def['{signature}']:")[1].split("signature_def[")[0]
        assert "inputs['images']" in block
        assert "shape: unknown_rank" in block  # any shape reaches the graph, which checks it (test_serving_outputs)
        assert "tensorflow/serving/predict" in block
        for name in expected[signature]:
            assert f"outputs['{name}']" in block


def test_export_refuses_to_overwrite_a_version(exported):
    with pytest.raises(FileExistsError, match=r"sfg[/\\]1"):
        export_model(exported["model"], exported["root"] / "export", name="sfg", version=1)
    assert next_version(exported["root"] / "export", "sfg") == 2
    assert next_version(exported["root"] / "nothing_here", "sfg") == 1


def test_export_argument_errors(exported, tmp_path):
    model = exported["model"]
    with pytest.raises(ValueError, match="version"):
        export_model(model, tmp_path, version=0)
    with pytest.raises(ValueError, match="num_samples"):
        export_model(model, tmp_path, num_samples=0)
    with pytest.raises(ValueError, match="name"):
        export_model(model, tmp_path, name="a/b")
    with pytest.raises(ValueError, match="input_shape"):
        export_model(model, tmp_path, input_shape=(None, 8, 3))
    with pytest.raises(ValueError, match="known number of channels"):
        export_model(model, tmp_path, input_shape=(None, 8, 8, None))
    with pytest.raises(ValueError, match="SFGNetwork"):
        export_model(keras.Sequential([keras.layers.Dense(1)]), tmp_path)
    with pytest.raises(ValueError, match="seed=-3"):
        export_model(model, tmp_path, seed=-3)
    assert not list(tmp_path.iterdir())


def test_every_signature_has_the_prediction_schema(exported):
    """serving_default, map, expected and the compact model return the keys of `predict` for every mode."""
    outputs, model = exported["outputs"], exported["model"]
    names = [f"age_{key}" for key in PREDICTION_KEYS["regression"]]
    names += [f"gender_{key}" for key in PREDICTION_KEYS["categorical"]]
    assert signature_outputs(model) == {"serving_default": names, "map": names, "expected": names}
    for prefix in ("mc_0", "map_first", "expected", "compact"):
        assert sorted(k.split("/", 1)[1] for k in outputs if k.startswith(f"{prefix}/")) == sorted(names), prefix
        assert outputs[f"{prefix}/gender_label"].dtype.kind == "i"
    for prefix in ("map_first", "expected", "compact"):
        np.testing.assert_array_equal(outputs[f"{prefix}/age_std"], 0.0)
        p = outputs[f"{prefix}/gender_probabilities"].astype("float64")
        np.testing.assert_allclose(outputs[f"{prefix}/gender_entropy"], -(p * np.log(p)).sum(-1), atol=1e-5)
        np.testing.assert_array_equal(outputs[f"{prefix}/gender_label"], p.argmax(-1))
    local = predict(model, exported["images"], mode="map", batch_size=len(exported["images"]))
    for key in PREDICTION_KEYS["categorical"]:
        np.testing.assert_allclose(outputs[f"map_first/gender_{key}"], local["gender"][key], atol=1e-5)


def test_serving_request_examples():
    images = np.zeros((2, 4, 4, 3), dtype="float32")
    requests = serving_request_examples(images, name="age_gender", version=3)
    assert set(requests) == {"serving_default", "map", "expected", "compact"}
    assert json.loads(requests["expected"]["body"])["signature_name"] == "expected"
    assert requests["map"]["url"] == "http://localhost:8501/v1/models/age_gender/versions/3:predict"
    assert requests["compact"]["url"] == "http://localhost:8501/v1/models/age_gender_compact/versions/3:predict"
    body = json.loads(requests["map"]["body"])
    assert body["signature_name"] == "map"
    assert np.asarray(body["inputs"]["images"]).shape == (2, 4, 4, 3)
    assert json.loads(requests["compact"]["body"])["signature_name"] == "serving_default"
    latest = serving_request_examples(images)["serving_default"]["url"]
    assert latest == "http://localhost:8501/v1/models/sfg:predict"
    with pytest.raises(ValueError, match="batch"):
        serving_request_examples(np.zeros((4, 4)))


def test_failed_export_names_the_path_and_leaves_nothing(exported, tmp_path, monkeypatch):
    def failing_save(self, path, *args, **kwargs):
        open(path, "w").write("partial")
        raise OSError(28, "No space left on device")

    from sfg_keras.serving import ServingModel

    monkeypatch.setattr(ServingModel, "save", failing_save)  # the .keras files hold ServingModels
    with pytest.raises(OSError, match=r"sfg-5\.keras.*No space left"):
        export_model(exported["model"], tmp_path / "export", name="sfg", version=5, num_samples=2)
    leftovers = [p for p in (tmp_path / "export").rglob("*") if not p.is_dir()]
    assert not leftovers, leftovers
