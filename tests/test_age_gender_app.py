"""End-to-end tests of the age_gender application on tiny generated data (UTKFace-named faces, two-task MNIST)."""

import contextlib
import csv
import glob
import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from applications.age_gender import AgeGenderApplication
from sfg_keras.config import ConfigError, load_settings
from sfg_keras.data.generators import make_mnist_two_task_folder, make_utkface_folder, parse_utkface_name
from sfg_keras.inference import expected_predict, map_predict

REPO = Path(__file__).resolve().parents[1]
NUM_VALID, NUM_MALFORMED = 60, 3

BASE_SECTIONS = {
    "SYSTEM": {"model_dir": "run", "seed": 0},
    "NETWORK": {"name": "sfg_small_cnn", "width_multiplier": 0.5, "batch_size": 4},
    "TRAINING": {
        "max_iter": 6,
        "save_every_n": 3,
        "validation_every_n": 3,
        "tensorboard_every_n": -1,
        "rotation_angle": "()",
        "scaling_percentage": "()",
        "random_flipping_axes": 1,
    },
    "INFERENCE": {"num_samples": 3},
    "MULTITASK": {
        "image": "IMAGES",
        "tasks": "age, gender",
        "task_types": "regression, classification",
        "num_classes": "1, 2",
        "labels": "filename, filename",
    },
    "IMAGES": {"path_to_search": "faces", "spatial_window_size": "32, 32"},
}


def write_config(folder: Path, name: str = "config.ini", **changes) -> Path:
    """Writes BASE_SECTIONS updated with `changes` ({SECTION: {key: value}}; a None value removes the key)."""
    sections = {section: dict(values) for section, values in BASE_SECTIONS.items()}
    for section, values in changes.items():
        entries = sections.setdefault(section, {})
        for key, value in values.items():
            if value is None:
                entries.pop(key, None)
            else:
                entries[key] = value
    text = "".join(
        f"[{section}]\n" + "".join(f"{key} = {value}\n" for key, value in values.items()) + "\n"
        for section, values in sections.items()
    )
    path = folder / name
    path.write_text(text)
    return path


def make_app(config: Path, action: str = "train", overrides=()) -> AgeGenderApplication:
    settings = load_settings(config, list(overrides), action=action, extra_sections=AgeGenderApplication.APP_SECTIONS)
    return AgeGenderApplication(settings)


def run_quietly(function, *args, **kwargs):
    """Calls `function` and returns (result, captured stdout)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        result = function(*args, **kwargs)
    return result, buffer.getvalue()


def read_csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module", autouse=True)
def quiet_keras():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SFG_QUIET", "1")
        yield


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("age_gender")
    make_utkface_folder(root / "faces", num_images=NUM_VALID, size=32, seed=3, num_malformed=NUM_MALFORMED)
    return root


@pytest.fixture(scope="module")
def trained(faces):
    config = write_config(faces)
    app = make_app(config)
    _, output = run_quietly(app.train)
    return {"config": config, "model_dir": faces / "run", "output": output}


@pytest.fixture(scope="module")
def inferred(trained):
    app = make_app(trained["config"], "inference")
    written, output = run_quietly(app.inference)
    return {"path": written[0], "output": output}


def decode_like_tf(path: str) -> np.ndarray:
    return tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False).numpy().astype(np.float64)


def test_training_writes_checkpoints_split_and_training_statistics(faces, trained):
    model_dir = trained["model_dir"]
    assert (model_dir / "models" / "model-6.keras").is_file()
    assert trained["output"].count(f"skipped {NUM_MALFORMED} files whose names do not follow") == 1

    with open(model_dir / "dataset_split.csv", newline="") as handle:
        split = dict(csv.reader(handle))
    valid = {Path(p).name for p in glob.glob(str(faces / "faces" / "*")) if parse_utkface_name(p) is not None}
    assert len(valid) == NUM_VALID
    assert set(split) == valid
    counts = {phase: list(split.values()).count(phase) for phase in ("Training", "Validation", "Inference")}
    assert counts == {"Training": 42, "Validation": 9, "Inference": 9}

    statistics = json.loads((model_dir / "image_statistics.json").read_text())
    assert statistics["num_images"] == 42 and statistics["channels"] == 3 and statistics["image_size"] == [32, 32]
    training = np.stack([decode_like_tf(str(faces / "faces" / s)) for s, p in split.items() if p == "Training"])
    everything = np.stack([decode_like_tf(str(faces / "faces" / s)) for s in split])
    np.testing.assert_allclose(statistics["mean"], training.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(statistics["std"], training.std(axis=(0, 1, 2)), rtol=1e-5)
    # Computed over the training images only, not over every image.
    assert np.abs(np.asarray(statistics["mean"]) - everything.mean(axis=(0, 1, 2))).max() > 1e-3


def test_mc_inference_writes_one_row_per_inference_image(trained, inferred):
    path = inferred["path"]
    assert path == trained["model_dir"] / "output" / "inferred.csv"
    with open(path, newline="") as handle:
        header = next(csv.reader(handle))
    assert header == [
        "subject", "age_mean", "age_std", "gender_mode", "gender_prob_0", "gender_prob_1", "gender_entropy"
    ]
    rows = read_csv_rows(path)
    with open(trained["model_dir"] / "dataset_split.csv", newline="") as handle:
        inference = sorted(s for s, phase in csv.reader(handle) if phase == "Inference")
    assert [row["subject"] for row in rows] == inference
    for row in rows:
        assert float(row["age_std"]) >= 0
        assert row["gender_mode"] in ("0", "1")
        assert float(row["gender_prob_0"]) + float(row["gender_prob_1"]) == pytest.approx(1.0, abs=1e-4)
        assert 0.0 <= float(row["gender_entropy"]) <= math.log(2) + 1e-6


def test_map_inference_reports_age_in_years(trained):
    app = make_app(trained["config"], "inference", ["--inference_mode=map", "--save_seg_dir=output_map"])
    model, _ = app.load_checkpoint()
    (path,), _ = run_quietly(app.infer, model)
    rows = read_csv_rows(path)
    images = app.image_set().select(app.inference_subjects())
    raw = map_predict(model, app.prediction_batches(images.paths, int(app.settings.inference.batch_size)))
    ages = np.array([float(row["age_mean"]) for row in rows])
    np.testing.assert_allclose(ages, 100.0 * raw["age"]["prediction"].reshape(-1), rtol=1e-4, atol=1e-3)
    assert [int(row["gender_mode"]) for row in rows] == raw["gender"]["label"].tolist()
    assert all(float(row["age_std"]) == 0.0 for row in rows)


def test_expected_inference_matches_expected_predict(trained):
    app = make_app(trained["config"], "inference", ["--inference_mode=expected", "--save_seg_dir=output_expected"])
    model, _ = app.load_checkpoint()
    (path,), _ = run_quietly(app.infer, model)
    rows = read_csv_rows(path)
    images = app.image_set().select(app.inference_subjects())
    raw = expected_predict(model, app.prediction_batches(images.paths, int(app.settings.inference.batch_size)))
    ages = np.array([float(row["age_mean"]) for row in rows])
    np.testing.assert_allclose(ages, 100.0 * raw["age"]["prediction"].reshape(-1), rtol=1e-4, atol=1e-3)
    assert all(float(row["age_std"]) == 0.0 for row in rows)


def test_evaluation_writes_per_image_metrics_and_summary(trained, inferred):
    app = make_app(trained["config"], "evaluation")
    written, output = run_quietly(app.evaluation)
    metrics_path = trained["model_dir"] / "evaluation" / "age_gender_metrics.csv"
    summary_path = trained["model_dir"] / "evaluation" / "age_gender_metrics_summary.csv"
    assert written == [metrics_path, summary_path]
    inferred_rows = {row["subject"]: row for row in read_csv_rows(inferred["path"])}
    rows = read_csv_rows(metrics_path)
    assert sorted(row["subject"] for row in rows) == sorted(inferred_rows)

    with open(trained["model_dir"] / "dataset_split.csv", newline="") as handle:
        training = [s for s, phase in csv.reader(handle) if phase == "Training"]
    training_mean_age = np.mean([parse_utkface_name(s)[0] for s in training])
    errors = []
    for row in rows:
        age, gender, _ = parse_utkface_name(row["subject"])
        predicted = float(inferred_rows[row["subject"]]["age_mean"])
        assert float(row["age_true"]) == age
        assert float(row["age_abs_error"]) == pytest.approx(abs(predicted - age), abs=1e-3)
        assert float(row["age_baseline_abs_error"]) == pytest.approx(abs(training_mean_age - age), abs=1e-6)
        correct = int(inferred_rows[row["subject"]]["gender_mode"]) == gender
        assert float(row["gender_correct"]) == float(correct)
        errors.append(abs(predicted - age))
    summary = {row["statistic"]: row for row in read_csv_rows(summary_path)}
    assert float(summary["mean"]["age_abs_error"]) == pytest.approx(np.mean(errors), abs=1e-3)
    assert f"age: MAE {np.mean(errors):.3f} years over 9 images" in output
    assert "gender: accuracy" in output


def test_small_data_keeps_ceil_of_a_tenth_of_the_training_split(faces):
    config = write_config(
        faces, "small.ini", SYSTEM={"model_dir": "run_small"}, TRAINING={"training_fraction": 0.1}
    )
    app = make_app(config)
    dataset, output = run_quietly(app.training_dataset, 0)
    training_split = app.subjects_of("Training")
    kept = app.training_subjects()
    assert len(training_split) == 42
    assert len(kept) == math.ceil(0.1 * 42) == 5 and set(kept) <= set(training_split)
    assert "Training images: 5 of 42" in output
    statistics = json.loads((faces / "run_small" / "image_statistics.json").read_text())
    assert statistics["num_images"] == 5

    allowed = {(parse_utkface_name(s)[0], parse_utkface_name(s)[1]) for s in kept}
    seen = set()
    for images, targets in dataset.take(5):
        assert images.shape == (4, 32, 32, 3) and images.dtype == tf.float32
        assert targets["age"].shape == (4, 1) and targets["gender"].dtype == tf.int32
        ages = np.round(targets["age"].numpy().reshape(-1) * 100).astype(int)
        seen |= set(zip(ages.tolist(), targets["gender"].numpy().tolist()))
    assert seen <= allowed


def test_csv_labelled_mnist_set_trains_and_infers(tmp_path):
    folder = make_mnist_two_task_folder(tmp_path / "mnist", num_images=100)
    rows = read_csv_rows(folder / "labels.csv")
    rows[0]["thickness"] = ""  # missing regression label -> NaN
    rows[1]["digit"] = ""  # missing class label -> -1
    with open(folder / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    config = write_config(
        tmp_path,
        NETWORK={"batch_size": 8},
        TRAINING={"max_iter": 4, "validation_every_n": 2, "random_flipping_axes": -1},
        INFERENCE={"inference_mode": "map"},
        MULTITASK={
            "tasks": "digit, thickness",
            "task_types": "classification, regression",
            "num_classes": "10, 1",
            "labels": "csv:digit, csv:thickness",
        },
        IMAGES={"path_to_search": "mnist", "csv_data_file": "mnist/labels.csv", "spatial_window_size": "28, 28"},
        AGE_GENDER={"channels": 1},
    )
    app = make_app(config)
    images = app.image_set()
    assert len(images.subjects) == 100 and images.subjects[0] == "00000.png"
    assert np.isnan(images.labels["thickness"][0]) and images.labels["digit"][1] == -1
    assert images.labels["digit"][2] == int(rows[2]["digit"])
    assert images.labels["thickness"][2] == pytest.approx(float(rows[2]["thickness"]))
    assert app.target_scale(app.tasks[1]) == 1.0 and app.input_shape() == (28, 28, 1)
    run_quietly(app.train)

    app = make_app(config, "inference")
    (path,), _ = run_quietly(app.inference)
    inferred = read_csv_rows(path)
    assert len(inferred) == 15
    assert list(inferred[0]) == [
        "subject", "digit_mode", *[f"digit_prob_{c}" for c in range(10)], "digit_entropy",
        "thickness_mean", "thickness_std",
    ]
    assert all(0 <= int(row["digit_mode"]) <= 9 for row in inferred)
    written, output = run_quietly(make_app(config, "evaluation").evaluation)
    assert len(read_csv_rows(written[0])) == 15 and "digit: accuracy" in output and "thickness: MAE" in output


def test_filename_labels_for_another_task_name_is_a_config_error(faces):
    config = write_config(faces, "smile.ini", MULTITASK={"tasks": "age, smile"})
    with pytest.raises(ConfigError, match=r"\[MULTITASK\] labels.*task 'smile'"):
        make_app(config)


def test_csv_labels_need_a_csv_data_file(faces):
    config = write_config(faces, "nocsv.ini", MULTITASK={"labels": "filename, csv:gender"})
    with pytest.raises(ConfigError, match=r"\[IMAGES\] csv_data_file is not set"):
        make_app(config)


def test_missing_and_empty_folders_and_invalid_names_are_reported(tmp_path):
    config = write_config(tmp_path, IMAGES={"path_to_search": "absent"})
    with pytest.raises(FileNotFoundError, match=r"\[IMAGES\] path_to_search folder .*absent"):
        make_app(config).image_set()

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    config = write_config(tmp_path, IMAGES={"path_to_search": "empty"})
    with pytest.raises(ValueError, match=r"IMAGES"):
        make_app(config).image_set()

    (tmp_path / "bad").mkdir()
    pixels = tf.zeros([8, 8, 3], tf.uint8)
    for name in ("39_1_20170116174525125.jpg", "face.png"):
        (tmp_path / "bad" / name).write_bytes(tf.io.encode_png(pixels).numpy())
    config = write_config(tmp_path, IMAGES={"path_to_search": "bad"})
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), pytest.raises(ValueError, match=r"\[IMAGES\].*no valid images"):
        make_app(config).image_set()
    assert "skipped 2 files" in buffer.getvalue()


def test_csv_errors_name_the_file_the_column_and_the_image(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    pixels = tf.io.encode_png(tf.zeros([8, 8, 1], tf.uint8)).numpy()
    for name in ("a.png", "b.png"):
        (folder / name).write_bytes(pixels)
    labels = tmp_path / "labels.csv"
    changes = {
        "MULTITASK": {"tasks": "kind", "task_types": "classification", "num_classes": "2", "labels": "csv:kind"},
        "IMAGES": {"path_to_search": "images", "csv_data_file": "labels.csv", "spatial_window_size": "8, 8"},
        "SFG": {"grouping": "hard_sharing"},
    }
    config = write_config(tmp_path, **changes)

    labels.write_text("filename,other\na.png,1\nb.png,0\n")
    with pytest.raises(ValueError, match=r"labels\.csv \(\[IMAGES\] csv_data_file\): no column 'kind'"):
        make_app(config).image_set()

    labels.write_text("filename,kind\na.png,1\n")
    with pytest.raises(ValueError, match=r"b\.png' has no row in .*labels\.csv"):
        make_app(config).image_set()

    labels.write_text("filename,kind\na.png,1\nb.png,7\n")
    with pytest.raises(ValueError, match=r"line 3, column 'kind'.*not below \[MULTITASK\] num_classes = 2"):
        make_app(config).image_set()

    labels.write_text("filename,kind\nimages/a.png,1\nb.png,\n")
    images = make_app(config).image_set()
    assert images.subjects == ["a.png", "b.png"] and images.labels["kind"].tolist() == [1, -1]

    # Without path_to_search the images are the CSV's entries, relative to the CSV's folder.
    csv_only = write_config(
        tmp_path, "csv_only.ini", **{**changes, "IMAGES": {**changes["IMAGES"], "path_to_search": None}}
    )
    with pytest.raises(FileNotFoundError, match=r"image 'b\.png' does not exist"):
        make_app(csv_only).image_set()
    labels.write_text("filename,kind\nimages/a.png,1\nimages/b.png,0\n")
    images = make_app(csv_only).image_set()
    assert images.paths == [str(folder / "a.png"), str(folder / "b.png")]
    assert images.labels["kind"].tolist() == [1, 0]


@pytest.mark.parametrize(
    "name",
    sorted(Path(p).name for p in glob.glob(str(REPO / "configs" / "*age_gender*.ini")))
    + ["demo_mnist.ini"],
)
def test_shipped_configs_load(name):
    app = make_app(REPO / "configs" / name)
    assert app.settings.multitask.image in app.settings.inputs
    folder = app.image_section.path_to_search[0]
    if name.startswith("demo_"):
        assert folder == os.path.join(str(REPO), "demo_data", "mnist" if "mnist" in name else "utkface")
        assert app.settings.system.model_dir.startswith(os.path.join(str(REPO), "demo_run"))
    else:
        assert folder == os.path.join(str(REPO), "data", "UTKFace")
        assert app.input_shape() == (200, 200, 3)
        assert app.settings.training.training_fraction == (0.1 if "small_data" in name else 1.0)
        assert app.settings.sfg.grouping in name
