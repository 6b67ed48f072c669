"""Nyul & Udupa histogram standardisation of MR intensities (NiftyNet's `normalisation = True`).

Reference: L. G. Nyul, J. K. Udupa, X. Zhang, "New variants of a method of MRI scale standardization",
IEEE Transactions on Medical Imaging 19(2), 2000.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from sfg_keras.data.intensity import masked_values

LANDMARK_TYPES = ("percentile", "quartile")
_FILE_TITLE = "# sfg_keras histogram standardisation (Nyul & Udupa)"
_FILE_KEYS = ("cutoff", "landmarks", "scale", "percentiles", "reference")


def mean_plus_mask(array: np.ndarray) -> np.ndarray:
    """Foreground mask `array > mean(array)` (NiftyNet's `mean_plus` foreground type).

    Example:

    ```python
    mask = mean_plus_mask(mr_volume)
    ```
    """
    array = np.asarray(array)
    return array > array.mean()


def _landmark_percentiles(cutoff: tuple[float, float], landmarks: str) -> np.ndarray:
    inner = np.arange(10.0, 91.0, 10.0) if landmarks == "percentile" else np.array([25.0, 50.0, 75.0])
    return np.concatenate([[cutoff[0] * 100.0], inner, [cutoff[1] * 100.0]])


def _strictly_increasing(values: np.ndarray) -> np.ndarray:
    """Nudges repeated landmarks (images with few distinct values) so that the mapping stays a function."""
    values = np.maximum.accumulate(np.asarray(values, dtype=np.float64))
    span = max(float(values[-1] - values[0]), 1.0)
    for i in range(1, len(values)):
        if values[i] <= values[i - 1]:
            values[i] = values[i - 1] + 1e-6 * span
    return values


def _piecewise_linear(array: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Maps `source` landmarks onto `target`, linearly between them and with the end slopes beyond them."""
    mapped = np.interp(array, source, target)
    low_slope = (target[1] - target[0]) / (source[1] - source[0])
    high_slope = (target[-1] - target[-2]) / (source[-1] - source[-2])
    below = array < source[0]
    above = array > source[-1]
    mapped[below] = target[0] + (array[below] - source[0]) * low_slope
    mapped[above] = target[-1] + (array[above] - source[-1]) * high_slope
    return mapped


class HistogramStandardisation:
    """Piecewise-linear intensity standardisation learned from training volumes (Nyul & Udupa).

    For every training volume the intensity landmarks (the percentiles listed below, computed on the foreground)
    are mapped linearly so that the lower cutoff goes to `scale[0]` and the upper cutoff to `scale[1]`; the
    reference landmarks are the mean of the mapped landmarks over the training volumes. `transform` then maps a
    volume's own landmarks onto the reference landmarks, linearly in between and, outside the cutoffs, by
    extending the first and last segments.

    Landmark percentiles: `"percentile"` uses `[100 * cutoff[0], 10, 20, ..., 90, 100 * cutoff[1]]`,
    `"quartile"` uses `[100 * cutoff[0], 25, 50, 75, 100 * cutoff[1]]`.

    Foreground: when no mask is given, the voxels with a value above the volume's mean (NiftyNet's `mean_plus`).
    The mask only selects the voxels used to find landmarks; `transform` maps every voxel.

    Args:
        cutoff: `(low, high)` fractions, the lowest and highest landmarks. Defaults to `(0.01, 0.99)`.
        landmarks: `"percentile"` or `"quartile"`. Defaults to `"percentile"`.
        scale: `(low, high)` values the cutoff landmarks are mapped to. Defaults to `(0, 100)`.

    Example:

    ```python
    standardiser = HistogramStandardisation().fit(training_mr_volumes)
    standardiser.save(model_dir / "histogram_ref_file.txt")
    mr = standardiser.transform(mr_volume)
    ```
    """

    def __init__(
        self,
        cutoff: Sequence[float] = (0.01, 0.99),
        landmarks: str = "percentile",
        scale: Sequence[float] = (0.0, 100.0),
    ):
        if landmarks not in LANDMARK_TYPES:
            raise ValueError(f"landmarks must be one of {list(LANDMARK_TYPES)}. Received: landmarks={landmarks!r}")
        cutoff = tuple(float(c) for c in cutoff)
        inner_low, inner_high = (0.1, 0.9) if landmarks == "percentile" else (0.25, 0.75)
        if len(cutoff) != 2 or not (0.0 <= cutoff[0] < inner_low and inner_high < cutoff[1] <= 1.0):
            raise ValueError(
                f"cutoff must be two fractions with 0 <= low < {inner_low} and {inner_high} < high <= 1 for "
                f"landmarks={landmarks!r}. Received: cutoff={cutoff}"
            )
        scale = tuple(float(s) for s in scale)
        if len(scale) != 2 or not scale[0] < scale[1]:
            raise ValueError(f"scale must be two increasing numbers. Received: scale={scale}")
        self.cutoff = cutoff
        self.landmarks = landmarks
        self.scale = scale
        self.percentiles = _landmark_percentiles(cutoff, landmarks)
        self.reference_landmarks: np.ndarray | None = None

    @property
    def is_fitted(self) -> bool:
        """Whether reference landmarks have been learned or loaded."""
        return self.reference_landmarks is not None

    def image_landmarks(self, array: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """The landmark intensities of one volume (percentiles of its foreground).

        Args:
            array: the volume.
            mask: optional boolean foreground mask of the same shape. Defaults to `None` (`mean_plus`).

        Returns:
            float64 array of landmark intensities, one per entry of `self.percentiles`.
        """
        array = np.asarray(array, dtype=np.float64)
        values = masked_values(
            array,
            mean_plus_mask(array) if mask is None else mask,
            f"The foreground mask of a volume of shape {array.shape} is empty.",
        )
        return np.percentile(values, self.percentiles)

    def fit(
        self,
        volumes: Iterable[np.ndarray],
        masks: Iterable[np.ndarray | None] | None = None,
    ) -> HistogramStandardisation:
        """Learns the reference landmarks from training volumes.

        Args:
            volumes: iterable of arrays (the training split only).
            masks: optional iterable of foreground masks aligned with `volumes` (entries may be `None`).
                Defaults to `None`: `mean_plus` masks.

        Returns:
            `self`, fitted.

        Raises:
            ValueError: if there are no volumes or a volume's foreground has a single intensity between the cutoffs.
        """
        volumes = list(volumes)
        mask_list = [None] * len(volumes) if masks is None else list(masks)
        if not volumes:
            raise ValueError("HistogramStandardisation.fit needs at least one volume. Received: 0 volumes.")
        if len(mask_list) != len(volumes):
            raise ValueError(f"Received {len(volumes)} volumes but {len(mask_list)} masks; expected one mask each.")
        mapped = []
        for index, (volume, mask) in enumerate(zip(volumes, mask_list)):
            landmarks = self.image_landmarks(volume, mask)
            low, high = landmarks[0], landmarks[-1]
            if not high > low:
                raise ValueError(
                    f"Volume {index} (shape {np.shape(volume)}) has the same intensity {low} at both cutoffs "
                    f"{self.cutoff}; histogram standardisation needs a spread of foreground intensities."
                )
            mapped.append(self.scale[0] + (landmarks - low) / (high - low) * (self.scale[1] - self.scale[0]))
        self.reference_landmarks = np.mean(mapped, axis=0)
        return self

    def transform(self, array: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Maps a volume's intensities onto the reference scale.

        Args:
            array: the volume.
            mask: optional boolean foreground mask used to find its landmarks. Defaults to `None` (`mean_plus`).

        Returns:
            float32 array of the same shape.
        """
        if self.reference_landmarks is None:
            raise ValueError("HistogramStandardisation.transform was called before fit() or load().")
        array = np.asarray(array)
        source = _strictly_increasing(self.image_landmarks(array, mask))
        mapped = _piecewise_linear(array.astype(np.float64), source, self.reference_landmarks)
        return mapped.astype(np.float32)

    def save(self, path: str | Path) -> Path:
        """Writes the settings and reference landmarks to a human-readable text file.

        The file has one `key values...` line each for `cutoff`, `landmarks`, `scale`, `percentiles` and
        `reference`; lines starting with `#` are comments.

        Args:
            path: str or `Path`. Parent folders are created.

        Returns:
            The `Path` written.
        """
        if self.reference_landmarks is None:
            raise ValueError("HistogramStandardisation.save was called before fit() or load().")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)

        def numbers(values):
            return " ".join(repr(float(v)) for v in values)

        lines = [
            _FILE_TITLE,
            f"cutoff {numbers(self.cutoff)}",
            f"landmarks {self.landmarks}",
            f"scale {numbers(self.scale)}",
            f"percentiles {numbers(self.percentiles)}",
            f"reference {numbers(self.reference_landmarks)}",
        ]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> HistogramStandardisation:
        """Reads a file written by `save`.

        Args:
            path: str or `Path`.

        Returns:
            A fitted `HistogramStandardisation`.

        Raises:
            FileNotFoundError: if the file does not exist.
            ValueError: naming the file and line for a malformed, missing or inconsistent entry.

        Example:

        ```python
        standardiser = HistogramStandardisation.load(model_dir / "histogram_ref_file.txt")
        ```
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Histogram standardisation file not found: '{path}'.")
        entries: dict[str, tuple[int, list[str]]] = {}
        for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            key, *values = text.split()
            if key not in _FILE_KEYS:
                raise ValueError(
                    f"{path}, line {line_number}: unknown key {key!r}. Expected one of {list(_FILE_KEYS)}."
                )
            if key in entries:
                raise ValueError(f"{path}, line {line_number}: key {key!r} appears twice.")
            entries[key] = (line_number, values)
        missing = [key for key in _FILE_KEYS if key not in entries]
        if missing:
            raise ValueError(f"{path}: missing entries {missing}. Expected the keys {list(_FILE_KEYS)}.")

        def floats(key: str, count: int | None = None) -> np.ndarray:
            line_number, values = entries[key]
            try:
                parsed = np.array([float(v) for v in values], dtype=np.float64)
            except ValueError as error:
                raise ValueError(f"{path}, line {line_number}: {key} expects numbers. Received: {values}") from error
            if (count is not None and parsed.size != count) or parsed.size == 0 or not np.all(np.isfinite(parsed)):
                raise ValueError(
                    f"{path}, line {line_number}: {key} expects {count or 'some'} finite numbers. Received: {values}"
                )
            return parsed

        landmarks_line, landmarks_values = entries["landmarks"]
        if len(landmarks_values) != 1:
            raise ValueError(
                f"{path}, line {landmarks_line}: landmarks expects one of {list(LANDMARK_TYPES)}. "
                f"Received: {landmarks_values}"
            )
        try:
            standardiser = cls(cutoff=floats("cutoff", 2), landmarks=landmarks_values[0], scale=floats("scale", 2))
        except ValueError as error:
            raise ValueError(f"{path}: invalid settings ({error})") from error
        percentiles = floats("percentiles")
        if percentiles.shape != standardiser.percentiles.shape or not np.allclose(
            percentiles, standardiser.percentiles
        ):
            raise ValueError(
                f"{path}, line {entries['percentiles'][0]}: percentiles {percentiles.tolist()} do not match "
                f"cutoff/landmarks, expected {standardiser.percentiles.tolist()}."
            )
        reference = floats("reference", standardiser.percentiles.size)
        if np.any(np.diff(reference) <= 0):
            raise ValueError(
                f"{path}, line {entries['reference'][0]}: reference landmarks must increase. "
                f"Received: {reference.tolist()}"
            )
        standardiser.reference_landmarks = reference
        return standardiser
