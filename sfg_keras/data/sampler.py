"""`example_order`: the training order of a data set as a pure function of (seed, position), so a run resumes exactly.

Training visits the examples epoch after epoch, each epoch in its own random permutation. Here the permutation of
epoch `e` is drawn with a stateless random op from `(seed, e)`, so the example at global position `i` (the `i`-th
example the run sees) depends on nothing but `seed` and `i`. A run resumed at batch `k` builds its pipeline from
position `k * batch_size` and sees exactly the batches the uninterrupted run would have seen; augmentation seeded with
`(seed, position)` is reproduced too. No `skip` over earlier batches is needed: starting costs one permutation.
"""

from __future__ import annotations

import tensorflow as tf


def example_order(num_examples: int, seed: int, first_position: int = 0) -> tf.data.Dataset:
    """Infinite dataset of `(position, index)` int64 pairs: the global position and the example it holds.

    Args:
        num_examples: int. Number of examples in the data set (at least 1).
        seed: int. Seed of the permutations.
        first_position: int. Global position of the first element (e.g. `first_batch * batch_size` on resume).

    Returns:
        A `tf.data.Dataset` of `(position, index)` scalars, `index` in `[0, num_examples)`, every epoch a
        permutation of all examples.

    Example:

    ```python
    order = example_order(len(paths), seed=1, first_position=3 * batch_size)
    dataset = order.map(lambda position, index: load(index, seed=tf.stack([seed, position]))).batch(batch_size)
    ```
    """
    if int(num_examples) < 1:
        raise ValueError(f"`num_examples` must be at least 1. Received: num_examples={num_examples!r}")
    if int(first_position) < 0:
        raise ValueError(f"`first_position` must be >= 0. Received: first_position={first_position!r}")
    n = int(num_examples)
    first_epoch, offset = divmod(int(first_position), n)
    seed_tensor = tf.constant(int(seed), tf.int64)

    def epoch(e):
        noise = tf.random.stateless_uniform([n], seed=tf.stack([seed_tensor, e]), dtype=tf.float32)
        permutation = tf.argsort(noise, stable=True)
        positions = e * n + tf.range(n, dtype=tf.int64)
        return tf.data.Dataset.from_tensor_slices((positions, tf.cast(permutation, tf.int64)))

    epochs = tf.data.Dataset.counter(start=first_epoch, dtype=tf.int64).flat_map(epoch)
    return epochs.skip(offset)


def batch_examples(num_examples: int, seed: int, batch: int, batch_size: int) -> list[int]:
    """The example indices of training batch `batch` under `example_order` (for messages naming a batch's files).

    Example:

    ```python
    [paths[i] for i in batch_examples(len(paths), seed=1, batch=41, batch_size=8)]
    ```
    """
    if int(batch) < 0 or int(batch_size) < 1:
        raise ValueError(f"`batch` must be >= 0 and `batch_size` >= 1. Received: batch={batch!r}, "
                         f"batch_size={batch_size!r}")
    order = example_order(num_examples, seed, first_position=int(batch) * int(batch_size)).take(int(batch_size))
    return [int(index) for _, index in order.as_numpy_iterator()]
