"""The per-channel image statistics of the age_gender application: fitted on the training images, saved, loaded.

`model_dir/image_statistics.json` holds `{"mean", "std", "num_images", "image_size", "channels"}`: the per-channel mean
and standard deviation (0..255 scale, after resizing) of the training images, fitted from the sums the input checks
cached (`image_checks.ImageDecodeCheck`), so fitting decodes only files changed since. The datasets and the exported
models standardise every image with them.

Example:

```python
statistics = fit_image_statistics(training_paths, cache, ImageDecodeCheck(3, (200, 200)))
atomic_write_json(model_dir / STATISTICS_FILE, statistics)
statistics = load_image_statistics(model_dir / STATISTICS_FILE, check, "run.ini", "IMAGES")
```
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sfg_keras.io.input_checks import ScanCache

from .age_gender_settings import APP_SECTION
from .image_checks import ImageDecodeCheck

STATISTICS_FILE = "image_statistics.json"


def fit_image_statistics(paths: Sequence[str], cache: ScanCache, check: ImageDecodeCheck) -> dict:
    """Per-channel mean and std of the resized images of `paths`, from the sums `check` cached (a file changed since
    is decoded again).

    Example:

    ```python
    fit_image_statistics(["a.png", "b.png"], cache, ImageDecodeCheck(1, (28, 28)))["mean"]  # e.g. [33.1]
    ```
    """
    total = np.zeros(check.channels, np.float64)
    total_sq = np.zeros(check.channels, np.float64)
    count = 0
    for path in paths:
        scan = cache.get_or_scan(path, check.scan_name, check)
        total += np.asarray(scan["sum"], np.float64)
        total_sq += np.asarray(scan["sum_sq"], np.float64)
        count += int(scan["pixels"])
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
    return {
        "mean": mean.tolist(),
        "std": std.tolist(),
        "num_images": len(paths),
        "image_size": list(check.image_size),
        "channels": check.channels,
    }


def load_image_statistics(path: Path, check: ImageDecodeCheck, config_path: str | Path, image_section: str) -> dict:
    """The statistics saved by training, checked to be of images decoded as `check` decodes them.

    Raises:
        FileNotFoundError: the file does not exist (naming the training command).
        ValueError: the statistics are of another channel count or image size (naming the settings).

    Example:

    ```python
    load_image_statistics(model_dir / STATISTICS_FILE, ImageDecodeCheck(3, (200, 200)), "run.ini", "IMAGES")
    ```
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: it is written by training (sfg_run train -c {config_path})")
    statistics = json.loads(path.read_text())
    size = tuple(statistics.get("image_size", ()))
    if statistics.get("channels") != check.channels or size != check.image_size:
        raise ValueError(
            f"{path} holds statistics of {statistics.get('channels')}-channel images of size "
            f"{statistics.get('image_size')}, but the settings ask for {check.channels} channels at "
            f"{list(check.image_size)} ([{APP_SECTION}] channels, [{image_section}] spatial_window_size); "
            "delete the file or restore the settings"
        )
    return statistics
