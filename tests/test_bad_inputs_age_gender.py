"""Bad inputs of the age_gender application, through `sfg_run` (issue 11).

Each case breaks one thing in a tiny generated data set (a UTKFace-named folder of JPEGs, or PNGs listed in a label
CSV) and runs `sfg_run train` (or `inference`). Every case must be refused up front: exit status 2, the bad file named
on stderr in one `InputValidationError` (no traceback), and `model_dir` byte-identical before and after. The
commands run one after the other in one subprocess (`sfg_run_batch`: the console script's function, TensorFlow
imported once) in a module-scoped fixture; one parametrized test per case asserts. A few in-process tests cover
what a command cannot show cheaply: resuming, the scan cache, `training_files` and atomic metric tables.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from file_snapshots import snapshot
from PIL import Image
from sfg_run_batch import Batch

SIZE = 16
NUM_FACES = 12
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

COMMON = {
    "SYSTEM": {"model_dir": "run", "seed": 0},
    "NETWORK": {"name": "sfg_small_cnn", "width_multiplier": 0.5, "batch_size": 2},
    "TRAINING": {"max_iter": 2, "save_every_n": 2, "validation_every_n": -1, "tensorboard_every_n": -1},
    "SFG": {"grouping": "hard_sharing"},
}
FACES = {
    "MULTITASK": {"image": "IMAGES", "tasks": "age, gender", "task_types": "regression, classification",
                  "num_classes": "1, 2", "labels": "filename, filename"},
    "IMAGES": {"path_to_search": "faces", "spatial_window_size": f"{SIZE}, {SIZE}"},
}
LISTED = {
    "MULTITASK": {"image": "IMAGES", "tasks": "age, gender", "task_types": "regression, classification",
                  "num_classes": "1, 2", "labels": "csv:age, csv:gender"},
    "IMAGES": {"csv_data_file": "labels.csv", "spatial_window_size": f"{SIZE}, {SIZE}"},
}


# === Data ===


def write_image(path: Path, seed: int, mode: str = "RGB", image_format: str | None = None) -> Path:
    """A random `SIZE` x `SIZE` image; the format follows the extension unless `image_format` is given."""
    pixels = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path, image_format)
    return path


def face_name(index: int) -> str:
    return f"{20 + index}_{index % 2}_{index % 5}_20170116174525{index:03d}.jpg"


def write_config(folder: Path, layout: dict, extra: dict | None = None) -> Path:
    sections = {name: dict(values) for name, values in {**COMMON, **layout}.items()}
    for name, values in (extra or {}).items():
        sections.setdefault(name, {}).update(values)
    text = "".join(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()) + "\n"
                   for name, values in sections.items())
    path = folder / "config.ini"
    path.write_text(text)
    return path


def make_faces(folder: Path, count: int = NUM_FACES, extra: dict | None = None) -> Path:
    """UTKFace-named JPEGs in `folder/faces` with filename labels; returns the config."""
    (folder / "faces").mkdir(parents=True)
    for index in range(count):
        write_image(folder / "faces" / face_name(index), index)
    return write_config(folder, FACES, extra)


def make_listed(folder: Path, rows: list[list[str]] | None = None, header: str = "filename,age,gender") -> Path:
    """PNGs in `folder/images` listed in `folder/labels.csv` (age, gender); returns the config."""
    (folder / "images").mkdir(parents=True)
    for index in range(8):
        write_image(folder / "images" / f"img{index}.png", index)
    if rows is None:
        rows = [[f"images/img{index}.png", str(20 + index), str(index % 2)] for index in range(8)]
    write_csv(folder, rows, header)
    return write_config(folder, LISTED)


def write_csv(folder: Path, rows: list[list[str]], header: str = "filename,age,gender") -> None:
    with open(folder / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header.split(","))
        writer.writerows(rows)


def listed_rows(changes: dict[int, list[str]] | None = None) -> list[list[str]]:
    rows = [[f"images/img{index}.png", str(20 + index), str(index % 2)] for index in range(8)]
    for index, row in (changes or {}).items():
        rows[index] = row
    return rows


def write_trained_state(folder: Path) -> None:
    """What training leaves for inference's input checks: the split and the image statistics (no checkpoint is
    needed: the images are checked before the checkpoint is loaded)."""
    model_dir = folder / "run"
    model_dir.mkdir()
    names = sorted(face_name(index) for index in range(NUM_FACES))
    phases = ["Training"] * 8 + ["Validation"] * 2 + ["Inference"] * 2
    (model_dir / "dataset_split.csv").write_text("".join(f"{n},{p}\n" for n, p in zip(names, phases)))
    statistics = {"mean": [127.5] * 3, "std": [70.0] * 3, "num_images": 8, "image_size": [SIZE, SIZE], "channels": 3}
    (model_dir / "image_statistics.json").write_text(json.dumps(statistics))


# === Cases: each returns (action, the names stderr must contain) ===


def corrupt_jpeg(folder: Path):
    make_faces(folder)
    (folder / "faces" / face_name(3)).write_bytes(np.random.default_rng(0).bytes(700))
    return "train", [face_name(3), "not a recognised image format"]


def truncated_jpeg(folder: Path):
    make_faces(folder)
    path = folder / "faces" / face_name(4)
    path.write_bytes(path.read_bytes()[:300])
    return "train", [face_name(4), "truncated"]


def zero_byte_jpeg(folder: Path):
    make_faces(folder)
    (folder / "faces" / face_name(5)).write_bytes(b"")
    return "train", [face_name(5), "is empty (0 bytes)"]


def folder_named_jpg(folder: Path):
    make_faces(folder)
    (folder / "faces" / "30_1_0_20170116174525999.jpg").mkdir()
    return "train", ["30_1_0_20170116174525999.jpg", "is a folder named like an image"]


def unreadable_jpeg(folder: Path):
    make_faces(folder)
    (folder / "faces" / face_name(6)).chmod(0)
    return "train", [face_name(6), "permission denied"]


def csv_missing_label_column(folder: Path):
    make_listed(folder, [[f"images/img{i}.png", str(20 + i)] for i in range(8)], header="filename,age")
    return "train", ["labels.csv", "no column 'gender'"]


def unparseable_label(folder: Path):
    make_listed(folder, listed_rows({2: ["images/img2.png", "twenty", "0"]}))
    return "train", ["labels.csv", "img2.png", "'twenty' is not a number"]


def class_out_of_range(folder: Path):
    make_listed(folder, listed_rows({5: ["images/img5.png", "25", "2"]}))
    return "train", ["labels.csv", "img5.png", "not below [MULTITASK] num_classes = 2"]


def non_finite_target(folder: Path):
    make_listed(folder, listed_rows({1: ["images/img1.png", "inf", "1"]}))
    return "train", ["labels.csv", "img1.png", "'inf' is not a finite number"]


def image_missing(folder: Path):
    make_listed(folder, [*listed_rows(), ["images/ghost.png", "40", "1"]])
    return "train", ["ghost.png", "does not exist"]


def duplicate_ids(folder: Path):
    make_listed(folder, [*listed_rows(), ["images/img3.png", "41", "0"]])
    return "train", ["labels.csv", "img3.png", "listed twice"]


def undecodable_format(folder: Path):
    make_listed(folder)
    write_image(folder / "images" / "img7.png", 7, image_format="TIFF")
    return "train", ["img7.png", "TIFF image", "Unknown image file format"]


def many_bad_files(folder: Path):
    make_faces(folder, count=30)
    for index in range(25):
        (folder / "faces" / face_name(index)).write_bytes(b"not a jpeg")
    return "train", ["25 problems", "... and 5 more", *sorted(face_name(i) for i in range(25))[:20]]


def bad_image_to_infer(folder: Path):
    make_faces(folder)
    write_trained_state(folder)
    inferred = sorted(face_name(index) for index in range(NUM_FACES))[-1]
    path = folder / "faces" / inferred
    path.write_bytes(path.read_bytes()[:250])
    return "inference", [inferred, "images to infer"]


CASES: dict[str, Callable] = {case.__name__: case for case in (
    corrupt_jpeg, truncated_jpeg, zero_byte_jpeg, folder_named_jpg, unreadable_jpeg, csv_missing_label_column,
    unparseable_label, class_out_of_range, non_finite_target, image_missing, duplicate_ids, undecodable_format,
    many_bad_files, bad_image_to_infer,
)}
SKIPPED_AS_ROOT = {"unreadable_jpeg"}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, dict]:
    """`{case: {"result": the command's result (exit status, stdout, stderr, snapshots), "wanted": texts}}`.

    Every case's files are made here, then its `sfg_run ACTION -c CONFIG -a age_gender` runs in one process through
    `sfg_keras.cli.main`, the function behind the console script (`sfg_run_batch`): TensorFlow is imported once
    for the 14 commands instead of once each.
    """
    root = tmp_path_factory.mktemp("bad_inputs_age_gender")
    names = [name for name in CASES if not (AS_ROOT and name in SKIPPED_AS_ROOT)]
    batch, wanted = Batch(root, app="age_gender"), {}
    for name in names:
        action, wanted[name] = CASES[name](root / name)
        batch.run(name, action, root / name / "run", config=root / name / "config.ini")
    results = batch.execute()
    return {name: {"result": results[name], "wanted": wanted[name]} for name in names}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_up_front(outcomes, case):
    if AS_ROOT and case in SKIPPED_AS_ROOT:
        pytest.skip("root reads a chmod-000 file")
    outcome = outcomes[case]
    result = outcome["result"]
    stdout, stderr = result["stdout"], result["stderr"]
    assert result["returncode"] == 2, f"exit {result['returncode']}:\n{stdout[-2000:]}\n{stderr[-3000:]}"
    assert "Traceback" not in stderr and "nothing was written" in stderr, stderr[-3000:]
    for text in outcome["wanted"]:
        assert text in stderr, f"{text!r} not in:\n{stderr[-3000:]}"
    assert result["after"] == result["before"]


# === In-process: resuming, the scan cache, training_files, channel conversion, atomic tables ===


def make_app(config: Path, action: str = "train"):
    from sfg_keras.config import load_settings
    from sfg_keras_applications.age_gender import AgeGenderApplication

    settings = load_settings(config, [], action=action, extra_sections=AgeGenderApplication.APP_SECTIONS)
    return AgeGenderApplication(settings)


def prepare_quietly(app, fit: bool) -> None:
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        app.prepare(fit=fit)


def test_resumed_training_checks_every_image_and_reuses_the_scan_cache(tmp_path, monkeypatch):
    from sfg_keras.io.input_checks import InputValidationError
    from sfg_keras_applications.image_checks import ImageDecodeCheck

    config = make_faces(tmp_path)
    prepare_quietly(make_app(config), fit=True)
    model_dir = tmp_path / "run"
    scans = json.loads((model_dir / ".input_scans.json").read_text())["entries"]
    assert len(scans) == NUM_FACES

    decoded = []
    original = ImageDecodeCheck.__call__
    monkeypatch.setattr(ImageDecodeCheck, "__call__", lambda self, path: decoded.append(path) or original(self, path))
    prepare_quietly(make_app(config), fit=False)  # resuming: every image checked, all from the cache
    assert decoded == []

    bad = tmp_path / "faces" / face_name(7)
    bad.write_bytes(bad.read_bytes()[:200])
    before = snapshot(model_dir)
    with pytest.raises(InputValidationError, match=rf"{face_name(7)}.*truncated or corrupt JPEG file") as caught:
        prepare_quietly(make_app(config), fit=False)
    assert [problem.subject for problem in caught.value.problems] == [face_name(7)]
    assert decoded == [str(bad)]  # only the changed file is decoded again
    assert snapshot(model_dir) == before


def test_training_files_are_the_training_images_and_the_label_csv(tmp_path):
    faces = make_faces(tmp_path / "faces_set")
    app = make_app(faces)
    with pytest.raises(RuntimeError, match="prepare"):
        app.training_files()
    prepare_quietly(app, fit=True)
    training = app.image_set().select(app.training_subjects(app._subject_split()))
    assert app.training_files() == training.paths
    assert len(training.paths) == json.loads(app.statistics_path.read_text())["num_images"]

    listed = make_listed(tmp_path / "listed_set")
    app = make_app(listed, action="train")
    prepare_quietly(app, fit=True)
    files = app.training_files()
    assert files[-1] == str(tmp_path / "listed_set" / "labels.csv")
    assert len(files) == json.loads(app.statistics_path.read_text())["num_images"] + 1


def test_channel_conversion_the_decoder_cannot_do_is_reported(tmp_path):
    from sfg_keras.io.input_checks import InputProblems

    config = make_faces(tmp_path, extra={"AGE_GENDER": {"channels": 1}})
    write_image(tmp_path / "faces" / face_name(2), 2, mode="CMYK")
    write_image(tmp_path / "faces" / face_name(3), 3, mode="RGBA", image_format="PNG")  # a PNG named .jpg: fine
    write_image(tmp_path / "faces" / face_name(4), 4, mode="L")
    app = make_app(config)
    problems = InputProblems()
    app.check_images(app.image_set(), problems)
    assert [problem.subject for problem in problems.items] == [face_name(2)]
    assert "mode 'CMYK'" in problems.items[0].problem and "decodes to 1 channel " in problems.items[0].expected

    rgb = write_config(tmp_path, FACES)  # channels = 3 converts the CMYK JPEG
    problems = InputProblems()
    make_app(rgb).check_images(make_app(rgb).image_set(), problems)
    assert problems.items == []


def test_every_listing_label_and_image_problem_is_listed_at_once(tmp_path):
    from sfg_keras.io.input_checks import InputValidationError

    config = make_listed(tmp_path)
    (tmp_path / "images" / "folder.jpg").mkdir()
    (tmp_path / "images" / "img6.png").write_bytes(b"")
    write_csv(tmp_path, [*listed_rows({0: ["images/img0.png", "nan", "-1"], 1: ["images/img1.png", "", ""],
                                       2: ["images/img2.png", "-inf", "0"], 3: ["images/img3.png", "30", "-3"],
                                       4: ["images/img4.png", "31", "1.5"]}),
                          ["images/folder.jpg", "33", "1"], ["images/img5.png", "34", "1"], ["", "35", "0"]])
    with pytest.raises(InputValidationError) as caught:
        prepare_quietly(make_app(config), fit=True)
    found = {(Path(problem.path.split(" (")[0]).name, problem.subject): problem.problem
             for problem in caught.value.problems}
    assert len(caught.value.problems) == 7, str(caught.value)
    assert "'-inf' is not a finite number" in found[("labels.csv", "img2.png")]
    assert "class -3 of task 'gender' is negative" in found[("labels.csv", "img3.png")]
    assert "'1.5' is not a class index" in found[("labels.csv", "img4.png")]
    assert "listed twice (first on line 7)" in found[("labels.csv", "img5.png")]
    assert "'filename' cell is empty" in found[("labels.csv", None)]
    assert found[("folder.jpg", "folder.jpg")] == "is a folder, not an image file"
    assert found[("img6.png", "img6.png")] == "is empty (0 bytes)"
    assert not (tmp_path / "run").exists()


def test_label_cells_missing_words_and_non_finite_numbers():
    from sfg_keras.config import TaskSpec
    from sfg_keras.io.input_checks import InputCheckFailure
    from sfg_keras_applications.image_labels import label_value, parse_label

    age = TaskSpec("age", "regression", 1, "L2Loss", 1.0, "csv:age")
    gender = TaskSpec("gender", "classification", 2, "CrossEntropy", 1.0, "csv:gender")
    assert np.isnan(label_value("NaN", age)) and np.isnan(label_value("", age)) and label_value(" 3", age) == 3.0
    assert label_value("-1", gender) == -1 and label_value("none", gender) == -1 and label_value("1.0", gender) == 1
    for text in ("inf", "-Infinity"):
        with pytest.raises(InputCheckFailure, match="not a finite number"):
            label_value(text, age)
    with pytest.raises(ValueError, match=r"labels.csv, line 2: class 2 of task 'gender' is not below"):
        parse_label("2", gender, "labels.csv, line 2")


def test_failed_table_writes_name_the_path_and_leave_no_partial_file(tmp_path):
    from sfg_keras.evaluation import write_metrics_tables
    from sfg_keras_applications.prediction_tables import write_table

    rows = [{"subject": "a.png", "age_abs_error": 3.0}, {"subject": "b.png", "age_abs_error": 5.0}]
    written = write_metrics_tables(rows, tmp_path / "evaluation" / "metrics.csv")
    assert [path.name for path in written] == ["metrics.csv", "metrics_summary.csv"]
    assert sorted(p.name for p in (tmp_path / "evaluation").iterdir()) == ["metrics.csv", "metrics_summary.csv"]
    assert "mean,4" in (tmp_path / "evaluation" / "metrics_summary.csv").read_text()

    blocked = tmp_path / "blocked"
    (blocked / "metrics.csv").mkdir(parents=True)  # a folder where the table should go: the rename fails
    with pytest.raises(OSError, match=r"blocked/metrics\.csv"):
        write_metrics_tables(rows, blocked / "metrics.csv")
    (blocked / "inferred.csv").mkdir()
    with pytest.raises(OSError, match=r"blocked/inferred\.csv"):
        write_table(blocked / "inferred.csv", ["subject"], [["a.png"]])
    assert sorted(p.name for p in blocked.iterdir()) == ["inferred.csv", "metrics.csv"]
    assert not any((blocked / "metrics.csv").iterdir()) and not any((blocked / "inferred.csv").iterdir())


def test_inferred_tables_of_older_versions_are_read_with_their_mode_column(tmp_path):
    from sfg_keras.config import TaskSpec
    from sfg_keras_applications.prediction_tables import read_inferred, write_table

    age = TaskSpec("age", "regression", 1, "RMSE", 1.0, "filename")
    gender = TaskSpec("gender", "classification", 2, "CrossEntropy", 1.0, "filename")
    path = tmp_path / "inferred.csv"
    write_table(path, ["subject", "age_mean", "age_std", "gender_mode", "gender_prob_0", "gender_prob_1"],
                [["a.png", "31.5", "2", "1", "0.2", "0.8"], ["b.png", "", "0", "0", "0.9", "0.1"]])
    rows = read_inferred(path, [age, gender], "sfg_run inference -c run.ini")
    assert [(row["subject"], row["age_mean"], row["gender_label"]) for row in rows] == [
        ("a.png", "31.5", "1"), ("b.png", "", "0")]
    assert all("gender_mode" not in row for row in rows)

    write_table(path, ["subject", "age_mean", "gender_label", "gender_mode"], [["a.png", "30", "0", "1"]])
    (row,) = read_inferred(path, [age, gender], "sfg_run inference -c run.ini")
    assert row["gender_label"] == "0"  # the current column wins over an old one

    write_table(path, ["subject", "age_mean", "gender_prob_0"], [["a.png", "30", "0.5"]])
    with pytest.raises(ValueError, match=r"inferred\.csv: no column 'gender_label' for task 'gender'"):
        read_inferred(path, [age, gender], "sfg_run inference -c run.ini")
    write_table(path, ["subject", "age_mode", "gender_label"], [["a.png", "30", "0"]])
    with pytest.raises(ValueError, match=r"no column 'age_mean' for task 'age'"):  # only a label column has an old name
        read_inferred(path, [age, gender], "sfg_run inference -c run.ini")
