"""The recipe variants tried on the way to `search_commit`: one seed each, final group shares and scores.

Each variant is a change of the `fast` recipe (the previous practical recipe) or a baseline, trained with `fit` on one
task pair of `paper_claims.py` (same data, network, optimiser and batch) for `--steps` steps. The table it prints is
how the default recipe was chosen (BENCHMARKS.md, "How search_commit was chosen"); the 3-seed comparison of the
chosen recipe is `paper_claims.py`.

Variants (fractions are of the run; "entropy a -> b" is `lambda2_start = a` decaying to `lambda2 = b`):

* `fast`: the `fast` recipe as it is (shared-dominant `p0`).
* `fast_uniform`: its balanced (uniform) `p0`.
* `fast_uniform_entropy`: + entropy 1e-2 -> 1e-5 over 30%.
* `fast_uniform_mean_credit`, `fast_uniform_entropy_mean_credit`: + the shared group's gradient counted as the mean
  over tasks instead of the sum (an experiment of this script, not a library option).
* `hold_<start>`: entropy 1 held for 15%, -> 1e-5 at 30%, commit at 30%, from the balanced, shared-dominant or
  random start.
* `uniform_commit`: `fast_uniform` + commit at 30% (no entropy schedule).
* `expected_<start>`: `hold_<start>` + the expected network while searching (`sampling_warmup = 0.3`).
* `normalized_<start>`: `expected_<start>` + normalised logit steps (`grouping_step = normalized`).
* `short_<start>`: `normalized_<start>` with the search shortened to 20% (entropy held 10%, -> 1e-5 at 20%, commit
  and warm-up at 20%): the default recipe `search_commit`.
* `hard_sharing`, `single_task`, `constant_mask`: the fixed baselines.

Usage:

```
python benchmarks/grouping_variants.py --pairs digits --variants fast fast_uniform normalized_uniform --steps 1000
```
"""

from __future__ import annotations

import argparse
import sys
import time

import keras
import numpy as np
from _timing import header, markdown_table
from keras import ops
from paper_claims import PAIRS, Pair, evaluate, shares

from sfg_keras.layers import TemperatureSchedule
from sfg_keras.losses import RMSE, CrossEntropy
from sfg_keras.models import NetworkOptions, sfg_small_cnn
from sfg_keras.recipes import recipe_values

UNIFORM = {"p_init": "uniform"}
STARTS = {"uniform": UNIFORM, "shared": {"p_init": (0.05, 0.05, 0.9)}, "random": {"init_mode": "random"}}
HOLD = {"lambda2_start": 1.0, "lambda2_hold": 0.15, "lambda2_until": 0.3, "commit_at": 0.3}
SHORT = {"lambda2_start": 1.0, "lambda2_hold": 0.1, "lambda2_until": 0.2, "commit_at": 0.2, "sampling_warmup": 0.2}

VARIANTS: dict[str, dict] = {
    "fast": {},
    "fast_uniform": dict(UNIFORM),
    "fast_uniform_entropy": {**UNIFORM, "lambda2_start": 1e-2, "lambda2_until": 0.3},
    "fast_uniform_mean_credit": {**UNIFORM, "credit": "mean"},
    "fast_uniform_entropy_mean_credit": {**UNIFORM, "lambda2_start": 1e-2, "lambda2_until": 0.3, "credit": "mean"},
    "uniform_commit": {**UNIFORM, "commit_at": 0.3},
    "hard_sharing": {"grouping": "hard_sharing"},
    "single_task": {"grouping": "single_task"},
    "constant_mask": {"grouping": "constant_mask"},
}
for _name, _start in STARTS.items():
    VARIANTS[f"hold_{_name}"] = {**_start, **HOLD}
    VARIANTS[f"expected_{_name}"] = {**_start, **HOLD, "sampling_warmup": 0.3}
    VARIANTS[f"normalized_{_name}"] = {**_start, **HOLD, "sampling_warmup": 0.3, "grouping_step": "normalized"}
    VARIANTS[f"short_{_name}"] = {**_start, **SHORT, "grouping_step": "normalized"}

_SCHEDULE_KEYS = set(TemperatureSchedule.RUN_FRACTION_KEYS)


def _mean_credit(layer) -> None:
    """Counts the shared group's assignment gradient as the mean over the tasks it serves instead of their sum (the
    forward pass is unchanged). An experiment of this script only."""
    original = layer._assignment
    factor = np.zeros(layer.num_groups, dtype="float32")
    factor[-1] = 1.0 / layer.num_tasks - 1.0

    def assignment(probs, batch_size, stochastic, training=False):
        value = original(probs, batch_size, stochastic, training=training)
        if not training:
            return value
        scaled = value * ops.convert_to_tensor(factor)
        return value + (scaled - ops.stop_gradient(scaled))

    layer._assignment = assignment


def build(variant: str, pair: Pair, seed: int, steps: int, lr: float) -> keras.Model:
    """The variant's network for a run of `steps` steps."""
    keras.utils.set_random_seed(seed)
    changes = dict(VARIANTS[variant])
    grouping = changes.pop("grouping", "learned")
    credit = changes.pop("credit", "sum")
    if changes.get("p_init") == "uniform":
        changes["p_init"] = (1.0 / 3, 1.0 / 3, 1.0 / 3)
    if grouping != "learned":
        options = NetworkOptions(grouping=grouping, seed=seed)
    else:
        values = recipe_values("fast", len(pair.tasks))
        values.update({k: v for k, v in changes.items() if k in _SCHEDULE_KEYS})
        schedule = TemperatureSchedule.for_run(steps, **{k: values[k] for k in _SCHEDULE_KEYS})
        options = NetworkOptions.from_recipe("fast", num_tasks=len(pair.tasks), max_iter=steps, seed=seed)
        layer_changes = {k: v for k, v in changes.items() if k not in _SCHEDULE_KEYS}
        options = options.replace(temperature_schedule=schedule, **layer_changes)
    model = sfg_small_cnn(pair.tasks, options, widths=(16, 32, 32), name=variant)
    model.build((pair.batch, 28, 28, 1))
    if credit == "mean":
        for layer in model.sfg_layers:
            _mean_credit(layer)
    losses = {t.name: CrossEntropy() if t.is_categorical else RMSE() for t in pair.tasks}
    model.compile(keras.optimizers.Adam(lr), loss=losses)
    return model


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--pairs", nargs="+", default=["digits"], choices=PAIRS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    args = parser.parse_args(argv)
    rows = []
    for pair_name in args.pairs:
        for seed in args.seeds:
            pair = Pair(pair_name, seed, args.batch)
            for variant in args.variants:
                model = build(variant, pair, seed, args.steps, args.lr)
                start = time.perf_counter()
                model.fit(pair.dataset(), steps_per_epoch=args.steps, epochs=1, verbose=0)
                seconds = time.perf_counter() - start
                scores = evaluate(model, pair)["network"]
                layers = "; ".join("/".join(f"{v:.2f}" for v in layer) for layer in shares(model))
                rows.append([pair_name, seed, variant, *(f"{scores[t.name]:.3f}" for t in pair.tasks), layers])
                print(f"{pair_name} seed {seed} {variant}: {seconds:.0f} s", file=sys.stderr, flush=True)
    command = ("python benchmarks/grouping_variants.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    print(header("Recipe variants (one seed each)", command))
    print(markdown_table(["pair", "seed", "variant", "task 1", "task 2", "final shares per layer (t1/t2/shared)"],
                         rows))


if __name__ == "__main__":
    main()
