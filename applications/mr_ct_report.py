"""The mr_ct figures of the HTML report: mid-slices of every inferred subject.

For each subject of `save_seg_dir/inferred.csv` one figure shows the middle axial slice of the MR, the synthetic CT
(HU), the label map and the uncertainty maps the inference wrote (CT standard deviation in Monte-Carlo mode, label
entropy), side by side in the same orientation. The MR comes from the `image` column inference records (or, for
outputs written before it did, from the subject's MR among the configured inputs).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from sfg_keras.analysis import plots
from sfg_keras.io import load_nifti
from sfg_keras.predictions import output_name

from .mr_ct_outputs import main_column

#: At most this many subjects are drawn (the rest are named in the caption of the section).
MAX_SUBJECTS = 12
_CT_WINDOW = (-1024.0, 1500.0)


def _mid_slice(path: str) -> np.ndarray:
    data = np.asarray(load_nifti(path).data, dtype=np.float32)
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    return np.rot90(data[:, :, data.shape[2] // 2])


def subject_figure(subject: str, files: Mapping[str, str], label_names: Sequence[str]) -> Figure:
    """One row of mid-slice panels of a subject: `files` maps a panel (`"MR"`, `"synthetic CT"`, `"labels"`,
    `"CT std"`, `"label entropy"`) to its NIfTI file; missing panels are left out.

    Example:

    ```python
    subject_figure("subj_009", {"MR": mr, "synthetic CT": ct, "labels": organs}, ["background", "bone", ...])
    ```
    """
    panels = [(name, path) for name, path in files.items() if path]
    figure = plots.new_figure((3.0 * len(panels), 3.4))
    figure.suptitle(subject)
    classes = max(2, len(label_names))
    label_colors = matplotlib.colors.ListedColormap(
        ["black", *[matplotlib.colormaps["tab10"](i % 10) for i in range(classes - 1)]])
    for index, (name, path) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        image = _mid_slice(path)
        if name == "labels":
            shown = axes.imshow(image, cmap=label_colors, vmin=-0.5, vmax=classes - 0.5, interpolation="nearest")
            bar = figure.colorbar(shown, ax=axes, shrink=0.8, ticks=range(classes))
            bar.ax.set_yticklabels(list(label_names)[:classes], fontsize=7)
        elif name == "synthetic CT":
            shown = axes.imshow(image, cmap="gray", vmin=_CT_WINDOW[0], vmax=_CT_WINDOW[1])
            figure.colorbar(shown, ax=axes, shrink=0.8).set_label("HU", fontsize=8)
        else:
            cmap = "gray" if name == "MR" else "magma"
            shown = axes.imshow(image, cmap=cmap)
            figure.colorbar(shown, ax=axes, shrink=0.8).ax.tick_params(labelsize=7)
        axes.set_title(name, fontsize=10)
        axes.set_axis_off()
    return figure


def report_figures(app) -> list[tuple[str, list[tuple[str, Figure]]]]:
    """The report section of an `MRCTApplication`: one figure per inferred subject (at most `MAX_SUBJECTS`).

    Returns:
        `[("Inferred subjects", [(caption, figure), ...])]`, or `[]` before any inference.
    """
    inferred = Path(app.output_dir) / "inferred.csv"
    if not inferred.is_file():
        return []
    with open(inferred, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    regression = next(iter(app.regression_tasks), None)
    segmentation = next(iter(app.segmentation_tasks), None)
    images = {}
    if rows and not all(row.get("image") for row in rows):
        try:
            images = {str(row["subject"]): row[app.image_section] for row in app.match_files([app.image_section])}
        except (OSError, ValueError):
            images = {}
    label_names = list(app.app_settings.label_names)
    figures = []
    for row in rows[:MAX_SUBJECTS]:
        subject = row["subject"]
        files = {
            "MR": row.get("image") or images.get(subject),
            "synthetic CT": row.get(main_column(regression, row)) if regression else None,
            "labels": row.get(main_column(segmentation, row)) if segmentation else None,
            "CT std": row.get(output_name(regression.name, "std")) if regression else None,
            "label entropy": row.get(output_name(segmentation.name, "entropy")) if segmentation else None,
        }
        # inferred.csv names its files relative to its own folder (absolute paths, e.g. the MR input, stay as they are)
        files = {name: inferred.parent / path for name, path in files.items() if path}
        files = {name: str(path) for name, path in files.items() if path.is_file()}
        if files:
            caption = f"{subject}: middle axial slice of " + ", ".join(files)
            figures.append((caption, subject_figure(subject, files, label_names)))
    heading = "Inferred subjects"
    if len(rows) > MAX_SUBJECTS:
        heading += f" (first {MAX_SUBJECTS} of {len(rows)})"
    return [(heading, figures)]
