"""The `[AGE_GENDER]` section of the age_gender application and the checks of the settings it supports.

The section's keys (`APP_KEYS`): `channels` images are decoded to and the regression `target_scale`. The checks return
what is wrong as `(section, key, value, expected)` instead of raising, so that the application raises its own
`ConfigError` naming the config file (`BaseApplication.config_error`).

Example:

```python
problem = settings_problem(app.settings, app.app_settings, app.tasks)
if problem:
    raise app.config_error(*problem)
```
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sfg_keras.config import KeySpec, SectionSettings, Settings, TaskSpec

from .image_labels import label_source_problem

APP_SECTION = "AGE_GENDER"
APP_KEYS = [
    KeySpec("channels", "int", 3, "Colour channels images are decoded to: 3 (RGB) or 1 (grey).", minimum=1, maximum=3),
    KeySpec(
        "target_scale",
        "float_list",
        (),
        "Per task (or per regression task): regression targets are divided by it (e.g. 100: age in years / 100).",
        minimum=0,
        exclusive_minimum=True,
        default_text="100 for a task named age with filename labels, else 1",
    ),
]
DEFAULT_IMAGE_SIZE = (200, 200)
#: The `[EVALUATION] evaluations` age_gender computes.
EVALUATIONS = ("mae", "accuracy")

Problem = tuple[str, str, object, str]


def settings_problem(settings: Settings, section: SectionSettings, tasks: Sequence[TaskSpec]) -> Problem | None:
    """The first thing wrong with the tasks, label sources, image size, channels, target scales and augmentation,
    as `(section, key, value, expected)`, or None.

    Args:
        settings: the run's settings (`[MULTITASK]`, the image section, `[NETWORK]`, `[TRAINING]`).
        section: the `[AGE_GENDER]` settings (`BaseApplication.app_settings`).
        tasks: the tasks.

    Example:

    ```python
    settings_problem(settings, app.app_settings, app.tasks)  # None for the demo config
    ```
    """
    image_section = settings.multitask.image
    image = settings.inputs[image_section]
    for task in tasks:
        problem = label_source_problem(task, image_section, bool(image.csv_data_file))
        if problem:
            return ("MULTITASK", *problem)
    problem = _image_problem(settings, section, tasks)
    if problem:
        return problem
    training = settings.training
    if any(axis not in (-1, 0, 1) for axis in training.random_flipping_axes):
        return ("TRAINING", "random_flipping_axes", training.random_flipping_axes,
                "expected 0 (up-down), 1 (left-right) or -1 (none)")
    for key in ("rotation_angle", "scaling_percentage"):
        value = training[key]
        if value and not (len(value) == 2 and math.isclose(value[0], -value[1])):
            return "TRAINING", key, value, "age_gender draws from a symmetric range: expected '-a, a' or ()"
    return None


def _image_problem(settings: Settings, section: SectionSettings, tasks: Sequence[TaskSpec]) -> Problem | None:
    """The image section's window and loader, `[AGE_GENDER] channels` and `target_scale`, `[NETWORK]
    normalisation`."""
    name = settings.multitask.image
    image = settings.inputs[name]
    window = image.spatial_window_size
    if window and not (len(window) == 2 or (len(window) == 3 and window[2] == 1)):
        return name, "spatial_window_size", window, "expected 'height, width' (or 'height, width, 1')"
    channels = int(section.channels)
    if channels not in (1, 3):
        return APP_SECTION, "channels", channels, "expected 1 (grey) or 3 (RGB)"
    scales = section.target_scale
    regression = [t for t in tasks if t.type == "regression"]
    if scales and len(scales) not in (len(tasks), len(regression)):
        return APP_SECTION, "target_scale", scales, (
            f"expected one value per task ({len(tasks)}) or per regression task ({len(regression)})"
        )
    if image.loader == "nibabel":
        return name, "loader", image.loader, "age_gender reads JPEG and PNG images: expected tf_image or empty"
    if settings.network.normalisation:
        return "NETWORK", "normalisation", settings.network.normalisation, (
            "Nyul histogram standardisation is for MR volumes; age_gender standardises each channel with training "
            "statistics: expected False"
        )
    return None


def target_scale(scales: Sequence[float], tasks: Sequence[TaskSpec], task: TaskSpec) -> float:
    """Divisor of `task`'s regression targets: `[AGE_GENDER] target_scale` (one value per task, or per regression
    task), else 100 for `age` read from file names, else 1.

    Example:

    ```python
    target_scale((), [age], age)  # 100.0 for the UTKFace age task (labels = filename)
    ```
    """
    if scales:
        if len(scales) == len(tasks):
            return float(scales[list(tasks).index(task)])
        regression = [t for t in tasks if t.type == "regression"]
        if task in regression:
            return float(scales[regression.index(task)])
    return 100.0 if task.name == "age" and task.label == "filename" else 1.0


def evaluations_problem(evaluations: Sequence[str]) -> Problem | None:
    """The first unknown name of `[EVALUATION] evaluations` (case-insensitive), as `(section, key, value,
    expected)`, or None.

    Example:

    ```python
    evaluations_problem(["MAE", "dice"])  # ('EVALUATION', 'evaluations', 'dice', 'unknown evaluation: ...')
    ```
    """
    for evaluation in evaluations:
        if evaluation.lower() not in EVALUATIONS:
            return ("EVALUATION", "evaluations", evaluation,
                    f"unknown evaluation: expected {', '.join(EVALUATIONS)} (empty = all)")
    return None
