"""Export of a trained SFG network for TensorFlow Serving: versioned SavedModels and `.keras` files that take the raw
input and return outputs in physical units.

`export_model` writes, under `export_dir`, for one version `v` (nothing of an earlier version is ever replaced):

* `<name>/<v>/`: a SavedModel (the layout TF Serving's `--model_base_path` expects) with one input `images` and three
  signatures, all with the outputs of `sfg_keras.inference`'s prediction schema flattened to `<task>_<key>`:
  `<task>_mean` and `<task>_std` for regression tasks (in the task's physical unit, the mean bounded to its range:
  `sfg_keras.physical_outputs`), `<task>_probabilities`, `<task>_label` and `<task>_entropy` for classification and
  segmentation tasks (`sfg_keras.predictions.PREDICTION_KEYS`):

  * `serving_default`: the Monte-Carlo aggregated prediction of `num_samples` architectures (fixed at export;
    `label` is the majority vote, `entropy` that of the mean probabilities);
  * `map`: the deterministic MAP architecture, computed by the compact MAP network (`sfg_keras.compact`: only each
    group's MAP kernels, no sampling), equal to the SFG network's MAP pass within float rounding (`std` is zero);
  * `expected`: the deterministic expected network (`sfg_keras.inference.expected_outputs`; `std` is zero);

  `assets.extra/sfg_serving.json` says what a request holds and what every output is;
* `<name>-<v>.keras`: a `sfg_keras.serving.ServingModel` of the SFG network: raw request in, the outputs of
  `serving_default` out (`mode="map"` / `"expected"` per call), `.network` the trained `SFGNetwork`;
* with `include_compact`: `<name>_compact/<v>/`, the compact MAP network as a SavedModel whose `serving_default` has
  the outputs of `map`, and `<name>_compact-<v>.keras`, its `ServingModel`;
* `<name>-<v>.json`: what every file of the version takes and returns, and how to load it.

Every signature and both `.keras` files are `ServingModel`s: they check the request in the graph (rank, channel
count, empty, non-finite; `sfg_keras.serving.check_request`), normalise it with the training-set constants of the
`ServingPreprocessor` (an application's `serving_preprocessor()`), predict, map the outputs back (e.g. crop padding)
and to physical units. None of them takes a normalised tensor: raw input is what every exported file takes. Without
a preprocessor, `images` is the network input (`[None, *spatial, channels]`, float32, already normalised).

Every file and folder is written under a hidden staging name and renamed when all of them are written: a failed
export names the path and leaves nothing of its version behind.

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
import json
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from sfg_keras.compact import compact_map_model, model_input_shape
from sfg_keras.keras_adapter import flatten_layers, seed_generators_of
from sfg_keras.models.sfg_network import SFGNetwork
from sfg_keras.physical_outputs import PhysicalOutput
from sfg_keras.predictions import output_name, output_names
from sfg_keras.serving import INPUT_NAME, ServingModel, ServingPreprocessor

__all__ = [
    "DEFAULT_SIGNATURE", "EXPECTED_SIGNATURE", "INPUT_NAME", "MAP_SIGNATURE", "ServingPreprocessor", "export_model",
    "load_exported", "next_version", "seed_generators", "serving_request_examples", "signature_outputs",
]

MAP_SIGNATURE = "map"
EXPECTED_SIGNATURE = "expected"
DEFAULT_SIGNATURE = "serving_default"
#: Seed-generator states are drawn below this bound (`SFGConv` reduces seeds modulo `2**31 - 2`).
_SEED_BOUND = 2**31 - 2


# Signature name -> inference mode (`sfg_keras.inference.prediction_outputs`).
_SIGNATURE_MODES = {DEFAULT_SIGNATURE: "mc", MAP_SIGNATURE: "map", EXPECTED_SIGNATURE: "expected"}
_CHECKS = (
    "every signature refuses, with InvalidArgumentError naming the input (input images: ...): a request of another "
    "rank, another channel count, an empty request (an axis of size 0) and any NaN or infinite value"
)


def signature_outputs(model: SFGNetwork) -> dict[str, list[str]]:
    """The output names of every exported signature: the same `<task>_<key>` names for each of them (the compact
    model's `serving_default` has them too).

    Example:

    ```python
    signature_outputs(model)["map"]
    # ["age_mean", "age_std", "gender_probabilities", "gender_label", "gender_entropy"]
    ```
    """
    names = output_names((task.name, task.is_categorical) for task in model.tasks)
    return {signature: list(names) for signature in _SIGNATURE_MODES}


def seed_generators(model: keras.Model) -> list[keras.random.SeedGenerator]:
    """Every `keras.random.SeedGenerator` of `model` and its layers, each once, in layer order.

    Example:

    ```python
    [generator.state.numpy() for generator in seed_generators(model)]
    ```
    """
    generators, seen = [], set()
    for layer in flatten_layers(model, include_self=True, recursive=True):
        for generator in seed_generators_of(layer):
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
    `<name>_compact`, `.keras` files, metadata `.json` files), or 1.

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
    pattern = re.compile(rf"{re.escape(name)}(?:_compact)?-(\d+)\.(?:keras|json)")
    if export_dir.is_dir():
        versions += [int(m.group(1)) for p in export_dir.iterdir() if (m := pattern.fullmatch(p.name))]
    return max(versions) + 1


def _export_targets(export_dir: Path, name: str, version: int, include_compact: bool) -> dict[str, Path]:
    """The paths a version writes; raises `FileExistsError` when one exists."""
    targets = {"saved_model": export_dir / name / str(version), "keras": export_dir / f"{name}-{version}.keras",
               "metadata": export_dir / f"{name}-{version}.json"}
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


def _output_meanings(serving: ServingModel, mode: str) -> dict[str, str]:
    """`{output name: what it is}` for the export metadata."""
    passes = {"mc": f"over {serving.num_samples} sampled architectures", "map": "of the MAP network",
              "expected": "of the expected network"}[mode]
    meanings = {}
    for task in serving.tasks:
        if task.is_categorical:
            where = "per pixel" if task.type == "segmentation" else "per element"
            meanings[output_name(task.name, "probabilities")] = (
                f"class probabilities {where} ({task.units} classes), mean {passes}")
            meanings[output_name(task.name, "label")] = "label (int32): " + (
                "majority vote of the sampled labels" if mode == "mc" else "argmax of the probabilities")
            meanings[output_name(task.name, "entropy")] = "predictive entropy of the probabilities (nats)"
            continue
        output = serving.physical_outputs.get(task.name)
        unit = output.describe() if output is not None else f"{task.name} in the network's unit (unbounded)"
        meanings[output_name(task.name, "mean")] = f"value {passes}: {unit}"
        meanings[output_name(task.name, "std")] = (
            f"standard deviation {passes} in the same unit" if mode == "mc" else "zero (deterministic)")
    return meanings


def _serving_metadata(servings: Mapping[str, ServingModel], num_samples: int, seed: int | None) -> dict:
    """The `sfg_serving.json` of a SavedModel whose signatures are `servings`."""
    first = next(iter(servings.values()))
    return {
        "input": INPUT_NAME,
        "input_shape": [None, *first.request_shape],
        "input_dtype": "float32",
        "request": first.describe_request(),
        "checks": _CHECKS,
        "num_samples": num_samples,
        "seed": seed,
        "physical_outputs": {task: output.get_config() for task, output in first.physical_outputs.items()},
        "signatures": {
            signature: {
                "mode": serving.mode,
                "network": "sfg" if isinstance(serving.network, SFGNetwork) else "compact MAP network",
                "outputs": _output_meanings(serving, serving.mode),
            }
            for signature, serving in servings.items()
        },
    }


def _archive(servings: Mapping[str, ServingModel], before: Mapping[str, Callable]) -> keras.export.ExportArchive:
    """An `ExportArchive` with one endpoint per `servings` entry (taking `images` of any shape: the graph checks
    it); `before[signature]` runs first (the Monte-Carlo reseeding)."""
    archive = keras.export.ExportArchive()
    for serving in {id(s): s for s in servings.values()}.values():
        archive.track(serving)
    spec = tf.TensorSpec(None, tf.float32, name=INPUT_NAME)
    for signature, serving in servings.items():
        archive.add_endpoint(signature, _endpoint(serving, before.get(signature)), input_signature=[spec])
    return archive


def _endpoint(serving: ServingModel, before: Callable | None) -> Callable:
    def endpoint(images):
        if before is not None:
            before()
        return serving(images)

    return endpoint


def _archive_writer(archive: keras.export.ExportArchive, metadata: dict) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        archive.write_out(str(path), verbose=False)
        (path / "assets.extra").mkdir(exist_ok=True)
        (path / "assets.extra" / "sfg_serving.json").write_text(json.dumps(metadata, indent=2) + "\n")

    return write


def _version_metadata(targets: dict[str, Path], full: ServingModel, compact: ServingModel | None) -> dict:
    """`<name>-<version>.json`: every file of the version, what it takes and returns, and how to load it."""
    request = full.describe_request()
    files = {
        f"{targets['saved_model'].parent.name}/{targets['saved_model'].name}/": {
            "what": "SavedModel for TensorFlow Serving (no sfg_keras needed)",
            "takes": request,
            "returns": "signatures serving_default (Monte-Carlo), map (compact MAP network), expected; outputs and "
                       "units in assets.extra/sfg_serving.json",
            "load": "tf.saved_model.load(path).signatures['map'](images=...)",
        },
        targets["keras"].name: {
            "what": "sfg_keras.serving.ServingModel of the SFG network (.network is the trained SFGNetwork)",
            "takes": request,
            "returns": f"the outputs of serving_default ({full.num_samples} Monte-Carlo samples); "
                       "model(images, mode='map' or 'expected') for the others",
            "load": "import sfg_keras; keras.saving.load_model(path)  (or sfg_keras.export.load_exported(path))",
        },
    }
    if compact is not None:
        files[f"{targets['compact_saved_model'].parent.name}/{targets['compact_saved_model'].name}/"] = {
            "what": "SavedModel of the compact MAP network (ordinary Keras layers, no sampling)",
            "takes": request,
            "returns": "serving_default: the outputs of the map signature",
            "load": "tf.saved_model.load(path).signatures['serving_default'](images=...)",
        }
        files[targets["compact_keras"].name] = {
            "what": "sfg_keras.serving.ServingModel of the compact MAP network",
            "takes": request,
            "returns": "the outputs of the map signature",
            "load": "import sfg_keras; keras.saving.load_model(path)  (or sfg_keras.export.load_exported(path))",
        }
    return {
        "request": request,
        "checks": _CHECKS,
        "outputs": _output_meanings(full, "mc"),
        "physical_outputs": {task: output.get_config() for task, output in full.physical_outputs.items()},
        "files": files,
    }


def _json_writer(content: dict) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")

    return write


def _serving_models(
    model: SFGNetwork, name: str, input_shape, include_compact: bool, preprocessor, physical_outputs, num_samples: int
) -> tuple[ServingModel, ServingModel, ServingModel, ServingModel | None]:
    """The `ServingModel`s of an export: Monte-Carlo, expected, MAP (the compact network when the translation
    supports the model) and the compact one (None when not translated)."""
    if preprocessor is not None and not isinstance(preprocessor, ServingPreprocessor):
        raise ValueError(
            "`preprocessor` must be a sfg_keras.serving.ServingPreprocessor layer (serialisable, so that the .keras "
            f"files carry it) or None. Received: {type(preprocessor).__name__}"
        )
    request_shape = input_shape[1:] if preprocessor is None else preprocessor.request_shape
    common = {"preprocessor": preprocessor, "physical_outputs": physical_outputs, "request_shape": request_shape,
              "num_samples": num_samples}
    full = ServingModel(model, mode="mc", name=f"{name}_serving", **common)
    expected = ServingModel(model, mode="expected", name=f"{name}_serving_expected", **common)
    try:
        compact_network = compact_map_model(model, input_shape)
    except ValueError:
        if include_compact:
            raise
        compact_network = None
    compact = None if compact_network is None else ServingModel(
        compact_network, tasks=model.tasks, mode="map", name=f"{name}_compact_serving", **common)
    mapped = compact if compact is not None else ServingModel(model, mode="map", name=f"{name}_serving_map", **common)
    return full, expected, mapped, compact


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
    physical_outputs: Mapping[str, PhysicalOutput] | Sequence[PhysicalOutput] | None = None,
) -> dict[str, Path]:
    """Exports an SFG network as versioned SavedModels for TensorFlow Serving, plus versioned `.keras` files.

    Args:
        model: a built `SFGNetwork`.
        export_dir: folder that receives `<name>/<version>/`, `<name>-<version>.keras`, `<name>-<version>.json` and,
            with `include_compact`, `<name>_compact/<version>/` and `<name>_compact-<version>.keras`.
        name: str. Model name (the TF Serving `MODEL_NAME`). Defaults to `"sfg"`.
        version: int. Version (>= 1); `next_version(export_dir, name)` gives the next free one. Defaults to 1.
        num_samples: int. Monte-Carlo samples of `serving_default`, fixed at export. Defaults to 50.
        input_shape: `(batch, *spatial, channels)` of the network input, spatial sizes known or None. Defaults to
            the shape `model` was built with.
        include_compact: bool. Also export the compact MAP model as its own SavedModel and `.keras` file. Defaults
            to True. (The `map` signature uses the compact network either way; a model the compact translation
            does not support falls back to the SFG network's MAP pass when `include_compact` is False.)
        preprocessor: `ServingPreprocessor` or None. Normalisation (and output mapping) of raw requests applied
            inside every signature and `.keras` file; its `request_shape` is the shape of `images`. Defaults to
            None (`images` is the network input).
        seed: int or None. Fixes the Monte-Carlo stream of `serving_default`: every load replays the same sequence.
            Defaults to None (a fresh stream per load).
        physical_outputs: `PhysicalOutput`s of regression tasks (an application's `physical_outputs()`): the unit
            and range of `<task>_mean` / `<task>_std` in every signature and file. Defaults to none (network units,
            unbounded).

    Returns:
        `{"saved_model", "keras", "metadata"}` paths, plus `{"compact_saved_model", "compact_keras"}` with
        `include_compact`.

    Raises:
        FileExistsError: if a path of the version already exists (nothing is written then).
        ValueError: for a model that is not an `SFGNetwork`, a bad `name`, `version`, `num_samples`, `seed` or
            `input_shape`, or (with `include_compact`) a layer the compact translation does not support.
        OSError, RuntimeError: writing failed (naming the path; nothing of the version is left).

    Example:

    ```python
    paths = export_model(model, "model_dir/export", name="sfg", version=3, num_samples=20,
                         preprocessor=app.serving_preprocessor(), physical_outputs=app.physical_outputs())
    # docker run -p 8501:8501 -v $PWD/model_dir/export/sfg:/models/sfg -e MODEL_NAME=sfg tensorflow/serving
    ```
    """
    targets, input_shape = _check_export_arguments(
        model, export_dir, name, version, num_samples, input_shape, include_compact, seed
    )
    # Everything is translated and traced before the first file is written.
    full, expected, mapped, compact = _serving_models(
        model, name, input_shape, include_compact, preprocessor, physical_outputs, num_samples
    )
    generators = seed_generators(model)
    reseed = {} if seed is not None else {DEFAULT_SIGNATURE: lambda: _reseed_non_deterministically(generators)}
    servings = {DEFAULT_SIGNATURE: full, MAP_SIGNATURE: mapped, EXPECTED_SIGNATURE: expected}
    writers = {
        targets["saved_model"]: _archive_writer(_archive(servings, reseed),
                                                _serving_metadata(servings, num_samples, seed)),
        targets["keras"]: full.save,
        targets["metadata"]: _json_writer(_version_metadata(targets, full, compact if include_compact else None)),
    }
    if include_compact:
        compact_servings = {DEFAULT_SIGNATURE: compact}
        writers[targets["compact_saved_model"]] = _archive_writer(
            _archive(compact_servings, {}), _serving_metadata(compact_servings, 1, None))
        writers[targets["compact_keras"]] = compact.save
    with _seed_states(generators, seed):
        _publish(writers)
    return targets


def load_exported(path: str | Path) -> ServingModel:
    """Loads an exported `.keras` file (`<name>-<version>.keras` or `<name>_compact-<version>.keras`) as the
    `ServingModel` it holds: raw request in, checked and normalised in the graph, outputs in physical units out.

    Args:
        path: the `.keras` file written by `export_model` / `sfg_run export`.

    Returns:
        The `ServingModel`; call it on a raw request (`model(images)`, `model.predict(images, batch_size=len(images))`).

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: `path` is not a `.keras` file, or holds something else than a `ServingModel` (e.g. a training
            checkpoint `models/model-<iter>.keras`, whose network takes normalised input).

    Example:

    ```python
    served = load_exported("model_dir/export/sfg_compact-1.keras")
    served(np.moveaxis(mr_volume, 2, 0)[..., None])["ct_mean"]   # HU, bounded
    ```
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: expected a .keras file written by sfg_run export.")
    if path.suffix != ".keras":
        raise ValueError(f"{path}: expected a .keras file written by sfg_run export (a SavedModel folder loads with "
                         "tf.saved_model.load).")
    import sfg_keras._registration as registration

    registration.register_all()
    loaded = keras.saving.load_model(path)
    if not isinstance(loaded, ServingModel):
        raise ValueError(
            f"{path} holds a {type(loaded).__name__}, not an exported sfg_keras.serving.ServingModel: its network "
            "takes normalised, padded input and returns raw head outputs (a training checkpoint). Export it with "
            "`sfg_run export` and load the exported <name>-<version>.keras, which takes the raw input."
        )
    return loaded


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
