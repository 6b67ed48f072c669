"""`sfg_keras.groups`: the names and small numpy rules every part of the library shares."""

import subprocess
import sys

import numpy as np
import pytest

from sfg_keras import groups, predictions


def test_module_imports_without_tensorflow_or_keras():
    code = (
        "import sys, sfg_keras.groups, sfg_keras.predictions, sfg_keras.config, sfg_keras.analysis; "
        "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_names_and_re_exports_are_the_same_objects():
    from sfg_keras.analysis import SHARED_GROUP_NAME, group_names
    from sfg_keras.config import default_p0 as config_default_p0
    from sfg_keras.config.schema import GROUPINGS as schema_groupings
    from sfg_keras.layers import default_p0 as layers_default_p0
    from sfg_keras.models import GROUPINGS

    assert groups.SHARED == SHARED_GROUP_NAME == "shared"
    assert GROUPINGS is groups.GROUPINGS and schema_groupings is groups.GROUPINGS
    assert layers_default_p0 is groups.default_p0 and config_default_p0 is groups.default_p0
    assert group_names is groups.group_names


def test_group_names():
    assert groups.group_names(["age", "gender"]) == ["age", "gender", "shared"]
    assert groups.group_names(("a",), num_groups=2) == ["a", "shared"]
    with pytest.raises(ValueError, match="No task may be called 'shared'"):
        groups.group_names(["age", "shared"])
    with pytest.raises(ValueError, match="distinct"):
        groups.group_names(["a", "a"])
    with pytest.raises(ValueError, match=r"received 'age'"):
        groups.group_names("age")
    with pytest.raises(ValueError, match="4 columns"):
        groups.group_names(["a", "b"], num_groups=4)


def test_default_p0():
    assert groups.default_p0(2) == pytest.approx((0.2, 0.2, 0.6))
    p0 = groups.default_p0(3)
    assert isinstance(p0, tuple) and len(p0) == 4 and p0[-1] == 0.6 and sum(p0) == pytest.approx(1.0)
    assert groups.default_p0(1, shared=0.9) == pytest.approx((0.1, 0.9))
    with pytest.raises(ValueError, match="num_tasks=0"):
        groups.default_p0(0)
    with pytest.raises(ValueError, match="shared=1.0"):
        groups.default_p0(2, shared=1.0)


def test_map_group_ties_go_to_the_later_group_and_votes_to_the_lower_class():
    p = np.array([[0.5, 0.1, 0.4], [0.4, 0.2, 0.4], [1 / 3, 1 / 3, 1 / 3], [0.45, 0.45, 0.1]])
    assert groups.map_group(p).tolist() == [0, 2, 2, 1]
    assert groups.majority_vote(np.array([[2, 5, 5], [4, 1, 0], [3, 3, 3]])).tolist() == [1, 0, 0]
    assert groups.majority_vote(np.array([[1, 0], [0, 1]]), axis=0).tolist() == [0, 1]


def test_entropy_in_nats_along_an_axis():
    p = np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.0, 0.5]])
    np.testing.assert_allclose(groups.entropy(p), [0.0, np.log(3.0), np.log(2.0)])
    np.testing.assert_allclose(groups.entropy(p.T, axis=0), [0.0, np.log(3.0), np.log(2.0)])
    assert not np.signbit(groups.entropy(p)[0])  # 0 log 0 = +0


def test_rules_agree_between_numpy_and_keras_ops():
    keras = pytest.importorskip("keras")
    ops = keras.ops
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=(5, 7)).astype("float32")
    p[0, 0] = [0.4, 0.1, 0.1, 0.4]
    np.testing.assert_allclose(ops.convert_to_numpy(groups.entropy(ops.convert_to_tensor(p), xp=ops)),
                               groups.entropy(p), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ops.convert_to_numpy(groups.map_group(ops.convert_to_tensor(p), xp=ops)),
                                  groups.map_group(p))
    np.testing.assert_array_equal(ops.convert_to_numpy(groups.majority_vote(ops.convert_to_tensor(p), xp=ops)),
                                  groups.majority_vote(p))


def test_prediction_keys():
    assert predictions.PREDICTION_KEYS == {
        "regression": ("mean", "std"),
        "categorical": ("probabilities", "label", "entropy"),
    }
    assert predictions.prediction_kind(True) == "categorical" and predictions.prediction_kind(False) == "regression"
    assert predictions.output_names([("ct", False), ("organs", True)]) == [
        "ct_mean", "ct_std", "organs_probabilities", "organs_label", "organs_entropy"]
    with pytest.raises(ValueError, match="task=''"):
        predictions.output_name("", "mean")


def test_vocabulary_is_the_one_every_consumer_reads():
    """The schema's choices, the architectures' names and the layers' checks all come from `sfg_keras.groups`."""
    from sfg_keras.config import schema
    from sfg_keras.layers import SFGConv
    from sfg_keras.models import ARCHITECTURES, NetworkOptions

    assert tuple(ARCHITECTURES) == groups.NETWORK_NAMES == schema.BUILT_IN_NETWORKS
    assert all(builder.__name__ == name for name, builder in ARCHITECTURES.items())
    sfg_keys = schema.SFG_SCHEMA
    assert sfg_keys["merge"].choices is groups.MERGE_MODES
    assert sfg_keys["sampling"].choices is groups.SAMPLING_MODES
    assert sfg_keys["grouping_step"].choices is groups.GROUPING_STEPS
    assert sfg_keys["init"].choices is groups.INIT_MODES
    assert sfg_keys["grouping"].choices is groups.GROUPINGS
    cases = [("merge", "max", groups.MERGE_MODES), ("sampling", "per_pixel", groups.SAMPLING_MODES)]
    for field, value, choices in cases:
        message = f"`{field}` must be one of {choices}. Received: {field}={value!r}"
        with pytest.raises(ValueError) as options_error:
            NetworkOptions(**{field: value})
        with pytest.raises(ValueError) as layer_error:
            SFGConv(4, 3, **{field: value})
        assert str(options_error.value) == str(layer_error.value) == message
