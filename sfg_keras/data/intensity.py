"""Intensity transforms: whitening, and the CT Hounsfield <-> network target mapping of the mr_ct application."""

from __future__ import annotations

import numpy as np

CT_SCALE = 1024.0


def masked_values(array: np.ndarray, mask: np.ndarray | None, empty_message: str) -> np.ndarray:
    """The voxels of `array` selected by the boolean `mask` (all voxels when `mask` is None).

    Raises:
        ValueError: the mask's shape differs from the volume's, or it selects no voxel (`empty_message`).

    Example:

    ```python
    foreground = masked_values(mr, mr > mr.mean(), "the MR has no foreground")
    ```
    """
    if mask is None:
        values = np.ravel(array)
    else:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != array.shape:
            raise ValueError(f"mask has shape {mask.shape}, expected the volume's shape {array.shape}.")
        values = array[mask]
    if values.size == 0:
        raise ValueError(empty_message)
    return values


def whiten(array: np.ndarray, mask: np.ndarray | None = None, epsilon: float = 1e-8) -> np.ndarray:
    """Shifts and scales a volume to zero mean and unit variance (NiftyNet's `whitening`).

    The mean and standard deviation are computed over the foreground `mask` (all voxels when `mask` is `None`)
    and applied to every voxel. A constant foreground (standard deviation below `epsilon`) is only centred.

    Args:
        array: the volume.
        mask: optional boolean array of the same shape selecting the voxels whose statistics are used.
            Defaults to `None`.
        epsilon: float. Smallest standard deviation that is divided by. Defaults to `1e-8`.

    Returns:
        float32 array of the same shape.

    Example:

    ```python
    mr = whiten(standardiser.transform(mr), mask=mr > mr.mean())
    ```
    """
    array = np.asarray(array, dtype=np.float64)
    values = masked_values(array, mask, f"Cannot whiten a volume of shape {array.shape}: the mask selects no voxel.")
    mean = values.mean()
    std = values.std()
    scale = std if std >= epsilon else 1.0
    return ((array - mean) / scale).astype(np.float32)


def ct_to_target(hu):
    """Maps CT Hounsfield units to the network's regression target, `hu / 1024 + 1` (air -> ~0, water -> 1).

    Works on numpy arrays, Python numbers and TensorFlow tensors.

    Example:

    ```python
    target = ct_to_target(ct_volume.data)
    ```
    """
    return hu / CT_SCALE + 1.0


def target_to_ct(y):
    """Inverse of `ct_to_target`: `(y - 1) * 1024` Hounsfield units.

    Example:

    ```python
    synthetic_hu = target_to_ct(prediction)
    ```
    """
    return (y - 1.0) * CT_SCALE
