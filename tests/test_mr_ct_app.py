"""Tests of the mr_ct application (MR-to-CT synthesis + organ segmentation) through its Python API.

One tiny pelvis cohort (5 subjects of 48 x 48 x 6) is trained once for a few steps with a small fully
convolutional SFG network; the tests check the files of training, resuming, inference and evaluation, the tf.data
pipeline, and the errors for bad data and bad settings.
"""

import csv
import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import keras
import nibabel as nib
import numpy as np
import pytest

from applications.mr_ct import MRCTApplication
from sfg_keras.config import ConfigError, load_settings, write_settings
from sfg_keras.data import HistogramStandardisation
from sfg_keras.data.generators import make_pelvis_cohort
from sfg_keras.layers import TemperatureSchedule
from sfg_keras.models import TaskHead, sfg_highresnet, sfg_small_cnn

os.environ.setdefault("SFG_QUIET", "1")

REPO = Path(__file__).resolve().parents[1]
GROUPINGS = ("learned", "constant_p", "constant_mask", "hard_sharing", "single_task", "cross_stitch")
TAU_DECAY = 0.1
PATCH, PADDED = 32, 40


def small_dense_sfg_cnn(tasks, **kwargs):
    """A two-layer fully convolutional SFG network (`[NETWORK] name = test_mr_ct_app.small_dense_sfg_cnn`)."""
    kwargs.pop("width_multiplier", None)
    return sfg_small_cnn(tasks, widths=(8, 8), dense=True, **kwargs)


def _config_text(data: Path, model_dir: Path, network: str = "test_mr_ct_app.small_dense_sfg_cnn") -> str:
    return f"""
[SYSTEM]
model_dir = {model_dir}
seed = 3

[NETWORK]
name = {network}
width_multiplier = 0.25
batch_size = 4
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

[SFG]
tau_decay = {TAU_DECAY}

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


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pelvis") / "data"
    make_pelvis_cohort(folder, num_subjects=5, shape=(48, 48, 6), seed=1)
    return folder


@pytest.fixture(scope="module")
def trained(cohort, tmp_path_factory):
    config = _write_config(tmp_path_factory.mktemp("run"), cohort)
    app = _app(config)
    write_settings(app.settings)
    model = app.train()
    keras.backend.clear_session()
    return {"config": config, "model_dir": app.model_dir, "iterations": int(model.optimizer.iterations.numpy())}


@pytest.fixture(scope="module")
def inferred(trained):
    histogram = trained["model_dir"] / "histogram_ref_file.txt"
    before = _digest(histogram)
    app = _app(trained["config"], "inference")
    written = app.inference()
    keras.backend.clear_session()
    return {"written": written, "histogram_before": before, "histogram_after": _digest(histogram), "app": app}


# === Training ===


def test_train_writes_checkpoints_split_histogram_statistics_and_settings(trained, cohort):
    model_dir = trained["model_dir"]
    assert trained["iterations"] == 4
    assert sorted(p.name for p in (model_dir / "models").glob("model-*.keras")) == ["model-2.keras", "model-4.keras"]
    assert (model_dir / "settings_train.txt").is_file()
    assert (model_dir / "histogram_ref_file.txt").is_file()
    split = _split(model_dir)
    assert sorted(split) == [f"subj_{i:03d}" for i in range(5)]
    assert sorted(split.values()) == ["Inference", "Training", "Training", "Training", "Validation"]
    statistics = json.loads((model_dir / "training_statistics.json").read_text())
    training = sorted(s for s, phase in split.items() if phase == "Training")
    assert statistics["training_subjects"] == training
    ct = [nib.load(cohort / "CT" / f"{s}_ct.nii.gz").get_fdata() for s in training]
    assert statistics["ct_mean_hu"] == pytest.approx(np.mean(np.concatenate([c.ravel() for c in ct])), rel=1e-5)
    assert sum(statistics["organs_label_counts"]) == 3 * 48 * 48 * 6
    info = json.loads((model_dir / "model_info.json").read_text())
    assert info["input_shape"] == [PADDED, PADDED, 1]


def test_histogram_standardisation_is_learned_on_training_subjects_only(trained, cohort):
    model_dir = trained["model_dir"]
    split = _split(model_dir)
    training = sorted(s for s, phase in split.items() if phase == "Training")
    saved = HistogramStandardisation.load(model_dir / "histogram_ref_file.txt")
    volumes = [nib.load(cohort / "MR" / f"{s}_mr.nii.gz").get_fdata().astype(np.float32) for s in training]
    expected = HistogramStandardisation(cutoff=(0.01, 0.99), landmarks="percentile").fit(volumes)
    np.testing.assert_allclose(saved.reference_landmarks, expected.reference_landmarks, rtol=1e-9)
    everyone = [nib.load(cohort / "MR" / f"{s}_mr.nii.gz").get_fdata().astype(np.float32) for s in sorted(split)]
    all_subjects = HistogramStandardisation().fit(everyone)
    assert not np.allclose(saved.reference_landmarks, all_subjects.reference_landmarks)


def test_resume_continues_step_count_temperature_and_keeps_normalisation(trained, tmp_path):
    model_dir = tmp_path / "resumed"
    shutil.copytree(trained["model_dir"], model_dir)
    histogram = _digest(model_dir / "histogram_ref_file.txt")
    split = (model_dir / "dataset_split.csv").read_text()
    app = _app(trained["config"], overrides=[f"--model_dir={model_dir}", "--starting_iter=-1", "--max_iter=6"])
    model = app.train()
    assert int(model.optimizer.iterations.numpy()) == 6
    assert (model_dir / "models" / "model-6.keras").is_file()
    expected_tau = float(TemperatureSchedule(1.0, TAU_DECAY, 0.1)(5))
    assert float(model.sfg_layers[0].temperature.numpy()) == pytest.approx(expected_tau, rel=1e-5)
    reloaded = keras.models.load_model(model_dir / "models" / "model-6.keras")
    assert int(reloaded.optimizer.iterations.numpy()) == 6
    assert float(reloaded.sfg_layers[0].temperature.numpy()) == pytest.approx(expected_tau, rel=1e-5)
    assert _digest(model_dir / "histogram_ref_file.txt") == histogram
    assert (model_dir / "dataset_split.csv").read_text() == split


@pytest.mark.parametrize("flips", ["-1", "0,1"])
def test_training_and_validation_datasets_mask_padding_and_are_reproducible(trained, flips):
    app = _app(trained["config"], overrides=[f"--random_flipping_axes={flips}"])
    first = next(iter(app.training_dataset(seed=7)))
    again = next(iter(app.training_dataset(seed=7)))
    images, targets = first
    assert images.shape == (4, PADDED, PADDED, 1)
    assert targets["ct"].shape == (4, PADDED, PADDED, 1)
    assert targets["organs"].shape == (4, PADDED, PADDED)
    assert targets["organs"].dtype.name == "int32"
    ct, organs = targets["ct"].numpy(), targets["organs"].numpy()
    border = (PADDED - PATCH) // 2
    assert np.all(np.isnan(ct[:, :border])) and np.all(np.isnan(ct[:, :, -border:]))
    assert np.all(organs[:, :border] == -1) and np.all(organs[:, :, -border:] == -1)
    assert np.all(images.numpy()[:, :border] == 0.0)
    inside = organs[:, border:-border, border:-border]
    assert set(np.unique(inside)) <= {-1, 0, 1, 2, 3, 4} and np.mean(inside >= 0) > 0.8
    assert np.array_equal(np.isnan(ct[..., 0]), organs == -1)
    np.testing.assert_array_equal(images.numpy(), again[0].numpy())
    np.testing.assert_array_equal(organs, again[1]["organs"].numpy())
    validation_images, validation_targets = next(iter(app.validation_dataset()))
    assert validation_images.shape[1:] == (PADDED, PADDED, 1)
    assert validation_targets["organs"].shape[1:] == (PADDED, PADDED)
    assert np.all(validation_targets["organs"].numpy()[:, :border] == -1)


def test_training_fraction_subsamples_training_subjects(trained, tmp_path):
    model_dir = tmp_path / "fraction"
    model_dir.mkdir()
    shutil.copy(trained["model_dir"] / "dataset_split.csv", model_dir / "dataset_split.csv")
    app = _app(trained["config"], overrides=[f"--model_dir={model_dir}", "--training_fraction=0.5"])
    app.training_dataset(seed=0)
    statistics = json.loads((model_dir / "training_statistics.json").read_text())
    assert len(statistics["training_subjects"]) == 2
    training = {s for s, phase in _split(model_dir).items() if phase == "Training"}
    assert set(statistics["training_subjects"]) <= training


# === Inference and evaluation ===


def test_inference_writes_niftis_with_the_mr_geometry(inferred, trained, cohort):
    split = _split(trained["model_dir"])
    (subject,) = [s for s, phase in split.items() if phase == "Inference"]
    output = trained["model_dir"] / "output"
    mr = nib.load(cohort / "MR" / f"{subject}_mr.nii.gz")
    names = {
        key: output / f"{key}_{subject}_niftynet_out.nii.gz" for key in ("ct", "ct_std", "organs", "organs_entropy")
    }
    assert sorted(map(Path, inferred["written"])) == sorted([*names.values(), output / "inferred.csv"])
    volumes = {}
    for key, path in names.items():
        image = nib.load(path)
        assert image.shape == mr.shape
        np.testing.assert_allclose(image.affine, mr.affine, atol=1e-5)
        volumes[key] = np.asarray(image.dataobj)
    assert volumes["ct"].dtype == np.float32 and np.all(np.isfinite(volumes["ct"]))
    assert -4000 < volumes["ct"].min() and volumes["ct"].max() < 4000
    assert volumes["ct"].std() > 0
    assert volumes["organs"].dtype == np.uint8 and set(np.unique(volumes["organs"])) <= set(range(5))
    assert np.all(volumes["ct_std"] >= 0) and volumes["ct_std"].max() > 0
    assert np.all(volumes["organs_entropy"] >= 0) and np.all(volumes["organs_entropy"] <= math.log(5) + 1e-5)
    with open(output / "inferred.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows == [{"subject": subject, **{key: str(path) for key, path in names.items()}}]


def test_inference_uses_the_saved_histogram_model_unchanged(inferred, trained, cohort, tmp_path):
    assert inferred["histogram_before"] == inferred["histogram_after"]
    missing = tmp_path / "missing"
    missing.mkdir()
    app = _app(trained["config"], "inference", overrides=[f"--model_dir={missing}"])
    with pytest.raises(FileNotFoundError, match="histogram"):
        app.saved_standardiser()


def test_map_inference_of_all_subjects(trained, tmp_path):
    out = tmp_path / "map_out"
    app = _app(trained["config"], "inference", overrides=["--inference_mode=map", "--dataset_to_infer=all",
                                                           f"--save_seg_dir={out}"])
    written = app.inference()
    names = sorted(Path(p).name for p in written)
    assert len(names) == 5 * 3 + 1 and not any("ct_std" in name for name in names)
    labels = np.asarray(nib.load(out / "organs_subj_004_niftynet_out.nii.gz").dataobj)
    assert labels.shape == (48, 48, 6) and labels.max() <= 4


def test_expected_inference_writes_label_maps_without_std(trained, tmp_path):
    out = tmp_path / "expected_out"
    app = _app(trained["config"], "inference", overrides=["--inference_mode=expected", f"--save_seg_dir={out}"])
    written = app.inference()
    names = sorted(Path(p).name for p in written)
    assert names and not any("ct_std" in name for name in names) and "inferred.csv" in names
    label_maps = [out / n for n in names if n.startswith("organs_")]
    assert label_maps and np.asarray(nib.load(label_maps[0]).dataobj).max() <= 4


def test_evaluation_writes_one_row_per_subject_with_trivial_references(inferred, trained, cohort):
    app = _app(trained["config"], "evaluation")
    metrics_csv, summary_csv = app.evaluation()
    assert Path(metrics_csv).name == "mr_ct_metrics.csv" and Path(summary_csv).name == "mr_ct_metrics_summary.csv"
    with open(metrics_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    split = _split(trained["model_dir"])
    assert [row["subject"] for row in rows] == [s for s, phase in sorted(split.items()) if phase == "Inference"]
    row = rows[0]
    for key in ("psnr", "mae", "mae_bone", "dice_bone", "dice_rectum", "dice_mean", "reference_mean_ct_mae",
                "reference_background_dice_mean"):
        assert key in row and row[key] != ""
    statistics = json.loads((trained["model_dir"] / "training_statistics.json").read_text())
    ct = nib.load(cohort / "CT" / f"{row['subject']}_ct.nii.gz").get_fdata()
    assert float(row["reference_mean_ct_mae"]) == pytest.approx(np.mean(np.abs(ct - statistics["ct_mean_hu"])))
    assert float(row["reference_background_dice_mean"]) == 0.0
    synthetic = nib.load(trained["model_dir"] / "output" / f"ct_{row['subject']}_niftynet_out.nii.gz").get_fdata()
    assert float(row["mae"]) == pytest.approx(np.mean(np.abs(synthetic - ct)), rel=1e-4)
    with open(summary_csv, newline="") as handle:
        summary = list(csv.DictReader(handle))
    assert [r["statistic"] for r in summary] == ["mean", "std"]
    assert float(summary[0]["mae"]) == pytest.approx(float(row["mae"]))


def test_evaluation_without_inference_names_the_missing_file(trained, tmp_path):
    app = _app(trained["config"], "evaluation", overrides=[f"--save_seg_dir={tmp_path / 'nothing'}"])
    with pytest.raises(FileNotFoundError, match="inferred.csv"):
        app.evaluation()


# === Errors ===


def _copy_cohort(cohort: Path, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(cohort, data)
    return data


def test_subject_missing_its_ct_is_named(cohort, tmp_path):
    data = _copy_cohort(cohort, tmp_path)
    (data / "CT" / "subj_002_ct.nii.gz").unlink()
    app = _app(_write_config(tmp_path, data))
    with pytest.raises(ValueError, match=r"subj_002.*\[CT\]"):
        app.train()


@pytest.mark.parametrize("change", ["affine", "shape"])
def test_geometry_mismatch_is_named(cohort, tmp_path, change):
    data = _copy_cohort(cohort, tmp_path)
    path = data / "LABEL" / "subj_001_label.nii.gz"
    image = nib.load(path)
    labels = np.asarray(image.dataobj)
    if change == "affine":
        affine = image.affine.copy()
        affine[0, 3] += 5.0
        nib.save(nib.Nifti1Image(labels, affine), path)
    else:
        nib.save(nib.Nifti1Image(labels[:, :, :5], image.affine), path)
    app = _app(_write_config(tmp_path, data))
    with pytest.raises(ValueError, match=f"subj_001.*different {'affines' if change == 'affine' else 'shapes'}"):
        app.training_dataset(seed=0)


def test_missing_input_folder_is_named(cohort, tmp_path):
    app = _app(_write_config(tmp_path, tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"\[MR\]"):
        app.training_dataset(seed=0)


def test_label_values_outside_the_classes_are_named(cohort, tmp_path):
    data = _copy_cohort(cohort, tmp_path)
    path = data / "LABEL" / "subj_003_label.nii.gz"
    image = nib.load(path)
    labels = np.asarray(image.dataobj).copy()
    labels[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(labels, image.affine, image.header), path)
    app = _app(_write_config(tmp_path, data))
    with pytest.raises(ValueError, match=r"subj_003.*\[7\]"):
        app.training_dataset(seed=0)


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
    with pytest.raises(ConfigError, match=message):
        _app(config, overrides=overrides)


# === Model and configs ===


def test_highresnet_predicts_whole_slices_of_any_size():
    tasks = [TaskHead("ct", "regression", 1), TaskHead("organs", "segmentation", 5)]
    model = sfg_highresnet(tasks, width_multiplier=0.25, seed=0)
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
