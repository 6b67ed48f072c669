"""Data preparation: splits, intensity normalisation, augmentation, slicing and stitching.

Importing this package is cheap: each public name is loaded from its module on first use, so TensorFlow (needed by
`augmentation`) and the demo-data `generators` package are imported only when asked for.

Example:

```python
from sfg_keras.data import HistogramStandardisation, make_or_load_split
```
"""

from sfg_keras._lazy_exports import lazy_exports

_EXPORTS = {
    "make_or_load_split": "split",
    "subsample_training": "split",
    "HistogramStandardisation": "histogram_standardisation",
    "mean_plus_mask": "histogram_standardisation",
    "whiten": "intensity",
    "ct_to_target": "intensity",
    "target_to_ct": "intensity",
    "random_scale_rotate": "augmentation",
    "random_crop_pad": "augmentation",
    "volume_to_slices": "slices",
    "slices_to_volume": "slices",
    "padded_size": "slices",
    "pad_slices_to": "slices",
    "crop_slices_from": "slices",
    "batch_examples": "sampler",
    "example_order": "sampler",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
