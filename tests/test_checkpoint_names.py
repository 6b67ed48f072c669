"""The checkpoint file names (`model-<step>.keras`), built and parsed only by `sfg_keras.training.checkpoints`."""

import re
from pathlib import Path

import pytest

from sfg_keras.training.checkpoints import (
    CHECKPOINT_DIR,
    checkpoint_path,
    checkpoint_step,
    find_checkpoint,
    list_checkpoints,
)


def test_checkpoint_path_and_step_round_trip():
    path = checkpoint_path(Path("run") / CHECKPOINT_DIR, 40)
    assert path == Path("run/models/model-40.keras")
    assert checkpoint_step(path) == 40
    assert checkpoint_step("model-0.keras") == 0


@pytest.mark.parametrize("name", ["model-4.keras.tmp", ".model-4.keras.1a2b3c4d-99.x8y7.tmp.keras", "model-x.keras",
                                  "sfg_compact-1.keras", "model-4.h5"])
def test_other_names_are_not_checkpoints(name):
    expected = re.escape(f"{name} is not a checkpoint file name; expected model-<iteration>.keras")
    with pytest.raises(ValueError, match=expected):
        checkpoint_step(name)


def test_list_checkpoints_by_step_ignoring_other_files(tmp_path):
    for step in (100, 20, 3):
        checkpoint_path(tmp_path, step).write_bytes(b"")
    (tmp_path / ".model-200.keras.1a2b3c4d-99.x8y7.tmp.keras").write_bytes(b"")  # a write in progress
    (tmp_path / "model-7.keras").mkdir()  # not a file
    (tmp_path / "notes.txt").write_text("")
    found = list_checkpoints(tmp_path)
    assert list(found) == [3, 20, 100]
    assert found[20] == tmp_path / "model-20.keras"
    assert list_checkpoints(tmp_path / "missing") == {}
    assert find_checkpoint(tmp_path) == tmp_path / "model-100.keras"
    with pytest.raises(FileNotFoundError, match=r"No checkpoint for iteration 7 .*iterations: \[3, 20, 100\]"):
        find_checkpoint(tmp_path, 7)
