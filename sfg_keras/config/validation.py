"""Checks that involve several keys or sections, and the defaults that depend on other settings.

Single values are checked by their `KeySpec` while parsing; this module checks what only the whole config can tell:
the `[MULTITASK]` lists have one entry per task, every label names an input section, `[SFG] p0` fits the tasks, the
temperature schedule is consistent, and so on. It also fills the defaults that depend on other values (per-task
losses and weights, `p0`, the inference batch size).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Iterable
from typing import Any

from sfg_keras.config.errors import ConfigError, closest_match
from sfg_keras.config.parser import ORIGIN_DEFAULT, ORIGIN_RECIPE
from sfg_keras.config.schema import (
    BUILT_IN_NETWORKS,
    DEFAULT_LOSS_BY_TASK_TYPE,
    LOSSES_BY_TASK_TYPE,
    KeySpec,
)
from sfg_keras.groups import SHARED, default_p0
from sfg_keras.physical_outputs import parse_output_bounds
from sfg_keras.recipes import recipe_values

SPECIAL_LABEL_SOURCES = ("filename", "csv:<column>")
P0_SUM_TOLERANCE = 1e-6
RESERVED_TASK_NAMES = (SHARED,)


@dataclasses.dataclass
class SectionValues:
    """The typed values of one section while a config is being resolved.

    Attributes:
        name: the section's name: upper case for fixed and application sections, as written for input sections.
        role: `"fixed"`, `"app"` or `"input"`.
        schema: `{key: KeySpec}` of the section.
        config_path: the config file, named in errors about defaults.
        values: `{key: value}` for every key of the schema (typed, paths resolved).
        origins: `{key: "file" | "command line" | "default"}`.
        wheres: `{key: file path or command-line token}` for the keys that were given.
        texts: `{key: text as given}` for the keys that were given.

    Example:

    ```python
    section = SectionValues("SFG", "fixed", SFG_SCHEMA, "config.ini", values={"tau0": 0.5})
    section.error("tau0", "expected tau0 >= tau_min")  # ConfigError("config.ini: [SFG] tau0 = 0.5 (default): ...")
    ```
    """

    name: str
    role: str
    schema: dict[str, KeySpec]
    config_path: str
    values: dict[str, Any] = dataclasses.field(default_factory=dict)
    origins: dict[str, str] = dataclasses.field(default_factory=dict)
    wheres: dict[str, str] = dataclasses.field(default_factory=dict)
    texts: dict[str, str] = dataclasses.field(default_factory=dict)

    def where(self, key: str) -> str:
        """The file path or command-line token that gave `key` (the config file for a default)."""
        return self.wheres.get(key, self.config_path)

    def shown(self, key: str) -> str:
        """The value of `key` as quoted in an error message."""
        if key in self.texts:
            return repr(self.texts[key])
        return f"{self.schema[key].format_value(self.values.get(key))} (default)"

    def error(self, key: str, message: str) -> ConfigError:
        """A `ConfigError` about one key: `WHERE: [SECTION] key = 'value': message`."""
        return ConfigError(f"{self.where(key)}: [{self.name}] {key} = {self.shown(key)}: {message}")

    def section_error(self, keys: Iterable[str], message: str) -> ConfigError:
        """A `ConfigError` about several keys of the section."""
        wheres = list(dict.fromkeys(self.where(key) for key in keys))
        return ConfigError(f"{' and '.join(wheres)}: [{self.name}] {message}")

    def set_default(self, key: str, value: Any) -> None:
        """Replaces the value of a key that was not given by a default computed from other settings."""
        self.values[key] = value
        self.origins[key] = ORIGIN_DEFAULT


def _check_range_pair(section: SectionValues, key: str, allow_empty: bool, strictly_increasing: bool) -> None:
    value = section.values[key]
    if allow_empty and len(value) == 0:
        return
    ordered = len(value) == 2 and (value[0] < value[1] if strictly_increasing else value[0] <= value[1])
    if not ordered:
        relation = "<" if strictly_increasing else "<="
        empty = " (or empty)" if allow_empty else ""
        raise section.error(key, f"expected two numbers 'low, high' with low {relation} high{empty}")


def _validate_network(network: SectionValues) -> None:
    name = network.values["name"]
    is_dotted_path = "." in name and all(part.isidentifier() for part in name.split("."))
    if name not in BUILT_IN_NETWORKS and not is_dotted_path:
        suggestion = closest_match(name, BUILT_IN_NETWORKS)
        hint = f"; did you mean '{suggestion}'?" if suggestion else ""
        raise network.error(
            "name",
            f"expected a built-in network ({', '.join(BUILT_IN_NETWORKS)}) or a dotted path 'package.module.builder'"
            f"{hint}",
        )
    _check_range_pair(network, "cutoff", allow_empty=False, strictly_increasing=True)


def _validate_training(training: SectionValues) -> None:
    total = training.values["exclude_fraction_for_validation"] + training.values["exclude_fraction_for_inference"]
    if total >= 1:
        raise training.section_error(
            ["exclude_fraction_for_validation", "exclude_fraction_for_inference"],
            f"exclude_fraction_for_validation + exclude_fraction_for_inference = {total:g}: expected a sum < 1 so "
            "that some subjects are left for training",
        )
    _check_range_pair(training, "rotation_angle", allow_empty=True, strictly_increasing=False)
    _check_range_pair(training, "scaling_percentage", allow_empty=True, strictly_increasing=False)
    axes = training.values["random_flipping_axes"]
    if -1 in axes and len(axes) > 1:
        raise training.error("random_flipping_axes", "expected -1 alone (no flipping) or a list of axes >= 0")


def _validate_tasks(multitask: SectionValues) -> list[str]:
    tasks = list(multitask.values["tasks"])
    if not tasks:
        raise multitask.error("tasks", "expected at least one task name, e.g. 'age, gender'")
    for task in tasks:
        if not task.isidentifier():
            raise multitask.error("tasks", f"task name {task!r} is not an identifier; expected letters, digits, '_'")
        if task.lower() in RESERVED_TASK_NAMES:
            raise multitask.error("tasks", f"task name {task!r} is reserved for the shared group")
    duplicates = sorted({task for task in tasks if tasks.count(task) > 1})
    if duplicates:
        raise multitask.error("tasks", f"task names must be unique; repeated: {', '.join(duplicates)}")
    return tasks


def _validate_list_lengths(multitask: SectionValues, tasks: list[str]) -> None:
    required = ["task_types", "num_classes", "labels"]
    optional = [key for key in ("loss_types", "loss_weights") if multitask.values[key]]
    wrong = [key for key in required + optional if len(multitask.values[key]) != len(tasks)]
    if wrong:
        counts = ", ".join(f"{key} has {len(multitask.values[key])}" for key in wrong)
        raise multitask.section_error(
            ["tasks", *wrong],
            f"lists must have one entry per task: tasks has {len(tasks)} ({', '.join(tasks)}) but {counts}",
        )


def _validate_classes_and_losses(multitask: SectionValues, tasks: list[str]) -> None:
    task_types = multitask.values["task_types"]
    for task, task_type, classes in zip(tasks, task_types, multitask.values["num_classes"]):
        minimum = 1 if task_type == "regression" else 2
        if classes < minimum:
            raise multitask.error(
                "num_classes",
                f"task {task!r} ({task_type}) has num_classes {classes}; expected >= {minimum}"
                + (" (output channels)" if task_type == "regression" else " classes"),
            )
    if not multitask.values["loss_types"]:
        multitask.set_default("loss_types", tuple(DEFAULT_LOSS_BY_TASK_TYPE[kind] for kind in task_types))
    else:
        losses = []
        for task, task_type, loss in zip(tasks, task_types, multitask.values["loss_types"]):
            valid = LOSSES_BY_TASK_TYPE[task_type]
            by_lower = {name.lower(): name for name in valid}
            if loss.lower() not in by_lower:
                raise multitask.error(
                    "loss_types",
                    f"loss {loss!r} of task {task!r} is not valid for {task_type}; expected one of: {', '.join(valid)}",
                )
            losses.append(by_lower[loss.lower()])
        multitask.values["loss_types"] = tuple(losses)
    if not multitask.values["loss_weights"]:
        multitask.set_default("loss_weights", tuple(1.0 for _ in tasks))


def _input_section_lookup(inputs: dict[str, SectionValues]) -> dict[str, str]:
    return {name.upper(): name for name in inputs}


def _validate_sources(multitask: SectionValues, tasks: list[str], inputs: dict[str, SectionValues]) -> None:
    lookup = _input_section_lookup(inputs)
    available = ", ".join(f"[{name}]" for name in inputs) or "none"

    image = multitask.values["image"]
    if image.upper() not in lookup:
        suggestion = closest_match(image.upper(), lookup)
        hint = f"; did you mean '{lookup[suggestion]}'?" if suggestion else ""
        raise multitask.error(
            "image", f"expected the name of an input section of the file (input sections: {available}){hint}"
        )
    multitask.values["image"] = lookup[image.upper()]

    labels = []
    for task, label in zip(tasks, multitask.values["labels"]):
        if label.lower() == "filename":
            labels.append("filename")
        elif label.lower().startswith("csv:"):
            column = label[len("csv:") :].strip()
            if not column:
                raise multitask.error("labels", f"label of task {task!r} is 'csv:' without a column name")
            labels.append(f"csv:{column}")
        elif label.upper() in lookup:
            labels.append(lookup[label.upper()])
        else:
            suggestion = closest_match(label.upper(), lookup)
            hint = f"; did you mean '{lookup[suggestion]}'?" if suggestion else ""
            raise multitask.error(
                "labels",
                f"label source {label!r} of task {task!r} is not an input section of the file (input sections: "
                f"{available}); expected an input section, {' or '.join(SPECIAL_LABEL_SOURCES)}{hint}",
            )
    multitask.values["labels"] = tuple(labels)


def _validate_output_bounds(inference: SectionValues, multitask: SectionValues, tasks: list[str]) -> None:
    regression = [task for task, kind in zip(tasks, multitask.values["task_types"]) if kind == "regression"]
    try:
        parse_output_bounds(inference.values["output_bounds"], regression)
    except ValueError as error:
        raise inference.error("output_bounds", str(error)) from None


def _validate_multitask(multitask: SectionValues, inputs: dict[str, SectionValues]) -> list[str]:
    tasks = _validate_tasks(multitask)
    _validate_list_lengths(multitask, tasks)
    _validate_classes_and_losses(multitask, tasks)
    _validate_sources(multitask, tasks, inputs)
    return tasks


def _apply_recipe(sfg: SectionValues, num_tasks: int) -> None:
    """Fills every `[SFG]` key that the file and the command line left at its default from `[SFG] recipe`."""
    for key, value in recipe_values(sfg.values["recipe"], num_tasks).items():
        if sfg.origins.get(key, ORIGIN_DEFAULT) == ORIGIN_DEFAULT:
            sfg.values[key] = value
            sfg.origins[key] = ORIGIN_RECIPE


def _validate_sfg(sfg: SectionValues, tasks: list[str]) -> None:
    order = ", ".join([*tasks, SHARED])
    _apply_recipe(sfg, len(tasks))
    p0 = sfg.values["p0"]
    if not p0:
        sfg.set_default("p0", default_p0(len(tasks)))
    else:
        if len(p0) != len(tasks) + 1:
            raise sfg.error(
                "p0",
                f"expected {len(tasks) + 1} probabilities, one per task then the shared group, ordered "
                f"task_1..task_T, shared ({order}); got {len(p0)}",
            )
        total = math.fsum(p0)
        if abs(total - 1.0) > P0_SUM_TOLERANCE:
            raise sfg.error(
                "p0",
                f"probabilities sum to {total:.9g}; expected a sum of 1 (within {P0_SUM_TOLERANCE:g}), ordered "
                f"task_1..task_T, shared ({order})",
            )
    if sfg.values["tau_min"] > sfg.values["tau0"]:
        raise sfg.section_error(
            ["tau_min", "tau0"],
            f"tau_min = {sfg.values['tau_min']:g} is above tau0 = {sfg.values['tau0']:g}: expected tau_min <= tau0",
        )
    _validate_entropy_schedule(sfg)
    if sfg.values["grouping"] == "cross_stitch" and len(tasks) < 2:
        raise sfg.error("grouping", f"cross_stitch needs at least 2 tasks; [MULTITASK] tasks has {len(tasks)}")


def _validate_entropy_schedule(sfg: SectionValues) -> None:
    values = sfg.values
    if not values["lambda2_start"]:
        return
    if values["lambda2_start"] <= values["lambda2"]:
        raise sfg.section_error(
            ["lambda2_start", "lambda2"],
            f"lambda2_start = {values['lambda2_start']:g} is not above lambda2 = {values['lambda2']:g}: expected a "
            "larger start weight that decays to lambda2, or lambda2_start = 0 for no entropy schedule",
        )
    if values["lambda2"] <= 0:
        raise sfg.error(
            "lambda2", "the entropy schedule decays to lambda2, so it must be > 0 when lambda2_start is set"
        )
    if values["lambda2_until"] < values["lambda2_hold"]:
        raise sfg.section_error(
            ["lambda2_until", "lambda2_hold"],
            f"lambda2_until = {values['lambda2_until']:g} is before lambda2_hold = {values['lambda2_hold']:g}: "
            "expected lambda2_hold <= lambda2_until",
        )


def _validate_input(section: SectionValues) -> None:
    values = section.values
    csv_file_exists = bool(values["csv_file"]) and os.path.isfile(values["csv_file"])
    if not values["path_to_search"] and not csv_file_exists and not values["csv_data_file"]:
        if values["csv_file"]:
            raise section.error(
                "csv_file",
                "the file does not exist and path_to_search is empty; expected path_to_search folders "
                "to search, or an existing csv_file",
            )
        raise section.section_error(
            ["path_to_search"],
            "path_to_search is missing: expected the folders holding this input's files (or an existing csv_file, "
            "or a csv_data_file)",
        )
    pattern = values["filename_removefromid"]
    if pattern:
        try:
            re.compile(pattern)
        except re.error as error:
            raise section.error("filename_removefromid", f"expected a regular expression ({error})") from None


def validate_sections(fixed: dict[str, SectionValues], inputs: dict[str, SectionValues]) -> None:
    """Checks the rules that span keys and sections, and fills defaults that depend on other settings.

    Fills `[MULTITASK] loss_types` and `loss_weights` (per task), `[SFG] p0` (shared 0.6, the rest even),
    `[INFERENCE] batch_size` (0 means `[NETWORK] batch_size`), and rewrites `image` and `labels` with the input
    sections' spelling.

    Args:
        fixed: the fixed sections by upper-case name, values typed and paths resolved.
        inputs: the input sections by name.

    Raises:
        ConfigError: a rule is broken; the message names the file or command line, the section, keys and values.

    Example:

    ```python
    validate_sections(fixed_sections, input_sections)
    fixed_sections["SFG"].values["p0"]  # (0.2, 0.2, 0.6) for two tasks when not given
    ```
    """
    _validate_network(fixed["NETWORK"])
    _validate_training(fixed["TRAINING"])
    inference = fixed["INFERENCE"]
    if inference.values["batch_size"] == 0:
        inference.values["batch_size"] = fixed["NETWORK"].values["batch_size"]
    for section in inputs.values():
        _validate_input(section)
    tasks = _validate_multitask(fixed["MULTITASK"], inputs)
    _validate_output_bounds(inference, fixed["MULTITASK"], tasks)
    _validate_sfg(fixed["SFG"], tasks)
