"""File input/output: NIfTI volumes and NiftyNet-style input sections."""

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
    "NiftiVolume",
    "check_same_geometry",
    "load_nifti",
    "match_section",
    "match_subjects",
    "read_file_list",
    "save_nifti",
    "write_file_list",
]
