"""The `tf.data` pipelines of the mr_ct application: augmented training patches and fixed validation patches.

Training (`training_batches`): every axial slice of the training subjects is held in memory; the order is
`sfg_keras.data.example_order`, so batch `k` depends only on `[SYSTEM] seed` and `k`, and each element is augmented
by `SliceAugmentation`, seeded by `([SYSTEM] seed, position)`: a random flip along each configured axis, a random
scaling and rotation (nearest neighbour for labels and the validity mask; the MR is rotated relative to its darkest
value so that pixels entering from outside look like air), a random `patch_size` crop and zero padding to
`padded_size`. Padding and pixels rotated in from outside the slice are masked out of the losses: CT targets become
NaN, labels -1.

Validation (`validation_batches`): the validation slices in a seeded order, centre-cropped to `patch_size` and padded
to `padded_size` (masked), repeated.

Example:

```python
augment = SliceAugmentation(flip_axes=(0,), scale_range=0.1, max_degrees=10.0, patch_size=(128, 128),
                            padded_size=(136, 136), regression=frozenset({"ct"}), segmentation=frozenset({"organs"}))
batches = training_batches(app.training_data, augment, seed=0, batch_size=8, first_batch=0)
```
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from sfg_keras.config import TaskSpec
from sfg_keras.data import example_order, random_crop_pad, random_scale_rotate

from .mr_ct_data import SliceData, centre_patch, fill_value


@dataclasses.dataclass(frozen=True)
class SliceAugmentation:
    """The augmentation of one training slice `[H, W, 1]` and its targets.

    Attributes:
        flip_axes: the axes (0, 1) a slice is randomly flipped along, sorted.
        scale_range: the largest relative scaling (0: none).
        max_degrees: the largest rotation in degrees (0: none).
        patch_size: `(height, width)` of the random crop.
        padded_size: `(height, width)` the crop is zero-padded to.
        regression: the names of the regression targets (masked with NaN).
        segmentation: the names of the segmentation targets (interpolated by nearest neighbour, masked with -1).

    Example:

    ```python
    image, targets = SliceAugmentation((), 0.0, 0.0, (4, 4), (8, 8), frozenset({"ct"}), frozenset())(
        tf.constant(0, tf.int64), tf.zeros([6, 6, 1]), {"ct": tf.zeros([6, 6, 1])}, tf.constant(1, tf.int64))
    ```
    """

    flip_axes: tuple[int, ...]
    scale_range: float
    max_degrees: float
    patch_size: tuple[int, int]
    padded_size: tuple[int, int]
    regression: frozenset[str]
    segmentation: frozenset[str]

    def __call__(self, position: tf.Tensor, image: tf.Tensor, targets: dict[str, tf.Tensor], seed: tf.Tensor
                 ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """The augmented `(image [H', W', 1], {task: target})` of the element at global `position`.

        Regression targets are `[H', W', 1]` float32 (NaN = masked), segmentation targets `[H', W']` int32
        (-1 = masked), with `(H', W') = padded_size`.
        """
        seeds = tf.random.experimental.stateless_split(tf.stack([seed, position]), 3)
        entries = {"image": image, "valid": tf.ones_like(image)}
        entries.update({f"task_{name}": target for name, target in targets.items()})
        if self.flip_axes:
            draws = tf.random.stateless_uniform([len(self.flip_axes)], seed=seeds[2])
            for number, axis in enumerate(self.flip_axes):
                flip = draws[number] < 0.5
                entries = {
                    key: tf.cond(flip, lambda v=value, a=axis: tf.reverse(v, [a]), lambda v=value: v)
                    for key, value in entries.items()
                }
        if self.scale_range > 0 or self.max_degrees > 0:
            # Rotate the MR relative to its darkest value, so that pixels entering from outside look like air.
            background = tf.reduce_min(entries["image"])
            entries["image"] = entries["image"] - background
            nearest = {"valid"} | {f"task_{name}" for name in self.segmentation}
            entries = random_scale_rotate(entries, seeds[0], scale_range=self.scale_range,
                                          max_degrees=self.max_degrees, nearest=nearest)
            entries["image"] = entries["image"] + background
        entries, mask = random_crop_pad(entries, seeds[1], crop=self.patch_size, pad_to=self.padded_size)
        keep = (mask > 0.5) & (entries["valid"] > 0.5)
        outputs = {}
        for name in targets:
            value = entries[f"task_{name}"]
            if name in self.regression:
                outputs[name] = tf.where(keep, value, tf.fill(tf.shape(value), np.float32(np.nan)))
            else:
                outputs[name] = tf.cast(tf.where(keep, value, -1.0), tf.int32)[..., 0]
        return entries["image"], outputs


def training_batches(data: SliceData, augment: SliceAugmentation, seed: int, batch_size: int, first_batch: int
                     ) -> tf.data.Dataset:
    """Infinite batches of augmented patches of `data` from batch `first_batch` on.

    Elements are `(mr [B, H, W, 1], {task: target})`: regression targets `[B, H, W, 1]` float32 (NaN = masked),
    segmentation targets `[B, H, W]` int32 (-1 = masked). Batch `k` depends only on `seed` and `k`:
    `training_batches(..., first_batch=k)` yields the batches `k, k+1, ...` of `first_batch=0`.

    Example:

    ```python
    images, targets = next(iter(training_batches(data, augment, seed=0, batch_size=8, first_batch=0)))
    ```
    """
    images = tf.constant(data.images)
    targets = {name: tf.constant(values) for name, values in data.targets.items()}
    seed_tensor = tf.constant(seed, tf.int64)

    def element(position, index):
        target = {name: tf.gather(values, index) for name, values in targets.items()}
        return augment(position, tf.gather(images, index), target, seed_tensor)

    order = example_order(len(data), seed=seed, first_position=int(first_batch) * batch_size)
    dataset = order.map(element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def validation_batches(data: SliceData, tasks: Sequence[TaskSpec], seed: int, batch_size: int,
                       patch_size: Sequence[int], padded_size: Sequence[int]) -> tf.data.Dataset:
    """The validation slices of `data` in a fixed (seeded) order, centre-cropped to `patch_size` and padded to
    `padded_size` (masked as in training), batched and repeated.

    Example:

    ```python
    images, targets = next(iter(validation_batches(data, tasks, seed=0, batch_size=8, patch_size=(128, 128),
                                                   padded_size=(136, 136))))
    ```
    """
    order = np.random.default_rng(seed).permutation(len(data))
    images = centre_patch(data.images[order], 0.0, patch_size, padded_size)
    targets = {}
    for task in tasks:
        target = centre_patch(data.targets[task.name][order], fill_value(task), patch_size, padded_size)
        targets[task.name] = target if task.type == "regression" else target[..., 0].astype(np.int32)
    dataset = tf.data.Dataset.from_tensor_slices((images, targets))
    return dataset.batch(batch_size).repeat().prefetch(tf.data.AUTOTUNE)
