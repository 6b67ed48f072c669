"""Registers every class sfg_keras serialises with Keras once Keras is imported, without importing it here.

`keras.saving.load_model` finds custom classes only if their modules ran their `register_keras_serializable`
decorators. `import sfg_keras` must therefore be enough to load a `.keras` file the package wrote, yet importing
`sfg_keras.config` or `sfg_keras.analysis` must not pull in TensorFlow (they are used without it). So importing the
package only arranges registration: at once when Keras is already imported, otherwise right after Keras finishes
importing (a one-shot finder on `sys.meta_path` wraps Keras' loader), which is before any model can be loaded.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: The modules whose import registers the serialisable classes (layers, the network, losses, metrics, serving).
SERIALIZABLE_MODULES = (
    "sfg_keras.layers", "sfg_keras.models", "sfg_keras.losses", "sfg_keras.metrics", "sfg_keras.serving",
)


def register_all() -> None:
    """Imports every module that registers serialisable classes (idempotent)."""
    for name in SERIALIZABLE_MODULES:
        importlib.import_module(name)


class _RegisterAfterKeras(importlib.abc.MetaPathFinder):
    """Finds `keras` with the other finders and registers sfg_keras's classes once its module has executed."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "keras":
            return None
        _remove_finder()
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader

        class _Loader(importlib.abc.Loader):
            def create_module(self, spec):
                return loader.create_module(spec)

            def exec_module(self, module):
                loader.exec_module(module)
                try:
                    register_all()
                except Exception as error:  # never break `import keras`; loading will name the missing class
                    warnings.warn(f"sfg_keras could not register its Keras classes: {error!r}", stacklevel=2)

            def __getattr__(self, name):  # resource readers and the like: Keras' own loader answers
                return getattr(loader, name)

        spec.loader = _Loader()
        return spec


_FINDER = _RegisterAfterKeras()


def _remove_finder() -> None:
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)


def arrange_registration() -> None:
    """Registers now if Keras is imported, else right after Keras is imported (see the module docstring)."""
    if "keras" in sys.modules:
        register_all()
    elif _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
