"""Training recipes: named sets of `[SFG]` values (TensorFlow-free, shared by the config loader and the Python API).

* `paper`: the supplement's exact setup (section 1.1): `p0` = the paper's `[0.2, 0.6, 0.2]` reordered to
  `(task_1, ..., task_T, shared)` (shared 0.6, the rest split evenly), `tau = max(0.1, exp(-1e-5 t))`,
  `lambda1 = 1e-6`, `lambda2 = 1e-5`, one learning rate for weights and grouping logits, per-example
  straight-through sampling. The paper trained 2e5 to 5e5 iterations with it.
* `fast`: chosen by measurement (`benchmarks/paper_claims.py`, numbers in `BENCHMARKS.md`) so that `learned`
  matches its baselines within a few thousand steps: shared-dominant `p0 = (0.05, 0.05, 0.9)` for two tasks (less
  sampling noise while `p` is far from a vertex: per-example sampling from the paper's `p0` drops about 40% of a
  stream's channels), grouping logits stepping 10 times as far as the weights (`grouping_lr_multiplier = 10`),
  relaxed (soft) samples as weights (`hard = False`) with the temperature annealed from 1 to its floor 0.1 over
  the first half of the run (`tau_decay_until = 0.5`), so the training mask becomes one-hot-like as `p`
  settles. `p` stays learned and sampled at every step.

An explicit value always wins over a recipe: in a config file, any `[SFG]` key given in the file or on the command
line; in Python, any field passed to `NetworkOptions.from_recipe(...)` (which maps a recipe to network options).

Example:

```python
from sfg_keras.models import NetworkOptions
model = sfg_small_cnn(tasks, NetworkOptions.from_recipe("fast", num_tasks=2, max_iter=2000, grouping="learned"))
```
"""

from __future__ import annotations

from typing import Any

RECIPES = ("paper", "fast")

# `[SFG]` key -> value. `p0_shared` is expanded to a `p0` vector for the number of tasks.
_RECIPE_VALUES: dict[str, dict[str, Any]] = {
    "paper": {
        "p0_shared": 0.6,
        "init": "constant",
        "hard": True,
        "sampling": "per_example",
        "grouping_lr_multiplier": 1.0,
        "tau0": 1.0,
        "tau_decay": 1e-5,
        "tau_decay_until": 0.0,
        "tau_min": 0.1,
        "sampling_warmup": 0.0,
        "lambda1": 1e-6,
        "lambda2": 1e-5,
    },
    "fast": {
        "p0_shared": 0.9,
        "init": "constant",
        "hard": False,
        "sampling": "per_example",
        "grouping_lr_multiplier": 10.0,
        "tau0": 1.0,
        "tau_decay": 1e-5,
        "tau_decay_until": 0.5,
        "tau_min": 0.1,
        "sampling_warmup": 0.0,
        "lambda1": 1e-6,
        "lambda2": 1e-5,
    },
}


def _check(name: str) -> None:
    if name not in RECIPES:
        raise ValueError(f"`recipe` must be one of {RECIPES}. Received: recipe={name!r}")


def recipe_p0(name: str, num_tasks: int) -> tuple[float, ...]:
    """The recipe's initial grouping probabilities for `num_tasks` tasks, ordered `(task_1, ..., task_T, shared)`.

    Example:

    >>> recipe_p0("paper", 2)
    (0.2, 0.2, 0.6)
    """
    from sfg_keras.groups import default_p0

    _check(name)
    return default_p0(num_tasks, shared=_RECIPE_VALUES[name]["p0_shared"])


def recipe_values(name: str, num_tasks: int) -> dict[str, Any]:
    """The recipe as `[SFG]` config values (`p0` expanded for `num_tasks`).

    Example:

    >>> recipe_values("paper", 2)["tau_decay"]
    1e-05
    """
    _check(name)
    values = {k: v for k, v in _RECIPE_VALUES[name].items() if k != "p0_shared"}
    return {"p0": recipe_p0(name, num_tasks), **values}
