"""`installed_package_folder`: find data files shipped inside an installed wheel without importing the package."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def installed_package_folder(package: str, needed_for: str) -> Path:
    """The folder of the installed `package` (found with `importlib.util.find_spec`, never imported).

    Args:
        package: the distribution's import name, e.g. `"nilearn"`.
        needed_for: what needs it, for the message, e.g. "The head phantom needs the MNI152 tissue maps".

    Raises:
        ImportError: `package` is not installed; the message says what needs it and how to install it.

    Example:

    ```python
    folder = installed_package_folder("nilearn", "The head phantom needs the MNI152 tissue maps") / "datasets"
    ```
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"{needed_for} shipped inside the `{package}` package, which is not installed. Install it with "
            f"`pip install {package}` (its files are read from disk; it is never imported)."
        )
    return Path(list(spec.submodule_search_locations)[0])
