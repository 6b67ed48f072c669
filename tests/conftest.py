"""Shared pytest setup: quiet TensorFlow, deterministic seeds, CPU only."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _reset_keras_state():
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(1234)
    yield
    keras.config.set_dtype_policy("float32")
    keras.backend.clear_session()


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
