"""Atomic, durable file writes: a reader sees the old file or the complete new one, never a partial file.

Each function writes to a hidden temporary file in the target's folder, flushes it to disk (`fsync`), renames it over
the target (`os.replace`, atomic on POSIX and Windows) and flushes the folder, so that after a power loss the target
is the old or the new file, never an empty or truncated one. A failure (disk full, permission) removes the temporary
file and raises an `OSError` whose message names the target.

A process killed while writing cannot remove its temporary file. Temporary names say who wrote them
(`.<target>.<host>-<pid>.<random>.tmp<suffix>`), so `remove_stale_temporary_files` removes the leftovers of writers
that no longer run (and those of older versions, which carry no writer) and never a file another live run is writing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask is process-wide, not safe to toggle while threads write
#: Who writes a temporary file: a short tag of this host and the process id (see `temporary_prefix`).
_HOST_TAG = hashlib.sha1(socket.gethostname().encode("utf-8")).hexdigest()[:8]
#: `.<target>.<host tag>-<pid>.<random>.tmp<suffix>`: a temporary file (or folder) of `atomic_path`.
_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)\.[^.]+\.tmp(?P<suffix>[^/]*)$")
#: `.<target>.<random>.tmp<suffix>`: a temporary file of sfg-keras versions that did not name the writer.
_LEGACY_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.[A-Za-z0-9_]{8}\.tmp(?P<suffix>[^/]*)$")


def temporary_prefix(target: str | os.PathLike) -> str:
    """The prefix of this process's temporary files for `target`: `.<name>.<host tag>-<pid>.` (give it to
    `tempfile.mkstemp` / `mkdtemp` with a suffix starting with `.tmp`).

    Example:

    ```python
    folder = tempfile.mkdtemp(prefix=temporary_prefix(path), suffix=".tmp", dir=path.parent)
    ```
    """
    return f".{Path(target).name}.{_HOST_TAG}-{os.getpid()}."


def fsync_path(path: str | os.PathLike) -> None:
    """Flushes a file, or a folder's entries, to disk (`os.fsync`); a folder that cannot be opened for it (some
    platforms and network file systems) is skipped.

    Example:

    ```python
    fsync_path("model_dir/models")  # the rename of a checkpoint into this folder survives a power loss
    ```
    """
    path = os.fspath(path)
    folder = os.path.isdir(path)
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if folder else 0)
    try:
        handle = os.open(path, flags)
    except OSError:
        if folder:
            return
        raise
    try:
        os.fsync(handle)
    except OSError:
        if not folder:
            raise
    finally:
        os.close(handle)


def _fsync_tree(path: Path) -> None:
    """fsyncs a written file, or every file and folder of a written folder (e.g. a SavedModel)."""
    if path.is_dir():
        for root, _, names in os.walk(path):
            for name in names:
                fsync_path(os.path.join(root, name))
            fsync_path(root)
    else:
        fsync_path(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale_temporary(path: str | os.PathLike) -> bool:
    """Whether `path` is a temporary file of `atomic_path` whose writer is gone: written by a process of this host
    that no longer runs, or by an older sfg-keras (whose names do not say who wrote them).

    Example:

    ```python
    is_stale_temporary("models/.model-4.keras.1a2b3c4d-999999.x8y7.tmp.keras")  # True when pid 999999 is gone
    ```
    """
    name = Path(path).name
    match = _TEMPORARY.match(name)
    if match:
        return match.group("host") == _HOST_TAG and not _alive(int(match.group("pid")))
    return bool(_LEGACY_TEMPORARY.match(name))


def remove_stale_temporary_files(folders: Iterable[str | os.PathLike]) -> list[Path]:
    """Removes, under each folder (recursively), the temporary files and folders that killed writers left behind
    (`is_stale_temporary`); returns what was removed. Missing folders are skipped; files of live writers and of
    other hosts are kept.

    Example:

    ```python
    for path in remove_stale_temporary_files([model_dir]):
        print(f"removed {path}, left by a killed run")
    ```
    """
    removed: list[Path] = []
    seen: set[Path] = set()
    for folder in folders:
        root = Path(folder)
        if not root.is_dir() or root.resolve() in seen:
            continue
        seen.add(root.resolve())
        for current, names, files in os.walk(root):
            for name in [*names, *files]:
                path = Path(current) / name
                if ".tmp" not in name or not is_stale_temporary(path):
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                    names.remove(name)
                else:
                    path.unlink(missing_ok=True)
                removed.append(path)
    return removed


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
        handle, name = tempfile.mkstemp(prefix=temporary_prefix(target), suffix=f".tmp{suffix}", dir=target.parent)
        os.close(handle)
        os.chmod(name, 0o666 & ~_UMASK)  # the permissions of a plain `open(path, "w")`, not mkstemp's 0600
    except OSError as error:
        raise _naming(target, error) from error
    temporary = Path(name)
    try:
        yield temporary
        _fsync_tree(temporary)  # the content is on disk before the rename makes it the target
        os.replace(temporary, target)
        fsync_path(target.parent)  # and the rename itself
    except OSError as error:
        _remove(temporary)
        raise _naming(target, error) from error
    except BaseException:
        _remove(temporary)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


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
