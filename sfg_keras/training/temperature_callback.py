"""`TemperatureScheduler`: anneals the Gumbel-softmax temperature of the SFG layers in a user's own Keras model."""

from __future__ import annotations

import keras

from sfg_keras.layers.temperature_schedule import TemperatureSchedule, apply_temperature, find_sfg_layers


class TemperatureScheduler(keras.callbacks.Callback):
    """Sets the temperature of every `SFGConv` in the model from the optimizer's step before each training batch.

    `SFGNetwork` already does this inside its `train_step`, exactly at every step; this callback is for a user's
    own (e.g. functional) model that contains `SFGConv` layers. Before each batch it assigns
    `schedule(model.optimizer.iterations)` to the layers' temperature variable, which the compiled step reads.

    Caveat: with `compile(steps_per_execution=N)` Keras calls batch hooks once per execution, so the temperature is
    updated only every `N` steps (it then stays constant for `N` steps). Keep `steps_per_execution=1`, or use
    `SFGNetwork`, when the per-step value matters.

    Args:
        schedule: `TemperatureSchedule`, e.g. `TemperatureSchedule(tau0=1.0, decay_rate=1e-5, tau_min=0.1)`.

    Example:

    ```python
    images = keras.Input((32, 32, 3))
    streams = SFGConv(16, 3, num_tasks=2, seed=0)(images)
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Add()([streams[0], streams[2]]))
    model = keras.Model(images, keras.layers.Dense(1)(pooled))
    model.compile("adam", "mse")
    model.fit(x, y, callbacks=[TemperatureScheduler(TemperatureSchedule(decay_rate=1e-3))])
    ```
    """

    def __init__(self, schedule: TemperatureSchedule):
        super().__init__()
        if not isinstance(schedule, TemperatureSchedule):
            raise ValueError(
                "`schedule` must be a sfg_keras TemperatureSchedule. "
                f"Received: schedule of type {type(schedule).__name__}"
            )
        self.schedule = schedule

    def on_train_begin(self, logs=None):
        if not find_sfg_layers(self.model):
            raise ValueError(
                f"TemperatureScheduler: model {self.model.name!r} contains no SFGConv layer whose temperature to set."
            )

    def on_train_batch_begin(self, batch, logs=None):
        apply_temperature(self.model, self.model.optimizer.iterations, self.schedule)
