"""Bad mr_ct inputs through `sfg_run`: exit status 2, the bad file named, nothing written.

Each case copies the session's generated pelvis cohort, damages one file (or, for `many_bad_files`, adds 12 subjects
of empty files) and runs `sfg_run`. The commands run one after the other in one subprocess (`sfg_run_batch`: the
console script's function, TensorFlow imported once) from one module-scoped fixture; one parametrized test per case
then asserts that the run exited with status 2, named the bad file, and left `model_dir` and the histogram file's
location (outside `model_dir`) byte-identical. One chain of commands also checks training resumed and inference on a
trained `model_dir`, and that a model_dir whose refused start met a file of infinite values trains normally once the
file is fixed. These tests are `slow` (18 commands); the in-process tests at the end (scan cache, accepted trailing
axis, `training_files`, atomic outputs) are fast.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from mr_ct_inputs import MR_CT_INPUTS
from sfg_run_batch import Batch

FRACTIONS, SEED = (0.6, 0.2, 0.2), 1

CONFIG = MR_CT_INPUTS + """[SYSTEM]
model_dir = {folder}/model
seed = {seed}

[NETWORK]
name = small_networks.small_dense_sfg_cnn
width_multiplier = 0.25
batch_size = 4
normalisation = {normalisation}
whitening = True
histogram_ref_file = {folder}/normalisation/histogram_ref_file.txt

[TRAINING]
lr = 0.003
max_iter = {max_iter}
save_every_n = 1
validation_every_n = -1
tensorboard_every_n = -1
exclude_fraction_for_validation = {fractions[1]}
exclude_fraction_for_inference = {fractions[2]}

[INFERENCE]
batch_size = 6

[MULTITASK]
image = MR
tasks = ct, organs
task_types = regression, segmentation
num_classes = 1, 5
labels = CT, LABEL

[SFG]
grouping = learned

[MR_CT]
patch_size = 24, 24
padded_size = 32, 32
"""



# === Damaging files ===


def _rewrite(path: Path, change: Callable[[np.ndarray], np.ndarray], affine_shift: float = 0.0) -> None:
    """Rewrites a NIfTI file with its voxels passed through `change` (and its x origin moved by `affine_shift`)."""
    image = nib.load(path)
    data = change(np.asarray(image.dataobj).copy())
    affine = image.affine.copy()
    affine[0, 3] += affine_shift
    header = image.header.copy() if data.dtype == image.get_data_dtype() else None
    nib.save(nib.Nifti1Image(data, affine, header), path)


def _set_voxels(value: float, dtype=None) -> Callable[[np.ndarray], np.ndarray]:
    def change(data: np.ndarray) -> np.ndarray:
        data = data.astype(dtype or data.dtype)
        data[40:44, 40:44, 3] = value
        return data

    return change


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _file(data: Path, section: str, subject: str) -> Path:
    return data / section / f"{subject}_{section.lower()}.nii.gz"


# Each damage: (data folder, split) -> the damaged files. `split` maps "Training" / "Validation" / "Inference" to
# the subjects of that phase (the split sfg_run makes of the cohort).
DAMAGES: dict[str, Callable[[Path, dict], list[Path]]] = {}


def damage(name: str):
    def register(function):
        DAMAGES[name] = function
        return function

    return register


@damage("truncated_mr")
def _(data, split):
    path = _file(data, "MR", split["Training"][0])
    _truncate(path)
    return [path]


@damage("truncated_ct_of_a_validation_subject")
def _(data, split):
    path = _file(data, "CT", split["Validation"][0])
    _truncate(path)
    return [path]


@damage("garbage_bytes")
def _(data, split):
    path = _file(data, "LABEL", split["Training"][1])
    path.write_bytes(bytes(range(256)) * 64)
    return [path]


@damage("zero_byte_file")
def _(data, split):
    path = _file(data, "MR", split["Training"][2])
    path.write_bytes(b"")
    return [path]


@damage("nan_in_mr")
def _(data, split):
    path = _file(data, "MR", split["Training"][0])
    _rewrite(path, _set_voxels(np.nan))
    return [path]


@damage("nan_in_ct")
def _(data, split):
    path = _file(data, "CT", split["Training"][1])
    _rewrite(path, _set_voxels(np.nan))
    return [path]


@damage("four_d_mr")
def _(data, split):
    path = _file(data, "MR", split["Training"][0])
    _rewrite(path, lambda mr: np.stack([mr, mr], axis=-1))
    return [path]


@damage("two_d_mr")
def _(data, split):
    path = _file(data, "MR", split["Training"][1])
    _rewrite(path, lambda mr: mr[:, :, 0])
    return [path]


@damage("shapes_differ")
def _(data, split):
    path = _file(data, "LABEL", split["Training"][2])
    _rewrite(path, lambda labels: labels[:, :, :-1])
    return [path]


@damage("affines_differ")
def _(data, split):
    path = _file(data, "CT", split["Training"][0])
    _rewrite(path, lambda ct: ct, affine_shift=5.0)
    return [path]


@damage("labels_out_of_range")
def _(data, split):
    path = _file(data, "LABEL", split["Training"][1])
    _rewrite(path, _set_voxels(7))
    return [path]


@damage("non_integer_labels")
def _(data, split):
    path = _file(data, "LABEL", split["Validation"][0])
    _rewrite(path, _set_voxels(1.5, np.float32))
    return [path]


@damage("all_zero_mr")
def _(data, split):
    path = _file(data, "MR", split["Training"][2])
    _rewrite(path, np.zeros_like)
    return [path]


@damage("many_bad_files")
def _(data, split):
    """12 extra subjects of empty files: more than 20 problems among the training and validation subjects."""
    for number in range(100, 112):
        for section in ("MR", "CT", "LABEL"):
            _file(data, section, f"subj_{number}").write_bytes(b"")
    checked = [s for s in (*split["Training"], *split["Validation"]) if int(s[5:]) >= 100]
    return [_file(data, section, s) for s in checked for section in ("MR", "CT", "LABEL")]


# === Running the cases ===


@dataclasses.dataclass
class Outcome:
    """One `sfg_run` command: its result, the damaged files and the snapshots of model_dir and the histogram
    folder before and after it."""

    result: subprocess.CompletedProcess
    bad: list[Path]
    before: tuple
    after: tuple
    seconds: float


def _split(subjects: list[str], folder: Path) -> dict[str, list[str]]:
    from sfg_keras.data.split import make_or_load_split

    split = make_or_load_split(subjects, folder / "split.csv", fractions=FRACTIONS, seed=SEED)
    return {phase: sorted(s for s, p in split.items() if p == phase) for phase in ("Training", "Validation",
                                                                                     "Inference")}


def _config(folder: Path, data: Path, normalisation=True, max_iter=1) -> Path:
    config = folder / "run.ini"
    config.write_text(CONFIG.format(data=data, folder=folder, seed=SEED, normalisation=normalisation,
                                    max_iter=max_iter, fractions=FRACTIONS))
    return config


def _run(batch: Batch, name: str, folder: Path, *args: str) -> None:
    batch.run(name, args[0], folder / "model", *args[1:], watch=(folder / "normalisation",),
              config=folder / "run.ini")


def _damaged_case(batch: Batch, name: str, cohort: Path, root: Path) -> list[Path]:
    folder = root / name
    data = folder / "data"
    shutil.copytree(cohort, data)
    subjects = sorted(p.name[: -len("_mr.nii.gz")] for p in (data / "MR").iterdir())
    bad = DAMAGES[name](data, _split(subjects + [f"subj_{n}" for n in range(100, 112)] if name == "many_bad_files"
                                     else subjects, folder))
    _config(folder, data)
    _run(batch, name, folder, "train")
    return bad


def set_nan_voxels(path: str) -> None:
    _rewrite(Path(path), _set_voxels(np.nan))


def _chain(batch: Batch, cohort: Path, root: Path) -> dict[str, list[Path]]:
    """Infinite MR voxels with normalisation off (refused), the file fixed (trains), a bad validation file on
    resume (refused), a bad MR to infer (refused)."""
    folder = root / "chain"
    data = folder / "data"
    shutil.copytree(cohort, data)
    split = _split(sorted(p.name[: -len("_mr.nii.gz")] for p in (data / "MR").iterdir()), folder)
    _config(folder, data, normalisation=False)
    mr = _file(data, "MR", split["Training"][0])
    _rewrite(mr, _set_voxels(np.inf))
    _run(batch, "inf_in_mr_without_normalisation", folder, "train")
    batch.op("copy", _file(cohort, "MR", split["Training"][0]), mr)
    _run(batch, "fixed_file_trains", folder, "train")
    label = _file(data, "LABEL", split["Validation"][0])
    batch.op("truncate", label)
    _run(batch, "resume_with_truncated_validation_label", folder, "train", "--starting_iter=-1", "--max_iter=2")
    batch.op("copy", _file(cohort, "LABEL", split["Validation"][0]), label)
    infer = _file(data, "MR", split["Inference"][0])
    batch.op("call", f"{__name__}.set_nan_voxels", infer)
    _run(batch, "nan_in_mr_to_infer", folder, "inference")
    return {"inf_in_mr_without_normalisation": [mr], "fixed_file_trains": [],
            "resume_with_truncated_validation_label": [label], "nan_in_mr_to_infer": [infer]}


REFUSED = [*DAMAGES, "inf_in_mr_without_normalisation", "resume_with_truncated_validation_label",
           "nan_in_mr_to_infer"]


@pytest.fixture(scope="module")
def outcomes(cohort, tmp_path_factory) -> dict[str, Outcome]:
    """Every case's `Outcome`: the damaged copies are made here, then every command runs in one process through
    `sfg_keras.cli.main`, the function behind the console script (`sfg_run_batch`: TensorFlow imported once)."""
    root = tmp_path_factory.mktemp("bad_inputs")
    batch = Batch(root)
    bad = {name: _damaged_case(batch, name, cohort, root) for name in DAMAGES}
    bad.update(_chain(batch, cohort, root))
    outcomes = {}
    for name, result in batch.execute().items():
        before, after = (tuple(result[key][label] for label in result[key]) for key in ("before", "after"))
        completed = subprocess.CompletedProcess(result["argv"], result["returncode"], result["stdout"],
                                                result["stderr"])
        outcomes[name] = Outcome(completed, bad[name], before, after, result["seconds"])
    return outcomes


@pytest.mark.slow
@pytest.mark.parametrize("case", REFUSED)
def test_bad_input_exits_2_names_the_file_and_writes_nothing(outcomes, case):
    outcome = outcomes[case]
    stderr = outcome.result.stderr
    assert outcome.result.returncode == 2, f"{case}: exit {outcome.result.returncode}\n{stderr[-3000:]}"
    assert "Traceback" not in stderr
    assert "problem" in stderr and "nothing was written" in stderr, stderr[-3000:]
    listed = outcome.bad[:20]
    for path in listed:
        assert path.name in stderr, f"{case}: {path.name} not named:\n{stderr[-3000:]}"
    assert outcome.after == outcome.before, f"{case}: model_dir or the histogram folder changed"


@pytest.mark.slow
def test_cases_cover_the_kinds_and_each_names_what_is_wrong(outcomes):
    expected = {
        "truncated_mr": "cannot be decoded", "truncated_ct_of_a_validation_subject": "cannot be decoded",
        "garbage_bytes": "cannot be read as a NIfTI image", "zero_byte_file": "cannot be read as a NIfTI image",
        "nan_in_mr": "NaN", "nan_in_ct": "NaN", "four_d_mr": "4 dimensions", "two_d_mr": "2 dimensions",
        "shapes_differ": "different shapes", "affines_differ": "different affines",
        "labels_out_of_range": "[7]", "non_integer_labels": "[1.5]", "all_zero_mr": "is blank: every voxel is 0",
        "inf_in_mr_without_normalisation": "infinite", "resume_with_truncated_validation_label": "cannot be decoded",
        "nan_in_mr_to_infer": "NaN",
    }
    assert len(REFUSED) >= 14 and set(expected) | {"many_bad_files"} == set(REFUSED)
    for case, text in expected.items():
        stderr = outcomes[case].result.stderr
        assert text in stderr and "expected" in stderr, f"{case}: {text!r} not in\n{stderr[-2000:]}"
        assert "1 problem in the" in stderr, f"{case}: one bad file, one problem:\n{stderr[-2000:]}"


@pytest.mark.slow
def test_many_bad_files_are_listed_as_the_first_20_and_a_count(outcomes):
    outcome = outcomes["many_bad_files"]
    count = len(outcome.bad)
    assert count > 20
    assert f"{count} problems in the" in outcome.result.stderr
    assert f"and {count - 20} more" in outcome.result.stderr
    assert sum(line.startswith("  - ") for line in outcome.result.stderr.splitlines()) == 20


@pytest.mark.slow
def test_no_histogram_fitted_on_a_4d_volume_survives(outcomes):
    outcome = outcomes["four_d_mr"]
    assert outcome.before == outcome.after == (None, None)
    assert not (Path(outcome.bad[0]).parents[2] / "normalisation").exists()


@pytest.mark.slow
def test_a_refused_start_leaves_a_model_dir_that_trains_once_the_file_is_fixed(outcomes):
    refused, fixed = outcomes["inf_in_mr_without_normalisation"], outcomes["fixed_file_trains"]
    assert refused.before == refused.after == (None, None)  # no checkpoint, no model_dir at all
    assert fixed.result.returncode == 0, fixed.result.stderr[-3000:]
    model_dir = Path(refused.bad[0]).parents[2] / "model"
    assert (model_dir / "models" / "model-1.keras").is_file()
    assert (model_dir / ".input_scans.json").is_file()  # saved once the checks passed
    resumed = outcomes["resume_with_truncated_validation_label"]
    assert "model-1.keras" in str(resumed.before[0]) and resumed.after == resumed.before


@pytest.mark.slow
def test_runtime_of_the_bad_input_runs(outcomes):
    slowest = max(outcomes.items(), key=lambda item: item[1].seconds)
    print(f"slowest run: {slowest[0]} {slowest[1].seconds:.0f} s")
    assert slowest[1].seconds < 300


# === In-process checks (fast) ===


def _volume(path: Path, data: np.ndarray, affine=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0]) if affine is None else affine), path)
    return path


def _small_subject(folder: Path, subject: str = "s1", mr_shape=(12, 10, 4)) -> dict:
    rng = np.random.default_rng(0)
    mr = rng.uniform(0, 100, mr_shape).astype(np.float32)
    labels = (rng.uniform(0, 5, (12, 10, 4)) // 1).astype(np.uint8)
    return {"subject": subject, "MR": str(_volume(folder / f"{subject}_mr.nii.gz", mr)),
            "LABEL": str(_volume(folder / f"{subject}_label.nii.gz", labels))}


def _roles():
    from sfg_keras_applications.mr_ct_checks import FileRole

    return [FileRole("MR", foreground=True), FileRole("LABEL", labels=(("organs", 5),))]


def test_scans_are_cached_and_a_changed_file_is_scanned_again(tmp_path, monkeypatch):
    from sfg_keras.io.input_checks import InputValidationError, ScanCache
    from sfg_keras_applications import mr_ct_checks

    row = _small_subject(tmp_path)
    cache_file = tmp_path / "model" / ".input_scans.json"
    loaded = mr_ct_checks.check_subjects([row], _roles(), ScanCache(cache_file), "inputs", keep=True)
    assert sorted(loaded) == sorted([row["MR"], row["LABEL"]]) and loaded[row["MR"]].data.shape == (12, 10, 4)
    assert not cache_file.exists()  # the caller saves the cache once everything passed

    cache = ScanCache(cache_file)
    mr_ct_checks.check_subjects([row], _roles(), cache, "inputs")
    cache.save()

    def refuse(path, keep=None):
        raise AssertionError(f"{path} scanned again")

    monkeypatch.setattr(mr_ct_checks, "scan_volume", refuse)
    assert mr_ct_checks.check_subjects([row], _roles(), ScanCache(cache_file), "inputs", keep=True) == {}
    monkeypatch.undo()
    _volume(Path(row["LABEL"]), np.full((12, 10, 4), 9, np.uint8))  # changed: scanned again, and refused
    with pytest.raises(InputValidationError, match=r"s1_label.nii.gz \(subject 's1'\): \[LABEL\] holds values \[9\]"):
        mr_ct_checks.check_subjects([row], _roles(), ScanCache(cache_file), "inputs")


def test_a_trailing_axis_of_size_one_is_accepted_and_dropped(tmp_path):
    from sfg_keras.io.input_checks import ScanCache
    from sfg_keras_applications.mr_ct_checks import check_subjects
    from sfg_keras_applications.mr_ct_data import load_subject

    row = _small_subject(tmp_path)
    mr = nib.load(row["MR"])
    _volume(Path(row["MR"]), np.asarray(mr.dataobj)[..., None], mr.affine)
    check_subjects([row], _roles(), ScanCache(), "inputs")
    volumes = load_subject(row, ["MR", "LABEL"], [])
    assert volumes["MR"].data.shape == (12, 10, 4)


def test_every_problem_of_every_subject_is_reported_together(tmp_path):
    from sfg_keras.io.input_checks import InputValidationError, ScanCache
    from sfg_keras_applications.mr_ct_checks import check_subjects

    rows = [_small_subject(tmp_path, f"s{number}") for number in range(3)]
    Path(rows[0]["MR"]).write_bytes(b"")
    _volume(Path(rows[1]["LABEL"]), np.zeros((12, 10, 3), np.uint8))
    _volume(Path(rows[2]["MR"]), np.zeros((12, 10, 4), np.float32))
    with pytest.raises(InputValidationError) as raised:
        check_subjects(rows, _roles(), ScanCache(), "training inputs")
    assert [(Path(p.path).name, p.subject) for p in raised.value.problems] == [
        ("s0_mr.nii.gz", "s0"), ("s1_label.nii.gz", "s1"), ("s2_mr.nii.gz", "s2")]
    message = str(raised.value)
    assert message.startswith("3 problems in the training inputs; nothing was written")
    assert "different shapes" in message and "no foreground" in message and "Empty file" in message


def test_training_files_are_the_training_subjects_inputs(cohort, tmp_path):
    from sfg_keras.config import load_settings
    from sfg_keras_applications.mr_ct import MRCTApplication

    folder = tmp_path / "run"
    folder.mkdir()
    config = _config(folder, cohort)
    settings = load_settings(config, [], action="train", extra_sections=MRCTApplication.APP_SECTIONS)
    app = MRCTApplication(settings)
    app.prepare(fit=True)
    training = app.statistics["training_subjects"]
    expected = [str(_file(cohort, section, s)) for s in training for section in ("MR", "CT", "LABEL")]
    assert sorted(app.training_files()) == sorted(expected)
    assert (folder / "model" / ".input_scans.json").is_file()
    again = MRCTApplication(load_settings(config, [], action="inference",
                                          extra_sections=MRCTApplication.APP_SECTIONS))
    assert sorted(again.training_files()) == sorted(expected)  # read from the split file


def test_a_failed_nifti_write_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    from sfg_keras.io import nifti

    def partial_save(image, name):
        Path(name).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nifti.nib, "save", partial_save)
    target = tmp_path / "output" / "ct_s1.nii.gz"
    with pytest.raises(OSError, match=r"Cannot write .*ct_s1.nii.gz: No space left"):
        nifti.save_nifti(target, np.zeros((4, 4, 2), np.float32))
    assert list(target.parent.iterdir()) == []


def test_a_failed_metrics_write_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    from sfg_keras.evaluation import metric_tables

    target = tmp_path / "evaluation" / "mr_ct_metrics.csv"
    written = metric_tables.write_metrics_tables([{"subject": "s1", "mae": 40.0}], target)
    assert [path.name for path in written] == ["mr_ct_metrics.csv", "mr_ct_metrics_summary.csv"]
    before = {path.name: path.read_bytes() for path in target.parent.iterdir()}

    def partial_csv(rows, path):
        Path(path).write_text("subject,mae\ns1,")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(metric_tables, "write_metrics_csv", partial_csv)
    with pytest.raises(OSError, match=r"Cannot write .*mr_ct_metrics.csv: No space left"):
        metric_tables.write_metrics_tables([{"subject": "s2", "mae": 50.0}], target)
    assert {path.name: path.read_bytes() for path in target.parent.iterdir()} == before
