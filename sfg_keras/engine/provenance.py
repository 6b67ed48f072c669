"""Where a result came from: the run record of a model_dir, and the subjects inference and evaluation may use.

`model_dir/run_record.json` (`RunRecord`) is written when training starts from scratch (and, for a model_dir of an
older version, on its first resume). It keeps:

* `split`: the phase (`Training`, `Validation`, `Inference`) of every subject when the model was trained;
* `trained_on`: the subjects whose data trained the model (the Training split, after `training_fraction`), each
  with the SHA-256, size and location (relative to model_dir) of every input file.

The split file (`[SYSTEM] dataset_split_file`) decides training and validation only. Inference and evaluation never
write it; they read the run record:

* Subjects of the training data are given their recorded phase; a subject the split never saw is `new`.
  `[INFERENCE] dataset_to_infer` chooses among them (`''` = the recorded Inference subjects and every new one,
  `inference` = the recorded Inference subjects only).
* With `[INFERENCE] input_dir` (a folder of other subjects) every subject found there is `new`: ids are not
  compared with the split, only contents.
* A subject is *trained on* when it is a recorded training subject, or when one of its files has the content of a
  training file (a copy under another name or in another folder). Such a subject is refused (exit 2, naming it and
  the training subject it matches) unless `dataset_to_infer` asks for training subjects on purpose (`training`,
  `all`): then its predictions are marked `trained_on = yes`, and evaluation leaves them out, saying so.
* A split file that lists a recorded training subject in another phase is refused; other differences from the
  recorded split are reported, and the record wins.

Example:

```python
record = RunRecord.load(model_dir)
chosen = choose_subjects(record, found, "MR", dataset_to_infer="", other_folder=False, digest=file_sha256)
```
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from sfg_keras.io.atomic import atomic_write_json
from sfg_keras.io.input_checks import bullet_list

RUN_RECORD_FILE = "run_record.json"
RUN_RECORD_VERSION = 1
INFERENCE_RECORD_FILE = "inference_record.json"  # in [INFERENCE] save_seg_dir, next to inferred.csv
PHASES = ("Training", "Validation", "Inference")
NEW = "new"
#: Extra `inferred.csv` columns: the subject's phase in the run record, whether it was trained on, and the SHA-256 of
#: the input file its predictions were made from.
PROVENANCE_COLUMNS = ("phase", "trained_on", "input_sha256")


class TrainedSubjectError(ValueError):
    """A subject the model was trained on was about to be predicted as held out, or scored (exit status 2)."""


def relative_to(path: str | os.PathLike, folder: str | os.PathLike) -> str:
    """`path` relative to `folder` (`..` where needed), with `/` separators.

    Example:

    ```python
    relative_to("/data/MR/s1_mr.nii.gz", "/runs/mr_ct")  # "../../data/MR/s1_mr.nii.gz"
    ```
    """
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(folder))).as_posix()


@dataclasses.dataclass
class RunRecord:
    """The data a model was trained on (`model_dir/run_record.json`).

    Attributes:
        split: `{subject: phase}` when the model was trained.
        trained_on: `{subject: {section: {"sha256", "size", "path"}}}` of the training subjects (paths relative to
            model_dir; empty file entries when the application does not list its files).
        application: the application that trained it.
        created: when it was written.
        legacy: True when derived from a model_dir of an older version (no fingerprints: only ids are compared).

    Example:

    ```python
    record = RunRecord.load("runs/mr_ct")
    sorted(record.trained_on)  # the training subjects
    ```
    """

    split: dict[str, str]
    trained_on: dict[str, dict[str, dict]]
    application: str = ""
    created: str = ""
    legacy: bool = False

    @classmethod
    def create(cls, model_dir: str | os.PathLike, application: str, split: Mapping[str, str],
               training_files: Mapping[str, Mapping[str, str]], digest: Callable[[str], str]) -> RunRecord:
        """A record of `split` and of the training subjects' files (`{subject: {section: path}}`), hashed with
        `digest`."""
        trained_on = {
            subject: {
                section: {"sha256": digest(path), "size": os.path.getsize(path), "path": relative_to(path, model_dir)}
                for section, path in files.items()
            }
            for subject, files in sorted(training_files.items())
        }
        return cls(dict(sorted(split.items())), trained_on, application, time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def save(self, model_dir: str | os.PathLike) -> Path:
        """Writes `model_dir/run_record.json` atomically."""
        return atomic_write_json(Path(model_dir) / RUN_RECORD_FILE, {
            "version": RUN_RECORD_VERSION, "application": self.application, "created": self.created,
            "split": self.split, "trained_on": self.trained_on,
        })

    @classmethod
    def load(cls, model_dir: str | os.PathLike) -> RunRecord | None:
        """The record of `model_dir`, or None when it has none.

        Raises:
            ValueError: the file is not a valid record (naming it).
        """
        path = Path(model_dir) / RUN_RECORD_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(dict(data["split"]), dict(data["trained_on"]), str(data.get("application", "")),
                       str(data.get("created", "")))
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"{path} is not a valid run record ({type(error).__name__}: {error}): it tells which subjects this "
                "model was trained on. Restore it from a backup; without it no subject can be inferred safely."
            ) from error

    @property
    def training_subjects(self) -> set[str]:
        """The subjects the model was trained on."""
        return set(self.trained_on)

    def content_index(self) -> dict[str, tuple[str, str]]:
        """`{sha256: (training subject, section)}` of every recorded training file."""
        return {entry["sha256"]: (subject, section) for subject, files in self.trained_on.items()
                for section, entry in files.items() if entry.get("sha256")}

    def phase(self, subject: str) -> str:
        """The recorded phase of `subject` (`new` when the split did not hold it)."""
        return self.split.get(subject, NEW)

    def split_differences(self, current: Mapping[str, str]) -> tuple[list[str], list[str]]:
        """Compares a split file's content with the recorded split.

        Returns:
            `(leaks, others)`: lines naming every recorded training subject the file puts in another phase (or
            leaves out), and every other difference.
        """
        leaks, others = [], []
        for subject in sorted(set(self.split) | set(current)):
            recorded, now = self.split.get(subject), current.get(subject)
            if recorded == now:
                continue
            text = f"'{subject}': {recorded or 'absent'} when trained, {now or 'absent'} in the file"
            (leaks if subject in self.trained_on and now is not None else others).append(text)
        return leaks, others


@dataclasses.dataclass
class ChosenSubject:
    """A subject chosen for inference, with its provenance.

    Attributes:
        subject: the id.
        phase: its recorded phase, or `new`.
        trained_on: whether the model was trained on it (then only inferred on purpose).
        input_sha256: the SHA-256 of its input file (the image section's).
        reason: why it counts as trained on (for messages), or "".
    """

    subject: str
    phase: str
    trained_on: bool
    input_sha256: str
    reason: str = ""

    def columns(self) -> dict[str, str]:
        """Its `inferred.csv` provenance columns (`PROVENANCE_COLUMNS`)."""
        return {"phase": self.phase, "trained_on": "yes" if self.trained_on else "no",
                "input_sha256": self.input_sha256}


def trained_reason(record: RunRecord, subject: str, files: Mapping[str, str], other_folder: bool,
                   digest: Callable[[str], str], index: Mapping[str, tuple[str, str]] | None = None) -> str:
    """Why `subject` (with its `{section: path}` files) counts as trained on, or "".

    Example:

    ```python
    trained_reason(record, "subj_000", {"MR": "data/MR/subj_000_mr.nii.gz"}, False, file_sha256)
    # "it is a training subject in run_record.json"
    ```
    """
    if not other_folder and subject in record.trained_on:
        return f"it is a training subject in {RUN_RECORD_FILE}"
    index = record.content_index() if index is None else index
    for section, path in files.items():
        match = index.get(digest(path))
        if match is not None:
            trained, trained_section = match
            return (f"its [{section}] file {path} has the content of the [{trained_section}] file of training subject "
                    f"'{trained}' ({RUN_RECORD_FILE})")
    return ""


def choose_subjects(record: RunRecord, found: Mapping[str, Mapping[str, str]], image_section: str,
                    dataset_to_infer: str, other_folder: bool, digest: Callable[[str], str],
                    where: str) -> list[ChosenSubject]:
    """The subjects to infer among `found` (`{subject: {section: path}}`), in id order.

    Args:
        record: the run record.
        found: the input files of every subject found.
        image_section: the section of the network input (hashed into `input_sha256`).
        dataset_to_infer: `''` (the recorded Inference subjects and every new one), `inference` (the recorded
            Inference subjects only), `validation`, `training` (the Training split: the subjects trained on are
            marked) or `all`.
        other_folder: the subjects come from `[INFERENCE] input_dir`: all are new, only contents are compared.
        digest: `path -> SHA-256`.
        where: the config file, for messages.

    Raises:
        TrainedSubjectError: a subject chosen as held out was trained on (naming each, why, and what to do).
        ValueError: nothing to infer.
    """
    choice = dataset_to_infer or "inference"
    index = record.content_index()
    chosen, refused = [], []
    for subject in sorted(found):
        phase = NEW if other_folder else record.phase(subject)
        if choice == "inference" and phase not in (("Inference", NEW) if not dataset_to_infer else ("Inference",)):
            continue
        if choice == "validation" and phase != "Validation":
            continue
        if choice == "training" and subject not in record.trained_on and phase != "Training":
            continue
        reason = trained_reason(record, subject, found[subject], other_folder, digest, index)
        item = ChosenSubject(subject, phase, bool(reason), digest(found[subject][image_section]), reason)
        if reason and choice not in ("training", "all"):
            refused.append(f"'{subject}' ({phase}): {reason}")
        chosen.append(item)
    if refused:
        raise TrainedSubjectError(
            f"{where}: the model was trained on {len(refused)} of the subjects to infer as held out "
            f"([INFERENCE] dataset_to_infer = {dataset_to_infer or chosen_name(dataset_to_infer)}); their "
            "predictions would leak training data into the results, and nothing was written:\n"
            f"{bullet_list(refused)}\nRemove them from the data to infer, or predict training subjects on purpose "
            "with dataset_to_infer = training (their predictions are marked trained_on = yes and never scored)."
        )
    if not chosen:
        raise ValueError(
            f"{where}: [INFERENCE] dataset_to_infer = {dataset_to_infer or chosen_name(dataset_to_infer)}: no subject "
            f"to infer among the {len(found)} found ({describe_phases(record, found, other_folder)}); expected at "
            "least one, e.g. dataset_to_infer = all, or [INFERENCE] input_dir = a folder of new subjects."
        )
    return chosen


def chosen_name(dataset_to_infer: str) -> str:
    """How a `dataset_to_infer` value is described in messages."""
    return "'' (the Inference split and new subjects)" if not dataset_to_infer else dataset_to_infer


def describe_phases(record: RunRecord, found: Iterable[str], other_folder: bool) -> str:
    """`"3 Training, 1 Inference, 2 new"` for the subjects `found`."""
    counts: dict[str, int] = {}
    for subject in found:
        phase = NEW if other_folder else record.phase(subject)
        counts[phase] = counts.get(phase, 0) + 1
    return ", ".join(f"{count} {phase}" for phase, count in counts.items()) or "none"


def read_split_file(path: str | os.PathLike) -> dict[str, str] | None:
    """The split file's `{subject: phase}` (read only, never written), or None when it does not exist.

    Raises:
        ValueError: a malformed file (naming the file and the line).
    """
    from sfg_keras.data.split import read_split

    path = Path(path)
    return read_split(path) if path.is_file() else None


def check_split_file(record: RunRecord, split_file: str | os.PathLike, action: str) -> list[str]:
    """Compares the split file with the recorded split for inference or evaluation.

    Returns:
        Notes to print (a missing file, differences the record overrides).

    Raises:
        TrainedSubjectError: the file puts a recorded training subject in another phase (naming each).
    """
    current = read_split_file(split_file)
    if current is None:
        return [f"{split_file} does not exist: {action} uses the split recorded in {RUN_RECORD_FILE} (and writes no "
                "split file)."]
    leaks, others = record.split_differences(current)
    if leaks:
        raise TrainedSubjectError(
            f"{split_file} no longer lists as Training {len(leaks)} subject(s) this model was trained on (recorded "
            f"in {RUN_RECORD_FILE}); {action} would treat them as held out, and nothing was written:\n"
            f"{bullet_list(leaks)}\nRestore the split file (the recorded split is the 'split' entry of "
            f"{RUN_RECORD_FILE}) or delete it: {action} then uses the recorded split."
        )
    if others:
        return [f"{split_file} differs from the split this model was trained with; {action} uses the recorded one "
                f"({RUN_RECORD_FILE}):\n{bullet_list(others)}"]
    return []
