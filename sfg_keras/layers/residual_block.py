"""`ResidualBlock`: the pre-activation HighResNet block (BN, PReLU, dilated conv, twice, plus identity)."""

from __future__ import annotations

import keras

from sfg_keras.layers.batch_statistics_normalization import BatchStatisticsNormalization


@keras.saving.register_keras_serializable(package="sfg")
class ResidualBlock(keras.layers.Layer):
    """Pre-activation residual block of HighResNet (Li et al., 2017) as used by SFG-HighResNet.

    `y = x + conv(act(BN(conv(act(BN(x))))))` with `kernel_size` convolutions of dilation `dilation_rate`, no
    bias. Batch normalisation uses `BatchStatisticsNormalization` (batch statistics at inference by default).

    Args:
        filters: int. Channels in and out (the skip is the identity).
        kernel_size: int. Defaults to 3.
        dilation_rate: int. Defaults to 1.
        rank: int. 2 or 3. Defaults to 2.
        activation: str. `"prelu"` or a Keras activation name. Defaults to `"prelu"`.
        inference_statistics: str. `"batch"` or `"moving"`. Defaults to `"batch"`.
        kernel_l2: float. L2 weight of the two kernels. Defaults to 1e-6.

    Example:

    ```python
    y = ResidualBlock(16, dilation_rate=2)(keras.random.normal((2, 32, 32, 16)))
    ```
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int = 3,
        dilation_rate: int = 1,
        rank: int = 2,
        activation: str = "prelu",
        inference_statistics: str = "batch",
        kernel_l2: float = 1e-6,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if rank not in (2, 3):
            raise ValueError(f"`rank` must be 2 or 3. Received: rank={rank!r}")
        self.filters = filters
        self.kernel_size = kernel_size
        self.dilation_rate = dilation_rate
        self.rank = rank
        self.activation = activation
        self.inference_statistics = inference_statistics
        self.kernel_l2 = kernel_l2
        conv = keras.layers.Conv2D if rank == 2 else keras.layers.Conv3D
        regularizer = keras.regularizers.L2(kernel_l2) if kernel_l2 > 0 else None
        self.norms, self.activations, self.convs = [], [], []
        for i in range(2):
            self.norms.append(
                BatchStatisticsNormalization(
                    inference_statistics=inference_statistics,
                    momentum=0.9,
                    epsilon=1e-5,
                    dtype=self.dtype_policy,
                    name=f"bn_{i}",
                )
            )
            if activation == "prelu":
                act = keras.layers.PReLU(
                    shared_axes=list(range(1, rank + 1)), dtype=self.dtype_policy, name=f"prelu_{i}"
                )
            else:
                act = keras.layers.Activation(activation, dtype=self.dtype_policy, name=f"act_{i}")
            self.activations.append(act)
            self.convs.append(
                conv(
                    filters,
                    kernel_size,
                    padding="same",
                    dilation_rate=dilation_rate,
                    use_bias=False,
                    kernel_initializer="he_normal",
                    kernel_regularizer=regularizer,
                    dtype=self.dtype_policy,
                    name=f"conv_{i}",
                )
            )

    def build(self, input_shape):
        if input_shape[-1] != self.filters:
            raise ValueError(
                f"{self.name}: the identity skip needs {self.filters} input channels. Received shape {input_shape}"
            )
        for norm, act, conv in zip(self.norms, self.activations, self.convs):
            norm.build(input_shape)
            act.build(input_shape)
            conv.build(input_shape)
        self.built = True

    def call(self, inputs, training=None):
        x = inputs
        for norm, act, conv in zip(self.norms, self.activations, self.convs):
            x = conv(act(norm(x, training=training)))
        return inputs + x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "dilation_rate": self.dilation_rate,
            "rank": self.rank,
            "activation": self.activation,
            "inference_statistics": self.inference_statistics,
            "kernel_l2": self.kernel_l2,
        }
