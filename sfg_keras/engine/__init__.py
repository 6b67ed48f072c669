"""The sfg_run engine: NiftyNet's application / engine split for Keras.

`Driver` owns everything that does not depend on the data (runtime, strategy, building the network from one
`NetworkOptions`, the training loop as one `fit` with validation, checkpoints, TensorBoard and grouping logs, resume,
the `model_dir` lock, inference dispatch, export and analysis); an application (`BaseApplication`) supplies data and
writes outputs through hooks. `load_application` turns an `-a` name into an application class.

Example:

```python
from sfg_keras.engine import Driver, load_application

settings = load_settings("configs/demo_mr_ct.ini", action="train",
                         extra_sections=load_application("mr_ct").APP_SECTIONS)
Driver(load_application("mr_ct")(settings)).train()
```
"""

from sfg_keras._lazy_exports import lazy_exports

_EXPORTS = {
    "BaseApplication": "application",
    "InferenceInput": "application",
    "PHASE_OF_DATASET": "application",
    "BUILT_IN_APPLICATIONS": "factory",
    "APPLICATION_SECTIONS": "factory",
    "load_application": "factory",
    "detect_application": "factory",
    "Driver": "driver",
    "ModelDirLock": "lock",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
