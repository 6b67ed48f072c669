"""Tests for the demo data generators: pelvis and head phantoms, UTKFace stand-in, two-task MNIST."""

import csv
import time

import nibabel as nib
import numpy as np
import pytest
import tensorflow as tf

from sfg_keras.data.generators import (
    HEAD_LABEL_NAMES,
    PELVIS_LABEL_NAMES,
    load_mnist_two_task,
    load_multi_mnist,
    make_head_cohort,
    make_mnist_two_task_folder,
    make_pelvis_cohort,
    make_utkface_folder,
    measure_digit_morphology,
    mni152_data_folder,
    parse_utkface_name,
)
from sfg_keras.data.generators.binary_morphology import distance_to_background, zhang_suen_thinning


def _load(path):
    image = nib.load(path)
    return np.asarray(image.dataobj), image


# ----------------------------------------------------------------------------------------------------------------------
# Pelvis phantom


@pytest.fixture(scope="module")
def pelvis_cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("pelvis") / "cohort"
    return out, make_pelvis_cohort(out, num_subjects=3, seed=0)


def test_pelvis_files_shapes_and_affines(pelvis_cohort):
    out, subjects = pelvis_cohort
    assert [s["subject"] for s in subjects] == ["subj_000", "subj_001", "subj_002"]
    expected_affine = np.diag([2.0, 2.0, 3.0, 1.0])
    expected_affine[:3, 3] = [-95.0, -95.0, -22.5]
    for i, subject in enumerate(subjects):
        assert subject["mr"] == str(out / "MR" / f"subj_{i:03d}_mr.nii.gz")
        assert subject["ct"] == str(out / "CT" / f"subj_{i:03d}_ct.nii.gz")
        assert subject["label"] == str(out / "LABEL" / f"subj_{i:03d}_label.nii.gz")
        images = {key: nib.load(subject[key]) for key in ("mr", "ct", "label")}
        for key, image in images.items():
            assert image.shape == (96, 96, 16), key
            np.testing.assert_allclose(image.affine, expected_affine)
        assert images["mr"].get_data_dtype() == np.float32
        assert images["ct"].get_data_dtype() == np.float32
        assert images["label"].get_data_dtype() == np.uint8
    assert len(list((out / "MR").iterdir())) == 3


def test_pelvis_labels_and_contrasts(pelvis_cohort):
    _, subjects = pelvis_cohort
    assert PELVIS_LABEL_NAMES == ("background", "bone", "bladder", "prostate", "rectum")
    for subject in subjects:
        mr, _ = _load(subject["mr"])
        ct, _ = _load(subject["ct"])
        label, _ = _load(subject["label"])
        assert set(np.unique(label)) == {0, 1, 2, 3, 4}
        assert ct[label == 1].mean() > 300.0
        assert ct[label == 2].mean() == pytest.approx(10.0, abs=20.0)
        assert ct.min() < -900.0  # air outside the body
        assert mr.min() >= 0.0
        assert mr[label == 1].mean() < 0.5 * mr[label == 2].mean()  # bone dark, urine bright on T2
        # Structures are 3-D: the bladder spans several consecutive slices.
        bladder_slices = np.flatnonzero((label == 2).any(axis=(0, 1)))
        assert bladder_slices.size >= 4
        assert np.all(np.diff(bladder_slices) == 1)


def test_pelvis_is_deterministic_per_seed(pelvis_cohort, tmp_path):
    _, subjects = pelvis_cohort
    again = make_pelvis_cohort(tmp_path / "again", num_subjects=2, seed=0)
    other = make_pelvis_cohort(tmp_path / "other", num_subjects=2, seed=1)
    for key in ("mr", "ct", "label"):
        np.testing.assert_array_equal(_load(again[1][key])[0], _load(subjects[1][key])[0])
        assert not np.array_equal(_load(other[1][key])[0], _load(subjects[1][key])[0])
    # Different subjects of one cohort differ too.
    assert not np.array_equal(_load(subjects[0]["label"])[0], _load(subjects[1]["label"])[0])


def test_pelvis_overwrite_refusal_and_replacement(tmp_path):
    out = tmp_path / "cohort"
    make_pelvis_cohort(out, num_subjects=3, shape=(32, 32, 6))
    with pytest.raises(FileExistsError, match="cohort"):
        make_pelvis_cohort(out, num_subjects=2, shape=(32, 32, 6))
    (out / "notes.txt").write_text("keep me")
    make_pelvis_cohort(out, num_subjects=2, shape=(32, 32, 6), overwrite=True)
    assert sorted(p.name for p in (out / "CT").iterdir()) == ["subj_000_ct.nii.gz", "subj_001_ct.nii.gz"]
    assert (out / "notes.txt").read_text() == "keep me"


def test_pelvis_is_fast(tmp_path):
    start = time.perf_counter()
    make_pelvis_cohort(tmp_path / "fast", num_subjects=6)
    assert time.perf_counter() - start < 6.0  # brief: < 3 s; margin for a loaded CI machine


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_subjects": 0}, "num_subjects"),
        ({"shape": (96, 96)}, r"\(96, 96\)"),
        ({"shape": (4, 96, 16)}, "at least 8"),
        ({"spacing": (2.0, -1.0, 3.0)}, "spacing"),
    ],
)
def test_pelvis_rejects_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_pelvis_cohort(tmp_path / "bad", **kwargs)
    assert not (tmp_path / "bad").exists()


# ----------------------------------------------------------------------------------------------------------------------
# Head phantom


def _require_mni152():
    try:
        mni152_data_folder()
    except (ImportError, FileNotFoundError) as error:
        pytest.skip(f"MNI152 maps from nilearn unavailable: {error}")


def test_head_cohort_labels_shapes_and_contrasts(tmp_path):
    _require_mni152()
    subjects = make_head_cohort(tmp_path / "head", num_subjects=2, resolution=4, seed=0)
    assert HEAD_LABEL_NAMES == ("background", "csf", "grey_matter", "white_matter", "skull")
    labels = []
    for subject in subjects:
        mr, mr_image = _load(subject["mr"])
        ct, ct_image = _load(subject["ct"])
        label, label_image = _load(subject["label"])
        assert mr.shape == ct.shape == label.shape
        assert 30 <= label.shape[0] <= 60 and label.ndim == 3
        np.testing.assert_allclose(mr_image.affine, label_image.affine)
        np.testing.assert_allclose(ct_image.affine, label_image.affine)
        np.testing.assert_allclose(np.diag(label_image.affine)[:3], [4.0, 4.0, 4.0])
        assert label_image.get_data_dtype() == np.uint8
        assert set(np.unique(label)) == {0, 1, 2, 3, 4}
        assert mr.min() >= 0.0
        assert mr[label == 3].mean() > mr[label == 2].mean() > mr[label == 1].mean()  # T1: WM > GM > CSF
        assert mr[label == 4].mean() < mr[label == 2].mean()  # bone dark on MR
        assert ct[label == 4].mean() > 500.0  # bone bright on CT
        assert abs(ct[label == 3].mean() - 28.0) < 30.0
        labels.append(label)
    assert not np.array_equal(labels[0], labels[1])  # each subject has its own deformation


def test_head_cohort_rejects_bad_resolution(tmp_path):
    with pytest.raises(ValueError, match="resolution"):
        make_head_cohort(tmp_path / "head", resolution=0)
    with pytest.raises(ValueError, match="12"):
        make_head_cohort(tmp_path / "head", resolution=12)


# ----------------------------------------------------------------------------------------------------------------------
# UTKFace stand-in


@pytest.mark.parametrize(
    "name, expected",
    [
        ("26_1_2_20170116174525125.jpg", (26, 1, 2)),
        ("26_1_2_20170116174525125.jpg.chip.jpg", (26, 1, 2)),
        ("/data/UTKFace/1_0_4_20161221193016140.jpg.chip.jpg", (1, 0, 4)),
        ("116_0_0_20170120134921760.jpg", (116, 0, 0)),
        ("39_1_20170116174525125.jpg.chip.jpg", None),  # race missing (real malformed name)
        ("61_1_20170109150557335.jpg", None),  # race missing (real malformed name)
        ("61__1_20170109150557335.jpg", None),  # empty field
        ("26_1_2.jpg", None),  # date missing
        ("26_1_2_20170116174525125.png", None),
        ("26_x_2_20170116174525125.jpg", None),
        ("117_0_0_20170120134921760.jpg", None),  # age out of range
        ("26_2_0_20170120134921760.jpg", None),  # gender out of range
        ("26_1_5_20170120134921760.jpg", None),  # race out of range
    ],
)
def test_parse_utkface_name(name, expected):
    assert parse_utkface_name(name) == expected


def test_utkface_folder_counts_names_and_images(tmp_path):
    out = tmp_path / "faces"
    summary = make_utkface_folder(out, num_images=24, size=48, seed=3, num_malformed=4, aligned_fraction=0.5)
    assert summary["num_valid"] == 24 and summary["num_malformed"] == 4
    assert len(summary["files"]) == 28
    assert sorted(p.name for p in out.iterdir()) == sorted(p.split("/")[-1] for p in summary["files"])
    parsed = [parse_utkface_name(f) for f in summary["files"]]
    assert sum(p is None for p in parsed) == 4
    assert all(p is not None for p in parsed[:24])
    assert all(1 <= age <= 100 for age, _, _ in parsed[:24])
    assert 0 < sum(f.endswith(".jpg.chip.jpg") for f in summary["files"][:24]) < 24
    for path in summary["files"]:
        pixels = tf.io.decode_jpeg(tf.io.read_file(path)).numpy()
        assert pixels.shape == (48, 48, 3)
        assert pixels.std() > 10.0  # not blank
    with pytest.raises(FileExistsError, match="faces"):
        make_utkface_folder(out, num_images=5)


def test_utkface_is_deterministic_and_overwritable(tmp_path):
    first = make_utkface_folder(tmp_path / "a", num_images=6, size=32, seed=7, num_malformed=1)
    second = make_utkface_folder(tmp_path / "b", num_images=6, size=32, seed=7, num_malformed=1)
    names = [p.split("/")[-1] for p in first["files"]]
    assert names == [p.split("/")[-1] for p in second["files"]]
    for a, b in zip(first["files"], second["files"]):
        assert open(a, "rb").read() == open(b, "rb").read()
    third = make_utkface_folder(tmp_path / "a", num_images=3, size=32, seed=8, num_malformed=0, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(p.split("/")[-1] for p in third["files"])


def test_utkface_appearance_follows_labels(tmp_path):
    """A ridge regression on 16x16 thumbnails already predicts age and gender: the labels are learnable."""
    summary = make_utkface_folder(tmp_path / "faces", num_images=160, size=32, seed=1, num_malformed=0)
    features, ages, genders = [], [], []
    for path in summary["files"]:
        pixels = tf.io.decode_jpeg(tf.io.read_file(path)).numpy().astype(np.float32) / 255.0
        features.append(pixels.reshape(16, 2, 16, 2, 3).mean(axis=(1, 3)).ravel())
        age, gender, _ = parse_utkface_name(path)
        ages.append(age)
        genders.append(gender)
    x = np.c_[np.array(features), np.ones(len(features))]
    train, test = slice(0, 120), slice(120, 160)
    gram = x[train].T @ x[train] + np.eye(x.shape[1])
    for target in (np.array(ages, float), np.array(genders, float)):
        weights = np.linalg.solve(gram, x[train].T @ target[train])
        assert np.corrcoef(x[test] @ weights, target[test])[0, 1] > 0.4


def test_utkface_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="aligned_fraction"):
        make_utkface_folder(tmp_path / "f", aligned_fraction=1.5)
    with pytest.raises(ValueError, match="-1"):
        make_utkface_folder(tmp_path / "f", num_malformed=-1)
    with pytest.raises(ValueError, match="size"):
        make_utkface_folder(tmp_path / "f", size=8)


# ----------------------------------------------------------------------------------------------------------------------
# Two-task MNIST


@pytest.fixture(scope="module")
def mnist():
    return load_mnist_two_task(seed=0)


def test_mnist_two_task_arrays(mnist):
    assert mnist["images"].shape == (5000, 28, 28) and mnist["images"].dtype == np.uint8
    assert np.all(np.bincount(mnist["digit"], minlength=10) == 500)
    assert not np.isnan(mnist["thickness"]).any() and not np.isnan(mnist["slant"]).any()
    assert 2.0 < mnist["thickness"].mean() < 4.0
    assert 5.0 < mnist["slant"].std() < 30.0
    assert mnist["slant"].mean() > 0.0  # handwriting leans right on average
    # Stratified order: every block of 100 holds 10 of each digit.
    assert np.all(np.bincount(mnist["digit"][:100], minlength=10) == 10)
    assert sorted(mnist["source_row"]) == list(range(5000))
    # The measures are related to, but not determined by, the class: between-class share of variance is small.
    for key in ("thickness", "slant"):
        values = mnist[key]
        between = (
            sum((values[mnist["digit"] == c].mean() - values.mean()) ** 2 * 500 for c in range(10))
            / ((values - values.mean()) ** 2).sum()
        )
        assert 0.01 < between < 0.5


def test_multi_mnist_overlays_two_real_digits_from_disjoint_pools(mnist):
    data = load_multi_mnist(seed=0, num_train=300, num_test=100, held_out_digits=1000)
    assert data["images"].shape == (400, 28, 28) and data["images"].dtype == np.uint8
    assert data["num_train"] == 300 and data["left"].shape == data["right"].shape == (400,)
    assert set(np.unique(data["left"])) <= set(range(10)) and len(np.unique(data["right"])) == 10
    assert np.mean(data["left"] == data["right"]) < 0.3  # independent draws, not one digit twice
    ink = data["images"].reshape(400, -1).sum(axis=1) / 255.0
    single = mnist["images"].reshape(5000, -1).sum(axis=1) / 255.0 * (28 / 36) ** 2  # one digit, resized canvas
    assert 1.3 * single.mean() < ink.mean() < 2.0 * single.mean()  # two overlapping digits' worth of ink
    # Training canvases use the first 4,000 digits, test canvases the held-out 1,000; the labels are theirs.
    for side in ("left", "right"):
        sources = data[f"{side}_source"]
        assert sources[:300].max() < 4000 <= sources[300:].min()
        np.testing.assert_array_equal(mnist["digit"][sources], data[side])
    again = load_multi_mnist(seed=0, num_train=300, num_test=100)
    np.testing.assert_array_equal(again["images"], data["images"])
    assert not np.array_equal(load_multi_mnist(seed=1, num_train=300, num_test=100)["images"], data["images"])
    with pytest.raises(ValueError, match="max_shift"):
        load_multi_mnist(max_shift=9)
    with pytest.raises(ValueError, match="held_out_digits"):
        load_multi_mnist(held_out_digits=5000)


def test_mnist_order_depends_on_seed(mnist):
    again = load_mnist_two_task(seed=0)
    other = load_mnist_two_task(seed=1)
    np.testing.assert_array_equal(again["source_row"], mnist["source_row"])
    assert not np.array_equal(other["source_row"], mnist["source_row"])
    # Same image, same measurement whatever the order.
    inverse = np.argsort(other["source_row"])[mnist["source_row"]]
    np.testing.assert_allclose(other["thickness"][inverse], mnist["thickness"])


@pytest.mark.parametrize("width", [1, 3, 5])
def test_thickness_of_vertical_strokes(width):
    image = np.zeros((28, 28), dtype=np.uint8)
    image[4:24, 12 : 12 + width] = 255
    measures = measure_digit_morphology(image)
    assert measures["thickness"][0] == pytest.approx(width, abs=0.1)
    assert measures["slant"][0] == pytest.approx(0.0, abs=0.5)
    assert measures["area"][0] == pytest.approx(20 * width, rel=0.05)


@pytest.mark.parametrize("degrees", [-20.0, 15.0, 30.0])
def test_slant_and_thickness_of_slanted_strokes(degrees):
    rows, cols = np.mgrid[0:28, 0:28]
    tangent = np.tan(np.radians(degrees))
    # Centre line x = 13.5 - (y - 13.5) * tan: the top leans right for positive angles.
    distance = np.abs((cols - 13.5) + (rows - 13.5) * tangent) / np.sqrt(1.0 + tangent**2)
    image = np.where((distance <= 1.5) & (rows >= 4) & (rows <= 23), 255, 0)
    measures = measure_digit_morphology(image[None])
    assert measures["slant"][0] == pytest.approx(degrees, abs=1.5)
    assert measures["thickness"][0] == pytest.approx(3.0, abs=0.6)


def test_blank_image_gives_nan_and_bad_input_raises():
    measures = measure_digit_morphology(np.zeros((2, 28, 28)))
    assert np.isnan(measures["thickness"]).all() and np.all(measures["area"] == 0)
    with pytest.raises(ValueError, match=r"\(28,\)"):
        measure_digit_morphology(np.zeros(28))
    with pytest.raises(ValueError, match="threshold"):
        measure_digit_morphology(np.zeros((28, 28)), threshold=1.5)


def test_distance_transform_matches_brute_force():
    rng = np.random.default_rng(0)
    binary = rng.uniform(size=(3, 12, 15)) < 0.7
    binary[:, 0, 0] = False  # at least one background pixel per image
    points = np.nonzero(binary)
    distances = distance_to_background(binary, points)
    for (n, i, j), value in zip(zip(*points), distances):
        background = np.argwhere(~binary[n])
        expected = np.sqrt(((background - [i, j]) ** 2).sum(axis=1)).min()
        assert value == pytest.approx(expected)


def test_zhang_suen_thins_a_bar_to_one_pixel():
    binary = np.zeros((1, 20, 20), dtype=bool)
    binary[0, 3:17, 7:12] = True
    skeleton = zhang_suen_thinning(binary)
    assert skeleton[0, 6:14].sum(axis=1).tolist() == [1] * 8  # one pixel per row along the bar
    assert np.all(skeleton <= binary)
    assert 8 <= skeleton.sum() <= 16


def test_mnist_two_task_folder(mnist, tmp_path):
    out = make_mnist_two_task_folder(tmp_path / "mnist", num_images=40, seed=0)
    assert out == tmp_path / "mnist"
    with open(out / "labels.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["filename", "digit", "thickness", "slant"]
    assert len(rows) == 41
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{i:05d}.png" for i in range(40)]
    assert np.all(np.bincount([int(r[1]) for r in rows[1:]], minlength=10) == 4)
    for i in (0, 17, 39):
        filename, digit, thickness, slant = rows[i + 1]
        assert filename == f"images/{i:05d}.png"
        pixels = tf.io.decode_png(tf.io.read_file(str(out / filename))).numpy()
        assert pixels.shape == (28, 28, 1)
        np.testing.assert_array_equal(pixels[..., 0], mnist["images"][i])
        assert int(digit) == mnist["digit"][i]
        assert float(thickness) == pytest.approx(mnist["thickness"][i], abs=1e-3)
        assert float(slant) == pytest.approx(mnist["slant"][i], abs=1e-3)
    with pytest.raises(FileExistsError, match="mnist"):
        make_mnist_two_task_folder(out, num_images=10)
    with pytest.raises(ValueError, match="5001"):
        make_mnist_two_task_folder(tmp_path / "other", num_images=5001)
