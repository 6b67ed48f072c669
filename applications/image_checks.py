"""Checks of the image files of the age_gender application: every file decoded as the datasets decode it.

`ImageDecodeCheck` decodes one file as training does (`tf.io.decode_image` to `[AGE_GENDER] channels`, resized to
`spatial_window_size`) and keeps the per-channel sums the image statistics are fitted from; `check_image_files` runs
it over a set of images (a few threads: decoding releases the GIL), recording every problem. Successful decodes are
cached by path, size and modification time (`ScanCache`), so a second run over unchanged files only reads their
metadata. `describe_image_bytes` says in messages what Pillow sees in a file that does not decode.

Example:

```python
check = ImageDecodeCheck(channels=3, image_size=(200, 200))
problems = InputProblems("images of [IMAGES]")
check_image_files(images, problems, ScanCache(model_dir / SCAN_CACHE_FILE), check)
problems.raise_if_any()
```
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from sfg_keras.io.input_checks import InputCheckFailure, InputProblems, ScanCache

from .labelled_images import LabelledImages

#: The first bytes of the formats TensorFlow's `decode_image` reads.
IMAGE_SIGNATURES = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"GIF8": "GIF", b"BM": "BMP", b"RIFF": "WebP"}


def describe_image_bytes(data: bytes) -> str:
    """What Pillow sees in the bytes of an image file, for messages about a file that does not decode.

    Pillow (installed with matplotlib) reads the header, then decodes the pixels to tell a truncated file from an
    unsupported one; without Pillow only the size and first bytes are described.

    Example:

    ```python
    describe_image_bytes(Path("face.jpg").read_bytes()[:500])
    # "a truncated or corrupt JPEG image (mode 'RGB', 32 x 32 pixels; Pillow: image file is truncated)"
    describe_image_bytes(b"hello")  # "not a recognised image format (5 bytes starting with b'hello')"
    ```
    """
    signature = next((name for magic, name in IMAGE_SIGNATURES.items() if data.startswith(magic)), None)
    unknown = (f"a truncated or corrupt {signature} file (its header cannot be read)" if signature else
               f"not a recognised image format ({len(data)} bytes starting with {data[:8]!r})")
    try:
        from PIL import Image
    except ImportError:
        return unknown
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = f"{image.format} image (mode {image.mode!r}, {image.width} x {image.height} pixels"
            try:
                image.load()
            except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError, ...
                return f"a truncated or corrupt {kind}; Pillow: {error})"
            return f"a {kind})"
    except Exception:  # UnidentifiedImageError and the decoders' own errors
        return unknown


@dataclasses.dataclass(frozen=True)
class ImageDecodeCheck:
    """Decodes one image file as the datasets do; a `ScanCache` scan.

    Attributes:
        channels: the channels images are decoded to (`[AGE_GENDER] channels`).
        image_size: `(height, width)` images are resized to.

    Example:

    ```python
    ImageDecodeCheck(3, (200, 200))("face.jpg")  # {"height": 200, "width": 200, "pixels": 40000, "sum": [...], ...}
    ```
    """

    channels: int
    image_size: tuple[int, int]

    @property
    def expected(self) -> str:
        """What a file must be, for problem messages."""
        return (f"a complete JPEG or PNG image that decodes to {self.channels} channel"
                f"{'s' if self.channels > 1 else ''} ([AGE_GENDER] channels)")

    @property
    def scan_name(self) -> str:
        """The `ScanCache` name of this decode (a decode to other channels or another size is another scan)."""
        height, width = self.image_size
        return f"age_gender-decode-{self.channels}ch-{height}x{width}-v2"

    def __call__(self, path: str) -> dict:
        """Decodes one file: `{"height", "width", "pixels", "sum", "sum_sq"}` (the per-channel sums of the resized
        image, which `image_statistics.fit_image_statistics` adds up without decoding again).

        Raises:
            InputCheckFailure: the file is empty or does not decode (saying what it is).
        """
        data = Path(path).read_bytes()
        if not data:
            raise InputCheckFailure("is empty (0 bytes)", self.expected)
        try:
            image = tf.io.decode_image(data, channels=self.channels, expand_animations=False)
            shape = image.shape
        except tf.errors.OpError as error:
            reason = error.message.split("}} ")[-1].replace(" [Op:DecodeImage]", "").strip()
            raise InputCheckFailure(
                f"cannot be decoded: it is {describe_image_bytes(data)}; TensorFlow: {reason}", self.expected
            ) from None
        resized = tf.image.resize(image, self.image_size, antialias=True)
        values = resized.numpy().astype(np.float64).reshape(-1, self.channels)
        return {"height": int(shape[0]), "width": int(shape[1]), "pixels": int(values.shape[0]),
                "sum": values.sum(axis=0).tolist(), "sum_sq": np.square(values).sum(axis=0).tolist()}


def check_image_files(images: LabelledImages, problems: InputProblems, cache: ScanCache, check: ImageDecodeCheck
                      ) -> None:
    """Records in `problems` every image file of `images` the datasets could not decode.

    A folder, an unreadable or empty file, an unknown format, a truncated or corrupt file, or an image that the
    decoder cannot convert to `check.channels` (e.g. a CMYK JPEG, GIF or BMP for channels = 1) is a problem. Any size
    and any channel count the decoder converts (grey, RGB, RGBA, 16-bit PNG) is accepted: the datasets convert the
    channels and resize. Problems keep the order of the images.

    Example:

    ```python
    check_image_files(images, problems, cache, ImageDecodeCheck(1, (28, 28)))
    ```
    """
    expected = check.expected

    def check_one(subject: str, path: str) -> list:
        found = InputProblems()
        if os.path.isdir(path):
            found.add(path, "is a folder, not an image file", expected, subject)
        elif os.path.exists(path) and not os.access(path, os.R_OK):
            found.add(path, "cannot be read (permission denied)", expected, subject)
        else:
            found.run(path, subject, lambda p: cache.get_or_scan(p, check.scan_name, check), expected)
        return found.items

    # Decoding releases the GIL: a few threads decode in parallel; problems keep the order of the images.
    with concurrent.futures.ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
        for found in pool.map(check_one, images.subjects, images.paths):
            problems.items.extend(found)
