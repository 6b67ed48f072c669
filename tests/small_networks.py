"""Small network builders for the end-to-end tests, named in test configs by dotted path (`[NETWORK] name =
small_networks.small_dense_sfg_cnn`, with `tests/` on PYTHONPATH), as a user names their own builder.

The engine, provenance, crash-safety and serving tests are about the engine, not the architecture: this network of
two SFG layers traces several times faster than `sfg_highresnet` (five SFG layers and six per-stream residual
blocks; measured: a 6-step `sfg_run train` of tests/test_cli.py's config 131 s -> 48 s). `sfg_highresnet` keeps its
own tests (test_models.py, test_compact.py, test_serving_outputs.py, the configs in test_mr_ct_app.py).
"""

from __future__ import annotations

from sfg_keras.models import NetworkOptions, SFGNetwork, TaskHead, sfg_small_cnn


def small_dense_sfg_cnn(tasks: list[TaskHead], options: NetworkOptions | None = None) -> SFGNetwork:
    """A two-layer fully convolutional SFG network: `sfg_small_cnn` with widths 8, 8 and per-pixel heads."""
    return sfg_small_cnn(tasks, options, widths=(8, 8), dense=True)
