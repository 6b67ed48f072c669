"""In-graph checks of a serving request: what a served model refuses before it computes anything.

TF Serving hands a request straight to the graph, so the checks are graph ops (`tf.debugging` assertions) that run in
every exported signature and in the exported `.keras` models: a request of the wrong rank, with the wrong channel
count, with no element (an empty volume, zero slices, a zero-sized slice) or with a non-finite value (NaN, inf)
fails with `InvalidArgumentError` whose message names the input (`input images: ...`), says what was expected and
shows what was received. The exported input signature leaves rank and sizes open, so that the check (not a shape
mismatch in the serving layer) answers a bad request.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf


def request_shape_text(request_shape: Sequence[int | None]) -> str:
    """`[N, h, w, 1]`-style text of a request's expected shape (letters for free sizes).

    Example:

    ```python
    request_shape_text((None, None, 1))   # "[N, d1, d2, 1]"
    ```
    """
    sizes = ["N"] + [f"d{axis + 1}" if size is None else str(size) for axis, size in enumerate(request_shape[:-1])]
    return "[" + ", ".join([*sizes, str(request_shape[-1])]) + "]"


def check_request(
    images, request_shape: Sequence[int | None], name: str = "images", description: str = ""
) -> tf.Tensor:
    """Checks a raw request in the graph and returns it with its static rank and channel count.

    Args:
        images: the request tensor (float32, any rank).
        request_shape: the expected shape of one element without the batch axis (None = any size; the last entry,
            the channel count, known).
        name: the input's name in messages. Defaults to `"images"`.
        description: what a request holds (added to the messages). Defaults to `""`.

    Returns:
        `images` of rank `len(request_shape) + 1` with the channel count (and any fixed size) set statically.

    Raises:
        tf.errors.InvalidArgumentError: (when run) wrong rank, wrong channel count, an empty request or a
            non-finite value; the message names `name`, the expected and the received shape or count.

    Example:

    ```python
    checked = check_request(tf.constant(slices), (None, None, 1), description="one MR volume's axial slices")
    ```
    """
    rank = len(request_shape) + 1
    expected = request_shape_text(request_shape)
    what = f" ({description})" if description else ""
    images = tf.convert_to_tensor(images)
    received = tf.shape(images)

    def check(condition, message: str, *values):
        return tf.debugging.Assert(condition, [f"input {name}: {message}", *values], summarize=16)

    # Each check also passes when an earlier one fails, so that exactly the first failing check answers (graph ops
    # may run in any order).
    rank_ok = tf.equal(tf.rank(images), rank)
    channels_ok = tf.equal(tf.concat([[0], received], 0)[-1], int(request_shape[-1]))
    sizes_ok = [tf.reduce_min(tf.concat([received, [1]], 0)) > 0]
    checks = [
        check(rank_ok, f"expected a rank-{rank} request {expected}{what}; received rank", tf.rank(images), "shape",
              received),
        check(~rank_ok | channels_ok,
              f"expected {request_shape[-1]} channel(s) in the last axis of {expected}{what}; received shape",
              received),
        check(~rank_ok | ~channels_ok | sizes_ok[0],
              f"the request is empty (an axis of size 0); expected {expected} with every size at least 1{what}; "
              "received shape", received),
    ]
    for axis, size in enumerate(request_shape[:-1]):
        if size is not None:
            size_ok = tf.equal(tf.concat([received, tf.zeros([rank], tf.int32)], 0)[axis + 1], int(size))
            checks.append(check(~rank_ok | size_ok,
                                f"axis {axis + 1} of {expected} must have size {size}{what}; received shape", received))
            sizes_ok.append(size_ok)
    shape_ok = tf.reduce_all(tf.stack([rank_ok, channels_ok, *sizes_ok]))
    non_finite = tf.reduce_sum(tf.cast(tf.logical_not(tf.math.is_finite(images)), tf.int64))
    checks.append(check(
        ~shape_ok | tf.equal(non_finite, 0),
        f"the request holds non-finite values (NaN or infinity); expected finite numbers{what}; non-finite values "
        "received:", non_finite,
    ))
    with tf.control_dependencies([c for c in checks if c is not None]):
        checked = tf.identity(images)
    # A static shape only (not `tf.ensure_shape`: graph optimisation would read its shape back into the checks).
    checked.set_shape([None, *request_shape])
    return checked
