"""Atomic file writes: a reader sees the old file or the complete new one, never a partial file.

Each function writes to a hidden temporary file in the target's folder and renames it over the target
(`os.replace`, atomic on POSIX and Windows). A failure (disk full, permission, a crash) removes the temporary file and
raises an `OSError` whose message names the target.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask is process-wide, not safe to toggle while threads write


def _naming(target: Path, error: OSError) -> OSError:
    """`error` with a message naming `target` (an error that already names a file is kept as it is)."""
    message = error.strerror or str(error)
    if str(message).startswith("Cannot write "):
        return error
    return OSError(error.errno, f"Cannot write {target}: {message}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yields a temporary path next to `path`; on success it is renamed to `path`, on failure removed.

    Args:
        path: the file to write.
        suffix: suffix of the temporary file (some writers choose the format by extension, e.g. `.keras`).

    Example:

    ```python
    with atomic_path("model_dir/models/model-10.keras", suffix=".keras") as temporary:
        model.save(temporary)
    ```
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
        os.close(handle)
        os.chmod(name, 0o666 & ~_UMASK)  # the permissions of a plain `open(path, "w")`, not mkstemp's 0600
    except OSError as error:
        raise _naming(target, error) from error
    temporary = Path(name)
    try:
        yield temporary
        os.replace(temporary, target)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise _naming(target, error) from error
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes `text` (UTF-8) to `path` atomically and returns the path.

    Example:

    ```python
    atomic_write_text(model_dir / "notes.txt", "hello")
    ```
    """
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, content: bytes) -> Path:
    """Writes `content` to `path` atomically and returns the path.

    Example:

    ```python
    atomic_write_bytes(model_dir / "weights.bin", b"\x00\x01")
    ```
    """
    with atomic_path(path) as temporary:
        temporary.write_bytes(content)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, value) -> Path:
    """Writes `value` as indented JSON to `path` atomically and returns the path.

    Example:

    ```python
    atomic_write_json(model_dir / "image_statistics.json", {"mean": [0.5]})
    ```
    """
    return atomic_write_text(path, json.dumps(value, indent=2))
