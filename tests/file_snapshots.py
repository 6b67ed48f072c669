"""`snapshot(path)`: every file under a folder with its SHA-256, to assert that a refused run changed nothing."""

import hashlib
from pathlib import Path


def snapshot(path) -> dict[str, str] | None:
    """`{relative path: sha256}` of every file under `path` (folders included as `"<dir>"`); None if it is missing."""
    root = Path(path)
    if not root.exists():
        return None
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    result = {}
    for item in sorted(root.rglob("*")):
        name = str(item.relative_to(root))
        result[name] = hashlib.sha256(item.read_bytes()).hexdigest() if item.is_file() else "<dir>"
    return result
