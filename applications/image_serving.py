"""The raw-input side of the exported age_gender models: one request = decoded pixels of one or more images.

A request holds raw decoded pixels, `[N, h, w, channels]` with values 0..255 (uint8 pixels sent as numbers), any
`h, w` (one size per request). Inside every exported signature and `.keras` file (`sfg_keras.serving.ImagePreprocessor`)
the images are resized to `spatial_window_size` exactly as the datasets decode them (`tf.image.resize(...,
antialias=True)`) and standardised with the training statistics of `model_dir/image_statistics.json` (then per image
with `[NETWORK] whitening`), saved in the layer's config as constants.

Example:

```python
preprocessor = image_preprocessor(statistics, (200, 200), whitening=False)
pixels = tf.io.decode_image(tf.io.read_file("face.jpg"), channels=3)[None]
preprocessor.preprocess(pixels)  # what the network was trained on
```
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sfg_keras.serving import ImagePreprocessor


def image_preprocessor(statistics: Mapping, image_size: tuple[int, int], whitening: bool) -> ImagePreprocessor:
    """The `ImagePreprocessor` (named `images`) that resizes raw pixels to `image_size` and standardises them with
    the training `statistics` (`{"mean", "std"}` per channel), then per image with `whitening`.

    Example:

    ```python
    image_preprocessor({"mean": [120.0], "std": [60.0]}, (28, 28), whitening=False)
    ```
    """
    from sfg_keras.serving import ImagePreprocessor

    return ImagePreprocessor(image_size, mean=statistics["mean"], std=statistics["std"], whitening=whitening,
                             name="images")
