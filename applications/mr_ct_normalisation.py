"""`MRNormalisation`: how the mr_ct application normalises MR volumes, and the files training saves it in.

Histogram standardisation (`[NETWORK] normalisation`; landmarks learned on the training subjects when training starts
from scratch, saved to `[NETWORK] histogram_ref_file` and loaded, never refitted, afterwards), then zero mean and
unit variance per volume (`[NETWORK] whitening`). The training statistics (`model_dir/training_statistics.json`,
e.g. the mean training CT of the evaluation's reference) are saved next to it. Files are written atomically.

Example:

```python
normalisation = MRNormalisation.from_settings(settings)
standardiser = normalisation.fit_standardiser([volume.data for volume in training_mr])
normalisation.save(standardiser, statistics)
network_input = normalisation.normalise(mr.data, normalisation.saved_standardiser())
```
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sfg_keras.config import Settings
from sfg_keras.data import HistogramStandardisation, whiten
from sfg_keras.io import atomic_path, atomic_write_json

TRAINING_STATISTICS_FILE = "training_statistics.json"


@dataclasses.dataclass(frozen=True)
class MRNormalisation:
    """The MR normalisation settings of a run and the files it is saved in.

    Attributes:
        histogram: whether histogram standardisation is on (`[NETWORK] normalisation`).
        histogram_file: `[NETWORK] histogram_ref_file`.
        statistics_file: `model_dir/training_statistics.json`.
        cutoff: `[NETWORK] cutoff` of the histogram standardisation.
        landmarks: `[NETWORK] norm_type` (the landmark set).
        whitening: `[NETWORK] whitening`.
        config_path: the config file, for the training command in messages.

    Example:

    ```python
    MRNormalisation.from_settings(settings).statistics_file  # model_dir/training_statistics.json
    ```
    """

    histogram: bool
    histogram_file: Path
    statistics_file: Path
    cutoff: Sequence[float]
    landmarks: str
    whitening: bool
    config_path: str

    @classmethod
    def from_settings(cls, settings: Settings) -> MRNormalisation:
        """The normalisation of `settings` (`[NETWORK]` and `[SYSTEM] model_dir`)."""
        network = settings.network
        return cls(
            histogram=bool(network.normalisation), histogram_file=Path(network.histogram_ref_file),
            statistics_file=Path(settings.system.model_dir) / TRAINING_STATISTICS_FILE, cutoff=network.cutoff,
            landmarks=network.norm_type, whitening=bool(network.whitening), config_path=str(settings.config_path),
        )

    def missing(self, path: Path, what: str) -> FileNotFoundError:
        """The error of a saved file that does not exist, with the command that writes it."""
        return FileNotFoundError(
            f"{path} does not exist: {what} is written when training starts from scratch (sfg_run train -c "
            f"{self.config_path})."
        )

    def fit_standardiser(self, training_mr: list[np.ndarray]) -> HistogramStandardisation | None:
        """The histogram standardisation learned on the training MR volumes, or None when it is off."""
        if not self.histogram:
            return None
        return HistogramStandardisation(cutoff=self.cutoff, landmarks=self.landmarks).fit(training_mr)

    def saved_standardiser(self) -> HistogramStandardisation | None:
        """The histogram standardisation saved at training time (never refitted), or None when it is off.

        Raises:
            FileNotFoundError: it is on and `histogram_file` does not exist.
        """
        if not self.histogram:
            return None
        if not self.histogram_file.is_file():
            raise self.missing(self.histogram_file, "the histogram file of [NETWORK] normalisation")
        return HistogramStandardisation.load(self.histogram_file)

    def training_statistics(self) -> dict:
        """The statistics written at training time (`model_dir/training_statistics.json`).

        Raises:
            FileNotFoundError: the file does not exist.
        """
        if not self.statistics_file.is_file():
            raise self.missing(self.statistics_file, "the training statistics file")
        return json.loads(self.statistics_file.read_text(encoding="utf-8"))

    def legacy_training_subjects(self) -> list[str]:
        """The training subjects listed in `training_statistics.json` by older versions (none without the file)."""
        if not self.statistics_file.is_file():
            return []
        return list(json.loads(self.statistics_file.read_text(encoding="utf-8")).get("training_subjects", []))

    def normalise(self, mr: np.ndarray, standardiser: HistogramStandardisation | None) -> np.ndarray:
        """Histogram standardisation (when given) then whitening (when `whitening`), float32."""
        data = np.asarray(mr, dtype=np.float32)
        if standardiser is not None:
            data = standardiser.transform(data)
        if self.whitening:
            data = whiten(data)
        return data.astype(np.float32)

    def save(self, standardiser: HistogramStandardisation | None, statistics: dict) -> None:
        """Writes the standardiser (when given) to `histogram_file` and `statistics` to `statistics_file`."""
        if standardiser is not None:
            with atomic_path(self.histogram_file) as temporary:
                standardiser.save(temporary)
            print(f"Histogram standardisation: learned on the training subjects -> {self.histogram_file}")
        atomic_write_json(self.statistics_file, statistics)
