"""The input sections of an mr_ct config over a generated cohort (`sfg_run generate-data pelvis`), shared by the
tests that write mr_ct configs: `MR_CT_INPUTS.format(data=folder)` followed by the test's own sections."""

MR_CT_INPUTS = """
[MR]
path_to_search = {data}/MR
filename_contains = _mr

[CT]
path_to_search = {data}/CT
filename_contains = _ct

[LABEL]
path_to_search = {data}/LABEL
filename_contains = _label

"""
