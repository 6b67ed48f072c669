"""Paired 2-D augmentation in TensorFlow: one random transform applied identically to every entry of a sample.

Both functions are graph-compatible (usable inside `tf.data.Dataset.map` and `tf.function`) and draw their random
numbers with stateless ops from an explicit `[2]` integer seed, so a sample's augmentation is reproducible. A
typical pipeline derives the seed from the element index and an epoch seed:

```python
dataset = dataset.enumerate().map(
    lambda i, sample: augment(sample, tf.stack([tf.cast(i, tf.int64), epoch_seed])))
```
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

import tensorflow as tf


def _as_seed(seed) -> tf.Tensor:
    seed = tf.convert_to_tensor(seed)
    if seed.dtype not in (tf.int32, tf.int64):
        seed = tf.cast(seed, tf.int64)
    seed.shape.assert_is_compatible_with([2])
    return seed


def _check_images(images: Mapping[str, tf.Tensor], function: str) -> dict[str, tf.Tensor]:
    if not images:
        raise ValueError(f"{function} needs at least one image. Received: images={dict(images)}")
    tensors = {}
    for name, image in images.items():
        tensor = tf.convert_to_tensor(image)
        if tensor.shape.rank is not None and tensor.shape.rank != 3:
            raise ValueError(
                f"{function}: entry {name!r} has shape {tensor.shape}, expected a [height, width, channels] slice."
            )
        tensors[name] = tensor
    shapes = {name: tuple(t.shape[:2]) for name, t in tensors.items()}
    known = {name: shape for name, shape in shapes.items() if None not in shape}
    if len(set(known.values())) > 1:
        raise ValueError(f"{function}: every entry must have the same height and width. Received: {known}")
    return tensors


def random_scale_rotate(
    images: Mapping[str, tf.Tensor],
    seed,
    scale_range: float = 0.1,
    max_degrees: float = 10.0,
    nearest: Collection[str] = frozenset({"label"}),
    fill_value: float = 0.0,
) -> dict[str, tf.Tensor]:
    """Scales and rotates every entry by the same random amount about the slice centre.

    One scale factor is drawn uniformly from `[1 - scale_range, 1 + scale_range]` and one angle from
    `[-max_degrees, max_degrees]`; the resulting affine map is applied with `tf.raw_ops.ImageProjectiveTransformV3`
    to every entry, with bilinear interpolation except for the names in `nearest` (nearest neighbour, so label maps
    keep their integer codes). Pixels coming from outside the slice are set to `fill_value`.

    Args:
        images: mapping from name to a `[height, width, channels]` tensor; all entries share height and width.
        seed: `[2]` int32 or int64 tensor, the stateless random seed.
        scale_range: float. Maximum relative change of size. Defaults to `0.1` (+-10%).
        max_degrees: float. Maximum rotation in degrees. Defaults to `10.0`.
        nearest: names interpolated by nearest neighbour. Defaults to `{"label"}`.
        fill_value: float. Value of pixels mapped from outside the slice. Defaults to `0.0`.

    Returns:
        A dict with the same keys, shapes and dtypes (bilinear entries with an integer dtype come back as float32).

    Example:

    ```python
    sample = {"mr": mr_slice, "ct": ct_slice, "label": label_slice}
    sample = random_scale_rotate(sample, seed=tf.constant([7, 0]))
    ```
    """
    if scale_range < 0 or scale_range >= 1:
        raise ValueError(f"scale_range must be in [0, 1). Received: scale_range={scale_range}")
    if max_degrees < 0:
        raise ValueError(f"max_degrees must be >= 0. Received: max_degrees={max_degrees}")
    # Names in `nearest` that are absent from this sample are allowed (e.g. a subject without a label map).
    tensors = _check_images(images, "random_scale_rotate")
    seed = _as_seed(seed)

    draws = tf.random.stateless_uniform([2], seed=seed, minval=-1.0, maxval=1.0, dtype=tf.float32)
    scale = 1.0 + draws[0] * float(scale_range)
    angle = draws[1] * float(max_degrees) * (math.pi / 180.0)

    first = next(iter(tensors.values()))
    size = tf.shape(first)[:2]
    height = tf.cast(size[0], tf.float32)
    width = tf.cast(size[1], tf.float32)
    centre_x = (width - 1.0) / 2.0
    centre_y = (height - 1.0) / 2.0
    # The transform maps output pixel (x, y) to input pixel c + R(angle) (p - c) / scale.
    cos = tf.cos(angle) / scale
    sin = tf.sin(angle) / scale
    a0, a1 = cos, -sin
    b0, b1 = sin, cos
    a2 = centre_x - a0 * centre_x - a1 * centre_y
    b2 = centre_y - b0 * centre_x - b1 * centre_y
    transform = tf.reshape(tf.stack([a0, a1, a2, b0, b1, b2, 0.0, 0.0]), [1, 8])

    outputs = {}
    for name, image in tensors.items():
        use_nearest = name in nearest
        work = image
        if not use_nearest and not image.dtype.is_floating:
            work = tf.cast(image, tf.float32)
        transformed = tf.raw_ops.ImageProjectiveTransformV3(
            images=work[tf.newaxis],
            transforms=transform,
            output_shape=size,
            fill_value=tf.constant(fill_value, tf.float32),
            interpolation="NEAREST" if use_nearest else "BILINEAR",
            fill_mode="CONSTANT",
        )[0]
        transformed.set_shape(image.shape)
        outputs[name] = transformed
    return outputs


def random_crop_pad(
    images: Mapping[str, tf.Tensor],
    seed,
    crop: Sequence[int] = (128, 128),
    pad_to: Sequence[int] = (136, 136),
) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    """Takes the same random crop from every entry, then zero-pads it symmetrically.

    A slice smaller than `crop` is first zero-padded (symmetrically) up to `crop`. The crop offset is drawn
    uniformly over all valid positions. The crop is then zero-padded to `pad_to` (extra row/column after when the
    difference is odd). The returned mask is 1 on pixels that came from the slice and 0 on every padded pixel, so
    padding can be masked out of the loss.

    Args:
        images: mapping from name to a `[height, width, channels]` tensor; all entries share height and width.
        seed: `[2]` int32 or int64 tensor, the stateless random seed.
        crop: `(height, width)` of the crop. Defaults to `(128, 128)`.
        pad_to: `(height, width)` after padding; at least `crop`. Defaults to `(136, 136)`.

    Returns:
        `(images, mask)`: the dict of `[pad_to[0], pad_to[1], channels]` tensors (same keys and dtypes) and a
        float32 mask of shape `[pad_to[0], pad_to[1], 1]`.

    Example:

    ```python
    sample, mask = random_crop_pad(sample, seed=tf.constant([7, 1]))
    ```
    """
    crop_h, crop_w = (int(v) for v in crop)
    pad_h, pad_w = (int(v) for v in pad_to)
    if crop_h <= 0 or crop_w <= 0:
        raise ValueError(f"crop must be two positive sizes. Received: crop={tuple(crop)}")
    if pad_h < crop_h or pad_w < crop_w:
        raise ValueError(
            f"pad_to must be at least crop in both dimensions. Received: crop={tuple(crop)}, pad_to={tuple(pad_to)}"
        )
    tensors = _check_images(images, "random_crop_pad")
    seed = _as_seed(seed)

    first = next(iter(tensors.values()))
    size = tf.shape(first)[:2]
    height, width = size[0], size[1]
    pre_h = tf.maximum(crop_h - height, 0)
    pre_w = tf.maximum(crop_w - width, 0)
    pre_padding = [[pre_h // 2, pre_h - pre_h // 2], [pre_w // 2, pre_w - pre_w // 2], [0, 0]]
    range_h = height + pre_h - crop_h
    range_w = width + pre_w - crop_w
    draws = tf.random.stateless_uniform([2], seed=seed, minval=0.0, maxval=1.0, dtype=tf.float32)
    offset_h = tf.minimum(tf.cast(tf.floor(draws[0] * tf.cast(range_h + 1, tf.float32)), tf.int32), range_h)
    offset_w = tf.minimum(tf.cast(tf.floor(draws[1] * tf.cast(range_w + 1, tf.float32)), tf.int32), range_w)
    post_padding = [
        [(pad_h - crop_h) // 2, pad_h - crop_h - (pad_h - crop_h) // 2],
        [(pad_w - crop_w) // 2, pad_w - crop_w - (pad_w - crop_w) // 2],
        [0, 0],
    ]

    def crop_and_pad(tensor: tf.Tensor) -> tf.Tensor:
        padded = tf.pad(tensor, pre_padding)
        cropped = padded[offset_h : offset_h + crop_h, offset_w : offset_w + crop_w, :]
        result = tf.pad(cropped, post_padding)
        result.set_shape([pad_h, pad_w, tensor.shape[-1]])
        return result

    outputs = {name: crop_and_pad(tensor) for name, tensor in tensors.items()}
    mask = crop_and_pad(tf.ones(tf.concat([size, [1]], axis=0), dtype=tf.float32))
    return outputs, mask
