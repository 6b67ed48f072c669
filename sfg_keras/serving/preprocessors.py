"""Serving preprocessors: Keras layers that turn a raw request into the network input, inside the exported graph.

An exported model takes the input as a user has it (decoded pixels, MR intensities) and normalises it exactly as
training did, with the training-set constants saved in the layer's config. Because a preprocessor is a serialisable
Keras layer, the same object is inside the SavedModel signatures and inside the exported `.keras` files: a file
cannot be fed raw input by mistake, because raw input is what every file takes.

* `ServingPreprocessor`: the abstract base (`call`: raw request -> network input; `postprocess`: outputs back to the
  request's geometry; `request_shape`, `description`).
* `VolumePreprocessor`: the axial slices of ONE volume (e.g. MR) -> Nyul histogram standardisation with saved
  landmarks, whitening over the request, zero padding to a multiple; outputs cropped back.
* `ImagePreprocessor`: decoded pixels of any size -> resize, per-channel standardisation with saved statistics,
  optional per-image whitening.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from sfg_keras.data import intensity_tf
from sfg_keras.data.histogram_standardisation import HistogramStandardisation


class ServingPreprocessor(keras.layers.Layer, metaclass=abc.ABCMeta):
    """Raw request -> network input, as a serialisable layer (the base of every exported model's preprocessing).

    Subclasses implement `call(images)` from graph ops and constants held in their config, and may override
    `postprocess(outputs, images)` to map the outputs back to the request (e.g. crop padding). The exported models
    check a request against `request_shape` before calling the preprocessor (`sfg_keras.serving.check_request`).

    Args:
        request_shape: shape of one request element without the batch axis; `None` for free sizes, the last entry
            (channels) known, e.g. `(None, None, 1)`.
        description: what a request holds, in one sentence (in the export metadata and the README).
        **kwargs: `keras.layers.Layer` arguments (`name`, ...).

    Example:

    ```python
    class Scale(ServingPreprocessor):
        def __init__(self, factor=255.0, **kwargs):
            super().__init__(request_shape=(28, 28, 1), description="grey pixels 0..255", **kwargs)
            self.factor = factor

        def call(self, images):
            return images / self.factor

        def get_config(self):
            return {**super().get_config(), "factor": self.factor}
    ```
    """

    def __init__(self, request_shape: Sequence[int | None], description: str = "", **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        shape = tuple(None if size is None else int(size) for size in request_shape)
        if not shape or shape[-1] is None or any(size is not None and size < 1 for size in shape):
            raise ValueError(
                "`request_shape` must be the shape of one request element (without the batch axis) with a known "
                f"channel count, e.g. (None, None, 1). Received: request_shape={tuple(request_shape)}"
            )
        self.request_shape = shape
        self.description = str(description)

    @abc.abstractmethod
    def call(self, images: tf.Tensor) -> tf.Tensor:
        """Raw request `[N, *request_shape]` (float32, already checked) -> network input."""

    def preprocess(self, images) -> tf.Tensor:
        """`self(images)`: raw request -> network input."""
        return self(tf.convert_to_tensor(images, tf.float32))

    def postprocess(self, outputs: dict[str, tf.Tensor], images: tf.Tensor) -> dict[str, tf.Tensor]:
        """Maps the flattened outputs `{<task>_<key>: tensor}` back to the request `images` (default: unchanged)."""
        return outputs

    def compute_output_spec(self, images):
        return keras.KerasTensor((images.shape[0], *([None] * (len(images.shape) - 2)), images.shape[-1]), "float32")

    def get_config(self) -> dict:
        return {**super().get_config(), "request_shape": list(self.request_shape), "description": self.description}


def _margins(size: tf.Tensor, multiple: int) -> tuple[tf.Tensor, tf.Tensor]:
    """`(before, after)` of the symmetric zero padding of `size` to a multiple of `multiple`."""
    target = (size + multiple - 1) // multiple * multiple
    before = (target - size) // 2
    return before, target - size - before


@keras.saving.register_keras_serializable(package="sfg_keras")
class VolumePreprocessor(ServingPreprocessor):
    """One volume's raw axial slices `[Z, X, Y, 1]` -> the normalised, padded network input, and outputs back.

    In the graph: Nyul histogram standardisation with the landmarks learned at training time (the per-volume
    landmarks are computed over the request, `sfg_keras.data.intensity_tf.histogram_standardise`), whitening over
    the request (`whiten`), then zero padding of every slice symmetrically to a multiple of `multiple`;
    `postprocess` crops every output of rank >= 3 back to `X, Y`. A request must therefore hold exactly one whole
    volume (its statistics are the volume's).

    Args:
        reference_landmarks: the fitted reference landmarks (`HistogramStandardisation.reference_landmarks`), or
            None to skip histogram standardisation.
        cutoff: the standardisation's quantile cutoffs. Defaults to `(0.01, 0.99)`.
        landmarks: `"percentile"` or `"quartile"`. Defaults to `"percentile"`.
        whitening: bool. Zero mean and unit variance over the request. Defaults to True.
        multiple: int. Slices are padded to a multiple of it. Defaults to 8.
        description: str. What a request holds. Defaults to a description of the above.
        **kwargs: layer arguments.

    Example:

    ```python
    standardiser = HistogramStandardisation.load("model_dir/histogram_ref_file.txt")
    preprocessor = VolumePreprocessor.from_standardiser(standardiser, whitening=True)
    network_input = preprocessor(tf.constant(np.moveaxis(mr, 2, 0)[..., None], tf.float32))
    ```
    """

    def __init__(
        self,
        reference_landmarks: Sequence[float] | None = None,
        cutoff: Sequence[float] = (0.01, 0.99),
        landmarks: str = "percentile",
        whitening: bool = True,
        multiple: int = 8,
        description: str = "",
        **kwargs,
    ):
        kwargs.pop("request_shape", None)
        description = description or (
            "the axial slices of ONE volume, [Z, X, Y, 1] raw intensities (np.moveaxis(volume, 2, 0)[..., None]), "
            f"any slice size; normalised over the request, padded to a multiple of {int(multiple)} and cropped back"
        )
        super().__init__(request_shape=(None, None, 1), description=description, **kwargs)
        if isinstance(multiple, bool) or int(multiple) < 1:
            raise ValueError(f"`multiple` must be a positive int. Received: multiple={multiple!r}")
        self.multiple = int(multiple)
        self.whitening = bool(whitening)
        self.cutoff = tuple(float(c) for c in cutoff)
        self.landmarks = landmarks
        self.standardiser = None
        if reference_landmarks is not None:
            standardiser = HistogramStandardisation(cutoff=self.cutoff, landmarks=landmarks)
            reference = np.asarray(reference_landmarks, np.float64).reshape(-1)
            if reference.shape != standardiser.percentiles.shape or not np.all(np.isfinite(reference)):
                raise ValueError(
                    f"`reference_landmarks` must be {standardiser.percentiles.size} finite numbers, one per "
                    f"landmark of cutoff={self.cutoff}, landmarks={landmarks!r}. Received: {reference.tolist()}"
                )
            standardiser.reference_landmarks = reference
            self.standardiser = standardiser

    @classmethod
    def from_standardiser(
        cls, standardiser: HistogramStandardisation | None, whitening: bool = True, multiple: int = 8, **kwargs
    ) -> VolumePreprocessor:
        """The preprocessor of a fitted `HistogramStandardisation` (or None: no standardisation)."""
        if standardiser is None:
            return cls(None, whitening=whitening, multiple=multiple, **kwargs)
        if not standardiser.is_fitted:
            raise ValueError(f"`standardiser` must be fitted. Received: {standardiser!r} without landmarks")
        return cls(standardiser.reference_landmarks.tolist(), cutoff=standardiser.cutoff,
                   landmarks=standardiser.landmarks, whitening=whitening, multiple=multiple, **kwargs)

    def call(self, images):
        volume = tf.cast(images, tf.float32)
        if self.standardiser is not None:
            volume = intensity_tf.histogram_standardise(volume, self.standardiser)
        if self.whitening:
            volume = intensity_tf.whiten(volume)
        before, after = _margins(tf.shape(volume)[1:3], self.multiple)
        return tf.pad(volume, [[0, 0], [before[0], after[0]], [before[1], after[1]], [0, 0]])

    def postprocess(self, outputs, images):
        size = tf.shape(images)[1:3]
        before, _ = _margins(size, self.multiple)
        return {
            name: value[:, before[0] : before[0] + size[0], before[1] : before[1] + size[1]]
            if value.shape.rank >= 3 else value
            for name, value in outputs.items()
        }

    def get_config(self) -> dict:
        config = super().get_config()
        config.pop("request_shape")
        reference = None if self.standardiser is None else self.standardiser.reference_landmarks.tolist()
        return {**config, "reference_landmarks": reference, "cutoff": list(self.cutoff), "landmarks": self.landmarks,
                "whitening": self.whitening, "multiple": self.multiple}


@keras.saving.register_keras_serializable(package="sfg_keras")
class ImagePreprocessor(ServingPreprocessor):
    """Decoded pixels `[N, h, w, C]` of any size -> resized and standardised network input.

    In the graph: `tf.image.resize(images, size, antialias=True)`, `(image - mean) / std` per channel with the
    training-set statistics, then, with `whitening`, `tf.image.per_image_standardization`.

    Args:
        size: `(height, width)` of the network input.
        mean: per-channel means of the training images (after resizing).
        std: per-channel standard deviations (floored at 1e-6).
        whitening: bool. Per-image standardisation after it. Defaults to False.
        description: str. What a request holds. Defaults to a description of the above.
        **kwargs: layer arguments.

    Example:

    ```python
    preprocessor = ImagePreprocessor((200, 200), mean=[120.0, 110.0, 100.0], std=[60.0, 55.0, 50.0])
    preprocessor(tf.cast(tf.io.decode_jpeg(tf.io.read_file("face.jpg"))[None], tf.float32))
    ```
    """

    def __init__(self, size: Sequence[int], mean: Sequence[float], std: Sequence[float], whitening: bool = False,
                 description: str = "", **kwargs):
        kwargs.pop("request_shape", None)
        mean = [float(v) for v in np.asarray(mean, np.float64).reshape(-1)]
        std = [float(v) for v in np.maximum(np.asarray(std, np.float64).reshape(-1), 1e-6)]
        if len(mean) != len(std) or not mean:
            raise ValueError(f"`mean` and `std` must have one entry per channel. Received: mean={mean}, std={std}")
        size = tuple(int(s) for s in size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"`size` must be (height, width), both >= 1. Received: size={size}")
        channels = len(mean)
        description = description or (
            f"decoded {channels}-channel pixels 0..255 [N, h, w, {channels}] (one size per request), resized to "
            f"{list(size)} and standardised in the graph"
        )
        super().__init__(request_shape=(None, None, channels), description=description, **kwargs)
        self.size, self.mean, self.std, self.whitening = size, mean, std, bool(whitening)

    def call(self, images):
        resized = tf.image.resize(tf.cast(images, tf.float32), self.size, antialias=True)
        standardised = (resized - tf.constant(self.mean, tf.float32)) / tf.constant(self.std, tf.float32)
        return tf.image.per_image_standardization(standardised) if self.whitening else standardised

    def compute_output_spec(self, images):
        return keras.KerasTensor((images.shape[0], *self.size, len(self.mean)), "float32")

    def get_config(self) -> dict:
        config = super().get_config()
        config.pop("request_shape")
        return {**config, "size": list(self.size), "mean": self.mean, "std": self.std, "whitening": self.whitening}
