"""The HTML report of a run: one self-contained page per `model_dir` (what `sfg_run report` writes).

`write_html_report` gathers what a run left in its `model_dir` and writes `model_dir/report.html`, a single file
with every image embedded as a PNG data URI, readable in any browser without a server or JavaScript:

* the run: network, grouping, tasks, parameter counts (`model_info.json`) and the resolved settings
  (`settings_train.txt`, folded in a `<details>` element);
* training and validation curves from the TensorBoard event files (`logs/train`, `logs/validation`: the interval
  means the progress bar showed and every validation), one panel per metric;
* the evaluation tables (every CSV of the evaluation folder);
* figures an application adds (`BaseApplication.report_figures`; mr_ct: mid-slices of MR, synthetic CT, labels
  and uncertainty for each inferred subject);
* the learned grouping: the group-share figure and the ternary (or group-share image) plot of every SFG layer
  (`sfg_run analyse` writes them to `model_dir/analysis`).

Needs numpy, matplotlib and the `tensorboard` package (its event reader); no TensorFlow.
"""

from __future__ import annotations

import base64
import csv
import datetime
import html
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from sfg_keras.analysis import plots

REPORT_FILE = "report.html"
#: Scalars hidden from the first curve figure (internal terms of the objective; shown in a second figure).
_INTERNAL = ("data_loss", "weight_term", "entropy_term", "non_finite_step")

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
nav a { margin-right: 1em; } .meta { color: #555; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; } th { background: #f3f3f3; }
td.text, th.text { text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; } .grid { display: flex; flex-wrap: wrap; gap: 1em; }
.grid figure { flex: 1 1 420px; } pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
.note { color: #777; font-style: italic; } .scroll { overflow-x: auto; max-width: 100%; }
.grid figure.small { flex: 1 1 300px; }
"""


def png_data_uri(png: bytes) -> str:
    """`data:image/png;base64,...` of PNG bytes (raises `ValueError` for anything else).

    Example:

    ```python
    png_data_uri(plots.figure_to_png(figure))[:22]   # "data:image/png;base64,"
    ```
    """
    if not png.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError(f"Expected PNG bytes; received {png[:8]!r}...")
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figure_html(png: bytes, alt: str, caption: str = "") -> str:
    caption_html = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{png_data_uri(png)}" alt="{html.escape(alt)}">{caption_html}</figure>'


def _table_html(rows: Sequence[dict[str, str]], columns: Sequence[str] | None = None, digits: int = 4) -> str:
    if not rows:
        return '<p class="note">(empty)</p>'
    columns = list(columns or rows[0].keys())

    def cell(value) -> str:
        text = "" if value is None else str(value)
        try:
            number = float(text)
        except ValueError:
            return f'<td class="text">{html.escape(text)}</td>'
        if not np.isfinite(number):
            shown = text
        elif number.is_integer() and abs(number) < 1e12:
            shown = str(int(number))
        else:
            shown = f"{number:.{digits}g}"
        return f"<td>{html.escape(shown)}</td>"

    head = "".join(f'<th class="text">{html.escape(c)}</th>' for c in columns)
    body = "".join("<tr>" + "".join(cell(row.get(c)) for c in columns) + "</tr>" for row in rows)
    # Wide tables scroll inside their box instead of widening the page.
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def read_scalars(event_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The scalar summaries of one TensorBoard run folder: `{tag: (steps, values)}`, steps increasing (a step
    written twice, by runs that overlapped, keeps its last value). Empty when the folder has no event file.

    Example:

    ```python
    steps, loss = read_scalars("model_dir/logs/train")["loss"]
    ```
    """
    event_dir = Path(event_dir)
    if not event_dir.is_dir() or not any(event_dir.glob("events.out.tfevents.*")):
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    accumulator = EventAccumulator(str(event_dir), size_guidance={"tensors": 0, "scalars": 0})
    accumulator.Reload()
    scalars: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for tag in accumulator.Tags().get("tensors", []):
        values: dict[int, float] = {}
        for event in accumulator.Tensors(tag):
            array = np.asarray(make_ndarray(event.tensor_proto))
            if array.size == 1 and np.issubdtype(array.dtype, np.number):
                values[int(event.step)] = float(array.reshape(()))
        if values:
            steps = np.array(sorted(values))
            scalars[tag] = (steps, np.array([values[s] for s in steps]))
    return scalars


def plot_curves(train: dict, validation: dict, keys: Sequence[str], title: str) -> Figure:
    """Small multiples of training (line: interval means) and validation (markers) scalars, one panel per key."""
    columns = min(3, max(1, len(keys)))
    rows = int(np.ceil(len(keys) / columns))
    figure = plots.new_figure((4.0 * columns, 2.6 * rows))
    figure.suptitle(title)
    for index, key in enumerate(keys):
        axes = figure.add_subplot(rows, columns, index + 1)
        if key in train:
            axes.plot(*train[key], color="#1f77b4", linewidth=1.2, label="training (interval mean)")
        if key in validation:
            axes.plot(*validation[key], color="#d62728", marker="o", markersize=4, linewidth=0.8, label="validation")
        axes.set_title(key, fontsize=10)
        axes.set_xlabel("iteration", fontsize=8)
        axes.tick_params(labelsize=8)
        axes.grid(alpha=0.3)
        if index == 0:
            axes.legend(fontsize=7)
    return figure


def _curves_html(log_dir: Path) -> str:
    train, validation = read_scalars(log_dir / "train"), read_scalars(log_dir / "validation")
    if not train and not validation:
        return f'<p class="note">No TensorBoard scalars in {html.escape(str(log_dir))} (tensorboard_every_n = -1?).</p>'
    keys = sorted(set(train) | set(validation))
    main = [k for k in keys if k not in _INTERNAL and k != "loss"]
    main = (["loss"] if "loss" in keys else []) + [k for k in main if k != "temperature"] + (
        ["temperature"] if "temperature" in keys else [])
    internal = [k for k in keys if k in _INTERNAL]
    parts = [_figure_html(plots.figure_to_png(plot_curves(train, validation, main, "Training and validation")),
                          "training and validation curves",
                          "Training: the mean over each TensorBoard interval (the values the progress bar showed); "
                          "validation: every validation run.")]
    if internal:
        figure = plot_curves(train, validation, internal, "Terms of the objective")
        parts.append("<details><summary>Internal terms of the objective (" + ", ".join(internal) + ")</summary>"
                     + _figure_html(plots.figure_to_png(figure), "objective terms") + "</details>")
    return "\n".join(parts)


def _evaluation_html(evaluation_dir: Path | None) -> str:
    files = sorted(evaluation_dir.glob("*.csv")) if evaluation_dir is not None and evaluation_dir.is_dir() else []
    if not files:
        return '<p class="note">No evaluation yet (sfg_run evaluation -c CONFIG).</p>'
    # Summaries first, then the per-subject tables.
    files.sort(key=lambda path: (0 if "summary" in path.stem else 1, path.name))
    parts = []
    for path in files:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        parts.append(f"<h3>{html.escape(path.name)}</h3>{_table_html(rows)}")
    return "\n".join(parts)


def _grouping_html(analysis_dir: Path) -> str:
    if not analysis_dir.is_dir():
        return '<p class="note">No grouping analysis (sfg_run analyse -c CONFIG).</p>'
    parts = []
    shares = analysis_dir / "group_shares.png"
    if shares.is_file():
        parts.append(_figure_html(shares.read_bytes(), "group shares per layer",
                                  "Share of kernels in each group per SFG layer (paper Fig. 6)."))
    summary = analysis_dir / "grouping_summary.csv"
    if summary.is_file():
        with open(summary, newline="", encoding="utf-8") as handle:
            parts.append(_table_html(list(csv.DictReader(handle))))
    layer_figures = sorted(analysis_dir.glob("ternary_sfg*.png")) + sorted(analysis_dir.glob("group_share_image_*.png"))
    if layer_figures:
        figures = [_figure_html(path.read_bytes(), path.stem).replace("<figure>", '<figure class="small">')
                   for path in layer_figures]
        parts.append('<div class="grid">' + "\n".join(figures) + "</div>")
    return "\n".join(parts) or '<p class="note">The analysis folder holds no figure.</p>'


def _settings_html(model_dir: Path, settings_text: str | None) -> str:
    parts = []
    info = model_dir / "model_info.json"
    if info.is_file():
        data = json.loads(info.read_text(encoding="utf-8"))
        rows = [{"": key, "value": ", ".join(map(str, value)) if isinstance(value, list) else value}
                for key, value in data.items()]
        parts.append(_table_html(rows, ["", "value"]))
    if settings_text is None:
        trained = model_dir / "settings_train.txt"
        settings_text = trained.read_text(encoding="utf-8") if trained.is_file() else None
    if settings_text:
        parts.append("<details><summary>Every resolved setting (settings_train.txt)</summary>"
                     f"<pre>{html.escape(settings_text)}</pre></details>")
    return "\n".join(parts) or '<p class="note">No run information (train first).</p>'


def write_html_report(
    model_dir: str | Path,
    title: str | None = None,
    evaluation_dir: str | Path | None = None,
    extra_figures: Iterable[tuple[str, Sequence[tuple[str, Figure | bytes]]]] = (),
    settings_text: str | None = None,
    path: str | Path | None = None,
) -> Path:
    """Writes the self-contained HTML report of a run (see the module docstring) and returns its path.

    Args:
        model_dir: the run's folder (`logs/`, `analysis/`, `model_info.json`, ...).
        title: the page title. Defaults to `"sfg-keras run <model_dir name>"`.
        evaluation_dir: folder of the evaluation CSVs. Defaults to `model_dir/evaluation`.
        extra_figures: application sections, `(heading, [(caption, figure or PNG bytes), ...])`.
        settings_text: the resolved settings shown; defaults to `model_dir/settings_train.txt`.
        path: the file written. Defaults to `model_dir/report.html`.

    Returns:
        The path of the HTML file (written atomically).

    Example:

    ```python
    write_html_report("demo_run/mr_ct", extra_figures=[("Subjects", [("subj_009", figure)])])
    ```
    """
    from sfg_keras.io.atomic import atomic_path

    model_dir = Path(model_dir)
    path = Path(path) if path is not None else model_dir / REPORT_FILE
    title = title or f"sfg-keras run {model_dir.name}"
    evaluation_dir = Path(evaluation_dir) if evaluation_dir is not None else model_dir / "evaluation"
    sections = [
        ("run", "Run", _settings_html(model_dir, settings_text)),
        ("curves", "Training and validation", _curves_html(model_dir / "logs")),
        ("evaluation", "Evaluation", _evaluation_html(evaluation_dir)),
    ]
    for number, (heading, figures) in enumerate(extra_figures):
        rendered = []
        for caption, figure in figures:
            png = figure if isinstance(figure, bytes) else plots.figure_to_png(figure)
            rendered.append(_figure_html(png, caption, caption))
        body = "\n".join(rendered) or '<p class="note">Nothing to show yet.</p>'
        sections.append((f"outputs_{number}", heading, body))
    sections.append(("grouping", "Learned grouping", _grouping_html(model_dir / "analysis")))
    navigation = " ".join(f'<a href="#{anchor}">{html.escape(heading)}</a>' for anchor, heading, _ in sections)
    generated = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    page = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>", f"<style>{_STYLE}</style>", "</head>", "<body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">{html.escape(str(model_dir.resolve()))} &middot; generated {generated} by sfg_run report</p>',
        f"<nav>{navigation}</nav>",
    ]
    for anchor, heading, body in sections:
        page += [f'<section id="{anchor}">', f"<h2>{html.escape(heading)}</h2>", body, "</section>"]
    page += ["</body>", "</html>"]
    with atomic_path(path) as temporary:
        Path(temporary).write_text("\n".join(page) + "\n", encoding="utf-8")
    return path
