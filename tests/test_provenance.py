"""Nothing silent about where a result came from (issue 20) and inference on any data (issue 18, item 1), through
the `sfg_run` command line on the mr_ct application.

One tiny model is trained; every case then runs `sfg_run` on its own copy of that model_dir (a copied model_dir must
work on its own files, which is one of the guarantees), with `model_dir` hashed before and after each command. The
commands run in one subprocess (`sfg_run_batch.py`: `sfg_keras.cli.main`, the console script's function, one command
after the other as `sfg_run demo` does), which pays TensorFlow's import once for the ~30 commands. Each case is then
one test asserting the exit status, the file, subject or checkpoint named, and that a refused command changed
nothing. The last test checks that no temporary file is left anywhere.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from mr_ct_inputs import MR_CT_INPUTS
from sfg_run_batch import Batch

from sfg_keras.io.atomic import _HOST_TAG as HOST_TAG

TESTS = Path(__file__).resolve().parent
FRACTIONS, SEED = (0.6, 0.2, 0.2), 1
#: The split the cohort gets with FRACTIONS and SEED (asserted by test_the_model_was_trained_as_expected).
TRAINING, VALIDATION, INFERENCE = ["subj_000", "subj_001", "subj_004"], ["subj_002"], ["subj_003"]

CONFIG = MR_CT_INPUTS + """[SYSTEM]
model_dir = {model_dir}
seed = {seed}
num_threads = 1

[NETWORK]
name = small_networks.small_dense_sfg_cnn
width_multiplier = 0.25
batch_size = 4
normalisation = True
whitening = True

[TRAINING]
lr = 0.003
max_iter = 4
save_every_n = 2
validation_every_n = -1
tensorboard_every_n = -1
exclude_fraction_for_validation = {fractions[1]}
exclude_fraction_for_inference = {fractions[2]}

[INFERENCE]
batch_size = 8
num_samples = 2
inference_mode = map

[MULTITASK]
image = MR
tasks = ct, organs
task_types = regression, segmentation
num_classes = 1, 5
labels = CT, LABEL

[MR_CT]
patch_size = 16, 16
padded_size = 24, 24
"""

#: Files that training writes: no inference or evaluation may change them.
TRAINING_FILES = ("dataset_split.csv", "run_record.json", "lineage.json", "run_settings.json", "training_files.json",
                  "histogram_ref_file.txt", "training_statistics.json", "model_info.json", "settings_train.txt",
                  ".input_scans.json", "models/model-2.keras", "models/model-4.keras")


# === Data ===


def _file(data: Path, section: str, subject: str) -> Path:
    return data / section / f"{subject}_{section.lower()}.nii.gz"


def _copy_subject(source: Path, subject: str, target: Path, new_id: str) -> None:
    for section in ("MR", "CT", "LABEL"):
        _file(target, section, new_id).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(_file(source, section, subject), _file(target, section, new_id))


def _rewrite(path: Path, change, dtype=None) -> None:
    image = nib.load(path)
    data = change(np.asarray(image.dataobj).astype(np.float64))
    header = image.header.copy()
    if dtype is not None:
        header.set_data_dtype(dtype)
        header.set_slope_inter(1.0, 0.0)
    nib.save(nib.Nifti1Image(data.astype(dtype or np.float32), image.affine, header), path)


def _make_data(cohort: Path, root: Path) -> dict[str, Path]:
    """The data folders of the cases (see each case)."""
    from sfg_keras.data.generators import make_pelvis_cohort

    folders = {name: root / name for name in ("new", "new_with_copy", "bad_references", "plus_one",
                                               "implausible", "loop")}
    make_pelvis_cohort(folders["new"], num_subjects=2, shape=(64, 64, 8), seed=7)  # ids subj_000/001 again!
    shutil.copytree(folders["new"], folders["new_with_copy"])
    _copy_subject(cohort, TRAINING[1], folders["new_with_copy"], "copy_009")  # a training subject, renamed
    shutil.copytree(folders["new"], folders["bad_references"])
    bad = folders["bad_references"]
    _rewrite(_file(bad, "CT", "subj_000"), lambda ct: np.where(np.arange(ct.size).reshape(ct.shape) == 7, np.nan, ct))
    _rewrite(_file(bad, "LABEL", "subj_000"), lambda labels: labels[:, :, :-1], np.uint8)
    _rewrite(_file(bad, "LABEL", "subj_001"), lambda labels: np.where(labels == 2, 9, labels), np.uint8)
    _rewrite(_file(bad, "CT", "subj_001"), lambda ct: ct + 1024, np.uint16)  # HU + 1024, stored unsigned
    shutil.copytree(cohort, folders["plus_one"])
    _copy_subject(folders["new"], "subj_000", folders["plus_one"], "subj_new")  # a subject the split never saw
    shutil.copytree(cohort, folders["implausible"])
    bad = folders["implausible"]
    _rewrite(_file(bad, "CT", TRAINING[0]), lambda ct: ct + 1024, np.uint16)
    _rewrite(_file(bad, "MR", TRAINING[1]), np.zeros_like)
    _rewrite(_file(bad, "MR", VALIDATION[0]), lambda mr: np.where(np.arange(mr.size).reshape(mr.shape) == 99,
                                                                   3e38, mr))
    shutil.copytree(cohort, folders["loop"])
    loop = _file(folders["loop"], "MR", "subj_009")
    loop.symlink_to(loop.name)
    return folders


# === The commands ===


def _sources(data: Path) -> list[str]:
    return [f"--{section}.path_to_search={data / section}" for section in ("MR", "CT", "LABEL")]


def _jobs(root: Path, config: Path, data: dict[str, Path]) -> Batch:
    jobs = Batch(root, config)
    model = root / "model"
    jobs.run("train", "train", model)
    jobs.run("infer", "inference", model)  # the predictions the relocation cases copy

    # Issue 20 item 1 / issue 18 item 1: splits and subjects.
    deleted = jobs.copy(model, "split_deleted")
    jobs.op("unlink", deleted / "dataset_split.csv")
    jobs.run("split_file_deleted", "inference", deleted)
    redrawn = jobs.copy(model, "split_redrawn")
    jobs.op("replace", redrawn / "dataset_split.csv", f"{TRAINING[0]},Training", f"{TRAINING[0]},Inference")
    jobs.run("split_file_redrawn", "inference", redrawn)
    jobs.run("training_subject_copied_into_another_folder", "inference", model,
             f"--input_dir={data['new_with_copy']}", f"--save_seg_dir={root / 'refused_output'}",
             watch=(root / "refused_output",))
    other = jobs.copy(model, "another_folder")
    jobs.run("new_subjects_in_another_folder", "inference", other, f"--input_dir={data['new']}")
    jobs.run("evaluation_of_another_folder", "evaluation", other, f"--input_dir={data['new']}")
    jobs.run("evaluation_against_other_files", "evaluation", other, "--save_csv_dir=evaluation_mixed")
    jobs.run("bad_references_at_evaluation", "evaluation", other, f"--input_dir={data['bad_references']}",
             "--save_csv_dir=evaluation_bad")
    not_in_split = jobs.copy(model, "not_in_split")
    jobs.run("new_subject_not_in_the_split", "inference", not_in_split, *_sources(data["plus_one"]))
    on_purpose = jobs.copy(model, "on_purpose")
    jobs.run("training_subjects_inferred_on_purpose", "inference", on_purpose, "--dataset_to_infer=all")
    jobs.run("trained_on_subjects_are_not_scored", "evaluation", on_purpose)
    jobs.op("replace", on_purpose / "output" / "inferred.csv", ",Training,yes,", ",Training,no,")
    jobs.run("unmarked_training_subject_is_refused", "evaluation", on_purpose)

    # Item 2: relocation. The source's predictions change after the copy; the copy reads its own.
    copied = jobs.copy(model, "copied")
    jobs.op("zero_nifti", model / "output" / f"ct_mean_{INFERENCE[0]}_niftynet_out.nii.gz")
    jobs.run("copied_model_dir_reads_its_own_predictions", "evaluation", copied)
    jobs.op("copytree", model, root / "to_move")
    moved = root / "elsewhere" / "moved"
    jobs.op("move", root / "to_move", moved)
    jobs.run("moved_model_dir_evaluates", "evaluation", moved)
    jobs.run("moved_model_dir_infers", "inference", moved, "--save_seg_dir=output_again")

    # Items 3 and 5: branching, a corrupt newest checkpoint, leftovers of killed runs.
    branch = jobs.copy(model, "branch")
    jobs.run("starting_iter_with_later_checkpoints", "train", branch, "--starting_iter=2", "--max_iter=3")
    jobs.run("archive_branch_and_continue", "train", branch, "--starting_iter=2", "--max_iter=3",
             "--archive_branch=first-try")
    jobs.run("inference_follows_the_current_lineage", "inference", branch, "--save_seg_dir=output_lineage")
    jobs.op("truncate", branch / "models" / "model-3.keras")
    jobs.run("corrupt_newest_checkpoint_at_inference", "inference", branch, "--save_seg_dir=output_corrupt")
    jobs.op("write", branch / "models" / ".model-4.keras.k3j4h5g6.tmp.keras", "left by an older version")
    dead_pid = 2**22 + 5  # above the default pid_max: no process has it
    jobs.op("write", branch / "output" / f".ct_x.nii.gz.{HOST_TAG}-{dead_pid}.abcdefgh.tmp.nii.gz", "killed")
    jobs.run("corrupt_newest_checkpoint_at_resume", "train", branch, "--starting_iter=-1", "--max_iter=4")

    # Items 4 and 6: inputs in the wrong unit, blank or extreme; settings that cannot be right.
    fresh = root / "fresh"
    jobs.run("implausible_training_inputs", "train", fresh, "--normalisation=False", *_sources(data["implausible"]))
    jobs.run("symlink_loop", "train", fresh, *_sources(data["loop"]))
    jobs.run("batch_larger_than_the_data", "train", fresh, "--NETWORK.batch_size=1000")
    jobs.run("bone_label_names_another_tissue", "train", fresh,
             "--label_names=background,prostate,bone,bladder,rectum")
    return jobs


@pytest.fixture(scope="module")
def results(cohort, tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("provenance")
    config = root / "run.ini"
    config.write_text(CONFIG.format(data=cohort, model_dir=root / "model", seed=SEED, fractions=FRACTIONS))
    data = _make_data(cohort, root / "data")
    results = _jobs(root, config, data).execute()
    return {**results, "_root": root, "_data": data}


def _ok(result: dict) -> None:
    assert result["returncode"] == 0, f"{result['name']}: exit {result['returncode']}\n{result['stderr'][-4000:]}"


def _refused(result: dict, *named: str) -> str:
    """Asserts exit status 2, no traceback, every `named` text in the message, and an unchanged model_dir."""
    stderr = result["stderr"]
    assert result["returncode"] == 2, f"{result['name']}: exit {result['returncode']}\n{stderr[-4000:]}"
    assert "Traceback" not in stderr and "unexpected error" not in stderr, stderr[-4000:]
    for text in named:
        assert text in stderr, f"{result['name']}: {text!r} not in\n{stderr[-4000:]}"
    assert result["after"] == result["before"], f"{result['name']}: a refused command changed a watched folder"
    return stderr


def _training_files(result: dict, when: str) -> dict:
    return {name: digest for name, digest in result[when]["model_dir"].items() if name in TRAINING_FILES}


def _inferred(model_dir: Path, output: str = "output") -> list[dict]:
    with open(model_dir / output / "inferred.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _split_bytes(result: dict) -> tuple[str, str]:
    return result["before"]["model_dir"]["dataset_split.csv"], result["after"]["model_dir"]["dataset_split.csv"]


# === The model ===


def test_the_model_was_trained_as_expected(results, cohort):
    _ok(results["train"])
    model_dir = results["_root"] / "model"
    record = json.loads((model_dir / "run_record.json").read_text())
    assert sorted(record["trained_on"]) == TRAINING
    assert {phase: sorted(s for s, p in record["split"].items() if p == phase) for phase in
            ("Training", "Validation", "Inference")} == {"Training": TRAINING, "Validation": VALIDATION,
                                                         "Inference": INFERENCE}
    entry = record["trained_on"][TRAINING[0]]["MR"]
    assert not os.path.isabs(entry["path"])  # relative to model_dir
    assert (model_dir / entry["path"]).resolve() == _file(cohort, "MR", TRAINING[0]).resolve()
    lineage = json.loads((model_dir / "lineage.json").read_text())
    assert list(lineage["checkpoints"]) == ["models/model-2.keras", "models/model-4.keras"]


# === Item 1 (issue 20) and item 1 (issue 18): splits and subjects ===


def test_deleted_split_file_uses_the_recorded_split_and_writes_none(results):
    result = results["split_file_deleted"]
    _ok(result)
    assert "dataset_split.csv does not exist: inference uses the split recorded in run_record.json" in result["stdout"]
    assert "dataset_split.csv" not in result["after"]["model_dir"]  # never drawn again
    model_dir = results["_root"] / "split_deleted"
    assert [row["subject"] for row in _inferred(model_dir)] == INFERENCE
    assert _training_files(result, "after") == _training_files(result, "before")


def test_redrawn_split_file_listing_a_training_subject_as_held_out_is_refused(results):
    _refused(results["split_file_redrawn"], f"'{TRAINING[0]}': Training when trained, Inference in the file",
             "no longer lists as Training", "Restore the split file")


def test_a_training_subject_copied_into_another_folder_is_refused_by_content(results):
    stderr = _refused(results["training_subject_copied_into_another_folder"], "'copy_009' (new)",
                      f"has the content of the [MR] file of training subject '{TRAINING[1]}'",
                      "dataset_to_infer = training")
    assert "subj_000" not in stderr.split("nothing was written:")[1].split("Remove")[0]  # new ids are not compared
    assert not (results["_root"] / "refused_output").exists()


def test_inference_on_new_subjects_in_another_folder_changes_no_training_file(results):
    result = results["new_subjects_in_another_folder"]
    _ok(result)
    assert "inference of 2 subjects from [INFERENCE] input_dir" in result["stdout"] and "(2 new)" in result["stdout"]
    before, after = _split_bytes(result)
    assert before == after  # the split file byte-identical
    assert _training_files(result, "after") == _training_files(result, "before")
    rows = _inferred(results["_root"] / "another_folder")
    # The same ids as two training subjects, but other files: new subjects, inferred.
    assert [(row["subject"], row["phase"], row["trained_on"]) for row in rows] == [
        ("subj_000", "new", "no"), ("subj_001", "new", "no")]
    evaluation = results["evaluation_of_another_folder"]
    _ok(evaluation)
    with open(results["_root"] / "another_folder" / "evaluation" / "mr_ct_metrics.csv", newline="") as handle:
        assert [row["subject"] for row in csv.DictReader(handle)] == ["subj_000", "subj_001"]
    assert _training_files(evaluation, "after") == _training_files(evaluation, "before")


def test_a_subject_not_in_the_split_is_inferred_with_the_held_out_ones(results):
    result = results["new_subject_not_in_the_split"]
    _ok(result)
    before, after = _split_bytes(result)
    assert before == after
    rows = _inferred(results["_root"] / "not_in_split")
    assert [(row["subject"], row["phase"]) for row in rows] == [(INFERENCE[0], "Inference"), ("subj_new", "new")]
    assert _training_files(result, "after") == _training_files(result, "before")


def test_evaluation_refuses_predictions_made_from_other_files(results):
    _refused(results["evaluation_against_other_files"], "were made from other files than the ones evaluation finds",
             "'subj_000': predicted from a file with SHA-256", "input_dir")


def test_trained_on_subjects_inferred_on_purpose_are_marked_and_never_scored(results):
    _ok(results["training_subjects_inferred_on_purpose"])
    record = json.loads((results["_root"] / "on_purpose" / "output" / "inference_record.json").read_text())
    assert {subject: row["trained_on"] for subject, row in record["subjects"].items()} == {
        **dict.fromkeys(TRAINING, "yes"), **dict.fromkeys(VALIDATION + INFERENCE, "no")}
    evaluation = results["trained_on_subjects_are_not_scored"]
    _ok(evaluation)
    assert "evaluation leaves out 3 subject(s) the model was trained on" in evaluation["stdout"]
    with open(results["_root"] / "on_purpose" / "evaluation" / "mr_ct_metrics.csv", newline="") as handle:
        assert sorted(row["subject"] for row in csv.DictReader(handle)) == sorted(VALIDATION + INFERENCE)


def test_a_training_subject_not_marked_as_such_is_never_scored(results):
    _refused(results["unmarked_training_subject_is_refused"], f"'{TRAINING[0]}': it is a training subject in "
             "run_record.json", "not marked trained_on = yes")


# === Item 2: relocation ===


def test_a_copied_model_dir_evaluates_its_own_predictions(results, cohort):
    _ok(results["copied_model_dir_reads_its_own_predictions"])
    copied = results["_root"] / "copied"
    (row,) = _inferred(copied)
    assert row["ct_mean"] == f"ct_mean_{INFERENCE[0]}_niftynet_out.nii.gz"  # relative to the table's folder
    prediction = np.asarray(nib.load(copied / "output" / row["ct_mean"]).dataobj, np.float64)
    reference = np.asarray(nib.load(_file(cohort, "CT", INFERENCE[0])).dataobj, np.float64)
    with open(copied / "evaluation" / "mr_ct_metrics.csv", newline="") as handle:
        (metrics,) = list(csv.DictReader(handle))
    # The source's CT prediction was zeroed after the copy: the copy's MAE is that of its own file.
    assert float(metrics["mae"]) == pytest.approx(np.mean(np.abs(prediction - reference)), rel=1e-6)
    assert float(metrics["mae"]) != pytest.approx(np.mean(np.abs(reference)), rel=1e-3)


def test_a_moved_model_dir_evaluates_and_infers_with_its_own_files(results):
    _ok(results["moved_model_dir_evaluates"])
    result = results["moved_model_dir_infers"]
    _ok(result)
    moved = results["_root"] / "elsewhere" / "moved"
    record = json.loads((moved / "output_again" / "inference_record.json").read_text())
    assert record["checkpoint"]["file"] == "models/model-4.keras" and record["checkpoint"]["iteration"] == 4
    settings = (moved / "settings_inference.txt").read_text()
    assert "model_dir = .  " in settings and "histogram_ref_file = histogram_ref_file.txt" in settings
    assert str(results["_root"] / "model") not in settings


# === Item 3: branching is explicit ===


def test_starting_iter_with_later_checkpoints_is_refused_naming_them(results):
    _refused(results["starting_iter_with_later_checkpoints"], "--starting_iter=2 would continue from model-2.keras",
             "later checkpoints of another history: model-4.keras", "--archive_branch=NAME")


def test_archive_branch_moves_the_later_history_aside_and_inference_follows_the_current_one(results):
    _ok(results["archive_branch_and_continue"])
    assert "archived the history after iteration 2 (model-4.keras) as branch 'first-try'" in results[
        "archive_branch_and_continue"]["stdout"]
    result = results["inference_follows_the_current_lineage"]
    _ok(result)
    assert "Inference with the checkpoint of iteration 3" in result["stdout"]
    branch = results["_root"] / "branch"
    assert (branch / "branches" / "first-try" / "models" / "model-4.keras").is_file()
    record = json.loads((branch / "output_lineage" / "inference_record.json").read_text())
    assert record["checkpoint"]["history"] == ["models/model-3.keras", "models/model-2.keras"]


# === Item 5: crash-safe files ===


def test_a_corrupt_newest_checkpoint_is_named_and_the_newest_valid_one_used(results):
    result = results["corrupt_newest_checkpoint_at_inference"]
    _ok(result)
    assert "models/model-3.keras cannot be used: its size is" in result["stderr"]
    assert "Using model-2.keras, the newest valid checkpoint" in result["stderr"]
    assert "Inference with the checkpoint of iteration 2" in result["stdout"]


def test_resume_falls_back_removes_leftovers_and_follows_the_current_lineage(results):
    result = results["corrupt_newest_checkpoint_at_resume"]
    _ok(result)
    assert "Resuming from model-2.keras, the newest valid checkpoint" in result["stderr"]
    assert "removed 2 temporary file(s) left by a killed run" in result["stdout"]
    assert "training iterations 3..4" in result["stdout"]  # from model-2, not the archived model-4
    branch = results["_root"] / "branch"
    lineage = json.loads((branch / "lineage.json").read_text())
    assert lineage["checkpoints"]["models/model-4.keras"]["parent"] == "models/model-2.keras"
    assert lineage["checkpoints"]["models/corrupt/model-3.keras"]["removed"] == "set aside: invalid"
    assert lineage["checkpoints"]["branches/first-try/models/model-4.keras"]["run"] == lineage["runs"][0]["id"]
    assert sorted(p.name for p in (branch / "models").glob("*.keras")) == ["model-2.keras", "model-4.keras"]


# === Items 4 and 6: implausible inputs and settings ===


@pytest.mark.parametrize(("case", "texts"), [
    ("ct_stored_as_hu_plus_1024", [f"{TRAINING[0]}_ct.nii.gz", "cannot be Hounsfield units: no air below -900 HU",
                                   "stored as uint16 without a negative intercept",
                                   "[MR_CT] check_hounsfield = False"]),
    ("blank_mr_without_normalisation", [f"{TRAINING[1]}_mr.nii.gz", "[MR] is blank: every voxel is 0",
                                        "whatever [NETWORK] normalisation"]),
    ("mr_spike_of_3e38", [f"{VALIDATION[0]}_mr.nii.gz", "[MR] holds extreme intensities: 3e+38"]),
])
def test_implausible_training_inputs_are_refused_naming_file_range_and_key(results, case, texts):
    stderr = _refused(results["implausible_training_inputs"], "3 problems in the training and validation inputs",
                      "nothing was written")
    line = next((line for line in stderr.splitlines() if texts[0] in line), "")
    for text in texts[1:]:
        assert text in line, f"{case}: {text!r} not in {line!r}"
    assert results["implausible_training_inputs"]["after"]["model_dir"] is None  # no model_dir at all


@pytest.mark.parametrize(("case", "texts"), [
    ("nan_in_the_reference_ct", ["subj_000_ct.nii.gz", "holds 1 NaN"]),
    ("reference_labels_of_another_shape", ["subj_000_label.nii.gz", "different shapes"]),
    ("reference_label_9", ["subj_001_label.nii.gz", "holds values [9]", "integers in 0..4"]),
    ("reference_ct_in_hu_plus_1024", ["subj_001_ct.nii.gz", "cannot be Hounsfield units"]),
])
def test_evaluation_references_are_checked_up_front(results, case, texts):
    stderr = _refused(results["bad_references_at_evaluation"], "4 problems in the references to evaluate")
    line = next((line for line in stderr.splitlines() if texts[0] in line and texts[1] in line), None)
    assert line is not None and all(text in line for text in texts), f"{case}:\n{stderr[-3000:]}"
    assert not (results["_root"] / "another_folder" / "evaluation_bad").exists()


def test_a_symbolic_link_loop_is_named(results):
    _refused(results["symlink_loop"], "subj_009_mr.nii.gz' is a symbolic link loop", "Remove or fix the link")
    assert results["symlink_loop"]["after"]["model_dir"] is None


def test_a_batch_larger_than_the_data_is_refused(results):
    _refused(results["batch_larger_than_the_data"], "[NETWORK] batch_size = 1000 is larger than the 48 training "
             "examples (axial slices of 3 training subjects)", "Expected at most 48")
    assert results["batch_larger_than_the_data"]["after"]["model_dir"] is None  # what set-up wrote is removed


def test_bone_label_is_checked_against_label_names(results):
    _refused(results["bone_label_names_another_tissue"], "[MR_CT] bone_label = 1", "names label 2 'bone'",
             "expected bone_label = 2")


def test_no_temporary_file_is_left_anywhere(results):
    root = results["_root"]
    leftovers = [path for path in root.rglob("*") if ".tmp" in path.name and "data" not in path.parts]
    assert not leftovers, leftovers


# === In process: the rules behind the cases ===


def test_check_hounsfield_false_accepts_a_ct_in_another_unit(cohort, tmp_path):
    from sfg_keras.config import TaskSpec
    from sfg_keras.io.input_checks import InputValidationError, ScanCache
    from sfg_keras_applications.mr_ct_checks import check_subjects, section_roles
    from sfg_keras_applications.mr_ct_data import load_volume

    _copy_subject(cohort, TRAINING[0], tmp_path, "s1")
    _rewrite(_file(tmp_path, "CT", "s1"), lambda ct: ct + 1024, np.uint16)
    assert load_volume(str(_file(tmp_path, "CT", "s1"))).data.min() >= 0
    row = {"subject": "s1", **{section: str(_file(tmp_path, section, "s1")) for section in ("MR", "CT", "LABEL")}}
    tasks = [TaskSpec("ct", "regression", 1, "RMSE", 1.0, "CT"),
             TaskSpec("organs", "segmentation", 5, "Dice", 1.0, "LABEL")]
    with pytest.raises(InputValidationError, match=r"s1_ct.nii.gz \(subject 's1'\): \[CT\] holds values from 0 to"):
        check_subjects([row], section_roles("MR", tasks, True), ScanCache(), "inputs")
    check_subjects([row], section_roles("MR", tasks, True, hounsfield=False), ScanCache(), "inputs")  # accepted


def test_subjects_to_infer_by_phase_id_and_content(tmp_path):
    from sfg_keras.engine.provenance import RunRecord, TrainedSubjectError, choose_subjects
    from sfg_keras.io.input_checks import file_sha256

    files = {}
    for subject in ("a", "b", "c", "d", "x", "copy"):
        files[subject] = tmp_path / f"{subject}.nii.gz"
        files[subject].write_text(subject if subject != "copy" else "a")  # 'copy' has a's content
    record = RunRecord.create(tmp_path / "model", "test", {"a": "Training", "b": "Training", "c": "Validation",
                                                          "d": "Inference"},
                              {"a": {"MR": str(files["a"])}}, file_sha256)  # b: in the Training split, not used
    found = {subject: {"MR": str(path)} for subject, path in files.items() if subject != "copy"}

    def chosen(choice, other=False, subjects=found):
        return [(c.subject, c.phase, c.trained_on) for c in choose_subjects(record, subjects, "MR", choice, other,
                                                                             file_sha256, "run.ini")]

    assert chosen("") == [("d", "Inference", False), ("x", "new", False)]
    assert chosen("inference") == [("d", "Inference", False)]
    assert chosen("validation") == [("c", "Validation", False)]
    assert chosen("training") == [("a", "Training", True), ("b", "Training", False)]
    assert [c[:2] for c in chosen("all")] == [("a", "Training"), ("b", "Training"), ("c", "Validation"),
                                              ("d", "Inference"), ("x", "new")]
    with_copy = {**found, "copy": {"MR": str(files["copy"])}}
    with pytest.raises(TrainedSubjectError, match=r"'copy' \(new\): its \[MR\] file .* content of the \[MR\] file of "
                       r"training subject 'a'"):
        chosen("", subjects=with_copy)
    # In another folder the ids mean nothing: 'a' there is another subject unless its content is a's.
    assert chosen("", other=True, subjects={"a": found["x"]}) == [("a", "new", False)]
    with pytest.raises(TrainedSubjectError, match="'a' \\(new\\): its \\[MR\\]"):
        chosen("", other=True, subjects={"a": found["a"]})
    leaks, others = record.split_differences({"a": "Inference", "b": "Training", "c": "Inference"})
    assert leaks == ["'a': Training when trained, Inference in the file"] and len(others) == 2
