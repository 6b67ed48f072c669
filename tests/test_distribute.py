"""tf.distribute: `MirroredStrategy` over two logical CPUs (in a subprocess: devices must be set before TF starts)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[1])

_SCRIPT = textwrap.dedent(
    """
    import json
    import os

    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras
    import numpy as np

    from sfg_keras.layers import TemperatureSchedule
    from sfg_keras.losses import RMSE, CrossEntropy
    from sfg_keras.models import NetworkOptions, TaskHead, sfg_small_cnn

    keras.utils.set_random_seed(0)
    schedule = TemperatureSchedule(tau0=1.0, decay_rate=0.1, tau_min=0.1)
    tasks = [TaskHead("a", "regression", 1), TaskHead("b", "classification", 2)]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 8, 8, 1)).astype("float32")
    y = {"a": rng.normal(size=(32, 1)).astype("float32"), "b": rng.integers(0, 2, 32)}
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = sfg_small_cnn(tasks, NetworkOptions(seed=0, temperature_schedule=schedule), widths=(4, 4))
        model.build((8, 8, 8, 1))
        model.compile(keras.optimizers.Adam(0.05), loss={"a": RMSE(), "b": CrossEntropy()})
    p0 = {k: v.tolist() for k, v in model.grouping_probabilities().items()}
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8, drop_remainder=True)
    history = model.fit(dataset, epochs=1, verbose=0)
    predicted = model.predict(x, batch_size=8, verbose=0)
    iterations = int(model.optimizer.iterations.numpy())
    temperatures = [float(layer.temperature.numpy()) for layer in model.sfg_layers]
    # A batch with a NaN pixel on one replica: no weight, slot or moving statistic moves on any replica.
    def state():
        return [v.numpy().copy() for v in model.weights + model.optimizer.variables
                if v.name not in ("temperature", "seed_generator_state", "iteration")]
    before, bad = state(), x[:8].copy()
    bad[6, 1, 1, 0] = np.nan
    nan_history = model.fit(tf.data.Dataset.from_tensor_slices((bad, {k: v[:8] for k, v in y.items()})).batch(8),
                            epochs=1, verbose=0)
    unchanged = all(np.array_equal(a, b) for a, b in zip(before, state()))
    print("RESULT " + json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "iterations": iterations,
        "temperatures": temperatures,
        "expected_temperature": schedule.value(3),
        "loss": history.history["loss"],
        "terms": [history.history[k][0] for k in ("data_loss", "weight_term", "entropy_term")],
        "p0": p0,
        "p": {k: v.tolist() for k, v in model.grouping_probabilities().items()},
        "shapes": {k: list(v.shape) for k, v in predicted.items()},
        "finite": bool(all(np.all(np.isfinite(v)) for v in predicted.values())),
        "nan_step": {"unchanged": unchanged, "flag": nan_history.history["non_finite_step"][0],
                     "iterations": int(model.optimizer.iterations.numpy())},
    }))
    """
)


@pytest.mark.slow
def test_mirrored_strategy_fit_on_two_logical_cpus(tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(_SCRIPT)
    env = {**os.environ, "PYTHONPATH": _ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    completed = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env, cwd=_ROOT
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert completed.returncode == 0 and lines, completed.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result["replicas"] == 2
    assert result["iterations"] == 4
    for value in result["temperatures"]:  # set at every step, last at step 3
        assert value == pytest.approx(result["expected_temperature"], rel=1e-6)
    assert result["expected_temperature"] < 0.75
    assert all(v == v for v in result["loss"])  # not NaN
    # The logged terms add up to the logged loss (they used to be off by the number of replicas).
    assert sum(result["terms"]) == pytest.approx(result["loss"][0], rel=1e-4)
    assert result["terms"][0] > 0.5 * result["loss"][0]
    assert result["shapes"] == {"a": [32, 1], "b": [32, 2]}
    assert result["finite"]
    assert any(p != result["p0"][name] for name, p in result["p"].items())  # p trained across replicas
    assert result["nan_step"] == {"unchanged": True, "flag": 1.0, "iterations": 5}
