"""Export of a trained SFG network for TensorFlow Serving: versioned SavedModels with named inputs and outputs.

`export_model` writes, under `export_dir`:

* `<name>/<version>/`: a SavedModel (the layout TF Serving's `--model_base_path` expects) with one input `images`
  (`[None, *spatial, channels]`, float32) and three signatures, all with the outputs of `sfg_keras.inference`'s
  prediction schema flattened to `<task>_<key>`: `<task>_mean` and `<task>_std` for regression tasks,
  `<task>_probabilities`, `<task>_label` and `<task>_entropy` for classification and segmentation tasks
  (`sfg_keras.groups.PREDICTION_KEYS`):

  * `serving_default`: the Monte-Carlo aggregated prediction (`sfg_keras.inference.monte_carlo_outputs` with
    `num_samples` fixed at export; `label` is the majority vote, `entropy` that of the mean probabilities);
  * `map`: the deterministic MAP architecture (`sfg_keras.inference.map_outputs`; `std` is zero);
  * `expected`: the deterministic expected network (`sfg_keras.inference.expected_outputs`; `std` is zero);

* `<name>.keras`: the model itself (`model.save`; the latest export overwrites it);
* with `include_compact`: `<name>_compact/<version>/`, the compact MAP model (`sfg_keras.compact`) as a SavedModel
  whose `serving_default` has the outputs of `map` (same keys), and `<name>_compact.keras`.

Serving never changes the model: every signature runs with `training=False`, so no batch-normalisation statistic
is written; only the seed generators of the SFG layers advance in `serving_default` (fresh samples per request).

The `images` input may leave the batch size and, for fully convolutional networks, the spatial sizes free.

Batch statistics: with the default `inference_statistics="batch"` the served prediction of an image depends on the
other images of its request (they form the batch whose statistics normalise it). Send a request as one batch and
keep TF Serving's server-side request batching off (`--enable_batching=false`, the default).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from sfg_keras.compact import compact_map_model, model_input_shape
from sfg_keras.groups import PREDICTION_KEYS, prediction_kind
from sfg_keras.inference import prediction_outputs, single_pass_predictions
from sfg_keras.models.sfg_network import SFGNetwork

INPUT_NAME = "images"
MAP_SIGNATURE = "map"
EXPECTED_SIGNATURE = "expected"
DEFAULT_SIGNATURE = "serving_default"


# Signature name -> inference mode (`sfg_keras.inference.prediction_outputs`).
_SIGNATURE_MODES = {DEFAULT_SIGNATURE: "mc", MAP_SIGNATURE: "map", EXPECTED_SIGNATURE: "expected"}


def _flatten(outputs: dict[str, dict[str, tf.Tensor]]) -> dict[str, tf.Tensor]:
    return {f"{task}_{key}": value for task, values in outputs.items() for key, value in values.items()}


def signature_outputs(model: SFGNetwork) -> dict[str, list[str]]:
    """The output names of every exported signature: the same `<task>_<key>` names for each of them (the compact
    model's `serving_default` has them too).

    Example:

    ```python
    signature_outputs(model)["map"]
    # ["age_mean", "age_std", "gender_probabilities", "gender_label", "gender_entropy"]
    ```
    """
    names = [
        f"{task.name}_{key}" for task in model.tasks for key in PREDICTION_KEYS[prediction_kind(task.is_categorical)]
    ]
    return {signature: list(names) for signature in _SIGNATURE_MODES}


def _write_archive(archive: keras.export.ExportArchive, target: Path) -> None:
    """Writes into a hidden sibling folder first, then renames it, so a server never sees a half-written version."""
    staging = target.parent / f".{target.name}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        archive.write_out(str(staging), verbose=False)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def _check_export_arguments(
    model,
    export_dir: str | Path,
    name: str,
    version: int,
    num_samples: int,
    input_shape: Sequence[int | None] | None,
    include_compact: bool,
) -> tuple[Path, dict[str, Path], tuple[int | None, ...]]:
    """Validates `export_model`'s arguments; returns the export folder as a `Path`, the version folders to write and
    the `images` input shape (batch size free).

    Raises:
        FileExistsError: if a version folder to be written already exists.
        ValueError: for a model that is not an `SFGNetwork`, or a bad `name`, `version`, `num_samples` or
            `input_shape`.
    """
    if not isinstance(model, SFGNetwork):
        raise ValueError(f"`model` must be an SFGNetwork. Received: model of type {type(model).__name__}")
    if not name or not name.replace("_", "a").replace("-", "a").isalnum():
        raise ValueError(f"`name` must be a non-empty name of letters, digits, '_' or '-'. Received: name={name!r}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"`version` must be a positive int (TF Serving version folder). Received: version={version!r}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"`num_samples` must be a positive int. Received: num_samples={num_samples!r}")
    export_dir = Path(export_dir)
    targets = {"saved_model": export_dir / name / str(version)}
    if include_compact:
        targets["compact_saved_model"] = export_dir / f"{name}_compact" / str(version)
    for target in targets.values():
        if target.exists():
            raise FileExistsError(
                f"Export version folder {str(target)!r} already exists; choose another `version` or remove it."
            )
    if input_shape is None:
        input_shape = model_input_shape(model)
    input_shape = (None, *tuple(input_shape)[1:])
    rank = model.sfg_layers[0].rank
    if len(input_shape) != rank + 2 or input_shape[-1] is None:
        raise ValueError(
            f"`input_shape` must be (batch, {'spatial, ' * rank}channels) with a known number of channels. "
            f"Received: input_shape={input_shape}"
        )
    return export_dir, targets, input_shape


def export_model(
    model: SFGNetwork,
    export_dir: str | Path,
    name: str = "sfg",
    version: int = 1,
    num_samples: int = 50,
    input_shape: Sequence[int | None] | None = None,
    include_compact: bool = True,
) -> dict[str, Path]:
    """Exports an SFG network as versioned SavedModels for TensorFlow Serving, plus `.keras` files.

    Args:
        model: a built `SFGNetwork`.
        export_dir: folder that receives `<name>/<version>/`, `<name>.keras` and, with `include_compact`,
            `<name>_compact/<version>/` and `<name>_compact.keras`.
        name: str. Model name (the TF Serving `MODEL_NAME`). Defaults to `"sfg"`.
        version: int. Version folder (>= 1). Defaults to 1.
        num_samples: int. Monte-Carlo samples of `serving_default`, fixed at export. Defaults to 50.
        input_shape: `(batch, *spatial, channels)` of the `images` input, spatial sizes known. Defaults to the
            shape `model` was built with.
        include_compact: bool. Also export the compact MAP model. Defaults to True.

    Returns:
        `{"saved_model", "keras"}` paths, plus `{"compact_saved_model", "compact_keras"}` with `include_compact`.

    Raises:
        FileExistsError: if a version folder to be written already exists (nothing is written then).
        ValueError: for a model that is not an `SFGNetwork`, a bad `name`, `version`, `num_samples` or
            `input_shape`, or (with `include_compact`) a layer the compact translation does not support.

    Example:

    ```python
    paths = export_model(model, "model_dir/export", name="age_gender", version=3, num_samples=50)
    # docker run -p 8501:8501 -v $PWD/model_dir/export/age_gender:/models/age_gender \\
    #     -e MODEL_NAME=age_gender tensorflow/serving
    ```
    """
    export_dir, targets, input_shape = _check_export_arguments(
        model, export_dir, name, version, num_samples, input_shape, include_compact
    )
    spec = tf.TensorSpec(input_shape, tf.float32, name=INPUT_NAME)

    def signature(mode: str):
        return lambda images: _flatten(prediction_outputs(model, images, mode=mode, num_samples=num_samples))

    # Everything is translated and traced before the first file is written, so a failure leaves no version behind.
    archives = {"saved_model": keras.export.ExportArchive()}
    archives["saved_model"].track(model)
    for signature_name, mode in _SIGNATURE_MODES.items():
        archives["saved_model"].add_endpoint(signature_name, signature(mode), input_signature=[spec])
    compact = None
    if include_compact:
        compact = compact_map_model(model, input_shape)

        def compact_signature(images):
            return _flatten(single_pass_predictions(model.tasks, compact(images, training=False)))

        archives["compact_saved_model"] = keras.export.ExportArchive()
        archives["compact_saved_model"].track(compact)
        archives["compact_saved_model"].add_endpoint(DEFAULT_SIGNATURE, compact_signature, input_signature=[spec])
    for key, archive in archives.items():
        _write_archive(archive, targets[key])
    paths = dict(targets)
    paths["keras"] = export_dir / f"{name}.keras"
    model.save(paths["keras"])
    if compact is not None:
        paths["compact_keras"] = export_dir / f"{name}_compact.keras"
        compact.save(paths["compact_keras"])
    return paths


def serving_request_examples(
    images: np.ndarray,
    name: str = "sfg",
    version: int | None = None,
    host: str = "localhost:8501",
) -> dict[str, dict[str, str]]:
    """Example TF Serving REST requests (URL and JSON body) for every exported signature.

    The bodies use the columnar `inputs` format, which makes the request's batch explicit (with batch-statistics
    normalisation, the images of one request are normalised together).

    Args:
        images: a batch `[N, *spatial, channels]` (e.g. `[N, H, W, C]`), float.
        name: str. The exported model name. Defaults to `"sfg"`.
        version: int or None. Pin a version in the URL. Defaults to the latest version.
        host: str. `host:port` of the REST API. Defaults to `"localhost:8501"`.

    Returns:
        `{"serving_default": {"url", "body"}, "map": {...}, "compact": {...}}`: the POST URL and JSON body of each
        request (`compact` targets the `<name>_compact` model).

    Example:

    ```python
    request = serving_request_examples(np.zeros((2, 8, 8, 3)), name="age_gender")["map"]
    # curl -X POST request["url"] -d request["body"]
    # -> {"outputs": {"age_mean": [[...]], "age_std": [[...]], "gender_probabilities": [[...]],
    #                 "gender_label": [...], "gender_entropy": [...]}}
    ```
    """
    array = np.asarray(images, dtype="float32")
    if array.ndim < 3:
        raise ValueError(
            f"`images` must be a batch [N, *spatial, channels] (e.g. [N, H, W, C]). Received shape {array.shape}"
        )
    suffix = "" if version is None else f"/versions/{int(version)}"
    instances = array.tolist()
    requests = {}
    for key, model_name, signature in (
        (DEFAULT_SIGNATURE, name, DEFAULT_SIGNATURE),
        (MAP_SIGNATURE, name, MAP_SIGNATURE),
        (EXPECTED_SIGNATURE, name, EXPECTED_SIGNATURE),
        ("compact", f"{name}_compact", DEFAULT_SIGNATURE),
    ):
        requests[key] = {
            "url": f"http://{host}/v1/models/{model_name}{suffix}:predict",
            "body": json.dumps({"signature_name": signature, "inputs": {INPUT_NAME: instances}}),
        }
    return requests
