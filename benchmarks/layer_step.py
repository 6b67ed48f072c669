"""Forward + backward time of one `SFGConv` layer against plain Keras convolutions of the same shape.

Variants, all timed side by side in one process (interleaved rounds, medians after warm-up, `tf.function` steps
that compute the layer's output in training mode, a scalar loss and the gradients of every trainable weight):

- `Conv2D + BN + PReLU`: one plain convolution block on one stream (the hard-sharing cost floor);
- `3 x (Conv2D + BN + PReLU)`: one block per stream, the dense-routing limit (every group convolves its input);
- `SFGConv learned, per_example` / `per_batch`: the SFG layer on a list of `T + 1 = 3` streams;
- `SFGConv learned, image input`: the first SFG layer of a network (one tensor convolved once for every group);
- `SFGConv hard_sharing`: the fixed all-shared assignment (only the shared group is computed).

Usage:

```
python benchmarks/layer_step.py --batch 16 --size 64 --channels 64 --repeats 10
```
"""

from __future__ import annotations

import argparse
import sys

import keras
import numpy as np
import tensorflow as tf
from _timing import header, interleaved_medians, markdown_table, milliseconds

from sfg_keras.layers import SFGConv


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    parser.add_argument("--size", type=int, default=64, help="image height and width (default 64)")
    parser.add_argument("--channels", type=int, default=64, help="input and output channels (default 64)")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per variant first (default 2)")
    parser.add_argument("--xla", action="store_true", help="compile the steps with XLA (jit_compile=True)")
    args = parser.parse_args(argv)
    if min(args.batch, args.size, args.channels, args.repeats) < 1 or args.warmup < 0:
        parser.error(f"sizes and --repeats must be >= 1 and --warmup >= 0; received {vars(args)}")
    return args


class PlainConvBlock(keras.layers.Layer):
    """Conv2D (no bias) + BatchNormalization + PReLU, the building block of a plain hard-sharing network."""

    def __init__(self, filters: int, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)
        self.norm = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
        self.act = keras.layers.PReLU(shared_axes=[1, 2])

    def call(self, inputs, training=None):
        return self.act(self.norm(self.conv(inputs), training=training))


class PerStreamConvBlocks(keras.layers.Layer):
    """One plain block per stream (the dense-routing limit)."""

    def __init__(self, filters: int, num_streams: int, **kwargs):
        super().__init__(**kwargs)
        self.blocks = [PlainConvBlock(filters) for _ in range(num_streams)]

    def call(self, inputs, training=None):
        return [block(x, training=training) for block, x in zip(self.blocks, inputs)]


def _train_step(layer: keras.layers.Layer, inputs, jit_compile: bool):
    def loss_of(outputs):
        outputs = outputs if isinstance(outputs, list) else [outputs]
        return tf.add_n([tf.reduce_mean(tf.square(y)) for y in outputs if y is not None])

    layer(inputs, training=True)  # build

    @tf.function(jit_compile=jit_compile)
    def step():
        with tf.GradientTape() as tape:
            loss = loss_of(layer(inputs, training=True))
        grads = tape.gradient(loss, layer.trainable_variables)
        return loss, [g for g in grads if g is not None]

    return step


def main(argv=None) -> None:
    args = _parse_args(argv)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    shape = (args.batch, args.size, args.size, args.channels)
    streams = [tf.constant(rng.normal(size=shape).astype("float32")) for _ in range(3)]
    image = streams[0]
    k = args.channels
    variants = {
        "Conv2D + BN + PReLU (1 stream)": (PlainConvBlock(k), image),
        "3 x (Conv2D + BN + PReLU), dense-routing limit": (PerStreamConvBlocks(k, 3), streams),
        "SFGConv learned, per_example, 3 streams": (SFGConv(k, 3, sampling="per_example", seed=1), streams),
        "SFGConv learned, per_batch, 3 streams": (SFGConv(k, 3, sampling="per_batch", seed=2), streams),
        "SFGConv learned, per_example, image input": (SFGConv(k, 3, sampling="per_example", seed=3), image),
        "SFGConv hard_sharing, 3 streams": (SFGConv(k, 3, fixed_assignment=[2] * k), streams),
    }
    steps = {name: _train_step(layer, inputs, args.xla) for name, (layer, inputs) in variants.items()}
    medians = interleaved_medians(steps, repeats=args.repeats, warmup=args.warmup)
    one = medians["Conv2D + BN + PReLU (1 stream)"]
    three = medians["3 x (Conv2D + BN + PReLU), dense-routing limit"]
    rows = [[name, milliseconds(t), f"{t / one:.2f}", f"{t / three:.2f}"] for name, t in medians.items()]
    command = "python benchmarks/layer_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(header(f"SFGConv forward + backward, T = 2, {k} -> {k} channels, {args.size}x{args.size}, "
                 f"batch {args.batch}{', XLA' if args.xla else ''}", command.strip()))
    print(markdown_table(["variant", "median ms / step", "x one Conv2D block", "x three Conv2D blocks"], rows))


if __name__ == "__main__":
    main()
