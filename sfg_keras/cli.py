"""`sfg_run`: the NiftyNet-style command line of sfg-keras.

```
sfg_run ACTION -c CONFIG.ini [-a APPLICATION] [--key=value ...]   (train, inference, evaluation, export, analyse)
sfg_run generate-data {pelvis,head,utkface,mnist} -o FOLDER [--num N] [--data-seed S] [--overwrite]
sfg_run demo [-o FOLDER]
sfg_run config-help
```
"""

from __future__ import annotations

import argparse
import configparser
import os
import sys
import time
from pathlib import Path

ACTIONS = ("train", "inference", "evaluation", "export", "analyse")
GENERATORS = ("pelvis", "head", "utkface", "mnist")
REPO_ROOT = Path(__file__).resolve().parents[1]

_EPILOG = """
examples:
  sfg_run train -c configs/demo_mr_ct.ini
  sfg_run train -c configs/demo_mr_ct.ini --max_iter=200 --starting_iter=-1      (resume, train longer)
  sfg_run inference -c configs/demo_mr_ct.ini --num_samples=20
  sfg_run evaluation -c configs/demo_mr_ct.ini
  sfg_run analyse -c configs/demo_mr_ct.ini
  sfg_run export -c configs/demo_mr_ct.ini
  sfg_run train -c my.ini -a my_package.my_module.MyApplication
  sfg_run generate-data pelvis -o data/pelvis --num 10
  sfg_run demo

--key=value overrides any config key (a bare key must be unique across the fixed sections; otherwise, and for
input sections, write --SECTION.key=value, e.g. --NETWORK.batch_size=4 or --MR.path_to_search=data/mr).
Run `sfg_run config-help` for every section and key.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sfg_run",
        description="Stochastic Filter Groups for multi-task CNNs (Keras 3), NiftyNet-style.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    helps = {
        "train": "train (starting_iter = -1 resumes from the latest checkpoint)",
        "inference": "Monte-Carlo (or MAP) inference with a checkpoint; writes predictions",
        "evaluation": "compare the inferred outputs with the references; writes CSV tables",
        "export": "versioned SavedModels for TensorFlow Serving, a .keras file and the compact MAP model",
        "analyse": "PNG plots and CSV/JSON summaries of the learned grouping",
    }
    for action in ACTIONS:
        sub = actions.add_parser(
            action, help=helps[action], description=helps[action] + ". Extra --key=value arguments override the "
            "config file.", epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument("-c", "--config", required=True, help="the .ini configuration file")
        sub.add_argument(
            "-a", "--app", help="application: age_gender, mr_ct or a dotted path to a BaseApplication subclass "
            "(default: detected from the config's [AGE_GENDER] / [MR_CT] section)"
        )
        sub.add_argument("--debug", action="store_true", help="show full tracebacks")
    gen = actions.add_parser("generate-data", help="write a generated or packaged demo data set")
    gen.add_argument("kind", choices=GENERATORS, help="pelvis (NIfTI MR/CT/labels), head (MNI152-based NIfTI), "
                     "utkface (UTKFace-named JPEGs), mnist (5,000 real digits + labels.csv)")
    gen.add_argument("-o", "--output", required=True, help="output folder")
    gen.add_argument("--num", type=int, help="number of subjects / images (default: the generator's)")
    gen.add_argument("--data-seed", type=int, default=0, help="random seed (default 0)")
    gen.add_argument("--overwrite", action="store_true", help="replace files an earlier run generated")
    gen.add_argument("--debug", action="store_true", help="show full tracebacks")
    demo = actions.add_parser("demo", help="the main job: generate data, train, infer, evaluate, plot, export")
    demo.add_argument("-o", "--output", help="model folder (default: demo_run/mr_ct in the checkout)")
    demo.add_argument("--debug", action="store_true", help="show full tracebacks")
    actions.add_parser("config-help", help="print every config section and key (Markdown)")
    return parser


def _detect_application(config_path: str) -> str:
    from applications import APPLICATION_SECTIONS

    parser = configparser.ConfigParser(strict=False, interpolation=None)
    try:
        parser.read(config_path, encoding="utf-8")
    except configparser.Error:
        return ""
    for section in parser.sections():
        name = APPLICATION_SECTIONS.get(section.upper())
        if name:
            return name
    return ""


def run_action(action: str, config: str, app: str | None = None, overrides: list[str] | None = None):
    """Runs one sfg_run action in this process and returns what the application returned.

    Example:

    ```python
    run_action("train", "configs/demo_mr_ct.ini", overrides=["--max_iter=50"])
    ```
    """
    from sfg_keras.config import ConfigError, load_settings, write_settings

    if not os.path.isfile(config):
        raise FileNotFoundError(f"Config file not found: {config}")
    app_name = app or _detect_application(config)
    if not app_name:
        raise ConfigError(
            f"{config}: cannot tell which application to run: pass -a age_gender, -a mr_ct or -a package.module.Class "
            "(or add an [AGE_GENDER] / [MR_CT] section)."
        )
    from applications import load_application

    application_class = load_application(app_name)
    settings = load_settings(config, overrides or [], action=action, extra_sections=application_class.APP_SECTIONS)
    settings_file = write_settings(settings)
    print(f"[sfg_run] {action} with {application_class.__name__}; settings written to {settings_file}")
    application = application_class(settings)
    return getattr(application, action)()


def generate_data(kind: str, output: str, num: int | None, seed: int, overwrite: bool):
    """Writes one of the generated data sets (deterministic given `seed`)."""
    from sfg_keras.data import generators

    if kind == "pelvis":
        result = generators.make_pelvis_cohort(output, num_subjects=num or 6, seed=seed, overwrite=overwrite)
    elif kind == "head":
        result = generators.make_head_cohort(output, num_subjects=num or 4, seed=seed, overwrite=overwrite)
    elif kind == "utkface":
        result = generators.make_utkface_folder(output, num_images=num or 200, seed=seed, overwrite=overwrite)
    else:
        result = generators.make_mnist_two_task_folder(output, num_images=num, seed=seed, overwrite=overwrite)
    print(f"[sfg_run] generated {kind} data in {output}")
    return result


def _demo(output: str | None) -> None:
    """The README's main job: generate the pelvis cohort, train SFG, Monte-Carlo inference, evaluation, plots and
    export. Idempotent: existing data are reused and training resumes from (or stops at) the last checkpoint."""
    import csv

    start = time.time()
    config = REPO_ROOT / "configs" / "demo_mr_ct.ini"
    if not config.is_file():
        raise FileNotFoundError(f"Demo config not found: {config} (run the demo from a checkout of sfg-keras).")
    data = REPO_ROOT / "demo_data" / "pelvis"
    if not (data / "MR").is_dir() or not any((data / "MR").iterdir()):
        generate_data("pelvis", str(data), 10, 0, overwrite=True)
    else:
        print(f"[sfg_run] reusing demo data in {data}")
    overrides = ["--starting_iter=-1"]
    if output:
        overrides.append(f"--model_dir={os.path.abspath(output)}")
    import keras

    for action in ACTIONS:
        print(f"\n===== sfg_run {action} -c {config.relative_to(REPO_ROOT)} =====", flush=True)
        run_action(action, str(config), "mr_ct", overrides if action == "train" else overrides[1:])
        keras.backend.clear_session()
    from applications import load_application
    from sfg_keras.config import load_settings

    settings = load_settings(str(config), overrides[1:], action="evaluation",
                             extra_sections=load_application("mr_ct").APP_SECTIONS)
    model_dir = Path(settings.system.model_dir)
    summary = Path(settings.evaluation.save_csv_dir) / "mr_ct_metrics_summary.csv"
    print(f"\n===== demo finished in {time.time() - start:.0f} s =====")
    print(f"model, checkpoints, TensorBoard logs: {model_dir}  (tensorboard --logdir {model_dir / 'logs'})")
    print(f"NIfTI predictions and uncertainty maps: {settings.inference.save_seg_dir}")
    print(f"evaluation tables: {settings.evaluation.save_csv_dir}")
    print(f"grouping plots: {model_dir / 'analysis'}")
    print(f"SavedModels for TensorFlow Serving: {model_dir / 'export'}")
    _print_share_changes(model_dir / "analysis" / "grouping_summary.csv", settings)
    if summary.is_file():
        with open(summary, newline="") as handle:
            rows = list(csv.DictReader(handle))
        mean = next((r for r in rows if r.get("statistic") == "mean"), None)
        if mean:
            keys = [k for k in mean if k.startswith(("mae", "psnr", "dice", "reference"))]
            print("mean over test subjects: " + ", ".join(f"{k}={float(mean[k]):.3f}" for k in keys if mean[k]))


def _print_share_changes(summary_csv: Path, settings) -> None:
    """Prints, per SFG layer, the group whose share of kernels moved most from its initial probability `p0`."""
    import csv

    if not summary_csv.is_file():
        return
    groups = [task.name for task in settings.task_specs()] + ["shared"]
    p0 = dict(zip(groups, settings.sfg.p0))
    with open(summary_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    changes = []
    for row in rows:
        moved = {g: float(row[f"share_{g}"]) - p0[g] for g in groups if f"share_{g}" in row}
        if moved:
            group = max(moved, key=lambda g: abs(moved[g]))
            changes.append(f"{row['layer']} {group} {p0[group]:.2f} -> {p0[group] + moved[group]:.2f}")
    if changes:
        print("learned grouping, largest share change from p0 per layer: " + "; ".join(changes))


def config_markdown() -> str:
    """Every config section and key (fixed, built-in application and input sections) as Markdown tables."""
    from applications import BUILT_IN_APPLICATIONS, load_application
    from sfg_keras.config import dump_schema_markdown

    extra = {}
    for name in BUILT_IN_APPLICATIONS:
        extra.update(load_application(name).APP_SECTIONS)
    return dump_schema_markdown(extra)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sfg_run` console script. Returns the exit status."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    args.debug = getattr(args, "debug", False)
    try:
        if args.action == "config-help":
            print(config_markdown())
            return 0
        if args.action in ("generate-data", "demo") and extra:
            parser.error(f"unrecognised arguments: {' '.join(extra)}")
        if args.action == "generate-data":
            generate_data(args.kind, args.output, args.num, args.data_seed, args.overwrite)
            return 0
        if args.action == "demo":
            _demo(args.output)
            return 0
        run_action(args.action, args.config, args.app, extra)
        return 0
    except KeyboardInterrupt:
        print("sfg_run: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, ImportError, OSError) as error:
        if args.debug:
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"sfg_run: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
