"""The compact MAP model: an SFG network's deterministic architecture as a plain Keras network of ordinary layers.

At inference with `stochastic=False`, every kernel of an `SFGConv` belongs to its MAP group (`argmax p`), and the
layer's group `g` output is non-zero only on the channels of group `g`'s kernels. `compact_map_model` rebuilds that
computation from stock layers, without sampling, without tensorflow-probability and without any SFG layer class:

* every SFG layer becomes, per group with at least one MAP kernel, a `Conv2D`/`Conv3D` holding only that group's
  kernels, the group's batch normalisation restricted to those channels, and its activation (`PReLU` or
  `Activation`);
* a stream is kept as the few tensors that can be non-zero, each labelled with the channel indices it holds in
  the SFG stream. The merge `X_t = F_t + F_s` becomes a channel concatenation read by the next convolution through
  the matching rows of its kernel (the sum is linear, and the supports are disjoint); the `concat` merge becomes a
  `Dense` on the concatenated channels with the matching rows of the 1x1 projection;
* per-stream pooling is applied to the compact tensors; `ResidualBlock`s are expanded into stock layers
  (`BatchNormalization`-equivalent, `PReLU`, `Conv`, `Add`) on a channel-permuted full-width tensor, with the
  weights permuted to match; cross-stitch units become a 1x1 linear mixing (`Dense` without bias);
* the task heads read `merge(F_t, F_s)` through the matching rows of their first linear layer.

Batch normalisation: an SFG model built with `inference_statistics="batch"` (the default) normalises with the
statistics of the current batch at inference. A stock `keras.layers.BatchNormalization` called with an explicit
`training=True` cannot reproduce this inside a functional model: Keras 3.15 replaces a node's explicit `training`
argument by the outer call's value (`keras/src/models/functional.py`, `operation_fn`), so `predict` and
`model(x, training=False)` would silently switch to the moving statistics. The compact model therefore uses
`sfg_keras.layers.BatchStatisticsNormalization` (a `BatchNormalization` subclass without sampling or TFP, which
never writes its moving statistics outside training) for "batch" models, and a stock `BatchNormalization` (moving
statistics) for "moving" models. Loading a "batch" compact model from a `.keras` file therefore needs
`import sfg_keras.layers`; its SavedModel needs nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from sfg_keras.keras_adapter import build_shapes
from sfg_keras.layers.batch_statistics_normalization import BatchStatisticsNormalization
from sfg_keras.layers.cross_stitch import CrossStitch
from sfg_keras.layers.per_stream import PerStream
from sfg_keras.layers.residual_block import ResidualBlock
from sfg_keras.layers.sfg_conv import SFGConv
from sfg_keras.models.execution_plan import CROSS_STITCH, PER_STREAM, SFG
from sfg_keras.models.sfg_network import SFGNetwork

# Weightless layers that act on every channel on its own and are linear: they may be applied to each tensor of a
# stream separately, even when two tensors hold the same channel (their sum is what the stream means).
_LINEAR_CHANNELWISE = (
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.AveragePooling3D,
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalAveragePooling3D,
    keras.layers.Dropout,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.GaussianDropout,
    keras.layers.GaussianNoise,
    keras.layers.Identity,
    keras.layers.UpSampling2D,
    keras.layers.UpSampling3D,
    keras.layers.ZeroPadding2D,
    keras.layers.ZeroPadding3D,
    keras.layers.Cropping2D,
    keras.layers.Cropping3D,
)
# Weightless channel-wise layers that map zero to zero but are not linear: applied per tensor when the tensors hold
# disjoint channels.
_ZERO_PRESERVING_CHANNELWISE = (
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.MaxPooling3D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalMaxPooling3D,
)


@dataclasses.dataclass(frozen=True)
class _Piece:
    """A tensor holding the channels `channels` (indices into the SFG stream's `width` channels)."""

    tensor: keras.KerasTensor
    channels: np.ndarray


@dataclasses.dataclass(frozen=True)
class _Stream:
    """An SFG stream of `width` channels: the sum of its pieces; channels no piece holds are exactly zero."""

    width: int
    pieces: tuple[_Piece, ...]

    @property
    def disjoint(self) -> bool:
        channels = [c for piece in self.pieces for c in piece.channels.tolist()]
        return len(channels) == len(set(channels))


def model_input_shape(model: keras.Model) -> tuple[int | None, ...]:
    """The input shape an `SFGNetwork` was built with, `(None, *spatial, channels)`.

    Example:

    ```python
    model.build((None, 64, 64, 3))
    model_input_shape(model)   # (None, 64, 64, 3)
    ```
    """
    shapes = build_shapes(model)
    if len(shapes) != 1:
        raise ValueError(
            f"Cannot tell the input shape of model {model.name!r}: it is not built (or was built with several "
            f"inputs: {shapes}). Build it (`model.build((None, H, W, C))`) or pass `input_shape`."
        )
    shape = tuple(next(iter(shapes.values())))
    return (None, *shape[1:])


def _check_input_shape(input_shape: Sequence[int | None], rank: int) -> tuple[int | None, ...]:
    shape = tuple(None if d is None else int(d) for d in input_shape)
    if len(shape) != rank + 2 or shape[-1] is None:
        raise ValueError(
            f"`input_shape` must be (batch, {'spatial, ' * rank}channels) with a known channel count for a rank-{rank} "
            f"SFG network. Received: input_shape={tuple(input_shape)}"
        )
    return (None, *shape[1:])


class _CompactBuilder:
    """Walks an `SFGNetwork` and emits the equivalent functional graph of stock layers."""

    def __init__(self, model: SFGNetwork):
        self.model = model
        self.group_names = model.group_names
        self.used_names: set[str] = set()

    # === Naming and small helpers ===

    def name(self, base: str) -> str:
        candidate, index = base, 1
        while candidate in self.used_names:
            index += 1
            candidate = f"{base}_{index}"
        self.used_names.add(candidate)
        return candidate

    def concat(self, tensors: list, base: str):
        if len(tensors) == 1:
            return tensors[0]
        return keras.layers.Concatenate(axis=-1, name=self.name(base))(tensors)

    def zeros(self, reference, channels: int, base: str):
        """A tensor of `channels` exact zeros with the spatial shape of `reference` (a zero `Dense`)."""
        layer = keras.layers.Dense(
            channels, use_bias=False, kernel_initializer="zeros", trainable=False, name=self.name(base)
        )
        return layer(reference)

    def ensure_pieces(self, stream: _Stream, reference, base: str) -> _Stream:
        """A stream with at least one piece: an all-zero stream becomes one zero channel (labelled channel 0)."""
        if stream.pieces:
            return stream
        return _Stream(stream.width, (_Piece(self.zeros(reference, 1, f"{base}_zeros"), np.array([0])),))

    @staticmethod
    def reference_of(streams) -> keras.KerasTensor:
        for stream in streams:
            if stream is not None and stream.pieces:
                return stream.pieces[0].tensor
        raise ValueError("Cannot build the compact model: every stream is empty at some point of the trunk.")

    @staticmethod
    def stack_rows(parts: list[tuple[_Piece, np.ndarray]]) -> tuple[list, np.ndarray]:
        """Tensors and, per concatenated channel, the row index into a linear layer's input dimension."""
        tensors = [piece.tensor for piece, _ in parts]
        rows = np.concatenate([offset_rows for _, offset_rows in parts]).astype("int64")
        return tensors, rows

    def linear(self, stream_parts, kernel: np.ndarray, bias: np.ndarray | None, reference, base: str, dtype=None):
        """`Dense` over the concatenated pieces of `(stream, row_offset)` pairs, reading the matching rows of an
        `[in, out]` kernel (a channel-wise linear map of the streams' sum, or of their concatenation)."""
        parts = [(piece, piece.channels + offset) for stream, offset in stream_parts for piece in stream.pieces]
        if parts:
            tensors, rows = self.stack_rows(parts)
            kernel_rows = kernel[rows]
        else:
            tensors = [self.zeros(reference, 1, f"{base}_zeros")]
            kernel_rows = np.zeros((1, kernel.shape[-1]), kernel.dtype)
        layer = keras.layers.Dense(kernel.shape[-1], use_bias=bias is not None, dtype=dtype, name=self.name(base))
        output = layer(self.concat(tensors, f"{base}_concat"))
        layer.set_weights([kernel_rows] if bias is None else [kernel_rows, bias])
        return output

    def combine(self, stream: _Stream, reference, base: str) -> _Stream:
        """One piece in canonical channel order `0..width-1` (a 0/1 scatter-add `Dense`)."""
        stream = self.ensure_pieces(stream, reference, base)
        if len(stream.pieces) == 1 and np.array_equal(stream.pieces[0].channels, np.arange(stream.width)):
            return stream
        scatter = np.eye(stream.width, dtype="float32")
        output = self.linear([(stream, 0)], scatter, None, reference, f"{base}_scatter")
        return _Stream(stream.width, (_Piece(output, np.arange(stream.width)),))

    def disjoint_piece(self, stream: _Stream, reference, base: str) -> _Piece:
        """The stream as one piece (concatenation when the pieces hold disjoint channels, else a scatter-add)."""
        stream = self.ensure_pieces(stream, reference, base)
        if len(stream.pieces) == 1:
            return stream.pieces[0]
        if stream.disjoint:
            tensor = self.concat([p.tensor for p in stream.pieces], f"{base}_concat")
            return _Piece(tensor, np.concatenate([p.channels for p in stream.pieces]))
        return self.combine(stream, reference, base).pieces[0]

    def clone(self, layer: keras.layers.Layer, base: str) -> keras.layers.Layer:
        config = {**layer.get_config(), "name": self.name(base)}
        return type(layer).from_config(config)

    # === Normalisation and activation ===

    def normalization(self, norm: keras.layers.BatchNormalization, indices: np.ndarray, tensor, base: str):
        statistics = getattr(norm, "inference_statistics", "moving")
        common = {
            "momentum": norm.momentum,
            "epsilon": norm.epsilon,
            "center": norm.center,
            "scale": norm.scale,
            "dtype": norm.dtype_policy,
            "name": self.name(base),
        }
        if statistics == "batch":
            layer = BatchStatisticsNormalization(inference_statistics="batch", **common)
        else:
            layer = keras.layers.BatchNormalization(**common)
        output = layer(tensor)
        weights = []
        if norm.scale:
            weights.append(np.asarray(norm.gamma.numpy())[indices])
        if norm.center:
            weights.append(np.asarray(norm.beta.numpy())[indices])
        weights += [np.asarray(norm.moving_mean.numpy())[indices], np.asarray(norm.moving_variance.numpy())[indices]]
        layer.set_weights(weights)
        return output

    def activation(self, activation: keras.layers.Layer, indices: np.ndarray, tensor, base: str):
        if isinstance(activation, keras.layers.PReLU):
            layer = keras.layers.PReLU(
                shared_axes=activation.shared_axes, dtype=activation.dtype_policy, name=self.name(base)
            )
            output = layer(tensor)
            layer.set_weights([np.asarray(activation.alpha.numpy())[..., indices]])
            return output
        if isinstance(activation, keras.layers.Activation):
            return self.clone(activation, base)(tensor)
        raise ValueError(
            f"Unsupported activation layer {activation.name!r} of type {type(activation).__name__}: the compact "
            "model handles PReLU and Activation."
        )

    # === SFG layers ===

    def sfg_conv(self, layer: SFGConv, inputs):
        """Streams out of one SFG layer in MAP mode."""
        single_input = isinstance(inputs, _Stream)
        streams = [inputs] if single_input else list(inputs)
        if not single_input and len(streams) != layer.num_groups:
            raise ValueError(f"{layer.name}: expected {layer.num_groups} streams. Received {len(streams)}")
        reference = self.reference_of(streams)
        assignment = layer.map_assignment()  # the fixed assignment itself for a fixed layer (one-hot p)
        kernel = np.asarray(layer.kernel.numpy())
        conv_class = keras.layers.Conv2D if layer.rank == 2 else keras.layers.Conv3D
        outputs: list[_Stream | None] = [None] * layer.num_groups
        for index, g in enumerate(layer.active_groups):
            group = self.group_names[g]
            base = f"{layer.name}_{group}"
            channels = np.flatnonzero(assignment == g)
            if channels.size == 0:
                outputs[g] = _Stream(layer.filters, ())
                continue
            x = inputs if single_input else self.group_input(layer, g, streams, reference, base)
            x = self.ensure_pieces(x, reference, base)
            tensors = [piece.tensor for piece in x.pieces]
            rows = np.concatenate([piece.channels for piece in x.pieces])
            conv = conv_class(
                filters=int(channels.size),
                kernel_size=layer.kernel_size,
                strides=layer.strides,
                padding=layer.padding,
                dilation_rate=layer.dilation_rate,
                use_bias=False,
                dtype=layer.dtype_policy,
                name=self.name(f"{base}_conv"),
            )
            y = conv(self.concat(tensors, f"{base}_concat"))
            conv.set_weights([kernel[..., channels][..., rows, :]])
            norm_indices = np.searchsorted(layer.group_channels(g), channels)
            y = self.normalization(layer.group_norms[index], norm_indices, y, f"{base}_bn")
            y = self.activation(layer.group_activations[index], norm_indices, y, f"{base}_act")
            outputs[g] = _Stream(layer.filters, (_Piece(y, channels),))
        return outputs

    def group_input(self, layer: SFGConv, g: int, streams, reference, base: str) -> _Stream:
        """`X_s = F_s` and `X_t = merge(F_t, F_s)` as a compact stream."""
        if g == layer.num_tasks:
            return self.merge(layer, layer.merge, g, None, streams[g], reference, f"{base}_merge")
        return self.merge(layer, layer.merge, g, streams[g], streams[layer.num_tasks], reference, f"{base}_merge")

    def merge(self, owner, mode: str, t: int, task, shared, reference, base: str) -> _Stream:
        """`merge(F_t, F_s)` (`sfg_keras.layers.stream_merge.merge_streams`) on compact streams, for the input merge
        of an `SFGConv` and the heads' `StreamMerge` alike: `sum` adds the pieces, `concat` becomes a `Dense` on the
        concatenated pieces with the matching rows of `owner.merge_weights(t)`."""
        if task is None or shared is None:
            stream = shared if task is None else task
            if stream is None:
                raise ValueError(f"{owner.name}: {self.group_names[t]} has neither its own nor a shared stream.")
            return stream
        if mode == "sum":
            return _Stream(shared.width, task.pieces + shared.pieces)
        kernel, bias = owner.merge_weights(t)
        output = self.linear([(task, 0), (shared, task.width)], kernel, bias, reference, base, owner.dtype_policy)
        width = kernel.shape[-1]
        return _Stream(width, (_Piece(output, np.arange(width)),))

    # === Stream-wise layers ===

    def residual_block(self, block: ResidualBlock, stream: _Stream, reference, base: str) -> _Stream:
        """The pre-activation block on a full-width tensor whose channels are a permutation of `0..width-1`."""
        piece = self.disjoint_piece(stream, reference, base)
        missing = np.setdiff1d(np.arange(stream.width), piece.channels)
        tensor = piece.tensor
        if missing.size:
            tensor = self.concat([tensor, self.zeros(tensor, int(missing.size), f"{base}_zeros")], f"{base}_full")
        order = np.concatenate([piece.channels, missing]).astype("int64")
        x = tensor
        conv_class = keras.layers.Conv2D if block.rank == 2 else keras.layers.Conv3D
        for i, (norm, act, conv) in enumerate(zip(block.norms, block.activations, block.convs)):
            x = self.normalization(norm, order, x, f"{base}_bn_{i}")
            x = self.activation(act, order, x, f"{base}_act_{i}")
            compact_conv = conv_class(
                filters=conv.filters,
                kernel_size=conv.kernel_size,
                strides=conv.strides,
                padding=conv.padding,
                dilation_rate=conv.dilation_rate,
                use_bias=conv.use_bias,
                dtype=conv.dtype_policy,
                name=self.name(f"{base}_conv_{i}"),
            )
            y = compact_conv(x)
            weights = [np.asarray(conv.kernel.numpy())[..., order, :][..., order]]
            if conv.use_bias:
                weights.append(np.asarray(conv.bias.numpy())[order])
            compact_conv.set_weights(weights)
            x = y
        output = keras.layers.Add(name=self.name(f"{base}_add"))([tensor, x])
        return _Stream(stream.width, (_Piece(output, order),))

    def apply(self, layer: keras.layers.Layer, stream: _Stream, reference, base: str) -> _Stream:
        """One stream-wise layer (per-stream transform or a head layer) on a compact stream."""
        if not stream.pieces and isinstance(layer, _LINEAR_CHANNELWISE + _ZERO_PRESERVING_CHANNELWISE):
            return stream  # zeros stay zeros
        stream = self.ensure_pieces(stream, reference, base)
        if isinstance(layer, ResidualBlock):
            return self.residual_block(layer, stream, reference, base)
        if isinstance(layer, keras.Sequential):
            for i, inner in enumerate(layer.layers):
                stream = self.apply(inner, stream, stream.pieces[0].tensor, f"{base}_{i}")
            return stream
        if isinstance(layer, keras.layers.Dense):
            kernel = np.asarray(layer.kernel.numpy())
            bias = np.asarray(layer.bias.numpy()) if layer.use_bias else None
            output = self.linear([(stream, 0)], kernel, bias, reference, base, layer.dtype_policy)
            if layer.activation is not keras.activations.linear:
                output = keras.layers.Activation(layer.activation, name=self.name(f"{base}_activation"))(output)
            return _Stream(layer.units, (_Piece(output, np.arange(layer.units)),))
        if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)) and layer.groups == 1:
            tensors, rows = self.stack_rows([(piece, piece.channels) for piece in stream.pieces])
            compact = self.clone(layer, base)
            output = compact(self.concat(tensors, f"{base}_concat"))
            weights = [np.asarray(layer.kernel.numpy())[..., rows, :]]
            if layer.use_bias:
                weights.append(np.asarray(layer.bias.numpy()))
            compact.set_weights(weights)
            return _Stream(layer.filters, (_Piece(output, np.arange(layer.filters)),))
        if isinstance(layer, _LINEAR_CHANNELWISE) or (
            isinstance(layer, _ZERO_PRESERVING_CHANNELWISE) and stream.disjoint
        ):
            pieces = tuple(
                _Piece(self.clone(layer, f"{base}_{i}" if len(stream.pieces) > 1 else base)(p.tensor), p.channels)
                for i, p in enumerate(stream.pieces)
            )
            return _Stream(stream.width, pieces)
        if type(layer).__module__.startswith("keras.") and not isinstance(layer, keras.Model):
            # Any other stock layer: give it the stream in canonical channel order and copy its weights.
            canonical = self.combine(stream, reference, base)
            compact = self.clone(layer, base)
            output = compact(canonical.pieces[0].tensor)
            compact.set_weights(layer.get_weights())
            width = output.shape[-1]
            return _Stream(width, (_Piece(output, np.arange(width)),))
        raise ValueError(
            f"The compact model cannot translate layer {layer.name!r} of type {type(layer).__name__}: supported are "
            "SFGConv, PerStream of pooling/dropout/stock layers or ResidualBlock, CrossStitch, Dense, Conv and "
            "Sequential heads."
        )

    def per_stream(self, layer: PerStream, streams: list) -> list:
        reference = self.reference_of(streams)
        outputs = list(streams)
        for slot, inner in zip(layer.stream_slots, layer.stream_layers):
            if streams[slot] is None:
                raise ValueError(f"{layer.name}: stream {slot} was present at build time but is None now.")
            base = f"{layer.name}_{self.group_names[slot]}"
            outputs[slot] = self.apply(inner, streams[slot], reference, base)
        for slot, stream in enumerate(streams):
            if stream is not None and slot not in layer.stream_slots:
                raise ValueError(f"{layer.name}: stream {slot} has no per-stream layer (it was None at build time).")
        return outputs

    def cross_stitch(self, layer: CrossStitch, streams: list) -> list:
        """`out_t[groups[t][i]] = sum_u alpha[t, u, i] * x_u[groups[u][i]]` as one bias-free `Dense` per stream."""
        n = layer.num_streams
        mixed = streams[:n]
        if any(s is None for s in mixed):
            raise ValueError(f"{layer.name}: the {n} mixed streams must all be present.")
        alpha = np.asarray(layer.alpha.numpy())  # [n, n, C]
        groups = layer.channel_groups or [list(range(alpha.shape[-1]))] * n
        groups = [np.asarray(g, dtype="int64") for g in groups]
        pieces = [(u, piece) for u, stream in enumerate(mixed) for piece in stream.pieces]
        outputs = []
        for t in range(n):
            if not pieces:  # every mixed stream is zero, so is the mix
                outputs.append(_Stream(mixed[t].width, ()))
                continue
            blocks = []
            for u, piece in pieces:
                # Column i of stream t reads the i-th own channel of stream u (none beyond its last one).
                block = np.zeros((piece.channels.size, groups[t].size), dtype="float32")
                for row, channel in enumerate(piece.channels.tolist()):
                    for i in np.flatnonzero(groups[u][: groups[t].size] == channel):
                        block[row, i] = alpha[t, u, i]
                blocks.append(block)
            base = f"{layer.name}_{self.group_names[t]}"
            dense = keras.layers.Dense(
                int(groups[t].size), use_bias=False, dtype=layer.dtype_policy, name=self.name(base)
            )
            output = dense(self.concat([piece.tensor for _, piece in pieces], f"{base}_concat"))
            dense.set_weights([np.concatenate(blocks, axis=0)])
            outputs.append(_Stream(mixed[t].width, (_Piece(output, groups[t]),)))
        return outputs + list(streams[n:])

    # === Heads ===

    def task_features(self, streams: list) -> list[_Stream]:
        """Per task the stream `merge(F_t, F_s)` of the heads' `StreamMerge`."""
        merge = self.model.stream_merge
        reference = self.reference_of(streams)
        features = []
        for t in range(len(self.model.tasks)):
            base = f"merge_{self.group_names[t]}"
            feature = self.merge(merge, merge.mode, t, streams[t], streams[-1], reference, base)
            features.append(self.ensure_pieces(feature, reference, base))
        return features

    # === Whole network ===

    def build(self, input_shape, name: str) -> keras.Model:
        images = keras.Input(shape=input_shape[1:], name="images")
        current = _Stream(input_shape[-1], (_Piece(images, np.arange(input_shape[-1])),))
        # The network's own plan: the same reading of the trunk that its forward pass uses.
        for step in self.model.execution_plan.steps:
            layer = step.layer
            if step.role == SFG:
                current = self.sfg_conv(layer, current)
            elif isinstance(current, _Stream):
                raise ValueError(
                    f"The trunk must start with an SFGConv; {layer.name!r} ({type(layer).__name__}) comes first."
                )
            elif step.role == PER_STREAM:
                current = self.per_stream(layer, current)
            elif step.role == CROSS_STITCH:
                current = self.cross_stitch(layer, current)
            else:
                raise ValueError(
                    f"The compact model cannot translate trunk layer {layer.name!r} of type {type(layer).__name__}: "
                    "supported are SFGConv, PerStream and CrossStitch."
                )
        outputs = {}
        for task, head, feature in zip(self.model.tasks, self.model.head_layers, self.task_features(current)):
            reference = feature.pieces[0].tensor
            stream = self.apply(head, feature, reference, f"head_{task.name}")
            stream = self.combine(stream, stream.pieces[0].tensor if stream.pieces else reference, f"head_{task.name}")
            outputs[task.name] = stream.pieces[0].tensor
        return keras.Model(images, outputs, name=name)


def compact_map_model(
    model: SFGNetwork,
    input_shape: Sequence[int | None] | None = None,
    name: str | None = None,
) -> keras.Model:
    """The MAP architecture of an SFG network as a functional Keras model of ordinary layers.

    The result computes what `sfg_keras.inference.map_outputs(model, x)` computes before its softmax: the raw head
    outputs `{task_name: tensor}` (regression values, class logits) of the deterministic MAP network, within float
    rounding (1e-5), with no sampling, no tensorflow-probability and no SFG layer class. It holds only the kernels
    each group keeps (a group without MAP kernels costs nothing). Weights are copied: later training of `model`
    does not change the compact model.

    Batch normalisation follows the SFG model: layers with `inference_statistics="batch"` become
    `BatchStatisticsNormalization` (batch statistics at inference, moving statistics never written outside
    training, so a prediction depends on the other examples of its batch); "moving" layers become stock
    `keras.layers.BatchNormalization`. See the module docstring for why a stock layer with `training=True` cannot
    be used.

    Args:
        model: a built `SFGNetwork` (any architecture and grouping of `sfg_keras.models`).
        input_shape: `(batch, *spatial, channels)`; spatial sizes may be None. Defaults to the shape `model` was
            built with.
        name: str or None. Name of the compact model. Defaults to `"<model.name>_compact"`.

    Returns:
        A `keras.Model` with one input named `images` and a dict of outputs keyed by task name.

    Raises:
        ValueError: for an unbuilt model without `input_shape`, a malformed `input_shape`, or a trunk/head layer
            the translation does not support.

    Example:

    ```python
    model = sfg_small_cnn([TaskHead("digit", "classification", 10), TaskHead("slant", "regression", 1)])
    model.build((None, 28, 28, 1))
    compact = compact_map_model(model)
    logits = compact.predict(images)["digit"]   # == map_outputs(model, images) before the softmax
    ```
    """
    if not isinstance(model, SFGNetwork):
        raise ValueError(f"`model` must be an SFGNetwork. Received: model of type {type(model).__name__}")
    rank = model.sfg_layers[0].rank
    if input_shape is None:
        input_shape = model_input_shape(model)
    input_shape = _check_input_shape(input_shape, rank)
    if not model.built:
        model.build(input_shape)
    return _CompactBuilder(model).build(input_shape, name or f"{model.name}_compact")


def save_compact_model(
    model: SFGNetwork | keras.Model,
    path: str | Path,
    input_shape: Sequence[int | None] | None = None,
) -> Path:
    """Writes the compact MAP model of `model` (or an already compact model) as a `.keras` file.

    Args:
        model: an `SFGNetwork` (translated with `compact_map_model`) or a compact `keras.Model`.
        path: destination ending in `.keras`; missing parent folders are created.
        input_shape: passed to `compact_map_model`. Defaults to the shape `model` was built with.

    Returns:
        The path written.

    Example:

    ```python
    save_compact_model(model, "model_dir/export/sfg_compact-1.keras")
    compact = keras.models.load_model("model_dir/export/sfg_compact-1.keras")   # after `import sfg_keras.layers`
    ```
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"`path` must end in '.keras'. Received: path={str(path)!r}")
    compact = compact_map_model(model, input_shape) if isinstance(model, SFGNetwork) else model
    path.parent.mkdir(parents=True, exist_ok=True)
    compact.save(path)
    return path
