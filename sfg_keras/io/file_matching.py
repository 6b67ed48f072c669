"""NiftyNet-style input sections: find each subject's image files by folder and file-name patterns.

A config file describes every input source in its own section, for example

```ini
[MR]
path_to_search = data/mr
filename_contains = _mr
filename_not_contains = mask
csv_file = mr_files.csv
```

`match_section` turns one section into `{subject_id: path}` and `match_subjects` joins several sections on the
subject id.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".hdr", ".img", ".png", ".jpg", ".jpeg")
ID_STRIP_CHARACTERS = "_-. "


def _as_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return [str(item) for item in value if str(item)]


@dataclasses.dataclass
class InputSection:
    """One input source of a config file (NiftyNet's input-section keys).

    Attributes:
        name: the section name, e.g. `"MR"`, `"CT"`, `"label"`.
        path_to_search: folders searched recursively; relative folders are resolved against the config file's
            folder. A comma-separated string is accepted and split.
        filename_contains: strings that must all appear in a file's name; they are removed from the name to form
            the subject id.
        filename_not_contains: strings none of which may appear in a file's name.
        filename_removefromid: optional regular expression; every match is removed from the subject id.
        csv_file: optional `subject,path` file list. If it exists it is read instead of searching; if it is set but
            absent, the matches found are written to it.

    Example:

    ```python
    section = InputSection("CT", path_to_search=["data"], filename_contains=["_ct"])
    ```
    """

    name: str
    path_to_search: list[str] = dataclasses.field(default_factory=list)
    filename_contains: list[str] = dataclasses.field(default_factory=list)
    filename_not_contains: list[str] = dataclasses.field(default_factory=list)
    filename_removefromid: str | None = None
    csv_file: str | None = None

    def __post_init__(self):
        if not self.name:
            raise ValueError(f"InputSection needs a non-empty name. Received: name={self.name!r}")
        self.path_to_search = _as_list(self.path_to_search)
        self.filename_contains = _as_list(self.filename_contains)
        self.filename_not_contains = _as_list(self.filename_not_contains)
        if self.filename_removefromid is not None and self.filename_removefromid != "":
            try:
                re.compile(self.filename_removefromid)
            except re.error as error:
                raise ValueError(
                    f"Section [{self.name}]: filename_removefromid={self.filename_removefromid!r} is not a valid "
                    f"regular expression ({error})."
                ) from error
        else:
            self.filename_removefromid = None
        if not self.csv_file:
            self.csv_file = None

    def describe(self) -> str:
        """A one-line summary of the search settings, used in error messages."""
        return (
            f"section [{self.name}], path_to_search={self.path_to_search}, "
            f"filename_contains={self.filename_contains}, filename_not_contains={self.filename_not_contains}"
            + (f", filename_removefromid={self.filename_removefromid!r}" if self.filename_removefromid else "")
        )


def _split_suffix(file_name: str) -> tuple[str, str] | None:
    """Returns `(stem, suffix)` if the name ends with a recognised image extension (case-insensitive)."""
    lower = file_name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix) and len(file_name) > len(suffix):
            return file_name[: -len(suffix)], suffix
    return None


def _subject_id(stem: str, section: InputSection) -> str:
    subject = stem
    for pattern in section.filename_contains:
        subject = subject.replace(pattern, "")
    if section.filename_removefromid:
        subject = re.sub(section.filename_removefromid, "", subject)
    return subject.strip(ID_STRIP_CHARACTERS)


def _resolve(path: str | Path, base_dir: str | Path) -> Path:
    path = Path(os.path.expanduser(str(path)))
    return path if path.is_absolute() else Path(base_dir) / path


def _candidate_files(folder: Path) -> list[Path]:
    """Image files under `folder` (recursive, hidden entries skipped); Analyze `.img` files are represented by their
    `.hdr` when both exist."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        names = set(files)
        for file_name in sorted(files):
            if file_name.startswith("."):
                continue
            split = _split_suffix(file_name)
            if split is None:
                continue
            stem, suffix = split
            if suffix == ".img" and any(stem + s in names for s in (".hdr", ".HDR", ".Hdr")):
                continue
            found.append(Path(root) / file_name)
    return found


def read_file_list(csv_path: str | Path) -> dict[str, str]:
    """Reads a `subject,path` file list written by `write_file_list` (or by NiftyNet).

    An optional header line `subject,path` is skipped. Relative paths are resolved against the CSV file's folder.

    Args:
        csv_path: str or `Path`. The CSV file.

    Returns:
        `{subject_id: path}` in file order.

    Raises:
        FileNotFoundError: if the CSV or a listed image does not exist.
        ValueError: on a malformed row or a repeated subject, naming the file and the line.

    Example:

    ```python
    files = read_file_list("model/CT.csv")
    ```
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"File list not found: '{csv_path}'. Expected a CSV with rows 'subject,path'.")
    mapping: dict[str, str] = {}
    with open(csv_path, newline="", encoding="utf-8") as handle:
        for line_number, row in enumerate(csv.reader(handle), start=1):
            cells = [cell.strip() for cell in row]
            if not any(cells):
                continue
            if line_number == 1 and [c.lower() for c in cells] in (["subject", "path"], ["subject_id", "path"]):
                continue
            if len(cells) != 2 or not cells[0] or not cells[1]:
                raise ValueError(
                    f"{csv_path}, line {line_number}: expected 'subject,path'. Received: {','.join(row)!r}"
                )
            subject, file_path = cells
            if subject in mapping:
                raise ValueError(
                    f"{csv_path}, line {line_number}: subject '{subject}' is listed twice "
                    f"('{mapping[subject]}' and '{file_path}')."
                )
            resolved = _resolve(file_path, csv_path.parent)
            if not resolved.exists():
                raise FileNotFoundError(
                    f"{csv_path}, line {line_number}: the file of subject '{subject}' does not exist: '{resolved}'."
                )
            mapping[subject] = str(resolved)
    return mapping


def write_file_list(mapping: Mapping[str, str | Path], csv_path: str | Path) -> Path:
    """Writes `{subject: path}` as a header-less `subject,path` CSV (NiftyNet's file-list format).

    Args:
        mapping: subject id to image path. Paths are written as absolute paths.
        csv_path: str or `Path`. Output file; parent folders are created.

    Returns:
        The `Path` written.

    Example:

    ```python
    write_file_list(match_section(section, base_dir="."), "model/CT.csv")
    ```
    """
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        for subject in sorted(mapping):
            writer.writerow([subject, str(Path(mapping[subject]).absolute())])
    return csv_path


def _search_section(section: InputSection, base_dir: str | Path) -> dict[str, Path]:
    """Searches the folders of `section.path_to_search` and returns `{subject_id: file}` (possibly empty); a file
    reached twice (overlapping folders, links) counts once.

    Raises:
        FileNotFoundError: if a searched folder does not exist.
        ValueError: if `path_to_search` is empty, if two files give the same subject id or if a file name reduces to
            an empty subject id.
    """
    if not section.path_to_search:
        raise ValueError(
            f"Section [{section.name}]: path_to_search is empty and no existing csv_file was given "
            f"(csv_file={section.csv_file!r}). Expected at least one folder to search."
        )
    matches: dict[str, Path] = {}
    seen: set[Path] = set()
    for folder_text in section.path_to_search:
        folder = _resolve(folder_text, base_dir)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"Section [{section.name}]: path_to_search folder '{folder_text}' does not exist "
                f"(resolved to '{folder}')."
            )
        for file_path in _candidate_files(folder):
            try:
                resolved = file_path.resolve()
            except (RuntimeError, OSError) as error:  # RuntimeError: pathlib's symbolic link loop before 3.13
                if isinstance(error, OSError) and error.errno != errno.ELOOP:
                    raise
                raise ValueError(
                    f"Section [{section.name}]: '{file_path}' is a symbolic link loop (following it leads back to "
                    "itself); expected an image file or a link to one. Remove or fix the link."
                ) from None
            if resolved in seen:
                continue
            seen.add(resolved)
            stem, _ = _split_suffix(file_path.name)
            if not all(pattern in file_path.name for pattern in section.filename_contains):
                continue
            if any(pattern in file_path.name for pattern in section.filename_not_contains):
                continue
            subject = _subject_id(stem, section)
            if not subject:
                raise ValueError(
                    f"Section [{section.name}]: file '{file_path}' leaves an empty subject id after removing "
                    f"filename_contains={section.filename_contains} and "
                    f"filename_removefromid={section.filename_removefromid!r}."
                )
            if subject in matches:
                raise ValueError(
                    f"Section [{section.name}]: subject id '{subject}' is matched by two files: "
                    f"'{matches[subject]}' and '{file_path}'. Refine filename_contains / filename_not_contains / "
                    "filename_removefromid so that each subject has one file."
                )
            matches[subject] = file_path
    return matches


def match_section(section: InputSection, base_dir: str | Path) -> dict[str, str]:
    """Finds the files of one input section and keys them by subject id.

    Every folder in `path_to_search` is searched recursively. A file is kept when its name (not its folder) ends with
    a recognised image extension (`.nii`, `.nii.gz`, `.hdr`/`.img`, `.png`, `.jpg`, `.jpeg`, any case), contains
    every `filename_contains` string and none of the `filename_not_contains` strings. Its subject id is the file name
    without the extension, with every `filename_contains` string and every match of `filename_removefromid` removed,
    stripped of leading and trailing `_`, `-`, `.` and spaces. For example, with `filename_contains = _ct`,
    `subj_003_ct.nii.gz` becomes `subj_003`.

    If `section.csv_file` names an existing file, that list is read instead of searching. If it is set but absent,
    the search result is written to it, so later runs reuse the same list.

    Args:
        section: the `InputSection`.
        base_dir: folder against which relative `path_to_search` and `csv_file` are resolved (the config file's
            folder).

    Returns:
        `{subject_id: absolute path}` sorted by subject id.

    Raises:
        FileNotFoundError: if a searched folder does not exist (naming the section and the folder).
        ValueError: if two files give the same subject id (naming both files), if nothing matches (naming the
            section and its patterns), or if a file name reduces to an empty subject id.

    Example:

    ```python
    ct_files = match_section(InputSection("CT", ["data"], ["_ct"]), base_dir="configs")
    ```
    """
    csv_path = _resolve(section.csv_file, base_dir) if section.csv_file else None
    if csv_path is not None and csv_path.is_file():
        mapping = read_file_list(csv_path)
        if not mapping:
            raise ValueError(f"Section [{section.name}]: csv_file '{csv_path}' lists no files.")
        return dict(sorted(mapping.items()))

    matches = _search_section(section, base_dir)
    if not matches:
        raise ValueError(f"No image file matches {section.describe()} (resolved against '{base_dir}').")
    mapping = {subject: str(matches[subject].absolute()) for subject in sorted(matches)}
    if csv_path is not None:
        write_file_list(mapping, csv_path)
    return mapping


def match_subjects(
    sections: Sequence[InputSection],
    base_dir: str | Path,
    required: Sequence[str] | None = None,
) -> list[dict[str, str | None]]:
    """Matches several input sections and joins them on the subject id.

    Every subject found in any section must be present in every required section. Sections that are not required
    are optional (for example a label that some subjects lack): their entry is `None` for subjects without a file.

    Args:
        sections: the `InputSection`s, e.g. `[MR, CT, label]`.
        base_dir: folder against which relative paths are resolved (the config file's folder).
        required: names of the sections every subject must have. Defaults to `None`: all sections.

    Returns:
        One dict per subject, sorted by subject id: `{"subject": id, "<section name>": path or None, ...}`.

    Raises:
        ValueError: naming each subject that misses a required section, with that section's search settings; or
            for duplicate section names / unknown names in `required`.

    Example:

    ```python
    rows = match_subjects([mr, ct, label], base_dir="configs")
    rows[0]  # {"subject": "subj_001", "MR": ".../subj_001_mr.nii.gz", "CT": ..., "label": ...}
    ```
    """
    names = [section.name for section in sections]
    if not sections:
        raise ValueError("match_subjects needs at least one input section. Received: sections=[]")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"Input section names must be unique. Received duplicates: {duplicates}")
    if "subject" in names:
        raise ValueError("An input section cannot be named 'subject': that key holds the subject id.")
    required_names = list(names) if required is None else list(required)
    unknown = [name for name in required_names if name not in names]
    if unknown:
        raise ValueError(f"required={required_names} names sections that do not exist: {unknown}. Sections: {names}")

    by_section = {section.name: match_section(section, base_dir) for section in sections}
    subjects = sorted(set().union(*by_section.values()))
    problems = []
    for subject in subjects:
        present = [name for name in names if subject in by_section[name]]
        for section in sections:
            if section.name in required_names and subject not in by_section[section.name]:
                problems.append(
                    f"subject '{subject}' has {' and '.join(f'[{p}]' for p in present)} but no [{section.name}] "
                    f"({section.describe()})"
                )
    if problems:
        shown = problems[:20]
        more = f"\n... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ValueError("Input sections do not cover the same subjects:\n" + "\n".join(shown) + more)
    return [{"subject": subject, **{name: by_section[name].get(subject) for name in names}} for subject in subjects]
