"""The `.ini` schema: every section, every key, its type, default and meaning.

A config file has the fixed sections `[SYSTEM]`, `[NETWORK]`, `[TRAINING]`, `[INFERENCE]`, `[EVALUATION]`,
`[MULTITASK]` and `[SFG]`; every other section is an input source (NiftyNet's convention) and takes the keys of
`INPUT_SECTION_SCHEMA`. Applications add their own sections (e.g. `[AGE_GENDER]`) as a mapping of `KeySpec`s.

A `KeySpec` converts the text of one value into a typed Python value and says what it expects when the text is
wrong. `dump_schema_markdown()` writes the whole schema as the Markdown tables the README includes.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sfg_keras.groups import (
    GROUPING_STEPS,
    GROUPINGS,
    INFERENCE_STATISTICS,
    INIT_MODES,
    MERGE_MODES,
    NETWORK_NAMES,
    SAMPLING_MODES,
)
from sfg_keras.predictions import INFERENCE_MODES
from sfg_keras.recipes import DEFAULT_RECIPE, RECIPES

SCALAR_KINDS = ("int", "float", "bool", "str", "choice", "path")
LIST_KINDS = ("int_list", "float_list", "str_list", "choice_list", "path_list")
KINDS = SCALAR_KINDS + LIST_KINDS
PATH_BASES = ("config_dir", "model_dir")

TRUE_WORDS = ("true", "yes", "1")
FALSE_WORDS = ("false", "no", "0")


class _Required:
    """Marks a key without a default: the config file must give it."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "REQUIRED"

    def __reduce__(self):
        return (_Required, ())


REQUIRED: Any = _Required()


def _strip_quotes(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _format_number(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e16 else repr(value)


@dataclasses.dataclass(frozen=True)
class KeySpec:
    """Type, default, bounds and meaning of one key of a config section.

    Args:
        name: the key, lower case (e.g. `"lr"`).
        kind: one of `"int"`, `"float"`, `"bool"`, `"str"`, `"choice"`, `"path"` or a list of them: `"int_list"`,
            `"float_list"`, `"str_list"`, `"choice_list"`, `"path_list"` (comma-separated, parentheses allowed).
        default: the value used when neither the file nor the command line gives one (already typed; lists as
            tuples), or `REQUIRED`.
        meaning: one line saying what the key does (shown in the Markdown schema and in error messages).
        choices: the valid values of a `choice` or `choice_list` key (matched case-insensitively).
        minimum: the smallest valid number (for lists: of every entry), or `None`.
        maximum: the largest valid number, or `None`.
        exclusive_minimum: `True` if `minimum` itself is not valid.
        exclusive_maximum: `True` if `maximum` itself is not valid.
        special_values: numbers valid although outside the bounds, e.g. `(-1,)` meaning "off".
        relative_to: for paths, the folder a relative path is resolved against: `"config_dir"` (the config file's
            folder) or `"model_dir"`.
        default_text: how the default is shown in the Markdown schema when it depends on other settings.
        ignored_reason: for a compatibility-only key (accepted so that NiftyNet configs load, but without effect),
            one line saying why sfg-keras ignores it; empty for a key that is used. The Markdown schema marks such a
            key, and `load_settings` warns (`CompatibilityKeyWarning`) when a config sets it to another value than
            its default.

    Example:

    ```python
    image_size = KeySpec("image_size", "int_list", (200, 200), "Height and width images are resized to.", minimum=1)
    image_size.parse("(128, 128)")  # (128, 128)
    pixdim = KeySpec("pixdim", "float_list", (), "Voxel spacing.", ignored_reason="inputs keep their own spacing")
    pixdim.compatibility_only  # True
    ```
    """

    name: str
    kind: str
    default: Any = REQUIRED
    meaning: str = ""
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    exclusive_maximum: bool = False
    special_values: tuple[float, ...] = ()
    relative_to: str = "config_dir"
    default_text: str | None = None
    ignored_reason: str = ""

    def __post_init__(self):
        if not self.name.isidentifier() or self.name != self.name.lower():
            raise ValueError(f"KeySpec name must be a lower-case identifier. Received: name={self.name!r}")
        if self.kind not in KINDS:
            raise ValueError(f"KeySpec {self.name!r}: kind must be one of {KINDS}. Received: kind={self.kind!r}")
        if self.kind in ("choice", "choice_list") and not self.choices:
            raise ValueError(f"KeySpec {self.name!r}: a {self.kind} key needs `choices`.")
        if self.relative_to not in PATH_BASES:
            raise ValueError(
                f"KeySpec {self.name!r}: relative_to must be one of {PATH_BASES}. Received: {self.relative_to!r}"
            )
        if "\n" in self.meaning:
            raise ValueError(f"KeySpec {self.name!r}: meaning must be one line. Received: {self.meaning!r}")
        if "\n" in self.ignored_reason:
            raise ValueError(
                f"KeySpec {self.name!r}: ignored_reason must be one line. Received: {self.ignored_reason!r}"
            )
        object.__setattr__(self, "choices", tuple(self.choices))
        object.__setattr__(self, "special_values", tuple(self.special_values))

    @property
    def required(self) -> bool:
        """Whether the key has no default."""
        return self.default is REQUIRED

    @property
    def compatibility_only(self) -> bool:
        """Whether the key is accepted for NiftyNet configs only and has no effect (it has an `ignored_reason`)."""
        return bool(self.ignored_reason)

    @property
    def is_list(self) -> bool:
        """Whether the value is a comma-separated list."""
        return self.kind in LIST_KINDS

    @property
    def item_kind(self) -> str:
        """The kind of one entry (the kind itself for scalars)."""
        return self.kind[: -len("_list")] if self.is_list else self.kind

    def bounds_text(self) -> str:
        """The numeric bounds in words, e.g. `"> 0"`, `"in [0, 1)"`, `">= 1 or -1"`, or `""`."""
        low, high = self.minimum, self.maximum
        if low is not None and high is not None:
            text = (
                f"in {'(' if self.exclusive_minimum else '['}{_format_number(low)}, "
                f"{_format_number(high)}{')' if self.exclusive_maximum else ']'}"
            )
        elif low is not None:
            text = f"{'>' if self.exclusive_minimum else '>='} {_format_number(low)}"
        elif high is not None:
            text = f"{'<' if self.exclusive_maximum else '<='} {_format_number(high)}"
        else:
            text = ""
        if text and self.special_values:
            text += " or " + " or ".join(_format_number(value) for value in self.special_values)
        return text

    def type_text(self) -> str:
        """The type in the schema's notation, e.g. `"int >= 0"`, `"list[float]"`, `"choice"`."""
        item = self.item_kind
        if item == "path" and self.relative_to == "model_dir":
            item = "path under model_dir"
        text = f"list[{item}]" if self.is_list else item
        bounds = self.bounds_text()
        return f"{text} {bounds}" if bounds else text

    def expected(self) -> str:
        """What a valid value looks like, in words (used in error messages)."""
        words = {
            "int": "an integer",
            "float": "a number",
            "bool": "True or False (also yes/no/1/0)",
            "str": "a string",
            "choice": "one of: " + ", ".join(repr(choice) for choice in self.choices),
            "path": "a file or folder path",
        }
        plural = {
            "int": "integers",
            "float": "numbers",
            "str": "strings",
            "choice": "values from: " + ", ".join(repr(choice) for choice in self.choices),
            "path": "paths",
        }
        bounds = self.bounds_text()
        if self.is_list:
            text = f"a comma-separated list of {plural[self.item_kind]}"
            return f"{text}, each {bounds}" if bounds else text
        text = words[self.kind]
        return f"{text} {bounds}" if bounds else text

    def parse(self, text: str) -> Any:
        """Converts the text of a value into the typed value.

        Args:
            text: the value as written in the file or on the command line.

        Returns:
            An `int`, `float`, `bool` or `str` for scalar kinds; a tuple of them for list kinds. Paths are returned
            with `~` expanded but not yet resolved against a folder.

        Raises:
            ValueError: the text is not a valid value; the message says what was expected.
        """
        text = text.strip()
        if not self.is_list:
            return self._parse_item(text, self.kind)
        inner = text
        if len(inner) >= 2 and (inner[0], inner[-1]) in (("(", ")"), ("[", "]")):
            inner = inner[1:-1].strip()
        if not inner:
            return ()
        items = [item.strip() for item in inner.split(",")]
        if items and items[-1] == "":
            items = items[:-1]
        if any(item == "" for item in items):
            raise ValueError(f"expected {self.expected()}; found an empty entry")
        return tuple(self._parse_item(item, self.item_kind) for item in items)

    def _parse_item(self, text: str, kind: str) -> Any:
        if kind == "bool":
            word = _strip_quotes(text).lower()
            if word in TRUE_WORDS:
                return True
            if word in FALSE_WORDS:
                return False
            raise ValueError(f"expected {self.expected()}")
        if kind in ("int", "float"):
            return self._check_bounds(self._parse_number(text, kind))
        text = _strip_quotes(text)
        if kind == "choice":
            by_lower = {choice.lower(): choice for choice in self.choices}
            if text.lower() not in by_lower:
                entry = f"; entry {text!r} is not valid" if self.is_list else ""
                raise ValueError(f"expected {self.expected()}{entry}")
            return by_lower[text.lower()]
        if kind == "path":
            return os.path.expanduser(text) if text else ""
        return text

    def _parse_number(self, text: str, kind: str) -> int | float:
        word = _strip_quotes(text)
        entry = f"; entry {word!r} is not {'an integer' if kind == 'int' else 'a number'}" if self.is_list else ""
        try:
            number = float(word)
        except ValueError:
            raise ValueError(f"expected {self.expected()}{entry}") from None
        if not math.isfinite(number):
            raise ValueError(f"expected {self.expected()}{entry}")
        if kind == "float":
            return number
        try:
            return int(word)
        except ValueError:
            if number.is_integer():
                return int(number)
            raise ValueError(f"expected {self.expected()}{entry}") from None

    def _check_bounds(self, number: int | float) -> int | float:
        if number in self.special_values:
            return number
        too_low = self.minimum is not None and (
            number < self.minimum or (self.exclusive_minimum and number == self.minimum)
        )
        too_high = self.maximum is not None and (
            number > self.maximum or (self.exclusive_maximum and number == self.maximum)
        )
        if too_low or too_high:
            entry = f"; entry {_format_number(number)} is out of range" if self.is_list else ""
            raise ValueError(f"expected {self.expected()}{entry}")
        return number

    def format_value(self, value: Any) -> str:
        """Writes a typed value back as config text that `parse` reads again.

        Args:
            value: a value of this key's type.

        Returns:
            The text, e.g. `"0.001"`, `"True"`, `"0.2, 0.6, 0.2"`, `"()"` for an empty list, `'""'` for an empty
            string.
        """
        if value is REQUIRED:
            return "REQUIRED"
        if self.is_list:
            if not value:
                return "()"
            return ", ".join(self._format_item(item) for item in value)
        text = self._format_item(value)
        return '""' if text == "" else text

    @staticmethod
    def _format_item(value: Any) -> str:
        if isinstance(value, bool):
            return str(value)
        if isinstance(value, float):
            return repr(value)
        return str(value)

    def default_display(self) -> str:
        """The default as shown in the Markdown schema."""
        if self.default_text is not None:
            return self.default_text
        if self.required:
            return "required"
        if self.is_list and not self.default:
            return "(empty)"
        return self.format_value(self.default)


def section_schema(specs: Mapping[str, KeySpec] | Iterable[KeySpec], section: str = "") -> dict[str, KeySpec]:
    """Turns a sequence or mapping of `KeySpec`s into the `{key: KeySpec}` mapping a section schema is.

    Args:
        specs: the keys of one section, as `KeySpec`s or as a mapping from key to `KeySpec`.
        section: the section's name, used in error messages.

    Returns:
        An ordered `{key: KeySpec}` dict.

    Raises:
        ValueError: an entry is not a `KeySpec`, a mapping key differs from its `KeySpec.name`, or a key appears
            twice.

    Example:

    ```python
    schema = section_schema([KeySpec("image_size", "int", 200, "Side of the resized images.", minimum=1)])
    ```
    """
    items = list(specs.items()) if isinstance(specs, Mapping) else [(None, spec) for spec in specs]
    schema: dict[str, KeySpec] = {}
    for key, spec in items:
        if not isinstance(spec, KeySpec):
            raise ValueError(f"Section [{section}]: every key must be described by a KeySpec. Received: {spec!r}")
        if key is not None and key != spec.name:
            raise ValueError(f"Section [{section}]: mapping key {key!r} differs from KeySpec name {spec.name!r}")
        if spec.name in schema:
            raise ValueError(f"Section [{section}]: key {spec.name!r} is described twice")
        schema[spec.name] = spec
    return schema


K = KeySpec

SYSTEM_SCHEMA = section_schema(
    [
        K(
            "model_dir",
            "path",
            "model",
            "Folder holding checkpoints, logs, dataset split, normalisation files, outputs and evaluation CSVs.",
            default_text="<config_dir>/model",
        ),
        K("seed", "int", 0, "Seed of the dataset split, weight initialisation and grouping samples.", minimum=0),
        K(
            "dataset_split_file",
            "path",
            "dataset_split.csv",
            "CSV of `subject,Training|Validation|Inference` rows; written on the first run if absent.",
            relative_to="model_dir",
        ),
        K("num_threads", "int", 0, "CPU threads for TensorFlow ops (0 = TensorFlow's default).", minimum=0),
        K(
            "distribute",
            "choice",
            "none",
            "Distribution strategy: none, mirrored (MirroredStrategy over the GPUs of one machine) or multi_worker "
            "(training on several machines with MultiWorkerMirroredStrategy, from the TF_CONFIG environment "
            "variable; the chief writes model_dir).",
            choices=("none", "mirrored", "multi_worker"),
        ),
        K(
            "mixed_precision",
            "choice",
            "none",
            "Keras dtype policy for mixed precision (none = float32).",
            choices=("none", "mixed_float16", "mixed_bfloat16"),
        ),
        K("jit_compile", "bool", False, "Compile the training and prediction steps with XLA."),
        K("cuda_devices", "str", "", "Indices of the GPUs to use, e.g. 0,1 (empty = every visible GPU)."),
    ],
    "SYSTEM",
)

BUILT_IN_NETWORKS = NETWORK_NAMES  # the architectures `sfg_keras.models.ARCHITECTURES` builds

NETWORK_SCHEMA = section_schema(
    [
        K(
            "name",
            "str",
            "sfg_vgg11",
            f"Network: {', '.join(NETWORK_NAMES)}, or a dotted path to a builder callable.",
        ),
        K(
            "width_multiplier",
            "float",
            1.0,
            "Multiplies the number of kernels of every layer.",
            minimum=0,
            exclusive_minimum=True,
        ),
        K(
            "activation_function",
            "choice",
            "prelu",
            "Activation after each convolution and batch norm.",
            choices=("prelu", "relu", "elu", "leakyrelu", "swish"),
        ),
        K("batch_size", "int", 10, "Examples per training step.", minimum=1),
        K(
            "batch_norm",
            "choice",
            "batch",
            "Statistics batch norm uses at inference: the test batch's (paper) or the moving averages.",
            choices=INFERENCE_STATISTICS,
        ),
        K(
            "weight_initializer",
            "choice",
            "he_normal",
            "Kernel initialiser.",
            choices=("he_normal", "glorot_uniform", "he_uniform"),
            ignored_reason="networks are built with their own initialisers, he_normal in the built-in ones",
        ),
        K(
            "normalisation",
            "bool",
            False,
            "Nyul histogram standardisation of intensities, landmarks learned on the training split.",
        ),
        K(
            "histogram_ref_file",
            "path",
            "histogram_ref_file.txt",
            "File holding the learned histogram landmarks.",
            relative_to="model_dir",
        ),
        K(
            "cutoff",
            "float_list",
            (0.01, 0.99),
            "Lower and upper quantiles bounding the histogram landmarks.",
            minimum=0,
            maximum=1,
        ),
        K(
            "norm_type",
            "choice",
            "percentile",
            "Landmarks of histogram standardisation: deciles or quartiles.",
            choices=("percentile", "quartile"),
        ),
        K("whitening", "bool", False, "Zero mean and unit variance per image."),
        K(
            "volume_padding_size",
            "int_list",
            (0, 0),
            "Padding of the images before windows are sampled.",
            minimum=0,
            ignored_reason="images are not padded before sampling; mr_ct pads its patches to [MR_CT] padded_size",
        ),
        K(
            "window_sampling",
            "choice",
            "uniform",
            "How training windows are drawn: resize the image or sample uniformly.",
            choices=("resize", "uniform"),
            ignored_reason="each application draws its own windows: age_gender resizes whole images, mr_ct crops "
            "random patches of 2-D slices",
        ),
    ],
    "NETWORK",
)

TRAINING_SCHEMA = section_schema(
    [
        K(
            "optimiser",
            "choice",
            "adam",
            "Optimiser of the network weights and grouping logits.",
            choices=("adam", "adamw", "sgd", "momentum", "rmsprop"),
        ),
        K("lr", "float", 1e-3, "Learning rate.", minimum=0, exclusive_minimum=True),
        K("max_iter", "int", 1000, "Training step at which training stops.", minimum=0),
        K(
            "starting_iter",
            "int",
            0,
            "Step to start from: 0 = from scratch, N = checkpoint N, -1 = latest checkpoint.",
            minimum=-1,
        ),
        K(
            "archive_branch",
            "str",
            "",
            "With starting_iter = N and checkpoints after N: move them (with their lineage) to "
            "model_dir/branches/<name>/ and train on from N (empty = refuse, naming them).",
        ),
        K("save_every_n", "int", 500, "Steps between checkpoints.", minimum=1),
        K(
            "non_finite",
            "choice",
            "stop",
            "A step whose loss or gradients are NaN/inf is never applied; then stop (naming the step and its files) "
            "or skip the batch and count it.",
            choices=("stop", "skip"),
        ),
        K(
            "validation_every_n",
            "int",
            -1,
            "Steps between validation runs (-1 = no validation).",
            minimum=1,
            special_values=(-1,),
        ),
        K("validation_max_iter", "int", 1, "Batches per validation run.", minimum=1),
        K(
            "tensorboard_every_n",
            "int",
            20,
            "Steps between TensorBoard summaries (-1 = off).",
            minimum=1,
            special_values=(-1,),
        ),
        K("max_checkpoints", "int", 5, "Checkpoints kept on disk.", minimum=1),
        K(
            "exclude_fraction_for_validation",
            "float",
            0.15,
            "Fraction of subjects in the Validation split.",
            minimum=0,
            maximum=1,
            exclusive_maximum=True,
        ),
        K(
            "exclude_fraction_for_inference",
            "float",
            0.15,
            "Fraction of subjects in the Inference (test) split.",
            minimum=0,
            maximum=1,
            exclusive_maximum=True,
        ),
        K(
            "training_fraction",
            "float",
            1.0,
            "Fraction of the Training split used (the small-data experiments).",
            minimum=0,
            maximum=1,
            exclusive_minimum=True,
        ),
        K("rotation_angle", "float_list", (-10.0, 10.0), "Range of random rotations in degrees (empty = none)."),
        K(
            "scaling_percentage",
            "float_list",
            (-10.0, 10.0),
            "Range of random scaling in percent (empty = none).",
            minimum=-100,
            exclusive_minimum=True,
        ),
        K("random_flipping_axes", "int_list", (-1,), "Spatial axes flipped at random (-1 = none).", minimum=-1),
        K(
            "sample_per_volume",
            "int",
            1,
            "Windows drawn per visit of an image.",
            minimum=1,
            ignored_reason="every visit of an image draws one window",
        ),
        K(
            "steps_per_execution",
            "int",
            1,
            "Training steps run per compiled call (Keras `steps_per_execution`).",
            minimum=1,
        ),
    ],
    "TRAINING",
)

INFERENCE_SCHEMA = section_schema(
    [
        K("inference_iter", "int", -1, "Checkpoint step used for inference (-1 = latest).", minimum=-1),
        K("save_seg_dir", "path", "output", "Folder of the inference outputs.", relative_to="model_dir"),
        K("output_postfix", "str", "_niftynet_out", "Suffix of output file names."),
        K("num_samples", "int", 50, "Monte-Carlo samples of the architecture per prediction.", minimum=1),
        K(
            "inference_mode",
            "choice",
            "mc",
            "Monte-Carlo sampled architectures (mc), the deterministic MAP architecture (map), or the deterministic "
            "expected network that training averages over (expected).",
            choices=INFERENCE_MODES,
        ),
        K(
            "dataset_to_infer",
            "choice",
            "",
            "Subjects to predict: empty = the Inference split and every subject not in it; inference = the "
            "Inference split only; validation; training (marked trained_on, never scored); all.",
            choices=("", "all", "training", "validation", "inference"),
        ),
        K(
            "input_dir",
            "path",
            "",
            "Folder of other subjects for inference and evaluation, searched instead of every input section's "
            "path_to_search (same file-name patterns; the split file is not used; empty = the input sections).",
        ),
        K(
            "spatial_window_size",
            "int_list",
            (),
            "Window predicted at once.",
            minimum=1,
            ignored_reason="whole slices and images are predicted at once",
        ),
        K(
            "border",
            "int_list",
            (0, 0),
            "Border cropped from predicted windows.",
            minimum=0,
            ignored_reason="whole slices and images are predicted, nothing is cropped",
        ),
        K("batch_size", "int", 0, "Windows per prediction batch (0 = [NETWORK] batch_size).", minimum=0),
        K(
            "export_seed",
            "int",
            -1,
            "Seed of the exported Monte-Carlo signature: -1 = a fresh random stream per load of the SavedModel; "
            "N = every load replays the same stream.",
            minimum=0,
            special_values=(-1,),
        ),
        K(
            "output_bounds",
            "str_list",
            (),
            "Range of regression outputs in their physical unit, applied by inference and every export: entries "
            "task:low:high (an empty end is open) or task:none (no bound); tasks not listed keep the application's "
            "default.",
            default_text="the application's (mr_ct: every regression task -1024:3071 HU; age_gender: none)",
        ),
    ],
    "INFERENCE",
)

EVALUATION_SCHEMA = section_schema(
    [
        K("evaluations", "str_list", (), "Metrics computed (empty = all that the application supports)."),
        K("save_csv_dir", "path", "evaluation", "Folder of the evaluation CSVs.", relative_to="model_dir"),
    ],
    "EVALUATION",
)

TASK_TYPES = ("regression", "classification", "segmentation")
LOSSES_BY_TASK_TYPE = {
    "regression": ("RMSE", "MAE", "Huber", "L2Loss"),
    "classification": ("CrossEntropy",),
    "segmentation": ("DicePlusXEnt", "Dice", "CrossEntropy"),
}
DEFAULT_LOSS_BY_TASK_TYPE = {"regression": "RMSE", "classification": "CrossEntropy", "segmentation": "DicePlusXEnt"}

MULTITASK_SCHEMA = section_schema(
    [
        K("image", "str", REQUIRED, "Input section holding the images."),
        K("tasks", "str_list", REQUIRED, "Task names (identifiers), e.g. age, gender."),
        K("task_types", "choice_list", REQUIRED, "Type of each task.", choices=TASK_TYPES),
        K(
            "num_classes",
            "int_list",
            REQUIRED,
            "Per task: classes (>= 2) or, for regression, output channels (>= 1).",
            minimum=1,
        ),
        K(
            "loss_types",
            "str_list",
            (),
            "Loss of each task: regression RMSE, MAE, Huber, L2Loss; classification "
            "CrossEntropy; segmentation DicePlusXEnt, Dice, CrossEntropy.",
            default_text="RMSE / CrossEntropy / DicePlusXEnt by task type",
        ),
        K(
            "loss_weights",
            "float_list",
            (),
            "Weight of each task's loss in the objective.",
            minimum=0,
            default_text="1.0 per task",
        ),
        K(
            "labels",
            "str_list",
            REQUIRED,
            "Per task, where its label comes from: an input section, `filename` or `csv:<column>`.",
        ),
        K(
            "loss_border",
            "int",
            0,
            "Border left out of dense losses.",
            minimum=0,
            ignored_reason="dense losses cover the whole window; mr_ct masks its padding out of the losses instead",
        ),
    ],
    "MULTITASK",
)


SFG_SCHEMA = section_schema(
    [
        K(
            "recipe",
            "choice",
            DEFAULT_RECIPE,
            "Training recipe whose values fill every [SFG] key not set in the file or on the command line: "
            "search_commit (the default: search the grouping for 20% of the run, then commit to the MAP network; "
            "chosen by measurement, see BENCHMARKS.md), paper (the supplement's exact setup) or fast (the earlier "
            "practical recipe, no commit).",
            choices=RECIPES,
        ),
        K(
            "grouping",
            "choice",
            "learned",
            "Learned SFG or a baseline: constant_p, constant_mask, hard_sharing, single_task, cross_stitch.",
            choices=GROUPINGS,
        ),
        K(
            "p0",
            "float_list",
            (),
            "Initial grouping probabilities ordered task_1..task_T, shared; sum to 1.",
            minimum=0,
            exclusive_minimum=True,
            default_text="shared 0.6, the rest split evenly over the tasks",
        ),
        K(
            "init",
            "choice",
            "constant",
            "Initial p per kernel: p0 for all, random (Dirichlet), or vertex (blocks in the proportions of p0).",
            choices=INIT_MODES,
        ),
        K("hard", "bool", True, "Straight-through one-hot assignments (False = relaxed samples as soft weights)."),
        K(
            "sampling",
            "choice",
            "per_example",
            "One architecture sample per example or one per batch.",
            choices=SAMPLING_MODES,
        ),
        K(
            "merge",
            "choice",
            "sum",
            "How a task stream is merged with the shared stream: sum, or concat and 1x1 conv.",
            choices=MERGE_MODES,
        ),
        K(
            "grouping_lr_multiplier",
            "float",
            1.0,
            "Step size of the grouping logits relative to the weights' (multiplies the optimiser's step, any "
            "optimiser).",
            minimum=0,
            exclusive_minimum=True,
        ),
        K(
            "grouping_step",
            "choice",
            "raw",
            "Step of the grouping logits: raw (the gradient as it is, the paper) or normalized (each layer's logit "
            "gradient rescaled to unit root-mean-square at every step: p moves at a steady rate in every phase).",
            choices=GROUPING_STEPS,
        ),
        K("tau0", "float", 1.0, "Initial Gumbel-softmax temperature.", minimum=0, exclusive_minimum=True),
        K("tau_decay", "float", 1e-5, "Rate r of the temperature schedule tau0 * exp(-r * step).", minimum=0),
        K(
            "tau_decay_until",
            "float",
            0.0,
            "Fraction of [TRAINING] max_iter at which tau reaches tau_min (replaces tau_decay; 0 = use tau_decay).",
            minimum=0,
            maximum=1,
        ),
        K("tau_min", "float", 0.1, "Lowest temperature of the schedule.", minimum=0, exclusive_minimum=True),
        K(
            "sampling_warmup",
            "float",
            0.0,
            "Fraction of [TRAINING] max_iter over which the training mask ramps from the expected network to full "
            "sampling (0 = sample from the first step, the paper).",
            minimum=0,
            maximum=1,
        ),
        K(
            "commit_at",
            "float",
            0.0,
            "Search, then commit: fraction of [TRAINING] max_iter after which every learned SFG layer is frozen to its "
            "MAP group and the rest of the run trains that network at hard-sharing cost (0 = never, the paper).",
            minimum=0,
            maximum=1,
        ),
        K("lambda1", "float", 1e-6, "Weight of the L2 penalty on the convolution kernels.", minimum=0),
        K("lambda2", "float", 1e-5, "Weight of the entropy bonus on the grouping probabilities.", minimum=0),
        K(
            "lambda2_start",
            "float",
            0.0,
            "Entropy schedule of the search: the entropy weight at the start (held, then decaying exponentially to "
            "lambda2); 0 = lambda2 throughout (the paper).",
            minimum=0,
        ),
        K(
            "lambda2_hold",
            "float",
            0.0,
            "Fraction of [TRAINING] max_iter during which the entropy weight stays at lambda2_start.",
            minimum=0,
            maximum=1,
        ),
        K(
            "lambda2_until",
            "float",
            0.0,
            "Fraction of [TRAINING] max_iter at which the entropy weight has decayed to lambda2 (>= lambda2_hold).",
            minimum=0,
            maximum=1,
        ),
    ],
    "SFG",
)

FIXED_SECTION_SCHEMAS: dict[str, dict[str, KeySpec]] = {
    "SYSTEM": SYSTEM_SCHEMA,
    "NETWORK": NETWORK_SCHEMA,
    "TRAINING": TRAINING_SCHEMA,
    "INFERENCE": INFERENCE_SCHEMA,
    "EVALUATION": EVALUATION_SCHEMA,
    "MULTITASK": MULTITASK_SCHEMA,
    "SFG": SFG_SCHEMA,
}
FIXED_SECTIONS = tuple(FIXED_SECTION_SCHEMAS)

INPUT_SECTION_SCHEMA = section_schema(
    [
        K(
            "path_to_search",
            "path_list",
            (),
            "Folders searched for this input's files (required unless csv_file exists or csv_data_file is given).",
            default_text="required unless csv_file exists",
        ),
        K(
            "filename_contains",
            "str_list",
            (),
            "Strings that must all appear in a file name; removed to form the subject id.",
        ),
        K("filename_not_contains", "str_list", (), "Strings none of which may appear in a file name."),
        K("filename_removefromid", "str", "", "Regular expression removed from the subject id."),
        K(
            "csv_file",
            "path",
            "",
            "File list `subject,path`: read if it exists, otherwise the matches are written to it.",
        ),
        K("csv_data_file", "path", "", "CSV of per-subject values (e.g. labels) instead of image files."),
        K(
            "interp_order",
            "int",
            1,
            "Interpolation order 0, 1, 3 or -1 of the resampling to pixdim.",
            minimum=-1,
            ignored_reason="inputs are never resampled to a voxel spacing",
        ),
        K(
            "spatial_window_size",
            "int_list",
            (),
            "Window sampled from this input (empty = the application's default).",
            minimum=1,
        ),
        K(
            "pixdim",
            "float_list",
            (),
            "Voxel spacing to resample to.",
            minimum=0,
            exclusive_minimum=True,
            ignored_reason="inputs are used at their own voxel spacing",
        ),
        K(
            "axcodes",
            "choice_list",
            (),
            "Orientation to reorient to, e.g. R, A, S.",
            choices=("L", "R", "A", "P", "S", "I"),
            ignored_reason="inputs keep the orientation they are stored in",
        ),
        K(
            "loader",
            "choice",
            "",
            "Image reader: nibabel, tf_image, or empty to choose by file extension.",
            choices=("nibabel", "tf_image", ""),
        ),
    ],
    "input",
)

del K


def _escape_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _markdown_table(title: str, schema: Mapping[str, KeySpec], note: str = "") -> list[str]:
    lines = [f"### {title}", ""]
    if note:
        lines += [note, ""]
    lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
    for spec in schema.values():
        type_text = spec.type_text()
        if spec.choices:
            type_text += ": " + ", ".join(repr(choice) if choice == "" else choice for choice in spec.choices)
        meaning = spec.meaning
        if spec.compatibility_only:
            meaning = f"{meaning.rstrip('.')} (compatibility only: ignored; {spec.ignored_reason})."
        cells = [f"`{spec.name}`", type_text, spec.default_display(), meaning]
        lines.append("| " + " | ".join(_escape_cell(cell) for cell in cells) + " |")
    lines.append("")
    return lines


def dump_schema_markdown(extra_sections: Mapping[str, Mapping[str, KeySpec] | Sequence[KeySpec]] | None = None) -> str:
    """Writes every section of the schema as a Markdown table (key, type, default, meaning).

    Args:
        extra_sections: application sections to document as well, `{SECTION: KeySpecs}`.

    Returns:
        Markdown text: one `### [SECTION]` heading and table per section, then the input-section keys.

    Example:

    ```python
    print(dump_schema_markdown())
    ```
    """
    lines: list[str] = []
    for name, schema in FIXED_SECTION_SCHEMAS.items():
        lines += _markdown_table(f"[{name}]", schema)
    for name, specs in (extra_sections or {}).items():
        lines += _markdown_table(f"[{name.upper()}]", section_schema(specs, name), "Application section.")
    lines += _markdown_table(
        "Input sections",
        INPUT_SECTION_SCHEMA,
        "Any other section (e.g. `[MR]`, `[CT]`, `[LABEL]`, `[IMAGES]`) is an input source with these keys.",
    )
    return "\n".join(lines).rstrip() + "\n"
