"""Training recipes: named sets of `[SFG]` values (TensorFlow-free, shared by the config loader and the Python API).

* `search_commit` (**the default** of `NetworkOptions()`, the builders and config files): search, then commit,
  chosen by measurement (`benchmarks/paper_claims.py`, numbers in `BENCHMARKS.md`). The search is the first 20% of
  the run: a balanced start (uniform `p0`); a strong entropy bonus (`lambda2_start = 1`, held for the first 10%,
  then decaying exponentially to `lambda2 = 1e-5` at 20%) keeps `p` near uniform, whatever it started from, while
  the weights learn; the expected network is trained with Gumbel noise brought in gradually (`sampling_warmup`);
  each layer's logit gradient is normalised to unit root-mean-square (`grouping_step = normalized`), so `p` moves at
  a steady rate in every phase, and 10 times as far as the weights (`grouping_lr_multiplier = 10`). At 20%
  (`commit_at`) every kernel is frozen to its MAP group, and the remaining 80% train that fixed network on the
  packed path, at the cost of hard sharing. The network MAP inference and the compact export compute is then the
  network that was trained.
* `paper`: the supplement's exact setup (section 1.1): `p0` = the paper's `[0.2, 0.6, 0.2]` reordered to
  `(task_1, ..., task_T, shared)` (shared 0.6, the rest split evenly), `tau = max(0.1, exp(-1e-5 t))`,
  `lambda1 = 1e-6`, `lambda2 = 1e-5`, one learning rate for weights and grouping logits, per-example
  straight-through sampling, no commit. The paper trained 2e5 to 5e5 iterations with it.
* `fast`: the previous practical recipe (kept for configs that name it): shared-dominant `p0 = (0.05, 0.05, 0.9)`,
  `grouping_lr_multiplier = 10`, relaxed samples annealed to `tau_min` over the first half of the run, no commit.
  Measured: from its shared-dominant start the allocation collapses to hard sharing (99% shared) and costs about
  two hard-sharing steps per step (`BENCHMARKS.md`).

An explicit value always wins over a recipe: in a config file, any `[SFG]` key given in the file or on the command
line; in Python, any field passed to `NetworkOptions.from_recipe(...)` (which maps a recipe to network options).

Example:

```python
from sfg_keras.models import NetworkOptions
model = sfg_small_cnn(tasks, NetworkOptions.from_recipe("paper", num_tasks=2, max_iter=2000))
model = sfg_small_cnn(tasks)   # the default recipe, search_commit, resolved by `fit` from its number of steps
```
"""

from __future__ import annotations

from typing import Any

RECIPES = ("search_commit", "paper", "fast")

DEFAULT_RECIPE = "search_commit"
"""The recipe of `NetworkOptions()`, the builders and config files that name none."""

# `[SFG]` key -> value. `p0_shared` is expanded to a `p0` vector for the number of tasks.
_RECIPE_VALUES: dict[str, dict[str, Any]] = {
    "search_commit": {
        "p0_shared": None,  # uniform over the T + 1 groups
        "init": "constant",
        "hard": False,
        "sampling": "per_example",
        "grouping_lr_multiplier": 10.0,
        "grouping_step": "normalized",
        "tau0": 1.0,
        "tau_decay": 1e-5,
        "tau_decay_until": 0.5,
        "tau_min": 0.1,
        "sampling_warmup": 0.2,
        "commit_at": 0.2,
        "lambda1": 1e-6,
        "lambda2": 1e-5,
        "lambda2_start": 1.0,
        "lambda2_hold": 0.1,
        "lambda2_until": 0.2,
    },
    "paper": {
        "p0_shared": 0.6,
        "init": "constant",
        "hard": True,
        "sampling": "per_example",
        "grouping_lr_multiplier": 1.0,
        "grouping_step": "raw",
        "tau0": 1.0,
        "tau_decay": 1e-5,
        "tau_decay_until": 0.0,
        "tau_min": 0.1,
        "sampling_warmup": 0.0,
        "commit_at": 0.0,
        "lambda1": 1e-6,
        "lambda2": 1e-5,
        "lambda2_start": 0.0,
        "lambda2_hold": 0.0,
        "lambda2_until": 0.0,
    },
    "fast": {
        "p0_shared": 0.9,
        "init": "constant",
        "hard": False,
        "sampling": "per_example",
        "grouping_lr_multiplier": 10.0,
        "grouping_step": "raw",
        "tau0": 1.0,
        "tau_decay": 1e-5,
        "tau_decay_until": 0.5,
        "tau_min": 0.1,
        "sampling_warmup": 0.0,
        "commit_at": 0.0,
        "lambda1": 1e-6,
        "lambda2": 1e-5,
        "lambda2_start": 0.0,
        "lambda2_hold": 0.0,
        "lambda2_until": 0.0,
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
    >>> recipe_p0("search_commit", 3)
    (0.25, 0.25, 0.25, 0.25)
    """
    from sfg_keras.groups import default_p0

    _check(name)
    shared = _RECIPE_VALUES[name]["p0_shared"]
    if shared is None:
        return default_p0(num_tasks, shared=1.0 / (num_tasks + 1))
    return default_p0(num_tasks, shared=shared)


def recipe_values(name: str, num_tasks: int) -> dict[str, Any]:
    """The recipe as `[SFG]` config values (`p0` expanded for `num_tasks`).

    Example:

    >>> recipe_values("paper", 2)["tau_decay"]
    1e-05
    """
    _check(name)
    values = {k: v for k, v in _RECIPE_VALUES[name].items() if k != "p0_shared"}
    return {"p0": recipe_p0(name, num_tasks), **values}
