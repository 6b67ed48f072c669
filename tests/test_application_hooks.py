"""`BaseApplication`: abstract hooks refuse an incomplete subclass; `app_settings` falls back to the defaults once.
(The applications' module and function lengths and their import graph: `tests/test_architecture.py`.)"""

from __future__ import annotations

import pytest

from sfg_keras.config import ConfigError, KeySpec, load_settings
from sfg_keras.engine.application import BaseApplication

CONFIG = """
[IMAGES]
path_to_search = images

[SYSTEM]
model_dir = run

[MULTITASK]
image = IMAGES
tasks = age
task_types = regression
num_classes = 1
loss_types = RMSE
labels = filename
"""


class Complete(BaseApplication):
    """Implements every abstract hook (and nothing else)."""

    APP_SECTIONS = {"MINE": [KeySpec("size", "int", 7, "A size.", minimum=1)]}
    APP_SECTION = "MINE"

    def input_shape(self):
        return (8, 8, 1)

    def training_dataset(self, first_batch):
        return None

    def inference_inputs(self):
        return []

    def write_outputs(self, item, predictions):
        return []

    def evaluate(self):
        return []


def settings_of(tmp_path, sections=None):
    config = tmp_path / "app.ini"
    config.write_text(CONFIG)
    return load_settings(config, [], action="train", extra_sections=sections)


@pytest.mark.parametrize("hook", ["input_shape", "training_dataset", "inference_inputs", "write_outputs", "evaluate"])
def test_a_subclass_missing_a_required_hook_cannot_be_instantiated_and_the_error_names_it(tmp_path, hook):
    missing = type(f"Without_{hook}", (BaseApplication,), {
        name: getattr(Complete, name) for name in
        ("input_shape", "training_dataset", "inference_inputs", "write_outputs", "evaluate") if name != hook
    })
    assert missing.__abstractmethods__ == frozenset({hook})
    with pytest.raises(TypeError, match=rf"Can't instantiate abstract class Without_{hook}.*{hook}"):
        missing(settings_of(tmp_path))


def test_optional_hooks_keep_their_defaults(tmp_path):
    app = Complete(settings_of(tmp_path))
    assert app.validation_dataset() is None
    assert app.finish_inference([]) == []
    assert app.report_figures() == []
    assert app.prepare(fit=True) is None
    assert app.regression_scale(app.tasks[0]) == 1.0 and app.regression_offset(app.tasks[0]) == 0.0


def test_app_settings_are_the_loaded_section_or_its_defaults(tmp_path):
    assert Complete(settings_of(tmp_path)).app_settings.size == 7  # loaded without [MINE]: the defaults
    config = tmp_path / "app.ini"
    config.write_text(CONFIG + "\n[MINE]\nsize = 3\n")
    loaded = load_settings(config, [], action="train", extra_sections=Complete.APP_SECTIONS)
    assert Complete(loaded).app_settings.size == 3
    assert Complete(loaded).app_settings.origin("size") == "file"


def test_app_settings_without_a_section_names_the_class(tmp_path):
    class Sectionless(Complete):
        APP_SECTION = None

    with pytest.raises(ConfigError, match=r"Sectionless.APP_SECTION = None: expected a section of its APP_SECTIONS "
                                          r"\(MINE\)"):
        _ = Sectionless(settings_of(tmp_path)).app_settings

