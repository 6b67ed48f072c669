"""UTKFace stand-in: procedural face drawings named exactly like the UTKFace files, and the UTKFace name parser.

No package ships UTKFace, so the demos and tests use drawn faces whose appearance depends on age and gender in ways a
small CNN can learn (age: face elongation, eye height, wrinkles, greying hair, skin contrast; gender: jaw width,
hair length, beard, lip colour), plus race-dependent skin tone and random pose, lighting and noise. The files follow
the real naming scheme `{age}_{gender}_{race}_{yyyymmddHHMMSSfff}.jpg` (and the aligned release's
`.jpg.chip.jpg`), including malformed names like those in the real set, so the real loader is tested on real names.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
from pathlib import Path

import numpy as np
import tensorflow as tf

from sfg_keras.data.generators.output_folder import check_positive_int, prepare_output_folder

# UTKFace label ranges: age 0..116 years, gender 0 (male) / 1 (female), race 0 White, 1 Black, 2 Asian, 3 Indian,
# 4 Others.
UTKFACE_MAX_AGE = 116
UTKFACE_RACES = ("white", "black", "asian", "indian", "others")

_NAME_PATTERN = re.compile(r"^(\d+)_(\d+)_(\d+)_(\d+)\.jpg(?:\.chip\.jpg)?$", re.IGNORECASE)

# Skin colours (RGB in [0, 1]) per race and hair base colours.
_SKIN = np.array(
    [[0.93, 0.78, 0.68], [0.45, 0.30, 0.22], [0.92, 0.80, 0.62], [0.72, 0.52, 0.38], [0.80, 0.62, 0.50]],
    dtype=np.float32,
)
_HAIR = np.array([[0.08, 0.06, 0.05], [0.30, 0.18, 0.10], [0.75, 0.60, 0.35], [0.45, 0.20, 0.08]], dtype=np.float32)
_GREY_HAIR = np.array([0.85, 0.85, 0.85], dtype=np.float32)


def parse_utkface_name(filename: str | os.PathLike) -> tuple[int, int, int] | None:
    """Parses a UTKFace file name into `(age, gender, race)`.

    Accepts `{age}_{gender}_{race}_{datetime}.jpg` and the aligned-and-cropped release's
    `{age}_{gender}_{race}_{datetime}.jpg.chip.jpg`; a directory part is ignored. Valid ranges: age 0..116, gender 0
    (male) or 1 (female), race 0..4 (White, Black, Asian, Indian, Others).

    Args:
        filename: a file name or path.

    Returns:
        `(age, gender, race)` as ints, or None if the name is malformed (a missing or extra field, a non-numeric
        field, another extension) or a value is out of range. The real data set contains a few such names; callers
        skip them.

    Example:

    ```python
    parse_utkface_name("26_1_2_20170116174525125.jpg.chip.jpg")  # (26, 1, 2)
    parse_utkface_name("39_1_20170116174525125.jpg.chip.jpg")  # None: the race field is missing
    ```
    """
    match = _NAME_PATTERN.match(Path(os.fspath(filename)).name)
    if match is None:
        return None
    age, gender, race = (int(match.group(i)) for i in (1, 2, 3))
    if not (0 <= age <= UTKFACE_MAX_AGE and gender in (0, 1) and 0 <= race < len(UTKFACE_RACES)):
        return None
    return age, gender, race


class _Canvas:
    """An RGB float canvas over normalised coordinates in [-1, 1] (y pointing down) with soft-edged painting."""

    def __init__(self, size: int, background: np.ndarray, transform: np.ndarray, offset: np.ndarray):
        coords = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
        gx, gy = np.meshgrid(coords, coords, indexing="xy")
        # Pose: the drawing is defined in face coordinates; map every pixel back into them.
        self.x = transform[0, 0] * (gx - offset[0]) + transform[0, 1] * (gy - offset[1])
        self.y = transform[1, 0] * (gx - offset[0]) + transform[1, 1] * (gy - offset[1])
        self.pixel = 2.0 / size * float(np.sqrt(abs(np.linalg.det(transform))))
        self.image = np.broadcast_to(background, (size, size, 3)).astype(np.float32)
        self.screen_x, self.screen_y = gx, gy

    def paint(self, distance: np.ndarray, colour: np.ndarray, opacity: float = 1.0) -> None:
        """Paints `colour` where the signed distance (in face units) is negative, anti-aliased over one pixel."""
        alpha = np.clip(0.5 - distance / self.pixel, 0.0, 1.0)[..., None] * np.float32(opacity)
        self.image = self.image * (1.0 - alpha) + np.asarray(colour, dtype=np.float32) * alpha

    def ellipse(self, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
        """Approximate signed distance to an ellipse."""
        radius = np.sqrt(((self.x - cx) / ax) ** 2 + ((self.y - cy) / ay) ** 2)
        return (radius - 1.0) * min(ax, ay)

    def segment(self, x0: float, y0: float, x1: float, y1: float, width: float) -> np.ndarray:
        """Signed distance to a segment of the given width."""
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((self.x - x0) * dx + (self.y - y0) * dy) / (dx * dx + dy * dy + 1e-12), 0.0, 1.0)
        return np.sqrt((self.x - x0 - t * dx) ** 2 + (self.y - y0 - t * dy) ** 2) - width / 2.0

    def face(self, cx: float, cy: float, half_width: float, half_height: float, jaw_taper: float) -> np.ndarray:
        """Signed distance to an egg shape: an ellipse whose lower half narrows by `jaw_taper` towards the chin."""
        below = np.clip((self.y - cy) / half_height, 0.0, 1.0)
        width = half_width * (1.0 - jaw_taper * below * below)
        return self.ellipse_with_width(cx, cy, width, half_height)

    def ellipse_with_width(self, cx: float, cy: float, width: np.ndarray, half_height: float) -> np.ndarray:
        radius = np.sqrt(((self.x - cx) / width) ** 2 + ((self.y - cy) / half_height) ** 2)
        return (radius - 1.0) * np.minimum(width, half_height)


@dataclasses.dataclass(frozen=True)
class _FaceSpec:
    """Labels, colours and geometry of one drawn face (face coordinates, see `_Canvas`)."""

    age: int
    female: bool
    adult: float  # 0 for toddlers, 1 from about 18 years
    old: float  # 0 up to 35 years, 1 from 80 years
    skin: np.ndarray
    hair: np.ndarray
    cx: float
    cy: float
    half_width: float
    half_height: float
    jaw_taper: float
    hair_length: float
    bald: bool


def _posed_canvas(rng: np.random.Generator, size: int) -> _Canvas:
    """A canvas with a random pose (rotation, scale and shift) and background colour."""
    angle = np.deg2rad(rng.normal(0.0, 7.0))
    scale = rng.uniform(0.9, 1.1)
    rotation = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]]) / scale
    offset = rng.normal(0.0, 0.04, size=2)
    background = rng.uniform(0.15, 0.9, size=3).astype(np.float32)
    return _Canvas(size, background, rotation.astype(np.float32), offset.astype(np.float32))


def _sample_face_spec(rng: np.random.Generator, age: int, gender: int, race: int) -> _FaceSpec:
    """Draws the colours and geometry of a face with the given labels."""
    adult = float(np.clip((age - 2.0) / 16.0, 0.0, 1.0))
    old = float(np.clip((age - 35.0) / 45.0, 0.0, 1.0))
    female = gender == 1
    skin = np.clip(_SKIN[race] * rng.uniform(0.92, 1.08, size=3), 0, 1).astype(np.float32)
    skin = (1.0 - 0.3 * old) * skin + 0.3 * old * skin.mean()  # paler, lower contrast skin with age
    hair_base = _HAIR[rng.integers(len(_HAIR))] if race in (0, 4) else _HAIR[0]
    grey = float(np.clip((age - 40.0) / 35.0 + rng.normal(0.0, 0.1), 0.0, 1.0))
    hair = (1.0 - grey) * hair_base + grey * _GREY_HAIR

    # Face geometry: children round with a large forehead; adults elongated; men have a wide jaw.
    half_width = 0.5 + rng.normal(0.0, 0.02)
    elongation = 1.0 + 0.32 * adult + 0.08 * old + rng.normal(0.0, 0.03)
    half_height = half_width * elongation
    cx, cy = 0.0, 0.05
    jaw_taper = (0.45 if female else 0.12) + rng.normal(0.0, 0.04)
    hair_length = (rng.uniform(0.55, 1.0) if female else rng.uniform(0.0, 0.2)) * (0.6 + 0.4 * adult)
    bald = (not female) and rng.uniform() < 0.8 * old
    return _FaceSpec(age, female, adult, old, skin, hair, cx, cy, half_width, half_height, jaw_taper, hair_length, bald)


def _paint_head(canvas: _Canvas, rng: np.random.Generator, face: _FaceSpec) -> None:
    """Paints long hair, shoulders, neck, ears, the face, the hair cap and (for some adult men) a beard."""
    cx, cy, half_width, half_height = face.cx, face.cy, face.half_width, face.half_height
    hair, skin, hair_length = face.hair, face.skin, face.hair_length
    # Long hair behind the head and shoulders.
    if hair_length > 0.3:
        bottom = cy + half_height * (0.2 + 1.6 * hair_length)
        canvas.paint(
            canvas.ellipse(cx, (cy - half_height * 0.2 + bottom) / 2, half_width * 1.3, (bottom - cy) * 0.85 + 0.3),
            hair,
        )
    shirt = rng.uniform(0.1, 0.9, size=3).astype(np.float32)
    canvas.paint(canvas.ellipse(cx, cy + half_height + 0.55, 0.95, 0.5), shirt)
    canvas.paint(canvas.segment(cx, cy + half_height * 0.6, cx, cy + half_height + 0.2, 0.4), skin * 0.9)
    # Ears and face.
    for side in (-1.0, 1.0):
        canvas.paint(canvas.ellipse(cx + side * half_width * 0.97, cy, 0.08, 0.14), skin * 0.95)
    canvas.paint(canvas.face(cx, cy, half_width, half_height, face.jaw_taper), skin)
    # Hair cap on top (thin or missing when bald).
    if not face.bald:
        cap_top = cy - half_height * (1.0 + 0.12 * hair_length)
        cap = np.maximum(
            canvas.ellipse(cx, cy - half_height * 0.35, half_width * 1.05, half_height * 0.75),
            (canvas.y - (cy - half_height * (0.45 - 0.1 * hair_length))),
        )
        canvas.paint(np.minimum(cap, canvas.ellipse(cx, cap_top + half_height * 0.4, half_width * 0.9, 0.35)), hair)
    # Beard or stubble for some adult men.
    if not face.female and face.age >= 18 and rng.uniform() < 0.35:
        beard = np.maximum(
            canvas.face(cx, cy, half_width, half_height, face.jaw_taper), -(canvas.y - cy - half_height * 0.3)
        )
        canvas.paint(beard, hair * 0.8, opacity=rng.uniform(0.4, 0.9))


def _paint_eyes(canvas: _Canvas, face: _FaceSpec) -> float:
    """Paints eyes, eyebrows and crow's feet; returns the eyes' height. Eyes sit lower on children's faces;
    eyebrows are thicker for men."""
    cx, old = face.cx, face.old
    eye_y = face.cy + face.half_height * (0.1 - 0.22 * face.adult)
    eye_dx = face.half_width * 0.42
    eye_size = 0.075 * (1.25 - 0.25 * face.adult)
    for side in (-1.0, 1.0):
        ex = cx + side * eye_dx
        canvas.paint(canvas.ellipse(ex, eye_y, eye_size * 1.4, eye_size * 0.8), np.array([0.95, 0.95, 0.95]))
        canvas.paint(canvas.ellipse(ex, eye_y, eye_size * 0.7, eye_size * 0.7), np.array([0.1, 0.07, 0.05]))
        brow_y = eye_y - eye_size * 1.8
        canvas.paint(
            canvas.segment(ex - side * 0.04, brow_y, ex + side * 0.13, brow_y - 0.02, 0.05 if face.female else 0.07),
            face.hair * 0.9 + 0.05,
        )
        # Crow's feet.
        for k in range(int(4 * old)):
            dy = (k - 1) * 0.035
            canvas.paint(
                canvas.segment(ex + side * 0.14, eye_y + dy, ex + side * 0.22, eye_y + dy * 1.8, 0.012),
                face.skin * 0.55,
                opacity=0.5 + 0.5 * old,
            )
    return eye_y


def _paint_nose_mouth_and_wrinkles(canvas: _Canvas, rng: np.random.Generator, face: _FaceSpec, eye_y: float) -> None:
    """Paints the nose, mouth, nasolabial folds (after 35) and forehead wrinkles (more and darker with age)."""
    cx, cy, half_height, skin, old, age = face.cx, face.cy, face.half_height, face.skin, face.old, face.age
    nose_y = cy + half_height * (0.3 - 0.05 * face.adult)
    canvas.paint(canvas.segment(cx, eye_y + 0.05, cx + 0.02, nose_y, 0.03), skin * 0.75)
    mouth_y = cy + half_height * (0.52 - 0.04 * face.adult)
    lips = np.array([0.75, 0.15, 0.2]) if face.female else skin * 0.6 + np.array([0.15, 0.0, 0.0])
    canvas.paint(canvas.ellipse(cx, mouth_y, 0.14, 0.035 + 0.015 * face.female), lips)
    if age > 35:
        for side in (-1.0, 1.0):
            canvas.paint(
                canvas.segment(cx + side * 0.1, nose_y - 0.02, cx + side * 0.19, mouth_y + 0.04, 0.015),
                skin * 0.6,
                opacity=min(1.0, 0.3 + old),
            )
    # Forehead wrinkles: more and darker with age.
    for k in range(int(np.clip((age - 30) / 10.0, 0, 5))):
        wy = eye_y - 0.2 - 0.055 * k
        canvas.paint(
            canvas.segment(cx - 0.22, wy, cx + 0.22, wy + rng.normal(0, 0.01), 0.015),
            skin * 0.55,
            opacity=0.5 + 0.5 * old,
        )


def _lit_noisy_pixels(canvas: _Canvas, rng: np.random.Generator) -> np.ndarray:
    """The canvas with a random lighting gradient and noise, quantised to uint8."""
    direction = rng.normal(size=2)
    direction /= np.linalg.norm(direction) + 1e-12
    light = 1.0 + rng.uniform(0.05, 0.25) * (direction[0] * canvas.screen_x + direction[1] * canvas.screen_y)
    image = canvas.image * light[..., None] * rng.uniform(0.85, 1.1)
    image += rng.normal(0.0, 0.02, size=image.shape)
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def _draw_face(rng: np.random.Generator, age: int, gender: int, race: int, size: int) -> np.ndarray:
    """Draws one face as a uint8 RGB array [size, size, 3]."""
    canvas = _posed_canvas(rng, size)
    face = _sample_face_spec(rng, age, gender, race)
    _paint_head(canvas, rng, face)
    eye_y = _paint_eyes(canvas, face)
    _paint_nose_mouth_and_wrinkles(canvas, rng, face, eye_y)
    return _lit_noisy_pixels(canvas, rng)


def _sample_age(rng: np.random.Generator) -> int:
    """Ages distributed roughly like UTKFace: some children, most 18..60, a tail up to 100."""
    kind = rng.choice(3, p=[0.15, 0.6, 0.25])
    if kind == 0:
        age = rng.uniform(1, 16)
    elif kind == 1:
        age = rng.normal(32.0, 10.0)
    else:
        age = rng.uniform(50, 100)
    return int(np.clip(round(age), 1, 100))


def _timestamp(rng: np.random.Generator) -> str:
    """A `yyyymmddHHMMSSfff` string in Dec 2016 - Jan 2017, as in UTKFace."""
    start = datetime.datetime(2016, 12, 1)
    moment = start + datetime.timedelta(milliseconds=int(rng.integers(0, 60 * 24 * 3600 * 1000)))
    return moment.strftime("%Y%m%d%H%M%S") + f"{moment.microsecond // 1000:03d}"


_MALFORMED_TEMPLATES = (
    "{age}_{gender}_{stamp}.jpg.chip.jpg",  # race missing, as 39_1_20170116174525125.jpg.chip.jpg
    "{age}_{gender}_{stamp}.jpg",  # race missing, as 61_1_20170109150557335.jpg
    "{age}__{race}_{stamp}.jpg",  # empty gender field
    "{age}_{gender}_{race}.jpg",  # date missing
)


def _check_utkface_arguments(
    num_images: int, size: int, num_malformed: int, aligned_fraction: float
) -> tuple[int, int]:
    """Validates `make_utkface_folder`'s counts and sizes; returns the checked `(num_images, size)`."""
    function = "make_utkface_folder"
    num_images = check_positive_int(num_images, "num_images", function)
    size = check_positive_int(size, "size", function)
    if size < 16:
        raise ValueError(f"{function}: `size` must be at least 16 pixels, received {size}.")
    if isinstance(num_malformed, bool) or not isinstance(num_malformed, (int, np.integer)) or num_malformed < 0:
        raise ValueError(f"{function}: `num_malformed` must be a non-negative integer, received {num_malformed!r}.")
    if not 0.0 <= float(aligned_fraction) <= 1.0:
        raise ValueError(f"{function}: `aligned_fraction` must be in [0, 1], received {aligned_fraction!r}.")
    return num_images, size


def _unique_timestamp(rng: np.random.Generator, used: set[str]) -> str:
    """A `_timestamp` not in `used` (which it joins)."""
    while True:
        stamp = _timestamp(rng)
        if stamp not in used:
            used.add(stamp)
            return stamp


def _write_face(folder: Path, name: str, rng: np.random.Generator, age: int, gender: int, race: int, size: int) -> str:
    """Draws a face and writes it as JPEG (quality 90) to `folder / name`; returns the path as a string."""
    pixels = _draw_face(rng, age, gender, race, size)
    path = folder / name
    path.write_bytes(tf.io.encode_jpeg(pixels, quality=90).numpy())
    return str(path)


def _write_valid_faces(
    folder: Path, rng: np.random.Generator, used: set[str], num_images: int, size: int, aligned_fraction: float
) -> list[str]:
    """Writes `num_images` faces with valid UTKFace names; returns their paths."""
    files = []
    for _ in range(num_images):
        age, gender = _sample_age(rng), int(rng.integers(2))
        race = int(rng.choice(len(UTKFACE_RACES), p=[0.42, 0.19, 0.15, 0.17, 0.07]))
        suffix = ".jpg.chip.jpg" if rng.uniform() < aligned_fraction else ".jpg"
        name = f"{age}_{gender}_{race}_{_unique_timestamp(rng, used)}{suffix}"
        files.append(_write_face(folder, name, rng, age, gender, race, size))
    return files


def _write_malformed_faces(
    folder: Path, rng: np.random.Generator, used: set[str], num_malformed: int, size: int
) -> list[str]:
    """Writes `num_malformed` faces whose names follow `_MALFORMED_TEMPLATES` in turn; returns their paths."""
    files = []
    for k in range(int(num_malformed)):
        age, gender, race = _sample_age(rng), int(rng.integers(2)), int(rng.integers(5))
        name = _MALFORMED_TEMPLATES[k % len(_MALFORMED_TEMPLATES)].format(
            age=age, gender=gender, race=race, stamp=_unique_timestamp(rng, used)
        )
        if (folder / name).exists():  # "{age}_{gender}_{race}.jpg" may repeat; keep names unique
            name = name.replace(".jpg", f"_{k}x.jpg", 1)
        files.append(_write_face(folder, name, rng, age, gender, race, size))
    return files


def make_utkface_folder(
    out_dir: str | os.PathLike,
    num_images: int = 200,
    size: int = 64,
    seed: int = 0,
    num_malformed: int = 3,
    aligned_fraction: float = 0.2,
    overwrite: bool = False,
) -> dict:
    """Writes a folder of face drawings named like UTKFace, including malformed names as in the real set.

    Each valid image is `{age}_{gender}_{race}_{yyyymmddHHMMSSfff}.jpg`, or with probability `aligned_fraction`
    the aligned release's `{...}.jpg.chip.jpg`: age 1..100 (UTKFace-like distribution), gender 0 male / 1 female,
    race 0..4. Appearance depends on the labels so that a small CNN can learn them at 64 x 64: age sets the face
    elongation, eye height, wrinkles, hair greying and skin contrast; gender sets the jaw width, hair length, beard
    and lip colour; race the skin tone. Pose, background, lighting, noise and JPEG compression vary at random.
    `num_malformed` extra images get names that `parse_utkface_name` rejects, following the real set's defects
    (a missing race field as in `39_1_20170116174525125.jpg.chip.jpg` or `61_1_20170109150557335.jpg`, an empty
    field, a missing date).

    Args:
        out_dir: output folder, created if missing.
        num_images: number of validly named images.
        size: image height and width in pixels.
        seed: random seed; the same seed gives identical files.
        num_malformed: number of additional images with malformed names (may be 0).
        aligned_fraction: fraction of valid names with the `.jpg.chip.jpg` suffix, in [0, 1].
        overwrite: if False, a non-empty `out_dir` raises `FileExistsError`; if True, earlier `*.jpg` files in
            `out_dir` are deleted first (other files are left alone).

    Returns:
        `{"num_valid": int, "num_malformed": int, "files": [path, ...]}` with every written path as a string
        (valid images first, then the malformed ones).

    Raises:
        ValueError: for a non-positive `num_images` or `size` below 16, a negative `num_malformed`, or an
            `aligned_fraction` outside [0, 1].
        FileExistsError: if `out_dir` is non-empty and `overwrite` is False.

    Example:

    ```python
    summary = make_utkface_folder("demo/utkface", num_images=100)
    ages = [parse_utkface_name(f) for f in summary["files"]]  # None for the malformed ones
    ```
    """
    num_images, size = _check_utkface_arguments(num_images, size, num_malformed, aligned_fraction)
    folder = prepare_output_folder(out_dir, overwrite, ("*.jpg",))
    rng = np.random.default_rng(int(seed))
    used: set[str] = set()
    files = _write_valid_faces(folder, rng, used, num_images, size, aligned_fraction)
    files += _write_malformed_faces(folder, rng, used, num_malformed, size)
    return {"num_valid": num_images, "num_malformed": int(num_malformed), "files": files}
