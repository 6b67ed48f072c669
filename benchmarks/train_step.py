"""Train-step time of SFG-VGG11 (or SFG-HighResNet) for every grouping, and inference cost, as ratios to hard sharing.

Part 1: one `SFGNetwork` per grouping (`learned`, `constant_p`, `constant_mask`, `hard_sharing`, `single_task`,
`cross_stitch`) at the same width, two tasks (age regression, gender classification); each step is Keras' compiled
train step (`train_on_batch`: temperature update, sampling, forward, backward, Adam update). `learned` is timed in
its search phase and, as "learned, committed", after `SFGNetwork.commit()` (the MAP network the default recipe trains
for the last 80% of a run). Fixed and committed groupings run packed (`SFGNetwork.packed_execution`); the fixed
baselines' dense formulation is timed too, as the reference.
Part 2: Monte-Carlo inference of `--samples` sampled architectures with `mc_predict` (vectorised: the passes are
stacked along the batch axis) against the same number of deterministic MAP passes, expected-network passes,
hard-sharing passes and a loop of single stochastic passes. All timings are interleaved, side by side in one
process, medians after warm-up.

Usage:

```
python benchmarks/train_step.py --width 0.25 --size 64 --batch 10 --repeats 7 --samples 50
```
"""

from __future__ import annotations

import argparse
import sys

import keras
import numpy as np
import tensorflow as tf
from _timing import header, interleaved_medians, markdown_table, milliseconds

from sfg_keras.inference import mc_predict, stochastic_pass
from sfg_keras.layers import sampling_scope
from sfg_keras.losses import RMSE, CrossEntropy
from sfg_keras.models import GROUPINGS, NetworkOptions, TaskHead, sfg_highresnet, sfg_vgg11

TASKS = [TaskHead("age", "regression", 1), TaskHead("gender", "classification", 2)]


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=float, default=0.25, help="SFG-VGG11 width multiplier (default 0.25)")
    parser.add_argument("--size", type=int, default=64, help="image height and width (default 64)")
    parser.add_argument("--batch", type=int, default=10, help="batch size (default 10)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (default 7)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per variant first (default 2)")
    parser.add_argument("--samples", type=int, default=50, help="Monte-Carlo samples (default 50)")
    parser.add_argument("--architecture", choices=("sfg_vgg11", "sfg_highresnet"), default="sfg_vgg11")
    args = parser.parse_args(argv)
    if args.size < 16 or min(args.batch, args.repeats, args.samples) < 1 or args.warmup < 0 or args.width <= 0:
        parser.error(f"need --size >= 16, --batch/--repeats/--samples >= 1, --warmup >= 0; received {vars(args)}")
    return args


def main(argv=None) -> None:
    args = _parse_args(argv)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, args.size, args.size, 3)).astype("float32")
    y = {"age": rng.uniform(0.1, 0.9, (args.batch, 1)).astype("float32"), "gender": rng.integers(0, 2, args.batch)}
    tasks, losses = TASKS, {"age": RMSE(), "gender": CrossEntropy()}
    if args.architecture == "sfg_highresnet":  # the mr_ct tasks: a regression map and a segmentation, per pixel
        tasks = [TaskHead("ct", "regression", 1), TaskHead("organs", "segmentation", 3)]
        losses = {"ct": RMSE(), "organs": CrossEntropy()}
        y = {"ct": rng.normal(size=(args.batch, args.size, args.size, 1)).astype("float32"),
             "organs": rng.integers(0, 3, (args.batch, args.size, args.size))}
    builder = sfg_vgg11 if args.architecture == "sfg_vgg11" else sfg_highresnet
    models = {}
    variants = [(g, True) for g in GROUPINGS] + [("learned, committed", True)]
    variants += [(g, False) for g in ("constant_mask", "single_task", "cross_stitch")]
    for seed, (grouping, packed) in enumerate(variants):
        name = grouping if packed else f"{grouping} (dense reference)"
        base = grouping.split(",")[0]
        options = NetworkOptions(width_multiplier=args.width, grouping=base, seed=seed % len(GROUPINGS))
        model = builder(tasks, options, name=base)
        model.build((args.batch, args.size, args.size, 3))
        model.resolve_schedule(10**9)  # `learned`: time the search phase (the default recipe's commit never comes)
        if grouping == "learned, committed":  # the committed network of the default recipe (its MAP network)
            model.commit()
        model.packed_execution = packed
        model.compile(keras.optimizers.Adam(1e-3), loss=losses)
        models[name] = model
    steps = {grouping: (lambda m=model: m.train_on_batch(x, y)) for grouping, model in models.items()}
    train = interleaved_medians(steps, repeats=args.repeats, warmup=args.warmup)
    base = train["hard_sharing"]
    rows = [
        [g, f"{models[g].count_params():,}", milliseconds(t), f"{t / base:.2f}"] for g, t in train.items()
    ]
    command = ("python benchmarks/train_step.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    print(header(f"{args.architecture} train step, width x{args.width}, {args.size}x{args.size}x3, batch {args.batch}, "
                 "T = 2", command))
    print(markdown_table(["grouping", "parameters", "median ms / step", "x hard_sharing"], rows))

    learned = models["learned"]
    n = args.samples
    deterministic = tf.function(lambda v: learned(v, training=False, stochastic=False))
    one_stochastic = tf.function(lambda v: stochastic_pass(learned, v))

    def expected_pass(v):
        with sampling_scope(stochastic=False, deterministic="expected"):
            return learned(v, training=False, stochastic=False)

    expected = tf.function(expected_pass)
    hard = tf.function(lambda v: models["hard_sharing"](v, training=False))
    xt = tf.constant(x)

    def loop(function):
        def run():
            return [function(xt) for _ in range(n)]

        return run

    inference = interleaved_medians(
        {
            f"{n} deterministic MAP passes (learned)": loop(deterministic),
            f"{n} hard_sharing passes": loop(hard),
            f"{n} expected-network passes (learned)": loop(expected),
            f"mc_predict, {n} samples, vectorised": (
                lambda: mc_predict(learned, x, num_samples=n, batch_size=args.batch)
            ),
            f"{n} single stochastic passes (loop)": loop(one_stochastic),
        },
        repeats=max(3, args.repeats // 2),
        warmup=1,
    )
    base = inference[f"{n} deterministic MAP passes (learned)"]
    hard_base = inference[f"{n} hard_sharing passes"]
    rows = [[name, milliseconds(t), f"{t / base:.2f}", f"{t / hard_base:.2f}"] for name, t in inference.items()]
    print()
    print(f"Inference of one batch of {args.batch} (learned {args.architecture}, per_example sampling)\n")
    print(markdown_table(["method", "median ms", "x MAP passes", "x hard_sharing passes"], rows))


if __name__ == "__main__":
    main()
