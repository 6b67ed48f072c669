"""File input/output: NIfTI volumes and NiftyNet-style input sections."""

from sfg_keras.io.atomic import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text
from sfg_keras.io.file_matching import (
    InputSection,
    match_section,
    match_subjects,
    read_file_list,
    write_file_list,
)
from sfg_keras.io.nifti import NiftiVolume, check_same_geometry, load_nifti, save_nifti

__all__ = [
    "InputSection",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "NiftiVolume",
    "check_same_geometry",
    "load_nifti",
    "match_section",
    "match_subjects",
    "read_file_list",
    "save_nifti",
    "write_file_list",
]
