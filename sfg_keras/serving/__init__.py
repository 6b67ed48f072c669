"""Serving: what an exported model does with a raw request.

* `ServingModel`: checks the request in the graph, normalises it (`ServingPreprocessor`), predicts (Monte-Carlo,
  MAP, expected, or the compact MAP network) and returns outputs in physical units and range. Every exported
  SavedModel signature and `.keras` file is one (`sfg_keras.export`).
* `ServingPreprocessor` (abstract), `VolumePreprocessor` (one MR volume's raw slices), `ImagePreprocessor` (decoded
  pixels): serialisable layers holding the training-set normalisation.
* `check_request`: the in-graph request checks (rank, channels, empty, non-finite).

Example:

```python
import keras
import sfg_keras  # registers the classes

served = keras.saving.load_model("model_dir/export/sfg_compact-1.keras")   # raw MR slices in, HU out
served(np.moveaxis(mr_volume, 2, 0)[..., None])["ct_mean"]
```
"""

from sfg_keras.serving.preprocessors import ImagePreprocessor, ServingPreprocessor, VolumePreprocessor
from sfg_keras.serving.request_checks import check_request, request_shape_text
from sfg_keras.serving.serving_model import INPUT_NAME, ServingModel

__all__ = [
    "INPUT_NAME",
    "ImagePreprocessor",
    "ServingModel",
    "ServingPreprocessor",
    "VolumePreprocessor",
    "check_request",
    "request_shape_text",
]
