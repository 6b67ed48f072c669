"""What a training run was started with, and what a resume may change.

`model_dir/run_settings.json` records the settings a model was trained with (every key of the fixed sections that
shape the model, its data or its optimisation, and the application sections). When `train` resumes, the current
settings are compared with that record: keys in `APPLIED_ON_RESUME` are applied and logged (a new learning rate, a
longer `max_iter`, another optimiser, a new temperature schedule); any other difference is refused, naming the keys,
because the checkpoint cannot honour it (another architecture, grouping, task list, seed, batch size or training set).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sfg_keras.config import ConfigError, Settings

RUN_SETTINGS_FILE = "run_settings.json"

#: Sections recorded; [INFERENCE], [EVALUATION] and the input sections (file locations) are not.
_RECORDED_SECTIONS = ("SYSTEM", "NETWORK", "TRAINING", "MULTITASK", "SFG")
#: Keys that never matter for a resume (where the run is, what it reports, how the recipe was named).
_IGNORED = {("SYSTEM", "model_dir"), ("TRAINING", "starting_iter"), ("TRAINING", "archive_branch"), ("SFG", "recipe")}

#: Keys a resumed run applies: `{section: {key, ...}}`.
APPLIED_ON_RESUME = {
    "SYSTEM": {"num_threads", "distribute", "jit_compile", "cuda_devices"},
    "TRAINING": {"optimiser", "lr", "max_iter", "save_every_n", "validation_every_n", "validation_max_iter",
                 "tensorboard_every_n", "max_checkpoints", "steps_per_execution", "non_finite"},
    "NETWORK": {"batch_norm"},
    "SFG": {"tau0", "tau_decay", "tau_decay_until", "tau_min", "sampling_warmup", "commit_at", "lambda2_start",
            "lambda2_hold", "lambda2_until"},
}


def record(settings: Settings) -> dict[str, dict[str, object]]:
    """`{section: {key: value}}` of the settings a resume is checked against (JSON-compatible values)."""
    sections = {name: settings.section(name) for name in _RECORDED_SECTIONS}
    sections.update(settings.app_sections)
    model_dir = os.path.abspath(settings.system.model_dir)

    def portable(value):
        # Files inside model_dir (the split, the normalisation) are recorded relative to it: a copied or moved
        # model_dir resumes.
        if isinstance(value, str) and os.path.isabs(value) and value.startswith(model_dir + os.sep):
            return "<model_dir>/" + Path(os.path.relpath(value, model_dir)).as_posix()
        return value

    return {
        name: {key: portable(section[key]) for key in section.section_schema if (name, key) not in _IGNORED}
        for name, section in sections.items()
    }


def write_record(settings: Settings, model_dir: str | Path) -> Path:
    """Writes `model_dir/run_settings.json` atomically."""
    from sfg_keras.io.atomic import atomic_write_json

    return atomic_write_json(Path(model_dir) / RUN_SETTINGS_FILE, record(settings))


def read_record(model_dir: str | Path) -> dict | None:
    """The recorded settings, or None for a model_dir trained before records existed."""
    path = Path(model_dir) / RUN_SETTINGS_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); restore it or start a new model_dir.") from error


def resume_changes(saved: dict, settings: Settings) -> tuple[list[tuple], list[tuple]]:
    """Compares a record with the current settings.

    Returns:
        `(applied, refused)`: lists of `(section, key, recorded value, current value)`.

    Example:

    ```python
    applied, refused = resume_changes(read_record(model_dir), settings)
    ```
    """
    current = record(settings)
    applied, refused = [], []
    for section in sorted(set(saved) | set(current)):
        before, after = saved.get(section, {}), current.get(section, {})
        for key in sorted(set(before) | set(after)):
            old, new = before.get(key), after.get(key)
            if json.dumps(old, sort_keys=True) == json.dumps(new, sort_keys=True):
                continue
            change = (section, key, old, new)
            (applied if key in APPLIED_ON_RESUME.get(section, ()) else refused).append(change)
    return applied, refused


def check_resume(saved: dict | None, settings: Settings, checkpoint: Path) -> list[tuple]:
    """The changes a resume applies; raises `ConfigError` naming every key it cannot apply."""
    if saved is None:
        return []
    applied, refused = resume_changes(saved, settings)
    if refused:
        listed = "; ".join(f"[{s}] {k} = {new!r} (trained with {old!r})" for s, k, old, new in refused)
        raise ConfigError(
            f"{settings.config_path}: cannot resume {checkpoint} with changed settings: {listed}. A resume can change "
            f"only {', '.join(f'[{s}] ' + '/'.join(sorted(k)) for s, k in APPLIED_ON_RESUME.items())}. Restore the "
            "recorded values (model_dir/run_settings.json), or train from scratch in another [SYSTEM] model_dir."
        )
    return applied
