"""Shared pytest setup: quiet TensorFlow, deterministic seeds, CPU only."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# Two pytest workers share two cores (and so do the `sfg_run` subprocesses, which inherit this): one intra-op thread
# each instead of one per core avoids oversubscribing them (two test files on 2 idle cores: 128 s -> 111 s).
# A config's `num_threads` still overrides it.
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import keras  # noqa: E402
import pytest  # noqa: E402

# The files that take longest (seconds of test time on 2 idle cores, from `pytest --durations=0`), run first so that
# neither worker is left with a long file at the end; `--dist loadfile --no-loadscope-reorder` keeps this order.
# The others follow in their usual order. Update it when `--durations` changes a lot.
LONGEST_FIRST = (
    "test_engine.py", "test_models.py", "test_multi_worker.py", "test_serving.py", "test_age_gender_app.py",
    "test_cli.py", "test_crash_safety.py", "test_run_safety.py", "test_mr_ct_app.py", "test_grouping_commit.py",
    "test_grouping_logger.py", "test_provenance.py", "test_export.py", "test_inference.py", "test_distribute.py",
    "test_packed_execution.py", "test_non_finite_guard.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: test order within a file is kept


@pytest.fixture(autouse=True)
def _reset_keras_state():
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(1234)
    yield
    keras.config.set_dtype_policy("float32")
    # Without Keras's `gc.collect()`: a full collection after every test cost 0.3-1.3 s each once a worker's heap held
    # the objects of earlier files (322-552 s of the suite's test time on 2 cores); Python's own collector still runs.
    keras.backend.clear_session(free_memory=False)


@pytest.fixture(scope="session")
def cohort(tmp_path_factory):
    """A 5-subject generated pelvis cohort (MR, CT, LABEL NIfTI folders), shared by the CLI tests."""
    from sfg_keras.data.generators import make_pelvis_cohort

    data = tmp_path_factory.mktemp("pelvis")
    make_pelvis_cohort(str(data), num_subjects=5, seed=0)
    return data


@pytest.fixture(scope="session")
def trained_run(cohort, tmp_path_factory):
    """`(folder, CompletedProcess)` of one uninterrupted `sfg_run train` to iteration 6 (checkpoints at 3 and 6,
    validation every 3, TensorBoard every 2) on one thread, shared by the CLI and engine tests."""
    from test_cli import run, write_config

    folder = tmp_path_factory.mktemp("trained")
    config = write_config(folder, cohort, max_iter=6, save_every_n=3, validation_every_n=3)
    # Multi-threaded CPU kernels (oneDNN) differ in the last bits from run to run under load, resumed or not
    # (measured: 5e-7 after 6 steps); one thread makes runs bitwise reproducible, as the resume test needs.
    return folder, run(["train", "-c", str(config), "--num_threads=1"])
