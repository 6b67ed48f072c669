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
    stream is mixed with channel `c` of the others. With `channel_groups` (one non-empty list of channel indices per
    stream) the streams are `K`-channel tensors that are non-zero only on their own channels, as produced by an
    `SFGConv` with a fixed single-task assignment: the `i`-th own channel of every stream is mixed (a stream with
    fewer own channels, e.g. when `K` is not a multiple of `N`, contributes zero beyond its last one), and the
    result is written back to each stream's own channels (the rest stay zero). Extra list entries (e.g. the
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
            if len(channel_groups) != num_streams or min(len(g) for g in channel_groups) == 0:
                raise ValueError(
                    f"`channel_groups` needs {num_streams} non-empty lists of channel indices. "
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
            width = shapes[0][-1]
            channels = max(len(group) for group in self.channel_groups)
            self._gather, self._scatter, self._blocks = [], [], []
            for group in self.channel_groups:
                # Own channels first, then the appended zero channel (index `width`) up to `channels` entries.
                gather = np.full(channels, width, dtype="int32")
                gather[: len(group)] = group
                scatter = np.full(width, channels, dtype="int32")
                scatter[np.asarray(group)] = np.arange(len(group), dtype="int32")
                self._gather.append(gather)
                self._scatter.append(scatter)
                # Consecutive own channels (the usual block split) are sliced and padded instead of gathered.
                consecutive = list(group) == list(range(group[0], group[0] + len(group)))
                self._blocks.append((group[0], group[0] + len(group)) if consecutive else None)
            self._width = width
        n = self.num_streams
        other = (1.0 - self.self_weight) / (n - 1)
        init = np.full((n, n, channels), other, dtype="float32")
        init[np.arange(n), np.arange(n)] = self.self_weight
        self.alpha = self.add_weight(
            name="alpha", shape=(n, n, channels), initializer=keras.initializers.Constant(init)
        )
        self.built = True

    def _own_channels(self, x, index: int):
        block, channels = self._blocks[index], self.alpha.shape[-1]
        if block is None:
            return ops.take(ops.concatenate([x, ops.zeros_like(x[..., :1])], axis=-1), self._gather[index], axis=-1)
        own = x[..., block[0] : block[1]]
        if block[1] - block[0] == channels:
            return own
        return ops.pad(own, [[0, 0]] * (len(x.shape) - 1) + [[0, channels - (block[1] - block[0])]])

    def _place(self, y, index: int):
        block = self._blocks[index]
        if block is None:
            return ops.take(ops.concatenate([y, ops.zeros_like(y[..., :1])], axis=-1), self._scatter[index], axis=-1)
        own = y[..., : block[1] - block[0]]
        return ops.pad(own, [[0, 0]] * (len(y.shape) - 1) + [[block[0], self._width - block[1]]])

    def _mix(self, streams):
        """`out_t = sum_u alpha[t, u] * x_u` per channel (element-wise: much cheaper than an einsum on TF/CPU)."""
        alpha = ops.cast(self.alpha, streams[0].dtype)
        outputs = []
        for t in range(self.num_streams):
            mixed = alpha[t, 0] * streams[0]
            for u in range(1, self.num_streams):
                mixed = mixed + alpha[t, u] * streams[u]
            outputs.append(mixed)
        return outputs

    def call(self, inputs):
        streams = list(inputs[: self.num_streams])
        if self.channel_groups is not None:
            streams = [self._own_channels(x, i) for i, x in enumerate(streams)]
        outputs = self._mix(streams)
        if self.channel_groups is not None:
            outputs = [self._place(y, i) for i, y in enumerate(outputs)]
        return tuple(outputs) + tuple(inputs[self.num_streams :])

    def packable(self, input_assignment: np.ndarray | None = None) -> bool:
        """Whether the unit can mix packed streams (see `call_packed`) whose channels belong to `input_assignment`:
        its channel groups are the consecutive blocks of streams `0..num_streams-1` and no other stream exists."""
        if self.channel_groups is None or input_assignment is None:
            return False
        expected = np.concatenate([np.full(len(g), i) for i, g in enumerate(self.channel_groups)])
        blocks = all(b is not None for b in self._blocks) and [b[0] for b in self._blocks] == sorted(
            b[0] for b in self._blocks
        )
        return blocks and np.array_equal(np.asarray(input_assignment), expected)

    def packed_assignment(self, input_assignment: np.ndarray | None = None) -> np.ndarray | None:
        """The group of every packed output channel: the input's (the unit mixes blocks in place)."""
        return input_assignment

    def call_packed(self, inputs, input_assignment=None, training=None):
        """The unit on packed streams: the `num_streams` blocks side by side in one tensor (`SFGConv.call_packed`).

        Equal to `call` on the dense streams, without their zero channels. With blocks of equal width `w` the mix
        is `sum_u coeff_u * roll(x, u * w)` (block `t` of the `u`-th roll is stream `t - u`), a few full-width
        element-wise operations."""
        widths = {stop - start for start, stop in self._blocks}
        if len(widths) == 1:
            n = self.num_streams
            alpha = ops.cast(self.alpha, inputs.dtype)
            mixed = None
            for u in range(n):
                coeff = ops.concatenate([alpha[t, (t - u) % n] for t in range(n)], axis=0)
                shifted = inputs if u == 0 else ops.roll(inputs, shift=u * self.alpha.shape[-1], axis=-1)
                mixed = shifted * coeff if mixed is None else mixed + shifted * coeff
            return mixed
        mixed = self._mix([self._own_channels(inputs, i) for i in range(self.num_streams)])
        return ops.concatenate([y[..., : stop - start] for y, (start, stop) in zip(mixed, self._blocks)], axis=-1)

    def compute_output_spec(self, inputs):
        return tuple(None if x is None else keras.KerasTensor(x.shape, dtype=self.compute_dtype) for x in inputs)

    def get_config(self):
        return {
            **super().get_config(),
            "num_streams": self.num_streams,
            "self_weight": self.self_weight,
            "channel_groups": self.channel_groups,
        }
