"""Reading the text of a config: the `.ini` file's sections and keys, and the command-line overrides.

This module only splits text; `loader.load_settings` checks the names against the schema and converts the values.
Every value keeps where it came from (`RawValue.origin` and `RawValue.where`) so that error messages and the settings
dump can name the file or the command-line token.
"""

from __future__ import annotations

import configparser
import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from sfg_keras.config.errors import ConfigError

ORIGIN_FILE = "file"
ORIGIN_COMMAND_LINE = "command line"
ORIGIN_DEFAULT = "default"
ORIGIN_RECIPE = "recipe"

SECTION_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_\-]+$")
# configparser copies the keys of its "default section" into every section; a name nobody can write turns that off.
_NO_DEFAULT_SECTION = "\x00no default section\x00"


@dataclasses.dataclass(frozen=True)
class RawValue:
    """The text of one value and where it came from.

    Attributes:
        text: the value as written.
        origin: `"file"` or `"command line"`.
        where: what an error message names: the config file's path, or `"command line (--lr=0.1)"`.

    Example:

    ```python
    RawValue(text="1e-3", origin="file", where="/data/configs/age_gender.ini")
    ```
    """

    text: str
    origin: str
    where: str


@dataclasses.dataclass(frozen=True)
class Override:
    """One command-line override `--[SECTION.]key=value`.

    Attributes:
        section: the section named in the override, or `None` for a bare key.
        key: the key, lower case.
        text: the value's text.
        token: the override as the user wrote it, for error messages.

    Example:

    ```python
    Override(section="SFG", key="tau0", text="2", token="--SFG.tau0=2").where  # "command line (--SFG.tau0=2)"
    ```
    """

    section: str | None
    key: str
    text: str
    token: str

    @property
    def where(self) -> str:
        """The override as named in error messages."""
        return f"{ORIGIN_COMMAND_LINE} ({self.token})"


def read_config_file(config_path: str) -> dict[str, dict[str, RawValue]]:
    """Reads the sections and keys of an `.ini` file, without interpreting them.

    Section names keep the spelling of the file (surrounding spaces removed); keys are lower case. Comments start
    with `#` or `;` (inline comments need a space before them). `%` has no special meaning.

    Args:
        config_path: path of the config file.

    Returns:
        `{section: {key: RawValue}}` in file order.

    Raises:
        ConfigError: the file does not exist, cannot be read or parsed, a section or key appears twice (names
            compared case-insensitively), or a section name has characters other than letters, digits, `_`, `-`.

    Example:

    ```python
    sections = read_config_file("configs/age_gender.ini")
    sections["TRAINING"]["lr"].text  # "1e-3"
    ```
    """
    if not os.path.exists(config_path):
        raise ConfigError(f"Config file not found: '{config_path}'. Expected the path of an existing .ini file.")
    if not os.path.isfile(config_path):
        raise ConfigError(f"Config path '{config_path}' is not a file. Expected the path of an .ini file.")
    parser = configparser.ConfigParser(
        interpolation=None,
        strict=True,
        inline_comment_prefixes=("#", ";"),
        default_section=_NO_DEFAULT_SECTION,
        empty_lines_in_values=False,
    )
    try:
        with open(config_path, encoding="utf-8") as handle:
            parser.read_file(handle, source=config_path)
    except configparser.DuplicateSectionError as error:
        raise ConfigError(
            f"{config_path}: section [{error.section}] appears twice (line {error.lineno}). Expected each section once."
        ) from None
    except configparser.DuplicateOptionError as error:
        raise ConfigError(
            f"{config_path}: [{error.section}] key '{error.option}' is given twice (line {error.lineno}; keys are "
            "case-insensitive). Expected each key once per section."
        ) from None
    except configparser.MissingSectionHeaderError as error:
        raise ConfigError(
            f"{config_path}: line {error.lineno} {error.line.strip()!r} comes before any [SECTION] header. Expected "
            "the file to start with a section such as [SYSTEM]."
        ) from None
    except configparser.ParsingError as error:
        lines = "; ".join(f"line {lineno}: {line.strip()!r}" for lineno, line in error.errors)
        raise ConfigError(
            f"{config_path}: cannot parse {lines}. Expected 'key = value' lines under [SECTION] headers."
        ) from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{config_path}: not a UTF-8 text file ({error}). Expected an .ini text file.") from None
    except OSError as error:
        raise ConfigError(f"Cannot read config file '{config_path}': {error}") from None

    sections: dict[str, dict[str, RawValue]] = {}
    seen: dict[str, str] = {}
    for section in parser.sections():
        name = section.strip()
        if not SECTION_NAME_PATTERN.match(name):
            raise ConfigError(
                f"{config_path}: section name [{section}] is not valid. Expected letters, digits, '_' or '-' only."
            )
        if name.upper() in seen:
            raise ConfigError(
                f"{config_path}: sections [{seen[name.upper()]}] and [{section}] are the same section (names are "
                "case-insensitive). Expected each section once."
            )
        seen[name.upper()] = section
        sections[name] = {
            key: RawValue(text=value, origin=ORIGIN_FILE, where=config_path)
            for key, value in parser.items(section, raw=True)
        }
    return sections


def _value_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(_value_text(item) for item in value)
    return str(value)


def _split_name(name: str, token: str) -> tuple[str | None, str]:
    name = name.strip()
    if name.startswith("--"):
        name = name[2:]
    section, _, key = name.rpartition(".")
    if not key or (_ and not section):
        raise ConfigError(
            f"{ORIGIN_COMMAND_LINE}: cannot read override {token!r}. Expected --key=value or --SECTION.key=value."
        )
    return (section or None), key.lower()


def parse_overrides(overrides: Sequence[str] | Mapping[str, Any] | None) -> list[Override]:
    """Splits command-line overrides into `Override`s.

    Accepted forms: a list of tokens such as `["--lr=0.01", "--TRAINING.max_iter", "20", "seed=3"]` (`--key=value`,
    `--key value`, `key=value`, each with an optional `SECTION.` before the key), or a mapping
    `{"lr": 0.01, "SFG.p0": (0.2, 0.2, 0.6)}` whose values may be typed (lists become comma-separated text).

    Args:
        overrides: the overrides, or `None`.

    Returns:
        The overrides in the order given.

    Raises:
        ConfigError: a token is not of these forms or has no value.

    Example:

    ```python
    parse_overrides(["--lr=0.01", "--SFG.tau0", "2"])
    # [Override(None, "lr", "0.01", "--lr=0.01"), Override("SFG", "tau0", "2", "--SFG.tau0 2")]
    ```
    """
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        result = []
        for name, value in overrides.items():
            text = _value_text(value)
            token = f"{name}={text}"
            section, key = _split_name(str(name), token)
            result.append(Override(section=section, key=key, text=text, token=token))
        return result
    if isinstance(overrides, str):
        overrides = [overrides]
    tokens = [str(token) for token in overrides]
    result = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        if "=" in token and (token.startswith("--") or not token.startswith("-")):
            name, _, text = token.partition("=")
        elif token.startswith("--") and len(token) > 2:
            if index >= len(tokens) or tokens[index].startswith("--"):
                raise ConfigError(
                    f"{ORIGIN_COMMAND_LINE}: override {token!r} has no value. Expected {token}=VALUE or {token} VALUE."
                )
            name, text = token, tokens[index]
            token = f"{token} {text}"
            index += 1
        else:
            raise ConfigError(
                f"{ORIGIN_COMMAND_LINE}: cannot read override {token!r}. Expected --key=value or --SECTION.key=value."
            )
        section, key = _split_name(name, token)
        result.append(Override(section=section, key=key, text=text, token=token))
    return result
