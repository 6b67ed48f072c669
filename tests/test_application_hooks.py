"""`BaseApplication`: abstract hooks refuse an incomplete subclass; `app_settings` falls back to the defaults once.
(The applications' module and function lengths and their import graph: `tests/test_architecture.py`.)"""

from __future__ import annotations

import pytest

from sfg_keras.config import ConfigError, KeySpec, load_settings
from sfg_keras.engine.application import REQUIRED_HOOKS, BaseApplication, IncompleteApplicationError
from sfg_keras.engine.factory import load_application

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


@pytest.mark.parametrize("hook", REQUIRED_HOOKS)
def test_a_subclass_missing_a_required_hook_fails_at_class_creation_naming_it(hook):
    methods = {name: getattr(Complete, name) for name in REQUIRED_HOOKS if name != hook}
    with pytest.raises(IncompleteApplicationError, match=rf"Without_{hook} does not implement the application "
                                                         rf"hook\(s\) {hook} "):
        type(f"Without_{hook}", (BaseApplication,), methods)


def test_an_abstract_base_may_leave_hooks_to_its_subclasses(tmp_path):
    class Base(BaseApplication, abstract=True):
        def input_shape(self):
            return (4, 4, 1)

    assert Base.__abstractmethods__ == frozenset(set(REQUIRED_HOOKS) - {"input_shape"})
    with pytest.raises(TypeError, match="Can't instantiate abstract class Base"):
        Base(settings_of(tmp_path))
    with pytest.raises(IncompleteApplicationError, match="Leaf does not implement the application hook"):
        type("Leaf", (Base,), {})


def test_the_engine_names_an_incomplete_application_module(tmp_path, monkeypatch):
    (tmp_path / "incomplete_app.py").write_text(
        "from sfg_keras.engine.application import BaseApplication\n\n"
        "class Partial(BaseApplication):\n"
        "    def input_shape(self):\n"
        "        return (4, 4, 1)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"Application 'incomplete_app.Partial': .*Partial does not implement the "
                                         r"application hook\(s\) training_dataset, inference_inputs, write_outputs, "
                                         r"evaluate"):
        load_application("incomplete_app.Partial")


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

