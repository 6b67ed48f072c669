"""Up-front checks of the mr_ct input volumes: every bad file of every subject is reported in one error.

Before anything is written, `check_subjects` reads the header of every file (readable NIfTI, 3-D, a real voxel type,
the same shape and affine as the subject's MR), then scans its voxels once (`scan_volume`: decodable, finite values,
not blank, no extreme intensities, the `mean_plus` foreground that histogram standardisation needs, a CT in
Hounsfield units, label values). Scans are cached in
`model_dir/.input_scans.json` (`sfg_keras.io.input_checks.ScanCache` at `SCAN_CACHE_FILE`), so a rerun over
unchanged files reads headers only. What each input section must satisfy is its `FileRole` (`section_roles`).
Problems are collected with `InputProblems` and raised together as an `InputValidationError` (a `ValueError`:
`sfg_run` exits with status 2).

Example:

```python
roles = section_roles("MR", app.tasks, foreground=True)
loaded = check_subjects(rows, roles, ScanCache(model_dir / SCAN_CACHE_FILE), "training inputs", keep=True)
```
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np

from sfg_keras.config import TaskSpec
from sfg_keras.io import NiftiVolume
from sfg_keras.io.input_checks import InputCheckFailure, InputProblems, ScanCache
from sfg_keras.io.nifti import AFFINE_TOLERANCE

#: Name (and version) of `scan_volume`'s results in the scan cache; change it when the summary changes.
SCAN_NAME = "mr_ct-volume-v2"
#: At most this many distinct values are kept in a scan summary (label maps have a few).
MAX_DISTINCT = 256
NIFTI_EXPECTED = "a readable .nii or .nii.gz NIfTI volume"
#: An intensity this many times the 99.9th percentile of the absolute values is extreme (a corrupt voxel, a scaling
#: error): it would dominate every statistic fitted on the volume.
EXTREME_FACTOR = 1000.0
#: A CT in Hounsfield units has air (about -1000 HU) around the body; a minimum above this cannot be HU.
AIR_BELOW_HU = -900.0
RANK_EXPECTED = "a 3-D volume [X, Y, Z] (a 4th dimension of size 1 is accepted)"


@dataclasses.dataclass(frozen=True)
class FileRole:
    """What the files of one input section must satisfy (beyond being readable 3-D volumes).

    Attributes:
        section: the input section, e.g. "MR".
        foreground: the volume needs a non-empty `mean_plus` foreground with more than one intensity (histogram
            standardisation).
        labels: `(task name, num_classes)` of every segmentation task reading its labels from this section.
        intensities: an image (MR, CT): refused when blank (one value everywhere) or holding extreme values.
        hounsfield: a CT in Hounsfield units: refused when no voxel is below `AIR_BELOW_HU` (HU + 1024 stored as
            unsigned integers, a mask, another unit); `[MR_CT] check_hounsfield = False` turns it off.

    Example:

    ```python
    FileRole("LABEL", labels=(("organs", 5),))
    ```
    """

    section: str
    foreground: bool = False
    labels: tuple[tuple[str, int], ...] = ()
    intensities: bool = False
    hounsfield: bool = False


def section_roles(image_section: str | None, tasks: Sequence[TaskSpec], foreground: bool,
                  hounsfield: bool = True) -> list[FileRole]:
    """The roles of the MR section (first; None leaves it out) and of every task's reference section.

    Args:
        image_section: the MR section, or None (evaluation checks the references only).
        tasks: the tasks; segmentation tasks make their section a label map, regression tasks a CT.
        foreground: whether the MR needs a foreground (`[NETWORK] normalisation`).
        hounsfield: whether a CT must be in Hounsfield units (`[MR_CT] check_hounsfield`).

    Example:

    ```python
    section_roles("MR", app.tasks, foreground=True)  # [FileRole("MR", True), FileRole("CT"), FileRole("LABEL", ...)]
    ```
    """
    roles = {}
    if image_section is not None:
        roles[image_section] = FileRole(image_section, foreground=foreground, intensities=True)
    for task in tasks:
        role = roles.get(task.label, FileRole(task.label))
        if task.type == "segmentation":
            role = dataclasses.replace(role, labels=(*role.labels, (task.name, int(task.num_classes))))
        else:
            role = dataclasses.replace(role, intensities=True, hounsfield=role.hounsfield or hounsfield)
        roles[task.label] = role
    return list(roles.values())


def read_header(path: str) -> Any:
    """The nibabel image of `path` (header only; the voxels are read lazily), checked to be a 3-D real volume.

    Raises:
        InputCheckFailure: not a NIfTI image, wrong rank, an empty dimension, a non-numeric voxel type or a
            non-finite affine.
        OSError: the file cannot be opened.

    Example:

    ```python
    image = read_header("data/MR/subj_000_mr.nii.gz")
    image.shape, image.affine
    ```
    """
    try:
        image = nib.load(path)
    except OSError:
        raise
    except Exception as error:  # nibabel raises several unrelated types for files it cannot read
        raise InputCheckFailure(f"cannot be read as a NIfTI image ({type(error).__name__}: {error})",
                                NIFTI_EXPECTED) from error
    shape = tuple(int(size) for size in image.shape)
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)):
        raise InputCheckFailure(f"has {len(shape)} dimension{'s' if len(shape) != 1 else ''} {shape}",
                                RANK_EXPECTED)
    if 0 in shape:
        raise InputCheckFailure(f"has an empty dimension {shape}", "at least one voxel along every axis")
    dtype = np.dtype(image.get_data_dtype())
    if dtype.fields is not None or not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise InputCheckFailure(f"stores its voxels as {dtype}", "real-valued scalar voxels (integer or float)")
    if image.affine is None or not np.all(np.isfinite(image.affine)):
        raise InputCheckFailure("has a non-finite voxel-to-world affine", "a finite affine in the header")
    return image


def read_volume(path: str) -> NiftiVolume:
    """The checked volume of `path` as a float32 `NiftiVolume` `[X, Y, Z]` (a trailing axis of size 1 dropped).

    Raises:
        InputCheckFailure: see `read_header`; or the voxel data cannot be decoded (a truncated or corrupted file).
        OSError: the file cannot be opened.

    Example:

    ```python
    mr = read_volume("data/MR/subj_000_mr.nii.gz")
    ```
    """
    image = read_header(path)
    try:
        data = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as error:  # EOFError, zlib.error, OSError, ValueError, ...: the voxels are not all there
        raise InputCheckFailure(f"its voxel data cannot be decoded ({type(error).__name__}: {error})",
                                "a complete, uncorrupted NIfTI file (truncated download or copy?)") from error
    if data.ndim == 4:
        data = data[..., 0]
    return NiftiVolume(data=data, affine=np.array(image.affine, dtype=np.float64), header=image.header.copy(),
                       path=str(path))


def summarise(data: np.ndarray) -> dict[str, Any]:
    """What the checks need of a volume's voxels (JSON-serialisable, independent of the settings).

    Returns:
        `{"nan", "inf"}` counts, `"min"`/`"max"` of the finite values, `"p999_abs"` (the 99.9th percentile of their
        absolute values), `"foreground"` (voxels above the mean, None with non-finite values) and
        `"foreground_spread"` (whether they hold more than one value), `"non_integer"` (up to 10 finite values that
        are not integers, from the first 1000 found) and `"distinct"` (the sorted distinct values of integer-valued
        data when at most `MAX_DISTINCT`, else None).

    Example:

    ```python
    summarise(np.zeros((4, 4, 2)))["foreground"]  # 0
    ```
    """
    finite = np.isfinite(data)
    nan = int(np.isnan(data).sum())
    inf = int(data.size - int(finite.sum()) - nan)
    values = data if nan + inf == 0 else data[finite]
    summary: dict[str, Any] = {
        "nan": nan, "inf": inf, "min": float(values.min()) if values.size else None,
        "max": float(values.max()) if values.size else None, "p999_abs": None, "foreground": None,
        "foreground_spread": False,
    }
    if values.size:
        magnitudes = np.abs(values.ravel())
        rank = min(magnitudes.size - 1, int(np.ceil(0.999 * magnitudes.size)) - 1)
        summary["p999_abs"] = float(np.partition(magnitudes, max(rank, 0))[max(rank, 0)])
    if nan + inf == 0:
        foreground = data[data > np.float64(data.mean(dtype=np.float64))]  # HistogramStandardisation's mean_plus
        summary["foreground"] = int(foreground.size)
        summary["foreground_spread"] = bool(foreground.size and foreground.max() > foreground.min())
    fractional = values[values != np.round(values)]
    summary["non_integer"] = sorted({float(v) for v in fractional[:1000]})[:10]
    summary["distinct"] = None
    if values.size and not fractional.size and summary["max"] - summary["min"] <= 65535:
        counts = np.bincount((values - summary["min"]).astype(np.int64).ravel())  # linear time, unlike np.unique
        present = np.flatnonzero(counts)
        if present.size <= MAX_DISTINCT:
            summary["distinct"] = [float(v) + summary["min"] for v in present]
    return summary


def scan_volume(path: str, keep: MutableMapping[str, NiftiVolume] | None = None) -> dict[str, Any]:
    """Reads and summarises one volume (`summarise`); with `keep`, the loaded volume is stored there by path.

    Example:

    ```python
    cache.get_or_scan(path, SCAN_NAME, functools.partial(scan_volume, keep=loaded))
    ```
    """
    volume = read_volume(path)
    if keep is not None:
        keep[str(path)] = volume
    stored = np.dtype(volume.header.get_data_dtype())
    _, intercept = volume.header.get_slope_inter()
    return {"shape": list(volume.data.shape), "stored_dtype": str(stored),
            "offset_free_unsigned": bool(np.issubdtype(stored, np.unsignedinteger) and not (intercept or 0) < 0),
            **summarise(volume.data)}


def _intensity_problems(where: str, role: FileRole, summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Blank volumes, extreme intensities and CTs that cannot be Hounsfield units."""
    low, high, typical = summary["min"], summary["max"], summary.get("p999_abs")
    if low == high:
        return [(f"{where} is blank: every voxel is {low:g}", "an image with more than one intensity (a blank or "
                 "constant volume is refused whatever [NETWORK] normalisation)")]
    peak = max(abs(low), abs(high))
    if typical is not None and peak > EXTREME_FACTOR * max(typical, 1.0):
        return [(f"{where} holds extreme intensities: {peak:.3g}, while 99.9% of its voxels are within "
                 f"+-{typical:.4g} (a corrupt voxel, or a wrong scaling)",
                 f"intensities within {EXTREME_FACTOR:g} times the 99.9th percentile of the volume")]
    if role.hounsfield and low > AIR_BELOW_HU:
        stored = (f"; stored as {summary.get('stored_dtype')} without a negative intercept, like HU + 1024"
                  if summary.get("offset_free_unsigned") else "")
        return [(f"{where} holds values from {low:g} to {high:g}, which cannot be Hounsfield units: no air below "
                 f"{AIR_BELOW_HU:g} HU{stored}",
                 "a CT in Hounsfield units (air about -1000 HU); set [MR_CT] check_hounsfield = False to accept it "
                 "anyway")]
    return []


def role_problems(role: FileRole, summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """`[(problem, expected)]` of a scanned file in its role (empty when it is fine).

    Example:

    ```python
    role_problems(FileRole("MR", foreground=True), summarise(np.zeros((4, 4, 2))))  # [("[MR] has no foreground ...
    ```
    """
    where = f"[{role.section}]"
    if summary["nan"] or summary["inf"]:
        return [(f"{where} holds {summary['nan']} NaN and {summary['inf']} infinite voxels", "finite values")]
    if role.intensities and summary["min"] is not None:
        found = _intensity_problems(where, role, summary)
        if found:
            return found
    problems = []
    if role.foreground and not summary["foreground_spread"]:
        problems.append((
            f"{where} has no foreground for histogram standardisation (every voxel is {summary['min']:g})"
            if summary["min"] == summary["max"] else
            f"{where} has a foreground (voxels above the mean) of a single intensity",
            "an MR with intensities above its mean ([NETWORK] normalisation = True)",
        ))
    for task, classes in role.labels:
        distinct = summary["distinct"]
        wrong = list(summary["non_integer"]) if distinct is None else [
            v for v in distinct if v != round(v) or v < -1 or v >= classes]
        if distinct is None and not wrong:
            wrong = [v for v in (summary["min"], summary["max"]) if v < -1 or v >= classes]
        if wrong:
            shown = [int(v) if float(v).is_integer() else v for v in wrong[:10]]
            problems.append((f"{where} holds values {shown} that are not labels of task {task!r}",
                             f"integers in 0..{classes - 1} (-1 = unlabelled)"))
    return problems


def _geometry_problems(images: Mapping[str, Any], paths: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """`{section: (problem, expected)}` of the sections whose grid differs from the first section's."""
    (first, reference), *others = images.items()
    shape = tuple(reference.shape[:3])
    problems = {}
    for section, image in others:
        expected = f"the voxel grid of [{first}] {paths[first]}"
        if tuple(image.shape[:3]) != shape:
            problems[section] = (f"[{section}] and [{first}] have different shapes: {tuple(image.shape[:3])} vs "
                                 f"{shape}", expected)
        elif not np.allclose(image.affine, reference.affine, rtol=0.0, atol=AFFINE_TOLERANCE):
            difference = float(np.max(np.abs(np.asarray(image.affine) - np.asarray(reference.affine))))
            problems[section] = (f"[{section}] and [{first}] have different affines (largest difference "
                                 f"{difference:.6g}, tolerance {AFFINE_TOLERANCE})",
                                 f"co-registered inputs: {expected}")
    return problems


def check_subject(row: Mapping[str, Any], roles: Sequence[FileRole], cache: ScanCache, problems: InputProblems,
                  keep: MutableMapping[str, NiftiVolume] | None = None) -> None:
    """Checks the files of one subject (`row` of `match_subjects`), recording each problem in `problems`.

    Example:

    ```python
    check_subject({"subject": "s1", "MR": "s1_mr.nii.gz"}, [FileRole("MR")], ScanCache(), problems)
    ```
    """
    subject = str(row["subject"])
    paths = {role.section: str(row[role.section]) for role in roles}
    images = {section: problems.run(path, subject, read_header, NIFTI_EXPECTED) for section, path in paths.items()}
    readable = {section: image for section, image in images.items() if image is not None}
    if len(readable) > 1:  # each against the first readable one (the MR unless it is unreadable)
        for section, (problem, expected) in _geometry_problems(readable, paths).items():
            problems.add(paths[section], problem, expected, subject)
    scan = functools.partial(scan_volume, keep=keep)
    for role in roles:
        path = paths[role.section]
        if images[role.section] is None:
            continue
        summary = problems.run(path, subject, lambda p: cache.get_or_scan(p, SCAN_NAME, scan), NIFTI_EXPECTED)
        for problem, expected in role_problems(role, summary) if summary is not None else []:
            problems.add(path, problem, expected, subject)


def check_references(rows: Sequence[Mapping[str, Any]], image_section: str, tasks: Sequence[TaskSpec],
                     cache: ScanCache, hounsfield: bool, context: str) -> None:
    """Checks the reference files of `rows` as training checks its inputs (readable 3-D volumes on the MR's grid,
    finite, a CT in Hounsfield units with `hounsfield`, labels in range); the MR is read as the reference grid only.

    Raises:
        InputValidationError: every problem found (a `ValueError`).

    Example:

    ```python
    check_references(rows, "MR", tasks, ScanCache(model_dir / SCAN_CACHE_FILE), True, "references to evaluate")
    ```
    """
    roles = [FileRole(image_section), *section_roles(None, tasks, foreground=False, hounsfield=hounsfield)]
    check_subjects(rows, roles, cache, context)


def check_subjects(rows: Sequence[Mapping[str, Any]], roles: Sequence[FileRole], cache: ScanCache, context: str,
                   keep: bool = False) -> dict[str, NiftiVolume]:
    """Checks every file of every subject and raises one error listing all problems; writes nothing.

    Args:
        rows: `match_subjects` rows (`{"subject": id, section: path}`).
        roles: what each section's files must satisfy (`section_roles`); the first is the reference grid.
        cache: scan results of earlier runs (the caller saves it once everything passed).
        context: what is checked, for the error message (e.g. "training inputs of configs/run.ini").
        keep: return the volumes read while scanning (those not cached), to be used instead of reading them again.

    Returns:
        `{path: NiftiVolume}` of the volumes read (empty without `keep`).

    Raises:
        InputValidationError: every problem found (a `ValueError`).

    Example:

    ```python
    loaded = check_subjects(rows, section_roles("MR", tasks, True), cache, "training inputs", keep=True)
    ```
    """
    problems = InputProblems(context)
    loaded: dict[str, NiftiVolume] = {}
    for row in rows:
        check_subject(row, roles, cache, problems, loaded if keep else None)
    problems.raise_if_any()
    return loaded
