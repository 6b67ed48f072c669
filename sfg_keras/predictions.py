"""The prediction vocabulary: the keys of one task's prediction and the names they are written and served under.

Every inference mode (`sfg_keras.inference`), every exported signature (`sfg_keras.export`), the serving model and
every application writer (CSV columns, NIfTI file names) name a task's outputs with this module, so a column of
`inferred.csv`, a NIfTI file and a signature output that hold the same quantity carry the same name:
`<task>_<key>`.

It imports nothing but the standard library, so configuration, applications and graph code can all use it.

Example:

>>> prediction_keys(categorical=True)
('probabilities', 'label', 'entropy')
>>> output_name("gender", "label")
'gender_label'
>>> output_names([("age", False), ("gender", True)])
['age_mean', 'age_std', 'gender_probabilities', 'gender_label', 'gender_entropy']
"""

from __future__ import annotations

from collections.abc import Iterable

INFERENCE_MODES = ("mc", "map", "expected")
"""How a prediction is made: Monte-Carlo over sampled architectures, the MAP network, or the expected network."""

REGRESSION = "regression"
"""The prediction kind of a regression task (`mean`, `std`)."""

CATEGORICAL = "categorical"
"""The prediction kind of a classification or segmentation task (`probabilities`, `label`, `entropy`)."""

PREDICTION_KEYS = {REGRESSION: ("mean", "std"), CATEGORICAL: ("probabilities", "label", "entropy")}
"""The keys of one task's prediction, for every inference mode and export signature, by task kind.

Regression: `mean` and `std` (the standard deviation over sampled architectures; zeros for a deterministic mode).
Categorical (classification and segmentation): `probabilities` (softmax, averaged over sampled architectures),
`label` (argmax, or the majority vote of the sampled architectures' argmax) and `entropy` (predictive entropy of
`probabilities`, nats).
"""


def prediction_kind(categorical: bool) -> str:
    """The key of `PREDICTION_KEYS` for a task: `"categorical"` or `"regression"`.

    Args:
        categorical: bool. Whether the task predicts classes (classification or segmentation).

    Returns:
        `"categorical"` or `"regression"`.

    Example:

    >>> PREDICTION_KEYS[prediction_kind(True)]
    ('probabilities', 'label', 'entropy')
    """
    return CATEGORICAL if categorical else REGRESSION


def prediction_keys(categorical: bool) -> tuple[str, ...]:
    """The keys of a task's prediction, in order.

    Args:
        categorical: bool. Whether the task predicts classes.

    Returns:
        `("probabilities", "label", "entropy")` or `("mean", "std")`.

    Example:

    >>> prediction_keys(False)
    ('mean', 'std')
    """
    return PREDICTION_KEYS[prediction_kind(categorical)]


def output_name(task: str, key: str) -> str:
    """The name of one output of one task, `<task>_<key>`: a signature output, a CSV column, a NIfTI file's stem.

    Args:
        task: str. The task's name.
        key: str. A key of `PREDICTION_KEYS` (or a per-class suffix such as `"prob_3"` for tables).

    Returns:
        `"<task>_<key>"`.

    Raises:
        ValueError: if `task` or `key` is empty.

    Example:

    >>> output_name("ct", "std")
    'ct_std'
    """
    if not task or not key:
        raise ValueError(f"A task name and a key are both needed. Received: task={task!r}, key={key!r}")
    return f"{task}_{key}"


def output_names(tasks: Iterable[tuple[str, bool]]) -> list[str]:
    """Every output name of a model's tasks, task by task, keys in `PREDICTION_KEYS` order.

    Args:
        tasks: `(name, categorical)` per task, in the model's task order.

    Returns:
        The list of `<task>_<key>` names.

    Example:

    >>> output_names([("ct", False)])
    ['ct_mean', 'ct_std']
    """
    return [output_name(name, key) for name, categorical in tasks for key in prediction_keys(categorical)]
