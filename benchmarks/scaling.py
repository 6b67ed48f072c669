"""How the train-step cost of SFG grows with width and with the number of tasks, as ratios to hard sharing.

For each width multiplier (at T = 2) and each number of tasks T (at one width), SFG-VGG11 is built as `learned`,
`constant_mask` and `hard_sharing`; every step is Keras' compiled train step, timed side by side in one process
(interleaved rounds, medians after warm-up). The tables report milliseconds per step for hard sharing (for
orientation only) and the ratio of each grouping to hard sharing at the same width and T.

What to expect from the arithmetic: a learned layer with streamed input convolves `T + 1` different inputs with
the full kernel (the straight-through estimator needs every group's output for every kernel), so its cost grows
like `T + 1` convolutions; a fixed assignment runs packed, one convolution per layer whatever `T`.

Usage:

```
python benchmarks/scaling.py --widths 0.125 0.25 0.5 --tasks 2 3 5 --size 32 --batch 8
```
"""

from __future__ import annotations

import argparse
import sys

import keras
import numpy as np
from _timing import header, interleaved_medians, markdown_table, milliseconds

from sfg_keras.losses import RMSE
from sfg_keras.models import NetworkOptions, TaskHead, sfg_vgg11

GROUPINGS = ("hard_sharing", "constant_mask", "learned")


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=float, nargs="+", default=[0.125, 0.25, 0.5], help="width multipliers")
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 3, 5], help="numbers of tasks T")
    parser.add_argument("--task-width", type=float, default=0.25, help="width of the T table (default 0.25)")
    parser.add_argument("--size", type=int, default=32, help="image height and width (default 32)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    args = parser.parse_args(argv)
    if min(args.tasks) < 1 or min(args.widths) <= 0 or args.size < 16 or min(args.batch, args.repeats) < 1:
        parser.error(f"need T >= 1, widths > 0, --size >= 16, --batch/--repeats >= 1; received {vars(args)}")
    return args


def _ratios(args, width: float, num_tasks: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    tasks = [TaskHead(f"task_{t + 1}", "regression", 1) for t in range(num_tasks)]
    x = rng.normal(size=(args.batch, args.size, args.size, 3)).astype("float32")
    y = {t.name: rng.normal(size=(args.batch, 1)).astype("float32") for t in tasks}
    steps = {}
    for grouping in GROUPINGS:
        model = sfg_vgg11(tasks, NetworkOptions(width_multiplier=width, grouping=grouping, seed=0))
        model.build((args.batch, args.size, args.size, 3))
        model.resolve_schedule(10**9)  # `learned`: the search phase (the default recipe's commit never comes)
        model.compile(keras.optimizers.Adam(1e-3), loss={t.name: RMSE() for t in tasks})
        steps[grouping] = lambda m=model: m.train_on_batch(x, y)
    return interleaved_medians(steps, repeats=args.repeats, warmup=2)


def main(argv=None) -> None:
    args = _parse_args(argv)
    command = ("python benchmarks/scaling.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    print(header(f"SFG-VGG11 train-step scaling, {args.size}x{args.size}x3, batch {args.batch}", command))
    for title, cases in (
        ("width (T = 2)", [(w, 2) for w in args.widths]),
        (f"number of tasks (width x{args.task_width})", [(args.task_width, t) for t in args.tasks]),
    ):
        rows = []
        for width, num_tasks in cases:
            times = _ratios(args, width, num_tasks)
            base = times["hard_sharing"]
            rows.append([f"x{width}", num_tasks, milliseconds(base)]
                        + [f"{times[g] / base:.2f}" for g in GROUPINGS if g != "hard_sharing"])
            print(f"width {width}, T {num_tasks}: done", file=sys.stderr, flush=True)
        print(f"\nCost vs {title}\n")
        print(markdown_table(["width", "T", "hard_sharing ms / step", "constant_mask x hs", "learned x hs"], rows))


if __name__ == "__main__":
    main()
