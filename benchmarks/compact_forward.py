"""Forward time of the compact MAP model against the SFG model's MAP forward and a hard-sharing SFG-VGG11.

All models run side by side in one process, interleaved call by call, each compiled with `tf.function` and warmed
up first; the table reports the median time of one forward pass and its ratio to the SFG model's MAP forward and to
the hard-sharing SFG-VGG11 of the same width. The learned SFG-VGG11 uses a `vertex` initialisation, so its MAP
architecture mixes task-specific and shared kernels in every layer (the proportions of `p0`).

Usage:

```
python benchmarks/compact_forward.py --repeats 30 --width 0.25
```
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

from sfg_keras.compact import compact_map_model
from sfg_keras.models import NetworkOptions, TaskHead, sfg_vgg11

TASKS = [TaskHead("age", "regression", 1), TaskHead("gender", "classification", 2)]


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed forward passes per model (default 30)")
    parser.add_argument("--width", type=float, default=0.25, help="SFG-VGG11 width multiplier (default 0.25)")
    parser.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    parser.add_argument("--size", type=int, default=64, help="image height and width (default 64)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per model first (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs (default 0)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.batch < 1 or args.size < 16 or args.width <= 0:
        parser.error(
            "need --repeats >= 1, --warmup >= 0, --batch >= 1, --size >= 16 (four 2x2 poolings) and --width > 0; "
            f"received {vars(args)}"
        )
    return args


def _machine() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    device = ", ".join(tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus)
    return (
        f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{'GPU: ' + device if gpus else 'CPU only'}; TensorFlow {tf.__version__}, Keras {keras.__version__}"
    )


def _count_conv_kernels(model: keras.Model) -> int:
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables if v.path.endswith("kernel"))


def main(argv=None) -> None:
    args = _parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    shape = (None, args.size, args.size, 3)
    options = NetworkOptions(width_multiplier=args.width, init_mode="vertex", seed=args.seed)
    learned = sfg_vgg11(TASKS, options, name="sfg_learned")
    learned.build(shape)
    hard = sfg_vgg11(TASKS, options.replace(grouping="hard_sharing"), name="sfg_hard")
    hard.build(shape)
    compact = compact_map_model(learned)
    compact_hard = compact_map_model(hard)

    def sfg_forward(model):
        return tf.function(lambda x: model(x, training=False, stochastic=False))

    def keras_forward(model):
        return tf.function(lambda x: model(x, training=False))

    candidates = {
        "SFG-VGG11 learned, MAP forward": sfg_forward(learned),
        "compact MAP model (learned)": keras_forward(compact),
        "SFG-VGG11 hard_sharing": sfg_forward(hard),
        "compact hard_sharing (plain VGG11)": keras_forward(compact_hard),
    }
    parameters = {
        "SFG-VGG11 learned, MAP forward": _count_conv_kernels(learned),
        "compact MAP model (learned)": _count_conv_kernels(compact),
        "SFG-VGG11 hard_sharing": _count_conv_kernels(hard),
        "compact hard_sharing (plain VGG11)": _count_conv_kernels(compact_hard),
    }
    x = tf.constant(np.random.default_rng(args.seed).normal(size=(args.batch, args.size, args.size, 3)), tf.float32)

    reference = candidates["SFG-VGG11 learned, MAP forward"](x)
    difference = max(
        float(tf.reduce_max(tf.abs(candidates["compact MAP model (learned)"](x)[t.name] - reference[t.name])))
        for t in TASKS
    )
    for function in candidates.values():
        for _ in range(args.warmup):
            tf.nest.map_structure(lambda t: t.numpy(), function(x))
    times = {name: [] for name in candidates}
    for _ in range(args.repeats):
        for name, function in candidates.items():
            start = time.perf_counter()
            tf.nest.map_structure(lambda t: t.numpy(), function(x))
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    base_map = medians["SFG-VGG11 learned, MAP forward"]
    base_hard = medians["SFG-VGG11 hard_sharing"]

    counts = learned.map_counts()
    mixed = sum(counts[name][g] for name in counts for g in ("age", "gender"))
    total = sum(sum(c.values()) for c in counts.values())
    print(f"# Compact MAP model forward ({datetime.datetime.now().isoformat(timespec='seconds')})")
    print()
    print(f"Machine: {_machine()}")
    print(
        f"Setup: SFG-VGG11 width x{args.width}, batch {args.batch}, {args.size}x{args.size}x3, "
        f"{args.repeats} interleaved timed calls after {args.warmup} warm-up calls, tf.function; "
        f"learned model with vertex init: {mixed}/{total} kernels task-specific at MAP; "
        f"max |compact - SFG MAP| = {difference:.1e}"
    )
    print()
    print("| model | conv/dense kernel weights | median forward (ms) | ratio to SFG MAP | ratio to hard_sharing SFG |")
    print("|---|---:|---:|---:|---:|")
    for name, median in medians.items():
        print(
            f"| {name} | {parameters[name]:,} | {1000 * median:.2f} | {median / base_map:.2f} | "
            f"{median / base_hard:.2f} |"
        )


if __name__ == "__main__":
    main()
