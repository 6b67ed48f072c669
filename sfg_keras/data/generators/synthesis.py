"""MR phantom physics shared by the pelvis and head phantoms: smooth random fields, bias fields and Rician noise.

Every function draws from the `numpy.random.Generator` it is given, in a fixed order, so a phantom rendered from the
same seed is identical from run to run.

Example:

```python
rng = np.random.default_rng(0)
coords = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in (32, 32, 8)), indexing="ij", sparse=True)
signal = 0.5 + 0.25 * smooth_random_field(rng, coords)  # a smooth tissue signal in [0.25, 0.75]
mr = add_rician_noise(rng, 1000.0 * signal * mr_bias_field(rng, coords), sigma=20.0)
```
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def smooth_random_field(
    rng: np.random.Generator, coords: Sequence[np.ndarray], num_waves: int = 6, max_frequency: float = 1.0
) -> np.ndarray:
    """A smooth random field in [-1, 1]: a sum of random plane waves over normalised coordinates.

    Args:
        rng: random generator.
        coords: broadcastable coordinate arrays (one per axis), roughly in [-1, 1].
        num_waves: number of plane waves.
        max_frequency: the highest frequency in cycles per unit of the coordinates.

    Returns:
        The field, broadcast to the coordinates' shape, scaled so that its largest magnitude is 1.

    Example:

    ```python
    x, y = np.meshgrid(np.linspace(-1, 1, 64), np.linspace(-1, 1, 64), indexing="ij", sparse=True)
    texture = 0.5 + 0.5 * smooth_random_field(np.random.default_rng(0), (x, y), num_waves=12, max_frequency=8.0)
    ```
    """
    shape = np.broadcast_shapes(*(np.shape(c) for c in coords))
    field = np.zeros(shape, dtype=np.float32)
    for _ in range(num_waves):
        direction = rng.normal(size=len(coords))
        direction /= np.linalg.norm(direction) + 1e-12
        frequency = rng.uniform(0.3, 1.0) * max_frequency
        phase = rng.uniform(0.0, 2.0 * np.pi)
        weight = rng.uniform(0.5, 1.0)
        argument = sum(float(d) * c for d, c in zip(direction, coords))
        field += np.float32(weight) * np.cos(np.float32(2.0 * np.pi * frequency) * argument + np.float32(phase))
    return field / max(float(np.abs(field).max()), 1e-6)


def mr_bias_field(rng: np.random.Generator, coords: Sequence[np.ndarray], strength: float = 0.2) -> np.ndarray:
    """A smooth multiplicative MR bias field: a random polynomial of degree 2 mapped to [1 - strength, 1 + strength].

    The polynomial is centred and scaled to [-1, 1], then multiplied by a random fraction (0.5 to 1) of `strength`.

    Args:
        rng: random generator.
        coords: broadcastable normalised coordinate arrays (x, y, z), roughly in [-1, 1].
        strength: the largest relative deviation from 1.

    Returns:
        The field (float32), broadcast to the coordinates' shape.

    Example:

    ```python
    coords = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in (32, 32, 8)), indexing="ij", sparse=True)
    field = mr_bias_field(np.random.default_rng(0), coords, strength=0.2)  # values in [0.8, 1.2]
    ```
    """
    x, y, z = coords
    terms = [x, y, z, x * x, y * y, z * z, x * y, x * z, y * z]
    poly = sum(np.float32(rng.normal()) * t for t in terms)
    poly = np.broadcast_to(poly, np.broadcast_shapes(*(np.shape(c) for c in coords))).astype(np.float32)
    poly -= poly.mean()
    poly /= max(float(np.abs(poly).max()), 1e-6)
    return 1.0 + np.float32(strength * rng.uniform(0.5, 1.0)) * poly


def add_rician_noise(rng: np.random.Generator, signal: np.ndarray, sigma: float) -> np.ndarray:
    """The magnitude of a complex signal with Gaussian noise on both channels (Rician noise); never negative.

    Args:
        rng: random generator.
        signal: the noise-free magnitude image (the real channel; the imaginary channel is 0).
        sigma: the standard deviation of the Gaussian noise on each channel, in the unit of `signal`.

    Returns:
        `sqrt((signal + n1)^2 + n2^2)` as float32, with the shape of `signal`.

    Example:

    ```python
    noisy = add_rician_noise(np.random.default_rng(0), np.full((4, 4), 100.0, np.float32), sigma=20.0)
    ```
    """
    real = signal + rng.normal(0.0, sigma, size=signal.shape).astype(np.float32)
    imaginary = rng.normal(0.0, sigma, size=signal.shape).astype(np.float32)
    return np.sqrt(real * real + imaginary * imaginary).astype(np.float32)
