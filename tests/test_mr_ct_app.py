"""Tests of the mr_ct application (MR-to-CT synthesis + organ segmentation).

Most tests call the hooks directly on a tiny pelvis cohort (5 subjects of 46 x 50 x 6; slices are not a multiple
of 8, so inference pads and crops): `prepare` (normalisation files, checks, nothing written on failure), the
`tf.data` pipelines (masking, resuming at any batch), `inference_inputs` / `write_outputs` / `finish_inference` with
hand-made predictions, and `evaluate`. The end-to-end tests at the bottom go through `sfg_run` in a subprocess and
need the engine (`sfg_keras/engine/driver.py`); they are skipped while it does not exist.
"""

import csv
import hashlib
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from sfg_keras.config import ConfigError, load_settings
from sfg_keras.data import (
    HistogramStandardisation,
    ct_to_target,
    pad_slices_to,
    padded_size,
    volume_to_slices,
)
from sfg_keras.data.generators import make_pelvis_cohort
from sfg_keras.models import NetworkOptions, TaskHead, sfg_highresnet
from sfg_keras_applications import mr_ct
from sfg_keras_applications.mr_ct import MRCTApplication

os.environ.setdefault("SFG_QUIET", "1")

REPO = Path(__file__).resolve().parents[1]
GROUPINGS = ("learned", "constant_p", "constant_mask", "hard_sharing", "single_task", "cross_stitch")
SHAPE = (46, 50, 6)
PATCH, PADDED = 32, 40
BATCH = 4
JUNK = 1e6  # value of the padding of hand-made predictions: must never reach a written volume


def _config_text(data: Path, model_dir: Path, network: str = "small_networks.small_dense_sfg_cnn") -> str:
    return f"""
[SYSTEM]
model_dir = {model_dir}
seed = 3

[NETWORK]
name = {network}
width_multiplier = 0.25
batch_size = {BATCH}
normalisation = True
whitening = True

[TRAINING]
lr = 0.01
max_iter = 4
save_every_n = 2
validation_every_n = 2
tensorboard_every_n = -1
exclude_fraction_for_validation = 0.2
exclude_fraction_for_inference = 0.2
rotation_angle = -10, 10
scaling_percentage = -10, 10

[INFERENCE]
num_samples = 3
batch_size = 4

[MULTITASK]
image = MR
tasks = ct, organs
task_types = regression, segmentation
num_classes = 1, 5
loss_types = RMSE, DicePlusXEnt
labels = CT, LABEL

[MR_CT]
patch_size = {PATCH}, {PATCH}
padded_size = {PADDED}, {PADDED}

[MR]
path_to_search = {data / "MR"}
filename_contains = _mr

[CT]
path_to_search = {data / "CT"}
filename_contains = _ct

[LABEL]
path_to_search = {data / "LABEL"}
filename_contains = _label
"""


def _write_config(folder: Path, data: Path, model_dir: Path | None = None, **kwargs) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mr_ct.ini"
    path.write_text(_config_text(data, model_dir or folder / "model", **kwargs))
    return path


def _app(config: Path, action: str = "train", overrides=None) -> MRCTApplication:
    settings = load_settings(config, overrides or [], action=action, extra_sections=MRCTApplication.APP_SECTIONS)
    return MRCTApplication(settings)


def _digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _split(model_dir: Path) -> dict:
    with open(model_dir / "dataset_split.csv", newline="") as handle:
        return {row[0]: row[1] for row in csv.reader(handle)}


def _phase(model_dir: Path, phase: str) -> list[str]:
    return sorted(s for s, value in _split(model_dir).items() if value == phase)


def _volume(cohort: Path, section: str, subject: str) -> np.ndarray:
    return nib.load(cohort / section / f"{subject}_{section.lower()}.nii.gz").get_fdata()


def _as_arrays(batch):
    images, targets = batch
    return [images.numpy()] + [targets[name].numpy() for name in sorted(targets)]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pelvis") / "data"
    make_pelvis_cohort(folder, num_subjects=5, shape=SHAPE, seed=1)
    return folder


@pytest.fixture(scope="module")
def prepared(cohort, tmp_path_factory):
    """A model_dir after `prepare(fit=True)` (what training from scratch starts with)."""
    config = _write_config(tmp_path_factory.mktemp("run"), cohort)
    app = _app(config)
    app.prepare(fit=True)
    return {"config": config, "model_dir": app.model_dir, "app": app}


def _copy_model_dir(prepared, tmp_path: Path) -> Path:
    model_dir = tmp_path / "model"
    shutil.copytree(prepared["model_dir"], model_dir)
    return model_dir


# === prepare ===


def test_prepare_fit_writes_split_histogram_and_training_statistics(prepared, cohort):
    model_dir, app = prepared["model_dir"], prepared["app"]
    assert sorted(p.name for p in model_dir.iterdir()) == [
        ".input_scans.json", "dataset_split.csv", "histogram_ref_file.txt", "training_statistics.json"
    ]
    split = _split(model_dir)
    assert sorted(split) == [f"subj_{i:03d}" for i in range(5)]
    assert sorted(split.values()) == ["Inference", "Training", "Training", "Training", "Validation"]
    training = _phase(model_dir, "Training")
    statistics = json.loads((model_dir / "training_statistics.json").read_text())
    assert statistics == app.statistics
    assert statistics["training_subjects"] == training
    ct = np.concatenate([_volume(cohort, "CT", s).ravel() for s in training])
    assert statistics["ct_mean_hu"] == pytest.approx(np.mean(ct), rel=1e-5)
    assert sum(statistics["organs_label_counts"]) == 3 * math.prod(SHAPE)
    assert len(app.training_data) == 3 * SHAPE[2] and app.training_data.subjects == training
    assert app.training_data.images.shape == (3 * SHAPE[2], SHAPE[0], SHAPE[1], 1)
    assert len(app.validation_data) == SHAPE[2]


def test_histogram_standardisation_is_learned_on_training_subjects_only(prepared, cohort):
    model_dir = prepared["model_dir"]
    saved = HistogramStandardisation.load(model_dir / "histogram_ref_file.txt")
    training = [_volume(cohort, "MR", s).astype(np.float32) for s in _phase(model_dir, "Training")]
    expected = HistogramStandardisation(cutoff=(0.01, 0.99), landmarks="percentile").fit(training)
    np.testing.assert_allclose(saved.reference_landmarks, expected.reference_landmarks, rtol=1e-9)
    everyone = [_volume(cohort, "MR", s).astype(np.float32) for s in sorted(_split(model_dir))]
    assert not np.allclose(saved.reference_landmarks, HistogramStandardisation().fit(everyone).reference_landmarks)


def test_prepare_fit_replaces_existing_normalisation_files(prepared, tmp_path):
    model_dir = _copy_model_dir(prepared, tmp_path)
    (model_dir / "histogram_ref_file.txt").write_text("stale\n")
    (model_dir / "training_statistics.json").write_text("{}")
    _app(prepared["config"], overrides=[f"--model_dir={model_dir}"]).prepare(fit=True)
    for name in ("histogram_ref_file.txt", "training_statistics.json"):
        assert _digest(model_dir / name) == _digest(prepared["model_dir"] / name)
    hidden = [p.name for p in model_dir.iterdir() if p.name.startswith(".") and p.name != ".input_scans.json"]
    assert not hidden, "temporary files left behind"


def test_prepare_without_fit_loads_the_saved_normalisation_unchanged(prepared, tmp_path):
    model_dir = _copy_model_dir(prepared, tmp_path)
    before = {p.name: _digest(p) for p in model_dir.iterdir()}
    app = _app(prepared["config"], overrides=[f"--model_dir={model_dir}"])
    app.prepare(fit=False)
    assert {p.name: _digest(p) for p in model_dir.iterdir()} == before
    fitted = prepared["app"].standardiser
    np.testing.assert_array_equal(app.standardiser.reference_landmarks, fitted.reference_landmarks)
    np.testing.assert_array_equal(app.training_data.images, prepared["app"].training_data.images)


@pytest.mark.parametrize(("action", "missing"), [("train", "histogram_ref_file"), ("inference", "histogram_ref_file"),
                                                 ("evaluation", "training_statistics")])
def test_prepare_without_fit_names_the_missing_file_and_the_train_command(prepared, tmp_path, action, missing):
    empty = tmp_path / "empty"
    app = _app(prepared["config"], action, overrides=[f"--model_dir={empty}"])
    with pytest.raises(FileNotFoundError, match=rf"{missing}.*sfg_run train -c"):
        app.prepare(fit=False)
    assert not empty.exists()


def test_inference_prepare_loads_no_training_volume(prepared, tmp_path, monkeypatch):
    model_dir = _copy_model_dir(prepared, tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("inference loaded a training volume")

    monkeypatch.setattr(mr_ct, "load_subject", refuse)
    app = _app(prepared["config"], "inference", overrides=[f"--model_dir={model_dir}"])
    app.prepare(fit=False)
    assert app.training_data is None and app.standardiser is not None
    assert [item.key for item in app.inference_inputs()] == _phase(model_dir, "Inference")


def test_training_fraction_subsamples_training_subjects(prepared, tmp_path):
    model_dir = tmp_path / "fraction"
    model_dir.mkdir()
    shutil.copy(prepared["model_dir"] / "dataset_split.csv", model_dir / "dataset_split.csv")
    app = _app(prepared["config"], overrides=[f"--model_dir={model_dir}", "--training_fraction=0.5"])
    app.prepare(fit=True)
    statistics = json.loads((model_dir / "training_statistics.json").read_text())
    assert len(statistics["training_subjects"]) == 2
    assert set(statistics["training_subjects"]) <= set(_phase(model_dir, "Training"))
    assert len(app.training_data) == 2 * SHAPE[2]


def _copy_cohort(cohort: Path, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(cohort, data)
    return data


def _break_geometry(data: Path, change: str) -> None:
    path = data / "LABEL" / "subj_001_label.nii.gz"
    image = nib.load(path)
    labels = np.asarray(image.dataobj)
    if change == "affine":
        affine = image.affine.copy()
        affine[0, 3] += 5.0
        nib.save(nib.Nifti1Image(labels, affine), path)
    else:
        nib.save(nib.Nifti1Image(labels[:, :, :5], image.affine), path)


def _break_labels(data: Path) -> None:
    path = data / "LABEL" / "subj_003_label.nii.gz"
    image = nib.load(path)
    labels = np.asarray(image.dataobj).copy()
    labels[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(labels, image.affine, image.header), path)


@pytest.mark.parametrize(
    ("damage", "error", "message"),
    [
        ("missing_ct", ValueError, r"subj_002.*\[CT\]"),
        ("affine", ValueError, "subj_001.*different affines"),
        ("shape", ValueError, "subj_001.*different shapes"),
        ("labels", ValueError, r"subj_003.*\[7\]"),
        ("no_folder", FileNotFoundError, r"\[MR\]"),
    ],
)
def test_a_failed_check_names_the_subject_and_writes_no_normalisation(cohort, tmp_path, damage, error, message):
    data = _copy_cohort(cohort, tmp_path)
    if damage == "missing_ct":
        (data / "CT" / "subj_002_ct.nii.gz").unlink()
    elif damage in ("affine", "shape"):
        _break_geometry(data, damage)
    elif damage == "labels":
        _break_labels(data)
    else:
        shutil.rmtree(data / "MR")
    app = _app(_write_config(tmp_path, data))
    with pytest.raises(error, match=message):
        app.prepare(fit=True)
    written = sorted(p.name for p in app.model_dir.iterdir()) if app.model_dir.exists() else []
    # The split file comes from the base `split` (make_or_load_split), which writes it before the volume checks.
    assert [name for name in written if name != "dataset_split.csv"] == []


# === Datasets ===


def test_training_dataset_resumes_at_any_batch(prepared):
    app = prepared["app"]
    # 18 slices in batches of 4: batches 3.. cross the first epoch boundary (position 18).
    straight = [_as_arrays(batch) for batch in app.training_dataset(first_batch=0).take(8)]
    for first in (3, 5):
        resumed = [_as_arrays(batch) for batch in app.training_dataset(first_batch=first).take(8 - first)]
        for expected, actual in zip(straight[first:], resumed, strict=True):
            for a, b in zip(expected, actual, strict=True):
                np.testing.assert_array_equal(a, b)
    assert not np.array_equal(straight[0][0], straight[1][0])


def test_training_dataset_depends_on_the_seed(prepared, tmp_path):
    model_dir = _copy_model_dir(prepared, tmp_path)
    other = _app(prepared["config"], overrides=[f"--model_dir={model_dir}", "--seed=4"])
    other.prepare(fit=False)
    first = _as_arrays(next(iter(prepared["app"].training_dataset(0))))
    second = _as_arrays(next(iter(other.training_dataset(0))))
    assert not np.array_equal(first[0], second[0])


@pytest.mark.parametrize("flips", ["-1", "0,1"])
def test_training_and_validation_datasets_mask_padding(prepared, tmp_path, flips):
    model_dir = _copy_model_dir(prepared, tmp_path)
    app = _app(prepared["config"], overrides=[f"--model_dir={model_dir}", f"--random_flipping_axes={flips}"])
    app.prepare(fit=False)
    images, targets = next(iter(app.training_dataset(first_batch=0)))
    assert images.shape == (BATCH, PADDED, PADDED, 1)
    assert targets["ct"].shape == (BATCH, PADDED, PADDED, 1)
    assert targets["organs"].shape == (BATCH, PADDED, PADDED) and targets["organs"].dtype.name == "int32"
    ct, organs = targets["ct"].numpy(), targets["organs"].numpy()
    border = (PADDED - PATCH) // 2
    assert np.all(np.isnan(ct[:, :border])) and np.all(np.isnan(ct[:, :, -border:]))
    assert np.all(organs[:, :border] == -1) and np.all(organs[:, :, -border:] == -1)
    assert np.all(images.numpy()[:, :border] == 0.0)
    inside = organs[:, border:-border, border:-border]
    assert set(np.unique(inside)) <= {-1, 0, 1, 2, 3, 4} and np.mean(inside >= 0) > 0.8
    assert np.array_equal(np.isnan(ct[..., 0]), organs == -1)
    validation = app.validation_dataset()
    first, again = next(iter(validation)), next(iter(app.validation_dataset()))
    assert first[0].shape[1:] == (PADDED, PADDED, 1)
    assert first[1]["organs"].shape[1:] == (PADDED, PADDED)
    assert np.all(first[1]["organs"].numpy()[:, :border] == -1)
    np.testing.assert_array_equal(first[0].numpy(), again[0].numpy())


def test_no_validation_dataset_without_validation_subjects(prepared, tmp_path):
    app = _app(prepared["config"], overrides=[f"--model_dir={tmp_path / 'model'}",
                                              "--exclude_fraction_for_validation=0"])
    app.prepare(fit=True)
    assert app.validation_dataset() is None


def test_dataset_hooks_before_prepare_say_so(prepared):
    app = _app(prepared["config"])
    with pytest.raises(RuntimeError, match="prepare"):
        app.training_dataset(0)


# === Inference and evaluation ===


def _inference_app(prepared, tmp_path: Path, *overrides: str) -> MRCTApplication:
    model_dir = _copy_model_dir(prepared, tmp_path)
    app = _app(prepared["config"], "inference",
               overrides=[f"--model_dir={model_dir}", f"--save_seg_dir={tmp_path / 'output'}", *overrides])
    app.prepare(fit=False)
    return app


def _padded_slices(volume: np.ndarray, size) -> np.ndarray:
    return pad_slices_to(volume_to_slices(volume.astype(np.float32)), size, JUNK)


def _predictions(cohort: Path, subject: str, std_hu: float = 0.0) -> dict:
    """Predictions in the unified schema whose cropped volumes are the subject's references (plus a known std)."""
    ct, labels = _volume(cohort, "CT", subject), _volume(cohort, "LABEL", subject)
    size = padded_size(SHAPE[:2], 8)
    mean = _padded_slices(ct_to_target(ct), size)[..., None]
    label = _padded_slices(labels, size)
    probabilities = np.full((*label.shape, 5), 0.2, np.float32)
    return {
        "ct": {"mean": mean, "std": np.full_like(mean, std_hu / 1024.0)},
        "organs": {"probabilities": probabilities, "label": label, "entropy": _padded_slices(labels / 10.0, size)},
    }


def test_inference_inputs_are_padded_normalised_slices(prepared, tmp_path, cohort):
    app = _inference_app(prepared, tmp_path)
    (item,) = app.inference_inputs()
    assert item.key == _phase(app.model_dir, "Inference")[0]
    assert item.inputs.shape == (SHAPE[2], 48, 56, 1) and item.inputs.dtype == np.float32
    assert item.batch_size == 4 and item.samples_per_pass == 3
    assert item.context.slice_size == SHAPE[:2]
    mr = _volume(cohort, "MR", item.key)
    expected = volume_to_slices(app.normalise_mr(mr, app.standardiser))
    np.testing.assert_array_equal(item.inputs[:, 1:47, 3:53, 0], expected)
    assert np.all(item.inputs[:, 0] == 0)
    (deterministic,) = _inference_app(prepared, tmp_path / "map", "--inference_mode=map").inference_inputs()
    assert deterministic.samples_per_pass is None


@pytest.mark.parametrize("mode", ["mc", "map"])
def test_write_outputs_writes_the_niftis_with_the_mr_geometry(prepared, tmp_path, cohort, mode):
    app = _inference_app(prepared, tmp_path, f"--inference_mode={mode}")
    (item,) = app.inference_inputs()
    subject, output = item.key, tmp_path / "output"
    written = app.write_outputs(item, _predictions(cohort, subject, std_hu=25.0 if mode == "mc" else 0.0))
    keys = ("ct_mean", "ct_std", "organs_label", "organs_entropy") if mode == "mc" else (
        "ct_mean", "organs_label", "organs_entropy")
    names = {key: output / f"{key}_{subject}_niftynet_out.nii.gz" for key in keys}
    assert sorted(written) == sorted(names.values())
    table = app.finish_inference(written)
    assert table == [output / "inferred.csv"]
    assert sorted(p.name for p in output.iterdir()) == sorted([p.name for p in names.values()] + ["inferred.csv"])
    mr = nib.load(cohort / "MR" / f"{subject}_mr.nii.gz")
    volumes = {}
    for key, path in names.items():
        image = nib.load(path)
        assert image.shape == mr.shape
        np.testing.assert_allclose(image.affine, mr.affine, atol=1e-5)
        np.testing.assert_allclose(image.header.get_zooms(), mr.header.get_zooms())
        volumes[key] = np.asarray(image.dataobj)
    assert volumes["ct_mean"].dtype == np.float32 and volumes["organs_label"].dtype == np.uint8
    np.testing.assert_allclose(volumes["ct_mean"], _volume(cohort, "CT", subject), atol=0.05)
    np.testing.assert_array_equal(volumes["organs_label"], _volume(cohort, "LABEL", subject))
    np.testing.assert_allclose(volumes["organs_entropy"], _volume(cohort, "LABEL", subject) / 10.0, rtol=1e-6)
    if mode == "mc":
        np.testing.assert_allclose(volumes["ct_std"], 25.0, rtol=1e-5)
    with open(output / "inferred.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    mr_file = str(item.context.reference.path)
    assert mr_file.endswith(f"{subject}_mr.nii.gz")  # the MR of each subject, for the report's slices
    # File names relative to the table (a copied or moved output folder reads its own files), and provenance.
    assert rows == [{"subject": subject, "image": mr_file, **{key: path.name for key, path in names.items()},
                     "phase": "Inference", "trained_on": "no",
                     "input_sha256": _digest(cohort / "MR" / f"{subject}_mr.nii.gz")}]


def test_inferred_tables_of_both_namings_are_read(prepared, tmp_path):
    """`inferred.csv` names a task's main volume `<task>_mean` / `<task>_label`, as the exported signatures do; a
    table written before that naming (`<task>` columns) is read the same way."""
    from sfg_keras.predictions import output_names
    from sfg_keras_applications.mr_ct_evaluation import read_inferred
    from sfg_keras_applications.mr_ct_outputs import main_column

    app = _inference_app(prepared, tmp_path)
    assert [main_column(task) for task in app.tasks] == ["ct_mean", "organs_label"]
    assert {"ct_mean", "ct_std", "organs_label", "organs_entropy"} <= set(
        output_names((task.name, task.type != "regression") for task in app.tasks))
    for columns in (("ct_mean", "organs_label"), ("ct", "organs")):
        table = tmp_path / "_".join(columns) / "inferred.csv"
        table.parent.mkdir()
        table.write_text(f"subject,{columns[0]},{columns[1]}\ns1,c.nii.gz,o.nii.gz\n")
        (row,) = read_inferred(table, app.tasks, "demo.ini")
        assert row["ct"] == str(table.parent.absolute() / "c.nii.gz")
        assert row["organs"] == str(table.parent.absolute() / "o.nii.gz")
    table.write_text("subject,ct_mean\ns1,c.nii.gz\n")
    with pytest.raises(ValueError, match=r"line 2: subject 's1' has no \['organs_label'\] column value"):
        read_inferred(table, app.tasks, "demo.ini")


def test_write_outputs_names_a_missing_prediction(prepared, tmp_path, cohort):
    app = _inference_app(prepared, tmp_path)
    (item,) = app.inference_inputs()
    predictions = _predictions(cohort, item.key)
    del predictions["organs"]["entropy"]
    with pytest.raises(ValueError, match=rf"{item.key}.*entropy.*organs"):
        app.write_outputs(item, predictions)
    predictions = _predictions(cohort, item.key)
    predictions["ct"]["mean"] = predictions["ct"]["mean"][:2]
    with pytest.raises(ValueError, match=r"ct\.mean has shape"):
        app.write_outputs(item, predictions)


def test_evaluate_compares_the_written_volumes_with_the_references(prepared, tmp_path, cohort):
    inference = _inference_app(prepared, tmp_path, "--dataset_to_infer=all")
    items = list(inference.inference_inputs())
    assert [item.key for item in items] == [f"subj_{i:03d}" for i in range(5)]
    written = [path for item in items for path in inference.write_outputs(item, _predictions(cohort, item.key))]
    inference.finish_inference(written)
    app = _app(prepared["config"], "evaluation",
               overrides=[f"--model_dir={inference.model_dir}", f"--save_seg_dir={tmp_path / 'output'}"])
    app.prepare(fit=False)
    metrics_csv, summary_csv = app.evaluate()
    assert Path(metrics_csv).name == "mr_ct_metrics.csv" and Path(summary_csv).name == "mr_ct_metrics_summary.csv"
    with open(metrics_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    # The Training subjects were inferred on purpose (dataset_to_infer = all, marked trained_on): never scored.
    held_out = [item.key for item in items if item.key not in _phase(inference.model_dir, "Training")]
    assert len(held_out) == 2 and [row["subject"] for row in rows] == held_out
    statistics = json.loads((inference.model_dir / "training_statistics.json").read_text())
    for row in rows:
        assert float(row["mae"]) < 0.05 and float(row["dice_mean"]) == pytest.approx(1.0)
        assert float(row["dice_rectum"]) == pytest.approx(1.0) and float(row["mae_bone"]) < 0.05
        ct = _volume(cohort, "CT", row["subject"])
        assert float(row["reference_mean_ct_mae"]) == pytest.approx(np.mean(np.abs(ct - statistics["ct_mean_hu"])))
        assert float(row["reference_background_dice_mean"]) == 0.0
    with open(summary_csv, newline="") as handle:
        assert [r["statistic"] for r in csv.DictReader(handle)] == ["mean", "std"]


def test_evaluation_without_inference_names_the_missing_file(prepared, tmp_path):
    app = _app(prepared["config"], "evaluation", overrides=[f"--save_seg_dir={tmp_path / 'nothing'}"])
    app.prepare(fit=False)
    with pytest.raises(FileNotFoundError, match="inferred.csv"):
        app.evaluate()


# === Settings, model and configs ===


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--task_types=regression,classification", "--loss_types=RMSE,CrossEntropy"], "classification"),
        (["--MR_CT.label_names=background,bone"], "expected 5 names"),
        (["--padded_size=24,24"], "at least patch_size"),
        (["--bone_label=5"], "bone_label"),
        (["--random_flipping_axes=2"], "random_flipping_axes"),
        (["--scaling_percentage=-10,120"], "scaling_percentage"),
    ],
)
def test_invalid_settings_raise_config_errors(cohort, tmp_path, overrides, message):
    config = _write_config(tmp_path, cohort)
    with pytest.raises(ConfigError, match=rf"mr_ct\.ini: \[\w+\] .*{message}"):
        _app(config, overrides=overrides)


def test_highresnet_predicts_whole_slices_of_any_size():
    tasks = [TaskHead("ct", "regression", 1), TaskHead("organs", "segmentation", 5)]
    model = sfg_highresnet(tasks, NetworkOptions(width_multiplier=0.25, seed=0))
    model.build((None, PADDED, PADDED, 1))
    outputs = model(np.zeros((2, 56, 48, 1), np.float32), training=False)
    assert tuple(outputs["ct"].shape) == (2, 56, 48, 1)
    assert tuple(outputs["organs"].shape) == (2, 56, 48, 5)


def test_demo_and_paper_configs_parse_and_point_to_their_data():
    demo = _app(REPO / "configs" / "demo_mr_ct.ini")
    assert demo.settings.system.model_dir == str(REPO / "demo_run" / "mr_ct")
    for section in ("MR", "CT", "LABEL"):
        (folder,) = demo.settings.inputs[section].path_to_search
        assert folder == str(REPO / "demo_data" / "pelvis" / section)
    assert demo.settings.network.name == "sfg_highresnet"
    assert demo.export_input_shape() == (None, None, 1)
    assert demo.input_shape() == (*demo.padded_patch_size, 1)

    head = _app(REPO / "configs" / "demo_head_mr_ct.ini")
    (folder,) = head.settings.inputs["MR"].path_to_search
    assert folder == str(REPO / "demo_data" / "head" / "MR")
    assert head.app_settings.label_names == ("background", "csf", "grey_matter", "white_matter", "skull")

    for grouping in GROUPINGS:
        settings = _app(REPO / "configs" / f"mr_ct_{grouping}.ini").settings
        assert settings.sfg.grouping == grouping
        assert settings.network.name == "sfg_highresnet" and settings.network.width_multiplier == 1.0
        assert settings.network.batch_size == 10 and settings.training.lr == 1e-3
        assert settings.training.max_iter == 40000 and settings.training.validation_every_n == 100
        assert settings.inference.num_samples == 50
        assert settings.app_sections["MR_CT"].patch_size == (128, 128)
        assert settings.app_sections["MR_CT"].padded_size == (136, 136)
        assert settings.inputs["CT"].path_to_search == (str(REPO / "data" / "mr_ct" / "CT"),)
        assert [t.name for t in settings.task_specs()] == ["ct", "organs"]


# === End to end through sfg_run (needs the engine, sfg_keras/engine/driver.py) ===

needs_engine = pytest.mark.skipif(
    importlib.util.find_spec("sfg_keras.engine.driver") is None,
    reason="waiting for the engine: sfg_keras/engine/driver.py does not exist yet",
)


def _sfg_run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    command = [str(Path(sys.executable).with_name("sfg_run")), *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


_KEPT_ON_RESUME = ("histogram_ref_file.txt", "dataset_split.csv", "training_statistics.json")


@pytest.fixture(scope="module")
def cli_run(cohort, tmp_path_factory):
    """Trains 2 steps, resumes to 4, infers (MC) and evaluates once through `sfg_run ... -a mr_ct`."""
    from sfg_run_batch import Batch

    config = _write_config(tmp_path_factory.mktemp("cli"), cohort)
    model_dir = config.parent / "model"
    batch = Batch(config.parent, config, app="mr_ct")  # the four commands in one process: TensorFlow imported once
    batch.run("train", "train", model_dir, "--max_iter=2")
    batch.run("resume", "train", model_dir, "--starting_iter=-1", "--max_iter=4")
    for action in ("inference", "evaluation"):
        batch.run(action, action, model_dir)
    results = batch.execute(check=True)
    first, resumed = ({name: results[run]["after"]["model_dir"][name] for name in _KEPT_ON_RESUME}
                      for run in ("train", "resume"))
    return {"config": config, "model_dir": model_dir, "first": first, "resumed": resumed}


@needs_engine
@pytest.mark.slow
def test_cli_train_and_resume_write_checkpoints_and_keep_the_normalisation(cli_run):
    model_dir = cli_run["model_dir"]
    assert sorted(p.name for p in (model_dir / "models").glob("model-*.keras")) == ["model-2.keras", "model-4.keras"]
    for name in ("settings_train.txt", *_KEPT_ON_RESUME):
        assert (model_dir / name).is_file(), name
    assert cli_run["resumed"] == cli_run["first"]
    info = json.loads((model_dir / "model_info.json").read_text())
    assert info["input_shape"] == [PADDED, PADDED, 1]


@needs_engine
@pytest.mark.slow
def test_cli_inference_and_evaluation_write_volumes_and_metrics(cli_run, cohort):
    model_dir = cli_run["model_dir"]
    (subject,) = _phase(model_dir, "Inference")
    output = model_dir / "output"
    names = [f"{key}_{subject}_niftynet_out.nii.gz" for key in ("ct_mean", "ct_std", "organs_label", "organs_entropy")]
    assert sorted(p.name for p in output.iterdir()) == sorted([*names, "inferred.csv", "inference_record.json"])
    ct = np.asarray(nib.load(output / names[0]).dataobj)
    assert ct.shape == SHAPE and np.all(np.isfinite(ct)) and -4000 < ct.min() and ct.max() < 4000
    assert np.all(np.asarray(nib.load(output / names[1]).dataobj) >= 0)
    entropy = np.asarray(nib.load(output / names[3]).dataobj)
    assert np.all(entropy >= 0) and np.all(entropy <= math.log(5) + 1e-5)
    with open(model_dir / "evaluation" / "mr_ct_metrics.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["subject"] == subject and float(row["mae"]) > 0


@needs_engine
@pytest.mark.slow
def test_cli_map_inference_of_all_subjects_writes_no_ct_std(cli_run, tmp_path):
    out = tmp_path / "map_out"
    _sfg_run("inference", "-c", str(cli_run["config"]), "-a", "mr_ct", "--inference_mode=map",
             "--dataset_to_infer=all", f"--save_seg_dir={out}")
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 5 * 3 + 2 and not any("ct_std" in name for name in names)  # + inferred.csv, its record
    labels = np.asarray(nib.load(out / "organs_label_subj_004_niftynet_out.nii.gz").dataobj)
    assert labels.shape == SHAPE and labels.max() <= 4
