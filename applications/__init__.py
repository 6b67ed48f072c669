"""NiftyNet-style applications for sfg_run: `age_gender` (UTKFace layout, CSV-labelled images) and `mr_ct`
(MR to CT synthesis + organ segmentation on NIfTI). `-a` also accepts a dotted path to a user's own subclass of
`applications.base_application.BaseApplication`."""

from __future__ import annotations

import importlib

BUILT_IN_APPLICATIONS = {
    "age_gender": "applications.age_gender.AgeGenderApplication",
    "mr_ct": "applications.mr_ct.MRCTApplication",
}

#: Application sections that identify a built-in application when `-a` is not given.
APPLICATION_SECTIONS = {"AGE_GENDER": "age_gender", "MR_CT": "mr_ct"}


def load_application(name: str):
    """The application class for a built-in name (`age_gender`, `mr_ct`) or a dotted path `package.module.Class`.

    Raises:
        ValueError: the name is unknown, the module cannot be imported, or the object is not a `BaseApplication`
            subclass.
    """
    from applications.base_application import BaseApplication

    path = BUILT_IN_APPLICATIONS.get(name, name)
    module_name, _, class_name = path.rpartition(".")
    if not module_name:
        raise ValueError(
            f"Unknown application {name!r}: expected one of {sorted(BUILT_IN_APPLICATIONS)} or a dotted path "
            "'package.module.ApplicationClass'."
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"Application {name!r}: cannot import {module_name!r} ({error}).") from error
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseApplication)):
        raise ValueError(
            f"Application {name!r}: {path!r} is not a subclass of applications.base_application.BaseApplication."
        )
    return cls
