"""NiftyNet-style applications for sfg_run, installed as the package `sfg_keras_applications`: `age_gender`
(UTKFace layout, CSV-labelled images) and `mr_ct` (MR to CT synthesis + organ segmentation on NIfTI). `-a` also
accepts a dotted path to a user's own subclass of `sfg_keras.engine.BaseApplication`; see
`sfg_keras.engine.load_application`."""
