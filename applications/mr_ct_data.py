"""Volume and slice data of the mr_ct application: loading and checking subjects, slices, patches, statistics.

numpy only (no TensorFlow): the application (`sfg_keras_applications.mr_ct`) turns these arrays into `tf.data`
pipelines and inference inputs. Axial slices are `[N, H, W(, C)]`, volumes `[X, Y, Z]` (see
`sfg_keras.data.volume_to_slices`).

Example:

```python
volumes = load_subject(row, ["MR", "CT", "LABEL"], segmentation_tasks)
inputs, size = inference_slices(normalised_mr)  # [Z, H8, W8, 1], (X, Y)
volume = slices_back_to_volume(predicted_slices, size)  # [X, Y, Z]
```
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from sfg_keras.config import Settings, TaskSpec
from sfg_keras.data import (
    crop_slices_from,
    ct_to_target,
    pad_slices_to,
    padded_size,
    slices_to_volume,
    volume_to_slices,
)
from sfg_keras.io import InputSection, NiftiVolume, check_same_geometry, load_nifti, match_subjects

#: Whole slices are padded to a multiple of this at inference (three stride-2 levels of the networks).
SLICE_MULTIPLE = 8
#: Pixels of one vectorised Monte-Carlo pass (slices x samples x height x width): bounds inference memory.
PIXELS_PER_PASS = 2**20


class TaskKinds:
    """The regression (CT) and segmentation (label map) tasks of anything with `tasks`: the application and its
    evaluation inputs.

    Example:

    ```python
    ct = app.regression_tasks[0]  # the first regression task is the CT
    ```
    """

    tasks: Sequence[TaskSpec]

    @property
    def regression_tasks(self) -> list[TaskSpec]:
        """The regression (CT) tasks, in task order."""
        return [task for task in self.tasks if task.type == "regression"]

    @property
    def segmentation_tasks(self) -> list[TaskSpec]:
        """The segmentation (label map) tasks, in task order."""
        return [task for task in self.tasks if task.type == "segmentation"]


@dataclasses.dataclass
class SliceData:
    """The axial slices of one phase: MR `[N, H, W, 1]` and one target `[N, H, W, 1]` per task, all float32.

    Attributes:
        images: normalised MR slices.
        targets: `{task: slices}`: CT targets (`HU / 1024 + 1`, NaN = masked) or labels (-1 = masked).
        subjects: the subjects the slices come from, in order.

    Example:

    ```python
    data = stack_slices(["subj_000"], volumes, "MR", tasks, normalise=lambda mr: mr)
    len(data)  # number of slices
    ```
    """

    images: np.ndarray
    targets: dict[str, np.ndarray]
    subjects: list[str]
    slice_counts: list[int] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def slice_source(self, index: int) -> str:
        """`"<subject> slice <k>"` for slice `index` (the subject alone when the counts are unknown)."""
        start = 0
        for subject, count in zip(self.subjects, self.slice_counts):
            if index < start + count:
                return f"{subject} slice {index - start}"
            start += count
        return f"slice {index}"


@dataclasses.dataclass
class SubjectContext:
    """What `write_outputs` needs of one subject: its MR (geometry of the outputs) and the original slice size.

    Example:

    ```python
    SubjectContext(reference=load_nifti("subj_000_mr.nii.gz"), slice_size=(48, 48))
    ```
    """

    reference: NiftiVolume
    slice_size: tuple[int, int]


def fill_value(task: TaskSpec) -> float:
    """The masked value of a task's targets: NaN for regression, -1 for labels.

    Example:

    ```python
    pad_slices_to(targets, size, fill_value(task))
    ```
    """
    return np.nan if task.type == "regression" else -1.0


def check_labels(volumes: Mapping[str, NiftiVolume], subject: str, segmentation_tasks: Sequence[TaskSpec]) -> None:
    """Checks that every segmentation reference holds integer labels in `0..num_classes-1` (or -1, unlabelled).

    Raises:
        ValueError: naming the subject, the section, the file and the offending values.

    Example:

    ```python
    check_labels({"LABEL": load_nifti("subj_000_label.nii.gz")}, "subj_000", [organs_task])
    ```
    """
    for task in segmentation_tasks:
        labels = volumes[task.label].data
        classes = int(task.num_classes)
        bad = np.unique(labels[(labels != np.round(labels)) | (labels < -1) | (labels >= classes)])
        if bad.size:
            values = [int(v) if float(v).is_integer() else float(v) for v in bad[:10]]
            raise ValueError(
                f"Subject '{subject}': [{task.label}] ({volumes[task.label].path}) holds values {values} that are "
                f"not labels of task {task.name!r}; expected integers in 0..{classes - 1} (-1 = unlabelled)."
            )


def match_files(settings: Settings, sections: Sequence[str], other_folder: str | None = None,
                required: Sequence[str] | None = None) -> list[dict[str, str | None]]:
    """`sfg_keras.io.match_subjects` over the named input sections of `settings`.

    Args:
        settings: the run's settings (the input sections and the config folder).
        sections: the input sections to match (repeats are ignored).
        other_folder: a folder searched instead of every section's `path_to_search` (`[INFERENCE] input_dir`; the
            sections' `csv_file` is then not used).
        required: the sections every subject must have (default: all).

    Raises:
        FileNotFoundError, ValueError: from `sfg_keras.io` (missing folder, subject missing a section, ...).

    Example:

    ```python
    rows = match_files(settings, ["MR", "CT", "LABEL"])  # [{"subject": "subj_000", "MR": ".../s0_mr.nii.gz", ...}]
    ```
    """
    inputs = []
    for name in dict.fromkeys(sections):
        section = settings.inputs[name]
        inputs.append(InputSection(
            name=name,
            path_to_search=[str(other_folder)] if other_folder else list(section.path_to_search),
            filename_contains=list(section.filename_contains),
            filename_not_contains=list(section.filename_not_contains),
            filename_removefromid=section.filename_removefromid or None,
            csv_file=None if other_folder else section.csv_file or None,
        ))
    return match_subjects(inputs, base_dir=settings.config_dir, required=required)


def load_volume(path: str) -> NiftiVolume:
    """`load_nifti` of a volume `[X, Y, Z]`: a trailing 4th axis of size 1 (`[X, Y, Z, 1]`) is dropped.

    Example:

    ```python
    mr = load_volume("data/MR/subj_000_mr.nii.gz")  # data [X, Y, Z] float32
    ```
    """
    volume = load_nifti(path)
    if volume.data.ndim == 4 and volume.data.shape[3] == 1:
        volume.data = volume.data[..., 0]
    return volume


def load_mr(path: str, section: str, subject: str) -> NiftiVolume:
    """`load_volume` of a subject's MR, which must be 3-D.

    Raises:
        ValueError: the volume is not 3-D (naming the subject, the section and the file).

    Example:

    ```python
    mr = load_mr("data/MR/subj_000_mr.nii.gz", "MR", "subj_000")
    ```
    """
    mr = load_volume(path)
    if mr.data.ndim != 3:
        raise ValueError(
            f"Subject '{subject}': [{section}] {mr.path} has shape {mr.data.shape}; expected a 3-D volume [X, Y, Z]."
        )
    return mr


def load_subject(
    row: Mapping[str, str | None],
    sections: Sequence[str],
    segmentation_tasks: Sequence[TaskSpec],
    loaded: Mapping[str, NiftiVolume] | None = None,
) -> dict[str, NiftiVolume]:
    """Loads the volumes of one subject (`row` from `match_subjects`) and checks their geometry and labels.

    Args:
        row: `{"subject": id, section: path, ...}`.
        sections: the input sections to load (the MR first, then the references; repeats are loaded once).
        segmentation_tasks: the tasks whose reference must hold labels.
        loaded: `{path: NiftiVolume}` already read (by the input checks); other files are read with `load_volume`.

    Returns:
        `{section: NiftiVolume}`.

    Raises:
        ValueError: different shapes or affines, or values that are not labels (naming subject, section, file).

    Example:

    ```python
    volumes = load_subject(row, ["MR", "CT", "LABEL"], app.segmentation_tasks)
    ```
    """
    subject = str(row["subject"])
    loaded = loaded or {}
    volumes = {}
    for name in dict.fromkeys(sections):
        path = str(row[name])
        volumes[name] = loaded[path] if path in loaded else load_volume(path)
    check_same_geometry(volumes, subject)
    check_labels(volumes, subject, segmentation_tasks)
    return volumes


def task_target(task: TaskSpec, volume: NiftiVolume) -> np.ndarray:
    """The network target of a reference volume: `HU / 1024 + 1` for regression, rounded labels otherwise."""
    if task.type == "regression":
        return ct_to_target(volume.data.astype(np.float32)).astype(np.float32)
    return np.round(volume.data).astype(np.float32)


def stack_slices(
    subjects: Sequence[str],
    volumes: Mapping[str, Mapping[str, NiftiVolume]],
    image_section: str,
    tasks: Sequence[TaskSpec],
    normalise: Callable[[np.ndarray], np.ndarray],
) -> SliceData:
    """The axial slices of `subjects`, brought to the largest slice size (padding masked out of the targets).

    Args:
        subjects: the subjects, in order.
        volumes: `{subject: {section: NiftiVolume}}` from `load_subject`.
        image_section: the MR section.
        tasks: the tasks; each reads its target from `volumes[subject][task.label]`.
        normalise: MR volume -> normalised float32 volume.

    Returns:
        A `SliceData`.

    Example:

    ```python
    data = stack_slices(training, volumes, "MR", tasks, normalise=app.normalise_mr)
    ```
    """
    images, targets = [], {task.name: [] for task in tasks}
    for subject in subjects:
        images.append(volume_to_slices(normalise(volumes[subject][image_section].data))[..., None])
        for task in tasks:
            targets[task.name].append(volume_to_slices(task_target(task, volumes[subject][task.label])))
    sizes = {image.shape[1:3] for image in images}
    if len(sizes) > 1:
        height, width = (max(size[i] for size in sizes) for i in range(2))
        images = [pad_slices_to(image, (height, width)) for image in images]
        for task in tasks:
            targets[task.name] = [pad_slices_to(t, (height, width), fill_value(task)) for t in targets[task.name]]
    return SliceData(
        np.concatenate(images).astype(np.float32),
        {name: np.concatenate(parts)[..., None].astype(np.float32) for name, parts in targets.items()},
        list(subjects),
        [int(image.shape[0]) for image in images],
    )


def training_statistics(
    subjects: Sequence[str], volumes: Mapping[str, Mapping[str, NiftiVolume]], tasks: Sequence[TaskSpec]
) -> dict[str, object]:
    """Statistics of the training references: the mean HU of every regression task (the trivial reference of the
    evaluation) and the label counts of every segmentation task.

    Returns:
        `{"training_subjects": [...], "<task>_mean_hu": float, "<task>_label_counts": [int, ...]}`.

    Example:

    ```python
    training_statistics(["subj_000"], volumes, tasks)["ct_mean_hu"]
    ```
    """
    statistics: dict[str, object] = {"training_subjects": list(subjects)}
    for task in tasks:
        if task.type == "regression":
            total, count = 0.0, 0
            for subject in subjects:
                values = volumes[subject][task.label].data
                finite = np.isfinite(values)
                total += float(values[finite].sum(dtype=np.float64))
                count += int(finite.sum())
            statistics[f"{task.name}_mean_hu"] = total / max(count, 1)
        else:
            counts = np.zeros(int(task.num_classes), dtype=np.int64)
            for subject in subjects:
                labels = np.round(volumes[subject][task.label].data).astype(np.int64)
                counts += np.bincount(labels[labels >= 0].ravel(), minlength=counts.size)[: counts.size]
            statistics[f"{task.name}_label_counts"] = counts.tolist()
    return statistics


def centre_patch(slices: np.ndarray, fill: float, patch: Sequence[int], padded: Sequence[int]) -> np.ndarray:
    """The centre `patch` of every slice (padded with `fill` if smaller), padded with `fill` to `padded`, float32.

    Example:

    ```python
    centre_patch(np.zeros((2, 48, 48, 1)), np.nan, (32, 32), (40, 40)).shape  # (2, 40, 40, 1)
    ```
    """
    height, width = slices.shape[1:3]
    grown = pad_slices_to(slices, (max(height, patch[0]), max(width, patch[1])), fill)
    return pad_slices_to(crop_slices_from(grown, patch), padded, fill).astype(np.float32)


def inference_slices(volume: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """The network input of a normalised volume `[X, Y, Z]`: whole axial slices padded to a multiple of 8.

    Returns:
        `(slices [Z, H, W, 1] float32, (X, Y))`: the padded slices and the original slice size.

    Example:

    ```python
    inputs, size = inference_slices(np.zeros((45, 50, 6)))  # inputs.shape == (6, 48, 56, 1), size == (45, 50)
    ```
    """
    slices = volume_to_slices(np.asarray(volume, dtype=np.float32))
    original = (int(slices.shape[1]), int(slices.shape[2]))
    size = padded_size(original, SLICE_MULTIPLE)
    return pad_slices_to(slices, size)[..., None].astype(np.float32), original


def slices_back_to_volume(slices: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Crops predicted slices `[Z, H, W(, C)]` back to `size` and stacks them into a volume `[X, Y, Z(, C)]`.

    Example:

    ```python
    slices_back_to_volume(np.zeros((6, 48, 56)), (45, 50)).shape  # (45, 50, 6)
    ```
    """
    return slices_to_volume(crop_slices_from(np.asarray(slices), size))


def samples_per_pass(num_samples: int, num_slices: int, size: Sequence[int]) -> int:
    """Monte-Carlo samples stacked in one forward pass: at most `PIXELS_PER_PASS` pixels, in equal chunks.

    Example:

    ```python
    samples_per_pass(50, 8, (136, 136))  # 7: eight passes of at most 7 samples (8 x 7 x 136 x 136 <= 2**20)
    ```
    """
    most = max(1, PIXELS_PER_PASS // max(1, num_slices * int(size[0]) * int(size[1])))
    chunks = -(-int(num_samples) // most)
    return -(-int(num_samples) // chunks)
