"""The Gumbel-softmax temperature schedule `tau(t) = max(tau_min, tau0 * exp(-decay_rate * t))`."""

from __future__ import annotations

import math

import keras
from keras import ops

from sfg_keras.keras_adapter import flatten_layers
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

    And the entropy schedule of the search: every learned layer's entropy weight (`lambda2`) is multiplied by
    `entropy_boost` until step `entropy_hold`, then by a factor that decays exponentially to 1 at step
    `entropy_until`. A strong entropy bonus keeps `p` near uniform, whatever it started from, while the weights
    learn; as it decays, `p` commits to the groups the data favour (`entropy_boost = 1`, the default and the paper,
    keeps `lambda2` constant).

    Args:
        tau0: float. Initial temperature. Defaults to 1.0.
        decay_rate: float. The rate `r`. Defaults to 1e-5.
        tau_min: float. The floor. Defaults to 0.1.
        sampling_warmup: int. Steps over which the sampling noise ramps from 0 to 1. Defaults to 0.
        commit_step: int or None. Search, then commit: after this many training steps every learned SFG layer is
            frozen to its MAP assignment (`SFGNetwork.commit`) and the rest of the run trains that network. None
            (the paper) never commits. Defaults to None.
        entropy_boost: float >= 1. Multiplier of the entropy weight at the start. Defaults to 1.0.
        entropy_hold: int. Steps the boost is held. Defaults to 0.
        entropy_until: int. Step at which the multiplier has decayed to 1 (>= `entropy_hold`). Defaults to 0.

    A schedule can also be given relative to the run (`relative`: the temperature decay, warm-up, entropy schedule
    and commit as fractions of the run's steps). It is resolved into steps by `resolved(run_steps)`; `SFGNetwork.fit`
    resolves it from the number of steps it is asked to train.

    Example:

    ```python
    schedule = TemperatureSchedule(tau0=1.0, decay_rate=1e-5, tau_min=0.1)
    float(schedule(1000))   # exp(-0.01) = 0.990...
    relative = TemperatureSchedule.relative(commit_at=0.3)
    relative.resolved(2000).commit_step   # 600
    ```
    """

    #: The arguments of `for_run` that a relative schedule holds (everything but `max_iter`).
    RUN_FRACTION_KEYS = (
        "tau0",
        "tau_min",
        "tau_decay",
        "tau_decay_until",
        "sampling_warmup",
        "commit_at",
        "lambda2",
        "lambda2_start",
        "lambda2_hold",
        "lambda2_until",
    )

    def __init__(
        self,
        tau0: float = 1.0,
        decay_rate: float = 1e-5,
        tau_min: float = 0.1,
        sampling_warmup: int = 0,
        commit_step: int | None = None,
        entropy_boost: float = 1.0,
        entropy_hold: int = 0,
        entropy_until: int = 0,
    ):
        if tau0 <= 0 or tau_min <= 0 or decay_rate < 0:
            raise ValueError(
                "Temperatures must be > 0 and the decay rate >= 0. "
                f"Received: tau0={tau0!r}, tau_min={tau_min!r}, decay_rate={decay_rate!r}"
            )
        if tau_min > tau0:
            raise ValueError(f"`tau_min` must be <= `tau0`. Received: tau_min={tau_min!r}, tau0={tau0!r}")
        if not isinstance(sampling_warmup, int) or sampling_warmup < 0:
            raise ValueError(f"`sampling_warmup` must be an int >= 0. Received: sampling_warmup={sampling_warmup!r}")
        if commit_step is not None and (not isinstance(commit_step, int) or commit_step < 1):
            raise ValueError(f"`commit_step` must be None or an int >= 1. Received: commit_step={commit_step!r}")
        if not entropy_boost >= 1.0:
            raise ValueError(f"`entropy_boost` must be >= 1. Received: entropy_boost={entropy_boost!r}")
        for name, value in (("entropy_hold", entropy_hold), ("entropy_until", entropy_until)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` must be an int >= 0. Received: {name}={value!r}")
        if entropy_until < entropy_hold:
            raise ValueError(
                "`entropy_until` must be >= `entropy_hold`. "
                f"Received: entropy_hold={entropy_hold!r}, entropy_until={entropy_until!r}"
            )
        self.sampling_warmup = sampling_warmup
        self.commit_step = commit_step
        self.entropy_boost = float(entropy_boost)
        self.entropy_hold = entropy_hold
        self.entropy_until = entropy_until
        self.tau0 = float(tau0)
        self.decay_rate = float(decay_rate)
        self.tau_min = float(tau_min)
        self.run_fractions = None  # set by `relative`: the schedule is then in fractions of the run, unresolved

    @classmethod
    def relative(cls, **fractions) -> TemperatureSchedule:
        """A schedule given relative to the run, resolved into steps when the run length is known (`resolved`).

        Args:
            **fractions: arguments of `for_run` other than `max_iter` (`RUN_FRACTION_KEYS`): `tau0`, `tau_min`,
                `tau_decay`, and the fractions of the run `tau_decay_until`, `sampling_warmup`, `commit_at`,
                `lambda2_hold`, `lambda2_until`, with `lambda2` and `lambda2_start` for the entropy schedule.

        Returns:
            An unresolved schedule (`is_relative` is True).

        Example:

        ```python
        schedule = TemperatureSchedule.relative(tau_decay_until=0.5, commit_at=0.3)
        model = sfg_small_cnn(tasks, NetworkOptions(temperature_schedule=schedule))
        model.fit(data, epochs=10)   # resolved from the 10 epochs' steps
        ```
        """
        unknown = sorted(set(fractions) - set(cls.RUN_FRACTION_KEYS))
        if unknown:
            raise ValueError(f"Unknown schedule arguments {unknown}; expected some of {list(cls.RUN_FRACTION_KEYS)}.")
        cls.for_run(1000, **fractions)  # validates the values
        schedule = cls(
            tau0=fractions.get("tau0", 1.0),
            decay_rate=fractions.get("tau_decay", 1e-5),
            tau_min=fractions.get("tau_min", 0.1),
        )
        schedule.run_fractions = dict(fractions)
        return schedule

    @property
    def is_relative(self) -> bool:
        """Whether the schedule is in fractions of the run and still needs the run length (`resolved`)."""
        return self.run_fractions is not None

    def resolved(self, run_steps: int) -> TemperatureSchedule:
        """The schedule in steps for a run of `run_steps` steps (a copy; a schedule in steps is returned as is).

        Example:

        ```python
        TemperatureSchedule.relative(commit_at=0.25).resolved(4000).commit_step   # 1000
        ```
        """
        if not self.is_relative:
            return self
        if isinstance(run_steps, bool) or not isinstance(run_steps, int) or run_steps < 1:
            raise ValueError(f"`run_steps` must be a positive int. Received: run_steps={run_steps!r}")
        return type(self).for_run(run_steps, **self.run_fractions)

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
        commit_at: float = 0.0,
        lambda2: float = 1e-5,
        lambda2_start: float = 0.0,
        lambda2_hold: float = 0.0,
        lambda2_until: float = 0.0,
    ) -> TemperatureSchedule:
        """The schedule of a run of `max_iter` steps from the `[SFG]` settings, whose last three are fractions of it.

        `tau_decay_until > 0` replaces the rate `tau_decay` by the one that reaches `tau_min` at
        `tau_decay_until * max_iter` (`reaching_minimum`); `sampling_warmup` is the warm-up's share of the run;
        `commit_at > 0` commits the learned layers after `commit_at * max_iter` steps (0: never).
        `lambda2_start > lambda2` boosts the entropy weight to `lambda2_start`, held until `lambda2_hold * max_iter`
        and decaying exponentially to `lambda2` at `lambda2_until * max_iter` (0: `lambda2` throughout).

        Example:

        ```python
        schedule = TemperatureSchedule.for_run(2000, tau_decay_until=0.5, sampling_warmup=0.1)
        schedule.value(1000), schedule.sampling_warmup  # 0.1, 200
        ```
        """
        if not 0.0 <= commit_at <= 1.0:
            raise ValueError(f"`commit_at` must be a fraction in [0, 1]. Received: commit_at={commit_at!r}")
        warmup = int(round(sampling_warmup * max_iter))
        commit_step = max(1, int(round(commit_at * max_iter))) if commit_at > 0 else None
        if tau_decay_until > 0:
            steps = max(1, int(round(tau_decay_until * max_iter)))
            schedule = cls.reaching_minimum(steps, tau0=tau0, tau_min=tau_min, sampling_warmup=warmup)
        else:
            schedule = cls(tau0=tau0, decay_rate=tau_decay, tau_min=tau_min, sampling_warmup=warmup)
        schedule.commit_step = commit_step
        if lambda2_start > lambda2:
            if lambda2 <= 0:
                raise ValueError(
                    "An entropy schedule decays to `lambda2`, which must then be > 0. "
                    f"Received: lambda2={lambda2!r}, lambda2_start={lambda2_start!r}"
                )
            schedule.entropy_boost = float(lambda2_start / lambda2)
            schedule.entropy_hold = int(round(lambda2_hold * max_iter))
            schedule.entropy_until = max(schedule.entropy_hold, int(round(lambda2_until * max_iter)))
        return schedule

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

    def entropy_scale(self, step):
        """The multiplier of the entropy weight at `step` (a float32 tensor): `entropy_boost` until `entropy_hold`,
        then `entropy_boost ** (1 - f)` with `f` going from 0 to 1 at `entropy_until`, then 1."""
        if self.entropy_boost == 1.0:
            return ops.ones((), "float32")
        span = float(max(1, self.entropy_until - self.entropy_hold))
        fraction = ops.clip((ops.cast(step, "float32") - float(self.entropy_hold)) / span, 0.0, 1.0)
        return ops.exp((1.0 - fraction) * math.log(self.entropy_boost))

    def entropy_scale_value(self, step: int) -> float:
        """`entropy_scale(step)` as a Python float."""
        if self.entropy_boost == 1.0:
            return 1.0
        span = max(1, self.entropy_until - self.entropy_hold)
        fraction = min(1.0, max(0.0, (step - self.entropy_hold) / span))
        return math.exp((1.0 - fraction) * math.log(self.entropy_boost))

    def get_config(self) -> dict:
        if self.is_relative:
            return {"run_fractions": dict(self.run_fractions)}
        return {
            "tau0": self.tau0,
            "decay_rate": self.decay_rate,
            "tau_min": self.tau_min,
            "sampling_warmup": self.sampling_warmup,
            "commit_step": self.commit_step,
            "entropy_boost": self.entropy_boost,
            "entropy_hold": self.entropy_hold,
            "entropy_until": self.entropy_until,
        }

    @classmethod
    def from_config(cls, config: dict) -> TemperatureSchedule:
        if "run_fractions" in config:
            return cls.relative(**config["run_fractions"])
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
        for child in flatten_layers(layer, include_self=False, recursive=False):
            visit(child)

    visit(model)
    return found


def apply_temperature(model: keras.layers.Layer, step, schedule: TemperatureSchedule) -> None:
    """Sets the temperature (`schedule(step)`), the sampling-noise weight (`schedule.noise(step)`) and the entropy
    multiplier (`schedule.entropy_scale(step)`) of every `SFGConv` in `model` (graph- and XLA-safe)."""
    tau = schedule(step)
    noise = schedule.noise(step)
    scale = schedule.entropy_scale(step)
    for layer in find_sfg_layers(model):
        layer.set_temperature(tau)
        layer.set_sampling_noise(noise)
        layer.set_entropy_scale(scale)
