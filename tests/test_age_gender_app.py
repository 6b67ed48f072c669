"""Tests of the age_gender application on tiny generated data (UTKFace-named faces, two-task MNIST).

The hook tests call `AgeGenderApplication`'s hooks directly (`prepare`, the datasets, `inference_inputs`,
`write_outputs` / `finish_inference` with hand-made predictions, `evaluate`). The tests marked `END TO END (engine)`
go through `sfg_run` in a subprocess and need the engine (`sfg_keras.engine.Driver`).
"""

import contextlib
import csv
import glob
import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import sfg_keras_applications.age_gender as age_gender
from sfg_keras.config import ConfigError, load_settings
from sfg_keras.data.generators import make_mnist_two_task_folder, make_utkface_folder, parse_utkface_name
from sfg_keras_applications.age_gender import AgeGenderApplication

REPO = Path(__file__).resolve().parents[1]
SFG_RUN = str(Path(sys.executable).with_name("sfg_run"))
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

#: Marks the tests that run `sfg_run` end to end: they need the engine (`sfg_keras/engine/driver.py`).
END_TO_END = pytest.mark.skipif(
    not (REPO / "sfg_keras" / "engine" / "driver.py").is_file(), reason="END TO END (engine): needs the engine"
)


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


def read_split(model_dir: Path) -> dict[str, str]:
    with open(model_dir / "dataset_split.csv", newline="") as handle:
        return dict(csv.reader(handle))


def decode_like_tf(path: str) -> np.ndarray:
    return tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False).numpy().astype(np.float64)


def batches(dataset, count: int) -> list:
    """The first `count` batches of `dataset` as numpy `(images, {task: targets})`."""
    return [(images.numpy(), {k: v.numpy() for k, v in targets.items()}) for images, targets in dataset.take(count)]


def hand_made_predictions(app: AgeGenderApplication, subjects: list[str], deterministic: bool = False) -> dict:
    """Predictions in the unified schema: age = true age + 5 years (network unit /100), gender = the true gender
    except for the first image, with a confidence of 0.8."""
    ages = np.array([parse_utkface_name(s)[0] for s in subjects], np.float32)
    genders = np.array([parse_utkface_name(s)[1] for s in subjects], np.int64)
    labels = genders.copy()
    labels[0] = 1 - labels[0]
    probabilities = np.where(np.eye(2)[labels] > 0, 0.8, 0.2).astype(np.float32)
    entropy = -(probabilities * np.log(probabilities)).sum(axis=-1)
    age = {"mean": ((ages + 5.0) / 100.0)[:, None]}
    age["std"] = np.zeros_like(age["mean"]) if deterministic else np.full_like(age["mean"], 0.02)
    return {"age": age, "gender": {"probabilities": probabilities, "label": labels, "entropy": entropy}}


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
def prepared(faces):
    """`prepare(fit=True)` on the faces, as the engine calls it when training from scratch."""
    config = write_config(faces)
    app = make_app(config)
    _, output = run_quietly(app.prepare, fit=True)
    return {"config": config, "model_dir": faces / "run", "output": output, "app": app}


# === prepare ===


def test_prepare_writes_the_split_and_training_statistics_atomically(faces, prepared):
    model_dir = prepared["model_dir"]
    written = sorted(p.name for p in model_dir.iterdir())
    assert written == [".input_scans.json", "dataset_split.csv", "image_statistics.json"]
    assert prepared["output"].count(f"skipped {NUM_MALFORMED} files whose names do not follow") == 1

    split = read_split(model_dir)
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


def test_prepare_fit_replaces_statistics_through_an_atomic_write(faces, monkeypatch):
    config = write_config(faces, "refit.ini", SYSTEM={"model_dir": "run_refit"})
    path = faces / "run_refit" / "image_statistics.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"mean": [0.0], "std": [1.0], "image_size": [8, 8], "channels": 1}))
    with pytest.raises(ValueError, match=r"image_statistics\.json holds statistics of 1-channel images"):
        run_quietly(make_app(config, "inference").prepare, fit=False)

    writes = []

    def recording_write(target, value):
        writes.append(Path(target))
        return atomic_write_json(target, value)

    atomic_write_json = age_gender.atomic_write_json
    monkeypatch.setattr(age_gender, "atomic_write_json", recording_write)
    run_quietly(make_app(config).prepare, fit=True)
    assert writes == [path]
    assert json.loads(path.read_text())["image_size"] == [32, 32]
    written = sorted(p.name for p in path.parent.iterdir())
    assert written == [".input_scans.json", "dataset_split.csv", "image_statistics.json"]

    app = make_app(config, "inference")
    run_quietly(app.prepare, fit=False)
    assert app.image_statistics == json.loads(path.read_text())


def test_prepare_without_statistics_names_the_file_and_the_train_command(faces):
    config = write_config(faces, "nostats.ini", SYSTEM={"model_dir": "run_nostats"})
    with pytest.raises(FileNotFoundError, match=r"run_nostats/image_statistics\.json not found.*sfg_run train -c"):
        run_quietly(make_app(config, "inference").prepare, fit=False)


def test_prepare_writes_nothing_when_a_check_fails(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    pixels = tf.io.encode_png(tf.zeros([8, 8, 1], tf.uint8)).numpy()
    for name in ("a.png", "b.png", "c.png"):
        (folder / name).write_bytes(pixels)
    (tmp_path / "labels.csv").write_text("filename,kind\na.png,1\nb.png,0\nc.png,7\n")
    config = write_config(
        tmp_path,
        MULTITASK={"tasks": "kind", "task_types": "classification", "num_classes": "2", "labels": "csv:kind"},
        IMAGES={"path_to_search": "images", "csv_data_file": "labels.csv", "spatial_window_size": "8, 8"},
        SFG={"grouping": "hard_sharing"},
    )
    app = make_app(config)
    with pytest.raises(ValueError, match=r"line 4, column 'kind'"):
        run_quietly(app.prepare, fit=True)
    assert not (tmp_path / "run").exists()
    with pytest.raises(RuntimeError, match=r"call prepare"):
        app.training_dataset(0)


# === datasets ===


def test_training_dataset_resumed_at_batch_k_equals_batches_k_on(faces, prepared):
    # 42 training images in batches of 4: epochs end inside batches 10 and 21.
    config = write_config(
        faces, "augmented.ini",
        TRAINING={"rotation_angle": "-10, 10", "scaling_percentage": "-10, 10", "random_flipping_axes": "0, 1"},
    )
    app = make_app(config)
    run_quietly(app.prepare, fit=False)
    dataset, output = run_quietly(app.training_dataset, 0)
    assert "Training images: 42 of 42" in output and "batch size 4" in output
    straight = batches(dataset, 14)
    for images, targets in straight:
        assert images.shape == (4, 32, 32, 3) and images.dtype == np.float32
        assert targets["age"].shape == (4, 1) and targets["age"].dtype == np.float32
        assert targets["gender"].shape == (4,) and targets["gender"].dtype == np.int32
    for first_batch in (3, 10, 11):
        resumed, _ = run_quietly(app.training_dataset, first_batch)
        for (images, targets), (expected_images, expected_targets) in zip(
            batches(resumed, 14 - first_batch), straight[first_batch:]
        ):
            np.testing.assert_array_equal(images, expected_images)
            for task in ("age", "gender"):
                np.testing.assert_array_equal(targets[task], expected_targets[task])

    # Every epoch visits every training image once, in a new order; augmentation differs between epochs.
    ages = np.concatenate([t["age"].reshape(-1) for _, t in straight])
    training = [s for s, p in read_split(prepared["model_dir"]).items() if p == "Training"]
    expected = sorted(parse_utkface_name(s)[0] / 100.0 for s in training)
    np.testing.assert_allclose(sorted(ages[:42]), expected, rtol=1e-6)
    assert not np.array_equal(ages[:14], ages[42:56])

    other_seed = make_app(config, overrides=["--seed=1"])
    run_quietly(other_seed.prepare, fit=False)
    ((first, _),) = batches(run_quietly(other_seed.training_dataset, 0)[0], 1)
    assert not np.array_equal(first, straight[0][0])


def test_small_data_keeps_ceil_of_a_tenth_of_the_training_split(faces):
    config = write_config(
        faces, "small.ini", SYSTEM={"model_dir": "run_small"}, TRAINING={"training_fraction": 0.1}
    )
    app = make_app(config)
    run_quietly(app.prepare, fit=True)
    dataset, output = run_quietly(app.training_dataset, 0)
    split = read_split(faces / "run_small")
    training_split = app.subjects_of(split, "Training")
    kept = app.training_subjects(split)
    assert len(training_split) == 42
    assert len(kept) == math.ceil(0.1 * 42) == 5 and set(kept) <= set(training_split)
    assert "Training images: 5 of 42" in output
    statistics = json.loads((faces / "run_small" / "image_statistics.json").read_text())
    assert statistics["num_images"] == 5

    allowed = {(parse_utkface_name(s)[0], parse_utkface_name(s)[1]) for s in kept}
    seen = set()
    for _, targets in batches(dataset, 5):
        ages = np.round(targets["age"].reshape(-1) * 100).astype(int)
        seen |= set(zip(ages.tolist(), targets["gender"].tolist()))
    assert seen <= allowed


def test_validation_dataset_is_fixed_and_repeated(faces, prepared):
    app = make_app(prepared["config"])
    run_quietly(app.prepare, fit=False)
    first, second = batches(app.validation_dataset(), 4)[:2], batches(app.validation_dataset(), 4)[:2]
    for (images, targets), (again, again_targets) in zip(first, second):
        np.testing.assert_array_equal(images, again)
        np.testing.assert_array_equal(targets["age"], again_targets["age"])
    validation = sorted(s for s, p in read_split(prepared["model_dir"]).items() if p == "Validation")
    ages = np.concatenate([t["age"].reshape(-1) for _, t in batches(app.validation_dataset(), 2)])
    np.testing.assert_allclose(ages, [parse_utkface_name(s)[0] / 100 for s in validation[:8]], rtol=1e-6)

    no_validation = write_config(
        faces, "noval.ini", SYSTEM={"model_dir": "run_noval"}, TRAINING={"exclude_fraction_for_validation": 0}
    )
    app = make_app(no_validation)
    run_quietly(app.prepare, fit=True)
    assert app.validation_dataset() is None


# === inference and evaluation ===


def test_inference_inputs_are_balanced_standardised_batches(faces, prepared):
    app = make_app(prepared["config"], "inference", ["--INFERENCE.batch_size=4", "--dataset_to_infer=inference"])
    run_quietly(app.prepare, fit=False)
    (item,), output = run_quietly(lambda: list(app.inference_inputs()))
    inference = sorted(s for s, p in read_split(prepared["model_dir"]).items() if p == "Inference")
    assert item.context == inference and "Predicting 9 images (mc)" in output
    sizes = [int(batch.shape[0]) for batch in item.inputs]
    assert sizes == [3, 3, 3]
    images = np.concatenate([batch.numpy() for batch in item.inputs])
    statistics = app.image_statistics
    expected = (decode_like_tf(str(faces / "faces" / inference[0])) - statistics["mean"]) / statistics["std"]
    np.testing.assert_allclose(images[0], expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("deterministic", [False, True], ids=["mc", "map"])
def test_write_outputs_and_finish_inference_write_inferred_csv(prepared, tmp_path, deterministic):
    app = make_app(prepared["config"], "inference", [f"--save_seg_dir={tmp_path / 'output'}",
                                                     "--dataset_to_infer=inference"])
    run_quietly(app.prepare, fit=False)
    (item,), _ = run_quietly(lambda: list(app.inference_inputs()))
    predictions = hand_made_predictions(app, item.context, deterministic)
    if deterministic:
        del predictions["age"]["std"]  # a deterministic mode may leave std out: written as 0
    assert app.write_outputs(item, predictions) == []
    assert not (tmp_path / "output").exists()
    (path,) = app.finish_inference([])
    assert path == tmp_path / "output" / "inferred.csv"
    assert sorted(p.name for p in path.parent.iterdir()) == ["inferred.csv"]
    with open(path, newline="") as handle:
        header = next(csv.reader(handle))
    assert header == [
        "subject", "age_mean", "age_std", "gender_label", "gender_prob_0", "gender_prob_1", "gender_entropy",
        "phase", "trained_on", "input_sha256",  # the provenance of each prediction
    ]
    assert path.read_bytes().count(b"\r\n") == len(item.context) + 1  # csv.writer's line ends, as before
    rows = read_csv_rows(path)
    assert [row["subject"] for row in rows] == item.context
    for index, row in enumerate(rows):
        age, gender, _ = parse_utkface_name(row["subject"])
        assert float(row["age_mean"]) == pytest.approx(age + 5.0, abs=1e-3)
        assert float(row["age_std"]) == (0.0 if deterministic else pytest.approx(2.0, abs=1e-4))
        assert int(row["gender_label"]) == (1 - gender if index == 0 else gender)
        assert float(row[f"gender_prob_{row['gender_label']}"]) == pytest.approx(0.8)
        assert float(row["gender_entropy"]) == pytest.approx(-(0.8 * math.log(0.8) + 0.2 * math.log(0.2)), abs=1e-5)

    with pytest.raises(ValueError, match=r"task 'gender'.*one row per image"):
        app.write_outputs(item, {**predictions, "gender": {"probabilities": np.ones((2, 2))}})
    with pytest.raises(ValueError, match=r"task 'age'.*received tasks \['gender'\]"):
        app.write_outputs(item, {"gender": predictions["gender"]})


def test_evaluate_compares_inferred_csv_with_labels_and_baselines(prepared, tmp_path):
    overrides = [f"--save_seg_dir={tmp_path / 'output'}", f"--save_csv_dir={tmp_path / 'evaluation'}",
                 "--dataset_to_infer=inference"]
    app = make_app(prepared["config"], "inference", overrides)
    run_quietly(app.prepare, fit=False)
    (item,), _ = run_quietly(lambda: list(app.inference_inputs()))
    app.write_outputs(item, hand_made_predictions(app, item.context))
    (inferred,) = app.finish_inference([])

    app = make_app(prepared["config"], "evaluation", overrides)
    written, output = run_quietly(app.evaluate)
    metrics_path = tmp_path / "evaluation" / "age_gender_metrics.csv"
    summary_path = tmp_path / "evaluation" / "age_gender_metrics_summary.csv"
    assert written == [metrics_path, summary_path]
    rows = read_csv_rows(metrics_path)
    assert [row["subject"] for row in rows] == item.context

    training = [s for s, phase in read_split(prepared["model_dir"]).items() if phase == "Training"]
    training_mean_age = np.mean([parse_utkface_name(s)[0] for s in training])
    for index, row in enumerate(rows):
        age, gender, _ = parse_utkface_name(row["subject"])
        assert float(row["age_true"]) == age
        assert float(row["age_abs_error"]) == pytest.approx(5.0, abs=1e-3)
        assert float(row["age_baseline_abs_error"]) == pytest.approx(abs(training_mean_age - age), abs=1e-6)
        assert float(row["gender_correct"]) == float(index != 0)
    summary = {row["statistic"]: row for row in read_csv_rows(summary_path)}
    assert float(summary["mean"]["age_abs_error"]) == pytest.approx(5.0, abs=1e-3)
    assert "age: MAE 5.000 years over 9 images" in output
    assert f"gender: accuracy {8 / 9:.3f} over 9 images" in output

    # A table of an older version names the label column gender_mode: evaluation reads it as gender_label.
    table = inferred.read_text()
    assert table.count("gender_label") == 1
    inferred.write_text(table.replace("gender_label", "gender_mode"))
    before = metrics_path.read_bytes()
    metrics_path.unlink()
    written, again = run_quietly(app.evaluate)
    assert written == [metrics_path, summary_path]
    assert metrics_path.read_bytes() == before
    assert f"gender: accuracy {8 / 9:.3f} over 9 images" in again

    inferred.unlink()
    with pytest.raises(FileNotFoundError, match=r"inferred\.csv not found.*sfg_run inference -c"):
        app.evaluate()


def test_csv_labelled_mnist_set_hooks(tmp_path):
    folder = make_mnist_two_task_folder(tmp_path / "mnist", num_images=100)
    rows = read_csv_rows(folder / "labels.csv")
    rows[0]["thickness"] = ""  # missing regression label -> NaN
    rows[1]["digit"] = ""  # missing class label -> -1
    with open(folder / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    config = write_config(tmp_path, **mnist_changes())
    app = make_app(config)
    images = app.image_set()
    assert len(images.subjects) == 100 and images.subjects[0] == "00000.png"
    assert np.isnan(images.labels["thickness"][0]) and images.labels["digit"][1] == -1
    assert images.labels["digit"][2] == int(rows[2]["digit"])
    assert images.labels["thickness"][2] == pytest.approx(float(rows[2]["thickness"]))
    assert app.target_scale(app.tasks[1]) == 1.0 and app.input_shape() == (28, 28, 1)
    run_quietly(app.prepare, fit=True)
    ((batch, targets),) = batches(run_quietly(app.training_dataset, 0)[0], 1)
    assert batch.shape == (8, 28, 28, 1) and targets["thickness"].shape == (8, 1)

    app = make_app(config, "inference")
    run_quietly(app.prepare, fit=False)
    (item,), _ = run_quietly(lambda: list(app.inference_inputs()))
    count = len(item.context)
    probabilities = np.full((count, 10), 0.1, np.float32)
    app.write_outputs(item, {
        "digit": {"probabilities": probabilities, "label": np.zeros(count, np.int64), "entropy": np.zeros(count)},
        "thickness": {"mean": np.full((count, 1), 2.5), "std": np.zeros((count, 1))},
    })
    (path,) = app.finish_inference([])
    inferred = read_csv_rows(path)
    assert len(inferred) == count == 15
    assert list(inferred[0]) == [
        "subject", "digit_label", *[f"digit_prob_{c}" for c in range(10)], "digit_entropy",
        "thickness_mean", "thickness_std", "phase", "trained_on", "input_sha256",
    ]
    assert inferred[0]["thickness_mean"] == "2.5" and inferred[0]["digit_prob_3"] == "0.1"
    written, output = run_quietly(make_app(config, "evaluation").evaluate)
    assert len(read_csv_rows(written[0])) == 15 and "digit: accuracy" in output and "thickness: MAE" in output


def mnist_changes() -> dict:
    return {
        "NETWORK": {"batch_size": 8},
        "TRAINING": {"max_iter": 4, "validation_every_n": 2, "random_flipping_axes": -1},
        "INFERENCE": {"inference_mode": "map"},
        "MULTITASK": {
            "tasks": "digit, thickness",
            "task_types": "classification, regression",
            "num_classes": "10, 1",
            "labels": "csv:digit, csv:thickness",
        },
        "IMAGES": {"path_to_search": "mnist", "csv_data_file": "mnist/labels.csv", "spatial_window_size": "28, 28"},
        "AGE_GENDER": {"channels": 1},
    }


# === settings and inputs ===


def test_filename_labels_for_another_task_name_is_a_config_error(faces):
    config = write_config(faces, "smile.ini", MULTITASK={"tasks": "age, smile"})
    with pytest.raises(ConfigError, match=r"smile\.ini: \[MULTITASK\] labels = 'filename': task 'smile'"):
        make_app(config)


def test_csv_labels_need_a_csv_data_file(faces):
    config = write_config(faces, "nocsv.ini", MULTITASK={"labels": "filename, csv:gender"})
    with pytest.raises(ConfigError, match=r"\[MULTITASK\] labels = 'csv:gender'.*\[IMAGES\] csv_data_file is not set"):
        make_app(config)


def test_asymmetric_augmentation_range_is_a_config_error(faces):
    config = write_config(faces, "asymmetric.ini", TRAINING={"rotation_angle": "-5, 10"})
    with pytest.raises(ConfigError, match=r"\[TRAINING\] rotation_angle = \(-5\.0, 10\.0\): .*symmetric"):
        make_app(config)


def test_missing_and_empty_folders_and_invalid_names_are_reported(tmp_path):
    config = write_config(tmp_path, IMAGES={"path_to_search": "absent"})
    with pytest.raises(FileNotFoundError, match=r"\[IMAGES\] path_to_search folder .*absent"):
        make_app(config).prepare(fit=True)

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    config = write_config(tmp_path, IMAGES={"path_to_search": "empty"})
    with pytest.raises(ValueError, match=r"IMAGES"):
        make_app(config).prepare(fit=True)

    (tmp_path / "bad").mkdir()
    pixels = tf.zeros([8, 8, 3], tf.uint8)
    for name in ("39_1_20170116174525125.jpg", "face.png"):
        (tmp_path / "bad" / name).write_bytes(tf.io.encode_png(pixels).numpy())
    config = write_config(tmp_path, IMAGES={"path_to_search": "bad"})
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), pytest.raises(ValueError, match=r"\[IMAGES\].*no valid images"):
        make_app(config).prepare(fit=True)
    assert "skipped 2 files" in buffer.getvalue()
    assert not (tmp_path / "run").exists()


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
    assert app.image_section == app.settings.multitask.image and app.image_section in app.settings.inputs
    folder = app.image_settings.path_to_search[0]
    if name.startswith("demo_"):
        assert folder == os.path.join(str(REPO), "demo_data", "mnist" if "mnist" in name else "utkface")
        assert app.settings.system.model_dir.startswith(os.path.join(str(REPO), "demo_run"))
    else:
        assert folder == os.path.join(str(REPO), "data", "UTKFace")
        assert app.input_shape() == (200, 200, 3)
        assert app.settings.training.training_fraction == (0.1 if "small_data" in name else 1.0)
        assert app.settings.sfg.grouping in name


# === END TO END (engine): `sfg_run` in a subprocess ===


def sfg_run(*args: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "SFG_QUIET": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([SFG_RUN, *args], capture_output=True, text=True, env=environment, timeout=600)
    if result.returncode != 0:
        raise AssertionError(
            f"sfg_run {args} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("age_gender_cli")
    make_utkface_folder(root / "faces", num_images=NUM_VALID, size=32, seed=3, num_malformed=NUM_MALFORMED)
    config = write_config(root)
    result = sfg_run("train", "-c", str(config), "-a", "age_gender")
    return {"config": config, "model_dir": root / "run", "output": result.stdout}


@END_TO_END
def test_end_to_end_train_infer_evaluate(trained):
    model_dir = trained["model_dir"]
    assert (model_dir / "models" / "model-6.keras").is_file()
    assert json.loads((model_dir / "image_statistics.json").read_text())["num_images"] == 42
    assert trained["output"].count(f"skipped {NUM_MALFORMED} files whose names do not follow") == 1

    sfg_run("inference", "-c", str(trained["config"]), "-a", "age_gender")
    path = model_dir / "output" / "inferred.csv"
    rows = read_csv_rows(path)
    split = read_split(model_dir)
    inference = sorted(s for s, p in split.items() if p == "Inference")
    unlabelled = sorted(p.name for p in (model_dir.parent / "faces").iterdir() if p.name not in split)
    assert len(unlabelled) == NUM_MALFORMED  # not UTKFace names: not in the split, but images to infer all the same
    assert [row["subject"] for row in rows] == sorted(inference + unlabelled)
    assert list(rows[0]) == [
        "subject", "age_mean", "age_std", "gender_label", "gender_prob_0", "gender_prob_1", "gender_entropy",
        "phase", "trained_on", "input_sha256",
    ]
    assert {row["subject"]: row["phase"] for row in rows} == {**dict.fromkeys(inference, "Inference"),
                                                              **dict.fromkeys(unlabelled, "new")}
    assert {row["trained_on"] for row in rows} == {"no"}
    for row in rows:
        assert float(row["age_std"]) >= 0 and row["gender_label"] in ("0", "1")
        assert float(row["gender_prob_0"]) + float(row["gender_prob_1"]) == pytest.approx(1.0, abs=1e-4)
        assert 0.0 <= float(row["gender_entropy"]) <= math.log(2) + 1e-6

    result = sfg_run("evaluation", "-c", str(trained["config"]), "-a", "age_gender")
    metrics = read_csv_rows(model_dir / "evaluation" / "age_gender_metrics.csv")
    assert sorted(row["subject"] for row in metrics) == sorted(inference + unlabelled)
    assert all(math.isnan(float(row["age_true"])) for row in metrics if row["subject"] in unlabelled)  # no label
    labelled = [r for r in rows if r["subject"] in inference]
    errors = [abs(float(r["age_mean"]) - parse_utkface_name(r["subject"])[0]) for r in labelled]
    assert f"age: MAE {np.mean(errors):.3f} years over 9 images" in result.stdout
    assert "gender: accuracy" in result.stdout


@END_TO_END
@pytest.mark.parametrize("mode", ["map", "expected"])
def test_end_to_end_deterministic_inference_has_zero_std(trained, mode):
    sfg_run("inference", "-c", str(trained["config"]), "-a", "age_gender", f"--inference_mode={mode}",
            f"--save_seg_dir=output_{mode}", "--dataset_to_infer=inference")
    rows = read_csv_rows(trained["model_dir"] / f"output_{mode}" / "inferred.csv")
    assert len(rows) == 9 and all(float(row["age_std"]) == 0.0 for row in rows)
    for row in rows:
        probabilities = [float(row["gender_prob_0"]), float(row["gender_prob_1"])]
        assert int(row["gender_label"]) == int(np.argmax(probabilities))


@END_TO_END
def test_end_to_end_csv_labelled_mnist(tmp_path):
    make_mnist_two_task_folder(tmp_path / "mnist", num_images=100)
    config = write_config(tmp_path, **mnist_changes())
    sfg_run("train", "-c", str(config), "-a", "age_gender")
    sfg_run("inference", "-c", str(config), "-a", "age_gender")
    inferred = read_csv_rows(tmp_path / "run" / "output" / "inferred.csv")
    assert len(inferred) == 15 and all(0 <= int(row["digit_label"]) <= 9 for row in inferred)
    result = sfg_run("evaluation", "-c", str(config), "-a", "age_gender")
    assert "digit: accuracy" in result.stdout and "thickness: MAE" in result.stdout


# === Provenance (issues 18 and 20): inference on any data, never scoring a training image ===


@pytest.fixture(scope="module")
def provenance(trained, tmp_path_factory):
    """The `trained` model_dir's copies, used by one batch of sfg_run commands (see tests/sfg_run_batch.py)."""
    from sfg_run_batch import Batch

    root = tmp_path_factory.mktemp("age_gender_provenance")
    new = root / "new"
    make_utkface_folder(new, num_images=6, size=32, seed=9, num_malformed=0)
    record = json.loads((trained["model_dir"] / "run_record.json").read_text())
    trained_image = sorted(record["trained_on"])[0]
    with_copy = root / "new_with_copy"
    shutil.copytree(new, with_copy)
    shutil.copy(trained["model_dir"].parent / "faces" / trained_image, with_copy / "holiday_photo.jpg")
    batch = Batch(root, trained["config"], app="age_gender")
    batch.run("copied_training_image_in_another_folder", "inference", trained["model_dir"], f"--input_dir={with_copy}",
              "--save_seg_dir=output_refused")
    other = batch.copy(trained["model_dir"], "other")
    batch.run("new_images_in_another_folder", "inference", other, f"--input_dir={new}")
    batch.run("evaluation_of_another_folder", "evaluation", other, f"--input_dir={new}")
    everything = batch.copy(trained["model_dir"], "everything")
    batch.run("every_image_on_purpose", "inference", everything, "--dataset_to_infer=all", "--inference_mode=map")
    batch.run("evaluation_leaves_training_images_out", "evaluation", everything)
    return {"results": batch.execute(), "root": root, "new": new, "trained_image": trained_image}


@END_TO_END
def test_a_copied_training_image_is_refused_and_new_images_are_inferred_and_evaluated(provenance):
    results = provenance["results"]
    refused = results["copied_training_image_in_another_folder"]
    assert refused["returncode"] == 2 and refused["after"] == refused["before"], refused["stderr"][-3000:]
    assert "'holiday_photo.jpg' (new)" in refused["stderr"]
    assert f"content of the [IMAGES] file of training subject '{provenance['trained_image']}'" in refused["stderr"]

    inference = results["new_images_in_another_folder"]
    assert inference["returncode"] == 0, inference["stderr"][-3000:]
    before, after = inference["before"]["model_dir"], inference["after"]["model_dir"]
    for name in ("dataset_split.csv", "run_record.json", "lineage.json", "image_statistics.json", ".input_scans.json"):
        assert before[name] == after[name], name  # a new image never changes a file training wrote
    rows = read_csv_rows(provenance["root"] / "other" / "output" / "inferred.csv")
    assert sorted(row["subject"] for row in rows) == sorted(p.name for p in provenance["new"].iterdir())
    assert {(row["phase"], row["trained_on"]) for row in rows} == {("new", "no")}
    evaluation = results["evaluation_of_another_folder"]
    assert evaluation["returncode"] == 0 and "age: MAE" in evaluation["stdout"] and "over 6 images" in evaluation[
        "stdout"], evaluation["stderr"][-3000:]


@END_TO_END
def test_training_images_inferred_on_purpose_are_never_scored(provenance, trained):
    results = provenance["results"]
    assert results["every_image_on_purpose"]["returncode"] == 0
    evaluation = results["evaluation_leaves_training_images_out"]
    assert evaluation["returncode"] == 0, evaluation["stderr"][-3000:]
    split = read_split(trained["model_dir"])
    training = sorted(s for s, phase in split.items() if phase == "Training")
    assert f"evaluation leaves out {len(training)} subject(s) the model was trained on" in evaluation["stdout"]
    metrics = read_csv_rows(provenance["root"] / "everything" / "evaluation" / "age_gender_metrics.csv")
    assert not set(training) & {row["subject"] for row in metrics}
    assert len(metrics) == NUM_VALID + NUM_MALFORMED - len(training)
