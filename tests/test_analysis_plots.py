"""Tests for sfg_keras.analysis: grouping summaries, CSV/JSON output and figures."""

import csv
import io
import json
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from sfg_keras.analysis import (
    figure_to_png,
    group_colors,
    group_names,
    group_shares,
    grouping_report,
    kernel_entropies,
    map_assignment,
    map_counts,
    plot_group_share_image,
    plot_group_shares,
    plot_ternary_density,
    plot_ternary_trajectories,
    plot_trajectories,
    save_figure,
    simplex_density,
    summarize_layers,
    validate_probabilities,
    write_summary_csv,
    write_summary_json,
)

TASKS = ["age", "gender"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Columns: age, gender, shared. Hand-computed: column sums (1.6, 0.6, 1.8) / 4.
P_SMALL = np.array(
    [
        [0.7, 0.1, 0.2],
        [0.1, 0.1, 0.8],
        [0.2, 0.3, 0.5],
        [0.6, 0.1, 0.3],
    ]
)


def _layers():
    rng = np.random.default_rng(3)
    return {
        "sfg_conv_1": P_SMALL,
        "sfg_conv_2": rng.dirichlet([1.0, 1.0, 2.0], size=6),
        "sfg_conv_3": rng.dirichlet([2.0, 0.5, 0.5], size=5),
    }


def _history(num_steps=5, num_kernels=6, num_groups=3):
    rng = np.random.default_rng(7)
    start = np.full((num_kernels, num_groups), 1.0 / num_groups)
    end = rng.dirichlet(np.full(num_groups, 0.5), size=num_kernels)
    weights = np.linspace(0.0, 1.0, num_steps)[:, None, None]
    return np.arange(num_steps) * 100.0, (1.0 - weights) * start + weights * end


def _ternary_axes(figure):
    return [axes for axes in figure.axes if axes.name == "ternary"][0]


def _colorbar_label(figure):
    all_axes = [*figure.axes, *(child for axes in figure.axes for child in axes.child_axes)]
    return [axes.get_ylabel() for axes in all_axes if axes.name != "ternary" and axes.get_ylabel()][-1]


def _legend_texts(axes):
    return [text.get_text() for text in axes.get_legend().get_texts()]


# ---------------------------------------------------------------- summaries


def test_group_shares_match_hand_computed_values_and_sum_to_one():
    shares = group_shares(P_SMALL)
    np.testing.assert_allclose(shares, [0.4, 0.15, 0.45])
    assert shares.shape == (3,)
    assert shares.sum() == pytest.approx(1.0)


def test_map_assignment_and_counts():
    np.testing.assert_array_equal(map_assignment(P_SMALL), [0, 2, 2, 0])
    counts = map_counts(P_SMALL)
    np.testing.assert_array_equal(counts, [2, 0, 2])
    assert counts.dtype.kind == "i"
    # A tie goes to the last column (shared before a task), as in SFGConv.map_assignment.
    np.testing.assert_array_equal(map_assignment([[0.5, 0.0, 0.5]]), [2])
    np.testing.assert_array_equal(map_assignment([[1 / 3, 1 / 3, 1 / 3]]), [2])


def test_kernel_entropies_in_nats():
    entropies = kernel_entropies([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.0, 0.5]])
    np.testing.assert_allclose(entropies, [0.0, np.log(3.0), np.log(2.0)])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.array([0.5, 0.5]), r"2-D .* received shape \(2,\)"),
        (np.ones((3, 1)), r"at least 2 columns .* received shape \(3, 1\)"),
        (np.zeros((0, 3)), r"at least one kernel .* received shape \(0, 3\)"),
        (np.array([[1.2, -0.2], [0.5, 0.5]]), r"non-negative; received -0\.2 at row 0, column 1"),
        (np.array([[np.nan, 1.0]]), r"NaN or infinite values in rows \[0\]"),
        (np.array([[0.5, 0.5], [0.6, 0.6]]), r"shape \(2, 2\).*row 1 sums to 1\.2"),
    ],
)
def test_validate_probabilities_errors_quote_shape_and_row_sums(value, message):
    with pytest.raises(ValueError, match=message):
        validate_probabilities(value, "sfg_conv_7")
    with pytest.raises(ValueError, match="sfg_conv_7"):
        validate_probabilities(value, "sfg_conv_7")


def test_every_function_validates_its_input():
    bad = np.array([[0.5, 0.6, 0.1]])
    for function in (group_shares, map_assignment, map_counts, kernel_entropies):
        with pytest.raises(ValueError, match="sum to 1"):
            function(bad)
    with pytest.raises(ValueError, match="sum to 1"):
        summarize_layers({"sfg_conv_1": bad}, TASKS)
    with pytest.raises(ValueError, match="sum to 1"):
        plot_group_share_image(bad, TASKS)


def test_validate_probabilities_accepts_small_rounding():
    array = validate_probabilities(np.array([[0.5, 0.50005]], dtype=np.float32))
    assert array.dtype == np.float64


def test_group_names_checks_task_names():
    assert group_names(TASKS, num_groups=3) == ["age", "gender", "shared"]
    with pytest.raises(ValueError, match=r"4 columns, so 3 task name\(s\) are expected.*\['age', 'gender'\]"):
        group_names(TASKS, num_groups=4)
    with pytest.raises(ValueError, match="No task may be called 'shared'"):
        group_names(["age", "shared"])
    with pytest.raises(ValueError, match="distinct"):
        group_names(["age", "age"])
    with pytest.raises(ValueError, match="list of task-name strings; received 'age'"):
        group_names("age")


def test_summarize_layers_rows():
    rows = summarize_layers(_layers(), TASKS)
    assert [row["layer"] for row in rows] == ["sfg_conv_1", "sfg_conv_2", "sfg_conv_3"]
    first = rows[0]
    assert list(first) == [
        "layer",
        "num_kernels",
        "share_age",
        "share_gender",
        "share_shared",
        "map_count_age",
        "map_count_gender",
        "map_count_shared",
        "mean_entropy",
    ]
    assert first["num_kernels"] == 4
    assert first["share_age"] == pytest.approx(0.4)
    assert first["share_gender"] == pytest.approx(0.15)
    assert first["share_shared"] == pytest.approx(0.45)
    assert (first["map_count_age"], first["map_count_gender"], first["map_count_shared"]) == (2, 0, 2)
    assert first["mean_entropy"] == pytest.approx(float(np.mean(kernel_entropies(P_SMALL))))
    for row in rows:
        assert row["share_age"] + row["share_gender"] + row["share_shared"] == pytest.approx(1.0)
        assert row["map_count_age"] + row["map_count_gender"] + row["map_count_shared"] == row["num_kernels"]


def test_summarize_layers_rejects_mismatched_columns_and_empty_input():
    with pytest.raises(ValueError, match=r"'sfg_conv_2' has grouping probabilities of shape \(2, 4\)"):
        summarize_layers({"sfg_conv_1": P_SMALL, "sfg_conv_2": np.full((2, 4), 0.25)}, TASKS)
    with pytest.raises(ValueError, match="at least one layer"):
        summarize_layers({}, TASKS)


def test_write_summary_csv_round_trip(tmp_path):
    rows = summarize_layers(_layers(), TASKS)
    path = write_summary_csv(rows, tmp_path / "nested" / "summary.csv")
    assert path.is_file()
    with path.open(newline="") as handle:
        read = list(csv.DictReader(handle))
    assert len(read) == len(rows)
    for original, loaded in zip(rows, read):
        assert list(loaded) == list(original)
        assert loaded["layer"] == original["layer"]
        assert int(loaded["num_kernels"]) == original["num_kernels"]
        assert int(loaded["map_count_shared"]) == original["map_count_shared"]
        for key in ("share_age", "share_gender", "share_shared", "mean_entropy"):
            assert float(loaded[key]) == original[key]
    with pytest.raises(ValueError, match="at least one summary row"):
        write_summary_csv([], tmp_path / "empty.csv")
    with pytest.raises(ValueError, match="row 1 has"):
        write_summary_csv([rows[0], {"layer": "x"}], tmp_path / "bad.csv")


def test_write_summary_json_round_trip(tmp_path):
    layers = _layers()
    path = write_summary_json(layers, TASKS, tmp_path / "out" / "summary.json")
    report = json.loads(path.read_text())
    assert report == grouping_report(layers, TASKS)
    assert report["task_names"] == TASKS
    assert report["groups"] == ["age", "gender", "shared"]
    assert [layer["layer"] for layer in report["layers"]] == list(layers)
    first = report["layers"][0]
    assert first["num_kernels"] == 4
    assert first["shares"] == pytest.approx({"age": 0.4, "gender": 0.15, "shared": 0.45})
    assert first["map_counts"] == {"age": 2, "gender": 0, "shared": 2}
    assert first["map_assignment"] == [0, 2, 2, 0]
    for name, layer in zip(layers, report["layers"]):
        np.testing.assert_array_equal(np.array(layer["probabilities"]), layers[name])


# ---------------------------------------------------------------- plots


def test_group_colors_are_distinct_with_grey_shared():
    colors = group_colors(4)
    assert len(set(colors)) == 4
    assert colors[-1] == "#9e9e9e"
    with pytest.raises(ValueError, match="integer >= 2"):
        group_colors(1)


def test_plot_group_shares_bars_legend_and_axes():
    layers = _layers()
    figure = plot_group_shares(layers, TASKS, title="Fig. 6")
    assert isinstance(figure, Figure)
    axes = figure.axes[0]
    assert axes.get_title() == "Fig. 6"
    assert axes.get_ylabel() == "share of kernels"
    assert axes.get_xlabel() == "SFG layer"
    assert axes.get_ylim() == (0.0, 1.0)
    assert [label.get_text() for label in axes.get_xticklabels()] == list(layers)
    assert sorted(_legend_texts(axes)) == ["age", "gender", "shared"]
    # One bar per (group, layer), stacked in column order; heights are the group shares.
    bars = axes.patches
    assert len(bars) == 3 * len(layers)
    heights = np.array([bar.get_height() for bar in bars]).reshape(3, len(layers)).T
    expected = np.stack([group_shares(p) for p in layers.values()])
    np.testing.assert_allclose(heights, expected)
    np.testing.assert_allclose([bar.get_y() for bar in bars[len(layers) : 2 * len(layers)]], expected[:, 0])


def test_plot_ternary_density_labels_colorbar_and_density():
    figure = plot_ternary_density(P_SMALL, TASKS, title="sfg_conv_1 density", bins=12)
    axes = _ternary_axes(figure)
    assert axes.get_title() == "sfg_conv_1 density"
    # Original arrangement: bottom (r) = shared, left (l) = task 1, right (t) = task 2.
    assert "age" in axes.get_llabel()
    assert "gender" in axes.get_tlabel()
    assert "shared" in axes.get_rlabel()
    assert _colorbar_label(figure) == "density"
    assert any("K = 4" in text for text in _legend_texts(axes))


def test_plot_ternary_density_rejects_other_than_two_tasks():
    p = np.full((5, 4), 0.25)
    with pytest.raises(ValueError, match=r"exactly 2 tasks.*received shape \(5, 4\)"):
        plot_ternary_density(p, ["age", "gender", "race"])
    with pytest.raises(ValueError, match=r"received shape \(3, 2\)"):
        plot_ternary_density(np.full((3, 2), 0.5), ["age"])


def test_simplex_density_is_normalised_and_peaks_at_the_kernels():
    p = np.tile([[0.8, 0.1, 0.1]], (10, 1))
    points, triangles, density = simplex_density(p, bins=20, bandwidth=0.05)
    assert points.shape == (231, 3) and triangles.shape == (400, 3) and density.shape == (231,)
    np.testing.assert_allclose(points.sum(axis=1), 1.0)
    weights = np.bincount(triangles.ravel(), minlength=len(points))
    assert np.sum(weights * density) / np.sum(weights) == pytest.approx(1.0)
    np.testing.assert_allclose(points[np.argmax(density)], [0.8, 0.1, 0.1], atol=1e-9)
    with pytest.raises(ValueError, match=r"`bandwidth` must be a positive number .*received 0\.0"):
        simplex_density(p, bandwidth=0.0)
    with pytest.raises(ValueError, match="`bins` must be an integer >= 2"):
        simplex_density(p, bins=1)


def test_plot_group_share_image_sorts_kernels_for_any_number_of_tasks():
    p = np.array(
        [
            [0.1, 0.1, 0.1, 0.7],
            [0.6, 0.2, 0.1, 0.1],
            [0.1, 0.1, 0.7, 0.1],
            [0.9, 0.05, 0.05, 0.0],
            [0.2, 0.2, 0.2, 0.4],
        ]
    )
    figure = plot_group_share_image(p, ["age", "gender", "race"], title="sfg_conv_4")
    axes = figure.axes[0]
    assert axes.get_title() == "sfg_conv_4"
    assert axes.get_xlabel().startswith("kernel")
    assert axes.get_ylabel() == "group"
    assert [label.get_text() for label in axes.get_yticklabels()] == [
        "age (MAP 2)",
        "gender (MAP 0)",
        "race (MAP 1)",
        "shared (MAP 2)",
    ]
    image = axes.get_images()[0].get_array()
    np.testing.assert_allclose(image, p[[3, 1, 2, 0, 4]].T)
    assert figure.axes[1].get_ylabel() == "grouping probability"


def test_plot_trajectories_mean_lines_and_legend():
    steps, history = _history()
    figure = plot_trajectories(steps, history, TASKS, "sfg_conv_2")
    axes = figure.axes[0]
    assert axes.get_title() == "sfg_conv_2: grouping probabilities during training"
    assert axes.get_xlabel() == "training step"
    assert axes.get_ylabel() == "grouping probability"
    texts = _legend_texts(axes)
    assert texts[:3] == ["age", "gender", "shared"]
    mean_lines = {line.get_label(): line for line in axes.get_lines() if not line.get_label().startswith("_")}
    for index, name in enumerate(["age", "gender", "shared"]):
        np.testing.assert_allclose(mean_lines[name].get_xdata(), steps)
        np.testing.assert_allclose(mean_lines[name].get_ydata(), history[:, :, index].mean(axis=1))
    # Works for a single snapshot and any number of tasks.
    single = plot_trajectories([0], history[:1, :, :], TASKS, "sfg_conv_2", title="one step")
    assert single.axes[0].get_title() == "one step"


def test_plot_trajectories_validates_shapes():
    steps, history = _history()
    with pytest.raises(ValueError, match=r"one entry per `history` snapshot \(5\); received shape \(4,\)"):
        plot_trajectories(steps[:4], history, TASKS, "sfg_conv_2")
    with pytest.raises(ValueError, match=r"\[num_steps, num_kernels, num_tasks \+ 1\]; received shape \(6, 3\)"):
        plot_trajectories(steps, history[0], TASKS, "sfg_conv_2")
    with pytest.raises(ValueError, match="sfg_conv_2 history"):
        plot_trajectories(steps, history * 2.0, TASKS, "sfg_conv_2")


def test_plot_ternary_trajectories_lines_per_kernel_and_colorbar():
    steps, history = _history(num_steps=4, num_kernels=5)
    figure = plot_ternary_trajectories(steps, history, TASKS, "sfg_conv_3")
    axes = _ternary_axes(figure)
    assert axes.get_title() == "sfg_conv_3: kernel trajectories"
    assert "age" in axes.get_llabel() and "gender" in axes.get_tlabel() and "shared" in axes.get_rlabel()
    assert _colorbar_label(figure) == "training step"
    collections = [item for item in axes.collections if isinstance(item, LineCollection)]
    assert len(collections) == 1
    assert len(collections[0].get_segments()) == (4 - 1) * 5
    assert _legend_texts(axes) == ["start (step 0)", "end (step 300)"]
    steps3, history3 = _history(num_groups=4)
    with pytest.raises(ValueError, match=r"exactly 2 tasks.*received shape \(5, 6, 4\)"):
        plot_ternary_trajectories(steps3, history3, ["a", "b", "c"], "sfg_conv_3")


def test_figure_to_png_bytes_decode_to_expected_size():
    figure = plot_ternary_density(P_SMALL, TASKS, bins=8)
    np.testing.assert_allclose(figure.get_size_inches(), [6.2, 5.4])
    png = figure_to_png(figure, dpi=50)
    assert png[:8] == PNG_MAGIC
    image = matplotlib.image.imread(io.BytesIO(png), format="png")
    assert image.shape == (270, 310, 4)
    with pytest.raises(ValueError, match="matplotlib.figure.Figure; received bytes"):
        figure_to_png(png)


def test_save_figure_creates_folders(tmp_path):
    path = save_figure(plot_ternary_density(P_SMALL, TASKS, bins=8), tmp_path / "a" / "b" / "density.png", dpi=40)
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (216, 248)
    with pytest.raises(ValueError, match="file suffix"):
        save_figure(plot_group_share_image(P_SMALL, TASKS), tmp_path / "no_suffix")


def test_analysis_does_not_import_tensorflow():
    code = (
        "import sys; import sfg_keras.analysis; "
        "bad = [m for m in ('tensorflow', 'keras', 'scipy', 'pandas', 'sklearn') if m in sys.modules]; "
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
