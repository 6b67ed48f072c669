"""`prepare_output_folder` and `check_positive_int`: the output folder and the count arguments of every generator."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def prepare_output_folder(out_dir: str | os.PathLike, overwrite: bool, own_patterns: Sequence[str]) -> Path:
    """Creates `out_dir` or checks that it may be written to.

    Args:
        out_dir: the output folder.
        overwrite: when False, a non-empty `out_dir` is refused. When True, the files a previous run of the same
            generator wrote (those matching `own_patterns`) are deleted first, so that stale files of a larger earlier
            run do not linger; any other file is left alone.
        own_patterns: glob patterns, relative to `out_dir`, of the files the generator writes.

    Returns:
        The folder as a `Path`.

    Raises:
        FileExistsError: if `out_dir` is non-empty and `overwrite` is False.
        NotADirectoryError: if `out_dir` exists and is a file.

    Example:

    ```python
    folder = prepare_output_folder("demo/utkface", overwrite=True, own_patterns=("*.jpg",))  # old *.jpg deleted
    ```
    """
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"Output folder '{folder}' exists and is not a folder.")
    if folder.is_dir() and any(folder.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"Output folder '{folder}' is not empty; refusing to overwrite it. Pass overwrite=True to replace the "
                "generated files, or choose an empty or new folder."
            )
        for pattern in own_patterns:
            for stale in folder.glob(pattern):
                if stale.is_file():
                    stale.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def check_positive_int(value: int, name: str, function: str) -> int:
    """Checks that a count argument of a generator is a positive integer (a `bool` is not one).

    Args:
        value: the argument as received.
        name: the argument's name, for the message.
        function: the generator's name, for the message.

    Returns:
        `value` as a Python `int`.

    Raises:
        ValueError: `value` is not an integer >= 1; the message names the function, the argument and the value.

    Example:

    ```python
    check_positive_int(np.int64(4), "num_subjects", "make_pelvis_cohort")  # 4
    check_positive_int(0, "num_subjects", "make_pelvis_cohort")  # ValueError: ... `num_subjects` must be a positive ...
    ```
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{function}: `{name}` must be a positive integer, received {value!r}.")
    return int(value)
