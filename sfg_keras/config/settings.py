"""`Settings`: the resolved, typed configuration of one run, and its dump to `model_dir/settings_<action>.txt`.

`load_settings` (in `loader.py`) builds a `Settings` from a config file and command-line overrides. Each section is a
read-only `SectionSettings` whose keys are attributes (`settings.training.lr`) and which remembers where every value
came from (`settings.training.origin("lr")` is `"file"`, `"command line"` or `"default"`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from typing import Any

from sfg_keras.config.errors import closest_match
from sfg_keras.config.parser import ORIGIN_COMMAND_LINE, ORIGIN_DEFAULT, ORIGIN_FILE, ORIGIN_RECIPE
from sfg_keras.config.schema import FIXED_SECTION_SCHEMAS, KeySpec

ACTIONS = ("train", "inference", "evaluation", "export", "analyse", "report")
ORIGIN_CODE = "code"
ORIGINS = (ORIGIN_FILE, ORIGIN_COMMAND_LINE, ORIGIN_DEFAULT, ORIGIN_RECIPE, ORIGIN_CODE)


class SectionSettings:
    """The resolved values of one config section, read as attributes or items.

    Values are typed (`int`, `float`, `bool`, `str`; lists are tuples; paths are absolute strings, `""` when unset).
    The object is read-only; `replace` returns a changed copy.

    Args:
        name: the section's name, e.g. `"TRAINING"` or `"MR"`.
        values: `{key: value}` for every key of the section.
        origins: `{key: "file" | "command line" | "default" | "recipe" | "code"}`; missing keys count as
            `"default"`.
        schema: `{key: KeySpec}` used to write values back as text; inferred as strings when `None`.

    Example:

    ```python
    settings = load_settings("configs/age_gender.ini")
    settings.training.lr  # 0.001
    settings.training["max_iter"]  # 1000
    settings.training.origin("lr")  # "file"
    ```
    """

    def __init__(
        self,
        name: str,
        values: Mapping[str, Any],
        origins: Mapping[str, str] | None = None,
        schema: Mapping[str, KeySpec] | None = None,
    ):
        values = dict(values)
        origins = {key: (origins or {}).get(key, ORIGIN_DEFAULT) for key in values}
        for key, origin in origins.items():
            if origin not in ORIGINS:
                raise ValueError(f"Section [{name}] key {key!r}: origin must be one of {ORIGINS}. Received: {origin!r}")
        schema = dict(schema) if schema is not None else {key: KeySpec(key, "str", "") for key in values}
        unknown = sorted(set(values) - set(schema))
        if unknown:
            raise ValueError(f"Section [{name}]: keys {unknown} are not in the section's schema {sorted(schema)}")
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_values", values)
        object.__setattr__(self, "_origins", origins)
        object.__setattr__(self, "_schema", schema)

    @property
    def section_name(self) -> str:
        """The section's name, e.g. `"TRAINING"` (not the `[NETWORK] name` key, which `.name` reads)."""
        return self._name

    @property
    def section_schema(self) -> dict[str, KeySpec]:
        """`{key: KeySpec}` of the section."""
        return dict(self._schema)

    def __getattr__(self, key: str) -> Any:
        values = self.__dict__.get("_values")
        if values is None or key.startswith("__"):
            raise AttributeError(key)
        if key in values:
            return values[key]
        suggestion = closest_match(key, values)
        hint = f" Did you mean '{suggestion}'?" if suggestion else ""
        raise AttributeError(f"Section [{self._name}] has no key {key!r}.{hint} Keys: {', '.join(values)}")

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(
            f"Section [{self._name}] is read-only; cannot set {key!r}. Use `section.replace({key}=...)` for a copy."
        )

    def __getitem__(self, key: str) -> Any:
        if key not in self._values:
            suggestion = closest_match(key, self._values)
            hint = f" Did you mean '{suggestion}'?" if suggestion else ""
            raise KeyError(f"Section [{self._name}] has no key {key!r}.{hint}")
        return self._values[key]

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SectionSettings):
            return NotImplemented
        return (self._name, self._values) == (other._name, other._values)

    def __hash__(self) -> int:
        return hash((self._name, tuple(self._values)))

    def __repr__(self) -> str:
        items = ", ".join(f"{key}={value!r}" for key, value in self._values.items())
        return f"{type(self).__name__}({self._name!r}, {items})"

    def __reduce__(self):
        return (type(self), (self._name, self._values, self._origins, self._schema))

    def keys(self) -> list[str]:
        """The keys, in schema order."""
        return list(self._values)

    def items(self) -> list[tuple[str, Any]]:
        """`(key, value)` pairs, in schema order."""
        return list(self._values.items())

    def as_dict(self) -> dict[str, Any]:
        """A copy of `{key: value}`."""
        return dict(self._values)

    def origin(self, key: str) -> str:
        """Where the value of `key` came from: `"file"`, `"command line"`, `"default"` or `"code"` (`replace`)."""
        self[key]
        return self._origins[key]

    def replace(self, **changes: Any) -> SectionSettings:
        """Returns a copy with some values changed (their origin becomes `"code"`).

        Args:
            **changes: `key=value` pairs; every key must belong to the section.

        Returns:
            A new section of the same class.

        Example:

        ```python
        training = settings.training.replace(max_iter=10)
        ```
        """
        for key in changes:
            self[key]
        values = {**self._values, **changes}
        origins = {**self._origins, **dict.fromkeys(changes, ORIGIN_CODE)}
        return type(self)(self._name, values, origins, self._schema)

    def to_text(self, relative_to: str | None = None) -> str:
        """The section as `.ini` text: every key with its value and, as a comment, its origin.

        Args:
            relative_to: a folder (model_dir): paths inside it are written relative to it.
        """
        lines = [f"[{self._name}]"]
        entries = [(f"{key} = {self._format(key, relative_to)}", self._origins[key]) for key in self._values]
        width = min(max((len(entry) for entry, _ in entries), default=0), 72)
        lines += [f"{entry.ljust(width)}  # {origin}" for entry, origin in entries]
        return "\n".join(lines)

    def _format(self, key: str, relative_to: str | None = None) -> str:
        spec = self._schema.get(key)
        value = self._values[key]
        if spec is None:
            return str(value)
        if relative_to and spec.item_kind == "path" and value:
            value = tuple(_inside(v, relative_to) for v in value) if spec.is_list else _inside(value, relative_to)
        return spec.format_value(value)


def _inside(path: str, folder: str) -> str:
    """`path` relative to `folder` when it lies inside it (`.` for the folder itself), else unchanged."""
    absolute, base = os.path.abspath(path), os.path.abspath(folder)
    if absolute == base or absolute.startswith(base.rstrip(os.sep) + os.sep):
        return os.path.relpath(absolute, base)
    return path


class SystemSettings(SectionSettings):
    """`[SYSTEM]`: where the run lives and how it uses the machine (keys: see `schema.SYSTEM_SCHEMA`)."""

    model_dir: str
    seed: int
    dataset_split_file: str
    num_threads: int
    distribute: str
    mixed_precision: str
    jit_compile: bool
    cuda_devices: str


class NetworkSettings(SectionSettings):
    """`[NETWORK]`: the architecture, batch size and intensity normalisation (keys: `schema.NETWORK_SCHEMA`)."""

    name: str
    width_multiplier: float
    activation_function: str
    batch_size: int
    batch_norm: str
    weight_initializer: str
    normalisation: bool
    histogram_ref_file: str
    cutoff: tuple[float, ...]
    norm_type: str
    whitening: bool
    volume_padding_size: tuple[int, ...]
    window_sampling: str


class TrainingSettings(SectionSettings):
    """`[TRAINING]`: optimiser, schedule, checkpoints, dataset split and augmentation (`schema.TRAINING_SCHEMA`)."""

    optimiser: str
    lr: float
    max_iter: int
    starting_iter: int
    archive_branch: str
    save_every_n: int
    non_finite: str
    validation_every_n: int
    validation_max_iter: int
    tensorboard_every_n: int
    max_checkpoints: int
    exclude_fraction_for_validation: float
    exclude_fraction_for_inference: float
    training_fraction: float
    rotation_angle: tuple[float, ...]
    scaling_percentage: tuple[float, ...]
    random_flipping_axes: tuple[int, ...]
    sample_per_volume: int
    steps_per_execution: int


class InferenceSettings(SectionSettings):
    """`[INFERENCE]`: checkpoint, Monte-Carlo sampling, windows and outputs (`schema.INFERENCE_SCHEMA`)."""

    inference_iter: int
    save_seg_dir: str
    output_postfix: str
    num_samples: int
    inference_mode: str
    dataset_to_infer: str
    input_dir: str
    spatial_window_size: tuple[int, ...]
    border: tuple[int, ...]
    batch_size: int
    export_seed: int
    output_bounds: tuple[str, ...]


class EvaluationSettings(SectionSettings):
    """`[EVALUATION]`: metrics and where their CSVs go (`schema.EVALUATION_SCHEMA`)."""

    evaluations: tuple[str, ...]
    save_csv_dir: str


class MultitaskSettings(SectionSettings):
    """`[MULTITASK]`: the task list, one entry per task in every list (`schema.MULTITASK_SCHEMA`)."""

    image: str
    tasks: tuple[str, ...]
    task_types: tuple[str, ...]
    num_classes: tuple[int, ...]
    loss_types: tuple[str, ...]
    loss_weights: tuple[float, ...]
    labels: tuple[str, ...]
    loss_border: int


class SFGSettings(SectionSettings):
    """`[SFG]`: grouping mode or baseline, initial probabilities, sampling and temperature (`schema.SFG_SCHEMA`)."""

    recipe: str
    grouping: str
    p0: tuple[float, ...]
    init: str
    hard: bool
    sampling: str
    merge: str
    grouping_lr_multiplier: float
    grouping_step: str
    tau0: float
    tau_decay: float
    tau_decay_until: float
    tau_min: float
    sampling_warmup: float
    commit_at: float
    lambda1: float
    lambda2: float
    lambda2_start: float
    lambda2_hold: float
    lambda2_until: float


class InputSectionSettings(SectionSettings):
    """An input-source section such as `[MR]` or `[IMAGES]` (keys: `schema.INPUT_SECTION_SCHEMA`).

    `path_to_search` entries and `csv_file`/`csv_data_file` are absolute paths; `""` means unset.

    Example:

    ```python
    mr = settings.inputs["MR"]
    mr.path_to_search, mr.filename_contains
    ```
    """

    path_to_search: tuple[str, ...]
    filename_contains: tuple[str, ...]
    filename_not_contains: tuple[str, ...]
    filename_removefromid: str
    csv_file: str
    csv_data_file: str
    interp_order: int
    spatial_window_size: tuple[int, ...]
    pixdim: tuple[float, ...]
    axcodes: tuple[str, ...]
    loader: str


SECTION_CLASSES: dict[str, type[SectionSettings]] = {
    "SYSTEM": SystemSettings,
    "NETWORK": NetworkSettings,
    "TRAINING": TrainingSettings,
    "INFERENCE": InferenceSettings,
    "EVALUATION": EvaluationSettings,
    "MULTITASK": MultitaskSettings,
    "SFG": SFGSettings,
}


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One task of the `[MULTITASK]` list.

    Attributes:
        name: the task's name, e.g. `"age"`.
        type: `"regression"`, `"classification"` or `"segmentation"`.
        num_classes: classes, or output channels for regression.
        loss: the loss name, e.g. `"RMSE"`, `"CrossEntropy"`, `"DicePlusXEnt"`.
        weight: the task's weight in the objective.
        label: where the label comes from: an input section's name, `"filename"` or `"csv:<column>"`.

    Example:

    ```python
    [spec.name for spec in settings.task_specs()]  # ["age", "gender"]
    ```
    """

    name: str
    type: str
    num_classes: int
    loss: str
    weight: float
    label: str


@dataclasses.dataclass(frozen=True, eq=True)
class Settings:
    """The resolved settings of one run: every section typed and validated.

    Build it with `load_settings(config_path, overrides, action)`.

    Attributes:
        config_path: absolute path of the config file.
        config_dir: the folder of the config file (relative paths in the file are resolved against it).
        action: `"train"`, `"inference"`, `"evaluation"`, `"export"` or `"analyse"`.
        system, network, training, inference, evaluation, multitask, sfg: the fixed sections.
        inputs: the input-source sections by name, in file order.
        app_sections: application sections (declared with `extra_sections`) by upper-case name.

    Example:

    ```python
    settings = load_settings("configs/age_gender.ini", ["--max_iter=10"])
    settings.training.max_iter  # 10
    settings.inputs[settings.multitask.image].path_to_search
    ```
    """

    config_path: str
    config_dir: str
    action: str
    system: SystemSettings
    network: NetworkSettings
    training: TrainingSettings
    inference: InferenceSettings
    evaluation: EvaluationSettings
    multitask: MultitaskSettings
    sfg: SFGSettings
    inputs: dict[str, InputSectionSettings]
    app_sections: dict[str, SectionSettings]

    def __post_init__(self):
        if self.action not in ACTIONS:
            raise ValueError(f"Settings.action must be one of {ACTIONS}. Received: action={self.action!r}")

    def task_specs(self) -> list[TaskSpec]:
        """The `[MULTITASK]` task list as one `TaskSpec` per task, in order.

        Returns:
            A list of `TaskSpec`s.
        """
        multitask = self.multitask
        return [
            TaskSpec(name=name, type=task_type, num_classes=classes, loss=loss, weight=weight, label=label)
            for name, task_type, classes, loss, weight, label in zip(
                multitask.tasks,
                multitask.task_types,
                multitask.num_classes,
                multitask.loss_types,
                multitask.loss_weights,
                multitask.labels,
            )
        ]

    def sections(self) -> dict[str, SectionSettings]:
        """Every section by name: the fixed ones, then application sections, then input sections."""
        fixed = {name: getattr(self, name.lower()) for name in FIXED_SECTION_SCHEMAS}
        return {**fixed, **self.app_sections, **self.inputs}

    def section(self, name: str) -> SectionSettings:
        """Looks a section up by name, case-insensitively.

        Args:
            name: e.g. `"training"`, `"MR"`, `"AGE_GENDER"`.

        Returns:
            The section.

        Raises:
            KeyError: no section has that name.
        """
        by_upper = {key.upper(): section for key, section in self.sections().items()}
        if name.upper() not in by_upper:
            suggestion = closest_match(name.upper(), by_upper)
            hint = f" Did you mean [{suggestion}]?" if suggestion else ""
            raise KeyError(f"No section [{name}] in the settings of {self.config_path}.{hint}")
        return by_upper[name.upper()]

    def to_text(self, relative_to: str | None = None) -> str:
        """Every section and key with its resolved value, marking where each value came from.

        The text is itself a valid config file: loading it gives the same values (with `relative_to`, when the
        file is loaded from that folder).

        Args:
            relative_to: a folder (model_dir) paths inside which are written relative to it.

        Returns:
            `.ini` text with a header comment, one block per section and `# file`, `# command line`, `# default`
            comments after the values.
        """
        header = [
            f"# sfg-keras settings resolved for action '{self.action}'",
            f"# config file: {self.config_path}",
            "# after each value: where it came from (file, command line, default; code = changed in Python)",
        ]
        if relative_to:
            header.append("# paths inside model_dir are relative to this file's folder: a copied or moved model_dir "
                          "keeps its settings")
        blocks = [section.to_text(relative_to) for section in self.sections().values()]
        return "\n".join(header) + "\n\n" + "\n\n".join(blocks) + "\n"


def write_settings(settings: Settings, model_dir: str | os.PathLike | None = None, action: str | None = None) -> str:
    """Writes `settings.to_text()` to `model_dir/settings_<action>.txt` atomically, creating `model_dir` if needed;
    paths inside model_dir are written relative to it.

    Args:
        settings: the resolved settings.
        model_dir: the folder written to; `settings.system.model_dir` when `None`.
        action: the action in the file name; `settings.action` when `None`.

    Returns:
        The path of the written file.

    Example:

    ```python
    write_settings(settings)  # ".../model/settings_train.txt"
    ```
    """
    model_dir = os.fspath(model_dir) if model_dir is not None else settings.system.model_dir
    action = action if action is not None else settings.action
    if action not in ACTIONS:
        raise ValueError(f"write_settings: action must be one of {ACTIONS}. Received: action={action!r}")
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, f"settings_{action}.txt")
    from sfg_keras.io.atomic import atomic_write_text

    atomic_write_text(path, settings.to_text(relative_to=model_dir))
    return path
