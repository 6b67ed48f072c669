"""The Gumbel-softmax temperature schedule `tau(t) = max(tau_min, tau0 * exp(-decay_rate * t))`."""

from __future__ import annotations

import math

import keras
from keras import ops

from sfg_keras.layers.sfg_conv import SFGConv


@keras.saving.register_keras_serializable(package="sfg")
class TemperatureSchedule:
    """Exponentially decaying temperature with a floor (SFG supplementary 1.1).

    `tau(t) = max(tau_min, tau0 * exp(-decay_rate * t))`, `t` the training step (the optimizer's iteration count
    before the step's update, so the first step uses `tau0`).

    The schedule also carries the sampling warm-up: the training mask of every SFG layer is
    `s(t) * z + (1 - s(t)) * E[z]` with `s(t) = min(1, t / sampling_warmup)`, so the first steps train the
    expected network and sampling noise is brought in gradually (`sampling_warmup = 0`, the default and the paper,
    samples from the first step). `p` is learned throughout.

    Args:
        tau0: float. Initial temperature. Defaults to 1.0.
        decay_rate: float. The rate `r`. Defaults to 1e-5.
        tau_min: float. The floor. Defaults to 0.1.
        sampling_warmup: int. Steps over which the sampling noise ramps from 0 to 1. Defaults to 0.

    Example:

    ```python
    schedule = TemperatureSchedule(tau0=1.0, decay_rate=1e-5, tau_min=0.1)
    float(schedule(1000))   # exp(-0.01) = 0.990...
    ```
    """

    def __init__(self, tau0: float = 1.0, decay_rate: float = 1e-5, tau_min: float = 0.1, sampling_warmup: int = 0):
        if tau0 <= 0 or tau_min <= 0 or decay_rate < 0:
            raise ValueError(
                "Temperatures must be > 0 and the decay rate >= 0. "
                f"Received: tau0={tau0!r}, tau_min={tau_min!r}, decay_rate={decay_rate!r}"
            )
        if tau_min > tau0:
            raise ValueError(f"`tau_min` must be <= `tau0`. Received: tau_min={tau_min!r}, tau0={tau0!r}")
        if not isinstance(sampling_warmup, int) or sampling_warmup < 0:
            raise ValueError(f"`sampling_warmup` must be an int >= 0. Received: sampling_warmup={sampling_warmup!r}")
        self.sampling_warmup = sampling_warmup
        self.tau0 = float(tau0)
        self.decay_rate = float(decay_rate)
        self.tau_min = float(tau_min)

    @classmethod
    def reaching_minimum(
        cls, steps: int, tau0: float = 1.0, tau_min: float = 0.1, sampling_warmup: int = 0
    ) -> TemperatureSchedule:
        """The schedule that decays from `tau0` to exactly `tau_min` at training step `steps`.

        Use it to give the schedule relative to the run's length: `steps = fraction * max_iter`
        (`[SFG] tau_decay_until` in config files).

        Example:

        ```python
        schedule = TemperatureSchedule.reaching_minimum(steps=1000, tau0=1.0, tau_min=0.1)
        schedule.value(1000)  # 0.1
        schedule.decay_rate   # ln(10) / 1000 = 0.0023...
        ```
        """
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"`steps` must be a positive int. Received: steps={steps!r}")
        if tau0 <= 0 or tau_min <= 0 or tau_min > tau0:
            raise ValueError(f"Need 0 < tau_min <= tau0. Received: tau0={tau0!r}, tau_min={tau_min!r}")
        return cls(
            tau0=tau0, decay_rate=math.log(tau0 / tau_min) / steps, tau_min=tau_min, sampling_warmup=sampling_warmup
        )

    @classmethod
    def for_run(
        cls,
        max_iter: int,
        tau0: float = 1.0,
        tau_min: float = 0.1,
        tau_decay: float = 1e-5,
        tau_decay_until: float = 0.0,
        sampling_warmup: float = 0.0,
    ) -> TemperatureSchedule:
        """The schedule of a run of `max_iter` steps from the `[SFG]` settings, whose last two are fractions of it.

        `tau_decay_until > 0` replaces the rate `tau_decay` by the one that reaches `tau_min` at
        `tau_decay_until * max_iter` (`reaching_minimum`); `sampling_warmup` is the warm-up's share of the run.

        Example:

        ```python
        schedule = TemperatureSchedule.for_run(2000, tau_decay_until=0.5, sampling_warmup=0.1)
        schedule.value(1000), schedule.sampling_warmup  # 0.1, 200
        ```
        """
        warmup = int(round(sampling_warmup * max_iter))
        if tau_decay_until > 0:
            steps = max(1, int(round(tau_decay_until * max_iter)))
            return cls.reaching_minimum(steps, tau0=tau0, tau_min=tau_min, sampling_warmup=warmup)
        return cls(tau0=tau0, decay_rate=tau_decay, tau_min=tau_min, sampling_warmup=warmup)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        return ops.maximum(self.tau_min, self.tau0 * ops.exp(-self.decay_rate * step))

    def value(self, step: int) -> float:
        """The temperature at `step` as a Python float (for logs and tests)."""
        return max(self.tau_min, self.tau0 * math.exp(-self.decay_rate * step))

    def noise(self, step):
        """The sampling-noise weight `s(step) = min(1, step / sampling_warmup)` (a float32 tensor)."""
        if self.sampling_warmup == 0:
            return ops.ones((), "float32")
        return ops.minimum(1.0, ops.cast(step, "float32") / float(self.sampling_warmup))

    def noise_value(self, step: int) -> float:
        """`noise(step)` as a Python float."""
        return 1.0 if self.sampling_warmup == 0 else min(1.0, step / self.sampling_warmup)

    def get_config(self) -> dict:
        return {
            "tau0": self.tau0,
            "decay_rate": self.decay_rate,
            "tau_min": self.tau_min,
            "sampling_warmup": self.sampling_warmup,
        }

    @classmethod
    def from_config(cls, config: dict) -> TemperatureSchedule:
        return cls(**config)


def find_sfg_layers(model: keras.layers.Layer) -> list[SFGConv]:
    """All `SFGConv` layers inside `model` (nested models and wrappers included), in creation order.

    Example:

    ```python
    for layer in find_sfg_layers(model):
        print(layer.name, layer.grouping_probabilities().mean(axis=0))
    ```
    """
    found, seen = [], set()

    def visit(layer):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if isinstance(layer, SFGConv):
            found.append(layer)
            return
        for child in layer._flatten_layers(include_self=False, recursive=False):
            visit(child)

    visit(model)
    return found


def apply_temperature(model: keras.layers.Layer, step, schedule: TemperatureSchedule) -> None:
    """Sets the temperature (`schedule(step)`) and the sampling-noise weight (`schedule.noise(step)`) of every
    `SFGConv` in `model` (graph- and XLA-safe)."""
    tau = schedule(step)
    noise = schedule.noise(step)
    for layer in find_sfg_layers(model):
        layer.set_temperature(tau)
        layer.set_sampling_noise(noise)
