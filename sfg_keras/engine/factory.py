"""The application factory: `-a` names (built-in or dotted paths) to application classes, with did-you-mean.

The repository's `applications/` folder is installed as the package `sfg_keras_applications`, a name no other
distribution claims. A dotted path written with the folder's name (`applications.mr_ct.MRCTApplication`) is read as
`sfg_keras_applications.mr_ct.MRCTApplication`.
"""

from __future__ import annotations

import configparser
import difflib
import importlib

BUILT_IN_APPLICATIONS = {
    "age_gender": "sfg_keras_applications.age_gender.AgeGenderApplication",
    "mr_ct": "sfg_keras_applications.mr_ct.MRCTApplication",
}

#: Application sections that identify a built-in application when `-a` is not given.
APPLICATION_SECTIONS = {"AGE_GENDER": "age_gender", "MR_CT": "mr_ct"}

_FOLDER_PREFIX = "applications."


def _import_module(module_name: str, name: str):
    from sfg_keras.engine.application import IncompleteApplicationError

    candidates = [module_name]
    if module_name == "applications" or module_name.startswith(_FOLDER_PREFIX):
        candidates.insert(0, "sfg_keras_applications" + module_name[len("applications"):])
    error = None
    for candidate in candidates:
        try:
            return importlib.import_module(candidate)
        except ModuleNotFoundError as missing:
            if missing.name and not candidate.startswith(missing.name):
                raise ValueError(f"Application {name!r}: importing {candidate!r} failed ({missing}).") from missing
            error = missing
        except ImportError as failed:
            raise ValueError(f"Application {name!r}: cannot import {candidate!r} ({failed}).") from failed
        except IncompleteApplicationError as incomplete:
            raise ValueError(f"Application {name!r}: {incomplete}") from incomplete
    raise ValueError(f"Application {name!r}: cannot import {module_name!r} ({error}).") from error


def load_application(name: str):
    """The application class for a built-in name (`age_gender`, `mr_ct`) or a dotted path `package.module.Class`.

    Raises:
        ValueError: the name is unknown (with the closest built-in name), the module cannot be imported, or the
            object is not a `BaseApplication` subclass.

    Example:

    ```python
    load_application("mr_ct")  # <class 'sfg_keras_applications.mr_ct.MRCTApplication'>
    ```
    """
    from sfg_keras.engine.application import BaseApplication

    path = BUILT_IN_APPLICATIONS.get(name, name)
    module_name, _, class_name = path.rpartition(".")
    if not module_name:
        close = difflib.get_close_matches(name, list(BUILT_IN_APPLICATIONS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"Unknown application {name!r}: expected one of {sorted(BUILT_IN_APPLICATIONS)} or a dotted path "
            f"'package.module.ApplicationClass'.{hint}"
        )
    module = _import_module(module_name, name)
    cls = getattr(module, class_name, None)
    if cls is None:
        close = difflib.get_close_matches(class_name, [n for n in dir(module) if not n.startswith("_")], n=1)
        hint = f" Did you mean {module_name}.{close[0]}?" if close else ""
        raise ValueError(f"Application {name!r}: module {module_name!r} has no attribute {class_name!r}.{hint}")
    if not (isinstance(cls, type) and issubclass(cls, BaseApplication)):
        raise ValueError(
            f"Application {name!r}: {path!r} is not a subclass of sfg_keras.engine.BaseApplication."
        )
    return cls


def detect_application(config_path: str) -> str:
    """The built-in application whose section (`[AGE_GENDER]`, `[MR_CT]`) the config has; "" if none."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    try:
        parser.read(config_path, encoding="utf-8")
    except configparser.Error:
        return ""
    for section in parser.sections():
        name = APPLICATION_SECTIONS.get(section.upper())
        if name:
            return name
    return ""
