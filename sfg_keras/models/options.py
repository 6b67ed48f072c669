"""`NetworkOptions`: every setting of an SFG network, in the layers' vocabulary, and the one map from config names."""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import keras

from sfg_keras.groups import (
    GROUPING_STEPS,
    GROUPINGS,
    INFERENCE_STATISTICS,
    INIT_MODES,
    MERGE_MODES,
    SAMPLING_MODES,
    check_choice,
    sfg_conv_options,
    validate_p0,
)
from sfg_keras.layers.temperature_schedule import TemperatureSchedule
from sfg_keras.recipes import DEFAULT_RECIPE, recipe_p0, recipe_values

# `[NETWORK] activation_function` choices that Keras spells differently.
_KERAS_ACTIVATION_NAMES = {"leakyrelu": "leaky_relu"}


def _schedule(sfg: Mapping[str, Any], max_iter: int | None) -> TemperatureSchedule:
    """The grouping schedule of the `[SFG]` values: in steps for a run of `max_iter`, or relative to the run."""
    fractions = {key: float(sfg[key]) for key in TemperatureSchedule.RUN_FRACTION_KEYS}
    if max_iter is None:
        return TemperatureSchedule.relative(**fractions)
    return TemperatureSchedule.for_run(int(max_iter), **fractions)


def _sfg_fields(sfg: Mapping[str, Any], max_iter: int | None) -> dict[str, Any]:
    """The options set by the `[SFG]` keys that a recipe also sets (`sfg_keras.recipes.recipe_values`); the schedule
    is relative to the run when `max_iter` is None."""
    return {
        "p_init": tuple(sfg["p0"]) or None,
        "init_mode": sfg["init"],
        "hard": bool(sfg["hard"]),
        "sampling": sfg["sampling"],
        "grouping_lr_multiplier": float(sfg["grouping_lr_multiplier"]),
        "grouping_step": sfg["grouping_step"],
        "kernel_l2": float(sfg["lambda1"]),
        "entropy_weight": float(sfg["lambda2"]),
        "temperature_schedule": _schedule(sfg, max_iter),
    }


# The default recipe's values (`p0` aside, which depends on the number of tasks): the defaults of `NetworkOptions`.
_DEFAULTS = recipe_values(DEFAULT_RECIPE, num_tasks=1)


def _default_schedule() -> TemperatureSchedule:
    return _schedule(_DEFAULTS, max_iter=None)


def _check_number(name: str, value: Any, minimum: float, inclusive: bool) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not (value >= minimum if inclusive else value > minimum):
        bound = f">= {minimum}" if inclusive else f"> {minimum}"
        raise ValueError(f"`{name}` must be a number {bound}. Received: {name}={value!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class NetworkOptions:
    """The settings of an SFG network, named as the arguments of the layers they reach (`SFGConv`, ...).

    Every architecture builder (`sfg_vgg11`, `sfg_highresnet`, `sfg_small_cnn`, a custom one) takes one
    `NetworkOptions` instead of threaded keywords. `from_settings` is the only place that maps config keys
    (`[SFG] lambda1`, `tau0`, ...) to these fields; `from_recipe` gives a named recipe's values. The object is
    immutable and validated on construction; `replace` returns a changed, re-validated copy.

    The defaults are the default recipe, `search_commit` (`sfg_keras.recipes`): a balanced start, a 20% search
    under a decaying entropy bonus with normalised logit steps, then a commit to the MAP architecture, trained for
    the rest of the run at hard-sharing cost. Its schedule is relative to the run: `fit` resolves it from the number
    of steps it trains (`TemperatureSchedule.relative`). `NetworkOptions.from_recipe("paper", ...)` is the paper's.

    Args:
        width_multiplier: float > 0. Multiplies every width of the architecture. Defaults to 1.0.
        grouping: str. `"learned"` (SFG) or a baseline: `"constant_p"`, `"constant_mask"`, `"hard_sharing"`,
            `"single_task"`, `"cross_stitch"` (see `sfg_keras.groups.sfg_conv_options`). Defaults to `"learned"`.
        p_init: initial grouping probabilities `(task_1, ..., task_T, shared)` of `learned` layers, positive and
            summing to 1, or None for the default recipe's (uniform over the `T + 1` groups). Defaults to None.
        init_mode: str. Initial `p` per kernel: `"constant"`, `"random"` or `"vertex"`. Defaults to `"constant"`.
        hard: bool. Straight-through one-hot samples (False: relaxed samples as soft weights). Defaults to False.
        sampling: str. `"per_example"` or `"per_batch"` architecture samples. Defaults to `"per_example"`.
        merge: str. How a task stream meets the shared stream: `"sum"` or `"concat"`. Defaults to `"sum"`.
        activation: str. `"prelu"` or a Keras activation name. Defaults to `"prelu"`.
        inference_statistics: str. Batch-norm statistics at inference: `"batch"` or `"moving"`. Defaults to
            `"batch"`.
        kernel_l2: float >= 0. L2 weight on the convolution kernels. Defaults to 1e-6.
        entropy_weight: float >= 0. Weight of the entropy bonus on the grouping probabilities. Defaults to 1e-5.
        temperature_schedule: `TemperatureSchedule` of the search: temperature (its `tau0` is every SFG layer's
            initial `temperature`), sampling warm-up, entropy schedule and commit. Defaults to the default recipe's,
            relative to the run.
        seed: int >= 0 or None. Base seed of the SFG layers' sampling (layer `i` uses `seed + i`). Defaults to
            None.
        grouping_lr_multiplier: float > 0. Step-size multiplier of the grouping logits. Defaults to 10.0.
        grouping_step: str. `"raw"` or `"normalized"` (each layer's logit gradient rescaled to unit root-mean-square
            at every step). Defaults to `"normalized"`.
        rank: int. Spatial rank of the layers: 2 (images) or 3 (volumes). Defaults to 2.

    Example:

    ```python
    options = NetworkOptions(grouping="learned", p_init=(0.2, 0.2, 0.6), kernel_l2=1e-5, seed=0)
    model = sfg_vgg11(tasks, options.replace(width_multiplier=0.25))
    model = build_network("sfg_vgg11", tasks, NetworkOptions.from_settings(settings), (64, 64, 3))
    ```
    """

    width_multiplier: float = 1.0
    grouping: str = "learned"
    p_init: tuple[float, ...] | None = None
    init_mode: str = _DEFAULTS["init"]
    hard: bool = _DEFAULTS["hard"]
    sampling: str = _DEFAULTS["sampling"]
    merge: str = "sum"
    activation: str = "prelu"
    inference_statistics: str = "batch"
    kernel_l2: float = _DEFAULTS["lambda1"]
    entropy_weight: float = _DEFAULTS["lambda2"]
    temperature_schedule: TemperatureSchedule = dataclasses.field(default_factory=_default_schedule)
    seed: int | None = None
    grouping_lr_multiplier: float = _DEFAULTS["grouping_lr_multiplier"]
    grouping_step: str = _DEFAULTS["grouping_step"]
    rank: int = 2

    def __post_init__(self) -> None:
        _check_number("width_multiplier", self.width_multiplier, 0, inclusive=False)
        check_choice("grouping", self.grouping, GROUPINGS)
        if self.p_init is not None:
            if isinstance(self.p_init, str) or not isinstance(self.p_init, Sequence) or len(self.p_init) < 2:
                raise ValueError(
                    "`p_init` must be None or a sequence of probabilities (task_1, ..., task_T, shared). "
                    f"Received: p_init={self.p_init!r}"
                )
            validate_p0(self.p_init, len(self.p_init) - 1, name="p_init")
            object.__setattr__(self, "p_init", tuple(float(v) for v in self.p_init))
        check_choice("init_mode", self.init_mode, INIT_MODES)
        if not isinstance(self.hard, bool):
            raise ValueError(f"`hard` must be a bool. Received: hard={self.hard!r}")
        check_choice("sampling", self.sampling, SAMPLING_MODES)
        check_choice("merge", self.merge, MERGE_MODES)
        if self.activation != "prelu":
            try:
                keras.activations.get(self.activation)
            except (ValueError, TypeError) as error:
                raise ValueError(
                    f"`activation` must be 'prelu' or a Keras activation name. Received: activation={self.activation!r}"
                ) from error
        check_choice("inference_statistics", self.inference_statistics, INFERENCE_STATISTICS)
        _check_number("kernel_l2", self.kernel_l2, 0, inclusive=True)
        _check_number("entropy_weight", self.entropy_weight, 0, inclusive=True)
        if not isinstance(self.temperature_schedule, TemperatureSchedule):
            raise ValueError(
                "`temperature_schedule` must be a `TemperatureSchedule`. "
                f"Received: temperature_schedule={self.temperature_schedule!r}"
            )
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0):
            raise ValueError(f"`seed` must be None or an int >= 0. Received: seed={self.seed!r}")
        _check_number("grouping_lr_multiplier", self.grouping_lr_multiplier, 0, inclusive=False)
        check_choice("grouping_step", self.grouping_step, GROUPING_STEPS)
        if self.rank not in (2, 3) or isinstance(self.rank, bool):
            raise ValueError(f"`rank` must be 2 (images) or 3 (volumes). Received: rank={self.rank!r}")

    @classmethod
    def from_settings(cls, settings) -> NetworkOptions:
        """The options of a run: the only map from config keys to layer arguments.

        `[NETWORK]` `width_multiplier`, `activation_function` (-> `activation`), `batch_norm`
        (-> `inference_statistics`); `[SFG]` `grouping`, `p0` (-> `p_init`; empty -> None), `init` (-> `init_mode`),
        `hard`, `sampling`, `merge`, `grouping_lr_multiplier`, `lambda1` (-> `kernel_l2`), `lambda2`
        (-> `entropy_weight`), `tau0`, `tau_min`, `tau_decay`, `tau_decay_until` and `sampling_warmup` (->
        `temperature_schedule`, via `TemperatureSchedule.for_run` over `[TRAINING] max_iter`); `[SYSTEM] seed`.

        Args:
            settings: `sfg_keras.config.Settings` of the run.

        Returns:
            The `NetworkOptions` (`rank` 2).

        Example:

        ```python
        options = NetworkOptions.from_settings(load_settings("configs/demo_age_gender.ini"))
        options.kernel_l2  # [SFG] lambda1
        ```
        """
        network, sfg = settings.network, settings.sfg
        activation = network.activation_function
        return cls(
            width_multiplier=float(network.width_multiplier),
            grouping=sfg.grouping,
            merge=sfg.merge,
            activation=_KERAS_ACTIVATION_NAMES.get(activation, activation),
            inference_statistics=network.batch_norm,
            seed=int(settings.system.seed),
            **_sfg_fields(sfg, int(settings.training.max_iter)),
        )

    @classmethod
    def from_recipe(
        cls, recipe: str, num_tasks: int, max_iter: int | None = None, **changes: Any
    ) -> NetworkOptions:
        """The options of a named training recipe (`sfg_keras.recipes.RECIPES`) for a run.

        Args:
            recipe: str. A name in `sfg_keras.recipes.RECIPES`.
            num_tasks: int. Number of tasks `T` (the recipe's `p_init` has `T + 1` values).
            max_iter: int or None. Training steps of the run, for the parts of the schedule given in fractions of
                it; None keeps the schedule relative, resolved by `fit` from its number of steps.
            **changes: other fields, e.g. `grouping` or `width_multiplier`; they win over the recipe.

        Returns:
            The `NetworkOptions`.

        Example:

        ```python
        model = sfg_vgg11(tasks, NetworkOptions.from_recipe("fast", num_tasks=2, max_iter=5000, seed=0))
        ```
        """
        return cls(**{**_sfg_fields(recipe_values(recipe, num_tasks), max_iter), **changes})

    def replace(self, **changes: Any) -> NetworkOptions:
        """Returns a validated copy with some fields changed.

        Example:

        ```python
        hard = options.replace(grouping="hard_sharing")
        ```
        """
        return dataclasses.replace(self, **changes)

    def sfg_conv_kwargs(self, filters: int, num_tasks: int) -> dict[str, Any]:
        """The `SFGConv` keyword arguments of one layer of `filters` kernels, except `kernel_size`, `seed`, `name`.

        The grouping decides `p_init` / `learn_p` or `fixed_assignment` (`sfg_conv_options`); fixed groupings
        drop `init_mode` and `grouping_lr_multiplier`, which they do not use.

        Args:
            filters: int. Kernels of the layer.
            num_tasks: int. Number of tasks `T`.

        Returns:
            A dict to pass as `SFGConv(filters, kernel_size, **kwargs)`.

        Example:

        ```python
        layer = SFGConv(16, 3, seed=0, **NetworkOptions(grouping="constant_mask").sfg_conv_kwargs(16, num_tasks=2))
        ```
        """
        p_init = recipe_p0(DEFAULT_RECIPE, num_tasks) if self.p_init is None else self.p_init
        grouping = sfg_conv_options(self.grouping, filters, num_tasks, p_init)
        kwargs = {
            "num_tasks": num_tasks,
            "rank": self.rank,
            "init_mode": self.init_mode,
            "hard": self.hard,
            "sampling": self.sampling,
            "merge": self.merge,
            "activation": self.activation,
            "inference_statistics": self.inference_statistics,
            "kernel_l2": self.kernel_l2,
            "entropy_weight": self.entropy_weight,
            "temperature": self.temperature_schedule.tau0,
            "grouping_lr_multiplier": self.grouping_lr_multiplier,
            "grouping_step": self.grouping_step,
            **grouping,
        }
        if "fixed_assignment" in grouping:
            del kwargs["init_mode"], kwargs["grouping_lr_multiplier"], kwargs["grouping_step"]
        return kwargs

    def residual_block_kwargs(self) -> dict[str, Any]:
        """The `ResidualBlock` keyword arguments these options set: `rank`, `activation`, `inference_statistics`,
        `kernel_l2`.

        Example:

        ```python
        block = ResidualBlock(16, dilation_rate=2, **options.residual_block_kwargs())
        ```
        """
        return {
            "rank": self.rank,
            "activation": self.activation,
            "inference_statistics": self.inference_statistics,
            "kernel_l2": self.kernel_l2,
        }
