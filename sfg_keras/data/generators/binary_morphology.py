"""Exact numpy binary morphology on batches of 2-D masks: `distance_to_background` and `zhang_suen_thinning`.

The MNIST generator measures stroke thickness with them (twice the mean distance to the background sampled on the
skeleton), without scipy or scikit-image.

Example:

```python
skeleton = zhang_suen_thinning(binary)  # binary: [N, H, W] bool, True for ink
half_widths = distance_to_background(binary, np.nonzero(skeleton))  # one per skeleton pixel
```
"""

from __future__ import annotations

import numpy as np


def _column_distance(binary: np.ndarray) -> np.ndarray:
    """Distance from every pixel of [N, H, W] masks to the nearest background pixel in the same column (H + W if none).

    Two linear scans (down, then up) over the rows.
    """
    _, height, width = binary.shape
    distance = np.empty(binary.shape, dtype=np.float32)
    running = np.full((binary.shape[0], width), np.float32(height + width))
    for i in range(height):
        running = np.where(binary[:, i], running + 1.0, 0.0)
        distance[:, i] = running
    running = np.full((binary.shape[0], width), np.float32(height + width))
    for i in range(height - 1, -1, -1):
        running = np.where(binary[:, i], running + 1.0, 0.0)
        distance[:, i] = np.minimum(distance[:, i], running)
    return distance


def distance_to_background(binary: np.ndarray, points: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Exact Euclidean distance from given pixels to the nearest background pixel centre, for [N, H, W] masks.

    Separable and exact: the distance to the nearest background pixel in each column, then, for each requested pixel
    `(n, i, j)`, the minimum over the row of `(j - k)^2 + column_distance(n, i, k)^2`. Background pixels get 0; pixels
    outside the image do not count as background (as in `scipy.ndimage.distance_transform_edt`).

    Args:
        binary: boolean masks [N, H, W], True for ink.
        points: index arrays `(n, i, j)` of the pixels to evaluate.

    Returns:
        float32 distances, one per requested pixel.

    Example:

    ```python
    binary = np.zeros((1, 5, 5), dtype=bool)
    binary[0, 1:4, 1:4] = True
    distance_to_background(binary, np.nonzero(binary))  # 1 at the rim, 2 at the centre (1, 1, 1, 1, 2, 1, ...)
    ```
    """
    column_distance = _column_distance(binary)
    n, i, j = points
    rows = column_distance[n, i, :]  # [P, W]
    offsets = (np.arange(binary.shape[2])[None, :] - j[:, None]).astype(np.float32)
    return np.sqrt((offsets * offsets + rows * rows).min(axis=1)).astype(np.float32)


def _zhang_suen_tables() -> tuple[np.ndarray, np.ndarray]:
    """Deletion tables of the two Zhang-Suen sub-iterations, indexed by the 8-neighbourhood code.

    Bit k of the code is neighbour P(k + 2) in the usual clockwise numbering starting north: P2 N, P3 NE, P4 E,
    P5 SE, P6 S, P7 SW, P8 W, P9 NW.
    """
    codes = np.arange(256)
    p = [(codes >> k) & 1 for k in range(8)]  # p[0] = P2 ... p[7] = P9
    neighbours = sum(p)
    transitions = sum(((p[k] == 0) & (p[(k + 1) % 8] == 1)).astype(int) for k in range(8))
    common = (neighbours >= 2) & (neighbours <= 6) & (transitions == 1)
    p2, p4, p6, p8 = p[0], p[2], p[4], p[6]
    first = common & (p2 * p4 * p6 == 0) & (p4 * p6 * p8 == 0)
    second = common & (p2 * p4 * p8 == 0) & (p2 * p6 * p8 == 0)
    return first, second


_ZHANG_SUEN_TABLES = _zhang_suen_tables()


def zhang_suen_thinning(binary: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning of [N, H, W] boolean masks to one-pixel-wide skeletons (vectorised over the batch).

    Both sub-iterations are repeated until no pixel of an image changes; pixels outside the image count as background.

    Args:
        binary: boolean masks [N, H, W], True for ink.

    Returns:
        Boolean skeletons [N, H, W], a subset of `binary`.

    Example:

    ```python
    bar = np.zeros((1, 20, 20), dtype=bool)
    bar[0, 3:17, 7:12] = True
    zhang_suen_thinning(bar)[0].sum(axis=1)  # one pixel per row along the bar
    ```
    """
    image = np.pad(binary, ((0, 0), (1, 1), (1, 1))).astype(np.uint8)
    shifts = (
        (slice(None, -2), slice(1, -1)),  # P2 north
        (slice(None, -2), slice(2, None)),  # P3 north-east
        (slice(1, -1), slice(2, None)),  # P4 east
        (slice(2, None), slice(2, None)),  # P5 south-east
        (slice(2, None), slice(1, -1)),  # P6 south
        (slice(2, None), slice(None, -2)),  # P7 south-west
        (slice(1, -1), slice(None, -2)),  # P8 west
        (slice(None, -2), slice(None, -2)),  # P9 north-west
    )
    active = np.arange(image.shape[0])
    while active.size:
        changed = np.zeros(active.size, dtype=bool)
        for table in _ZHANG_SUEN_TABLES:
            work = image[active]
            code = np.zeros(work[:, 1:-1, 1:-1].shape, dtype=np.uint8)
            for bit, (rows, cols) in enumerate(shifts):
                code |= work[:, rows, cols] << np.uint8(bit)
            remove = table[code] & (work[:, 1:-1, 1:-1] == 1)
            work[:, 1:-1, 1:-1][remove] = 0
            image[active] = work
            changed |= remove.any(axis=(1, 2))
        active = active[changed]
    return image[:, 1:-1, 1:-1].astype(bool)
