"""Seeded training / validation / inference split stored in NiftyNet's `dataset_split.csv` format."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

PHASES = ("Training", "Validation", "Inference")


def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Subjects per phase: rounded fractions, every phase with a positive fraction non-empty when possible."""
    counts = [int(math.floor(n * f)) for f in fractions]
    remainders = [n * f - c for f, c in zip(fractions, counts)]
    for index in sorted(range(len(counts)), key=lambda i: (-remainders[i], i))[: n - sum(counts)]:
        counts[index] += 1
    positive = [i for i, f in enumerate(fractions) if f > 0]
    if n >= len(positive):
        for index in positive:
            while counts[index] == 0:
                donor = max(range(len(counts)), key=lambda i: (counts[i], -i))
                counts[donor] -= 1
                counts[index] += 1
    return counts


def _validate_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or any(f < 0 for f in values) or abs(sum(values) - 1.0) > 1e-6 or values[0] <= 0:
        raise ValueError(
            f"fractions must be three non-negative numbers (Training, Validation, Inference) that sum to 1 with a "
            f"positive training share. Received: fractions={tuple(fractions)}"
        )
    return values


def read_split(split_file: str | Path) -> dict[str, str]:
    """The `{subject: phase}` rows of an existing split file (read only).

    Raises:
        ValueError: a malformed row, an unknown phase or a subject listed twice (naming the file and the line).

    Example:

    ```python
    split = read_split("model/dataset_split.csv")
    ```
    """
    split_file = Path(split_file)
    split: dict[str, str] = {}
    canonical = {phase.lower(): phase for phase in PHASES}
    with open(split_file, newline="", encoding="utf-8") as handle:
        for line_number, row in enumerate(csv.reader(handle), start=1):
            cells = [cell.strip() for cell in row]
            if not any(cells):
                continue
            if len(cells) != 2 or not cells[0]:
                raise ValueError(
                    f"{split_file}, line {line_number}: expected 'subject,Training|Validation|Inference'. "
                    f"Received: {','.join(row)!r}"
                )
            subject, phase = cells
            if phase.lower() not in canonical:
                raise ValueError(
                    f"{split_file}, line {line_number}: unknown phase {phase!r} for subject '{subject}'. "
                    f"Expected one of {list(PHASES)}."
                )
            if subject in split:
                raise ValueError(f"{split_file}, line {line_number}: subject '{subject}' is listed twice.")
            split[subject] = canonical[phase.lower()]
    return split


def _quote_some(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(f"'{name}'" for name in names[:limit])
    return shown + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def make_or_load_split(
    subjects: Sequence[str],
    split_file: str | Path,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> dict[str, str]:
    """Assigns every subject to Training, Validation or Inference, reusing the split file if it exists.

    The first call shuffles the sorted subject ids with `numpy.random.default_rng(seed)`, gives each phase its
    rounded share (each phase with a positive fraction gets at least one subject when there are enough subjects),
    and writes NiftyNet's header-less CSV `subject,Training|Validation|Inference` (one row per subject, sorted).
    Later calls read that file, so a split is fixed once written. The file must then list exactly `subjects`.

    Args:
        subjects: the subject ids (unique).
        split_file: str or `Path`, e.g. `model_dir / "dataset_split.csv"`. Parent folders are created.
        fractions: `(training, validation, inference)` shares summing to 1. Defaults to `(0.7, 0.15, 0.15)`.
        seed: int. Seed of the shuffle. Defaults to 0.

    Returns:
        `{subject: phase}` sorted by subject id.

    Raises:
        ValueError: on repeated subjects, invalid fractions, a malformed split file (naming file and line), or a
            split file whose subjects differ from `subjects` (naming the file and the unknown / missing subjects).

    Example:

    ```python
    split = make_or_load_split(["s1", "s2", "s3", "s4"], "model/dataset_split.csv", seed=1)
    training = [s for s, phase in split.items() if phase == "Training"]
    ```
    """
    split_file = Path(split_file)
    subject_list = [str(s) for s in subjects]
    repeated = sorted({s for s in subject_list if subject_list.count(s) > 1})
    if repeated:
        raise ValueError(f"Subject ids must be unique. Received repeated ids: {_quote_some(repeated)}")
    values = _validate_fractions(fractions)

    if split_file.exists():
        split = read_split(split_file)
        unknown = sorted(set(split) - set(subject_list))
        missing = sorted(set(subject_list) - set(split))
        if unknown or missing:
            details = []
            if unknown:
                details.append(f"subjects in the file but not in the data: {_quote_some(unknown)}")
            if missing:
                details.append(f"subjects in the data but not in the file: {_quote_some(missing)}")
            raise ValueError(
                f"Split file '{split_file}' does not match the data: " + "; ".join(details) + ". "
                "A split is fixed once written: restore the data it lists to train on, predict other subjects with "
                "sfg_run inference (subjects not in the split need no entry, and the file is never changed), or "
                "train on a new split in another [SYSTEM] model_dir."
            )
        return dict(sorted(split.items()))

    ordered = sorted(subject_list)
    order = np.random.default_rng(seed).permutation(len(ordered))
    counts = _split_counts(len(ordered), values)
    split = {}
    start = 0
    for phase, count in zip(PHASES, counts):
        for index in order[start : start + count]:
            split[ordered[index]] = phase
        start += count
    split = dict(sorted(split.items()))
    write_split(split, split_file)
    return split


def write_split(split: Mapping[str, str], split_file: str | Path) -> Path:
    """Writes `{subject: phase}` as NiftyNet's header-less `subject,phase` CSV, sorted, atomically and durably.

    Example:

    ```python
    write_split({"s1": "Training", "s2": "Inference"}, "model/dataset_split.csv")
    ```
    """
    from sfg_keras.io.atomic import atomic_path

    with atomic_path(split_file) as temporary, open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        for subject, phase in sorted(split.items()):
            writer.writerow([subject, phase])
    return Path(split_file)


def subsample_training(split: Mapping[str, str], fraction: float, seed: int = 0) -> list[str]:
    """Picks a seeded subset of the training subjects (the small-data option).

    Keeps `ceil(fraction * n_train)` training subjects; the split itself (and its file) is left unchanged.

    Args:
        split: `{subject: phase}` as returned by `make_or_load_split`.
        fraction: float in `(0, 1]`. Share of training subjects kept.
        seed: int. Seed of the choice. Defaults to 0.

    Returns:
        The kept training subjects, sorted.

    Example:

    ```python
    small = subsample_training(split, fraction=0.1, seed=0)
    ```
    """
    fraction = float(fraction)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1]. Received: fraction={fraction}")
    training = sorted(subject for subject, phase in split.items() if phase == "Training")
    if not training:
        return []
    keep = min(len(training), math.ceil(round(fraction * len(training), 9)))
    chosen = np.random.default_rng(seed).permutation(len(training))[:keep]
    return sorted(training[i] for i in chosen)
