"""Grouping analysis: summaries and figures of learned SFG grouping probabilities.

Everything here works on numpy arrays `p` of shape `[K, T + 1]` (columns
`(task_1, ..., task_T, shared)`, rows summing to 1), one per SFG layer, and needs
neither TensorFlow nor a model.

Example:

>>> import numpy as np
>>> from sfg_keras.analysis import group_shares, plot_group_shares, save_figure
>>> p = {"sfg_conv_1": np.array([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8]])}
>>> group_shares(p["sfg_conv_1"]).round(2).tolist()
[0.45, 0.1, 0.45]
>>> save_figure(plot_group_shares(p, ["age", "gender"]), "/tmp/sfg_analysis/shares.png").name
'shares.png'
"""

from sfg_keras.analysis.grouping_summary import (
    SHARED_GROUP_NAME,
    group_names,
    group_shares,
    grouping_report,
    kernel_entropies,
    map_assignment,
    map_counts,
    summarize_layers,
    validate_layer_probabilities,
    validate_probabilities,
    write_summary_csv,
    write_summary_json,
)
from sfg_keras.analysis.plots import (
    figure_to_png,
    group_colors,
    plot_group_share_image,
    plot_group_shares,
    plot_ternary_density,
    plot_ternary_trajectories,
    plot_trajectories,
    save_figure,
    simplex_density,
)
from sfg_keras.analysis.report import load_grouping_history, save_grouping_history, write_grouping_report

__all__ = [
    "SHARED_GROUP_NAME",
    "figure_to_png",
    "group_colors",
    "group_names",
    "group_shares",
    "grouping_report",
    "kernel_entropies",
    "load_grouping_history",
    "map_assignment",
    "map_counts",
    "plot_group_share_image",
    "plot_group_shares",
    "plot_ternary_density",
    "plot_ternary_trajectories",
    "plot_trajectories",
    "save_figure",
    "save_grouping_history",
    "simplex_density",
    "summarize_layers",
    "validate_layer_probabilities",
    "validate_probabilities",
    "write_grouping_report",
    "write_summary_csv",
    "write_summary_json",
]
