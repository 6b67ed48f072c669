"""`ServingModel`: raw request in, checked, preprocessed, predicted, bounded, in physical units out.

One Keras model computes what every exported artefact serves: the SavedModel signatures (`serving_default`, `map`,
`expected`), the compact SavedModel and both exported `.keras` files are `ServingModel`s, so none of them can be
fed a normalised tensor by mistake or return an unbounded value. Its call

1. checks the request in the graph (`check_request`: rank, channel count, empty, non-finite);
2. applies the `ServingPreprocessor` (the training-set normalisation, saved in its config);
3. predicts in its mode: `mc` (Monte-Carlo aggregate of `num_samples` architectures), `map` or `expected` with an
   `SFGNetwork` (`sfg_keras.inference.prediction_outputs`), or one deterministic pass of any other Keras network
   with one output per task (the compact MAP network, `sfg_keras.compact`);
4. flattens the prediction schema to `<task>_<key>` (`sfg_keras.predictions.PREDICTION_KEYS`), lets the preprocessor map
   the outputs back (e.g. crop padding), and maps every regression output to its physical unit and range
   (`PhysicalOutput`: `<task>_mean` scaled, offset and clipped; `<task>_std` scaled).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

from sfg_keras.compact import model_input_shape
from sfg_keras.inference import MODES, prediction_outputs, single_pass_predictions
from sfg_keras.models.sfg_network import SFGNetwork
from sfg_keras.models.task_head import TaskHead, as_task_heads
from sfg_keras.physical_outputs import PhysicalOutput
from sfg_keras.predictions import output_name, output_names
from sfg_keras.serving.preprocessors import ServingPreprocessor
from sfg_keras.serving.request_checks import check_request, request_shape_text

INPUT_NAME = "images"


@keras.saving.register_keras_serializable(package="sfg_keras")
class ServingModel(keras.Model):
    """A network wrapped for serving: raw request -> checks -> preprocessing -> prediction -> physical outputs.

    Args:
        network: an `SFGNetwork`, or a Keras model with one output per task (e.g. `compact_map_model(...)`), which
            is then one deterministic pass (`mode` must be `"map"`).
        tasks: the `TaskHead`s (or their configs) of a non-SFG `network`. Defaults to `network.tasks`.
        preprocessor: a `ServingPreprocessor`, or None (requests are network inputs).
        physical_outputs: `PhysicalOutput`s (or their configs) of regression tasks: unit and range of
            `<task>_mean` / `<task>_std`. Defaults to none (network units, unbounded).
        mode: `"mc"`, `"map"` or `"expected"` (see `sfg_keras.inference`). Defaults to `"map"`.
        num_samples: int. Monte-Carlo samples of `mode="mc"`. Defaults to 50.
        request_shape: shape of one request element without the batch axis. Defaults to the preprocessor's, else
            the network's input shape.
        **kwargs: `keras.Model` arguments (`name`).

    Call arguments:
        images: the raw request `[N, *request_shape]`, float32.
        mode: optional override of `mode` for this call (SFG networks only).

    Returns:
        `{<task>_<key>: tensor}` with the keys of `sfg_keras.predictions.PREDICTION_KEYS`: regression `<task>_mean` and
        `<task>_std` in the physical unit, categorical `<task>_probabilities`, `<task>_label` and `<task>_entropy`.

    Example:

    ```python
    serving = ServingModel(model, preprocessor=app.serving_preprocessor(), physical_outputs=app.physical_outputs(),
                           mode="mc", num_samples=20)
    serving.save("sfg.keras")
    served = keras.saving.load_model("sfg.keras")     # after `import sfg_keras`
    served(raw_mr_slices)["ct_mean"]                   # HU, within [-1024, 3071]
    served(raw_mr_slices, mode="map")["organs_label"]
    ```
    """

    def __init__(
        self,
        network: keras.Model,
        tasks: Sequence[TaskHead | dict] | None = None,
        preprocessor: ServingPreprocessor | None = None,
        physical_outputs: Sequence[PhysicalOutput | dict] | dict | None = None,
        mode: str = "map",
        num_samples: int = 50,
        request_shape: Sequence[int | None] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(network, keras.Model):
            raise ValueError(f"`network` must be a Keras model. Received: network of type {type(network).__name__}")
        if preprocessor is not None and not isinstance(preprocessor, ServingPreprocessor):
            raise ValueError(
                "`preprocessor` must be a sfg_keras.serving.ServingPreprocessor layer or None. Received: "
                f"{type(preprocessor).__name__}"
            )
        is_sfg = isinstance(network, SFGNetwork)
        if mode not in MODES or (not is_sfg and mode != "map"):
            allowed = MODES if is_sfg else ("map",)
            raise ValueError(f"`mode` must be one of {allowed} for a {type(network).__name__}. Received: mode={mode!r}")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"`num_samples` must be a positive int. Received: num_samples={num_samples!r}")
        if tasks is None:
            if not is_sfg:
                raise ValueError("`tasks` is required for a network that is not an SFGNetwork (e.g. a compact model).")
            tasks = network.tasks
        self.network = network
        self.preprocessor = preprocessor
        self._tasks = tuple(as_task_heads(tasks))
        if isinstance(physical_outputs, dict):
            physical_outputs = list(physical_outputs.values())
        outputs = [o if isinstance(o, PhysicalOutput) else PhysicalOutput(**o) for o in physical_outputs or ()]
        regression = {task.name for task in self._tasks if not task.is_categorical}
        unknown = [o.task for o in outputs if o.task not in regression]
        if unknown:
            raise ValueError(
                f"`physical_outputs` name tasks that are not regression tasks of the network: {unknown}; regression "
                f"tasks: {sorted(regression)}"
            )
        self._physical = tuple(outputs)
        self.mode = mode
        self.num_samples = int(num_samples)
        if request_shape is None:
            if preprocessor is not None:
                request_shape = preprocessor.request_shape
            elif is_sfg:
                request_shape = model_input_shape(network)[1:]
            else:  # a functional network (the compact model): its input layer's shape
                request_shape = tuple(network.inputs[0].shape)[1:]
        self.request_shape = tuple(None if size is None else int(size) for size in request_shape)
        if preprocessor is not None and not preprocessor.built:
            preprocessor.build((None, *self.request_shape))
        self.built = bool(network.built)  # no weights of its own

    @property
    def tasks(self) -> list[TaskHead]:
        """The tasks served, in output order."""
        return list(self._tasks)

    @property
    def physical_outputs(self) -> dict[str, PhysicalOutput]:
        """`{task: PhysicalOutput}` of the bounded / unit-mapped regression tasks."""
        return {output.task: output for output in self._physical}

    def served_output_names(self) -> list[str]:
        """The output names, `<task>_<key>`, in order."""
        return output_names((task.name, task.is_categorical) for task in self._tasks)

    def describe_request(self) -> str:
        """The expected request, e.g. `"images [N, d1, d2, 1] float32: ..."`."""
        text = f"{INPUT_NAME} {request_shape_text(self.request_shape)} float32"
        return f"{text}: {self.preprocessor.description}" if self.preprocessor is not None else text

    def build(self, input_shape=None):
        # The network and the preprocessor are built (or deserialised built); the wrapper has no weights of its own.
        self.built = True

    def predict_network(self, inputs, mode: str | None = None) -> dict[str, dict[str, tf.Tensor]]:
        """The prediction schema `{task: {key: tensor}}` of network inputs (after preprocessing), in network units."""
        mode = mode or self.mode
        if isinstance(self.network, SFGNetwork):
            if mode not in MODES:
                raise ValueError(f"`mode` must be one of {MODES}. Received: mode={mode!r}")
            return prediction_outputs(self.network, inputs, mode=mode, num_samples=self.num_samples)
        if mode != "map":
            raise ValueError(f"This ServingModel wraps a deterministic (MAP) network; `mode` must be 'map'. "
                             f"Received: mode={mode!r}")
        return single_pass_predictions(self._tasks, self.network(inputs, training=False))

    def call(self, images, mode: str | None = None):
        images = check_request(
            tf.cast(images, tf.float32), self.request_shape, name=INPUT_NAME,
            description=self.preprocessor.description if self.preprocessor is not None else "network input",
        )
        inputs = self.preprocessor(images) if self.preprocessor is not None else images
        predictions = self.predict_network(inputs, mode)
        outputs = {
            output_name(task, key): value for task, values in predictions.items() for key, value in values.items()
        }
        if self.preprocessor is not None:
            outputs = self.preprocessor.postprocess(outputs, images)
        for output in self._physical:
            outputs[f"{output.task}_mean"] = output.to_physical(outputs[f"{output.task}_mean"], xp=tf.math)
            outputs[f"{output.task}_std"] = output.std_to_physical(outputs[f"{output.task}_std"])
        return outputs

    def get_config(self) -> dict:
        config = {
            "name": self.name,
            "network": keras.saving.serialize_keras_object(self.network),
            "tasks": [task.to_config() for task in self._tasks],
            "preprocessor": None if self.preprocessor is None else keras.saving.serialize_keras_object(
                self.preprocessor),
            "physical_outputs": [output.get_config() for output in self._physical],
            "mode": self.mode,
            "num_samples": self.num_samples,
            "request_shape": list(self.request_shape),
        }
        return config

    @classmethod
    def from_config(cls, config: dict) -> ServingModel:
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        if config.get("preprocessor") is not None:
            config["preprocessor"] = keras.saving.deserialize_keras_object(config["preprocessor"])
        return cls(**config)
