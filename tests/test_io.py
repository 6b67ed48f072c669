"""Tests for sfg_keras.io: NIfTI round trips, geometry checks and NiftyNet-style file matching."""

import csv

import nibabel as nib
import numpy as np
import pytest

from sfg_keras.io import (
    InputSection,
    NiftiVolume,
    check_same_geometry,
    load_nifti,
    match_section,
    match_subjects,
    read_file_list,
    save_nifti,
    write_file_list,
)


def _affine():
    affine = np.array(
        [
            [-1.5, 0.0, 0.1, 90.0],
            [0.0, 1.2, 0.0, -126.0],
            [0.0, 0.05, 3.0, -72.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    return affine


def _write_reference(path, shape=(6, 5, 4)):
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_xyzt_units("mm", "sec")
    header["descrip"] = b"reference ct"
    data = (np.arange(np.prod(shape)).reshape(shape) * 7 - 500).astype(np.int16)
    image = nib.Nifti1Image(data, _affine(), header)
    image.header.set_sform(_affine(), code=1)
    image.header.set_qform(_affine(), code=1)
    nib.save(image, str(path))
    return data


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


# === NIfTI ===


def test_load_nifti_returns_float32_data_affine_and_header(tmp_path):
    data = _write_reference(tmp_path / "ct.nii.gz")
    volume = load_nifti(tmp_path / "ct.nii.gz")
    assert isinstance(volume, NiftiVolume)
    assert volume.data.dtype == np.float32
    np.testing.assert_array_equal(volume.data, data.astype(np.float32))
    np.testing.assert_allclose(volume.affine, _affine(), atol=1e-5)
    assert volume.header["descrip"] == b"reference ct"
    assert volume.path == str(tmp_path / "ct.nii.gz")
    assert volume.spatial_shape == (6, 5, 4)


def test_save_load_round_trip_keeps_affine_header_and_shape(tmp_path):
    _write_reference(tmp_path / "ct.nii.gz")
    reference = load_nifti(tmp_path / "ct.nii.gz")
    prediction = np.random.default_rng(0).normal(size=(6, 5, 4)).astype(np.float64) * 300.0

    written = save_nifti(tmp_path / "out" / "deep" / "sct.nii.gz", prediction, reference=reference)
    assert written.is_file()
    loaded = load_nifti(written)
    assert loaded.data.shape == (6, 5, 4)
    np.testing.assert_allclose(loaded.data, prediction.astype(np.float32))
    np.testing.assert_allclose(loaded.affine, reference.affine, atol=1e-6)
    assert loaded.header.get_data_dtype() == np.float32
    assert loaded.header["descrip"] == b"reference ct"
    assert loaded.header.get_xyzt_units() == ("mm", "sec")
    assert int(loaded.header["sform_code"]) == 1
    assert int(loaded.header["qform_code"]) == 1
    np.testing.assert_allclose(loaded.header.get_zooms(), reference.header.get_zooms(), atol=1e-6)


def test_save_nifti_label_dtypes_and_channels(tmp_path):
    _write_reference(tmp_path / "ct.nii.gz")
    reference = load_nifti(tmp_path / "ct.nii.gz")
    labels = np.random.default_rng(1).integers(0, 5, size=(6, 5, 4))
    path = save_nifti(tmp_path / "labels.nii.gz", labels, reference=reference)
    image = nib.load(str(path))
    assert image.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(image.dataobj), labels)

    path = save_nifti(tmp_path / "signed.nii", labels - 3, reference=reference)
    assert nib.load(str(path)).get_data_dtype() == np.int16

    float_labels = labels.astype(np.float32) + 0.2
    path = save_nifti(tmp_path / "rounded.nii.gz", float_labels, reference=reference, dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(nib.load(str(path)).dataobj), labels)

    stack = np.zeros((6, 5, 4, 3), np.float32)
    path = save_nifti(tmp_path / "uncertainty.nii.gz", stack, reference=reference)
    assert load_nifti(path).data.shape == (6, 5, 4, 3)


def test_save_nifti_explicit_affine_and_errors(tmp_path):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    path = save_nifti(tmp_path / "plain.nii.gz", np.ones((3, 3, 3), np.float32), affine=affine)
    np.testing.assert_allclose(load_nifti(path).affine, affine)
    with pytest.raises(ValueError, match=r"\.nii or \.nii\.gz"):
        save_nifti(tmp_path / "volume.npy", np.ones((3, 3, 3)))
    with pytest.raises(ValueError, match=r"as uint8: values span \[0\.0, 300\.0\]"):
        save_nifti(tmp_path / "labels.nii.gz", np.array([[[0.0, 300.0]]]), dtype=np.uint8)
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        load_nifti(tmp_path / "missing.nii.gz")
    (tmp_path / "broken.nii.gz").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.nii.gz"):
        load_nifti(tmp_path / "broken.nii.gz")


def test_check_same_geometry_names_subject_sections_and_shapes():
    volume = NiftiVolume(np.zeros((4, 4, 3), np.float32), np.eye(4), None, "mr.nii.gz")
    same = NiftiVolume(np.zeros((4, 4, 3), np.float32), np.eye(4) + 5e-5, None, "ct.nii.gz")
    check_same_geometry({"MR": volume, "CT": same}, subject="subj_001")

    smaller = NiftiVolume(np.zeros((4, 4, 2), np.float32), np.eye(4), None, "ct.nii.gz")
    with pytest.raises(ValueError, match=r"subj_007.*\[MR\].*\[CT\].*\(4, 4, 3\).*\(4, 4, 2\)"):
        check_same_geometry({"MR": volume, "CT": smaller}, subject="subj_007")

    shifted_affine = np.eye(4)
    shifted_affine[0, 3] = 0.5
    shifted = NiftiVolume(np.zeros((4, 4, 3), np.float32), shifted_affine, None, "label.nii.gz")
    with pytest.raises(ValueError, match=r"subj_002.*\[MR\] and \[label\].*affines") as error:
        check_same_geometry({"MR": volume, "label": shifted}, subject="subj_002")
    assert "0.5" in str(error.value)


# === File matching ===


@pytest.fixture
def dataset(tmp_path):
    data = tmp_path / "data"
    for subject in ("subj_001", "subj_002", "subj_003"):
        _touch(data / "mr" / f"{subject}_mr.nii.gz")
        _touch(data / "ct" / subject / f"{subject}_ct.nii.gz")
        _touch(data / "ct" / subject / f"{subject}_ct_mask.nii.gz")
        _touch(data / "labels" / f"{subject}_seg.nii")
    _touch(data / "mr" / "notes.txt")
    _touch(data / "mr" / ".hidden_mr.nii.gz")
    return tmp_path


def test_match_section_contains_not_contains_and_ids(dataset):
    ct = InputSection("CT", ["data/ct"], ["_ct"], ["mask"])
    mapping = match_section(ct, base_dir=dataset)
    assert list(mapping) == ["subj_001", "subj_002", "subj_003"]
    assert mapping["subj_002"] == str((dataset / "data/ct/subj_002/subj_002_ct.nii.gz").absolute())

    mr = InputSection("MR", "data/mr", "_mr")  # comma strings are accepted
    assert list(match_section(mr, base_dir=dataset)) == ["subj_001", "subj_002", "subj_003"]


def test_match_section_removefromid_regex(dataset):
    section = InputSection("label", ["data/labels"], ["_seg"], filename_removefromid=r"^subj_0*")
    assert list(match_section(section, base_dir=dataset)) == ["1", "2", "3"]


def test_match_section_extensions_absolute_paths_and_analyze_pairs(tmp_path):
    folder = tmp_path / "images"
    _touch(folder / "a_T1.NII.GZ")
    _touch(folder / "b_T1.jpeg")
    _touch(folder / "c_T1.hdr")
    _touch(folder / "c_T1.img")
    _touch(folder / "d_T1.img")
    _touch(folder / "e_T1.nii.gz.bak")
    mapping = match_section(InputSection("T1", [str(folder)], ["_T1"]), base_dir="/nonexistent")
    assert list(mapping) == ["a", "b", "c", "d"]
    assert mapping["c"].endswith("c_T1.hdr")
    assert mapping["d"].endswith("d_T1.img")


def test_match_section_duplicate_ids_name_both_files(dataset):
    _touch(dataset / "data" / "ct_rescan" / "subj_002_ct.nii")
    section = InputSection("CT", ["data/ct", "data/ct_rescan"], ["_ct"], ["mask"])
    with pytest.raises(ValueError, match=r"\[CT\].*'subj_002'.*subj_002_ct.nii.gz.*ct_rescan/subj_002_ct.nii'"):
        match_section(section, base_dir=dataset)
    # Without filename_not_contains the mask files are distinct subjects ("subj_001_mask"), not duplicates.
    assert "subj_001_mask" in match_section(InputSection("CT", ["data/ct"], ["_ct"]), base_dir=dataset)


def test_match_section_overlapping_folders_are_not_duplicates(dataset):
    section = InputSection("MR", ["data/mr", "data"], ["_mr"])
    assert len(match_section(section, base_dir=dataset)) == 3


def test_match_section_missing_folder_and_no_match(dataset):
    with pytest.raises(FileNotFoundError, match=r"\[CT\].*'data/nowhere'"):
        match_section(InputSection("CT", ["data/nowhere"], ["_ct"]), base_dir=dataset)
    with pytest.raises(ValueError, match=r"section \[PET\].*filename_contains=\['_pet'\]"):
        match_section(InputSection("PET", ["data"], ["_pet"]), base_dir=dataset)
    with pytest.raises(ValueError, match=r"\[CT\].*path_to_search is empty"):
        match_section(InputSection("CT"), base_dir=dataset)
    with pytest.raises(ValueError, match="filename_removefromid"):
        InputSection("CT", ["data"], filename_removefromid="(")


def test_csv_file_is_written_then_reused(dataset):
    section = InputSection("MR", ["data/mr"], ["_mr"], csv_file="model/MR.csv")
    first = match_section(section, base_dir=dataset)
    csv_path = dataset / "model" / "MR.csv"
    assert csv_path.is_file()
    with open(csv_path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert [row[0] for row in rows] == ["subj_001", "subj_002", "subj_003"]

    # Reuse: the list wins over the search, even if the folder disappears or changes.
    _touch(dataset / "data" / "mr" / "subj_004_mr.nii.gz")
    assert match_section(section, base_dir=dataset) == first

    # A hand-written list with a header and a relative path.
    custom = dataset / "lists" / "ct.csv"
    custom.parent.mkdir()
    custom.write_text("subject,path\nsubj_009,../data/mr/subj_001_mr.nii.gz\n")
    listed = match_section(InputSection("CT", csv_file=str(custom)), base_dir=dataset)
    assert list(listed) == ["subj_009"]
    assert listed["subj_009"].endswith("subj_001_mr.nii.gz")


def test_read_and_write_file_list_errors(tmp_path):
    image = _touch(tmp_path / "a.nii.gz")
    path = write_file_list({"b": image, "a": image}, tmp_path / "lists" / "x.csv")
    assert [line.split(",")[0] for line in path.read_text().splitlines()] == ["a", "b"]
    assert read_file_list(path) == {"a": str(image), "b": str(image)}

    bad = tmp_path / "bad.csv"
    bad.write_text(f"a,{image}\nb\n")
    with pytest.raises(ValueError, match=r"bad.csv, line 2"):
        read_file_list(bad)
    bad.write_text(f"a,{image}\na,{image}\n")
    with pytest.raises(ValueError, match=r"line 2: subject 'a' is listed twice"):
        read_file_list(bad)
    bad.write_text(f"a,{tmp_path / 'gone.nii.gz'}\n")
    with pytest.raises(FileNotFoundError, match=r"line 1.*'a'.*gone.nii.gz"):
        read_file_list(bad)


def test_match_subjects_joins_sections(dataset):
    sections = [
        InputSection("MR", ["data/mr"], ["_mr"]),
        InputSection("CT", ["data/ct"], ["_ct"], ["mask"]),
        InputSection("label", ["data/labels"], ["_seg"]),
    ]
    rows = match_subjects(sections, base_dir=dataset)
    assert [row["subject"] for row in rows] == ["subj_001", "subj_002", "subj_003"]
    assert set(rows[0]) == {"subject", "MR", "CT", "label"}
    assert rows[2]["CT"].endswith("subj_003_ct.nii.gz")
    assert rows[2]["label"].endswith("subj_003_seg.nii")


def test_match_subjects_missing_ct_names_subject_and_section(dataset):
    (dataset / "data" / "ct" / "subj_003" / "subj_003_ct.nii.gz").unlink()
    sections = [
        InputSection("MR", ["data/mr"], ["_mr"]),
        InputSection("CT", ["data/ct"], ["_ct"], ["mask"]),
    ]
    with pytest.raises(
        ValueError,
        match=r"subject 'subj_003' has \[MR\] but no \[CT\] \(section \[CT\], "
        r"path_to_search=\['data/ct'\]",
    ):
        match_subjects(sections, base_dir=dataset)


def test_match_subjects_optional_section_gives_none(dataset):
    (dataset / "data" / "labels" / "subj_002_seg.nii").unlink()
    sections = [
        InputSection("MR", ["data/mr"], ["_mr"]),
        InputSection("label", ["data/labels"], ["_seg"]),
    ]
    rows = match_subjects(sections, base_dir=dataset, required=["MR"])
    assert [row["label"] is None for row in rows] == [False, True, False]
    with pytest.raises(ValueError, match=r"subject 'subj_002' has \[MR\] but no \[label\]"):
        match_subjects(sections, base_dir=dataset)
    with pytest.raises(ValueError, match=r"\['PET'\]"):
        match_subjects(sections, base_dir=dataset, required=["PET"])
    with pytest.raises(ValueError, match="unique"):
        match_subjects([sections[0], sections[0]], base_dir=dataset)
