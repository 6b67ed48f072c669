"""NiftyNet-compatibility keys: accepted so that NiftyNet configs load, ignored by sfg-keras, and said so.

A key whose `KeySpec` has an `ignored_reason` (e.g. `[NETWORK] window_sampling`, `pixdim` of an input section) is
parsed and validated like any other, but nothing reads it. When a config file or the command line sets such a key to
a value other than its default, `load_settings` emits one `CompatibilityKeyWarning` per section and key, naming where
the value came from, the section, the key, the value and why it is ignored. The default value, or no value, is silent.

Example:

```python
import warnings

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    load_settings("configs/niftynet_port.ini")
[str(w.message) for w in caught if w.category is CompatibilityKeyWarning]
# ["configs/niftynet_port.ini: [MR] pixdim = '1, 1, 1' has no effect: inputs are used at their own voxel spacing. ..."]
```
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

from sfg_keras.config.parser import ORIGIN_DEFAULT
from sfg_keras.config.validation import SectionValues


class CompatibilityKeyWarning(UserWarning):
    """A config sets a key that sfg-keras accepts for NiftyNet configs but ignores.

    Example:

    ```python
    warnings.simplefilter("error", CompatibilityKeyWarning)  # make an ignored key an error
    ```
    """


def ignored_keys(section: SectionValues) -> list[str]:
    """The compatibility-only keys of a section that were given a value other than their default.

    Args:
        section: the typed values of one section (file and command-line values already parsed).

    Returns:
        The keys, in schema order.

    Example:

    ```python
    ignored_keys(typed["NETWORK"])  # ["window_sampling"] for a config with `window_sampling = resize`
    ```
    """
    return [
        key
        for key, spec in section.schema.items()
        if spec.compatibility_only
        and section.origins.get(key, ORIGIN_DEFAULT) != ORIGIN_DEFAULT
        and section.values.get(key) != spec.default
    ]


def warn_ignored_keys(sections: Iterable[SectionValues], stacklevel: int = 2) -> list[str]:
    """Emits one `CompatibilityKeyWarning` per compatibility-only key set to another value than its default.

    Args:
        sections: the typed sections of a config.
        stacklevel: passed to `warnings.warn` (2: the caller of this function).

    Returns:
        The warning messages, in section and schema order: `WHERE: [SECTION] key = 'value' has no effect: reason.
        ...`.

    Example:

    ```python
    warn_ignored_keys(typed.values(), stacklevel=3)  # from load_settings: the warning points at its caller
    ```
    """
    messages = []
    for section in sections:
        for key in ignored_keys(section):
            reason = section.schema[key].ignored_reason
            messages.append(
                f"{section.where(key)}: [{section.name}] {key} = {section.shown(key)} has no effect: {reason}. "
                "The key is accepted so that NiftyNet configs load; remove it to silence this warning."
            )
    for message in messages:
        warnings.warn(message, CompatibilityKeyWarning, stacklevel=stacklevel + 1)
    return messages
