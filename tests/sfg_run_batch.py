"""Runs a sequence of `sfg_run` command lines in ONE Python process: `python sfg_run_batch.py JOBS.json RESULTS.json`.

Each job calls `sfg_keras.cli.main(argv)`, the function behind the `sfg_run` console script (argument parsing, the
engine, error handling, the exit status and the messages on stdout / stderr), exactly as `sfg_run demo` runs its
actions one after the other in one process, with `keras.backend.clear_session()` between them. Paying TensorFlow's
import once instead of once per command keeps a matrix of a few dozen commands affordable on a 2-core CI machine.

A job is `{"name": ..., "argv": [...], "watch": {label: folder}}`, or a file operation run between commands
(`{"op": "copytree" | "copy" | "move" | "unlink" | "truncate" | "write" | "replace" | "zero_nifti" | "call", ...}`,
see `OPERATIONS`; `call` runs a function of a test module by its dotted name, e.g. one that damages a file).
For each command the results hold its exit status, stdout, stderr, seconds and the snapshots
(`file_snapshots.snapshot`) of the watched folders before and after it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

from file_snapshots import snapshot


def _truncate(path: str, keep: float = 0.5) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])


def _replace(path: str, old: str, new: str) -> None:
    text = Path(path).read_text()
    if old not in text:
        raise AssertionError(f"{old!r} not in {path}")
    Path(path).write_text(text.replace(old, new, 1))


def _zero_nifti(path: str) -> None:
    import nibabel as nib
    import numpy as np

    image = nib.load(path)
    nib.save(nib.Nifti1Image(np.zeros(image.shape, np.float32), image.affine, image.header), path)


def _call(dotted: str, *args: str) -> None:
    import importlib

    module, _, function = dotted.rpartition(".")
    getattr(importlib.import_module(module), function)(*args)


OPERATIONS = {
    "copytree": lambda source, target: shutil.copytree(source, target, symlinks=True),
    "copy": lambda source, target: shutil.copy2(source, target),
    "move": lambda source, target: shutil.move(source, target),
    "unlink": lambda path: Path(path).unlink(),
    "truncate": _truncate,
    "write": lambda path, text: Path(path).write_text(text),
    "replace": _replace,
    "zero_nifti": _zero_nifti,
    "call": _call,
}


class Batch:
    """Builds a batch of commands (each watching its model_dir and other folders) and file operations, and runs it.

    Example:

    ```python
    batch = Batch(root, config)
    batch.run("train", "train", root / "model")
    results = batch.execute()  # {"train": {"returncode": 0, "stdout": ..., "before": ..., "after": ...}}
    ```
    """

    def __init__(self, root: Path, config: Path | None = None, app: str | None = None):
        self.root, self.config, self.items = Path(root), config, []
        self.app = ["-a", app] if app else []

    def op(self, name: str, *args) -> None:
        self.items.append({"op": name, "args": [str(a) for a in args]})

    def run(self, name: str, action: str, model_dir: Path, *extra: str, watch: tuple = (),
            config: Path | None = None) -> None:
        """Adds `sfg_run ACTION -c CONFIG [-a APP] --model_dir=MODEL_DIR EXTRA...` (CONFIG: the batch's unless
        given), watching `model_dir` and the folders of `watch`."""
        if (config or self.config) is None:
            raise ValueError(f"{name}: no config (neither the batch's nor the command's)")
        folders = {"model_dir": str(model_dir), **{str(p): str(p) for p in watch}}
        self.items.append({"name": name, "argv": [action, "-c", str(config or self.config), *self.app,
                                                  f"--model_dir={model_dir}", *extra], "watch": folders})

    def copy(self, model_dir: Path, name: str) -> Path:
        target = self.root / name
        self.op("copytree", model_dir, target)
        return target

    def execute(self, timeout: int = 1200, check: bool = False) -> dict[str, dict]:
        """Runs the batch in a subprocess; returns the results by command name (and prints their times). With
        `check`, asserts that every command exited 0 (naming the first that did not, with its output)."""
        import subprocess

        jobs, results = self.root / "jobs.json", self.root / "results.json"
        jobs.write_text(json.dumps(self.items))
        tests = Path(__file__).resolve().parent
        environment = {**os.environ, "SFG_QUIET": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
                       "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")])}
        start = time.perf_counter()
        process = subprocess.run([sys.executable, __file__, str(jobs), str(results)], capture_output=True, text=True,
                                 env=environment, timeout=timeout)
        if process.returncode != 0:
            raise AssertionError(f"the batch stopped ({process.returncode}):\n{process.stderr[-5000:]}")
        done = {result["name"]: result for result in json.loads(results.read_text())}
        print(f"\n{len(done)} sfg_run commands in {time.perf_counter() - start:.0f} s: "
              + ", ".join(f"{name} {result['seconds']:.1f} s" for name, result in done.items()))
        for name, result in done.items() if check else ():
            output = f"{result['stdout'][-3000:]}\n{result['stderr'][-3000:]}"
            assert result["returncode"] == 0, f"{name} {result['argv']} exited {result['returncode']}:\n{output}"
        return done


def main(jobs_path: str, results_path: str) -> None:
    import keras

    from sfg_keras.cli import main as sfg_run

    results = []
    for job in json.loads(Path(jobs_path).read_text()):
        if "op" in job:
            OPERATIONS[job["op"]](*job["args"])
            continue
        watched = job.get("watch", {})
        before = {label: snapshot(folder) for label, folder in watched.items()}
        out, err = io.StringIO(), io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = sfg_run(list(job["argv"]))
            except SystemExit as exit_:  # argparse errors
                code = exit_.code if isinstance(exit_.code, int) else 2
        keras.backend.clear_session()
        results.append({
            "name": job["name"], "argv": job["argv"], "returncode": code, "stdout": out.getvalue(),
            "stderr": err.getvalue(), "seconds": time.perf_counter() - start, "before": before,
            "after": {label: snapshot(folder) for label, folder in watched.items()},
        })
        Path(results_path).write_text(json.dumps(results))  # what ran so far, should a later job crash


if __name__ == "__main__":
    os.environ.setdefault("SFG_QUIET", "1")
    main(sys.argv[1], sys.argv[2])
