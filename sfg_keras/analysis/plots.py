"""Figures of learned SFG grouping probabilities (numpy in, matplotlib figures out).

Every `plot_*` function takes grouping probabilities `p` (`[K, T + 1]`, columns
`(task_1, ..., task_T, shared)`, rows summing to 1) and returns a
`matplotlib.figure.Figure` built without pyplot, so the module works headless and
leaves no global figure state behind. `figure_to_png` and `save_figure` render a
figure with the Agg backend.

Views:

- `plot_group_shares`: per-layer stacked bars of the share of kernels in each group
  (Fig. 6 of the SFG paper).
- `plot_ternary_density`: for two tasks, a smoothed density of the kernels' `p` on the
  probability simplex, drawn with mpltern (supplementary Fig. 2).
- `plot_group_share_image`: for any number of tasks, an image of every kernel's `p`.
- `plot_trajectories` and `plot_ternary_trajectories`: how `p` moved during training.

Ternary arrangement (the one of the original SFG analysis scripts): the bottom axis
reads the shared probability, the left axis the probability of task 1 and the right
axis the probability of task 2. The corners are therefore: bottom-right = kernel fully
shared, bottom-left = kernel fully in task 1, top = kernel fully in task 2. In mpltern
terms `t` = task 2, `l` = task 1 and `r` = shared.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.cm
import matplotlib.colors
import mpltern  # noqa: F401  (registers the "ternary" projection)
import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from sfg_keras.analysis.grouping_summary import (
    SHARED_GROUP_NAME,
    group_names,
    group_shares,
    map_assignment,
    validate_layer_probabilities,
    validate_probabilities,
)

SHARED_COLOR = "#9e9e9e"
DENSITY_CMAP = "inferno"
TIME_CMAP = "cividis"
PROBABILITY_CMAP = "viridis"


def group_colors(num_groups: int) -> list[str]:
    """One colour per group: distinct colours for the tasks, grey for `shared`.

    The same colours are used by every plot of this module, so a task keeps its
    colour across figures.

    Args:
        num_groups: number of groups `T + 1` (at least 2).

    Returns:
        `num_groups` matplotlib colour strings, the last one for `shared`.

    Example:

    >>> group_colors(3)[-1]
    '#9e9e9e'
    """
    if not isinstance(num_groups, int | np.integer) or num_groups < 2:
        raise ValueError(f"`num_groups` must be an integer >= 2 (at least one task and 'shared'); got {num_groups!r}.")
    num_tasks = int(num_groups) - 1
    if num_tasks <= 9:
        # tab10 without its grey (index 7), which is reserved for "shared".
        palette = [colormaps["tab10"](index) for index in (0, 1, 2, 3, 4, 5, 6, 8, 9)]
    else:
        palette = [colormaps["tab20"](index) for index in range(20) if index not in (14, 15)]
    colors = [matplotlib.colors.to_hex(palette[index % len(palette)]) for index in range(num_tasks)]
    return [*colors, SHARED_COLOR]


def new_figure(figsize: tuple[float, float], margins: dict | None = None) -> Figure:
    """A pyplot-free figure with an Agg canvas: constrained layout, or fixed `margins` (`subplots_adjust` keywords).

    Ternary axes use fixed margins (and a fixed title position): constrained layout and mpltern's automatic title
    placement ask for the tight bounding box of every tick label, which made one ternary figure cost about 10 times
    as much to render (the TensorBoard images are drawn during training).

    Example:

    ```python
    figure = new_figure((4.0, 3.0))
    figure.add_subplot().plot([0, 1], [1, 0])
    figure.savefig("line.png")
    ```
    """
    figure = Figure(figsize=figsize, layout=None if margins else "constrained")
    FigureCanvasAgg(figure)
    if margins:
        figure.subplots_adjust(**margins)
    return figure


_TERNARY_MARGINS = {"left": 0.12, "right": 0.8, "bottom": 0.12, "top": 0.85}
# A fixed title position above the apex's tick labels: mpltern's automatic placement measures every tick label
# (most of the render time of a ternary figure).
_TERNARY_TITLE_Y = 1.1


def _check_two_tasks(array: np.ndarray, task_names: Sequence[str], what: str) -> list[str]:
    """Checks that `array`'s last axis has 3 groups (two tasks + shared)."""
    if array.shape[-1] != 3:
        raise ValueError(
            f"{what} needs exactly 2 tasks, i.e. grouping probabilities with 3 columns (task_1, task_2, shared); "
            f"received shape {array.shape}. Use `plot_group_share_image` for other numbers of tasks."
        )
    return group_names(task_names, num_groups=3)


def _ternary_axes(figure: Figure, names: Sequence[str]) -> Any:
    """A ternary axes with the original arrangement: bottom shared, left task 1, right task 2."""
    axes = figure.add_subplot(projection="ternary")
    axes.set_tlabel(f"{names[1]} probability")
    axes.set_llabel(f"{names[0]} probability")
    axes.set_rlabel(f"{names[2]} probability")
    for axis in (axes.taxis, axes.laxis, axes.raxis):
        axis.set_label_position("tick1")
        axis.labelpad = 14
    axes.grid(linewidth=0.4, alpha=0.35)
    return axes


def _to_tlr(array: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Columns (task_1, task_2, shared) -> mpltern (t, l, r) = (task_2, task_1, shared)."""
    return array[..., 1], array[..., 0], array[..., 2]


def plot_group_shares(
    probabilities: Mapping[str, Any],
    task_names: Sequence[str],
    title: str = "Share of kernels in each group per SFG layer",
    annotate: bool = True,
) -> Figure:
    """Per-layer stacked bars of the share of kernels in each group (paper Fig. 6).

    Each bar is one layer, in the order of `probabilities`; its segments are
    `group_shares(p)` stacked bottom-up as task 1, ..., task T, shared.

    Args:
        probabilities: mapping from layer name (e.g. `"sfg_conv_1"`) to grouping
            probabilities `[K, T + 1]`.
        task_names: the `T` task names, in column order.
        title: figure title.
        annotate: write the percentage inside segments that are tall enough.

    Returns:
        The figure; its single axes has y from 0 to 1 labelled "share of kernels"
        and a legend with the task names and "shared".

    Example:

    >>> p = {"sfg_conv_1": [[0.8, 0.1, 0.1], [0.1, 0.1, 0.8]], "sfg_conv_2": [[0.3, 0.3, 0.4]] * 2}
    >>> figure = plot_group_shares(p, ["age", "gender"])
    >>> figure.axes[0].get_ylabel()
    'share of kernels'
    """
    layers, names = validate_layer_probabilities(probabilities, task_names)
    layer_names = list(layers)
    shares = np.stack([group_shares(array) for array in layers.values()])  # [L, T + 1]
    colors = group_colors(len(names))
    width = min(max(4.5, 1.1 + 0.75 * len(layer_names)), 24.0)
    figure = new_figure((width + 1.6, 4.2))
    axes = figure.add_subplot()
    positions = np.arange(len(layer_names))
    bottoms = np.zeros(len(layer_names))
    for group_index, (name, color) in enumerate(zip(names, colors)):
        heights = shares[:, group_index]
        axes.bar(positions, heights, bottom=bottoms, width=0.75, color=color, edgecolor="white", linewidth=0.6,
                 label=name)
        if annotate:
            for position, bottom, height in zip(positions, bottoms, heights):
                if height >= 0.07:
                    axes.text(position, bottom + height / 2.0, f"{100.0 * height:.0f}%", ha="center", va="center",
                              fontsize=7, color="black" if name == SHARED_GROUP_NAME else "white")
        bottoms = bottoms + heights
    axes.set_xticks(positions)
    rotate = len(layer_names) > 4 or max(len(name) for name in layer_names) > 12
    axes.set_xticklabels(layer_names, rotation=35 if rotate else 0, ha="right" if rotate else "center")
    axes.set_xlim(-0.6, len(layer_names) - 0.4)
    axes.set_ylim(0.0, 1.0)
    axes.set_xlabel("SFG layer")
    axes.set_ylabel("share of kernels")
    axes.set_title(title)
    # Reverse the legend so it reads top-down like the stacked segments.
    handles, labels = axes.get_legend_handles_labels()
    axes.legend(handles[::-1], labels[::-1], title="group", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                frameon=False)
    return figure


def _simplex_grid(bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Regular triangular grid of the 2-simplex: barycentric points [M, 3] and triangles [N, 3]."""
    index = {}
    points = []
    for i in range(bins + 1):
        for j in range(bins + 1 - i):
            index[(i, j)] = len(points)
            points.append((i / bins, j / bins, (bins - i - j) / bins))
    triangles = []
    for i in range(bins):
        for j in range(bins - i):
            triangles.append((index[(i, j)], index[(i + 1, j)], index[(i, j + 1)]))
            if i + j + 1 < bins:
                triangles.append((index[(i + 1, j)], index[(i + 1, j + 1)], index[(i, j + 1)]))
    return np.asarray(points, dtype=np.float64), np.asarray(triangles, dtype=np.int64)


def _barycentric_to_plane(points: np.ndarray) -> np.ndarray:
    """Maps barycentric coordinates to an equilateral triangle of unit side (distances = probability units)."""
    corners = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3.0) / 2.0]])
    return points @ corners


def simplex_density(p: Any, bins: int = 60, bandwidth: float = 0.05) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian kernel density of the rows of a `[K, 3]` probability array on the simplex.

    The density is evaluated on a regular triangular grid with `bins` cells per edge
    and normalised so that its mean over the simplex is 1: a value of 1 means "as
    dense as a uniform spread of kernels", 10 means ten times denser. Mass that the
    Gaussian kernels put outside the simplex is discarded by this normalisation.

    Args:
        p: grouping probabilities `[K, 3]` (two tasks and shared).
        bins: grid cells per simplex edge (at least 2).
        bandwidth: standard deviation of the Gaussian kernel, in probability units.

    Returns:
        `(points, triangles, density)`: barycentric grid points `[M, 3]` in the
        column order of `p`, triangle vertex indices `[N, 3]` and the density `[M]`.

    Example:

    >>> points, triangles, density = simplex_density([[0.2, 0.3, 0.5]] * 4, bins=10)
    >>> points.shape, triangles.shape, density.shape
    ((66, 3), (100, 3), (66,))
    """
    array = validate_probabilities(p)
    if array.shape[1] != 3:
        raise ValueError(
            f"`simplex_density` needs grouping probabilities with 3 columns; received shape {array.shape}."
        )
    if not isinstance(bins, int | np.integer) or bins < 2:
        raise ValueError(f"`bins` must be an integer >= 2 (grid cells per simplex edge); received {bins!r}.")
    if not np.isfinite(bandwidth) or bandwidth <= 0.0:
        raise ValueError(f"`bandwidth` must be a positive number (probability units); received {bandwidth!r}.")
    points, triangles = _simplex_grid(int(bins))
    grid_xy = _barycentric_to_plane(points)
    kernel_xy = _barycentric_to_plane(array)
    density = np.zeros(len(points))
    chunk = max(1, 2_000_000 // len(points))
    for start in range(0, len(kernel_xy), chunk):
        offsets = grid_xy[:, None, :] - kernel_xy[None, start : start + chunk, :]
        density += np.exp(-0.5 * np.sum(offsets**2, axis=-1) / bandwidth**2).sum(axis=1)
    # Each grid point stands for a third of each triangle it belongs to; all triangles have equal area.
    weights = np.bincount(triangles.ravel(), minlength=len(points)).astype(np.float64)
    mean_density = np.sum(weights * density) / np.sum(weights)
    return points, triangles, density / mean_density


def plot_ternary_density(
    p: Any,
    task_names: Sequence[str],
    title: str = "Density of kernel grouping probabilities",
    bins: int = 60,
    bandwidth: float = 0.05,
    show_kernels: bool = True,
) -> Figure:
    """Ternary heat map of the kernels' grouping probabilities for two tasks.

    A Gaussian kernel density of the rows of `p` (see `simplex_density`) is drawn
    with mpltern's `tripcolor` (inferno colormap) and the kernels are overlaid as a
    light scatter. Arrangement (as in the original analysis scripts): bottom axis =
    shared, left axis = task 1, right axis = task 2; hence the bottom-right corner is
    a fully shared kernel, bottom-left fully task 1 and the top fully task 2.

    Args:
        p: grouping probabilities `[K, 3]`, columns `(task_1, task_2, shared)`.
        task_names: the 2 task names.
        title: figure title.
        bins: grid cells per simplex edge for the density.
        bandwidth: standard deviation of the smoothing kernel, in probability units.
        show_kernels: overlay every kernel as a dot.

    Returns:
        The figure: a ternary axes (mpltern) and a colour bar labelled "density".

    Raises:
        ValueError: if `p` does not have exactly 3 columns (T != 2).

    Example:

    >>> p = [[0.7, 0.1, 0.2], [0.1, 0.1, 0.8], [0.2, 0.6, 0.2]]
    >>> figure = plot_ternary_density(p, ["age", "gender"], title="sfg_conv_1")
    >>> figure.axes[0].get_title()
    'sfg_conv_1'
    """
    array = validate_probabilities(p)
    names = _check_two_tasks(array, task_names, "`plot_ternary_density`")
    points, triangles, density = simplex_density(array, bins=bins, bandwidth=bandwidth)
    figure = new_figure((6.2, 5.4), margins=_TERNARY_MARGINS)
    axes = _ternary_axes(figure, names)
    mesh = axes.tripcolor(*_to_tlr(points), density, triangles=triangles, shading="gouraud", cmap=DENSITY_CMAP,
                          rasterized=True)
    if show_kernels:
        axes.scatter(*_to_tlr(array), s=7, facecolor="white", edgecolor="none", alpha=0.55)
        kernel_handle = Line2D([], [], marker="o", linestyle="", markersize=4, markerfacecolor="white",
                               markeredgecolor="0.3", label=f"kernels (K = {array.shape[0]})")
        axes.legend(handles=[kernel_handle], loc="upper left", bbox_to_anchor=(-0.05, 1.08), frameon=False,
                    fontsize=8)
    axes.set_title(title, y=_TERNARY_TITLE_Y)
    colorbar_axes = axes.inset_axes([1.08, 0.05, 0.04, 0.85], transform=axes.transAxes)
    colorbar = figure.colorbar(mesh, cax=colorbar_axes)
    colorbar.set_label("density")
    return figure


def plot_group_share_image(
    p: Any,
    task_names: Sequence[str],
    title: str = "Grouping probabilities per kernel",
) -> Figure:
    """Image of every kernel's grouping probabilities, for any number of tasks.

    Columns of the image are kernels, sorted by MAP group (task 1, ..., shared) and
    within a group by decreasing probability of that group; rows are groups. White
    lines separate the MAP groups, and each row label gives the group's MAP count.

    Args:
        p: grouping probabilities `[K, T + 1]`.
        task_names: the `T` task names.
        title: figure title.

    Returns:
        The figure: the image axes and a colour bar labelled "grouping probability".

    Example:

    >>> figure = plot_group_share_image([[0.7, 0.1, 0.2], [0.1, 0.1, 0.8]], ["age", "gender"])
    >>> figure.axes[0].get_xlabel()
    'kernel (sorted by MAP group, then by its probability)'
    """
    array = validate_probabilities(p)
    names = group_names(task_names, num_groups=array.shape[1])
    assignment = map_assignment(array)
    map_probability = array[np.arange(array.shape[0]), assignment]
    order = np.lexsort((-map_probability, assignment))
    counts = np.bincount(assignment, minlength=len(names))
    figure = new_figure((min(max(5.0, 2.5 + 0.02 * array.shape[0]), 14.0), 1.6 + 0.45 * len(names)))
    axes = figure.add_subplot()
    image = axes.imshow(array[order].T, aspect="auto", interpolation="nearest", cmap=PROBABILITY_CMAP, vmin=0.0,
                        vmax=1.0, extent=(-0.5, array.shape[0] - 0.5, len(names) - 0.5, -0.5))
    for boundary in np.cumsum(counts)[:-1]:
        if 0 < boundary < array.shape[0]:
            axes.axvline(boundary - 0.5, color="white", linewidth=1.2)
    axes.set_yticks(np.arange(len(names)))
    axes.set_yticklabels([f"{name} (MAP {count})" for name, count in zip(names, counts)])
    axes.set_xlabel("kernel (sorted by MAP group, then by its probability)")
    axes.set_ylabel("group")
    axes.set_title(title)
    colorbar = figure.colorbar(image, ax=axes, pad=0.02)
    colorbar.set_label("grouping probability")
    return figure


def _validate_history(steps: Any, history: Any, layer_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Checks `steps [N]` and `history [N, K, T + 1]` and returns them as float arrays."""
    steps_array = np.asarray(steps, dtype=np.float64)
    history_array = np.asarray(history, dtype=np.float64)
    if history_array.ndim != 3:
        raise ValueError(
            f"`history` of layer {layer_name!r} must have shape [num_steps, num_kernels, num_tasks + 1]; "
            f"received shape {history_array.shape}."
        )
    if steps_array.ndim != 1 or steps_array.shape[0] != history_array.shape[0] or steps_array.shape[0] < 1:
        raise ValueError(
            f"`steps` of layer {layer_name!r} must be a non-empty 1-D array with one entry per `history` snapshot "
            f"({history_array.shape[0]}); received shape {steps_array.shape}."
        )
    if not np.all(np.isfinite(steps_array)):
        raise ValueError(f"`steps` of layer {layer_name!r} must be finite; received {steps_array.tolist()!r}.")
    validate_probabilities(
        history_array.reshape(-1, history_array.shape[-1]), f"{layer_name} history (shape {history_array.shape})"
    )
    return steps_array, history_array


def plot_trajectories(
    steps: Any,
    history: Any,
    task_names: Sequence[str],
    layer_name: str,
    title: str | None = None,
) -> Figure:
    """Mean grouping probability of each group over training, with a kernel spread band.

    For every group the line is the mean of `p` over the kernels at each recorded
    step, and the band spans the 10th to 90th percentile over the kernels.

    Args:
        steps: training steps of the snapshots, `[N]`.
        history: grouping probabilities at each step, `[N, K, T + 1]`.
        task_names: the `T` task names.
        layer_name: name of the SFG layer, used in the default title.
        title: figure title; defaults to `"<layer_name>: grouping probabilities during training"`.

    Returns:
        The figure: one axes with x "training step", y "grouping probability" and a
        legend with the task names and "shared".

    Example:

    >>> history = [[[0.34, 0.33, 0.33]] * 4, [[0.6, 0.1, 0.3]] * 4]
    >>> figure = plot_trajectories([0, 100], history, ["age", "gender"], "sfg_conv_1")
    >>> figure.axes[0].get_title()
    'sfg_conv_1: grouping probabilities during training'
    """
    steps_array, history_array = _validate_history(steps, history, layer_name)
    names = group_names(task_names, num_groups=history_array.shape[-1])
    colors = group_colors(len(names))
    means = history_array.mean(axis=1)
    lower, upper = np.percentile(history_array, [10.0, 90.0], axis=1)
    figure = new_figure((7.5, 4.2))
    axes = figure.add_subplot()
    marker = "o" if len(steps_array) <= 25 else None
    for group_index, (name, color) in enumerate(zip(names, colors)):
        axes.fill_between(steps_array, lower[:, group_index], upper[:, group_index], color=color, alpha=0.18,
                          linewidth=0)
        for bound in (lower, upper):
            axes.plot(steps_array, bound[:, group_index], color=color, linewidth=0.6, alpha=0.7)
        axes.plot(steps_array, means[:, group_index], color=color, linewidth=1.8, marker=marker, markersize=3,
                  label=name)
    if steps_array[-1] > steps_array[0]:
        axes.set_xlim(steps_array[0], steps_array[-1])
    axes.set_ylim(0.0, 1.0)
    axes.set_xlabel("training step")
    axes.set_ylabel("grouping probability")
    axes.set_title(title if title is not None else f"{layer_name}: grouping probabilities during training")
    handles, labels = axes.get_legend_handles_labels()
    handles.append(Patch(facecolor="0.5", alpha=0.3, label="10th-90th percentile\nover kernels"))
    labels.append("10th-90th percentile\nover kernels")
    axes.legend(handles, labels, title="mean over kernels", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                frameon=False)
    axes.grid(alpha=0.3, linewidth=0.5)
    return figure


def plot_ternary_trajectories(
    steps: Any,
    history: Any,
    task_names: Sequence[str],
    layer_name: str,
    title: str | None = None,
) -> Figure:
    """Path of every kernel's grouping probabilities on the simplex during training (two tasks).

    One thin line per kernel, coloured by training step (cividis), with the start
    marked by a hollow circle and the end by a dot. Same arrangement as
    `plot_ternary_density`: bottom axis = shared, left = task 1, right = task 2.

    Args:
        steps: training steps of the snapshots, `[N]`.
        history: grouping probabilities at each step, `[N, K, 3]`.
        task_names: the 2 task names.
        layer_name: name of the SFG layer, used in the default title.
        title: figure title; defaults to `"<layer_name>: kernel trajectories"`.

    Returns:
        The figure: a ternary axes and a colour bar labelled "training step".

    Raises:
        ValueError: if `history` does not have 3 groups (T != 2).

    Example:

    >>> history = [[[0.34, 0.33, 0.33]] * 2, [[0.6, 0.1, 0.3], [0.1, 0.2, 0.7]]]
    >>> figure = plot_ternary_trajectories([0, 100], history, ["age", "gender"], "sfg_conv_1")
    >>> figure.axes[0].get_title()
    'sfg_conv_1: kernel trajectories'
    """
    steps_array, history_array = _validate_history(steps, history, layer_name)
    names = _check_two_tasks(history_array, task_names, "`plot_ternary_trajectories`")
    figure = new_figure((6.2, 5.4), margins=_TERNARY_MARGINS)
    axes = _ternary_axes(figure, names)
    norm = matplotlib.colors.Normalize(vmin=steps_array.min(), vmax=max(steps_array.max(), steps_array.min() + 1e-12))
    plane = axes.transProjection.transform(np.stack(_to_tlr(history_array), axis=-1).reshape(-1, 3))
    plane = plane.reshape(history_array.shape[0], history_array.shape[1], 2)  # [N, K, 2]
    if len(steps_array) > 1:
        segments = np.stack([plane[:-1], plane[1:]], axis=2)  # [N - 1, K, 2, 2]
        segment_steps = np.repeat(0.5 * (steps_array[:-1] + steps_array[1:]), history_array.shape[1])
        lines = LineCollection(segments.reshape(-1, 2, 2), cmap=TIME_CMAP, norm=norm, linewidths=0.7, alpha=0.85,
                               transform=axes.transData)
        lines.set_array(segment_steps)
        axes.add_collection(lines, autolim=False)
    start, end = _to_tlr(history_array[0]), _to_tlr(history_array[-1])
    end_color = colormaps[TIME_CMAP](1.0)
    axes.scatter(*start, s=12, facecolor="none", edgecolor="0.35", linewidth=0.6)
    axes.scatter(*end, s=9, color=end_color, edgecolor="black", linewidth=0.3)
    # Legend markers only; the line colour is explained by the colour bar.
    legend_handles = [
        Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor="0.35",
               label=f"start (step {steps_array[0]:g})"),
        Line2D([], [], marker="o", linestyle="", color=end_color, markeredgecolor="black",
               label=f"end (step {steps_array[-1]:g})"),
    ]
    axes.legend(handles=legend_handles, loc="upper left", bbox_to_anchor=(-0.05, 1.08), frameon=False, fontsize=8)
    axes.set_title(title if title is not None else f"{layer_name}: kernel trajectories", y=_TERNARY_TITLE_Y)
    colorbar_axes = axes.inset_axes([1.08, 0.05, 0.04, 0.85], transform=axes.transAxes)
    mappable = matplotlib.cm.ScalarMappable(norm=norm, cmap=TIME_CMAP)
    colorbar = figure.colorbar(mappable, cax=colorbar_axes)
    colorbar.set_label("training step")
    return figure


def _close(figure: Figure) -> None:
    """Releases a figure, including pyplot's reference when pyplot created it."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(figure)
    figure.clear()


def figure_to_png(figure: Figure, dpi: int = 100) -> bytes:
    """Renders a figure to PNG bytes with the Agg backend and closes it.

    Args:
        figure: the figure to render (from this module or from pyplot).
        dpi: resolution; the image is `figsize * dpi` pixels.

    Returns:
        The PNG file content.

    Example:

    >>> png = figure_to_png(plot_group_share_image([[0.7, 0.3]], ["age"]))
    >>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
    """
    if not isinstance(figure, Figure):
        raise ValueError(f"`figure` must be a matplotlib.figure.Figure; received {type(figure).__name__}.")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    _close(figure)
    return buffer.getvalue()


def save_figure(figure: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Saves a figure (format from the file suffix, e.g. `.png`), creating folders, then closes it.

    Args:
        figure: the figure to save.
        path: destination file; missing parent folders are created.
        dpi: resolution for raster formats.

    Returns:
        The path written.

    Example:

    >>> save_figure(plot_group_share_image([[0.7, 0.3]], ["age"]), "/tmp/sfg_plots/layer.png").name
    'layer.png'
    """
    if not isinstance(figure, Figure):
        raise ValueError(f"`figure` must be a matplotlib.figure.Figure; received {type(figure).__name__}.")
    path = Path(path)
    if not path.suffix:
        raise ValueError(
            f"`path` needs a file suffix that names the image format (e.g. '.png'); received {str(path)!r}."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    _close(figure)
    return path

