"""End-to-end tests of `sfg_run` in subprocesses (the console script, and a sequence of commands in one process
through `sfg_run_batch`), on tiny generated data."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from mr_ct_inputs import MR_CT_INPUTS
from sfg_run_batch import Batch

from sfg_keras.training.checkpoints import list_checkpoints

SFG_RUN = str(Path(sys.executable).with_name("sfg_run"))
TESTS = Path(__file__).resolve().parent

CONFIG = MR_CT_INPUTS + """[SYSTEM]
model_dir = {model_dir}
seed = 1

[NETWORK]
name = small_networks.small_dense_sfg_cnn
width_multiplier = 0.5
batch_size = 4
normalisation = True
whitening = True

[TRAINING]
lr = 0.003
max_iter = {max_iter}
save_every_n = {save_every_n}
validation_every_n = {validation_every_n}
tensorboard_every_n = 2
exclude_fraction_for_validation = 0.2
exclude_fraction_for_inference = 0.2

[INFERENCE]
num_samples = 3
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


def run(args, env=None, check=True, timeout=600):
    environment = {**os.environ, "SFG_QUIET": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    environment.update(env or {})
    # tests/ on the path for CONFIG's network (small_networks.py), also when `env` sets a PYTHONPATH of its own
    environment["PYTHONPATH"] = os.pathsep.join([str(TESTS), environment.get("PYTHONPATH", "")])
    result = subprocess.run([SFG_RUN, *args], capture_output=True, text=True, env=environment, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"sfg_run {args} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def write_config(folder: Path, data: Path, max_iter=6, save_every_n=3, validation_every_n=3, extra="") -> Path:
    config = folder / "run.ini"
    config.write_text(
        CONFIG.format(
            data=data, model_dir=folder / "model", max_iter=max_iter, save_every_n=save_every_n,
            validation_every_n=validation_every_n,
        ) + extra
    )
    return config


@pytest.mark.slow
def test_train_infer_evaluate_analyse_export(cohort, trained_run):
    folder, out = trained_run  # `sfg_run train` of this config to iteration 6 (conftest.py)
    config = folder / "run.ini"
    model_dir = folder / "model"
    assert (model_dir / "models" / "model-6.keras").is_file(), out.stdout[-2000:]
    assert (model_dir / "settings_train.txt").is_file()
    assert (model_dir / "dataset_split.csv").is_file()
    assert (model_dir / "histogram_ref_file.txt").is_file()

    # The five commands run in one process (`sfg_run_batch`: the console script's function, TensorFlow imported once);
    # the console script itself is run by the other tests of this file.
    batch = Batch(folder, config)
    # Starting afresh over existing checkpoints is refused (resuming is test_sigkill_resumes_from_last_checkpoint).
    batch.run("refused", "train", model_dir, "--starting_iter=0")
    for action in ("inference", "evaluation", "analyse", "export"):
        batch.run(action, action, model_dir)
    results = batch.execute()
    refused = results.pop("refused")
    assert refused["returncode"] == 2 and "--starting_iter=-1" in refused["stderr"], refused["stderr"][-3000:]
    for action, result in results.items():
        assert result["returncode"] == 0, f"{action}: {result['stdout'][-3000:]}\n{result['stderr'][-3000:]}"

    inferred = list(csv.DictReader(open(model_dir / "output" / "inferred.csv")))
    split = dict(row for row in csv.reader(open(model_dir / "dataset_split.csv")))
    assert len(inferred) == sum(1 for phase in split.values() if phase == "Inference")
    for row in inferred:
        subject = row["subject"]
        mr = nib.load(str(cohort / "MR" / f"{subject}_mr.nii.gz"))
        for key, path in row.items():
            if not path.endswith(".nii.gz"):  # the subject and the provenance columns
                continue
            image = nib.load(model_dir / "output" / path)  # relative to inferred.csv's folder
            assert image.shape == mr.shape, (key, image.shape, mr.shape)
            np.testing.assert_allclose(image.affine, mr.affine, atol=1e-5)
        labels = np.asarray(nib.load(model_dir / "output" / row["organs_label"]).dataobj)
        assert set(np.unique(labels)) <= set(range(5))

    rows = list(csv.DictReader(open(model_dir / "evaluation" / "mr_ct_metrics.csv")))
    assert [r["subject"] for r in rows] == [r["subject"] for r in inferred]
    assert "mae" in rows[0] and "dice_bone" in rows[0]
    assert list((model_dir / "analysis").glob("*.png"))
    assert (model_dir / "export" / "sfg" / "1" / "saved_model.pb").is_file()


def test_config_errors_exit_cleanly(cohort, tmp_path):
    config = write_config(tmp_path, cohort)
    text = config.read_text().replace("lr = 0.003", "lr_rate = 0.003")
    config.write_text(text)
    result = run(["train", "-c", str(config)], check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "lr_rate" in result.stderr and "'lr'" in result.stderr and str(config) in result.stderr
    assert not (tmp_path / "model" / "models").exists()

    config = write_config(tmp_path, cohort)
    result = run(["train", "-c", str(config), "--max_iter=ten"], check=False)
    assert result.returncode == 2 and "max_iter" in result.stderr and "ten" in result.stderr


def test_missing_ct_is_named(cohort, tmp_path):
    data = tmp_path / "data"
    for sub in ("MR", "CT", "LABEL"):
        (data / sub).mkdir(parents=True)
        for path in (cohort / sub).iterdir():
            (data / sub / path.name).symlink_to(path)
    (data / "CT" / "subj_002_ct.nii.gz").unlink()
    config = write_config(tmp_path, data)
    result = run(["train", "-c", str(config)], check=False)
    assert result.returncode == 2
    assert "subj_002" in result.stderr and "CT" in result.stderr


@pytest.mark.slow
def test_sigkill_resumes_from_last_checkpoint(cohort, tmp_path):
    config = write_config(tmp_path, cohort, max_iter=400, save_every_n=2, validation_every_n=-1)
    checkpoints = tmp_path / "model" / "models"
    environment = {**os.environ, "SFG_QUIET": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
                   "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}  # small_networks
    process = subprocess.Popen([SFG_RUN, "train", "-c", str(config)], env=environment,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and len(list_checkpoints(checkpoints)) < 2:
        time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = sorted(list_checkpoints(checkpoints))
    assert saved, "no checkpoint was written before the kill"
    last = saved[-1]
    assert last < 400
    resume_to = last + 4
    lock = tmp_path / "model" / ".sfg_run.lock"
    assert lock.is_file()  # the killed run could not release its lock ...
    result = run(["train", "-c", str(config), "--starting_iter=-1", f"--max_iter={resume_to}"])
    assert "taking over the stale lock" in result.stderr and str(process.pid) in result.stderr  # ... it is taken over
    assert not lock.exists()
    assert (checkpoints / f"model-{resume_to}.keras").is_file(), result.stdout[-2000:]
    import keras

    import sfg_keras.models  # noqa: F401  (registers the classes the checkpoint names)

    model = keras.models.load_model(checkpoints / f"model-{resume_to}.keras")
    assert int(model.optimizer.iterations.numpy()) == resume_to


def test_generate_data_and_help():
    result = run(["--help"])
    assert "train" in result.stdout and "export" in result.stdout
    result = run(["config-help"])
    assert "[SFG]" in result.stdout and "lambda2" in result.stdout
    result = run(["train"], check=False)
    assert result.returncode == 2 and "-c" in result.stderr
