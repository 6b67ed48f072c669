"""The `tf.data` pipelines of the age_gender application: decoding, standardisation, augmentation and batching.

Images are decoded (JPEG or PNG) to `channels`, resized to `image_size` (`antialias=True`), standardised per channel
with the training statistics (then per image with `[NETWORK] whitening`) and, for training, augmented with the
`[TRAINING]` flips, rotations and scalings. Training batch `k` depends only on `[SYSTEM] seed` and `k` (the order is
`sfg_keras.data.example_order` and the augmentation of the example at global position `i` is seeded with
`(seed, i)`); validation repeats the Validation images in a fixed order; prediction batches are balanced.

Example:

```python
load = lambda path: standardiser(statistics, whitening=False)(decode_image(path, 3, (200, 200)))
batches = training_batches(paths, targets, load, augmenter((1,), 0.1, 10.0), seed=0, batch_size=8, first_batch=0)
```
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf

from sfg_keras.data import random_scale_rotate
from sfg_keras.data.sampler import example_order

ImageFunction = Callable[[tf.Tensor], tf.Tensor]


def decode_image(path: tf.Tensor, channels: int, image_size: tuple[int, int]) -> tf.Tensor:
    """Reads, decodes (JPEG or PNG) and resizes one image: float32 `[height, width, channels]` in 0..255.

    Example:

    ```python
    decode_image(tf.constant("face.jpg"), 3, (200, 200)).shape  # TensorShape([200, 200, 3])
    ```
    """
    image = tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)
    image.set_shape([None, None, channels])
    image = tf.image.resize(image, image_size, antialias=True)
    return tf.ensure_shape(tf.cast(image, tf.float32), [*image_size, channels])


def standardiser(statistics: Mapping, whitening: bool) -> ImageFunction:
    """`image -> (image - mean) / std` per channel (std at least 1e-6), then `tf.image.per_image_standardization`
    with `whitening`.

    Example:

    ```python
    standardise = standardiser({"mean": [120.0], "std": [60.0]}, whitening=False)
    ```
    """
    mean = tf.constant(statistics["mean"], tf.float32)
    std = tf.constant(np.maximum(statistics["std"], 1e-6), tf.float32)

    def standardise(image):
        image = (image - mean) / std
        return tf.image.per_image_standardization(image) if whitening else image

    return standardise


def augmenter(flip_axes: Sequence[int], scale_range: float, max_degrees: float
              ) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """`(image, seed) -> image`: random flips along `flip_axes` (1 left-right, 0 up-down), then a random scaling and
    rotation, all seeded by the stateless `seed`.

    Example:

    ```python
    augment = augmenter([1], scale_range=0.1, max_degrees=10.0)
    augment(image, tf.constant([0, 7], tf.int64))
    ```
    """

    def augment(image, seed):
        seeds = tf.random.experimental.stateless_split(seed, 3)
        if 1 in flip_axes:
            image = tf.image.stateless_random_flip_left_right(image, seeds[0])
        if 0 in flip_axes:
            image = tf.image.stateless_random_flip_up_down(image, seeds[1])
        if max_degrees > 0 or scale_range > 0:
            image = random_scale_rotate(
                {"image": image}, seeds[2], scale_range=scale_range, max_degrees=max_degrees, nearest=()
            )["image"]
        return image

    return augment


def training_batches(paths: Sequence[str], targets: Mapping[str, np.ndarray], load: ImageFunction,
                     augment: Callable[[tf.Tensor, tf.Tensor], tf.Tensor], seed: int, batch_size: int,
                     first_batch: int) -> tf.data.Dataset:
    """Infinite batches `(images, {task: target})` of `paths` from batch `first_batch` on.

    The order is `example_order(n, seed, first_batch * batch_size)` and the augmentation of the example at global
    position `i` is seeded with `(seed, i)`, so batch `k` is the same whether the run started at 0 or resumed at `k`.

    Args:
        paths: the image files.
        targets: per task, the targets aligned with `paths`.
        load: `path -> image` (decoded and standardised).
        augment: `(image, seed) -> image`.
        seed: `[SYSTEM] seed`.
        batch_size: the batch size (the last incomplete batch of an epoch is dropped).
        first_batch: the first batch yielded.

    Example:

    ```python
    images, targets = next(iter(training_batches(paths, targets, load, augment, 0, 8, 0)))
    ```
    """
    all_paths = tf.constant(list(paths))
    all_targets = {name: tf.constant(values) for name, values in targets.items()}
    seed_tensor = tf.constant(seed, tf.int64)

    def element(position, index):
        image = augment(load(tf.gather(all_paths, index)), tf.stack([seed_tensor, position]))
        return image, {name: tf.gather(values, index) for name, values in all_targets.items()}

    order = example_order(len(paths), seed=seed, first_position=int(first_batch) * batch_size)
    return (
        order.map(element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def validation_batches(paths: Sequence[str], targets: Mapping[str, np.ndarray], load: ImageFunction,
                       batch_size: int) -> tf.data.Dataset:
    """Repeated batches `(images, {task: target})` of `paths` in their order, without augmentation.

    Example:

    ```python
    images, targets = next(iter(validation_batches(paths, targets, load, batch_size=8)))
    ```
    """
    return (
        tf.data.Dataset.from_tensor_slices((list(paths), dict(targets)))
        .map(lambda path, target: (load(path), target), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .repeat()
        .batch(batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def prediction_batches(paths: Sequence[str], batch_size: int, load: ImageFunction, image_shape: Sequence[int]
                       ) -> tf.data.Dataset:
    """Images of `paths` in order, in batches of nearly equal size (at most `batch_size`).

    Batches are balanced (e.g. 9 images with batch size 4 give 3, 3, 3) because batch-statistics normalisation
    normalises each prediction batch on its own, and a batch of one image would carry no statistics.

    Example:

    ```python
    batches = prediction_batches(paths, 10, load, (200, 200, 3))
    ```
    """
    count = len(paths)
    num_batches = max(1, math.ceil(count / max(1, batch_size)))
    bounds = np.round(np.linspace(0, count, num_batches + 1)).astype(np.int64)
    all_paths = tf.constant(list(paths))
    spec = tf.TensorSpec(list(image_shape), tf.float32)

    def load_batch(start, end):
        return tf.map_fn(load, all_paths[start:end], fn_output_signature=spec)

    return (
        tf.data.Dataset.from_tensor_slices((bounds[:-1], bounds[1:]))
        .map(load_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
    )
