"""Up-front checks of input files: one error listing every bad file, a scan cache and training-set fingerprints.

Applications check every input before anything is written (see the README's "What is checked"): each problem is an
`InputProblem` naming the file (and subject), what is wrong and what was expected; `InputProblems` collects them and
raises one `InputValidationError` listing the first 20 and how many more. Full scans of large files (every voxel of a
volume, every pixel of an image) are cached by `ScanCache`, keyed by the file's absolute path, size and modification
time, so a second run over unchanged data reads headers only. `files_fingerprint` / `fingerprint_changes` record and
compare the files a normalisation was fitted on.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sfg_keras.io.atomic import atomic_write_json

MAX_LISTED = 20
SCAN_CACHE_FILE = ".input_scans.json"  # in model_dir
SCAN_CACHE_VERSION = 1


def bullet_list(items: Sequence[object], limit: int = MAX_LISTED) -> str:
    """`items` as indented "  - item" lines, the first `limit` of them and "  ... and N more".

    Example:

    ```python
    bullet_list(["changed: a.nii.gz", "added: b.nii.gz"])  # "  - changed: a.nii.gz\n  - added: b.nii.gz"
    ```
    """
    listed = "\n".join(f"  - {item}" for item in items[:limit])
    more = len(items) - limit
    return listed + (f"\n  ... and {more} more" if more > 0 else "")


@dataclasses.dataclass(frozen=True)
class InputProblem:
    """One bad input file.

    Attributes:
        path: the file (or folder) at fault.
        problem: what is wrong, e.g. "holds 12 NaN voxels".
        expected: what was expected, e.g. "finite intensities".
        subject: the subject (or image id) the file belongs to, when known.

    Example:

    ```python
    str(InputProblem("data/s1_mr.nii.gz", "has 4 dimensions (64, 64, 8, 2)", "a 3-D volume", subject="s1"))
    # "data/s1_mr.nii.gz (subject 's1'): has 4 dimensions (64, 64, 8, 2); expected a 3-D volume"
    ```
    """

    path: str
    problem: str
    expected: str
    subject: str | None = None

    def __str__(self) -> str:
        subject = f" (subject {self.subject!r})" if self.subject is not None else ""
        return f"{self.path}{subject}: {self.problem}; expected {self.expected}"


class InputValidationError(ValueError):
    """Input files failed their checks; the message lists the first `MAX_LISTED` problems and how many more.

    Attributes:
        problems: every `InputProblem` found.

    Example:

    ```python
    try:
        app.prepare(fit=True)
    except InputValidationError as error:
        print(len(error.problems), error)
    ```
    """

    def __init__(self, problems: Sequence[InputProblem], context: str = "input files"):
        self.problems = list(problems)
        count = len(self.problems)
        super().__init__(f"{count} problem{'s' if count != 1 else ''} in the {context}; nothing was written:\n"
                         f"{bullet_list(self.problems)}")


class InputProblems:
    """Collects `InputProblem`s over many files, then raises them together.

    Example:

    ```python
    problems = InputProblems("training inputs of [MR]")
    for subject, path in files:
        summary = problems.run(path, subject, lambda p: scan_volume(p))  # None when the scan raised a problem
    problems.raise_if_any()
    ```
    """

    def __init__(self, context: str = "input files"):
        self.context = context
        self.items: list[InputProblem] = []

    def add(self, path: str | os.PathLike, problem: str, expected: str, subject: str | None = None) -> None:
        """Records one problem."""
        self.items.append(InputProblem(str(path), problem, expected, subject))

    def run(self, path: str | os.PathLike, subject: str | None, scan: Callable[[str], Any], expected: str = "a "
            "readable file") -> Any:
        """Calls `scan(path)`; an `InputCheckFailure` or `OSError` it raises is recorded and `None` returned."""
        try:
            return scan(str(path))
        except InputCheckFailure as failure:
            self.add(path, failure.problem, failure.expected, subject)
        except OSError as error:
            if error.errno == errno.ELOOP:
                self.add(path, "is a symbolic link loop (following it leads back to itself)",
                         f"{expected} (remove or fix the link)", subject)
                return None
            reason = error.strerror or str(error) or type(error).__name__
            self.add(path, f"cannot be read ({type(error).__name__}: {reason})", expected, subject)
        except RuntimeError as error:  # pathlib's symbolic link loop before Python 3.13
            self.add(path, f"is a symbolic link loop ({error})", f"{expected} (remove or fix the link)", subject)
        return None

    def __len__(self) -> int:
        return len(self.items)

    def raise_if_any(self) -> None:
        """Raises `InputValidationError` when a problem was recorded."""
        if self.items:
            raise InputValidationError(self.items, self.context)


class InputCheckFailure(Exception):
    """Raised by a scan function: what is wrong with the file and what was expected (recorded by `InputProblems`)."""

    def __init__(self, problem: str, expected: str):
        super().__init__(f"{problem}; expected {expected}")
        self.problem, self.expected = problem, expected


def _stat_key(path: str | os.PathLike) -> tuple[str, int, int]:
    stat = os.stat(path)
    return str(Path(path).resolve()), int(stat.st_size), int(stat.st_mtime_ns)


class ScanCache:
    """Results of full-file scans keyed by `(absolute path, size, mtime)` and the scan's name.

    A changed file (size or modification time) is scanned again. The cache is written (atomically) only by `save`,
    which applications call after every check passed, so a failed validation writes nothing.

    Args:
        path: the JSON file holding the cache, or None for an in-memory cache.

    Example:

    ```python
    cache = ScanCache(model_dir / SCAN_CACHE_FILE)
    summary = cache.get_or_scan("s1_mr.nii.gz", "nifti-v1", scan_volume)
    cache.save()
    ```
    """

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else None
        self.entries: dict[str, dict] = {}
        self._changed = False
        if self.path is not None and self.path.is_file():
            try:
                content = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                content = {}
            if isinstance(content, dict) and content.get("version") == SCAN_CACHE_VERSION:
                self.entries = dict(content.get("entries", {}))

    def get_or_scan(self, path: str | os.PathLike, scan_name: str, scan: Callable[[str], Mapping[str, Any]]) -> dict:
        """The cached result of `scan(path)` while the file is unchanged; otherwise scans it and caches the result.

        `scan` must return a JSON-serialisable mapping; exceptions propagate (a failed scan is never cached).
        """
        absolute, size, mtime = _stat_key(path)
        key = f"{scan_name}:{absolute}"
        entry = self.entries.get(key)
        if entry is not None and entry.get("size") == size and entry.get("mtime_ns") == mtime:
            return dict(entry["result"])
        result = dict(scan(str(path)))
        self.entries[key] = {"size": size, "mtime_ns": mtime, "result": result}
        self._changed = True
        return result

    def save(self) -> None:
        """Writes the cache atomically when a scan was added (an unwritable location is not an error)."""
        if self.path is None or not self._changed:
            return
        try:
            atomic_write_json(self.path, {"version": SCAN_CACHE_VERSION, "entries": self.entries})
            self._changed = False
        except OSError:
            pass


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 hex digest of a file's bytes.

    Example:

    ```python
    file_sha256("model_dir/models/model-40.keras")  # "9f86d0..."
    ```
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


#: Name (and version) of the content digests in a `ScanCache`.
DIGEST_SCAN = "sha256-v1"


def cached_sha256(path: str | os.PathLike, cache: ScanCache | None = None) -> str:
    """`file_sha256(path)`, taken from `cache` while the file's size and modification time are unchanged.

    Example:

    ```python
    cached_sha256("data/MR/subj_000_mr.nii.gz", ScanCache(model_dir / SCAN_CACHE_FILE))
    ```
    """
    if cache is None:
        return file_sha256(path)
    return str(cache.get_or_scan(path, DIGEST_SCAN, lambda p: {"sha256": file_sha256(p)})["sha256"])


def files_fingerprint(paths: Iterable[str | os.PathLike], base_dir: str | os.PathLike | None = None) -> dict:
    """A record of the files a fit used: each file's size and modification time, and a digest of them all.

    Args:
        paths: the files.
        base_dir: paths under it are stored relative to it (a moved project compares equal).

    Returns:
        `{"digest": sha256 hex, "files": {path: [size, mtime_ns]}}`.

    Example:

    ```python
    record = files_fingerprint(training_paths, base_dir=settings.config_dir)
    ```
    """
    base = Path(base_dir).resolve() if base_dir is not None else None
    files = {}
    for path in paths:
        absolute = Path(path).resolve()
        stat = absolute.stat()
        name = str(absolute)
        if base is not None:
            try:
                name = str(absolute.relative_to(base))
            except ValueError:
                pass
        files[name] = [int(stat.st_size), int(stat.st_mtime_ns)]
    digest = hashlib.sha256(json.dumps(sorted(files.items())).encode("utf-8")).hexdigest()
    return {"digest": digest, "files": dict(sorted(files.items()))}


def fingerprint_changes(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two `files_fingerprint` records (empty when they are equal).

    Example:

    ```python
    fingerprint_changes(old, new)  # ["added: data/s9_mr.nii.gz", "changed: data/s1_mr.nii.gz (size or time)"]
    ```
    """
    if recorded.get("digest") == current.get("digest"):
        return []
    old, new = dict(recorded.get("files", {})), dict(current.get("files", {}))
    changes = [f"removed: {name}" for name in old if name not in new]
    changes += [f"added: {name}" for name in new if name not in old]
    changes += [
        f"changed: {name} (size or modification time)" for name in new if name in old and list(old[name]) != list(
            new[name])
    ]
    return changes
