"""`PerStream`: apply one transform to every stream of an SFG network, with separate weights per stream."""

from __future__ import annotations

import keras
import numpy as np


def _without_sharing_ids(config):
    """A deep copy of a serialised config without Keras' `shared_object_id` markers.

    While Keras saves or loads a model, `serialize_keras_object` records every object it serialises by `id()` and
    marks a later object with the same id as shared. A template is a temporary: once it is garbage-collected, the next
    PerStream's template can get its address, and deserialising the per-stream copies from a marked config would then
    hand the first copy back for every stream, built twice ("You cannot add new elements of state ... to a layer that
    is already built", the intermittent failure of issue 10). A template config must name no shared object.
    """
    if isinstance(config, dict):
        return {key: _without_sharing_ids(value) for key, value in config.items() if key != "shared_object_id"}
    if isinstance(config, (list, tuple)):
        return type(config)(_without_sharing_ids(value) for value in config)
    return config


@keras.saving.register_keras_serializable(package="sfg")
class PerStream(keras.layers.Layer):
    """Applies a copy of `layer` to each stream `(F_1, ..., F_T, F_s)`; `None` streams stay `None`.

    Every stream gets its own copy, built from `layer`'s config, so layers with weights (residual blocks, convs)
    have separate weights per stream, as the SPEC requires between SFG layers. The `layer` passed in is only a
    template and is never called.

    Args:
        layer: a Keras layer (e.g. `keras.layers.MaxPooling2D(2)`, `ResidualBlock(16)`).

    Example:

    ```python
    streams = SFGConv(16, 3)(images)
    streams = PerStream(keras.layers.MaxPooling2D(2))(streams)
    ```
    """

    def __init__(self, layer: keras.layers.Layer, **kwargs):
        super().__init__(**kwargs)
        if isinstance(layer, dict):
            layer = keras.saving.deserialize_keras_object(layer)
        if not isinstance(layer, keras.layers.Layer):
            raise ValueError(f"`layer` must be a Keras layer. Received: layer={layer!r}")
        self._template_config = _without_sharing_ids(keras.saving.serialize_keras_object(layer))
        self._template_name = layer.name
        self.stream_layers = []
        self._stream_slots = []

    def _clone(self, index: int) -> keras.layers.Layer:
        config = dict(self._template_config)
        config["config"] = {**config["config"], "name": f"{self._template_name}_stream_{index}"}
        return keras.saving.deserialize_keras_object(config)

    def build(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or not all(
            s is None or isinstance(s, (list, tuple)) for s in input_shape
        ):
            raise ValueError(f"{self.name}: expects a list of streams. Received shape {input_shape}")
        for index, shape in enumerate(input_shape):
            if shape is None:
                continue
            layer = self._clone(index)
            layer.build(tuple(shape))
            self.stream_layers.append(layer)
            self._stream_slots.append(index)
        self._num_streams = len(input_shape)
        self.built = True

    def call(self, inputs, training=None):
        if len(inputs) != self._num_streams:
            raise ValueError(f"{self.name}: built for {self._num_streams} streams. Received {len(inputs)}")
        outputs = [None] * len(inputs)
        for slot, layer in zip(self._stream_slots, self.stream_layers):
            if inputs[slot] is None:
                raise ValueError(f"{self.name}: stream {slot} was present at build time but is None now.")
            outputs[slot] = layer(inputs[slot], training=training)
        return tuple(outputs)

    @property
    def stream_slots(self) -> tuple[int, ...]:
        """The stream indices that have a copy of the layer (the streams that were not None at build time), in the
        order of `stream_layers`.

        Example:

        ```python
        for slot, layer in zip(per_stream.stream_slots, per_stream.stream_layers): ...
        ```
        """
        return tuple(self._stream_slots)

    def packable(self, input_assignment: np.ndarray | None = None) -> bool:
        """Whether the layer can transform packed streams whose channels belong to `input_assignment` in one call:
        the wrapped layer has no weights (it acts on every channel alike) and the input is packed streams (not
        None)."""
        return (
            input_assignment is not None
            and self.built
            and bool(self.stream_layers)
            and not any(layer.weights for layer in self.stream_layers)
        )

    def packed_assignment(self, input_assignment: np.ndarray | None = None) -> np.ndarray | None:
        """The group of every packed output channel: the input's (the layer acts on every channel alike)."""
        return input_assignment

    def call_packed(self, inputs, input_assignment=None, training=None):
        """Applies the (weightless) wrapped layer once to packed streams (see `SFGConv.call_packed`)."""
        if not self.packable(input_assignment):
            raise ValueError(f"{self.name}: only a built PerStream of a weightless layer can run on packed streams.")
        return self.stream_layers[0](inputs, training=training)

    def compute_output_spec(self, inputs, training=None):
        template = keras.saving.deserialize_keras_object(self._template_config)
        return tuple(None if x is None else template.compute_output_spec(x) for x in inputs)

    def get_config(self):
        return {**super().get_config(), "layer": self._template_config}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["layer"] = keras.saving.deserialize_keras_object(_without_sharing_ids(config["layer"]))
        return cls(**config)
