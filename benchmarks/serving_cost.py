"""Serving cost of one MR volume: every exported signature against the SFG network's MAP pass, and response sizes.

One process exports an mr_ct-style SFG-HighResNet (the demo's network; a trained checkpoint with `--checkpoint`)
with the raw-MR preprocessing and the CT bound, loads the SavedModels with `tf.saved_model.load` and times, side by
side and interleaved round by round (`_timing.interleaved_medians`), one request holding the raw axial slices of
one generated pelvis MR volume:

* `sfg map pass`: the SFG network's MAP pass (the `map` signature before it used the compact network), the base;
* `map` (= the compact MAP network) and `compact` (the compact SavedModel's `serving_default`);
* `expected`: the expected network, one pass;
* `serving_default` with `num_samples = N` for every `--num-samples`: the Monte-Carlo aggregate.

It also reports each signature's response size for that volume: the JSON body TF Serving's REST API returns
(`{"outputs": ...}` as `json.dumps` writes the numbers) and the raw tensor bytes (what gRPC carries).

Usage:

```
python benchmarks/serving_cost.py                                   # demo volume 96 x 96 x 16, N = 20 and 50
python benchmarks/serving_cost.py --shape 91 109 91 --repeats 2 --num-samples 20   # an MNI-sized volume
python benchmarks/serving_cost.py --checkpoint demo_run/mr_ct/models/model-600.keras
```
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import header, interleaved_medians, markdown_table  # noqa: E402

from sfg_keras.data import HistogramStandardisation  # noqa: E402
from sfg_keras.data.generators import make_pelvis_cohort  # noqa: E402
from sfg_keras.export import export_model  # noqa: E402
from sfg_keras.io import load_nifti  # noqa: E402
from sfg_keras.models import NetworkOptions, TaskHead, sfg_highresnet  # noqa: E402
from sfg_keras.physical_outputs import PhysicalOutput  # noqa: E402
from sfg_keras.serving import INPUT_NAME, ServingModel, VolumePreprocessor  # noqa: E402

TASKS = [TaskHead("ct", "regression", 1), TaskHead("organs", "segmentation", 5)]
CT = PhysicalOutput("ct", scale=1024.0, offset=-1024.0, unit="HU", minimum=-1024.0, maximum=3071.0)


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 96, 16), metavar=("X", "Y", "Z"),
                        help="MR volume shape, Z axial slices (default: the demo's 96 96 16)")
    parser.add_argument("--num-samples", type=int, nargs="+", default=(20, 50),
                        help="Monte-Carlo samples of serving_default to time (default 20 50)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls of every signature first (default 1)")
    parser.add_argument("--width", type=float, default=0.25, help="width multiplier without --checkpoint (0.25)")
    parser.add_argument("--checkpoint", help="a trained mr_ct checkpoint (.keras) instead of a fresh network")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or min(args.num_samples) < 1 or min(args.shape) < 8:
        parser.error(f"need --repeats >= 1, --warmup >= 0, --num-samples >= 1 and sizes >= 8; received {vars(args)}")
    return args


def _network(args) -> keras.Model:
    if args.checkpoint:
        import sfg_keras  # noqa: F401  (registers the classes)

        return keras.models.load_model(args.checkpoint)
    options = NetworkOptions.from_recipe("fast", num_tasks=2, max_iter=600, width_multiplier=args.width, seed=0)
    model = sfg_highresnet(TASKS, options)
    model.build((None, 72, 72, 1))
    return model


def _sfg_map_pass(serving: ServingModel, folder: Path):
    """The SFG network's MAP pass with the same request handling, as a loaded SavedModel signature."""
    archive = keras.export.ExportArchive()
    archive.track(serving)
    archive.add_endpoint("map", lambda images: serving(images), input_signature=[tf.TensorSpec(None, tf.float32,
                                                                                               name=INPUT_NAME)])
    archive.write_out(str(folder), verbose=False)
    return tf.saved_model.load(str(folder)).signatures["map"]


def main(argv=None) -> None:
    args = _parse_args(argv)
    keras.utils.set_random_seed(0)
    model = _network(args)
    work = Path(tempfile.mkdtemp(prefix="sfg_serving_cost_"))
    make_pelvis_cohort(str(work / "data"), num_subjects=1, shape=tuple(args.shape), seed=0)
    mr = np.asarray(load_nifti(next((work / "data" / "MR").iterdir())).data, np.float32)
    request = tf.constant(np.moveaxis(mr, 2, 0)[..., None])  # one raw volume: [Z, X, Y, 1]
    preprocessor = VolumePreprocessor.from_standardiser(HistogramStandardisation().fit([mr]), whitening=True)
    functions = {"sfg map pass": _sfg_map_pass(
        ServingModel(model, preprocessor=preprocessor, physical_outputs=[CT], mode="map"), work / "sfg_map")}
    for index, samples in enumerate(args.num_samples):
        paths = export_model(model, work / "export", version=index + 1, num_samples=samples,
                             input_shape=(None, None, None, 1), preprocessor=preprocessor, physical_outputs=[CT],
                             include_compact=index == 0)
        loaded = tf.saved_model.load(str(paths["saved_model"]))
        if index == 0:
            functions["map (compact network)"] = loaded.signatures["map"]
            functions["compact SavedModel"] = tf.saved_model.load(str(paths["compact_saved_model"])).signatures[
                "serving_default"]
            functions["expected"] = loaded.signatures["expected"]
        functions[f"serving_default, N = {samples}"] = loaded.signatures["serving_default"]
    calls = {name: (lambda f=function: f(images=request)) for name, function in functions.items()}
    medians = interleaved_medians(calls, repeats=args.repeats, warmup=args.warmup)
    base = medians["sfg map pass"]
    rows = []
    for name, function in functions.items():
        outputs = {key: value.numpy() for key, value in function(images=request).items()}
        body = json.dumps({"outputs": {key: value.tolist() for key, value in outputs.items()}})
        raw = sum(value.nbytes for value in outputs.values())
        rows.append([name, f"{medians[name]:.2f}", f"{medians[name] / base:.2f}", f"{len(body) / 1e6:.1f}",
                     f"{raw / 1e6:.1f}"])
    command = "python benchmarks/serving_cost.py " + " ".join(argv if argv is not None else sys.argv[1:])
    source = f"checkpoint {args.checkpoint}" if args.checkpoint else f"untrained, width {args.width}"
    print(header(f"Serving cost of one MR volume {tuple(args.shape)} (SFG-HighResNet, {source})", command.strip()))
    print(markdown_table(["signature", "median s", "/ SFG map pass", "JSON response MB", "tensor MB"], rows))


if __name__ == "__main__":
    main()
