"""The file layout of the paired MR / CT / label cohorts (pelvis and head phantoms): `write_cohort_subject`.

A cohort folder holds `MR/subj_XXX_mr.nii.gz`, `CT/subj_XXX_ct.nii.gz` (float32) and `LABEL/subj_XXX_label.nii.gz`
(uint8), one triple per subject, all with the same shape and affine; `COHORT_FILE_PATTERNS` matches them.

Example:

```python
folder = prepare_output_folder("demo/pelvis", overwrite=True, own_patterns=COHORT_FILE_PATTERNS)
write_cohort_subject(folder, 0, mr, ct, label, affine)  # {"subject": "subj_000", "mr": ..., "ct": ..., "label": ...}
```
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

COHORT_FILE_PATTERNS = ("MR/subj_*_mr.nii.gz", "CT/subj_*_ct.nii.gz", "LABEL/subj_*_label.nii.gz")


def write_cohort_subject(
    out_dir: Path, index: int, mr: np.ndarray, ct: np.ndarray, label: np.ndarray, affine: np.ndarray
) -> dict[str, str]:
    """Writes one subject as `MR/subj_XXX_mr.nii.gz`, `CT/subj_XXX_ct.nii.gz` and `LABEL/subj_XXX_label.nii.gz`.

    Args:
        out_dir: the cohort folder; the `MR`, `CT` and `LABEL` subfolders are created if missing.
        index: the subject's number, written with three digits (`subj_007`).
        mr: the MR volume (written as float32).
        ct: the CT volume in Hounsfield units (written as float32).
        label: the label map (written as uint8).
        affine: the 4 x 4 voxel-to-mm affine, stored as qform and sform (code 1, unit mm).

    Returns:
        `{"subject": "subj_XXX", "mr": path, "ct": path, "label": path}` (paths as strings).

    Example:

    ```python
    paths = write_cohort_subject(Path("demo/pelvis"), 3, mr, ct, label, np.diag([2.0, 2.0, 3.0, 1.0]))
    paths["ct"]  # 'demo/pelvis/CT/subj_003_ct.nii.gz'
    ```
    """
    subject = f"subj_{index:03d}"
    paths = {}
    for key, folder, data, dtype in (
        ("mr", "MR", mr, np.float32),
        ("ct", "CT", ct, np.float32),
        ("label", "LABEL", label, np.uint8),
    ):
        image = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
        image.header.set_xyzt_units(xyz="mm")
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=1)
        path = out_dir / folder / f"{subject}_{key}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(image, str(path))
        paths[key] = str(path)
    return {"subject": subject, **paths}
