"""Runs that cannot be trusted are stopped, through the `sfg_run` console script: a training set changed under a
resumed run, a disk that fills up while a checkpoint is written, a diverging run (non-finite steps), a model_dir in a
read-only location."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess

import pytest
from file_snapshots import snapshot
from test_cli import SFG_RUN, run, write_config


def _run_with_file_size_limit(args, limit_bytes: int) -> subprocess.CompletedProcess:
    """`sfg_run args` where no file may grow beyond `limit_bytes` (writes then fail with EFBIG, as on a full disk)."""

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    environment = {**os.environ, "SFG_QUIET": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([SFG_RUN, *args], capture_output=True, text=True, env=environment, timeout=600,
                          preexec_fn=limit)


@pytest.mark.slow
def test_changed_training_files_full_disk_and_divergence_are_refused(cohort, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(cohort, data)
    config = write_config(tmp_path, data, max_iter=2, save_every_n=2, validation_every_n=2)
    model_dir = tmp_path / "model"
    run(["train", "-c", str(config)])
    record = json.loads((model_dir / "training_files.json").read_text())
    mr_files = [name for name in record["files"] if "/MR/" in f"/{name}"]
    assert mr_files and len(record["digest"]) == 64

    # 1. A training file changed since the normalisation was fitted: the resume is refused, nothing is written.
    changed = tmp_path / mr_files[0] if not os.path.isabs(mr_files[0]) else mr_files[0]
    stat = os.stat(changed)
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    before = snapshot(model_dir)
    refused = run(["train", "-c", str(config), "--max_iter=4", "--starting_iter=-1"], check=False)
    assert refused.returncode == 2, refused.stderr
    assert "training files changed" in refused.stderr and f"changed: {mr_files[0]}" in refused.stderr
    assert snapshot(model_dir) == before
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    # 2. The disk fills up while checkpoint 4 is written: exit 2 naming it, no partial file, checkpoint 2 intact.
    checkpoint_size = (model_dir / "models" / "model-2.keras").stat().st_size
    resume = ["train", "-c", str(config), "--starting_iter=-1"]
    full = _run_with_file_size_limit([*resume, "--max_iter=4", "--save_every_n=4"], checkpoint_size // 2)
    assert full.returncode == 2, full.stderr[-3000:]
    assert "model-4.keras" in full.stderr and "File too large" in full.stderr
    assert sorted(p.name for p in (model_dir / "models").iterdir()) == ["model-2.keras"]
    assert not [p for p in model_dir.rglob("*") if ".tmp" in p.name]

    # 3. A diverging run: the first non-finite step stops it, naming the step; no checkpoint follows it.
    diverged = run([*resume, "--max_iter=12", "--save_every_n=1", "--lr=1e30"], check=False)
    assert diverged.returncode == 2, diverged.stderr[-3000:]
    message = diverged.stderr.split("Training step ")[-1]
    step = int(message.split(":")[0])
    assert 3 <= step <= 12 and "NaN or infinite" in message
    assert re.search(r"the batch held \S+ slice \d+, ", message), message  # the subjects and slices of the batch
    saved = sorted(int(p.stem.split("-")[1]) for p in (model_dir / "models").glob("model-*.keras"))
    assert max(saved) == step - 1


def test_model_dir_in_a_read_only_location_gets_a_specific_message(cohort, tmp_path):
    target = "/sys/kernel/sfg_keras_model"
    if os.access("/sys/kernel", os.W_OK) and not os.path.ismount("/sys"):
        pytest.skip("/sys/kernel is writable here")
    config = write_config(tmp_path, cohort, max_iter=1)
    config.write_text(config.read_text().replace(f"model_dir = {tmp_path / 'model'}", f"model_dir = {target}"))
    result = run(["train", "-c", str(config)], check=False)
    assert result.returncode == 2, result.stderr
    assert f"[SYSTEM] model_dir {target} cannot be created or written" in result.stderr
    assert not os.path.exists(target)
