"""`CrossStitch`: the cross-stitch unit (Misra et al., CVPR 2016) for the cross-stitch baseline."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="sfg")
class CrossStitch(keras.layers.Layer):
    """Learned per-channel linear mixing of `N` task streams: `out_t = sum_u alpha[t, u, c] * x_u`.

    The unit takes `N` tensors. Without `channel_groups` they must have the same shape and channel `c` of every
    stream is mixed with channel `c` of the others. With `channel_groups` (one list of channel indices per stream,
    all of equal length) the streams are `K`-channel tensors that are non-zero only on their own channels, as
    produced by an `SFGConv` with a fixed single-task assignment: the `i`-th own channel of every stream is mixed,
    and the result is written back to each stream's own channels (the rest stay zero). Extra list entries (e.g. the
    shared stream of an SFG network, usually `None`) are passed through unchanged when `num_streams` is smaller
    than the list.

    Args:
        num_streams: int. Number of streams mixed (the first `num_streams` entries of the input list).
        self_weight: float. Initial weight of a stream on itself; the rest `1 - self_weight` is split evenly over
            the other streams. Defaults to 0.9 (0.5 would make the streams identical after the first unit).
        channel_groups: list of `num_streams` lists of ints, or None.

    Example:

    ```python
    a, b = CrossStitch(2)([x1, x2])
    ```
    """

    def __init__(
        self,
        num_streams: int,
        self_weight: float = 0.9,
        channel_groups: Sequence[Sequence[int]] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if num_streams < 2:
            raise ValueError(f"`num_streams` must be >= 2. Received: num_streams={num_streams!r}")
        if not 0.0 <= self_weight <= 1.0:
            raise ValueError(f"`self_weight` must be in [0, 1]. Received: self_weight={self_weight!r}")
        if channel_groups is not None:
            channel_groups = [[int(c) for c in group] for group in channel_groups]
            if len(channel_groups) != num_streams or len({len(g) for g in channel_groups}) != 1:
                raise ValueError(
                    f"`channel_groups` needs {num_streams} lists of equal length. "
                    f"Received lengths {[len(g) for g in channel_groups]}"
                )
        self.num_streams = num_streams
        self.self_weight = float(self_weight)
        self.channel_groups = channel_groups

    def build(self, input_shape):
        shapes = [s for s in input_shape[: self.num_streams]]
        if any(s is None for s in shapes):
            raise ValueError(f"{self.name}: the {self.num_streams} mixed streams must all be present.")
        if self.channel_groups is None:
            if len({tuple(s[1:]) for s in shapes}) != 1:
                raise ValueError(f"{self.name}: streams must have the same shape. Received {shapes}")
            channels = shapes[0][-1]
        else:
            channels = len(self.channel_groups[0])
            self._scatter = []
            for group in self.channel_groups:
                scatter = np.full(shapes[0][-1], channels, dtype="int32")
                scatter[np.asarray(group)] = np.arange(channels, dtype="int32")
                self._scatter.append(scatter)
        n = self.num_streams
        other = (1.0 - self.self_weight) / (n - 1)
        init = np.full((n, n, channels), other, dtype="float32")
        init[np.arange(n), np.arange(n)] = self.self_weight
        self.alpha = self.add_weight(
            name="alpha", shape=(n, n, channels), initializer=keras.initializers.Constant(init)
        )
        self.built = True

    def call(self, inputs):
        streams = list(inputs[: self.num_streams])
        if self.channel_groups is not None:
            streams = [ops.take(x, group, axis=-1) for x, group in zip(streams, self.channel_groups)]
        stacked = ops.stack(streams, axis=0)  # [n, B, ..., C]
        alpha = ops.cast(self.alpha, stacked.dtype)
        mixed = ops.einsum("tuc,u...c->t...c", alpha, stacked)
        outputs = [mixed[t] for t in range(self.num_streams)]
        if self.channel_groups is not None:
            outputs = [
                ops.take(ops.concatenate([y, ops.zeros_like(y[..., :1])], axis=-1), scatter, axis=-1)
                for y, scatter in zip(outputs, self._scatter)
            ]
        return outputs + list(inputs[self.num_streams :])

    def compute_output_spec(self, inputs):
        return [None if x is None else keras.KerasTensor(x.shape, dtype=self.compute_dtype) for x in inputs]

    def get_config(self):
        return {
            **super().get_config(),
            "num_streams": self.num_streams,
            "self_weight": self.self_weight,
            "channel_groups": self.channel_groups,
        }
