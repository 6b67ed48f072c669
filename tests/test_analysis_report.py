"""The grouping report (PNG, CSV, JSON) and the grouping-history file format."""

import csv
import json

import keras
import matplotlib.image
import numpy as np
import pytest

from sfg_keras.analysis import load_grouping_history, save_grouping_history, write_grouping_report
from sfg_keras.layers import SFGConv
from sfg_keras.models import NetworkOptions, TaskHead, sfg_small_cnn

TWO_TASKS = [TaskHead("age", "regression", 1), TaskHead("gender", "classification", 2)]
THREE_TASKS = TWO_TASKS + [TaskHead("smile", "classification", 2)]
LAYERS = ("sfg_conv_1", "sfg_conv_2")


def _model(tasks):
    model = sfg_small_cnn(tasks, NetworkOptions(init_mode="random", seed=5), widths=(6, 10))
    model.build((None, 8, 8, 3))
    return model


def _history(model, path, steps=(0, 10, 20)):
    rng = np.random.default_rng(0)
    history = {}
    for name, p in model.grouping_probabilities().items():
        start = rng.dirichlet(np.ones(p.shape[1]), size=p.shape[0])
        weights = np.linspace(0.0, 1.0, len(steps))[:, None, None]
        history[name] = (1.0 - weights) * start[None] + weights * p[None]
    return save_grouping_history(path, list(steps), history)


def _assert_image(path):
    assert path.is_file() and path.suffix == ".png"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50
    assert image[..., :3].std() > 0.01


def test_report_two_tasks(tmp_path):
    model = _model(TWO_TASKS)
    history_path = _history(model, tmp_path / "logs" / "grouping_history.npz")
    paths = write_grouping_report(model, tmp_path / "report", history_path=history_path)
    expected = {"group_shares", "summary_csv", "summary_json"}
    for layer in LAYERS:
        expected |= {f"ternary/{layer}", f"trajectories/{layer}", f"ternary_trajectories/{layer}"}
    assert set(paths) == expected
    assert paths["group_shares"] == tmp_path / "report" / "group_shares.png"
    assert paths["ternary/sfg_conv_1"].name == "ternary_sfg_conv_1.png"
    for path in paths.values():
        if path.suffix == ".png":
            _assert_image(path)

    shares, assignments = model.group_shares(), model.map_assignments()
    with paths["summary_csv"].open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["layer"] for row in rows] == list(LAYERS)
    for row in rows:
        layer = row["layer"]
        for group in ("age", "gender", "shared"):
            assert float(row[f"share_{group}"]) == pytest.approx(shares[layer][group], rel=1e-12, abs=1e-15)
        counts = np.bincount(assignments[layer], minlength=3)
        assert [int(row[f"map_count_{g}"]) for g in ("age", "gender", "shared")] == counts.tolist()
        assert int(row["num_kernels"]) == len(assignments[layer])

    report = json.loads(paths["summary_json"].read_text())
    assert report["groups"] == ["age", "gender", "shared"]
    for entry in report["layers"]:
        layer = entry["layer"]
        assert entry["map_assignment"] == assignments[layer].tolist()
        for group, share in entry["shares"].items():
            assert share == pytest.approx(shares[layer][group], rel=1e-12, abs=1e-15)
        np.testing.assert_allclose(entry["probabilities"], model.grouping_probabilities()[layer], atol=1e-12)


def test_report_three_tasks_without_history(tmp_path):
    model = _model(THREE_TASKS)
    paths = write_grouping_report(model, tmp_path)
    assert set(paths) == {"group_shares", "summary_csv", "summary_json"} | {
        f"group_share_image/{layer}" for layer in LAYERS
    }
    for key in ("group_shares", "group_share_image/sfg_conv_1", "group_share_image/sfg_conv_2"):
        _assert_image(paths[key])
    assert not list(tmp_path.glob("ternary*"))
    rows = list(csv.DictReader(paths["summary_csv"].open()))
    assert float(rows[1]["share_smile"]) == pytest.approx(model.group_shares()["sfg_conv_2"]["smile"], rel=1e-12)


def test_report_three_tasks_with_history_has_no_ternary_trajectories(tmp_path):
    model = _model(THREE_TASKS)
    paths = write_grouping_report(model, tmp_path / "out", _history(model, tmp_path / "history.npz"))
    assert "trajectories/sfg_conv_2" in paths and not [k for k in paths if k.startswith("ternary")]
    _assert_image(paths["trajectories/sfg_conv_2"])


def test_report_on_a_functional_model(tmp_path):
    images = keras.Input((8, 8, 3))
    streams = SFGConv(5, 3, num_tasks=3, init_mode="random", seed=1, name="sfg")(images)
    model = keras.Model(images, streams[3])
    paths = write_grouping_report(model, tmp_path)
    report = json.loads(paths["summary_json"].read_text())
    assert report["groups"] == ["task_1", "task_2", "task_3", "shared"]
    assert report["layers"][0]["layer"] == "sfg"


def test_history_round_trip_and_errors(tmp_path):
    p = np.random.default_rng(1).dirichlet(np.ones(3), size=(2, 4)).astype("float32")
    path = save_grouping_history(tmp_path / "h.npz", [5, 9], {"layer_a": p})
    steps, history = load_grouping_history(path)
    assert steps.dtype == np.int64 and steps.tolist() == [5, 9]
    np.testing.assert_array_equal(history["layer_a"], p)
    assert not list(tmp_path.glob("*.partial"))
    with pytest.raises(ValueError, match="strictly increasing"):
        save_grouping_history(tmp_path / "bad.npz", [9, 5], {"layer_a": p})
    with pytest.raises(ValueError, match="one snapshot per step"):
        save_grouping_history(tmp_path / "bad.npz", [1, 2, 3], {"layer_a": p})
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_grouping_history(tmp_path / "missing.npz")
    np.savez(tmp_path / "no_steps.npz", layer_a=p)
    with pytest.raises(ValueError, match="'steps'"):
        load_grouping_history(tmp_path / "no_steps.npz")


def test_report_rejects_a_history_of_another_model(tmp_path):
    model = _model(TWO_TASKS)
    p = np.full((1, 6, 3), 1.0 / 3.0)
    path = save_grouping_history(tmp_path / "other.npz", [0], {"sfg_conv_1": p})
    with pytest.raises(ValueError, match="no array for layer 'sfg_conv_2'"):
        write_grouping_report(model, tmp_path / "out", path)
    path = save_grouping_history(tmp_path / "shape.npz", [0], {"sfg_conv_1": p, "sfg_conv_2": p})
    with pytest.raises(ValueError, match=r"sfg_conv_2.*\(6, 3\).*\(10, 3\)"):
        write_grouping_report(model, tmp_path / "out", path)
    with pytest.raises(FileNotFoundError):
        write_grouping_report(model, tmp_path / "out", tmp_path / "nope.npz")
    assert not (tmp_path / "out").exists()  # nothing is written when the history is unusable
