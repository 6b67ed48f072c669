"""Metric tables: per-subject metrics and their summary, written so that no reader ever sees half a table."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from sfg_keras.evaluation.volume_metrics import write_metrics_csv
from sfg_keras.io.atomic import fsync_path, temporary_prefix


def write_metrics_tables(rows: Sequence[Mapping[str, object]], path: str | os.PathLike) -> tuple[Path, Path]:
    """`write_metrics_csv` (the per-subject table and its `<stem>_summary.csv`), written atomically: into a hidden
    temporary folder next to `path`, then each CSV renamed into place.

    A failed write raises an `OSError` naming the file and leaves neither CSV half-written (the temporary folder is
    removed).

    Example:

    ```python
    write_metrics_tables([{"subject": "s1", "mae": 40.0}], "model/evaluation/mr_ct_metrics.csv")
    # (model/evaluation/mr_ct_metrics.csv, model/evaluation/mr_ct_metrics_summary.csv)
    ```
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=temporary_prefix(path), suffix=".tmp", dir=path.parent))
    except OSError as error:
        raise OSError(error.errno, f"Cannot write {path}: {error.strerror or error}") from error
    target = path
    try:
        temporary = write_metrics_csv(rows, folder / path.name)
        targets = (path, path.with_name(temporary[1].name))
        for source in temporary:
            fsync_path(source)
        for source, target in zip(temporary, targets):
            os.replace(source, target)
        fsync_path(path.parent)
        return targets
    except OSError as error:
        raise OSError(error.errno, f"Cannot write {target}: {error.strerror or error}") from error
    finally:
        shutil.rmtree(folder, ignore_errors=True)
