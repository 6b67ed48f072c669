"""Several machines: `[SYSTEM] distribute = multi_worker` (`MultiWorkerMirroredStrategy` from `TF_CONFIG`).

The cluster tests start two worker processes on 127.0.0.1 (free ports) with one `TF_CONFIG` each.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_cli import SFG_RUN, run, write_config

from sfg_keras.config import ConfigError
from sfg_keras.engine.multi_worker import parse_tf_config

_ROOT = str(Path(__file__).resolve().parents[1])
_TESTS = str(Path(__file__).resolve().parent)  # small_networks.py, the network of test_cli.py's config
_DIGEST = re.compile(r"\[sfg_run\] (\w+ \d+) of 2: final weights ([0-9a-f]{16})")


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for handle in sockets:
            handle.bind(("127.0.0.1", 0))
        return [handle.getsockname()[1] for handle in sockets]
    finally:
        for handle in sockets:
            handle.close()


def _tf_config(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                       "task": {"type": "worker", "index": index}})


def _run_cluster(command: list[str], tmp_path: Path, timeout: float = 240) -> list:
    """Runs `command` (argv after the interpreter) as worker 0 and worker 1; returns their `CompletedProcess`es."""
    ports = _free_ports(2)
    environment = {**os.environ, "SFG_QUIET": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
                   "PYTHONPATH": os.pathsep.join([_ROOT, _TESTS, os.environ.get("PYTHONPATH", "")])}
    processes = []
    for index in range(2):
        temporary = tmp_path / f"tmp_worker{index}"
        temporary.mkdir(exist_ok=True)
        env = {**environment, "TF_CONFIG": _tf_config(ports, index), "TMPDIR": str(temporary)}
        processes.append(subprocess.Popen([sys.executable, *command], env=env, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results = []
    deadline = time.time() + timeout
    try:
        for process in processes:
            out, err = process.communicate(timeout=max(1.0, deadline - time.time()))
            results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
            results[-1].pid = process.pid
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


# === TF_CONFIG ===


def test_parse_tf_config_roles():
    cluster = {"worker": ["a:1", "b:2", "c:3"]}
    roles = [parse_tf_config({"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})})
             for i in range(3)]
    assert [role.is_chief for role in roles] == [True, False, False]
    assert {role.num_workers for role in roles} == {3}
    with_chief = {"chief": ["a:1"], "worker": ["b:2"]}
    chief = parse_tf_config({"TF_CONFIG": json.dumps({"cluster": with_chief, "task": {"type": "chief", "index": 0}})})
    worker = parse_tf_config({"TF_CONFIG": json.dumps({"cluster": with_chief, "task": {"type": "worker", "index": 0}})})
    assert chief.is_chief and not worker.is_chief and worker.num_workers == 2 and worker.name == "worker 0"


@pytest.mark.parametrize(
    "value, named",
    [
        (None, "not set"),
        ("{cluster", "not valid JSON"),
        ("[]", "JSON object"),
        (json.dumps({"task": {"type": "worker", "index": 0}}), "'cluster'"),
        (json.dumps({"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, "task": {"type": "worker", "index": 0}}), "'ps'"),
        (json.dumps({"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}), "host:port"),
        (json.dumps({"cluster": {"worker": ["a:1"]}}), "'task'"),
        (json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}), "'index': 2"),
        (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}), "'chief'"),
    ],
)
def test_parse_tf_config_errors_name_tf_config(value, named):
    with pytest.raises(ConfigError) as error:
        parse_tf_config({} if value is None else {"TF_CONFIG": value})
    message = str(error.value)
    assert "TF_CONFIG" in message and "multi_worker" in message and '"cluster"' in message  # shows the expected form
    assert named in message


def test_multi_worker_without_tf_config_exits_2_and_writes_nothing(cohort, tmp_path):
    config = write_config(tmp_path, cohort, max_iter=2)
    environment = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
    result = subprocess.run([SFG_RUN, "train", "-c", str(config), "--distribute=multi_worker"], capture_output=True,
                            text=True, timeout=300, env={**environment, "SFG_QUIET": "1", "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "TF_CONFIG" in result.stderr and "not set" in result.stderr and str(config) in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "model").exists()
    # Other actions never need a cluster: the config of a multi-worker run is usable on one machine afterwards.
    result = run(["analyse", "-c", str(config), "--distribute=multi_worker"], check=False)
    assert "TF_CONFIG" not in result.stderr and "No checkpoint" in result.stderr


def test_keras_patches_are_idempotent_and_leave_single_machine_fit_unchanged():
    import keras
    import numpy as np
    from keras.src.backend.tensorflow import trainer

    from sfg_keras.engine import keras_compat

    x = np.linspace(-1, 1, 24, dtype="float32").reshape(8, 3)

    def fit():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        model.compile(keras.optimizers.SGD(0.1), loss="mse")
        history = model.fit(x, x[:, :1], batch_size=4, epochs=1, verbose=0, shuffle=False)
        return history.history["loss"], [w.numpy() for w in model.weights]

    reference = fit()
    try:
        keras_compat.apply_patches()
        keras_compat.apply_patches()
        assert keras_compat.APPLIED == {"symbolic_build", "reduce_per_replica"}
        assert trainer.reduce_per_replica is keras_compat.reduce_per_replica
        patched = fit()
    finally:
        keras_compat.remove_patches()
    assert trainer.reduce_per_replica is not keras_compat.reduce_per_replica
    assert patched[0] == reference[0]
    for a, b in zip(patched[1], reference[1]):
        np.testing.assert_array_equal(a, b)


# === Two workers ===

_AUDITED_SFG_RUN = textwrap.dedent(
    """
    # `sfg_run ARGS` that reports (to stderr) every file operation of Python code under the folder argv[1].
    import os
    import sys

    ROOT = os.path.realpath(sys.argv[1])
    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


    def inside(path):
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, (str, os.PathLike)):
            return False
        path = os.path.realpath(os.fspath(path))
        return path == ROOT or path.startswith(ROOT + os.sep)


    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            writes = any(c in (mode or "") for c in "wax+") or bool((flags or 0) & WRITE_FLAGS)
            if writes and inside(path):
                print(f"AUDIT {event} {path}", file=sys.stderr)
        elif event in ("os.rename", "os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree", "os.link", "os.symlink"):
            if any(inside(arg) for arg in args[:2]):
                print(f"AUDIT {event} {args[:2]}", file=sys.stderr)


    sys.addaudithook(hook)
    from sfg_keras.cli import main

    sys.exit(main(sys.argv[2:]))
    """
)


@pytest.mark.slow
def test_two_workers_train_in_sync(cohort, tmp_path):
    config = write_config(tmp_path, cohort, max_iter=2, save_every_n=2, validation_every_n=2)
    model_dir = tmp_path / "model"
    script = tmp_path / "audited_sfg_run.py"
    script.write_text(_AUDITED_SFG_RUN)
    start = time.time()
    train = [str(script), str(model_dir), "train", "-c", str(config), "--distribute=multi_worker"]
    first = _run_cluster(train, tmp_path)
    resumed = _run_cluster([*train, "--max_iter=4", "--starting_iter=-1"], tmp_path)
    print(f"two-worker train + resume: {time.time() - start:.1f} s")
    for results in (first, resumed):
        for result in results:
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
        digests = [dict(_DIGEST.findall(result.stdout)) for result in results]
        assert list(digests[0]) == ["worker 0"] and list(digests[1]) == ["worker 1"], [r.stdout for r in results]
        assert digests[0]["worker 0"] == digests[1]["worker 1"]  # the workers end with identical weights
        # The chief writes model_dir (sanity check of the audit), the other worker writes nothing there.
        assert "AUDIT" in results[0].stderr
        assert "AUDIT" not in results[1].stderr, results[1].stderr[-3000:]
        assert not list((tmp_path / "tmp_worker1").iterdir())  # its temporary folder is gone
    assert "training iterations 3..4" in resumed[1].stdout  # the non-chief resumed from the chief's checkpoint too

    # TensorBoard event files are named after their writer's pid: only the chief's are there.
    events = list(model_dir.rglob("events.out.tfevents.*"))
    assert events and {int(path.name.split(".")[-3]) for path in events} == {first[0].pid, resumed[0].pid}, events
    assert {p.name for p in (model_dir / "models").iterdir()} == {"model-2.keras", "model-4.keras"}
    for name in ("settings_train.txt", "model_info.json", "dataset_split.csv", "histogram_ref_file.txt"):
        assert (model_dir / name).is_file(), name
    assert not (model_dir / ".sfg_run.lock").exists()

    # The chief's checkpoint loads (in this process: neither worker's) and holds the weights both workers ended with.
    import keras

    import sfg_keras  # noqa: F401  (registers the classes the checkpoint names)
    from sfg_keras.engine.multi_worker import weights_digest

    model = keras.models.load_model(model_dir / "models" / "model-4.keras")
    assert int(model.optimizer.iterations.numpy()) == 4
    assert weights_digest(model) == _DIGEST.findall(resumed[0].stdout)[0][1]


@pytest.mark.slow
def test_a_failing_chief_stops_every_worker_cleanly(cohort, tmp_path):
    data = tmp_path / "data"
    for sub in ("MR", "CT", "LABEL"):
        (data / sub).mkdir(parents=True)
        for path in (cohort / sub).iterdir():
            (data / sub / path.name).symlink_to(path)
    (data / "CT" / "subj_002_ct.nii.gz").unlink()  # the chief's input checks fail
    config = write_config(tmp_path, data, max_iter=2)
    chief, worker = _run_cluster([SFG_RUN, "train", "-c", str(config), "--distribute=multi_worker"], tmp_path,
                                 timeout=180)
    assert chief.returncode == 2 and "subj_002" in chief.stderr, chief.stderr[-2000:]
    assert worker.returncode == 2, worker.stderr[-3000:]
    assert "worker 1: training stopped" in worker.stderr and "Traceback" not in worker.stderr
    assert not (tmp_path / "model").exists()  # no error log, nothing else


_KERAS_BUGS = textwrap.dedent(
    """
    # Minimal reproduction of the Keras 3.15 multi-worker bugs that sfg_keras.engine.keras_compat patches.
    import json
    import os

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    import keras
    import numpy as np

    from sfg_keras.engine import keras_compat


    def fit():
        x = np.linspace(-1, 1, 48, dtype="float32").reshape(16, 3)
        with strategy.scope():
            model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, kernel_initializer="ones")])
            model.compile(keras.optimizers.SGD(0.1), loss="mse")
        dataset = tf.data.Dataset.from_tensor_slices((x, x[:, :1])).batch(4, drop_remainder=True)
        try:
            model.fit(dataset, epochs=1, verbose=0)
        except Exception as error:
            return f"{type(error).__name__}: {error}"
        return "trained " + str(model.optimizer.iterations.numpy())


    result = {"unpatched": fit()}
    keras_compat.patch_symbolic_build()
    result["bug 1 patched"] = fit()
    keras_compat.patch_reduce_per_replica()
    result["both patched"] = fit()
    print("RESULT " + json.dumps(result), flush=True)
    """
)


@pytest.mark.slow
def test_keras_multi_worker_bugs_still_present(tmp_path):
    """Fails once Keras fixes the bugs that `sfg_keras.engine.keras_compat` works around: then drop the patch."""
    script = tmp_path / "keras_bugs.py"
    script.write_text(_KERAS_BUGS)
    for result in _run_cluster([str(script)], tmp_path, timeout=180):
        lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
        assert result.returncode == 0 and lines, result.stderr[-3000:]
        outcome = json.loads(lines[-1][len("RESULT "):])
        assert "Attempt to convert a value" in outcome["unpatched"], (
            f"Keras no longer fails in _maybe_symbolic_build under multi-worker ({outcome['unpatched']!r}): remove "
            "keras_compat.patch_symbolic_build"
        )
        assert "Invalid reduction dimension 0" in outcome["bug 1 patched"], (
            f"Keras no longer fails reducing scalar logs under multi-worker ({outcome['bug 1 patched']!r}): remove "
            "keras_compat.patch_reduce_per_replica"
        )
        assert outcome["both patched"] == "trained 4"
