"""Self-contained serving: exported SavedModels take raw inputs, reproduce `sfg_run inference`, and draw a fresh
Monte-Carlo stream per load unless a seed is fixed at export.

Every SavedModel is loaded in a fresh interpreter that imports plain TensorFlow only (what TF Serving sees).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from sfg_run_batch import Batch

from sfg_keras.export import export_model
from sfg_keras.models import NetworkOptions, TaskHead, sfg_small_cnn

# Loads each listed SavedModel `loads` times and calls the listed signatures `calls` times each; never imports
# sfg_keras.
LOADER = r"""
import json, sys
import numpy as np
import tensorflow as tf

spec = json.load(open(sys.argv[1]))
images = tf.constant(np.load(spec["images"]).astype("float32"))
outputs = {}
for label, path in spec["models"].items():
    for load in range(spec.get("loads", 1)):
        model = tf.saved_model.load(path)
        for signature in spec["signatures"][label]:
            for call in range(spec.get("calls", 1)):
                for key, value in model.signatures[signature](images=images).items():
                    outputs[f"{label}/{load}/{signature}/{call}/{key}"] = value.numpy()
np.savez(spec["outputs"], **outputs)
imported = sorted({name.split(".")[0] for name in sys.modules} & {"sfg_keras", "sfg_keras_applications"})
json.dump({"imported": imported}, open(spec["report"], "w"))
"""


def _environment() -> dict:
    return {**os.environ, "SFG_QUIET": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def load_and_call(folder: Path, images: np.ndarray, models: dict, signatures: dict, loads=1, calls=1) -> dict:
    """Runs LOADER in a fresh interpreter; returns `{"<label>/<load>/<signature>/<call>/<output>": array}`."""
    np.save(folder / "request.npy", images)
    spec = {
        "images": str(folder / "request.npy"), "models": {k: str(v) for k, v in models.items()},
        "signatures": signatures, "loads": loads, "calls": calls,
        "outputs": str(folder / "served.npz"), "report": str(folder / "report.json"),
    }
    (folder / "spec.json").write_text(json.dumps(spec))
    (folder / "loader.py").write_text(LOADER)
    result = subprocess.run([sys.executable, str(folder / "loader.py"), str(folder / "spec.json")],
                            capture_output=True, text=True, env=_environment(), timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads((folder / "report.json").read_text())["imported"] == []
    return dict(np.load(folder / "served.npz"))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# === The graph normalisation reproduces the numpy pipeline ===


@pytest.mark.parametrize("whitening", [True, False])
def test_mr_ct_volume_preprocessor_matches_inference_slices(whitening):
    """Histogram standardisation, whitening, padding to a multiple of 8 and cropping back, in the graph."""
    import tensorflow as tf

    from sfg_keras.data import HistogramStandardisation, whiten
    from sfg_keras_applications.mr_ct_data import inference_slices, slices_back_to_volume
    from sfg_keras_applications.mr_ct_serving import volume_preprocessor

    rng = np.random.default_rng(0)
    volumes = [np.abs(rng.normal(300.0, 120.0, (45, 50, 6))).astype("float32") for _ in range(3)]
    volumes[2][0, 0, 0] = 5000.0  # beyond the upper cutoff: the end slope
    standardiser = HistogramStandardisation().fit(volumes[:2])
    preprocessor = volume_preprocessor(standardiser, whitening=whitening)
    for volume in (volumes[2], volumes[0][:7, :9]):
        normalised = standardiser.transform(volume)
        expected, size = inference_slices(whiten(normalised) if whitening else normalised)
        raw = tf.constant(np.moveaxis(volume, 2, 0)[..., None])
        served = preprocessor.preprocess(raw).numpy()
        assert served.shape == expected.shape
        np.testing.assert_allclose(served, expected, rtol=0, atol=1e-6)
        outputs = preprocessor.postprocess({"map": tf.constant(expected), "label": tf.constant(expected[..., 0])}, raw)
        volume_back = np.moveaxis(outputs["map"].numpy()[..., 0], 0, 2)
        np.testing.assert_array_equal(volume_back, slices_back_to_volume(expected[..., 0], size))
        assert outputs["label"].shape == (volume.shape[2], *size)
    with pytest.raises(tf.errors.InvalidArgumentError, match="no voxel above its mean"):
        preprocessor.preprocess(tf.ones((2, 8, 8, 1)))


# === Monte-Carlo stream per load, export seed, versioned .keras files ===


def test_mc_stream_is_fresh_per_load_unless_seeded_and_versions_are_kept(tmp_path):
    keras.utils.set_random_seed(7)
    tasks = [TaskHead("age", "regression", 1), TaskHead("gender", "classification", 2)]
    model = sfg_small_cnn(tasks, NetworkOptions(init_mode="random", seed=11), widths=(4, 4))
    model.build((None, 8, 8, 1))
    export_dir = tmp_path / "export"
    first = export_model(model, export_dir, version=1, num_samples=4)
    kept = {key: digest(first[key]) for key in ("keras", "compact_keras")}
    states = [v.numpy().copy() for v in model.variables if "seed_generator" in v.path]
    second = export_model(model, export_dir, version=2, num_samples=4, seed=7)
    assert {key: digest(first[key]) for key in kept} == kept  # version 1's files are untouched
    assert second["keras"] == export_dir / "sfg-2.keras" and second["compact_keras"].is_file()
    after = [v.numpy() for v in model.variables if "seed_generator" in v.path]
    assert all(np.array_equal(a, b) for a, b in zip(states, after))  # the seed is applied to the export only

    images = np.random.default_rng(0).normal(size=(3, 8, 8, 1)).astype("float32")
    served = load_and_call(
        tmp_path, images, {"fresh": first["saved_model"], "seeded": second["saved_model"]},
        {"fresh": ["serving_default"], "seeded": ["serving_default"]}, loads=2, calls=2,
    )
    for key in ("age_mean", "gender_probabilities"):
        fresh = [served[f"fresh/{load}/serving_default/0/{key}"] for load in range(2)]
        assert not np.array_equal(fresh[0], fresh[1]), key  # two loads, two streams
        seeded = [[served[f"seeded/{load}/serving_default/{call}/{key}"] for call in range(2)] for load in range(2)]
        np.testing.assert_array_equal(seeded[0][0], seeded[1][0])  # every load replays the same stream ...
        np.testing.assert_array_equal(seeded[0][1], seeded[1][1])
        assert not np.array_equal(seeded[0][0], seeded[0][1])  # ... which advances per call


# === mr_ct: raw MR slices of one volume in, what `sfg_run inference` wrote out ===


def _inferred_rows(output_dir: Path) -> dict[str, dict[str, str]]:
    """The rows of `inferred.csv`, file names resolved against its folder (the table stores them relative)."""
    rows = {}
    with open(output_dir / "inferred.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            rows[row["subject"]] = {k: str(output_dir / v) if v.endswith(".nii.gz") else v for k, v in row.items()}
    return rows


def _volume(served: np.ndarray) -> np.ndarray:
    """Served slices `[Z, X, Y(, 1)]` -> volume `[X, Y, Z]`."""
    served = served[..., 0] if served.ndim == 4 and served.shape[-1] == 1 else served
    return np.moveaxis(served, 0, 2)


@pytest.mark.slow
def test_mr_ct_saved_model_takes_raw_mr_and_reproduces_inference(cohort, trained_run, tmp_path):
    from test_cli import write_config

    from sfg_keras.io import load_nifti

    folder, _ = trained_run
    shutil.copytree(folder / "model", tmp_path / "model", ignore=shutil.ignore_patterns("export", "output*"))
    config = str(write_config(tmp_path, cohort))
    # A CT range narrower than the predictions, so that both sfg_run inference and the exports must clip.
    low, high = -400.0, 200.0
    bounds = f"--output_bounds=ct:{low:g}:{high:g}"
    batch = Batch(tmp_path, Path(config))  # the sfg_run commands in one process: TensorFlow imported once
    for mode in ("map", "expected", "mc"):  # one batch per volume (16 slices), as one request is
        batch.run(mode, "inference", tmp_path / "model", f"--inference_mode={mode}", "--INFERENCE.batch_size=64",
                  f"--save_seg_dir=out_{mode}", bounds)
    batch.run("export", "export", tmp_path / "model", bounds)
    batch.execute(check=True)
    saved = tmp_path / "model" / "export"
    inferred = {mode: _inferred_rows(tmp_path / "model" / f"out_{mode}") for mode in ("map", "expected", "mc")}
    subject = sorted(inferred["map"])[0]
    mr = load_nifti(cohort / "MR" / f"{subject}_mr.nii.gz").data
    slices = np.moveaxis(np.asarray(mr, np.float32), 2, 0)[..., None]  # raw intensities, one volume
    served = load_and_call(
        tmp_path, slices, {"full": saved / "sfg" / "1", "compact": saved / "sfg_compact" / "1"},
        {"full": ["map", "expected", "serving_default"], "compact": ["serving_default"]},
    )
    for mode, signature in (("map", "full/0/map/0"), ("expected", "full/0/expected/0"),
                            ("map", "compact/0/serving_default/0")):
        row = inferred[mode][subject]
        ct = load_nifti(row["ct_mean"]).data  # the column and the signature output have one name
        assert ct.min() >= low and ct.max() <= high and np.mean(ct == low) > 0.01, (mode, ct.min(), ct.max())
        np.testing.assert_allclose(_volume(served[f"{signature}/ct_mean"]), ct, atol=0.05)  # HU, bounded alike
        labels = load_nifti(row["organs_label"]).data
        assert np.mean(_volume(served[f"{signature}/organs_label"]) == labels) > 0.999, signature
        entropy = load_nifti(row["organs_entropy"]).data
        np.testing.assert_allclose(_volume(served[f"{signature}/organs_entropy"]), entropy, atol=1e-4)
    # Monte-Carlo: another stream, agreeing within the Monte-Carlo error of num_samples = 3.
    row = inferred["mc"][subject]
    ct, ct_std = load_nifti(row["ct_mean"]).data, load_nifti(row["ct_std"]).data
    served_ct = _volume(served["full/0/serving_default/0/ct_mean"])  # HU
    served_std = _volume(served["full/0/serving_default/0/ct_std"])
    assert low <= ct.min() and ct.max() <= high and low <= served_ct.min() and served_ct.max() <= high
    assert served_ct.shape == ct.shape == mr.shape
    error = np.sqrt(2.0 / 3.0) * 0.5 * (ct_std + served_std)  # sd of the difference of two 3-sample means
    assert np.mean(np.abs(served_ct - ct)) <= 1.5 * np.mean(error) + 1.0
    entropy = load_nifti(row["organs_entropy"]).data  # a mean over the volume: labels of 3 samples are too noisy
    served_entropy = _volume(served["full/0/serving_default/0/organs_entropy"])
    assert abs(np.mean(served_entropy) - np.mean(entropy)) <= 0.02 * np.mean(entropy) + 0.01


# === age_gender: raw decoded pixels in, what `sfg_run inference` wrote out ===

AGE_GENDER_CONFIG = """
[SYSTEM]
model_dir = run
seed = 0

[NETWORK]
name = sfg_small_cnn
width_multiplier = 0.5
batch_size = 4

[TRAINING]
max_iter = 2
save_every_n = 2
validation_every_n = -1
tensorboard_every_n = -1
rotation_angle = ()
scaling_percentage = ()

[INFERENCE]
num_samples = 20
batch_size = 64

[MULTITASK]
image = IMAGES
tasks = age, gender
task_types = regression, classification
num_classes = 1, 2
labels = filename, filename

[IMAGES]
path_to_search = faces
spatial_window_size = 24, 24
"""


@pytest.mark.slow
def test_age_gender_saved_model_takes_raw_pixels_and_reproduces_inference(tmp_path):
    import tensorflow as tf

    from sfg_keras.data.generators import make_utkface_folder

    make_utkface_folder(tmp_path / "faces", num_images=24, size=32, seed=3, num_malformed=0)
    config = tmp_path / "config.ini"
    config.write_text(AGE_GENDER_CONFIG)
    batch = Batch(tmp_path, config, app="age_gender")  # the sfg_run commands in one process
    batch.run("train", "train", tmp_path / "run")
    for mode in ("map", "expected", "mc"):  # every Inference image in one batch, as in one request
        batch.run(mode, "inference", tmp_path / "run", f"--inference_mode={mode}", f"--save_seg_dir=out_{mode}")
    batch.run("export", "export", tmp_path / "run")
    batch.execute(check=True)
    saved = tmp_path / "run" / "export"
    inferred = {mode: _inferred_rows(tmp_path / "run" / f"out_{mode}") for mode in ("map", "expected", "mc")}
    subjects = sorted(inferred["map"])
    assert len(subjects) >= 2
    # Decoded 32 x 32 pixels (uint8 values); the SavedModel resizes them to 24 x 24 and standardises them.
    pixels = np.stack([tf.io.decode_image(tf.io.read_file(str(tmp_path / "faces" / s)), channels=3).numpy()
                       for s in subjects])
    served = load_and_call(
        tmp_path, pixels, {"full": saved / "sfg" / "1", "compact": saved / "sfg_compact" / "1"},
        {"full": ["map", "expected", "serving_default"], "compact": ["serving_default"]},
    )
    for mode, signature in (("map", "full/0/map/0"), ("expected", "full/0/expected/0"),
                            ("map", "compact/0/serving_default/0")):
        rows = [inferred[mode][s] for s in subjects]
        age = [float(row["age_mean"]) for row in rows]
        np.testing.assert_allclose(served[f"{signature}/age_mean"][:, 0], age, rtol=1e-4, atol=1e-3)  # years
        for c in range(2):
            probability = [float(row[f"gender_prob_{c}"]) for row in rows]
            np.testing.assert_allclose(served[f"{signature}/gender_probabilities"][:, c], probability, atol=1e-5)
        assert [int(row["gender_label"]) for row in rows] == served[f"{signature}/gender_label"].tolist()
    rows = [inferred["mc"][s] for s in subjects]
    age, age_std = (np.array([float(row[f"age_{key}"]) for row in rows]) for key in ("mean", "std"))
    served_age = served["full/0/serving_default/0/age_mean"][:, 0]  # years
    served_std = served["full/0/serving_default/0/age_std"][:, 0]
    error = np.sqrt(2.0 / 20.0) * np.maximum(age_std, served_std)  # sd of the difference of two 20-sample means
    assert np.all(np.abs(served_age - age) <= 5.0 * error + 1e-3), (served_age, age, error)


@pytest.mark.parametrize("whitening", [False, True])
def test_age_gender_preprocessor_matches_decode_and_standardise(tmp_path, whitening):
    """Raw decoded pixels through the serving graph equal the application's own decode + standardise."""
    import tensorflow as tf

    from sfg_keras.config import load_settings
    from sfg_keras.data.generators import make_utkface_folder
    from sfg_keras_applications.age_gender import AgeGenderApplication

    make_utkface_folder(tmp_path / "faces", num_images=12, size=32, seed=3, num_malformed=0)
    config = tmp_path / "config.ini"
    config.write_text(AGE_GENDER_CONFIG)
    settings = load_settings(str(config), [f"--whitening={whitening}"], action="train",
                             extra_sections=AgeGenderApplication.APP_SECTIONS)
    AgeGenderApplication(settings).prepare(fit=True)  # writes run/image_statistics.json
    app = AgeGenderApplication(settings)  # a fresh application: the hook reads the saved statistics itself
    preprocessor = app.serving_preprocessor()
    assert preprocessor.request_shape == (None, None, 3)
    paths = sorted(str(p) for p in (tmp_path / "faces").iterdir())[:4]
    pixels = tf.stack([tf.io.decode_image(tf.io.read_file(p), channels=3) for p in paths])  # uint8 [4, 32, 32, 3]
    served = preprocessor.preprocess(tf.cast(pixels, tf.float32)).numpy()
    app.prepare(fit=False)
    standardise = app.standardiser()
    expected = np.stack([standardise(app.decode(tf.constant(p))).numpy() for p in paths])
    assert served.shape == expected.shape == (4, 24, 24, 3)
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-5)
