"""Head phantom built on the real MNI152 (ICBM 2009a) tissue maps that ship inside the `nilearn` wheel.

The grey- and white-matter probability maps and the skull-stripped T1 (whose non-zero voxels give the brain mask) are
read from disk with nibabel; nilearn itself is never imported. A synthetic CSF rim, skull and scalp are grown around
the brain, and every subject is a random smooth deformation of that template (small affine plus a smooth, left-right
asymmetric displacement field). MR and CT are rendered from the same warped tissue fractions, so they are paired and
registered, and carry the real difficulty that bone and air are both dark on MR.

Template: Fonov et al., NeuroImage 2011 and 2009 (MNI ICBM152 non-linear symmetric 2009a).
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from sfg_keras.data.generators.cohort_files import COHORT_FILE_PATTERNS, write_cohort_subject
from sfg_keras.data.generators.output_folder import check_positive_int, prepare_output_folder
from sfg_keras.data.generators.packaged_files import installed_package_folder
from sfg_keras.data.generators.synthesis import add_rician_noise, mr_bias_field, smooth_random_field

# Label map written to LABEL/: 0 background (air and scalp), 1 CSF, 2 grey matter, 3 white matter, 4 skull.
HEAD_LABEL_NAMES = ("background", "csf", "grey_matter", "white_matter", "skull")

_MNI152_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}

# Warped channels (in this order) and the tissue -> label mapping; air is the remainder 1 - sum(channels).
_CHANNELS = ("csf", "gm", "wm", "skull", "scalp")
_CHANNEL_LABELS = np.array([0, 1, 2, 3, 4, 0], dtype=np.uint8)  # index 0 is air
# T1-like MR signal (arbitrary units) for air + channels: WM bright, GM grey, CSF dark, bone dark, scalp (fat) bright.
_MR_T1 = np.array([0.0, 0.15, 0.5, 0.85, 0.06, 0.7], dtype=np.float32)
# CT values in HU for air + channels; the skull value is replaced by a 700..1500 HU texture.
_CT_HU = np.array([-1000.0, 15.0, 40.0, 28.0, 1100.0, 40.0], dtype=np.float32)

# Shell thicknesses in mm.
_CSF_RIM_MM = 2.0
_SKULL_MM = 7.0
_SCALP_MM = 6.0


def mni152_data_folder() -> Path:
    """Returns the folder of the MNI152 tissue maps inside the installed `nilearn` package, without importing it.

    Returns:
        The folder `<site-packages>/nilearn/datasets/data`.

    Raises:
        ImportError: if `nilearn` is not installed.
        FileNotFoundError: if one of the three MNI152 2009a maps is missing from the installed package.

    Example:

    ```python
    folder = mni152_data_folder()
    sorted(p.name for p in folder.glob("mni_icbm152_*"))
    ```
    """
    folder = installed_package_folder("nilearn", "The head phantom needs the MNI152 tissue maps") / "datasets" / "data"
    for name in _MNI152_FILES.values():
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"MNI152 tissue map '{folder / name}' not found in the installed nilearn package; reinstall it with "
                "`pip install --force-reinstall nilearn` (version 0.10 or newer ships the 2009a maps)."
            )
    return folder


def _block_average(volume: np.ndarray, factor: int) -> np.ndarray:
    """Averages non-overlapping `factor`^3 blocks (trailing voxels that do not fill a block are dropped)."""
    if factor == 1:
        return volume.astype(np.float32)
    nx, ny, nz = (n // factor for n in volume.shape)
    trimmed = volume[: nx * factor, : ny * factor, : nz * factor].astype(np.float32)
    return trimmed.reshape(nx, factor, ny, factor, nz, factor).mean(axis=(1, 3, 5))


def _max_filter3(mask: np.ndarray, axis: int) -> np.ndarray:
    """3-tap maximum (binary dilation by one voxel) along one axis, zero outside."""
    result = mask.copy()
    lower = [slice(None)] * mask.ndim
    upper = [slice(None)] * mask.ndim
    lower[axis] = slice(0, -1)
    upper[axis] = slice(1, None)
    result[tuple(lower)] |= mask[tuple(upper)]
    result[tuple(upper)] |= mask[tuple(lower)]
    return result


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """Binary dilation by `steps` voxels, alternating 6- and 26-neighbourhoods (a rounded, octagon-like ball)."""
    result = mask.copy()
    for step in range(steps):
        if step % 2 == 0:
            grown = result.copy()
            for axis in range(3):
                grown |= _max_filter3(result, axis)
            result = grown
        else:
            for axis in range(3):
                result = _max_filter3(result, axis)
    return result


def _gaussian_blur(volume: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (sigma in voxels) with replicated edges."""
    radius = max(1, int(np.ceil(3.0 * sigma)))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).astype(np.float32)
    result = volume.astype(np.float32)
    for axis in range(3):
        padded = np.pad(result, [(radius, radius) if a == axis else (0, 0) for a in range(3)], mode="edge")
        n = result.shape[axis]
        result = sum(weight * np.take(padded, range(i, i + n), axis=axis) for i, weight in enumerate(kernel)).astype(
            np.float32
        )
    return result


def _head_template(resolution: int, crop: bool) -> tuple[np.ndarray, np.ndarray]:
    """Builds the template tissue fractions [X, Y, Z, channels] and their affine at `resolution` mm."""
    folder = mni152_data_folder()
    images = {key: nib.load(str(folder / name)) for key, name in _MNI152_FILES.items()}
    mni_affine = images["t1"].affine
    brain = np.asarray(images["t1"].dataobj) > 0
    gm = np.asarray(images["gm"].dataobj).astype(np.float32) / 255.0 * brain
    wm = np.asarray(images["wm"].dataobj).astype(np.float32) / 255.0 * brain
    brain_fraction = _block_average(brain, resolution)
    gm = _block_average(gm, resolution)
    wm = _block_average(wm, resolution)
    excess = np.maximum(gm + wm, 1.0)  # probabilities may add up to slightly more than 1
    gm, wm = gm / excess, wm / excess

    def steps(mm: float) -> int:
        return max(1, int(round(mm / resolution)))

    # Intracranial space: the brain plus a CSF rim, smoothed so that it does not follow the sulci.
    intracranial = _dilate(brain_fraction > 0.5, steps(_CSF_RIM_MM))
    intracranial = (_gaussian_blur(intracranial.astype(np.float32), sigma=3.0 / resolution) > 0.5) | (
        brain_fraction > 0
    )
    skull_outer = _dilate(intracranial, steps(_SKULL_MM))
    skull_outer = (_gaussian_blur(skull_outer.astype(np.float32), sigma=1.0) > 0.5) | intracranial
    head = _dilate(skull_outer, steps(_SCALP_MM))
    head = (_gaussian_blur(head.astype(np.float32), sigma=1.0) > 0.5) | skull_outer

    csf = intracranial * np.clip(1.0 - gm - wm, 0.0, 1.0)
    channels = np.stack(
        [csf, gm * intracranial, wm * intracranial, skull_outer & ~intracranial, head & ~skull_outer], axis=-1
    ).astype(np.float32)

    start = np.zeros(3, dtype=int)
    if crop:
        margin = 2
        occupied = np.argwhere(head)
        start = np.maximum(occupied.min(axis=0) - margin, 0)
        stop = np.minimum(occupied.max(axis=0) + 1 + margin, head.shape)
        channels = channels[start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]]
    # Voxel (i, j, k) of the block-averaged, cropped grid is centred on MNI voxel (start + i) * f + (f - 1) / 2.
    block = np.diag([float(resolution)] * 3 + [1.0])
    block[:3, 3] = start * resolution + (resolution - 1) / 2.0
    return channels, mni_affine @ block


def _sample_trilinear(volume: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of `volume` [X, Y, Z, C] at voxel coordinates `coords` [3, ...]; zero outside."""
    padded = np.pad(volume, ((1, 1), (1, 1), (1, 1), (0, 0)))
    dims = np.array(padded.shape[:3])
    flat = padded.reshape(-1, padded.shape[3])
    base, frac = [], []
    for axis in range(3):
        position = np.clip(coords[axis] + 1.0, 0.0, dims[axis] - 1.0)
        lower = np.minimum(np.floor(position).astype(np.int64), dims[axis] - 2)
        base.append(lower)
        frac.append((position - lower).astype(np.float32)[..., None])
    result = np.zeros(coords.shape[1:] + (volume.shape[3],), dtype=np.float32)
    for dx in (0, 1):
        wx = frac[0] if dx else 1.0 - frac[0]
        for dy in (0, 1):
            wy = frac[1] if dy else 1.0 - frac[1]
            for dz in (0, 1):
                wz = frac[2] if dz else 1.0 - frac[2]
                index = ((base[0] + dx) * dims[1] + base[1] + dy) * dims[2] + base[2] + dz
                result += (wx * wy * wz) * flat[index]
    return result


def _warp_template(rng: np.random.Generator, template: np.ndarray, resolution: int) -> tuple[np.ndarray, tuple]:
    """Warps the template with a random small affine and a smooth random displacement (about 3 mm)."""
    shape = template.shape[:3]
    center = (np.array(shape, dtype=np.float32) - 1.0) / 2.0
    half_extent = center * resolution + 1e-6
    grids = [((np.arange(n, dtype=np.float32) - c) * resolution) for n, c in zip(shape, center)]
    points = [
        grids[0][:, None, None],
        grids[1][None, :, None],
        grids[2][None, None, :],
    ]
    normalised = [p / h for p, h in zip(points, half_extent)]
    angles = np.deg2rad(rng.uniform(-5.0, 5.0, size=3))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rotation = (
        np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    )
    linear = (rotation @ np.diag(rng.uniform(0.94, 1.06, size=3))).astype(np.float32)
    translation = rng.uniform(-3.0, 3.0, size=3).astype(np.float32)
    source = []
    for row in range(3):
        displacement = rng.uniform(2.0, 4.0) * smooth_random_field(rng, normalised, num_waves=5, max_frequency=1.2)
        mm = sum(linear[row, col] * points[col] for col in range(3)) + translation[row] + displacement
        source.append(mm / resolution + center[row])
    coords = np.stack(np.broadcast_arrays(*source), axis=0)
    return _sample_trilinear(template, coords), normalised


def make_head_cohort(
    out_dir: str | os.PathLike,
    num_subjects: int = 4,
    resolution: int = 2,
    crop: bool = True,
    seed: int = 0,
    overwrite: bool = False,
) -> list[dict[str, str]]:
    """Writes a cohort of head phantoms on the MNI152 2009a anatomy: MR, CT and a tissue label map per subject.

    The MNI152 grey/white-matter maps and brain mask (read by path from the installed `nilearn` wheel) are block
    averaged to `resolution` mm; a CSF rim (2 mm), skull (7 mm) and scalp (6 mm) are grown around the brain. Each
    subject warps these tissue fractions with a random rotation (+-5 degrees), anisotropic scaling (+-6 %),
    translation (+-3 mm) and a smooth left-right asymmetric displacement field (2..4 mm). From the warped fractions:

    - labels (uint8, the tissue with the largest fraction): 0 background (air and scalp), 1 CSF (brain mask minus
      GM and WM, plus the rim), 2 grey matter, 3 white matter, 4 skull;
    - a T1-like MR (WM bright, GM grey, CSF, bone and air dark, scalp bright) times a smooth bias field (+-20 %)
      with Rician noise (non-negative);
    - a pseudo-CT in HU, mixing air -1000, CSF 15, GM 40, WM 28, scalp 40 and a textured skull of 700..1500 HU by
      partial volume, with Gaussian noise of 10 HU.

    Files follow the pelvis cohort layout: `MR/subj_XXX_mr.nii.gz`, `CT/subj_XXX_ct.nii.gz` (float32) and
    `LABEL/subj_XXX_label.nii.gz` (uint8), sharing one shape and an affine in MNI space (RAS, mm). The MNI152
    template is left-right symmetric; the random warps are not, but never split training and test data by hemisphere.

    Args:
        out_dir: output folder, created if missing.
        num_subjects: number of subjects.
        resolution: voxel size in mm, an integer block-averaging factor of the 1 mm template (1..8): 2 gives volumes
            of about 90 x 110 x 95 voxels, 4 about 45 x 55 x 48.
        crop: crop the volumes to the head plus a margin of 2 voxels (otherwise keep the template's field of view).
        seed: random seed; subject `i` depends only on `(seed, i)`.
        overwrite: if False, a non-empty `out_dir` raises `FileExistsError`; if True, the cohort files of an earlier
            run are deleted and rewritten (other files are left alone).

    Returns:
        One dict per subject: `{"subject": "subj_000", "mr": path, "ct": path, "label": path}` (paths as strings).

    Raises:
        ImportError: if `nilearn` (which ships the template files) is not installed.
        FileNotFoundError: if the MNI152 maps are missing from the installed package.
        ValueError: for a non-positive `num_subjects` or a `resolution` outside 1..8.
        FileExistsError: if `out_dir` is non-empty and `overwrite` is False.

    Example:

    ```python
    subjects = make_head_cohort("demo/head", num_subjects=2, resolution=4)
    label = nibabel.load(subjects[0]["label"]).get_fdata()
    ```
    """
    function = "make_head_cohort"
    num_subjects = check_positive_int(num_subjects, "num_subjects", function)
    resolution = check_positive_int(resolution, "resolution", function)
    if resolution > 8:
        raise ValueError(f"{function}: `resolution` must be an integer number of mm in 1..8, received {resolution}.")
    template, affine = _head_template(resolution, bool(crop))
    folder = prepare_output_folder(out_dir, overwrite, COHORT_FILE_PATTERNS)
    subjects = []
    for index in range(num_subjects):
        rng = np.random.default_rng([int(seed), index])
        fractions, normalised = _warp_template(rng, template, resolution)
        air = np.clip(1.0 - fractions.sum(axis=-1, keepdims=True), 0.0, 1.0)
        fractions = np.concatenate([air, fractions], axis=-1)
        label = _CHANNEL_LABELS[np.argmax(fractions, axis=-1)]

        texture = 0.5 + 0.5 * smooth_random_field(rng, normalised, num_waves=12, max_frequency=8.0)
        ct_values = np.broadcast_to(_CT_HU, fractions.shape).copy()
        ct_values[..., 4] = 700.0 + 800.0 * texture
        ct = (fractions * ct_values).sum(axis=-1)
        ct += rng.normal(0.0, 10.0, size=ct.shape).astype(np.float32)

        contrast = _MR_T1 * rng.uniform(0.92, 1.08, size=_MR_T1.shape).astype(np.float32)
        mr_values = np.broadcast_to(contrast, fractions.shape).copy()
        mr_values[..., 4] = contrast[4] * (0.5 + 1.5 * (1.0 - texture))  # fatty diploe slightly brighter
        mr = (fractions * mr_values).sum(axis=-1) * mr_bias_field(rng, normalised, strength=0.2)
        mr = add_rician_noise(rng, 1000.0 * mr, sigma=15.0)
        subjects.append(write_cohort_subject(folder, index, mr, ct.astype(np.float32), label, affine))
    return subjects
