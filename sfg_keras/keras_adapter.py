"""The private Keras and TensorFlow API sfg-keras needs, named in one place.

ADAPTER MODULE. Everything else in sfg-keras uses public Keras / TensorFlow API only (`tests/test_architecture.py`
walks the source and fails on a private name used elsewhere). The functions below wrap the five private APIs that
have no public equivalent in Keras 3.15 / TensorFlow 2.21; `tests/test_keras_adapter.py` checks each one against the
installed versions, so a Keras or TensorFlow upgrade that changes one fails that test by name instead of breaking
training silently. (`sfg_keras.engine.keras_compat` holds the two multi-worker patches, with their own test.)

* `flatten_layers`: `keras.Layer._flatten_layers`. Keras has no public recursive walk over a layer's sublayers
  (`Model.layers` lists direct children only, and plain layers have no `layers`); the SFG layers keep their group
  norms, activations and merge projections as sublayers.
* `loss_tracker`: `keras.Model._loss_tracker`, the `Mean` metric behind the `loss` that `fit` logs. A custom
  `train_step` that computes its own loss must update it, as Keras' own `train_step` does.
* `seed_generators_of`: `keras.Layer._seed_generators`, the `SeedGenerator`s a layer created (the exported
  signatures reseed them so that every loaded SavedModel draws its own architecture samples).
* `build_shapes`: `keras.Layer._build_shapes_dict`, the shapes a model was built with (a subclassed model does
  not record its input shape publicly).
* `strategy_supports_no_merge_call`: `tf.__internal__.distribute.strategy_supports_no_merge_call`, whether the
  current strategy applies gradients without `merge_call` (then a `tf.cond` around `apply_gradients` is allowed in
  replica context).

Example:

```python
from sfg_keras import keras_adapter

norms = [layer for layer in keras_adapter.flatten_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
```
"""

from __future__ import annotations

from collections.abc import Iterator

import keras
import tensorflow as tf


def flatten_layers(
    layer: keras.layers.Layer, include_self: bool = True, recursive: bool = True
) -> Iterator[keras.layers.Layer]:
    """Every layer tracked by `layer`, depth first, each once (`keras.Layer._flatten_layers`).

    Args:
        layer: a Keras layer or model.
        include_self: bool. Whether `layer` itself comes first. Defaults to True.
        recursive: bool. Whether sublayers' sublayers are included. Defaults to True.

    Returns:
        An iterator of layers.

    Example:

    ```python
    [sub.name for sub in flatten_layers(model, include_self=False)]
    ```
    """
    return layer._flatten_layers(include_self=include_self, recursive=recursive)


def loss_tracker(model: keras.Model) -> keras.metrics.Mean:
    """The `Mean` metric behind the `loss` that `fit` and `evaluate` log (`keras.Model._loss_tracker`); exists once
    the model is compiled.

    Raises:
        ValueError: if the model is not compiled.

    Example:

    ```python
    loss_tracker(model).update_state(loss, sample_weight=batch_size)  # in a custom train_step
    ```
    """
    tracker = getattr(model, "_loss_tracker", None)
    if tracker is None:
        raise ValueError(f"{model.name}: the model has no loss tracker yet; compile it first.")
    return tracker


def seed_generators_of(layer: keras.layers.Layer) -> tuple[keras.random.SeedGenerator, ...]:
    """The `keras.random.SeedGenerator`s `layer` itself created (`keras.Layer._seed_generators`), not its
    sublayers'.

    Example:

    ```python
    [g for sub in flatten_layers(model) for g in seed_generators_of(sub)]
    ```
    """
    return tuple(getattr(layer, "_seed_generators", ()))


def build_shapes(model: keras.layers.Layer) -> dict:
    """`{argument name: shape}` of the inputs `model` was built with (`keras.Layer._build_shapes_dict`); empty when
    it is not built.

    Example:

    ```python
    model.build((None, 64, 64, 3))
    build_shapes(model)  # {"input_shape": (None, 64, 64, 3)}
    ```
    """
    return dict(getattr(model, "_build_shapes_dict", None) or {})


def strategy_supports_no_merge_call() -> bool:
    """Whether the current `tf.distribute` strategy applies gradients without `merge_call`
    (`tf.__internal__.distribute.strategy_supports_no_merge_call`); True without a strategy.

    Example:

    ```python
    if strategy_supports_no_merge_call():
        tf.cond(finite, apply, skip)  # allowed in replica context
    ```
    """
    return bool(tf.__internal__.distribute.strategy_supports_no_merge_call())
