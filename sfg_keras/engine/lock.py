"""`ModelDirLock`: one training run per `model_dir`, across processes and hosts sharing a file system.

The lock is a file `model_dir/.sfg_run.lock` created with `O_CREAT | O_EXCL` (atomic on local and NFSv3+ file
systems) holding the holder's host, pid and start time. A second run is refused with a message naming the holder. A
lock left by a process that no longer runs on this host (a killed run) is taken over with a warning; a lock held from
another host is never taken over automatically (its process cannot be checked from here).
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from pathlib import Path

LOCK_FILE = ".sfg_run.lock"



def check_model_dir(model_dir: str | os.PathLike) -> None:
    """Raises `NotADirectoryError` when `model_dir` exists and is not a folder.

    Example:

    ```python
    check_model_dir("runs/age_gender")
    ```
    """
    path = Path(model_dir)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"[SYSTEM] model_dir {path} is a file; expected a folder.")


def _not_writable(model_dir: Path, error: OSError) -> PermissionError:
    return PermissionError(
        error.errno, f"[SYSTEM] model_dir {model_dir} cannot be created or written ({error.strerror or error}); "
        "expected a folder you can write to (a read-only location, or a missing permission?)"
    )

class ModelDirLockedError(RuntimeError):
    """Raised when another live run holds the `model_dir` lock."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a process of another user has that pid
    return True


class ModelDirLock:
    """Context manager holding `model_dir`'s lock for the duration of a run.

    Args:
        model_dir: the folder to lock (created if missing).
        action: what the holder does, shown to a refused run.

    Raises:
        ModelDirLockedError: on entry, when a live process holds the lock.

    Example:

    ```python
    with ModelDirLock("models/run1", action="train"):
        ...  # train; a second `sfg_run train` on models/run1 exits 2 naming this process
    ```
    """

    def __init__(self, model_dir: str | os.PathLike, action: str = "train"):
        self.model_dir = Path(model_dir)
        self.path = self.model_dir / LOCK_FILE
        self.action = action
        self.created_dir = False
        self._held = False

    def holder(self) -> dict | None:
        """The holder's `{"host", "pid", "action", "started"}`, or None when unlocked (or unreadable)."""
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def _describe(self, holder: dict) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("started", 0))))
        return (f"pid {holder.get('pid')} on host {holder.get('host')!r} ({holder.get('action', 'run')}, since "
                f"{started})")

    def acquire(self) -> None:
        """Takes the lock (see the class docstring)."""
        check_model_dir(self.model_dir)
        if not self.model_dir.exists():
            try:
                self.model_dir.mkdir(parents=True)
            except OSError as error:
                raise _not_writable(self.model_dir, error) from error
            self.created_dir = True
        record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "action": self.action,
                             "started": time.time()})
        for _ in range(2):
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.holder() or {}
                same_host = holder.get("host") == socket.gethostname()
                pid = int(holder.get("pid", -1)) if str(holder.get("pid", "")).lstrip("-").isdigit() else -1
                if same_host and pid > 0 and not _alive(pid):
                    warnings.warn(
                        f"{self.path}: taking over the stale lock of {self._describe(holder)}, which no longer runs.",
                        stacklevel=2,
                    )
                    self.path.unlink(missing_ok=True)
                    continue
                raise ModelDirLockedError(
                    f"{self.model_dir} is in use by {self._describe(holder) if holder else 'another run'} "
                    f"(lock file {self.path}). Wait for it to finish, or choose another [SYSTEM] model_dir; delete "
                    "the lock file only if that run is gone."
                ) from None
            except OSError as error:
                raise _not_writable(self.model_dir, error) from error
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                stream.write(record)
            self._held = True
            return
        raise ModelDirLockedError(f"{self.path}: could not take the lock (another run took it over first).")

    def release(self) -> None:
        """Releases the lock if this object holds it."""
        if self._held:
            holder = self.holder() or {}
            if holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self._held = False
        if self.created_dir and self.model_dir.is_dir() and not any(self.model_dir.iterdir()):
            self.model_dir.rmdir()  # the lock made the folder and nothing else was written: leave no trace

    def __enter__(self) -> ModelDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()
