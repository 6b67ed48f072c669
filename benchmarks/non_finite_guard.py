"""Cost of the non-finite guard: `SFGNetwork.train_step` against the same step without it, side by side.

The guarded step (the default) checks the loss and every gradient for NaN/inf, snapshots the batch-norm statistics
and applies the update under a `cond`; the unguarded step is Keras' own `train_step` after the temperature update,
as `SFGNetwork` did before the guard. Both models have the same architecture, grouping and weights; each timed call
is one compiled `train_on_batch`.

Usage:

```
python benchmarks/non_finite_guard.py --width 0.25 --size 64 --batch 10 --repeats 9
```
"""

from __future__ import annotations

import argparse
import sys

import keras
import numpy as np
from _timing import header, interleaved_medians, markdown_table, milliseconds

from sfg_keras.layers.temperature_schedule import apply_temperature
from sfg_keras.losses import RMSE, CrossEntropy
from sfg_keras.models import NetworkOptions, TaskHead, sfg_vgg11

TASKS = [TaskHead("age", "regression", 1), TaskHead("gender", "classification", 2)]


def _unguarded_train_step(model):
    """Replaces `model.train_step` with the step without the guard (temperature update + Keras' step)."""

    def train_step(data):
        apply_temperature(model, model.optimizer.iterations, model.temperature_schedule)
        return keras.Model.train_step(model, data)

    model.train_step = train_step
    return model


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=float, default=0.25, help="SFG-VGG11 width multiplier (default 0.25)")
    parser.add_argument("--size", type=int, default=64, help="image height and width (default 64)")
    parser.add_argument("--batch", type=int, default=10, help="batch size (default 10)")
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds (default 9)")
    parser.add_argument("--groupings", nargs="+", default=["learned", "hard_sharing"])
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, args.size, args.size, 3)).astype("float32")
    y = {"age": rng.normal(size=(args.batch, 1)).astype("float32"), "gender": rng.integers(0, 2, args.batch)}
    functions, models = {}, {}
    for grouping in args.groupings:
        for guarded in (True, False):
            options = NetworkOptions(seed=0, grouping=grouping, width_multiplier=args.width)
            model = sfg_vgg11(TASKS, options)
            model.build(x.shape)
            model.resolve_schedule(10**9)  # `learned`: the search phase (the default recipe's commit never comes)
            model.compile(keras.optimizers.Adam(1e-4), loss={"age": RMSE(), "gender": CrossEntropy()})
            if not guarded:
                _unguarded_train_step(model)
            name = f"{grouping} {'guarded' if guarded else 'unguarded'}"
            models[name] = model
            functions[name] = lambda m=model: m.train_on_batch(x, y)
    medians = interleaved_medians(functions, repeats=args.repeats)
    rows = []
    for grouping in args.groupings:
        guarded, unguarded = medians[f"{grouping} guarded"], medians[f"{grouping} unguarded"]
        rows.append([grouping, milliseconds(unguarded), milliseconds(guarded), f"{guarded / unguarded:.3f}"])
    print(header("Non-finite guard: guarded / unguarded train step", "python " + " ".join(sys.argv)))
    print(markdown_table(["grouping", "unguarded ms", "guarded ms", "guarded / unguarded"], rows))


if __name__ == "__main__":
    main()
