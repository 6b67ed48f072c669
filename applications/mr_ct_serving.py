"""The raw-input side of the exported mr_ct SavedModels: one request = the axial slices of ONE MR volume.

A request holds every axial slice of one volume, as `sfg_run inference` sees it: `[Z, X, Y, 1]` float32 raw MR
intensities (`np.moveaxis(volume, 2, 0)[..., None]` of the NIfTI data), slices of any size. Inside every exported
signature the graph

1. normalises the volume as `MRCTApplication.normalise_mr` does: histogram standardisation with the landmarks saved
   at training time (`[NETWORK] histogram_ref_file`, graph constants) and whitening, with the per-volume statistics
   (percentile landmarks, mean and standard deviation) computed over the request;
2. pads the slices symmetrically with zeros to a multiple of 8 (`mr_ct_data.inference_slices`);
3. predicts, then crops every output back to the request's `X, Y`.

So a request must not mix volumes nor hold part of one: its statistics are the volume's statistics (and, with
batch-statistics normalisation, its slices form one batch; `sfg_run inference` matches it with `[INFERENCE]
batch_size` at least the number of slices).
"""

from __future__ import annotations

import tensorflow as tf

from sfg_keras.data import intensity_tf
from sfg_keras.data.histogram_standardisation import HistogramStandardisation
from sfg_keras.export import ServingPreprocessor

from .mr_ct_data import SLICE_MULTIPLE

REQUEST = (
    "the axial slices of ONE MR volume, [Z, X, Y, 1] raw intensities (np.moveaxis(volume, 2, 0)[..., None]); "
    "normalised over the request, padded to a multiple of 8 and cropped back in the graph"
)


def _margins(size: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """`(before, after)` of the symmetric padding of `size` to a multiple of `SLICE_MULTIPLE` (`pad_slices_to`)."""
    target = (size + SLICE_MULTIPLE - 1) // SLICE_MULTIPLE * SLICE_MULTIPLE
    before = (target - size) // 2
    return before, target - size - before


def volume_preprocessor(standardiser: HistogramStandardisation | None, whitening: bool) -> ServingPreprocessor:
    """The `ServingPreprocessor` of a request holding one volume's raw axial slices `[Z, X, Y, 1]`.

    Args:
        standardiser: the fitted histogram standardisation of training, or None when it is off.
        whitening: bool. Whiten the volume after it (`[NETWORK] whitening`).

    Returns:
        A `ServingPreprocessor` with `input_shape = (None, None, 1)`.

    Example:

    ```python
    preprocessor = volume_preprocessor(HistogramStandardisation.load(path), whitening=True)
    network_input = preprocessor.preprocess(tf.constant(np.moveaxis(mr, 2, 0)[..., None]))
    ```
    """

    def preprocess(images: tf.Tensor) -> tf.Tensor:
        volume = tf.cast(images, tf.float32)
        if standardiser is not None:
            volume = intensity_tf.histogram_standardise(volume, standardiser)
        if whitening:
            volume = intensity_tf.whiten(volume)
        size = tf.shape(volume)[1:3]
        before, after = _margins(size)
        padding = [[0, 0], [before[0], after[0]], [before[1], after[1]], [0, 0]]
        return tf.pad(volume, padding)

    def postprocess(outputs: dict[str, tf.Tensor], images: tf.Tensor) -> dict[str, tf.Tensor]:
        size = tf.shape(images)[1:3]
        before, _ = _margins(size)
        return {
            name: value[:, before[0] : before[0] + size[0], before[1] : before[1] + size[1]]
            if value.shape.rank >= 3
            else value
            for name, value in outputs.items()
        }

    return ServingPreprocessor(preprocess, input_shape=(None, None, 1), postprocess=postprocess, description=REQUEST)
