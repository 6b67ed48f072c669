"""NiftyNet-style `.ini` configuration: schema, parsing, validation, command-line overrides and the settings dump.

Pure Python (configparser and dataclasses); importing it does not import TensorFlow.

Example:

```python
from sfg_keras.config import load_settings, write_settings

settings = load_settings("configs/age_gender.ini", ["--max_iter=100"], action="train")
settings.training.lr, settings.sfg.p0, settings.task_specs()
write_settings(settings)  # model_dir/settings_train.txt
```
"""

from sfg_keras.config.compatibility import CompatibilityKeyWarning
from sfg_keras.config.errors import ConfigError
from sfg_keras.config.loader import load_settings
from sfg_keras.config.schema import (
    FIXED_SECTION_SCHEMAS,
    FIXED_SECTIONS,
    INPUT_SECTION_SCHEMA,
    REQUIRED,
    KeySpec,
    dump_schema_markdown,
    section_schema,
)
from sfg_keras.config.settings import (
    ACTIONS,
    EvaluationSettings,
    InferenceSettings,
    InputSectionSettings,
    MultitaskSettings,
    NetworkSettings,
    SectionSettings,
    Settings,
    SFGSettings,
    SystemSettings,
    TaskSpec,
    TrainingSettings,
    write_settings,
)
from sfg_keras.config.validation import default_p0

__all__ = [
    "ACTIONS",
    "FIXED_SECTIONS",
    "FIXED_SECTION_SCHEMAS",
    "INPUT_SECTION_SCHEMA",
    "REQUIRED",
    "CompatibilityKeyWarning",
    "ConfigError",
    "EvaluationSettings",
    "InferenceSettings",
    "InputSectionSettings",
    "KeySpec",
    "MultitaskSettings",
    "NetworkSettings",
    "SFGSettings",
    "SectionSettings",
    "Settings",
    "SystemSettings",
    "TaskSpec",
    "TrainingSettings",
    "default_p0",
    "dump_schema_markdown",
    "load_settings",
    "section_schema",
    "write_settings",
]
