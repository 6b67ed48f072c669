"""Tests for sfg_keras.data: split, Nyul standardisation, intensity maps, augmentation, slicing."""

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from sfg_keras.data.augmentation import random_crop_pad, random_scale_rotate
from sfg_keras.data.histogram_standardisation import HistogramStandardisation, mean_plus_mask
from sfg_keras.data.intensity import ct_to_target, target_to_ct, whiten
from sfg_keras.data.slices import (
    crop_slices_from,
    pad_slices_to,
    padded_size,
    slices_to_volume,
    volume_to_slices,
)
from sfg_keras.data.split import make_or_load_split, subsample_training

SUBJECTS = [f"subj_{i:03d}" for i in range(20)]


# === Package ===


def test_data_package_import_is_light():
    # Whatever the top-level package imports, `sfg_keras.data` itself must add neither TensorFlow nor generators.
    code = (
        "import sys, sfg_keras; before = set(sys.modules); import sfg_keras.data as d; "
        "added = set(sys.modules) - before; "
        "assert not any(m.split('.')[0] == 'tensorflow' for m in added), sorted(added); "
        "assert 'sfg_keras.data.generators' not in added, sorted(added); "
        "assert 'sfg_keras.data.augmentation' not in added, sorted(added); "
        "assert d.make_or_load_split.__name__ == 'make_or_load_split'; "
        "assert 'sfg_keras.data.split' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# === Split ===


def test_split_is_seeded_written_and_reused(tmp_path):
    split_file = tmp_path / "model" / "dataset_split.csv"
    split = make_or_load_split(SUBJECTS, split_file, seed=3)
    assert list(split) == sorted(SUBJECTS)
    counts = {phase: list(split.values()).count(phase) for phase in ("Training", "Validation", "Inference")}
    assert counts == {"Training": 14, "Validation": 3, "Inference": 3}
    rows = split_file.read_text().splitlines()
    assert len(rows) == 20 and rows[0] == f"subj_000,{split['subj_000']}"

    again = make_or_load_split(list(reversed(SUBJECTS)), tmp_path / "other.csv", seed=3)
    assert again == split
    different = make_or_load_split(SUBJECTS, tmp_path / "seed4.csv", seed=4)
    assert different != split

    # Reuse: the file wins over new fractions or seeds.
    split_file.write_text(split_file.read_text().replace("subj_000," + split["subj_000"], "subj_000,Inference"))
    reused = make_or_load_split(SUBJECTS, split_file, fractions=(0.5, 0.25, 0.25), seed=99)
    assert reused["subj_000"] == "Inference"


@pytest.mark.parametrize("n", [3, 4, 5, 7])
def test_split_every_phase_non_empty(tmp_path, n):
    split = make_or_load_split(SUBJECTS[:n], tmp_path / "split.csv")
    assert set(split.values()) == {"Training", "Validation", "Inference"}


def test_split_mismatch_and_malformed_files(tmp_path):
    split_file = tmp_path / "dataset_split.csv"
    make_or_load_split(SUBJECTS[:5], split_file)
    with pytest.raises(ValueError, match=r"dataset_split.csv.*in the data but not in the file: 'subj_005'"):
        make_or_load_split(SUBJECTS[:6], split_file)
    with pytest.raises(ValueError, match=r"in the file but not in the data: 'subj_004'"):
        make_or_load_split(SUBJECTS[:4], split_file)

    split_file.write_text("subj_000,Training\nsubj_001,Testing\n")
    with pytest.raises(ValueError, match=r"line 2: unknown phase 'Testing' for subject 'subj_001'"):
        make_or_load_split(SUBJECTS[:2], split_file)
    split_file.write_text("subj_000,Training,extra\n")
    with pytest.raises(ValueError, match=r"line 1"):
        make_or_load_split(SUBJECTS[:1], split_file)
    with pytest.raises(ValueError, match="fractions"):
        make_or_load_split(SUBJECTS, tmp_path / "x.csv", fractions=(0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="repeated"):
        make_or_load_split(["a", "a", "b"], tmp_path / "y.csv")


def test_subsample_training(tmp_path):
    split = make_or_load_split(SUBJECTS, tmp_path / "split.csv")
    training = sorted(s for s, phase in split.items() if phase == "Training")
    kept = subsample_training(split, 0.1, seed=0)
    assert len(kept) == 2  # ceil(0.1 * 14)
    assert set(kept) <= set(training)
    assert kept == subsample_training(split, 0.1, seed=0)
    assert subsample_training(split, 1.0) == training
    with pytest.raises(ValueError, match="fraction"):
        subsample_training(split, 0.0)


# === Histogram standardisation ===


def _mr_volume(seed, gain, offset):
    rng = np.random.default_rng(seed)
    tissue = rng.gamma(shape=3.0, scale=1.0, size=(12, 12, 8))
    background = np.zeros_like(tissue)
    background[:3] = 1.0
    return np.where(background > 0, 0.05 * rng.random(tissue.shape), tissue) * gain + offset


def test_nyul_fit_transform_maps_landmarks_onto_reference():
    volumes = [_mr_volume(0, 100.0, 10.0), _mr_volume(1, 250.0, 40.0), _mr_volume(2, 60.0, 0.0)]
    standardiser = HistogramStandardisation().fit(volumes)
    reference = standardiser.reference_landmarks
    assert standardiser.percentiles.tolist() == [1.0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99.0]
    assert reference[0] == pytest.approx(0.0) and reference[-1] == pytest.approx(100.0)
    assert np.all(np.diff(reference) > 0)

    for volume in volumes:
        mask = mean_plus_mask(volume)
        mapped = standardiser.transform(volume)
        assert mapped.dtype == np.float32 and mapped.shape == volume.shape
        np.testing.assert_allclose(standardiser.image_landmarks(mapped, mask), reference, atol=0.05)

    # Monotonic, with linear extrapolation beyond the cutoffs.
    volume = volumes[0]
    source = standardiser.image_landmarks(volume)
    mapped = standardiser.transform(volume).astype(np.float64)
    order = np.argsort(volume.ravel())
    assert np.all(np.diff(mapped.ravel()[order]) >= -1e-4)
    above = volume > source[-1]
    slope = (reference[-1] - reference[-2]) / (source[-1] - source[-2])
    assert np.any(above)
    np.testing.assert_allclose(mapped[above], reference[-1] + (volume[above] - source[-1]) * slope, rtol=1e-5)
    below = volume < source[0]
    assert np.any(below) and np.all(mapped[below] < reference[0])


def test_nyul_quartile_and_masks():
    volumes = [_mr_volume(3, 100.0, 0.0), _mr_volume(4, 30.0, 5.0)]
    masks = [v > np.percentile(v, 30) for v in volumes]
    standardiser = HistogramStandardisation(cutoff=(0.05, 0.95), landmarks="quartile", scale=(0, 10)).fit(
        volumes, masks
    )
    assert standardiser.percentiles.tolist() == [5.0, 25.0, 50.0, 75.0, 95.0]
    assert standardiser.reference_landmarks[-1] == pytest.approx(10.0)
    mapped = standardiser.transform(volumes[1], masks[1])
    np.testing.assert_allclose(
        standardiser.image_landmarks(mapped, masks[1]), standardiser.reference_landmarks, atol=0.01
    )
    with pytest.raises(ValueError, match="landmarks"):
        HistogramStandardisation(landmarks="decile")
    with pytest.raises(ValueError, match="cutoff"):
        HistogramStandardisation(cutoff=(0.2, 0.99))
    with pytest.raises(ValueError, match="before fit"):
        HistogramStandardisation().transform(volumes[0])
    with pytest.raises(ValueError, match="same intensity"):
        HistogramStandardisation().fit([np.concatenate([np.zeros(50), np.ones(50)])])


def test_nyul_save_load_identical_and_malformed(tmp_path):
    volumes = [_mr_volume(5, 80.0, 3.0), _mr_volume(6, 120.0, 0.0)]
    standardiser = HistogramStandardisation().fit(volumes)
    path = standardiser.save(tmp_path / "model" / "histogram_ref_file.txt")
    text = path.read_text()
    assert "cutoff 0.01 0.99" in text and "landmarks percentile" in text and "reference " in text
    loaded = HistogramStandardisation.load(path)
    np.testing.assert_array_equal(loaded.reference_landmarks, standardiser.reference_landmarks)
    np.testing.assert_array_equal(loaded.transform(volumes[0]), standardiser.transform(volumes[0]))

    lines = text.splitlines()
    bad = tmp_path / "bad.txt"
    reference_line = next(i for i, line in enumerate(lines) if line.startswith("reference"))
    bad.write_text("\n".join(lines[:reference_line] + ["reference 0 1 two"] + lines[reference_line + 1 :]))
    with pytest.raises(ValueError, match=rf"bad.txt, line {reference_line + 1}: reference expects numbers"):
        HistogramStandardisation.load(bad)
    bad.write_text("\n".join(lines[:reference_line] + ["reference 0 1 2"]))
    with pytest.raises(ValueError, match=rf"line {reference_line + 1}: reference expects 11 finite numbers"):
        HistogramStandardisation.load(bad)
    bad.write_text(text + "colour blue\n")
    with pytest.raises(ValueError, match=rf"line {len(lines) + 1}: unknown key 'colour'"):
        HistogramStandardisation.load(bad)
    bad.write_text("\n".join(line for line in lines if not line.startswith("scale")))
    with pytest.raises(ValueError, match=r"missing entries \['scale'\]"):
        HistogramStandardisation.load(bad)
    with pytest.raises(FileNotFoundError):
        HistogramStandardisation.load(tmp_path / "absent.txt")


# === Intensity ===


def test_whiten_and_ct_mapping():
    volume = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    whitened = whiten(volume)
    assert whitened.dtype == np.float32
    assert whitened.mean() == pytest.approx(0.0, abs=1e-6) and whitened.std() == pytest.approx(1.0, abs=1e-5)
    mask = volume >= 12
    masked = whiten(volume, mask)
    assert masked[mask].mean() == pytest.approx(0.0, abs=1e-6) and masked[mask].std() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(whiten(np.full((3, 3), 7.0)), np.zeros((3, 3)))

    hu = np.array([-1024.0, 0.0, 1024.0, 3000.0])
    np.testing.assert_allclose(ct_to_target(hu), [0.0, 1.0, 2.0, 3000.0 / 1024 + 1])
    np.testing.assert_allclose(target_to_ct(ct_to_target(hu)), hu)
    assert float(target_to_ct(tf.constant(2.0))) == pytest.approx(1024.0)


# === Augmentation ===


def _label_coded_sample(size=48):
    label = np.zeros((size, size, 1), np.int32)
    label[6:20, 10:40] = 1
    label[24:44, 4:22] = 2
    label[28:40, 28:44] = 3
    return {"image": (label * 10).astype(np.float32), "label": label}


def test_random_scale_rotate_same_transform_on_every_entry():
    sample = _label_coded_sample()
    seed = tf.constant([11, 3], tf.int32)
    both_nearest = random_scale_rotate(sample, seed, nearest={"image", "label"})
    np.testing.assert_array_equal(both_nearest["image"].numpy(), both_nearest["label"].numpy() * 10)
    assert not np.array_equal(both_nearest["label"].numpy(), sample["label"])  # it did move

    result = random_scale_rotate(sample, seed)
    label = result["label"].numpy()
    assert result["label"].dtype == tf.int32 and label.shape == (48, 48, 1)
    assert set(np.unique(label)) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(label, both_nearest["label"].numpy())  # same draw for the same seed
    image = result["image"].numpy()
    assert np.mean(np.round(image / 10.0) == label) > 0.95  # bilinear image stays aligned with the label
    assert len(np.unique(image)) > 4  # bilinear blends at the edges


def test_random_scale_rotate_identity_and_seeds():
    sample = _label_coded_sample()
    identity = random_scale_rotate(sample, [1, 2], scale_range=0.0, max_degrees=0.0)
    np.testing.assert_array_equal(identity["image"].numpy(), sample["image"])
    first = random_scale_rotate(sample, [5, 6])["image"].numpy()
    np.testing.assert_array_equal(random_scale_rotate(sample, [5, 6])["image"].numpy(), first)
    assert not np.array_equal(random_scale_rotate(sample, [5, 7])["image"].numpy(), first)
    with pytest.raises(ValueError, match="scale_range"):
        random_scale_rotate(sample, [1, 2], scale_range=1.5)
    with pytest.raises(ValueError, match=r"'image'.*\[height, width, channels\]"):
        random_scale_rotate({"image": np.zeros((4, 4))}, [1, 2])
    with pytest.raises(ValueError, match="same height and width"):
        random_scale_rotate({"a": np.zeros((4, 4, 1)), "b": np.zeros((5, 4, 1))}, [1, 2])


def test_random_crop_pad_shapes_mask_and_alignment():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(150, 140, 2)).astype(np.float32)
    label = np.arange(150 * 140, dtype=np.int32).reshape(150, 140, 1)
    crops, mask = random_crop_pad({"image": image, "label": label}, tf.constant([3, 9]))
    assert crops["image"].shape == (136, 136, 2) and crops["label"].shape == (136, 136, 1)
    assert crops["label"].dtype == tf.int32 and mask.shape == (136, 136, 1) and mask.dtype == tf.float32
    mask = mask.numpy()
    assert mask.sum() == 128 * 128
    assert mask[:4].sum() == 0 and mask[-4:].sum() == 0 and mask[4:132, 4:132].min() == 1.0
    codes = crops["label"].numpy()[4:132, 4:132, 0]
    top, left = divmod(int(codes[0, 0]), 140)
    np.testing.assert_array_equal(crops["image"].numpy()[4:132, 4:132], image[top : top + 128, left : left + 128])
    np.testing.assert_array_equal(codes, label[top : top + 128, left : left + 128, 0])


def test_random_crop_pad_small_slice_is_padded_first():
    crops, mask = random_crop_pad({"image": np.ones((100, 140, 1), np.float32)}, [0, 1])
    assert mask.numpy().sum() == 100 * 128
    np.testing.assert_array_equal(crops["image"].numpy(), mask.numpy())
    assert mask.numpy()[:, :, 0].sum(axis=1).max() == 128
    with pytest.raises(ValueError, match="pad_to"):
        random_crop_pad({"image": np.ones((8, 8, 1))}, [0, 1], crop=(8, 8), pad_to=(4, 4))


def test_augmentation_inside_tf_data_and_tf_function():
    sample = _label_coded_sample(size=40)
    images = np.stack([sample["image"]] * 3)
    labels = np.stack([sample["label"]] * 3)

    def augment(index, element):
        seed = tf.stack([tf.cast(index, tf.int64), tf.constant(17, tf.int64)])
        element = random_scale_rotate(element, seed)
        element, mask = random_crop_pad(element, tf.random.experimental.stateless_fold_in(seed, 1), (32, 32), (40, 40))
        return element["image"], element["label"], mask

    dataset = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels}).enumerate().map(augment)
    assert dataset.element_spec[0].shape == (40, 40, 1) and dataset.element_spec[2].shape == (40, 40, 1)
    batches = list(dataset.batch(3))
    image, label, mask = (t.numpy() for t in batches[0])
    assert image.shape == (3, 40, 40, 1) and mask.sum() == 3 * 32 * 32
    assert set(np.unique(label)) <= {0, 1, 2, 3}
    assert not np.array_equal(label[0], label[1])  # each element gets its own draw
    again = next(iter(dataset.batch(3)))
    np.testing.assert_array_equal(again[1].numpy(), label)  # reproducible

    @tf.function(input_signature=[tf.TensorSpec([None, None, 1], tf.float32), tf.TensorSpec([2], tf.int32)])
    def graph_augment(image, seed):
        rotated = random_scale_rotate({"image": image, "label": tf.cast(image, tf.int32)}, seed)
        crops, mask = random_crop_pad(rotated, seed, crop=(16, 16), pad_to=(20, 20))
        return crops["image"], mask

    out, mask = graph_augment(tf.ones([24, 30, 1]), tf.constant([1, 2]))
    assert out.shape == (20, 20, 1) and float(tf.reduce_sum(mask)) == 256.0


# === Slices ===


def test_slices_round_trip_and_padding():
    volume = np.random.default_rng(0).normal(size=(13, 10, 6)).astype(np.float32)
    slices = volume_to_slices(volume)
    assert slices.shape == (6, 13, 10)
    np.testing.assert_array_equal(slices[2], volume[:, :, 2])
    np.testing.assert_array_equal(slices_to_volume(slices), volume)

    channels = np.zeros((13, 10, 6, 2))
    assert volume_to_slices(channels).shape == (6, 13, 10, 2)
    assert slices_to_volume(volume_to_slices(channels)).shape == (13, 10, 6, 2)

    size = padded_size(slices.shape[1:3], multiple=8)
    assert size == (16, 16)
    padded = pad_slices_to(slices, size, constant_value=-1.0)
    assert padded.shape == (6, 16, 16)
    assert padded[0, 0, 0] == -1.0 and padded[0, 1, 3] == slices[0, 0, 0]  # margins (1, 2) and (3, 3)
    np.testing.assert_array_equal(crop_slices_from(padded, slices.shape[1:3]), slices)
    np.testing.assert_array_equal(
        slices_to_volume(crop_slices_from(pad_slices_to(slices[..., None], size), (13, 10)))[..., 0], volume
    )
    with pytest.raises(ValueError, match=r"Received shape: \(3, 4\)"):
        volume_to_slices(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="smaller size"):
        pad_slices_to(slices, (8, 8))
