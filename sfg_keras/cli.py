"""`sfg_run`: the NiftyNet-style command line of sfg-keras.

```
sfg_run ACTION -c CONFIG.ini [-a APPLICATION] [--key=value ...]   (train, inference, evaluation, export, analyse,
                                                                    report)
sfg_run generate-data {pelvis,head,utkface,mnist} -o FOLDER [--num N] [--data-seed S] [--overwrite]
sfg_run demo [-o FOLDER]
sfg_run config-help
```
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ACTIONS = ("train", "inference", "evaluation", "export", "analyse", "report")
GENERATORS = ("pelvis", "head", "utkface", "mnist")
PROGRESS = ("tasks", "all")
REPO_ROOT = Path(__file__).resolve().parents[1]

_EPILOG = """
examples:
  sfg_run train -c configs/demo_mr_ct.ini
  sfg_run train -c configs/demo_mr_ct.ini --max_iter=200 --starting_iter=-1      (resume, train longer)
  sfg_run train -c configs/demo_mr_ct.ini --starting_iter=300 --archive_branch=first-try
                                    (continue from checkpoint 300; the later ones move to model_dir/branches/first-try)
  sfg_run train -c configs/demo_mr_ct.ini --progress=all      (the bar also shows data_loss, weight_term, ...)
  sfg_run inference -c configs/demo_mr_ct.ini --num_samples=20
  sfg_run inference -c configs/demo_mr_ct.ini --input_dir=$PWD/new_scans   (another folder; the split is not used)
  sfg_run evaluation -c configs/demo_mr_ct.ini
  sfg_run analyse -c configs/demo_mr_ct.ini
  sfg_run report -c configs/demo_mr_ct.ini      (model_dir/report.html)
  sfg_run export -c configs/demo_mr_ct.ini
  sfg_run export -c configs/demo_mr_ct.ini --export_seed=7     (every load of the MC signature replays one stream)
  sfg_run train -c my.ini -a my_package.my_module.MyApplication
  sfg_run generate-data pelvis -o data/pelvis --num 10
  sfg_run demo

--key=value overrides any config key (a bare key must be unique across the fixed sections; otherwise, and for
input sections, write --SECTION.key=value, e.g. --NETWORK.batch_size=4 or --MR.path_to_search=data/mr). Relative
paths are relative to the config file's folder.
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
        "inference": "Monte-Carlo (or MAP) inference with a checkpoint on any subject or folder (input_dir), never "
                     "as held out on a subject the model was trained on; writes predictions and their provenance",
        "evaluation": "check the references, compare the inferred outputs with them (never scoring a trained-on "
                      "subject); writes CSV tables",
        "export": "versioned SavedModels for TF Serving (raw inputs; export_seed), .keras files, the compact MAP model",
        "analyse": "PNG plots and CSV/JSON summaries of the learned grouping",
        "report": "model_dir/report.html: one self-contained page with settings, curves, evaluation, grouping "
        "and figures of the inferred outputs",
    }
    for action in ACTIONS:
        sub = actions.add_parser(
            action, help=helps[action], description=helps[action] + ". Extra --key=value arguments override the "
            "config file.", epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument("-c", "--config", required=True, help="the .ini configuration file")
        sub.add_argument(
            "-a", "--app", help="application: age_gender, mr_ct or a dotted path to a sfg_keras.engine.BaseApplication "
            "subclass "
            "(default: detected from the config's [AGE_GENDER] / [MR_CT] section)"
        )
        sub.add_argument("--debug", action="store_true", help="show full tracebacks")
        if action == "train":
            sub.add_argument(
                "--progress", choices=PROGRESS, default="tasks",
                help="what the progress bar shows (means over the TensorBoard interval): tasks = task losses and "
                "metrics, loss and temperature (default); all = also data_loss, weight_term, entropy_term and "
                "non_finite_step (always in TensorBoard)",
            )
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


_CURRENT_MODEL_DIR: list[str] = []  # model_dir of the action running in this process (for the error log)


def run_action(action: str, config: str, app: str | None = None, overrides: list[str] | None = None,
               progress: str = "tasks"):
    """Runs one sfg_run action in this process and returns what the engine returned (`progress`: what the training
    progress bar shows, `"tasks"` or `"all"`).

    Example:

    ```python
    run_action("train", "configs/demo_mr_ct.ini", overrides=["--max_iter=50"])
    ```
    """
    from sfg_keras.config import ConfigError, load_settings
    from sfg_keras.engine.factory import detect_application, load_application

    if os.path.isdir(config):
        raise IsADirectoryError(f"-c {config} is a folder; expected a .ini config file.")
    if not os.path.isfile(config):
        raise FileNotFoundError(f"Config file not found: {config}")
    app_name = app or detect_application(config)
    if not app_name:
        raise ConfigError(
            f"{config}: cannot tell which application to run: pass -a age_gender, -a mr_ct or -a package.module.Class "
            "(or add an [AGE_GENDER] / [MR_CT] section)."
        )
    application_class = load_application(app_name)
    settings = load_settings(config, overrides or [], action=action, extra_sections=application_class.APP_SECTIONS)
    _CURRENT_MODEL_DIR[:] = [] if _is_other_worker(settings) else [settings.system.model_dir]
    print(f"[sfg_run] {action} with {application_class.__name__} (model_dir {settings.system.model_dir})")
    from sfg_keras.engine.driver import Driver

    return Driver(application_class(settings), progress=progress).run(action)


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
    """The README's main job: generate the pelvis cohort, train SFG, inference (the config's mode: the MAP network,
    which after the commit is the network that was trained), evaluation, plots, export and the HTML report (its
    path is the last line printed). Idempotent: existing data are reused and training
    resumes from (or stops at) the last checkpoint."""
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
    from sfg_keras.config import load_settings
    from sfg_keras.engine.factory import load_application

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
    print(f"HTML report (settings, curves, evaluation, grouping, slices of every inferred subject): "
          f"{model_dir / 'report.html'}")


def _print_share_changes(summary_csv: Path, settings) -> None:
    """Prints one line per SFG layer: how many kernels training gave to each group (its MAP group; after a commit, the
    group it was frozen to), next to the initial probabilities `p0`."""
    import csv

    if not summary_csv.is_file():
        return
    from sfg_keras.groups import group_names

    groups = group_names([task.name for task in settings.task_specs()])
    start = ", ".join(f"{g} {p:.2f}" for g, p in zip(groups, settings.sfg.p0))
    with open(summary_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows:
        print(f"learned grouping (kernels per group; every layer started at p0 = {start}):")
    for row in rows:
        counts = ", ".join(f"{g} {int(row[f'map_count_{g}'])}" for g in groups if f"map_count_{g}" in row)
        print(f"  {row['layer']} ({row['num_kernels']} kernels): {counts}")


def config_markdown() -> str:
    """Every config section and key (fixed, built-in application and input sections) as Markdown tables."""
    from sfg_keras.config import dump_schema_markdown
    from sfg_keras.engine.factory import BUILT_IN_APPLICATIONS, load_application

    extra = {}
    for name in BUILT_IN_APPLICATIONS:
        extra.update(load_application(name).APP_SECTIONS)
    return dump_schema_markdown(extra)


def _import_keras_without_sklearn() -> None:
    """Imports Keras without its scikit-learn wrappers, which import scikit-learn when it is installed (about 1.5 s
    of every `sfg_run` start; nilearn pulls it in, and sfg_run never uses it). A later `import sklearn` works."""
    if "keras" in sys.modules or "sklearn" in sys.modules:
        return
    sys.modules["sklearn"] = None  # `import sklearn` raises ImportError, which Keras' wrappers tolerate
    try:
        import keras  # noqa: F401
    finally:
        if sys.modules.get("sklearn", 0) is None:
            del sys.modules["sklearn"]


def _import_tensorflow_quietly() -> None:
    """Imports TensorFlow and finds its devices with the C++ start-up logs (absl's pre-initialisation messages,
    oneDNN and CUDA probing) silenced, unless the user set `TF_CPP_MIN_LOG_LEVEL` to see them. Python errors still
    surface: only the process's stderr file descriptor is redirected, and only during the import."""
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ or "tensorflow" in sys.modules:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")
    finally:
        os.dup2(saved, 2)
        os.close(null)
        os.close(saved)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sfg_run` console script. Returns the exit status."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    args.debug = getattr(args, "debug", False)
    if args.action in (*ACTIONS, "demo"):
        _import_tensorflow_quietly()
        _import_keras_without_sklearn()
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
        run_action(args.action, args.config, args.app, extra, progress=getattr(args, "progress", "tasks"))
        return 0
    except KeyboardInterrupt:
        print("sfg_run: interrupted", file=sys.stderr)
        return 130
    except _user_errors() as error:
        if args.debug:
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"sfg_run: error: {message}", file=sys.stderr)
        return 2
    except Exception as error:  # an unexpected failure: one line here, the traceback in the error log
        if args.debug:
            raise
        log = _write_error_log()
        print(f"sfg_run: unexpected error: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
              f" (full traceback in {log}; run with --debug to print it)", file=sys.stderr)
        return 1


def _is_other_worker(settings) -> bool:
    """Whether this process is a non-chief worker of a multi-worker `train` (it writes nothing in model_dir, its
    error log included)."""
    if settings.action != "train" or settings.system.distribute != "multi_worker":
        return False
    from sfg_keras.engine.multi_worker import parse_tf_config

    try:
        return not parse_tf_config().is_chief
    except ValueError:
        return False  # the driver reports the bad TF_CONFIG


def _user_errors() -> tuple[type[BaseException], ...]:
    from sfg_keras.engine.lock import ModelDirLockedError

    return (ValueError, FileNotFoundError, FileExistsError, KeyError, ImportError, OSError, ModelDirLockedError)


def _write_error_log() -> str:
    """Writes the current exception's traceback to `model_dir/logs/error.log` (or a temporary file before the
    settings were read) and returns its path."""
    import tempfile
    import traceback

    text = f"sfg_run {' '.join(sys.argv[1:])}\n{time.strftime('%Y-%m-%d %H:%M:%S')}\n\n{traceback.format_exc()}"
    candidates = [Path(d) / "logs" / "error.log" for d in _CURRENT_MODEL_DIR]
    candidates.append(Path(tempfile.gettempdir()) / f"sfg_run-error-{os.getpid()}.log")
    for path in candidates:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(text + "\n")
            return str(path)
        except OSError:
            continue
    sys.stderr.write(text)
    return "stderr"

if __name__ == "__main__":
    sys.exit(main())
