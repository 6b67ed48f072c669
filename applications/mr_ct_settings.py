"""The `[MR_CT]` section of the mr_ct application and the checks of the task list it supports.

The section's keys (`APP_KEYS`): `patch_size` and `padded_size` of the training patches, `label_names` (one per
label value of the segmentation task, used as metric column names), `bone_label` (the label of the bone metrics) and
`check_hounsfield`. The checks return what is wrong as `(key, value, expected)` instead of raising, so that the
application raises its own `ConfigError` naming the config file and section (`BaseApplication.config_error`).

Example:

```python
problem = section_problem(app.app_settings, app.segmentation_tasks)
if problem:
    raise app.config_error(SECTION, *problem)
```
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from sfg_keras.config import KeySpec, SectionSettings, TaskSpec

SECTION = "MR_CT"
DEFAULT_LABEL_NAMES = ("background", "bone", "bladder", "prostate", "rectum")
APP_KEYS = [
    KeySpec("patch_size", "int_list", (128, 128), "Height and width of the random training patches.", minimum=1),
    KeySpec(
        "padded_size", "int_list", (136, 136),
        "Size the patches are zero-padded to; the padding is masked out of the losses.", minimum=1,
    ),
    KeySpec(
        "label_names", "str_list", DEFAULT_LABEL_NAMES,
        "Name of each label value 0..C-1 of the segmentation task (metric column names).",
    ),
    KeySpec(
        "bone_label", "int", 1,
        "Label value of bone (regions of psnr_bone and mae_bone); must be the label named 'bone' when "
        "label_names has one.", minimum=1,
    ),
    KeySpec(
        "check_hounsfield", "bool", True,
        "Refuse CT references whose values cannot be Hounsfield units (no voxel below -900 HU, e.g. HU + 1024 "
        "stored unsigned); False accepts them.",
    ),
]


def task_problem(task: TaskSpec, multitask: SectionSettings, input_sections: Collection[str]
                 ) -> tuple[str, object, str] | None:
    """What is wrong with `task` for the mr_ct application, as `([MULTITASK] key, value, expected)`, or None.

    Args:
        task: one task of `[MULTITASK]`.
        multitask: the `[MULTITASK]` section (the value named in the problem is its whole list).
        input_sections: the names of the config's input sections (a task's `labels` entry must be one).

    Example:

    ```python
    task_problem(TaskSpec("age", "classification", 2, "CrossEntropy", 1.0, "CT"), settings.multitask, ["MR", "CT"])
    # ('task_types', ('regression', 'classification'), "the mr_ct application predicts volumes; ...")
    ```
    """
    if task.type not in ("regression", "segmentation"):
        return "task_types", multitask.task_types, (
            f"the mr_ct application predicts volumes; task {task.name!r} is {task.type}, expected regression (CT) or "
            "segmentation (labels)"
        )
    if task.label not in input_sections:
        return "labels", multitask.labels, (
            f"task {task.name!r} takes its reference from {task.label!r}; expected the name of an input section "
            f"holding NIfTI volumes ({', '.join(input_sections)})"
        )
    if task.type == "regression" and int(task.num_classes) != 1:
        return "num_classes", multitask.num_classes, (
            f"regression task {task.name!r} predicts one CT channel; expected num_classes 1"
        )
    return None


def section_problem(section: SectionSettings, segmentation_tasks: Sequence[TaskSpec]
                    ) -> tuple[str, object, str] | None:
    """What is wrong with the `[MR_CT]` section, as `(key, value, expected)`, or None.

    The patch sizes must have two entries and `padded_size >= patch_size`; with a segmentation task, `label_names`
    has one name per class of the first one (none named `mean`) and `bone_label` is a foreground label, the one named
    `bone` when there is one.

    Args:
        section: the `[MR_CT]` settings (`BaseApplication.app_settings`).
        segmentation_tasks: the segmentation tasks, in task order.

    Example:

    ```python
    section_problem(app.app_settings, app.segmentation_tasks)  # None for the demo config
    ```
    """
    for key in ("patch_size", "padded_size"):
        if len(section[key]) != 2:
            return key, section[key], "expected two sizes: height, width"
    if any(p < c for p, c in zip(section.padded_size, section.patch_size)):
        return "padded_size", section.padded_size, f"expected at least patch_size {tuple(section.patch_size)}"
    if not segmentation_tasks:
        return None
    return _label_problem(section, segmentation_tasks[0])


def _label_problem(section: SectionSettings, task: TaskSpec) -> tuple[str, object, str] | None:
    """`label_names` and `bone_label` against the classes of the (first) segmentation task."""
    classes = int(task.num_classes)
    label_names, bone = section.label_names, section.bone_label
    if len(label_names) != classes:
        return "label_names", label_names, (
            f"expected {classes} names, one per class of task {task.name!r} (num_classes {classes}), in label order "
            "starting with the background"
        )
    if bone >= classes:
        return "bone_label", bone, f"expected a label value in 1..{classes - 1}"
    names = [str(name).strip().lower() for name in label_names]
    if "mean" in names[1:]:
        return "label_names", label_names, (
            "a label named 'mean' would write its Dice over dice_mean, the mean Dice; expected another name"
        )
    if "bone" in names and names.index("bone") != bone:
        return "bone_label", bone, (
            f"label_names = {', '.join(label_names)} names label {names.index('bone')} 'bone', but bone_label {bone} "
            f"is {label_names[bone]!r}: psnr_bone and mae_bone would describe another tissue; expected bone_label = "
            f"{names.index('bone')}"
        )
    return None
