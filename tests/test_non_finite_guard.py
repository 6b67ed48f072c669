"""Non-finite steps are never applied (`SFGNetwork.train_step`), `NonFiniteGuard` stops or counts them, and
`save_checkpoint` never writes a checkpoint holding NaN or infinity."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from sfg_keras.losses import RMSE, CrossEntropy
from sfg_keras.models import NetworkOptions, TaskHead, sfg_small_cnn
from sfg_keras.training import NonFiniteGuard, NonFiniteStepError
from sfg_keras.training.checkpoints import list_checkpoints, save_checkpoint


def _model_and_data(bad_batch: int | None = 1, value=np.nan):
    tasks = [TaskHead("a", "regression", 1), TaskHead("b", "classification", 2)]
    model = sfg_small_cnn(tasks, NetworkOptions(seed=0), widths=(4, 4))
    model.build((8, 8, 8, 1))
    model.compile(keras.optimizers.Adam(0.05), loss={"a": RMSE(), "b": CrossEntropy()})
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 8, 8, 1)).astype("float32")
    if bad_batch is not None:
        x[8 * bad_batch + 3, 2, 2, 0] = value
    y = {"a": rng.normal(size=(32, 1)).astype("float32"), "b": rng.integers(0, 2, 32)}
    return model, tf.data.Dataset.from_tensor_slices((x, y)).batch(8, drop_remainder=True)


_STEP_STATE = ("temperature", "entropy_scale", "sampling_noise", "seed_generator_state")


class _Record(keras.callbacks.Callback):
    """The weights (trainable and batch-norm statistics) before and after every step, and the step flags. The
    schedule's state (temperature, entropy scale) and the random state (sampling noise) follow the step count, not
    the update, and are left out."""

    def __init__(self):
        super().__init__()
        self.changed, self.flags, self.iterations = [], [], []

    def _state(self):
        return [v.numpy().copy() for v in self.model.weights if v.name not in _STEP_STATE]

    def on_train_batch_begin(self, batch, logs=None):
        self.before = self._state()

    def on_train_batch_end(self, batch, logs=None):
        after = self._state()
        self.changed.append(sum(not np.array_equal(a, b) for a, b in zip(self.before, after)))
        self.flags.append(float(logs["non_finite_step"]))
        self.iterations.append(int(self.model.optimizer.iterations.numpy()))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_non_finite_step_changes_no_weight_and_advances_the_iteration(value):
    model, dataset = _model_and_data(bad_batch=1, value=value)
    record, guard = _Record(), NonFiniteGuard("skip")
    model.fit(dataset, epochs=1, verbose=0, callbacks=[guard, record])
    assert record.flags == [0.0, 1.0, 0.0, 0.0]
    assert record.changed[1] == 0  # no weight, slot or moving statistic moved at the bad step
    assert record.changed[0] > 0 and record.changed[2] > 0
    assert record.iterations == [1, 2, 3, 4]
    assert guard.skipped == [2]
    assert all(np.all(np.isfinite(v.numpy())) for v in model.weights)


def test_stop_policy_raises_naming_the_step_and_the_batch():
    model, dataset = _model_and_data(bad_batch=2)
    guard = NonFiniteGuard("stop", describe_batch=lambda step: f"files of step {step}")
    with pytest.raises(NonFiniteStepError, match=r"Training step 3: .*files of step 3") as caught:
        model.fit(dataset, epochs=1, verbose=0, callbacks=[guard])
    assert caught.value.step == 3
    assert int(model.optimizer.iterations.numpy()) == 3
    assert all(np.all(np.isfinite(v.numpy())) for v in model.weights)


def test_guard_rejects_an_unknown_policy():
    with pytest.raises(ValueError, match="policy='ignore'"):
        NonFiniteGuard("ignore")


def test_save_checkpoint_refuses_non_finite_weights_and_keeps_earlier_ones(tmp_path):
    model, dataset = _model_and_data(bad_batch=None)
    model.fit(dataset, epochs=1, verbose=0)
    good = save_checkpoint(model, tmp_path, 4)
    before = good.read_bytes()
    kernel = next(v for v in model.trainable_weights if "kernel" in v.path)
    kernel.assign(np.full(kernel.shape, np.nan, dtype="float32"))
    with pytest.raises(ValueError, match=r"Not writing .*model-5\.keras: 1 variable\(s\) hold NaN"):
        save_checkpoint(model, tmp_path, 5)
    assert list(list_checkpoints(tmp_path)) == [4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-4.keras"]  # no partial or temporary file
    assert good.read_bytes() == before


def test_batch_examples_are_the_examples_of_the_training_order():
    from sfg_keras.data import batch_examples, example_order

    order = [int(i) for _, i in example_order(7, seed=3).take(4 * 3).as_numpy_iterator()]
    assert [batch_examples(7, 3, batch, 3) for batch in range(4)] == [order[k:k + 3] for k in range(0, 12, 3)]
    with pytest.raises(ValueError, match="batch=-1"):
        batch_examples(7, 3, -1, 3)
