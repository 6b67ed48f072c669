"""TensorFlow versions of the MR intensity normalisation, for graphs that must reproduce the numpy pipeline.

`histogram_standardise` is `HistogramStandardisation.transform` (`mean_plus` foreground, linearly interpolated
percentiles as `np.percentile`, strictly increasing source landmarks, piecewise-linear mapping with the end slopes
outside the cutoffs) and `whiten` is `sfg_keras.data.intensity.whiten` without a mask; both compute in float64 and
return float32 like the numpy functions, so an exported SavedModel normalises a volume as training did (measured
agreement: float32 rounding). Statistics are taken over the whole tensor they receive: pass one volume.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from sfg_keras.data.histogram_standardisation import HistogramStandardisation


def percentiles(values: tf.Tensor, q: np.ndarray) -> tf.Tensor:
    """`np.percentile(values, q)` (linear method) of a 1-D float64 tensor, as float64.

    Example:

    ```python
    percentiles(tf.constant([1.0, 2.0, 3.0, 4.0], tf.float64), np.array([50.0]))  # [2.5]
    ```
    """
    ordered = tf.sort(values)
    count = tf.cast(tf.size(ordered), tf.float64)
    quantiles = tf.constant(np.asarray(q, np.float64) / 100.0)
    # numpy's virtual index for alpha = beta = 1, written as numpy computes it.
    position = count * quantiles + (1.0 + quantiles * -1.0) - 1.0
    below = tf.floor(position)
    gamma = position - below
    last = tf.cast(tf.size(ordered) - 1, tf.int64)
    low = tf.clip_by_value(tf.cast(below, tf.int64), 0, last)
    high = tf.clip_by_value(tf.cast(below, tf.int64) + 1, 0, last)
    a, b = tf.gather(ordered, low), tf.gather(ordered, high)
    difference = b - a
    return tf.where(gamma >= 0.5, b - difference * (1.0 - gamma), a + difference * gamma)


def _strictly_increasing(landmarks: tf.Tensor, count: int) -> tf.Tensor:
    """`histogram_standardisation._strictly_increasing` for a tensor of `count` landmarks."""
    values = [landmarks[0]]
    for i in range(1, count):
        values.append(tf.maximum(values[-1], landmarks[i]))
    span = tf.maximum(values[-1] - values[0], 1.0)
    for i in range(1, count):
        values[i] = tf.where(values[i] <= values[i - 1], values[i - 1] + 1e-6 * span, values[i])
    return tf.stack(values)


def _piecewise_linear(x: tf.Tensor, source: tf.Tensor, target: np.ndarray) -> tf.Tensor:
    """`histogram_standardisation._piecewise_linear` (`np.interp` inside, end slopes outside) of a 1-D tensor."""
    target = tf.constant(np.asarray(target, np.float64))
    count = int(target.shape[0])
    segment = tf.clip_by_value(tf.searchsorted(source, x, side="right") - 1, 0, count - 2)
    x0, x1 = tf.gather(source, segment), tf.gather(source, segment + 1)
    y0, y1 = tf.gather(target, segment), tf.gather(target, segment + 1)
    inside = (y1 - y0) / (x1 - x0) * (x - x0) + y0
    low_slope = (target[1] - target[0]) / (source[1] - source[0])
    high_slope = (target[-1] - target[-2]) / (source[-1] - source[-2])
    mapped = tf.where(x < source[0], target[0] + (x - source[0]) * low_slope, inside)
    return tf.where(x > source[-1], target[-1] + (x - source[-1]) * high_slope, mapped)


def histogram_standardise(volume: tf.Tensor, standardiser: HistogramStandardisation) -> tf.Tensor:
    """`standardiser.transform(volume)` in TensorFlow: the landmarks of `volume` (every voxel of the tensor, one
    volume) mapped onto the fitted reference landmarks, which become graph constants.

    Args:
        volume: a tensor of any shape holding one volume (e.g. its axial slices `[Z, X, Y, 1]`).
        standardiser: a fitted `HistogramStandardisation`.

    Returns:
        float32 tensor of the same shape.

    Raises:
        ValueError: `standardiser` is not fitted.
        tf.errors.InvalidArgumentError: (when run) the volume has no voxel above its mean (a constant volume).

    Example:

    ```python
    standardiser = HistogramStandardisation.load("model_dir/histogram_ref_file.txt")
    histogram_standardise(tf.constant(mr_slices), standardiser)
    ```
    """
    if not standardiser.is_fitted:
        raise ValueError(f"`standardiser` must be fitted. Received: standardiser={standardiser!r} without landmarks")
    array = tf.cast(volume, tf.float64)
    flat = tf.reshape(array, [-1])
    foreground = tf.boolean_mask(flat, flat > tf.reduce_mean(flat))
    check = tf.debugging.assert_positive(
        tf.size(foreground), message="histogram standardisation: the volume has no voxel above its mean"
    )
    with tf.control_dependencies([check]):
        landmarks = percentiles(foreground, standardiser.percentiles)
    source = _strictly_increasing(landmarks, int(standardiser.percentiles.size))
    mapped = _piecewise_linear(flat, source, standardiser.reference_landmarks)
    return tf.reshape(tf.cast(mapped, tf.float32), tf.shape(volume))


def whiten(volume: tf.Tensor, epsilon: float = 1e-8) -> tf.Tensor:
    """`sfg_keras.data.intensity.whiten(volume)` in TensorFlow: zero mean and unit variance over every voxel of the
    tensor (one volume); a constant volume is only centred.

    Example:

    ```python
    whiten(histogram_standardise(slices, standardiser))
    ```
    """
    array = tf.cast(volume, tf.float64)
    mean = tf.reduce_mean(array)
    std = tf.sqrt(tf.reduce_mean(tf.square(array - mean)))
    scale = tf.where(std >= epsilon, std, tf.constant(1.0, tf.float64))
    return tf.cast((array - mean) / scale, tf.float32)
