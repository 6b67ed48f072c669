"""The raw-input side of the exported mr_ct models: one request = the axial slices of ONE MR volume.

A request holds every axial slice of one volume, as `sfg_run inference` sees it: `[Z, X, Y, 1]` float32 raw MR
intensities (`np.moveaxis(volume, 2, 0)[..., None]` of the NIfTI data), slices of any size. Inside every exported
signature and `.keras` file (`sfg_keras.serving.VolumePreprocessor`) the graph

1. normalises the volume as `MRCTApplication.normalise_mr` does: histogram standardisation with the landmarks saved
   at training time (`[NETWORK] histogram_ref_file`, saved in the layer's config) and whitening, with the per-volume
   statistics (percentile landmarks, mean and standard deviation) computed over the request;
2. pads the slices symmetrically with zeros to a multiple of 8 (`mr_ct_data.inference_slices`);
3. predicts, then crops every output back to the request's `X, Y`; the synthetic CT is returned in HU, bounded to
   `[INFERENCE] output_bounds` (default -1024..3071 HU).

So a request must not mix volumes nor hold part of one: its statistics are the volume's statistics (and, with
batch-statistics normalisation, its slices form one batch; `sfg_run inference` matches it with `[INFERENCE]
batch_size` at least the number of slices).
"""

from __future__ import annotations

from sfg_keras.data.histogram_standardisation import HistogramStandardisation
from sfg_keras.serving import VolumePreprocessor

from .mr_ct_data import SLICE_MULTIPLE

REQUEST = (
    "the axial slices of ONE MR volume, [Z, X, Y, 1] raw intensities (np.moveaxis(volume, 2, 0)[..., None]), any "
    f"slice size; normalised over the request, padded to a multiple of {SLICE_MULTIPLE} and cropped back in the graph"
)


def volume_preprocessor(standardiser: HistogramStandardisation | None, whitening: bool) -> VolumePreprocessor:
    """The serving preprocessor of a request holding one MR volume's raw axial slices `[Z, X, Y, 1]`.

    Args:
        standardiser: the fitted histogram standardisation of training, or None when it is off.
        whitening: bool. Whiten the volume after it (`[NETWORK] whitening`).

    Returns:
        A `sfg_keras.serving.VolumePreprocessor` with `request_shape = (None, None, 1)`.

    Example:

    ```python
    preprocessor = volume_preprocessor(HistogramStandardisation.load(path), whitening=True)
    network_input = preprocessor.preprocess(np.moveaxis(mr, 2, 0)[..., None])
    ```
    """
    return VolumePreprocessor.from_standardiser(
        standardiser, whitening=whitening, multiple=SLICE_MULTIPLE, description=REQUEST, name="mr_volume"
    )
