"""`load_settings`: config file + command-line overrides -> typed, validated `Settings`.

Resolution order for every key: command line, then the file, then the schema default. Relative paths are resolved
against the config file's folder, except the files that live in `model_dir` (`dataset_split_file`,
`histogram_ref_file`, `save_seg_dir`, `save_csv_dir`), which are resolved against `model_dir`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from sfg_keras.config.compatibility import warn_ignored_keys
from sfg_keras.config.errors import KEY_ALIASES, ConfigError, closest_match
from sfg_keras.config.parser import (
    ORIGIN_COMMAND_LINE,
    ORIGIN_DEFAULT,
    SECTION_NAME_PATTERN,
    Override,
    RawValue,
    parse_overrides,
    read_config_file,
)
from sfg_keras.config.schema import (
    FIXED_SECTION_SCHEMAS,
    INPUT_SECTION_SCHEMA,
    REQUIRED,
    KeySpec,
    section_schema,
)
from sfg_keras.config.settings import (
    ACTIONS,
    SECTION_CLASSES,
    InputSectionSettings,
    SectionSettings,
    Settings,
)
from sfg_keras.config.validation import SectionValues, validate_sections

INPUT_LABEL = "input sections"


class _Layout:
    """The sections a config may have: fixed, application and (found in the file) input sections."""

    def __init__(self, app_schemas: dict[str, dict[str, KeySpec]]):
        self.app_schemas = app_schemas
        self.known = {**FIXED_SECTION_SCHEMAS, **app_schemas}
        self.inputs: dict[str, dict[str, KeySpec]] = {}

    def schema_of(self, name: str) -> dict[str, KeySpec]:
        return self.known.get(name) or self.inputs[name]

    def role_of(self, name: str) -> str:
        if name in FIXED_SECTION_SCHEMAS:
            return "fixed"
        return "app" if name in self.app_schemas else "input"

    def known_list(self) -> str:
        return ", ".join(f"[{name}]" for name in self.known)

    def key_hint(self, key: str, own_section: str | None) -> str:
        """`"; did you mean ...? "` text for an unknown key, searching the own section first, then the others."""
        hint = self._key_hint(key, own_section)
        return f"{hint}{'' if hint.endswith('?') else '.'} "

    def _key_hint(self, key: str, own_section: str | None) -> str:
        own = self.schema_of(own_section) if own_section is not None else {}
        others = [(f"[{name}]", schema) for name, schema in self.known.items() if name != own_section]
        if own_section is None or self.role_of(own_section) != "input":
            others.append((INPUT_LABEL, INPUT_SECTION_SCHEMA))

        def owner_of(candidate: str) -> str | None:
            return next((label for label, schema in others if candidate in schema), None)

        owner = owner_of(key)
        if owner is not None:
            return f"; '{key}' is a key of {owner}"
        alias = KEY_ALIASES.get(key)
        if alias is not None:
            if alias in own:
                return f"; did you mean '{alias}'?"
            if owner_of(alias) is not None:
                return f"; did you mean '{alias}' in {owner_of(alias)}?"
        match = closest_match(key, own)
        if match is not None:
            return f"; did you mean '{match}'?"
        match = closest_match(key, [candidate for _, schema in others for candidate in schema])
        if match is not None:
            return f"; did you mean '{match}' in {owner_of(match)}?"
        return ""


def _app_schemas(extra_sections: Mapping[str, Any] | None) -> dict[str, dict[str, KeySpec]]:
    schemas = {}
    reserved = {name for name in dir(SectionSettings) if not name.startswith("__")}
    for name, specs in (extra_sections or {}).items():
        upper = str(name).strip().upper()
        if not SECTION_NAME_PATTERN.match(upper):
            raise ValueError(f"extra_sections: section name {name!r} must use letters, digits, '_' or '-' only.")
        if upper in FIXED_SECTION_SCHEMAS or upper in schemas:
            raise ValueError(f"extra_sections: section [{upper}] is already defined. Received: {name!r}")
        schema = section_schema(specs, upper)
        clashes = sorted(reserved & set(schema))
        if clashes:
            raise ValueError(
                f"extra_sections: keys {clashes} of [{upper}] clash with SectionSettings attributes; rename them."
            )
        schemas[upper] = schema
    return schemas


def _classify_sections(
    raw: dict[str, dict[str, RawValue]], layout: _Layout, config_path: str
) -> dict[str, dict[str, RawValue]]:
    """Maps each file section to its canonical name; fills `layout.inputs`; rejects unknown sections."""
    sections: dict[str, dict[str, RawValue]] = {}
    for name, values in raw.items():
        upper = name.upper()
        if upper in layout.known:
            sections[upper] = dict(values)
        elif any(key in INPUT_SECTION_SCHEMA for key in values):
            layout.inputs[name] = INPUT_SECTION_SCHEMA
            sections[name] = dict(values)
        else:
            suggestion = closest_match(upper, layout.known)
            if suggestion is None and values:
                counts = {section: sum(key in schema for key in values) for section, schema in layout.known.items()}
                best = max(counts, key=counts.get)
                suggestion = best if counts[best] else None
            hint = f" Did you mean [{suggestion}]?" if suggestion else ""
            raise ConfigError(
                f"{config_path}: [{name}] is not a known section and has none of the input-section keys "
                f"({', '.join(INPUT_SECTION_SCHEMA)}).{hint} Known sections: {layout.known_list()}; any other "
                "section is an input source."
            )
    for name in layout.known:
        sections.setdefault(name, {})
    return sections


def _check_keys(sections: dict[str, dict[str, RawValue]], layout: _Layout) -> None:
    for name, values in sections.items():
        schema = layout.schema_of(name)
        for key, raw in values.items():
            if key not in schema:
                raise ConfigError(
                    f"{raw.where}: [{name}] {key} = {raw.text!r}: unknown key{layout.key_hint(key, name)}"
                    f"Valid keys of [{name}]: {', '.join(schema)}"
                )


def _override_section(override: Override, layout: _Layout) -> str:
    if override.section is not None:
        upper = override.section.upper()
        if upper in layout.known:
            return upper
        inputs = {name.upper(): name for name in layout.inputs}
        if upper in inputs:
            return inputs[upper]
        suggestion = closest_match(upper, [*layout.known, *inputs])
        hint = f" Did you mean [{inputs.get(suggestion, suggestion)}]?" if suggestion else ""
        raise ConfigError(
            f"{override.where}: unknown section [{override.section}].{hint} Known sections: {layout.known_list()}; "
            f"input sections of the file: {', '.join(f'[{name}]' for name in layout.inputs) or 'none'}"
        )
    owners = [name for name, schema in layout.known.items() if override.key in schema]
    if len(owners) == 1:
        return owners[0]
    if len(owners) > 1:
        forms = " or ".join(f"--{owner}.{override.key}={override.text}" for owner in owners)
        raise ConfigError(
            f"{override.where}: key '{override.key}' exists in {', '.join(f'[{o}]' for o in owners)}; "
            f"expected the section to be named: {forms}"
        )
    if override.key in INPUT_SECTION_SCHEMA:
        examples = ", ".join(f"--{name}.{override.key}=..." for name in layout.inputs) or f"--MR.{override.key}=..."
        raise ConfigError(
            f"{override.where}: '{override.key}' is an input-section key; expected the section to be named, e.g. "
            f"{examples}"
        )
    raise ConfigError(
        f"{override.where}: unknown key '{override.key}'{layout.key_hint(override.key, None)}Expected a key of "
        f"{layout.known_list()}, or --SECTION.key=value for an input section"
    )


def _apply_overrides(
    overrides: Sequence[str] | Mapping[str, Any] | None, sections: dict[str, dict[str, RawValue]], layout: _Layout
) -> None:
    given: dict[tuple[str, str], Override] = {}
    for override in parse_overrides(overrides):
        name = _override_section(override, layout)
        schema = layout.schema_of(name)
        if override.key not in schema:
            raise ConfigError(
                f"{override.where}: [{name}] {override.key} = {override.text!r}: unknown key"
                f"{layout.key_hint(override.key, name)}Valid keys of [{name}]: {', '.join(schema)}"
            )
        previous = given.get((name, override.key))
        if previous is not None:
            raise ConfigError(
                f"{override.where}: [{name}] {override.key} is given twice on the command line (also "
                f"{previous.token!r}). Expected each key once."
            )
        given[(name, override.key)] = override
        sections[name][override.key] = RawValue(text=override.text, origin=ORIGIN_COMMAND_LINE, where=override.where)


def _typed_section(
    name: str, role: str, schema: dict[str, KeySpec], raw: dict[str, RawValue], config_path: str, in_file: bool
) -> SectionValues:
    section = SectionValues(name=name, role=role, schema=schema, config_path=config_path)
    missing = [key for key, spec in schema.items() if spec.required and key not in raw]
    if missing and not raw and not in_file:
        raise ConfigError(f"{config_path}: section [{name}] is missing; expected it with the keys {', '.join(missing)}")
    for key, spec in schema.items():
        if key in raw:
            value_raw = raw[key]
            try:
                section.values[key] = spec.parse(value_raw.text)
            except ValueError as error:
                raise ConfigError(f"{value_raw.where}: [{name}] {key} = {value_raw.text!r}: {error}") from None
            section.origins[key] = value_raw.origin
            section.wheres[key] = value_raw.where
            section.texts[key] = value_raw.text
        elif spec.required:
            raise ConfigError(f"{config_path}: [{name}] {key} is missing: expected {spec.expected()} ({spec.meaning})")
        else:
            section.values[key] = spec.default
            section.origins[key] = ORIGIN_DEFAULT
    return section


def _resolve_path(value: str, base: str) -> str:
    return os.path.normpath(os.path.join(base, value)) if value else value


def _resolve_paths(section: SectionValues, config_dir: str, model_dir: str) -> None:
    for key, spec in section.schema.items():
        if spec.item_kind != "path":
            continue
        base = model_dir if spec.relative_to == "model_dir" else config_dir
        value = section.values[key]
        if spec.is_list:
            section.values[key] = tuple(_resolve_path(item, base) for item in value)
            continue
        if not value and spec.default not in ("", REQUIRED):
            raise section.error(key, f"expected a non-empty path (default: {spec.default_display()})")
        section.values[key] = _resolve_path(value, base)


def load_settings(
    config_path: str | os.PathLike,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    action: str = "train",
    extra_sections: Mapping[str, Mapping[str, KeySpec] | Sequence[KeySpec]] | None = None,
) -> Settings:
    """Reads a NiftyNet-style `.ini` config, applies command-line overrides and returns typed, validated settings.

    Args:
        config_path: the `.ini` file. `~` is expanded; a relative path is relative to the working directory.
        overrides: command-line overrides that win over the file: tokens such as `["--lr=0.01",
            "--SFG.p0=0.2,0.2,0.6", "--MR.path_to_search", "data/mr"]` or a mapping `{"lr": 0.01, "SFG.p0": ...}`.
            A bare key must belong to exactly one fixed or application section; input-section keys need the
            section (`--MR.filename_contains=_mr`).
        action: `"train"`, `"inference"`, `"evaluation"`, `"export"` or `"analyse"`.
        extra_sections: application sections, `{SECTION: KeySpecs}`, e.g. `{"AGE_GENDER": [KeySpec(...)]}`.
            They are read into `settings.app_sections`.

    Returns:
        The `Settings`.

    Raises:
        ConfigError: the file is missing or unreadable, or a section, key, value or override is invalid. The
            message names the file (or "command line"), the section, the key, the value and what was expected.
        ValueError: `extra_sections` is malformed.

    Warns:
        CompatibilityKeyWarning: once per NiftyNet-only key (ignored, e.g. `pixdim`) set to a non-default value.

    Example:

    ```python
    settings = load_settings("configs/age_gender.ini", ["--max_iter=100"], action="train")
    settings.training.max_iter  # 100
    settings.training.origin("max_iter")  # "command line"
    [task.name for task in settings.task_specs()]  # ["age", "gender"]
    ```
    """
    if action not in ACTIONS:
        raise ConfigError(f"Unknown action {action!r}; expected one of: {', '.join(ACTIONS)}")
    path = os.path.abspath(os.path.expanduser(os.fspath(config_path)))
    config_dir = os.path.dirname(path)
    layout = _Layout(_app_schemas(extra_sections))

    raw = read_config_file(path)
    in_file = {name.upper() for name in raw}
    sections = _classify_sections(raw, layout, path)
    _check_keys(sections, layout)
    _apply_overrides(overrides, sections, layout)

    typed = {
        name: _typed_section(
            name, layout.role_of(name), layout.schema_of(name), values, path, in_file=name.upper() in in_file
        )
        for name, values in sections.items()
    }
    system = typed["SYSTEM"]
    system.values["model_dir"] = _resolve_path(system.values["model_dir"], config_dir) or ""
    if not system.values["model_dir"]:
        raise system.error("model_dir", "expected a non-empty folder path (default: <config_dir>/model)")
    model_dir = system.values["model_dir"]
    for section in typed.values():
        _resolve_paths(section, config_dir, model_dir)

    fixed = {name: typed[name] for name in FIXED_SECTION_SCHEMAS}
    inputs = {name: typed[name] for name in layout.inputs}
    validate_sections(fixed, inputs)
    warn_ignored_keys(typed.values(), stacklevel=2)

    def build(section: SectionValues, cls: type[SectionSettings]) -> Any:
        return cls(section.name, section.values, section.origins, section.schema)

    return Settings(
        config_path=path,
        config_dir=config_dir,
        action=action,
        **{name.lower(): build(fixed[name], SECTION_CLASSES[name]) for name in FIXED_SECTION_SCHEMAS},
        inputs={name: build(section, InputSectionSettings) for name, section in inputs.items()},
        app_sections={name: build(typed[name], SectionSettings) for name in layout.app_schemas},
    )
