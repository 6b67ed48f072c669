"""Reading and writing NIfTI volumes while keeping their geometry (affine and header)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from sfg_keras.io.atomic import atomic_path

NIFTI_SUFFIXES = (".nii.gz", ".nii")
AFFINE_TOLERANCE = 1e-4


@dataclasses.dataclass
class NiftiVolume:
    """A NIfTI image loaded into memory.

    Attributes:
        data: float32 numpy array with the voxel values (scaling from the header applied), shape `[X, Y, Z(, ...)]`.
        affine: float64 `[4, 4]` voxel-to-world matrix.
        header: a copy of the image's NIfTI header; `save_nifti` uses it as the template of outputs.
        path: the file the volume was read from, or `None` for a volume built in memory.

    Example:

    ```python
    volume = load_nifti("subject_001_ct.nii.gz")
    volume.data.shape, volume.affine[:3, 3]
    ```
    """

    data: np.ndarray
    affine: np.ndarray
    header: Any
    path: str | None = None

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """The first three dimensions of `data` (fewer for 2-D images)."""
        return tuple(int(s) for s in self.data.shape[:3])


def load_nifti(path: str | Path) -> NiftiVolume:
    """Loads a NIfTI (or Analyze) image as a float32 `NiftiVolume`.

    The data are read with `np.asarray(img.dataobj, dtype=np.float32)`, which applies the header's scaling without
    going through float64.

    Args:
        path: str or `Path`. The image file (`.nii`, `.nii.gz`, or an Analyze `.hdr`/`.img` pair).

    Returns:
        A `NiftiVolume` holding the data, the affine, a copy of the header and the path.

    Raises:
        FileNotFoundError: if `path` does not exist.
        ValueError: if nibabel cannot read the file as an image.

    Example:

    ```python
    mr = load_nifti("data/subj_001_mr.nii.gz")
    print(mr.data.dtype, mr.data.shape)
    ```
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NIfTI file not found: '{path}'. Expected an existing .nii or .nii.gz file.")
    try:
        image = nib.load(str(path))
    except Exception as error:  # nibabel raises several unrelated types for unreadable files
        raise ValueError(
            f"Could not read '{path}' as a NIfTI image ({type(error).__name__}: {error}). "
            "Expected a valid .nii, .nii.gz or Analyze .hdr/.img file."
        ) from error
    data = np.asarray(image.dataobj, dtype=np.float32)
    return NiftiVolume(
        data=data,
        affine=np.array(image.affine, dtype=np.float64),
        header=image.header.copy(),
        path=str(path),
    )


def _default_dtype(data: np.ndarray) -> np.dtype:
    """Chooses the on-disk dtype: the smallest of uint8/int16/int32 for integer data, float32 otherwise."""
    if data.dtype == np.bool_:
        return np.dtype(np.uint8)
    if np.issubdtype(data.dtype, np.integer):
        if data.size == 0:
            return np.dtype(np.uint8)
        low, high = int(data.min()), int(data.max())
        for candidate in (np.uint8, np.int16, np.int32):
            info = np.iinfo(candidate)
            if info.min <= low and high <= info.max:
                return np.dtype(candidate)
        return np.dtype(np.int64)
    return np.dtype(np.float32)


def _cast(data: np.ndarray, dtype: np.dtype, path: Path) -> np.ndarray:
    """Casts `data` to `dtype`, rounding floats for integer outputs and refusing values out of range."""
    if not np.issubdtype(dtype, np.integer):
        return data.astype(dtype)
    values = np.rint(data) if np.issubdtype(data.dtype, np.floating) else data
    if values.size:
        info = np.iinfo(dtype)
        low, high = values.min(), values.max()
        if not np.isfinite(low) or not np.isfinite(high) or low < info.min or high > info.max:
            raise ValueError(
                f"Cannot write '{path}' as {dtype.name}: values span [{low}, {high}], "
                f"expected values within [{info.min}, {info.max}]. Pass a wider `dtype`."
            )
    return values.astype(dtype)


def save_nifti(
    path: str | Path,
    data: np.ndarray,
    reference: NiftiVolume | None = None,
    affine: np.ndarray | None = None,
    dtype: Any = None,
) -> Path:
    """Writes an array as a NIfTI file with the geometry of a reference volume.

    The header is a copy of `reference.header` (so sform/qform codes, voxel sizes, units and descriptions carry over);
    its data shape and data type are updated to match `data`, its sform and qform are set to the affine, and any
    intensity scaling of the reference is dropped.
    Parent folders are created. The file is written atomically (a temporary file renamed over `path`): a failed
    write raises an `OSError` naming `path` and leaves no partial file.

    Args:
        path: str or `Path`. Output file; must end with `.nii` or `.nii.gz`.
        data: array-like. The voxel values, usually `[X, Y, Z]` or `[X, Y, Z, C]`.
        reference: optional `NiftiVolume`. Supplies the affine and the header template. Defaults to `None`
            (identity affine or `affine`, fresh header).
        affine: optional `[4, 4]` array. Overrides the reference's affine. Defaults to `None`.
        dtype: optional numpy dtype for the file. Defaults to `None`: uint8, int16 or int32 (the smallest that holds
            the values) for integer or boolean data such as label maps, float32 otherwise. Floats written to an
            integer dtype are rounded; values that do not fit raise a `ValueError`.

    Returns:
        The `Path` written.

    Example:

    ```python
    ct = load_nifti("subj_001_ct.nii.gz")
    save_nifti("out/subj_001_labels.nii.gz", labels.astype("uint8"), reference=ct)
    save_nifti("out/subj_001_sct.nii.gz", synthetic_hu, reference=ct)  # float32
    ```
    """
    path = Path(path)
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise ValueError(f"Cannot write '{path}': expected a file name ending with .nii or .nii.gz.")
    data = np.asarray(data)
    if data.ndim < 2 or data.ndim > 7:
        raise ValueError(f"Cannot write '{path}': data has shape {data.shape}, expected 2 to 7 dimensions.")
    out_dtype = _default_dtype(data) if dtype is None else np.dtype(dtype)
    data = _cast(data, out_dtype, path)

    if affine is not None:
        affine = np.asarray(affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"Cannot write '{path}': affine has shape {affine.shape}, expected (4, 4).")
    elif reference is not None:
        affine = np.asarray(reference.affine, dtype=np.float64)
    else:
        affine = np.eye(4)

    if reference is not None and reference.header is not None:
        header = nib.Nifti1Header.from_header(reference.header)
        sform_code = int(header["sform_code"])
        qform_code = int(header["qform_code"])
    else:
        header = nib.Nifti1Header()
        sform_code, qform_code = 0, 0
    if sform_code == 0:
        # "aligned": the sform holds the affine exactly (a qform cannot hold shears), so it is what is read back.
        sform_code = 2
    header.set_data_shape(data.shape)
    header.set_data_dtype(out_dtype)
    header.set_slope_inter(None, None)
    header.set_sform(affine, code=sform_code)
    header.set_qform(affine, code=qform_code)

    image = nib.Nifti1Image(data, affine, header=header)
    image.set_data_dtype(out_dtype)
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else ".nii"
    with atomic_path(path, suffix=suffix) as temporary:
        nib.save(image, str(temporary))
    return path


def check_same_geometry(volumes: Mapping[str, NiftiVolume], subject: str) -> None:
    """Checks that the volumes of one subject share their voxel grid.

    The spatial shapes (first three dimensions) must be equal and the affines must agree within 1e-4 in every entry.

    Args:
        volumes: mapping from input-section name (for example `"MR"`, `"CT"`, `"label"`) to its `NiftiVolume`.
        subject: the subject id, quoted in the error message.

    Raises:
        ValueError: naming the subject, the two sections that disagree, and their shapes or affines.

    Example:

    ```python
    check_same_geometry({"MR": mr, "CT": ct, "label": label}, subject="subj_001")
    ```
    """
    items = list(volumes.items())
    if len(items) < 2:
        return
    first_name, first = items[0]
    for name, volume in items[1:]:
        if volume.spatial_shape != first.spatial_shape:
            raise ValueError(
                f"Subject '{subject}': sections [{first_name}] and [{name}] have different shapes: "
                f"[{first_name}] {first.spatial_shape} ({first.path}) vs [{name}] {volume.spatial_shape} "
                f"({volume.path}). Expected the same voxel grid for every input of a subject."
            )
        if not np.allclose(volume.affine, first.affine, rtol=0.0, atol=AFFINE_TOLERANCE):
            difference = float(np.max(np.abs(np.asarray(volume.affine) - np.asarray(first.affine))))
            raise ValueError(
                f"Subject '{subject}': sections [{first_name}] and [{name}] have different affines "
                f"(largest difference {difference:.6g}, tolerance {AFFINE_TOLERANCE}):\n"
                f"[{first_name}] ({first.path}):\n{np.array2string(np.asarray(first.affine), precision=4)}\n"
                f"[{name}] ({volume.path}):\n{np.array2string(np.asarray(volume.affine), precision=4)}\n"
                "Expected co-registered inputs on the same voxel grid."
            )
