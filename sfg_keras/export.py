"""Export of a trained SFG network for TensorFlow Serving: versioned SavedModels with named inputs and outputs.

`export_model` writes, under `export_dir`:

* `<name>/<version>/`: a SavedModel (the layout TF Serving's `--model_base_path` expects) with one input `images`
  and three signatures, all with the outputs of `sfg_keras.inference`'s prediction schema flattened to
  `<task>_<key>`: `<task>_mean` and `<task>_std` for regression tasks, `<task>_probabilities`, `<task>_label` and
  `<task>_entropy` for classification and segmentation tasks (`sfg_keras.groups.PREDICTION_KEYS`):

  * `serving_default`: the Monte-Carlo aggregated prediction (`sfg_keras.inference.monte_carlo_outputs` with
    `num_samples` fixed at export; `label` is the majority vote, `entropy` that of the mean probabilities);
  * `map`: the deterministic MAP architecture (`sfg_keras.inference.map_outputs`; `std` is zero);
  * `expected`: the deterministic expected network (`sfg_keras.inference.expected_outputs`; `std` is zero);

* `<name>-<version>.keras`: the model itself (`model.save`), kept with its version;
* with `include_compact`: `<name>_compact/<version>/`, the compact MAP model (`sfg_keras.compact`) as a SavedModel
  whose `serving_default` has the outputs of `map` (same keys), and `<name>_compact-<version>.keras`.

Nothing of an earlier version is ever replaced, and every file and folder is written under a hidden staging name and
renamed when all of them are written: a failed export names the path and leaves nothing of its version behind.

Raw inputs (`preprocessor`): with a `ServingPreprocessor` (an application's `serving_preprocessor()`), `images` is
the raw input as a user has it (decoded pixels, MR intensities) and every signature, the compact model's included,
applies the training-time normalisation inside the graph (its constants are saved with the model) and, where the
preprocessor says so, maps the outputs back (e.g. crops padding). Without one, `images` is the network input
(`[None, *spatial, channels]`, float32, already normalised).

Random stream of `serving_default`: by default every call draws the seed-generator states of the SFG layers from a
non-deterministic op (`RandomUniformInt` with `seed = seed2 = 0`, seeded by the operating system per loaded
model), so two loads of the same SavedModel never replay the same architectures. With `seed`, the states saved with
the model are derived from it and advance per call: every fresh load then replays the same sequence exactly.

Serving never changes the model otherwise: every signature runs with `training=False`, so no batch-normalisation
statistic is written; only the seed generators of the SFG layers change in `serving_default`.

Batch statistics: with the default `inference_statistics="batch"` the served prediction of an image depends on the
other images of its request (they form the batch whose statistics normalise it). Send a request as one batch and
keep TF Serving's server-side request batching off (`--enable_batching=false`, the default).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
from collections.abc import Callable, Sequence
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
#: Seed-generator states are drawn below this bound (`SFGConv` reduces seeds modulo `2**31 - 2`).
_SEED_BOUND = 2**31 - 2


# Signature name -> inference mode (`sfg_keras.inference.prediction_outputs`).
_SIGNATURE_MODES = {DEFAULT_SIGNATURE: "mc", MAP_SIGNATURE: "map", EXPECTED_SIGNATURE: "expected"}


@dataclasses.dataclass(frozen=True)
class ServingPreprocessor:
    """What an exported request holds and how the graph turns it into the network input (and the outputs back).

    Attributes:
        preprocess: graph function `raw images [N, *spatial, channels] -> network input`, built from constants
            (e.g. the training-set statistics); it may change the spatial size (resizing, padding).
        input_shape: shape of one raw request element without the batch axis; `None` sizes are free.
        postprocess: optional graph function `(outputs {name: tensor}, raw images) -> outputs`, e.g. cropping
            padded outputs back to the request's size. Defaults to None (outputs unchanged).
        description: what a request holds, in one sentence (shown in logs and docs). Defaults to `""`.

    Example:

    ```python
    mean, std = tf.constant([120.0, 110.0, 100.0]), tf.constant([60.0, 55.0, 50.0])
    preprocessor = ServingPreprocessor(lambda images: (images - mean) / std, input_shape=(64, 64, 3),
                                       description="decoded RGB pixels, 0..255")
    export_model(model, "export", preprocessor=preprocessor)
    ```
    """

    preprocess: Callable[[tf.Tensor], tf.Tensor]
    input_shape: tuple[int | None, ...]
    postprocess: Callable[[dict[str, tf.Tensor], tf.Tensor], dict[str, tf.Tensor]] | None = None
    description: str = ""


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


def seed_generators(model: keras.Model) -> list[keras.random.SeedGenerator]:
    """Every `keras.random.SeedGenerator` of `model` and its layers, each once, in layer order.

    Example:

    ```python
    [generator.state.numpy() for generator in seed_generators(model)]
    ```
    """
    generators, seen = [], set()
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for generator in getattr(layer, "_seed_generators", ()):
            if id(generator) not in seen:
                seen.add(id(generator))
                generators.append(generator)
    return generators


def _reseed_non_deterministically(generators: Sequence[keras.random.SeedGenerator]) -> None:
    """Graph ops giving every generator a fresh state. `seed = seed2 = 0` makes the kernel seed itself from the
    operating system when the loaded function is first instantiated, so each load draws its own stream (ops of
    `tf.random` would take the trace-time global seed instead)."""
    for generator in generators:
        fresh = tf.raw_ops.RandomUniformInt(
            shape=tf.constant([2], tf.int32),
            minval=tf.constant(0, tf.int64),
            maxval=tf.constant(_SEED_BOUND, tf.int64),
            seed=0,
            seed2=0,
        )
        generator.state.assign(tf.cast(fresh, generator.state.dtype))


def next_version(export_dir: str | Path, name: str = "sfg") -> int:
    """The first version after every one found under `export_dir` for `name` (SavedModel folders of `<name>` and
    `<name>_compact`, `.keras` files), or 1.

    Example:

    ```python
    next_version("model_dir/export")  # 3 after versions 1 and 2
    ```
    """
    export_dir = Path(export_dir)
    versions = [0]
    for folder in (export_dir / name, export_dir / f"{name}_compact"):
        if folder.is_dir():
            versions += [int(p.name) for p in folder.iterdir() if p.name.isdigit()]
    pattern = re.compile(rf"{re.escape(name)}(?:_compact)?-(\d+)\.keras")
    if export_dir.is_dir():
        versions += [int(m.group(1)) for p in export_dir.iterdir() if (m := pattern.fullmatch(p.name))]
    return max(versions) + 1


def _export_targets(export_dir: Path, name: str, version: int, include_compact: bool) -> dict[str, Path]:
    """The paths a version writes; raises `FileExistsError` when one exists."""
    targets = {"saved_model": export_dir / name / str(version), "keras": export_dir / f"{name}-{version}.keras"}
    if include_compact:
        targets["compact_saved_model"] = export_dir / f"{name}_compact" / str(version)
        targets["compact_keras"] = export_dir / f"{name}_compact-{version}.keras"
    for target in targets.values():
        if target.exists():
            raise FileExistsError(
                f"Export version {version} already has {str(target)!r}; choose another `version` (e.g. "
                f"next_version({str(export_dir)!r}, {name!r})) or remove it."
            )
    return targets


def _check_export_arguments(
    model,
    export_dir: str | Path,
    name: str,
    version: int,
    num_samples: int,
    input_shape: Sequence[int | None] | None,
    include_compact: bool,
    seed: int | None,
) -> tuple[dict[str, Path], tuple[int | None, ...]]:
    """Validates `export_model`'s arguments; returns the paths to write and the network input shape (batch size
    free).

    Raises:
        FileExistsError: if a path of the version to be written already exists.
        ValueError: for a model that is not an `SFGNetwork`, or a bad `name`, `version`, `num_samples`, `seed` or
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
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"`seed` must be None or a non-negative int. Received: seed={seed!r}")
    targets = _export_targets(Path(export_dir), name, version, include_compact)
    if input_shape is None:
        input_shape = model_input_shape(model)
    input_shape = (None, *tuple(input_shape)[1:])
    rank = model.sfg_layers[0].rank
    if len(input_shape) != rank + 2 or input_shape[-1] is None:
        raise ValueError(
            f"`input_shape` must be (batch, {'spatial, ' * rank}channels) with a known number of channels. "
            f"Received: input_shape={input_shape}"
        )
    return targets, input_shape


def _staging_path(target: Path) -> Path:
    """A hidden sibling of `target` keeping its extension (`.keras` files are saved by extension)."""
    return target.with_name(f".{target.stem}.partial{target.suffix}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _publish(writers: dict[Path, Callable[[Path], None]]) -> None:
    """Writes every `target` with `writers[target](staging)` under a hidden staging name, then renames them all.

    On failure every staging path and every target renamed by this call are removed, and the error names the
    target: nothing of a failed export is left, and nothing that existed before is touched.

    Raises:
        OSError: writing or renaming failed (naming the target).
        RuntimeError: the writer raised anything else (naming the target).
    """
    staged: list[Path] = []
    published: list[Path] = []
    target = None
    try:
        for target, write in writers.items():
            staging = _staging_path(target)
            _remove(staging)  # a leftover of a killed export
            target.parent.mkdir(parents=True, exist_ok=True)
            staged.append(staging)
            write(staging)
        for target, staging in zip(writers, staged):
            os.replace(staging, target)
            published.append(target)
    except BaseException as error:
        for path in staged + published:
            _remove(path)
        if isinstance(error, OSError):
            raise OSError(error.errno, f"Cannot write {target}: {error.strerror or error}") from error
        if isinstance(error, Exception):
            raise RuntimeError(f"Cannot write {target}: {error!r}; nothing of this export was kept.") from error
        raise


@contextlib.contextmanager
def _seed_states(generators: Sequence[keras.random.SeedGenerator], seed: int | None):
    """With a `seed`, gives the generators states derived from it while the archives are written (they are saved
    with the model), then restores the model's own states."""
    if seed is None:
        yield
        return
    saved = [generator.state.numpy() for generator in generators]
    states = np.random.default_rng(seed).integers(0, _SEED_BOUND, size=(len(generators), 2))
    try:
        for generator, state in zip(generators, states):
            generator.state.assign(state.astype(generator.state.dtype))
        yield
    finally:
        for generator, state in zip(generators, saved):
            generator.state.assign(state)


def _endpoint(predict: Callable, preprocessor: ServingPreprocessor | None, before: Callable | None = None):
    """A signature function: raw images -> preprocess -> `predict` (schema dict) -> flatten -> postprocess."""

    def endpoint(images):
        if before is not None:
            before()
        inputs = images if preprocessor is None else preprocessor.preprocess(images)
        outputs = _flatten(predict(inputs))
        if preprocessor is not None and preprocessor.postprocess is not None:
            outputs = preprocessor.postprocess(outputs, images)
        return outputs

    return endpoint


def _archive_writer(archive: keras.export.ExportArchive, metadata: dict) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        archive.write_out(str(path), verbose=False)
        (path / "assets.extra").mkdir(exist_ok=True)
        (path / "assets.extra" / "sfg_serving.json").write_text(json.dumps(metadata, indent=2) + "\n")

    return write


def _compact_archive(
    model: SFGNetwork, input_shape, preprocessor: ServingPreprocessor | None, spec: tf.TensorSpec
) -> tuple[keras.Model, keras.export.ExportArchive]:
    """The compact MAP model and its archive, whose `serving_default` has the outputs of `map`."""
    compact = compact_map_model(model, input_shape)

    def predict(inputs):
        return single_pass_predictions(model.tasks, compact(inputs, training=False))

    archive = keras.export.ExportArchive()
    archive.track(compact)
    archive.add_endpoint(DEFAULT_SIGNATURE, _endpoint(predict, preprocessor), input_signature=[spec])
    return compact, archive


def export_model(
    model: SFGNetwork,
    export_dir: str | Path,
    name: str = "sfg",
    version: int = 1,
    num_samples: int = 50,
    input_shape: Sequence[int | None] | None = None,
    include_compact: bool = True,
    preprocessor: ServingPreprocessor | None = None,
    seed: int | None = None,
) -> dict[str, Path]:
    """Exports an SFG network as versioned SavedModels for TensorFlow Serving, plus versioned `.keras` files.

    Args:
        model: a built `SFGNetwork`.
        export_dir: folder that receives `<name>/<version>/`, `<name>-<version>.keras` and, with
            `include_compact`, `<name>_compact/<version>/` and `<name>_compact-<version>.keras`.
        name: str. Model name (the TF Serving `MODEL_NAME`). Defaults to `"sfg"`.
        version: int. Version (>= 1); `next_version(export_dir, name)` gives the next free one. Defaults to 1.
        num_samples: int. Monte-Carlo samples of `serving_default`, fixed at export. Defaults to 50.
        input_shape: `(batch, *spatial, channels)` of the network input, spatial sizes known or None. Defaults to
            the shape `model` was built with.
        include_compact: bool. Also export the compact MAP model. Defaults to True.
        preprocessor: `ServingPreprocessor` or None. Normalisation (and output mapping) of raw requests applied
            inside every signature; its `input_shape` is the shape of `images`. Defaults to None (`images` is the
            network input).
        seed: int or None. Fixes the Monte-Carlo stream of `serving_default`: every load replays the same sequence.
            Defaults to None (a fresh stream per load).

    Returns:
        `{"saved_model", "keras"}` paths, plus `{"compact_saved_model", "compact_keras"}` with `include_compact`.

    Raises:
        FileExistsError: if a path of the version already exists (nothing is written then).
        ValueError: for a model that is not an `SFGNetwork`, a bad `name`, `version`, `num_samples`, `seed` or
            `input_shape`, or (with `include_compact`) a layer the compact translation does not support.
        OSError, RuntimeError: writing failed (naming the path; nothing of the version is left).

    Example:

    ```python
    paths = export_model(model, "model_dir/export", name="age_gender", version=3, num_samples=50,
                         preprocessor=app.serving_preprocessor())
    # docker run -p 8501:8501 -v $PWD/model_dir/export/age_gender:/models/age_gender \\
    #     -e MODEL_NAME=age_gender tensorflow/serving
    ```
    """
    targets, input_shape = _check_export_arguments(
        model, export_dir, name, version, num_samples, input_shape, include_compact, seed
    )
    request_shape = input_shape if preprocessor is None else (None, *preprocessor.input_shape)
    spec = tf.TensorSpec(request_shape, tf.float32, name=INPUT_NAME)
    generators = seed_generators(model)
    reseed = None if seed is not None else (lambda: _reseed_non_deterministically(generators))
    metadata = {
        "input": INPUT_NAME, "input_shape": list(request_shape), "num_samples": num_samples, "seed": seed,
        "request": preprocessor.description if preprocessor is not None else "normalised network input",
    }

    def predictor(mode: str):
        return lambda inputs: prediction_outputs(model, inputs, mode=mode, num_samples=num_samples)

    # Everything is translated and traced before the first file is written.
    archive = keras.export.ExportArchive()
    archive.track(model)
    for signature_name, mode in _SIGNATURE_MODES.items():
        endpoint = _endpoint(predictor(mode), preprocessor, before=reseed if mode == "mc" else None)
        archive.add_endpoint(signature_name, endpoint, input_signature=[spec])
    writers = {targets["saved_model"]: _archive_writer(archive, metadata), targets["keras"]: model.save}
    if include_compact:
        compact, compact_archive = _compact_archive(model, input_shape, preprocessor, spec)
        writers[targets["compact_saved_model"]] = _archive_writer(compact_archive, {**metadata, "num_samples": 1})
        writers[targets["compact_keras"]] = compact.save
    with _seed_states(generators, seed):
        _publish(writers)
    return targets


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
        images: one request `[N, *spatial, channels]` as the SavedModel takes it (raw pixels or the raw slices of
            one MR volume when exported with a `ServingPreprocessor`), float.
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
