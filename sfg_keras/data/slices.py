"""Axial slicing of volumes and stitching of slice predictions back into volumes (numpy).

Axial slices are taken along the third voxel axis of the array (`Z` in NIfTI's `[X, Y, Z]` order). For
whole-slice inference with a network that needs sizes divisible by 8, pad the slices to the next multiple, predict,
crop back and stitch:

```python
slices = volume_to_slices(mr.data)                     # [Z, X, Y]
size = padded_size(slices.shape[1:3], multiple=8)
prediction = model.predict(pad_slices_to(slices, size)[..., None])[..., 0]
volume = slices_to_volume(crop_slices_from(prediction, slices.shape[1:3]))
```
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def volume_to_slices(volume: np.ndarray) -> np.ndarray:
    """Splits a volume `[X, Y, Z]` or `[X, Y, Z, C]` into axial slices `[Z, X, Y]` or `[Z, X, Y, C]`.

    Example:

    ```python
    slices = volume_to_slices(np.zeros((64, 64, 20)))  # shape (20, 64, 64)
    ```
    """
    volume = np.asarray(volume)
    if volume.ndim not in (3, 4):
        raise ValueError(f"volume must have shape [X, Y, Z] or [X, Y, Z, C]. Received shape: {volume.shape}")
    return np.moveaxis(volume, 2, 0)


def slices_to_volume(slices: np.ndarray) -> np.ndarray:
    """Stacks axial slices `[Z, X, Y(, C)]` back into a volume `[X, Y, Z(, C)]`; the inverse of `volume_to_slices`.

    Example:

    ```python
    volume = slices_to_volume(predicted_slices)
    ```
    """
    slices = np.asarray(slices)
    if slices.ndim not in (3, 4):
        raise ValueError(f"slices must have shape [Z, X, Y] or [Z, X, Y, C]. Received shape: {slices.shape}")
    return np.moveaxis(slices, 0, 2)


def padded_size(size: Sequence[int], multiple: int = 8) -> tuple[int, int]:
    """The smallest `(height, width)` at least `size` with both sides divisible by `multiple`.

    Example:

    ```python
    padded_size((181, 217), multiple=8)  # (184, 224)
    ```
    """
    if multiple < 1:
        raise ValueError(f"multiple must be a positive integer. Received: multiple={multiple}")
    height, width = (int(s) for s in size)
    return (-(-height // multiple) * multiple, -(-width // multiple) * multiple)


def _symmetric_margins(size: int, target: int) -> tuple[int, int]:
    before = (target - size) // 2
    return before, target - size - before


def pad_slices_to(slices: np.ndarray, size: Sequence[int], constant_value: float = 0.0) -> np.ndarray:
    """Pads slices `[N, H, W(, C)]` symmetrically with a constant to `[N, size[0], size[1](, C)]`.

    The extra row or column of an odd difference goes after. `crop_slices_from` undoes it.

    Args:
        slices: array `[N, H, W]` or `[N, H, W, C]`.
        size: target `(height, width)`, at least `(H, W)`.
        constant_value: float. Fill value. Defaults to `0.0`.

    Returns:
        The padded array, same dtype.

    Example:

    ```python
    padded = pad_slices_to(slices, padded_size(slices.shape[1:3], 8))
    ```
    """
    slices, (height, width), (target_h, target_w) = _slice_stack(slices, "slices", size)
    if target_h < height or target_w < width:
        raise ValueError(f"Cannot pad slices of size {(height, width)} to the smaller size {(target_h, target_w)}.")
    padding = [(0, 0), _symmetric_margins(height, target_h), _symmetric_margins(width, target_w)]
    padding += [(0, 0)] * (slices.ndim - 3)
    return np.pad(slices, padding, mode="constant", constant_values=constant_value)


def _slice_stack(array, name: str, size: Sequence[int]) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """`(array, its (height, width), size as ints)` after checking `array` is `[N, H, W]` or `[N, H, W, C]`."""
    array = np.asarray(array)
    if array.ndim not in (3, 4):
        raise ValueError(f"{name} must have shape [N, H, W] or [N, H, W, C]. Received shape: {array.shape}")
    return array, tuple(int(s) for s in array.shape[1:3]), tuple(int(s) for s in size)


def crop_slices_from(padded: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Crops the centre `size` out of slices padded by `pad_slices_to` (its exact inverse).

    Args:
        padded: array `[N, H', W']` or `[N, H', W', C]`.
        size: the original `(height, width)`.

    Returns:
        Array `[N, size[0], size[1](, C)]`.

    Example:

    ```python
    prediction = crop_slices_from(padded_prediction, slices.shape[1:3])
    ```
    """
    padded, (padded_h, padded_w), (height, width) = _slice_stack(padded, "padded", size)
    if height > padded_h or width > padded_w:
        raise ValueError(f"Cannot crop size {(height, width)} out of slices of size {(padded_h, padded_w)}.")
    top, _ = _symmetric_margins(height, padded_h)
    left, _ = _symmetric_margins(width, padded_w)
    return padded[:, top : top + height, left : left + width]
