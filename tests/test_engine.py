"""The engine through the `sfg_run` console script: TensorBoard steps, resume equality, settings changed on resume,
the model_dir lock, refused runs that write nothing, the error log, the application factory."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from sfg_run_batch import Batch
from test_cli import SFG_RUN, run, write_config


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*")) if path.is_file()
    }


def _scalar_steps(log_dir: Path) -> dict[str, list[int]]:
    """`{tag: [step, ...]}` over every event file under `log_dir` (duplicates kept)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps: dict[str, list[int]] = {}
    for events in sorted(log_dir.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0, "tensors": 0})
        accumulator.Reload()
        run_name = events.parent.name
        for tag in accumulator.Tags().get("tensors", []):
            steps.setdefault(f"{run_name}/{tag}", []).extend(e.step for e in accumulator.Tensors(tag))
        for tag in accumulator.Tags().get("scalars", []):
            steps.setdefault(f"{run_name}/{tag}", []).extend(e.step for e in accumulator.Scalars(tag))
    return {tag: sorted(values) for tag, values in steps.items()}


def _load(path: Path):
    import keras

    import sfg_keras  # noqa: F401  (registers every class the checkpoint names)

    return keras.models.load_model(path)


def _weights(path: Path) -> list[np.ndarray]:
    return [np.asarray(v) for v in _load(path).weights]


SINGLE_THREAD = "--num_threads=1"  # bitwise-reproducible runs (see the `trained_run` fixture in conftest.py)


@pytest.fixture(scope="module")
def straight_run(trained_run):
    """One uninterrupted run to iteration 6 (the shared `trained_run`)."""
    return trained_run


@pytest.fixture(scope="module")
def resumed_run(cohort, tmp_path_factory):
    """The same run stopped at iteration 3 and resumed to 6 (both commands in one process, as `sfg_run demo` runs
    its actions; the resume starts from the checkpoint on disk all the same)."""
    folder = tmp_path_factory.mktemp("resumed")
    config = write_config(folder, cohort, max_iter=6, save_every_n=3, validation_every_n=3)
    batch = Batch(folder, config)
    batch.run("stopped", "train", folder / "model", "--max_iter=3", SINGLE_THREAD)
    batch.run("resumed", "train", folder / "model", "--starting_iter=-1", SINGLE_THREAD)
    result = batch.execute(check=True)["resumed"]
    return folder, config, subprocess.CompletedProcess(result["argv"], 0, result["stdout"], result["stderr"])


@pytest.mark.slow
def test_resume_equals_uninterrupted_run(straight_run, resumed_run):
    straight, _ = straight_run
    resumed, _, result = resumed_run
    assert "iterations 4..6" in result.stdout, result.stdout[-2000:]
    a = _weights(straight / "model" / "models" / "model-6.keras")
    b = _weights(resumed / "model" / "models" / "model-6.keras")
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_tensorboard_has_every_summary_once_across_a_resume(straight_run, resumed_run):
    for folder in (straight_run[0], resumed_run[0]):
        steps = _scalar_steps(folder / "model" / "logs")
        assert steps["train/loss"] == [2, 4, 6], steps
        assert steps["train/data_loss"] == [2, 4, 6]
        assert steps["validation/loss"] == [3, 6]
        assert steps["validation/ct_mae"] == [3, 6]
        share_tags = [tag for tag in steps if tag.startswith("grouping/group_share/")]
        assert share_tags
        for tag in share_tags:
            assert len(steps[tag]) == len(set(steps[tag])), (tag, steps[tag])
            assert {0, 2, 4, 6} <= set(steps[tag]), (tag, steps[tag])


@pytest.mark.slow
def test_progress_counts_to_max_iter(straight_run, resumed_run):
    assert "iteration 6/6" in straight_run[1].stdout, straight_run[1].stdout[-2000:]
    assert "iteration 6/6" in resumed_run[2].stdout


@pytest.mark.slow
def test_resume_applies_learning_rate_and_optimiser(resumed_run):
    folder, config, _ = resumed_run
    result = run(["train", "-c", str(config), "--starting_iter=-1", "--lr=0.5", "--optimiser=sgd", "--max_iter=7",
                  SINGLE_THREAD])
    assert "[TRAINING] lr changed from 0.003 to 0.5; applied" in result.stdout, result.stdout[-2000:]
    assert "optimiser adam -> sgd" in result.stdout
    model = _load(folder / "model" / "models" / "model-7.keras")
    assert type(model.optimizer).__name__ == "SGD"
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.5)
    assert int(model.optimizer.iterations.numpy()) == 7
    record = json.loads((folder / "model" / "run_settings.json").read_text())
    assert record["TRAINING"]["lr"] == 0.5 and record["TRAINING"]["optimiser"] == "sgd"


@pytest.mark.slow
def test_refused_resume_and_refused_start_write_nothing(straight_run):
    folder, _ = straight_run
    config = folder / "run.ini"
    model_dir = folder / "model"
    before = _hashes(model_dir)
    batch = Batch(folder, config)
    batch.run("changed", "train", model_dir, "--starting_iter=-1", "--width_multiplier=0.25", "--max_iter=9",
              SINGLE_THREAD)
    batch.run("fresh", "train", model_dir, "--starting_iter=0")
    results = batch.execute()
    changed, fresh = results["changed"], results["fresh"]
    assert changed["returncode"] == 2
    assert "[NETWORK] width_multiplier" in changed["stderr"] and "0.5" in changed["stderr"], changed["stderr"]
    assert fresh["returncode"] == 2 and "--starting_iter=-1" in fresh["stderr"]
    assert _hashes(model_dir) == before


def test_lock_refuses_a_second_run(cohort, tmp_path):
    # A stale lock (its process killed) is taken over: tests/test_cli.py::test_sigkill_resumes_from_last_checkpoint.
    config = write_config(tmp_path, cohort, max_iter=1, save_every_n=1, validation_every_n=-1)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    # A live holder: this test process, as a running `sfg_run train` would have written it.
    (model_dir / ".sfg_run.lock").write_text(
        json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "action": "train", "started": 0}))
    before = _hashes(model_dir)
    result = run(["train", "-c", str(config)], check=False)
    assert result.returncode == 2, result.stderr
    assert f"pid {os.getpid()}" in result.stderr and socket.gethostname() in result.stderr
    assert _hashes(model_dir) == before


def test_empty_data_folder_writes_nothing(tmp_path):
    data = tmp_path / "data"
    for sub in ("MR", "CT", "LABEL"):
        (data / sub).mkdir(parents=True)
    config = write_config(tmp_path, data)
    result = run(["train", "-c", str(config)], check=False)
    assert result.returncode == 2 and "MR" in result.stderr, result.stderr
    assert not (tmp_path / "model").exists()


def test_unexpected_error_goes_to_the_error_log(cohort, tmp_path):
    package = tmp_path / "my_apps"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "broken.py").write_text(textwrap.dedent("""
        from sfg_keras_applications.mr_ct import MRCTApplication

        class BrokenApplication(MRCTApplication):
            def prepare(self, fit):
                raise RuntimeError("something the developers did not expect")
    """))
    config = write_config(tmp_path, cohort, max_iter=1)
    environment = {"PYTHONPATH": str(tmp_path)}
    result = run(["train", "-c", str(config), "-a", "my_apps.broken.BrokenApplication"], env=environment,
                 check=False)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("sfg_run:")]
    assert len(lines) == 1 and "RuntimeError: something the developers did not expect" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    log = tmp_path / "model" / "logs" / "error.log"
    assert log.is_file() and str(log) in lines[0]
    text = log.read_text()
    assert "Traceback" in text and "broken.py" in text and "prepare" in text
    # Only the error log was written.
    assert sorted(str(p.relative_to(tmp_path / "model")) for p in (tmp_path / "model").rglob("*")) == [
        "logs", os.path.join("logs", "error.log")]

    with_debug = run(["train", "-c", str(config), "-a", "my_apps.broken.BrokenApplication", "--debug"],
                     env=environment, check=False)
    assert with_debug.returncode == 1 and "Traceback" in with_debug.stderr


def test_application_names_and_dotted_paths():
    from sfg_keras.engine import load_application

    assert load_application("mr_ct").__name__ == "MRCTApplication"
    assert load_application("applications.age_gender.AgeGenderApplication").__name__ == "AgeGenderApplication"
    assert load_application("sfg_keras_applications.mr_ct.MRCTApplication") is load_application("mr_ct")
    with pytest.raises(ValueError, match="Did you mean 'mr_ct'"):
        load_application("mrct")
    with pytest.raises(ValueError, match="Did you mean sfg_keras_applications.mr_ct.MRCTApplication"):
        load_application("sfg_keras_applications.mr_ct.MRCTApplicaton")
    with pytest.raises(ValueError, match="not a subclass"):
        load_application("sfg_keras.engine.driver.Driver")


def test_config_folder_and_model_dir_file_are_named(cohort, tmp_path):
    result = run(["train", "-c", str(tmp_path)], check=False)
    assert result.returncode == 2 and "is a folder" in result.stderr and str(tmp_path) in result.stderr
    config = write_config(tmp_path, cohort, max_iter=1)
    (tmp_path / "model").write_text("not a folder")
    result = run(["train", "-c", str(config)], check=False)
    assert result.returncode == 2 and "is a file" in result.stderr and "model_dir" in result.stderr
    assert (tmp_path / "model").read_text() == "not a folder"


def test_tensorflow_start_up_logs_are_silenced_unless_asked_for(tmp_path):
    data = tmp_path / "data"
    for sub in ("MR", "CT", "LABEL"):
        (data / sub).mkdir(parents=True)
    config = write_config(tmp_path, data)
    environment = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    environment.update({"SFG_QUIET": "1", "CUDA_VISIBLE_DEVICES": ""})
    quiet = subprocess.run([SFG_RUN, "train", "-c", str(config)], capture_output=True, text=True, env=environment,
                           timeout=600)
    assert quiet.returncode == 2
    assert quiet.stderr.strip().splitlines() == [line for line in quiet.stderr.strip().splitlines()
                                                 if line.startswith("sfg_run: error:")], quiet.stderr
    loud = subprocess.run([SFG_RUN, "train", "-c", str(config)], capture_output=True, text=True,
                          env={**environment, "TF_CPP_MIN_LOG_LEVEL": "0"}, timeout=600)
    assert loud.returncode == 2 and len(loud.stderr.strip().splitlines()) > 1, loud.stderr


def test_import_sfg_keras_is_enough_to_load_a_checkpoint(trained_run):
    checkpoint = trained_run[0] / "model" / "models" / "model-6.keras"
    code = (
        "import sys, sfg_keras; assert 'tensorflow' not in sys.modules; import keras; "
        f"model = keras.saving.load_model({str(checkpoint)!r}); "
        "print(type(model).__name__, type(model.loss['ct']).__name__, int(model.optimizer.iterations.numpy()))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["SFGNetwork", "RMSE", "6"], result.stdout
