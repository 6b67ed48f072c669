"""Procedural pelvis phantom: paired MR, CT and organ labels written as NIfTI.

Every subject gets its own random anatomy (body outline, subcutaneous fat, pelvic bone ring, femoral heads, bladder,
prostate and rectum, each with a random position, size and smooth shape deformation). The anatomy is a 3-D tissue
map, so structures are consistent across axial slices. MR and CT are rendered from the *same* tissue map with
different contrasts, so the pair is perfectly registered, as the paper's MR-to-CT task assumes.

The MR physics (smooth random fields, bias field, Rician noise) is shared with the head phantom in `synthesis.py`,
the MR / CT / LABEL file layout in `cohort_files.py`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from sfg_keras.data.generators.cohort_files import COHORT_FILE_PATTERNS, write_cohort_subject
from sfg_keras.data.generators.output_folder import check_positive_int, prepare_output_folder
from sfg_keras.data.generators.synthesis import add_rician_noise, mr_bias_field, smooth_random_field

# Tissue classes of the pelvis tissue map (internal; the label map is derived from them).
_AIR, _FAT, _MUSCLE, _CORTICAL, _TRABECULAR, _URINE, _PROSTATE, _RECTAL_WALL, _RECTAL_CONTENT, _GAS = range(10)

# Label map written to LABEL/: 0 background (air and all soft tissue / fat), 1 bone, 2 bladder, 3 prostate, 4 rectum.
PELVIS_LABEL_NAMES = ("background", "bone", "bladder", "prostate", "rectum")
_TISSUE_TO_LABEL = np.array([0, 0, 0, 1, 1, 2, 3, 4, 4, 4], dtype=np.uint8)

# CT values in Hounsfield units per tissue (bone gets a texture on top, see `_render_pelvis_ct`).
_CT_HU = np.array([-1000.0, -100.0, 40.0, 1000.0, 400.0, 10.0, 45.0, 35.0, 20.0, -800.0], dtype=np.float32)

# T2-like MR signal per tissue (arbitrary units before scaling): bone and air dark, urine bright, fat bright-ish.
_MR_T2 = np.array([0.0, 0.75, 0.3, 0.03, 0.2, 1.0, 0.55, 0.35, 0.45, 0.01], dtype=np.float32)

def _check_triple(values: Sequence[float], name: str, function: str, integer: bool) -> tuple:
    kind = "positive integers" if integer else "positive numbers"
    try:
        items = tuple(values)
    except TypeError:
        items = ()
    if len(items) != 3 or any(isinstance(v, bool) for v in items):
        raise ValueError(f"{function}: `{name}` must be 3 {kind}, received {values!r}.")
    if integer and not all(isinstance(v, (int, np.integer)) for v in items):
        raise ValueError(f"{function}: `{name}` must be 3 {kind}, received {values!r}.")
    if not all(isinstance(v, (int, float, np.integer, np.floating)) and v > 0 for v in items):
        raise ValueError(f"{function}: `{name}` must be 3 {kind}, received {values!r}.")
    return tuple(int(v) for v in items) if integer else tuple(float(v) for v in items)


def _blur_axes(volume: np.ndarray, axes: Sequence[int]) -> np.ndarray:
    """Blurs with the 3-tap kernel [1/4, 1/2, 1/4] along `axes` (edges replicated): a light partial-volume effect."""
    result = volume.astype(np.float32, copy=True)
    for axis in axes:
        padded = np.concatenate([np.take(result, [0], axis=axis), result, np.take(result, [-1], axis=axis)], axis=axis)
        n = result.shape[axis]
        result = (
            0.25 * np.take(padded, range(0, n), axis=axis)
            + 0.5 * np.take(padded, range(1, n + 1), axis=axis)
            + 0.25 * np.take(padded, range(2, n + 2), axis=axis)
        )
    return result.astype(np.float32)


def _ellipse_radius(
    u: np.ndarray, v: np.ndarray, center: tuple[float, float], axes: tuple[float, float], wobble: np.ndarray
) -> np.ndarray:
    """Normalised radius of a 2-D ellipse whose outline is perturbed by `wobble` (a few cosine harmonics of angle).

    Args:
        u, v: in-plane coordinates.
        center: ellipse centre.
        axes: semi-axes.
        wobble: array [num_harmonics, 2] of (amplitude, phase) for harmonics 2, 3, ...

    Returns:
        The radius; the shape is the region where it is below 1.
    """
    du = (u - center[0]) / axes[0]
    dv = (v - center[1]) / axes[1]
    angle = np.arctan2(dv, du)
    outline = np.ones_like(angle)
    for k, (amplitude, phase) in enumerate(wobble, start=2):
        outline += np.float32(amplitude) * np.cos(k * angle + np.float32(phase))
    return np.sqrt(du * du + dv * dv) / outline


def _ellipsoid_radius(
    u: np.ndarray,
    v: np.ndarray,
    w: np.ndarray,
    center: tuple[float, float, float],
    axes: tuple[float, float, float],
    wobble: np.ndarray,
) -> np.ndarray:
    """Normalised radius of an ellipsoid whose in-plane outline is perturbed by cosine harmonics (see above)."""
    planar = _ellipse_radius(u, v, center[:2], axes[:2], wobble)
    dw = (w - center[2]) / axes[2]
    return np.sqrt(planar * planar + dw * dw)


class _PelvisGrid(NamedTuple):
    """Voxel coordinates of a pelvis volume (see `_pelvis_tissue_map`).

    Attributes:
        u, v, w: normalised coordinates, broadcastable to the volume shape.
        u_d, v_d, w_d: the same after the smooth random deformation (full volume shape).
        z_inplane: `w_d` in in-plane units (for round femoral heads).
        axial_to_inplane: ratio of the axial to the in-plane normalisation length.
    """

    u: np.ndarray
    v: np.ndarray
    w: np.ndarray
    u_d: np.ndarray
    v_d: np.ndarray
    w_d: np.ndarray
    z_inplane: np.ndarray
    axial_to_inplane: float


def _pelvis_grid(rng: np.random.Generator, shape: tuple[int, int, int], spacing: tuple[float, ...]) -> _PelvisGrid:
    """Normalised and randomly deformed coordinates of the volume (draws the deformation from `rng`)."""
    nx, ny, nz = shape
    half_inplane = 0.5 * min(nx * spacing[0], ny * spacing[1])
    half_axial = 0.5 * nz * spacing[2]
    u = ((np.arange(nx, dtype=np.float32) - (nx - 1) / 2.0) * spacing[0] / half_inplane)[:, None, None]
    v = ((np.arange(ny, dtype=np.float32) - (ny - 1) / 2.0) * spacing[1] / half_inplane)[None, :, None]
    w = ((np.arange(nz, dtype=np.float32) - (nz - 1) / 2.0) * spacing[2] / half_axial)[None, None, :]
    # Smooth random deformation shared by every structure: displaced coordinates.
    amplitude = 0.035
    u_d = u + amplitude * smooth_random_field(rng, (u, v, w), num_waves=4, max_frequency=0.8)
    v_d = v + amplitude * smooth_random_field(rng, (u, v, w), num_waves=4, max_frequency=0.8)
    w_d = np.broadcast_to(w, u_d.shape)
    axial_to_inplane = half_axial / half_inplane
    # Physical z in in-plane units (for round femoral heads).
    z_inplane = w_d * axial_to_inplane
    return _PelvisGrid(u, v, w, u_d, v_d, w_d, z_inplane, axial_to_inplane)


def _wobble(rng: np.random.Generator, num: int, scale: float) -> np.ndarray:
    """Random outline harmonics for `_ellipse_radius`: `num` rows of (amplitude in [0, scale), phase)."""
    return np.stack([rng.uniform(0.0, scale, size=num), rng.uniform(0.0, 2.0 * np.pi, size=num)], axis=1)


def _draw_body(rng: np.random.Generator, tissue: np.ndarray, grid: _PelvisGrid) -> None:
    """Body outline and subcutaneous fat, in place; the body tapers slightly towards the feet."""
    body_axes = (rng.uniform(0.82, 0.93), rng.uniform(0.6, 0.72))
    body_center = (rng.uniform(-0.03, 0.03), rng.uniform(-0.05, 0.03))
    taper = 1.0 + 0.04 * grid.w_d
    body_r = _ellipse_radius(grid.u_d / taper, grid.v_d / taper, body_center, body_axes, _wobble(rng, 3, 0.035))
    fat_depth = rng.uniform(0.78, 0.9)
    tissue[body_r < 1.0] = _FAT
    tissue[body_r < fat_depth] = _MUSCLE


def _draw_pelvic_bones(rng: np.random.Generator, tissue: np.ndarray, grid: _PelvisGrid) -> tuple[float, float]:
    """Pelvic bone ring, pelvic fat and femoral heads, in place; returns the ring's centre."""
    u_d, v_d, w_d = grid.u_d, grid.v_d, grid.w_d
    # Pelvic bone ring (ilium laterally, sacrum posteriorly, pubis anteriorly in the inferior half only).
    ring_center = (rng.uniform(-0.03, 0.03), rng.uniform(-0.08, 0.0))
    ring_axes = (rng.uniform(0.5, 0.58), rng.uniform(0.38, 0.45))
    ring_r = _ellipse_radius(u_d, v_d, ring_center, ring_axes, _wobble(rng, 2, 0.04))
    angle = np.arctan2((v_d - ring_center[1]) / ring_axes[1], (u_d - ring_center[0]) / ring_axes[0])
    thickness = rng.uniform(0.08, 0.11) * (1.0 + 0.45 * np.cos(2.0 * angle))
    band = np.abs(ring_r - 1.0) / thickness
    # Pelvic fat filling the ring's interior around the organs.
    pelvic_fat = (ring_r < 1.0 - rng.uniform(0.15, 0.3)) & (tissue == _MUSCLE)
    tissue[pelvic_fat] = _FAT
    pubis_cut = rng.uniform(-0.1, 0.3)
    anterior_gap = (v_d - ring_center[1] > 0.55 * ring_axes[1]) & (w_d > pubis_cut)
    bone = (band < 1.0) & ~anterior_gap
    cortical = bone & (band > 0.55)

    # Femoral heads: spheres beside the ring (the acetabulum), in the inferior part of the volume.
    head_radius = rng.uniform(0.13, 0.17)
    head_z = rng.uniform(-0.75, -0.35) * grid.axial_to_inplane
    head_y = rng.uniform(-0.06, 0.04)
    for side in (-1.0, 1.0):
        head_x = side * (ring_axes[0] + rng.uniform(0.05, 0.1)) + ring_center[0]
        dist = np.sqrt((u_d - head_x) ** 2 + (v_d - head_y) ** 2 + (grid.z_inplane - head_z) ** 2) / head_radius
        bone |= dist < 1.0
        cortical |= (dist < 1.0) & (dist > 0.75)
    bone &= tissue != _AIR
    tissue[bone] = _TRABECULAR
    tissue[cortical & bone] = _CORTICAL
    return ring_center


def _draw_bladder_and_prostate(
    rng: np.random.Generator, tissue: np.ndarray, grid: _PelvisGrid, ring_center: tuple[float, float]
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Bladder and prostate, in place; returns the prostate's centre and semi-axes."""
    u_d, v_d, w_d = grid.u_d, grid.v_d, grid.w_d
    # Bladder: an ellipsoid inside the ring, anterior and superior.
    bladder_center = (rng.uniform(-0.04, 0.04), rng.uniform(0.04, 0.12) + ring_center[1], rng.uniform(0.15, 0.45))
    bladder_axes = (rng.uniform(0.18, 0.27), rng.uniform(0.12, 0.18), rng.uniform(0.5, 0.8))
    bladder = _ellipsoid_radius(u_d, v_d, w_d, bladder_center, bladder_axes, _wobble(rng, 3, 0.06)) < 1.0
    tissue[bladder] = _URINE

    # Prostate: below the bladder, slightly posterior.
    prostate_center = (
        bladder_center[0] + rng.uniform(-0.02, 0.02),
        bladder_center[1] - rng.uniform(0.0, 0.04),
        rng.uniform(-0.55, -0.3),
    )
    prostate_axes = (rng.uniform(0.11, 0.15), rng.uniform(0.08, 0.11), rng.uniform(0.35, 0.5))
    prostate = _ellipsoid_radius(u_d, v_d, w_d, prostate_center, prostate_axes, _wobble(rng, 2, 0.05)) < 1.0
    tissue[prostate] = _PROSTATE
    return prostate_center, prostate_axes


def _draw_rectum(
    rng: np.random.Generator,
    tissue: np.ndarray,
    grid: _PelvisGrid,
    prostate_center: tuple[float, float, float],
    prostate_axes: tuple[float, float, float],
) -> None:
    """Rectum, in place: a tube along z, posterior to the prostate, meandering gently; wall, content and sometimes
    gas."""
    u_d, v_d, w_d = grid.u_d, grid.v_d, grid.w_d
    rectum_axes = (rng.uniform(0.09, 0.13), rng.uniform(0.07, 0.1))
    rectum_y = prostate_center[1] - prostate_axes[1] - rectum_axes[1] - rng.uniform(0.02, 0.05)
    meander = rng.uniform(0.0, 0.04) * np.sin(np.pi * w_d * rng.uniform(0.5, 1.0) + rng.uniform(0, 2 * np.pi))
    rectum_center = (rng.uniform(-0.03, 0.03), rectum_y)
    rectum_r = _ellipse_radius(u_d - meander, v_d, rectum_center, rectum_axes, _wobble(rng, 2, 0.08))
    rectum = rectum_r < 1.0
    lumen = rectum_r < rng.uniform(0.45, 0.65)
    tissue[rectum] = _RECTAL_WALL
    tissue[lumen] = _RECTAL_CONTENT
    if rng.uniform() < 0.6:
        gas_low = rng.uniform(-1.0, 0.2)
        gas_high = gas_low + rng.uniform(0.3, 0.9)
        gas_side = rng.uniform(-0.3, 0.3) * rectum_axes[1]
        gas = lumen & (w_d > gas_low) & (w_d < gas_high) & (v_d > rectum_y + gas_side)
        tissue[gas] = _GAS


def _pelvis_tissue_map(rng: np.random.Generator, shape: tuple[int, int, int], spacing: tuple[float, ...]):
    """Draws one random pelvis as a tissue map (and a bone texture in [0, 1]).

    The anatomy is scaled to the field of view: in-plane coordinates `u` (left-right) and `v` (posterior-anterior) are
    in units of half the smaller in-plane field of view, `w` (inferior-superior) in units of half the axial extent.
    """
    grid = _pelvis_grid(rng, shape, spacing)
    tissue = np.full(grid.u_d.shape, _AIR, dtype=np.uint8)
    _draw_body(rng, tissue, grid)
    ring_center = _draw_pelvic_bones(rng, tissue, grid)
    prostate_center, prostate_axes = _draw_bladder_and_prostate(rng, tissue, grid, ring_center)
    _draw_rectum(rng, tissue, grid, prostate_center, prostate_axes)

    u, v, w = grid.u, grid.v, grid.w
    bone_texture = 0.5 + 0.5 * smooth_random_field(rng, (u, v, w), num_waves=12, max_frequency=6.0)
    bone_texture = np.broadcast_to(bone_texture, tissue.shape)
    coords = (u, v, w)
    return tissue, bone_texture, coords


def _render_pelvis_ct(rng: np.random.Generator, tissue: np.ndarray, bone_texture: np.ndarray) -> np.ndarray:
    """CT in Hounsfield units: tissue values, textured bone, light in-plane partial volume, Gaussian noise (15 HU)."""
    ct = _CT_HU[tissue].astype(np.float32)
    trabecular = tissue == _TRABECULAR
    cortical = tissue == _CORTICAL
    ct[trabecular] = 300.0 + 300.0 * bone_texture[trabecular]
    ct[cortical] = 900.0 + 300.0 * bone_texture[cortical]
    ct = _blur_axes(ct, axes=(0, 1))
    ct += rng.normal(0.0, 15.0, size=ct.shape).astype(np.float32)
    return np.clip(ct, -1024.0, 3071.0).astype(np.float32)


def _render_pelvis_mr(
    rng: np.random.Generator, tissue: np.ndarray, bone_texture: np.ndarray, coords: Sequence[np.ndarray]
) -> np.ndarray:
    """T2-like MR from the same tissue map: per-subject contrast jitter, bias field (+-20 %), Rician noise."""
    contrast = _MR_T2 * rng.uniform(0.92, 1.08, size=_MR_T2.shape).astype(np.float32)
    mr = contrast[tissue].astype(np.float32)
    trabecular = tissue == _TRABECULAR
    mr[trabecular] *= 0.7 + 0.6 * bone_texture[trabecular]
    prostate = tissue == _PROSTATE
    mr[prostate] *= 0.85 + 0.3 * bone_texture[prostate]
    mr = _blur_axes(mr, axes=(0, 1))
    mr *= mr_bias_field(rng, coords, strength=0.2)
    return add_rician_noise(rng, 1000.0 * mr, sigma=20.0)


def make_pelvis_cohort(
    out_dir: str | os.PathLike,
    num_subjects: int = 6,
    shape: Sequence[int] = (96, 96, 16),
    spacing: Sequence[float] = (2.0, 2.0, 3.0),
    seed: int = 0,
    overwrite: bool = False,
) -> list[dict[str, str]]:
    """Writes a cohort of procedural pelvis phantoms: MR, CT and an organ label map per subject.

    Each subject has its own random anatomy: a body outline with subcutaneous fat, a pelvic bone ring, two femoral
    heads, the bladder, the prostate and the rectum (sometimes with gas), each with a random position, size and smooth
    deformation. Structures are 3-D, so they are consistent across axial slices; the anatomy is scaled to the field of
    view. From the same tissue map the generator renders

    - CT in Hounsfield units: air -1000, fat -100, soft tissue 40, urine 10, prostate 45, rectal wall 35, rectal gas
      -800, trabecular bone 300..600 and cortical bone 900..1200 (textured), Gaussian noise of 15 HU;
    - a T2-like MR: bone and air dark, urine bright, fat bright-ish, prostate intermediate, times a smooth
      polynomial bias field (+-20 %), with Rician noise (non-negative);
    - labels (uint8): 0 background (air, fat and all other soft tissue), 1 bone, 2 bladder, 3 prostate, 4 rectum
      (wall and lumen). Every label is present in every subject.

    Files: `<out_dir>/MR/subj_XXX_mr.nii.gz`, `<out_dir>/CT/subj_XXX_ct.nii.gz` (float32) and
    `<out_dir>/LABEL/subj_XXX_label.nii.gz` (uint8), all with the same shape and the affine `diag(spacing)` whose
    origin puts the volume centre at (0, 0, 0) mm. Subject `i` depends only on `(seed, i)` (and shape/spacing).

    Args:
        out_dir: output folder, created if missing.
        num_subjects: number of subjects.
        shape: volume shape (x, y, z), z being the axial (slice) axis.
        spacing: voxel size in mm.
        seed: random seed; the same seed gives identical files.
        overwrite: if False, a non-empty `out_dir` raises `FileExistsError`; if True, the cohort files of an earlier
            run are deleted and rewritten (other files are left alone).

    Returns:
        One dict per subject: `{"subject": "subj_000", "mr": path, "ct": path, "label": path}` (paths as strings).

    Raises:
        ValueError: for a non-positive `num_subjects`, or a `shape`/`spacing` that is not 3 positive values (shape
            at least 8 voxels in-plane).
        FileExistsError: if `out_dir` is non-empty and `overwrite` is False.

    Example:

    ```python
    subjects = make_pelvis_cohort("demo/pelvis", num_subjects=2, shape=(64, 64, 8))
    ct = nibabel.load(subjects[0]["ct"]).get_fdata()  # Hounsfield units
    ```
    """
    function = "make_pelvis_cohort"
    num_subjects = check_positive_int(num_subjects, "num_subjects", function)
    shape = _check_triple(shape, "shape", function, integer=True)
    spacing = _check_triple(spacing, "spacing", function, integer=False)
    if shape[0] < 8 or shape[1] < 8:
        raise ValueError(f"{function}: `shape` must be at least 8 voxels in x and y, received {shape!r}.")
    folder = prepare_output_folder(out_dir, overwrite, COHORT_FILE_PATTERNS)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-(n - 1) / 2.0 * s for n, s in zip(shape, spacing)]
    subjects = []
    for index in range(num_subjects):
        rng = np.random.default_rng([int(seed), index])
        tissue, bone_texture, coords = _pelvis_tissue_map(rng, shape, spacing)
        ct = _render_pelvis_ct(rng, tissue, bone_texture)
        mr = _render_pelvis_mr(rng, tissue, bone_texture, coords)
        label = _TISSUE_TO_LABEL[tissue]
        subjects.append(write_cohort_subject(folder, index, mr, ct, label, affine))
    return subjects
