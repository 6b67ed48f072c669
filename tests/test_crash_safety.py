"""Crash-safe files and checkpoints you can trust (issue 20, items 3 and 5).

In-process tests of the real code paths: atomic writes reach the disk (`os.fsync` of the file and of its folder),
leftovers of killed writers are recognised by name and removed (never a live writer's), the checkpoint lineage names
a truncated, corrupted, replaced or foreign checkpoint and `select_checkpoint` falls back to the newest valid one,
branches are archived with their lineage. Then the SIGKILL loop through `sfg_run`: at least five kills at random
moments (seeded), each followed by a resume; every checkpoint left is loadable and matches its lineage record, no
temporary file is left, and the final weights equal those of an uninterrupted run bit for bit (one thread).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from mr_ct_inputs import MR_CT_INPUTS

from sfg_keras.io import atomic
from sfg_keras.io.atomic import atomic_write_text, is_stale_temporary, remove_stale_temporary_files
from sfg_keras.training.checkpoints import (
    CHECKPOINT_DIR,
    CheckpointLineage,
    check_branch_name,
    file_sha256,
    list_checkpoints,
    save_checkpoint,
    select_checkpoint,
)

TESTS = Path(__file__).resolve().parent
SFG_RUN = str(Path(sys.executable).with_name("sfg_run"))


# === Atomic writes reach the disk ===


def test_atomic_writes_fsync_the_file_and_its_folder(tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(handle):
        synced.append(os.readlink(f"/proc/self/fd/{handle}"))
        return real_fsync(handle)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    target = tmp_path / "sub" / "record.json"
    atomic_write_text(target, "{}")
    assert target.read_text() == "{}"
    # the temporary file's content before the rename, then the folder holding the rename
    assert len(synced) == 2 and Path(synced[0]).parent == target.parent and Path(synced[0]).name.startswith(
        ".record.json.") and synced[1] == str(target.parent)
    assert [p.name for p in target.parent.iterdir()] == ["record.json"]


def test_temporary_names_say_who_writes_them_and_only_dead_writers_leftovers_are_removed(tmp_path):
    alive = tmp_path / f".model-6.keras.{atomic._HOST_TAG}-{os.getpid()}.abcd1234.tmp.keras"
    dead_pid = 2**22 + 12345  # above the default pid_max: no process has it
    dead = tmp_path / "models" / f".model-4.keras.{atomic._HOST_TAG}-{dead_pid}.x1y2z3w4.tmp.keras"
    other_host = tmp_path / f".model-5.keras.0123abcd-{dead_pid}.x1y2z3w4.tmp.keras"
    legacy = tmp_path / "models" / ".model-2.keras.k3j4h5g6.tmp.keras"  # the names of older versions
    metrics_folder = tmp_path / "evaluation" / f".mr_ct_metrics.csv.{atomic._HOST_TAG}-{dead_pid}.qwer1234.tmp"
    user_file = tmp_path / "notes.tmp.txt"
    for path in (alive, dead, other_host, legacy, user_file):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    (metrics_folder / "inner.csv").parent.mkdir(parents=True)
    (metrics_folder / "inner.csv").write_text("x")
    assert not is_stale_temporary(alive) and is_stale_temporary(dead) and not is_stale_temporary(other_host)
    removed = remove_stale_temporary_files([tmp_path, tmp_path / "models"])  # a folder given twice counts once
    assert sorted(removed) == sorted([dead, legacy, metrics_folder])
    assert alive.exists() and other_host.exists() and user_file.exists() and not metrics_folder.exists()


def _tiny_model() -> keras.Model:
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((4, 3)), np.zeros((4, 2)), verbose=0)
    return model


def test_lineage_names_every_kind_of_bad_checkpoint_and_selection_falls_back(tmp_path):
    model_dir, model = tmp_path / "model", _tiny_model()
    lineage = CheckpointLineage(model_dir)
    lineage.start_run(None, 0, 6)
    for step in (2, 4, 6):
        save_checkpoint(model, model_dir / "models", step, lineage=lineage)
    recorded = json.loads((model_dir / "lineage.json").read_text())
    entries = recorded["checkpoints"]
    assert [entries[f"models/model-{s}.keras"]["parent"] for s in (2, 4, 6)] == [
        None, "models/model-2.keras", "models/model-4.keras"]
    assert entries["models/model-6.keras"]["sha256"] == file_sha256(model_dir / "models" / "model-6.keras")
    assert recorded["runs"][0]["id"] == entries["models/model-6.keras"]["run"]

    newest = model_dir / "models" / "model-6.keras"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated (a power loss before fsync, a full disk ...)
    middle = model_dir / "models" / "model-4.keras"
    content = bytearray(middle.read_bytes())
    content[len(content) // 2] ^= 0xFF  # one flipped byte, same size
    middle.write_bytes(bytes(content))
    fresh = CheckpointLineage(model_dir)
    assert "truncated or replaced" in fresh.problem(newest) and "corrupted or replaced" in fresh.problem(middle)
    path, skipped = select_checkpoint(model_dir / "models", -1, fresh)
    assert path.name == "model-2.keras" and [p.name for p, _ in skipped] == ["model-6.keras", "model-4.keras"]
    with pytest.raises(ValueError, match=r"model-6.keras cannot be used: its size is 100 bytes.*iterations \[2\]"):
        select_checkpoint(model_dir / "models", 6, fresh)

    foreign = model_dir / "models" / "model-8.keras"
    shutil.copy(model_dir / "models" / "model-2.keras", foreign)
    assert "no training run of this model_dir wrote it" in fresh.problem(foreign)
    legacy = CheckpointLineage(tmp_path / "older")  # no lineage file: the archive itself is checked
    assert legacy.problem(model_dir / "models" / "model-2.keras") is None
    assert "not a complete .keras archive" in legacy.problem(newest)


def test_archived_branch_keeps_its_lineage_and_is_named_when_asked_for(tmp_path):
    model_dir, model = tmp_path / "model", _tiny_model()
    lineage = CheckpointLineage(model_dir)
    lineage.start_run(None, 0, 6)
    for step in (2, 4, 6):
        save_checkpoint(model, model_dir / "models", step, lineage=lineage)
    later = [model_dir / "models" / f"model-{s}.keras" for s in (4, 6)]
    folder = lineage.archive(later, check_branch_name("lr-1e-3", model_dir))
    assert sorted(p.name for p in folder.iterdir()) == ["model-4.keras", "model-6.keras"]
    reloaded = CheckpointLineage(model_dir)
    assert reloaded.history(folder / "model-6.keras") == [
        "branches/lr-1e-3/models/model-6.keras", "branches/lr-1e-3/models/model-4.keras", "models/model-2.keras"]
    assert reloaded.problem(folder / "model-6.keras") is None
    with pytest.raises(FileNotFoundError, match=r"iteration 4 of an archived branch is in "
                       r"branches/lr-1e-3/models/model-4.keras \(not the current lineage"):
        select_checkpoint(model_dir / "models", 4, reloaded)
    with pytest.raises(FileExistsError, match="already exists; choose another branch name"):
        check_branch_name("lr-1e-3", model_dir)
    with pytest.raises(ValueError, match=r"archive_branch = '\.\./x': expected a folder name"):
        check_branch_name("../x", model_dir)


def test_checkpoints_of_an_older_version_are_adopted_not_taken_for_foreign_files(tmp_path):
    model_dir, model = tmp_path / "model", _tiny_model()
    for step in (2, 4):
        save_checkpoint(model, model_dir / "models", step)  # no lineage: an older sfg-keras
    lineage = CheckpointLineage(model_dir)
    assert not lineage.recorded and lineage.problem(model_dir / "models" / "model-4.keras") is None
    lineage.adopt(sorted((model_dir / "models").glob("*.keras")))
    lineage.start_run(model_dir / "models" / "model-4.keras", 4, 6)
    save_checkpoint(model, model_dir / "models", 6, lineage=lineage)
    reloaded = CheckpointLineage(model_dir)
    assert all(reloaded.problem(path) is None for path in (model_dir / "models").glob("*.keras"))
    assert reloaded.history(model_dir / "models" / "model-6.keras") == [
        "models/model-6.keras", "models/model-4.keras", "models/model-2.keras"]
    assert reloaded.entry(model_dir / "models" / "model-2.keras")["adopted"]


# === The SIGKILL loop through sfg_run ===

KILL_CONFIG = MR_CT_INPUTS + """[SYSTEM]
model_dir = {model_dir}
seed = 2
num_threads = 1

[NETWORK]
name = small_networks.small_dense_sfg_cnn
width_multiplier = 0.25
batch_size = 4
normalisation = True
whitening = True

[TRAINING]
lr = 0.003
max_iter = {max_iter}
save_every_n = 1
max_checkpoints = 4
validation_every_n = -1
tensorboard_every_n = -1
exclude_fraction_for_validation = 0.2
exclude_fraction_for_inference = 0.2

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
KILLS, MAX_ITER = 5, 16


def _environment() -> dict:
    return {**os.environ, "SFG_QUIET": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}


def _kill_config(folder: Path, data: Path, model_dir: Path) -> Path:
    config = folder / f"{model_dir.name}.ini"
    config.write_text(KILL_CONFIG.format(data=data, model_dir=model_dir, max_iter=MAX_ITER))
    return config


def _checkpoint_steps(model_dir: Path) -> list[int]:
    return sorted(list_checkpoints(model_dir / CHECKPOINT_DIR))


def _wait_for_a_checkpoint(process: subprocess.Popen, model_dir: Path, before: list[int], deadline: float) -> None:
    """Returns when a checkpoint newer than `before` exists, the process ended, or at `deadline`."""
    while process.poll() is None and time.time() < deadline:
        if (model_dir / "models").is_dir() and _checkpoint_steps(model_dir)[-1:] > before[-1:]:
            return
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_loop_resumes_to_the_weights_of_an_uninterrupted_run(cohort, tmp_path):
    reference_dir, killed_dir = tmp_path / "uninterrupted", tmp_path / "killed"
    reference_config = _kill_config(tmp_path, cohort, reference_dir)
    config = _kill_config(tmp_path, cohort, killed_dir)
    reference: dict = {}
    thread = threading.Thread(target=lambda: reference.update(result=subprocess.run(
        [SFG_RUN, "train", "-c", str(reference_config)], capture_output=True, text=True, env=_environment(),
        timeout=900)))
    thread.start()

    draw = random.Random(20)
    kills, outputs, to_first_checkpoint = 0, [], None
    while kills < KILLS:
        before = _checkpoint_steps(killed_dir) if (killed_dir / "models").is_dir() else []
        start = time.time()
        process = subprocess.Popen([SFG_RUN, "train", "-c", str(config), "--starting_iter=-1"], env=_environment(),
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if kills % 3 == 0 or to_first_checkpoint is None:
            # After training wrote a new checkpoint, a random moment of the next 0.3 s: during a step, a
            # checkpoint save, its fsync, the lineage update or the rename.
            _wait_for_a_checkpoint(process, killed_dir, before, start + 300)
            to_first_checkpoint = time.time() - start
            time.sleep(draw.uniform(0.0, 0.3))
        else:
            # Any moment until the first new checkpoint: the imports, the input checks, the split, the
            # normalisation, the run record and lineage being written, the first step.
            _wait_for_a_checkpoint(process, killed_dir, before, start + draw.uniform(0.5, to_first_checkpoint))
        assert process.poll() is None, f"the run ended before it could be killed:\n{process.communicate()[0][-3000:]}"
        process.send_signal(signal.SIGKILL)
        kills += 1
        outputs.append(process.communicate()[0])
        assert process.returncode == -signal.SIGKILL
        assert not _checkpoint_steps(killed_dir) or _checkpoint_steps(killed_dir)[-1] < MAX_ITER

    final = subprocess.run([SFG_RUN, "train", "-c", str(config), "--starting_iter=-1"], capture_output=True,
                           text=True, env=_environment(), timeout=900)
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    thread.join()
    assert reference["result"].returncode == 0, reference["result"].stderr[-3000:]

    # No leftovers: whatever a kill left was removed by the next run, which said so.
    leftovers = [p for p in killed_dir.rglob("*") if ".tmp" in p.name]
    assert not leftovers, leftovers
    said = [output for output in outputs[1:] + [final.stdout] if "left by a killed run" in output]
    print(f"\n{kills} kills (steps reached: {_checkpoint_steps(killed_dir)}); {len(said)} resumes removed temporary "
          "files of a killed run")

    lineage = CheckpointLineage(killed_dir)
    steps = _checkpoint_steps(killed_dir)
    assert steps[-1] == MAX_ITER and len(steps) == 4
    import sfg_keras.models  # noqa: F401  (registers the classes the checkpoints name)

    for step in steps:
        path = killed_dir / "models" / f"model-{step}.keras"
        assert lineage.problem(path) is None, (path, lineage.problem(path))
        loaded = keras.models.load_model(path)
        assert int(loaded.optimizer.iterations.numpy()) == step
    resumed = keras.models.load_model(killed_dir / "models" / f"model-{MAX_ITER}.keras")
    uninterrupted = keras.models.load_model(reference_dir / "models" / f"model-{MAX_ITER}.keras")
    for a, b in zip(resumed.weights, uninterrupted.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)
    runs = json.loads((killed_dir / "lineage.json").read_text())["runs"]
    assert runs[-1]["max_iter"] == MAX_ITER and runs[-1]["from"] is not None  # the last run resumed
