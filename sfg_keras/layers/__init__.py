"""Keras layers of sfg-keras: the SFG convolution and its companions (Keras, TensorFlow, TFP only)."""

from sfg_keras.groups import block_assignment, default_p0, initial_probabilities
from sfg_keras.layers.batch_statistics_normalization import BatchStatisticsNormalization
from sfg_keras.layers.cross_stitch import CrossStitch
from sfg_keras.layers.per_stream import PerStream
from sfg_keras.layers.residual_block import ResidualBlock
from sfg_keras.layers.sampling_scope import sampling_scope
from sfg_keras.layers.sfg_conv import SFGConv
from sfg_keras.layers.stream_merge import StreamMerge
from sfg_keras.layers.temperature_schedule import TemperatureSchedule, apply_temperature, find_sfg_layers

__all__ = [
    "BatchStatisticsNormalization",
    "CrossStitch",
    "PerStream",
    "ResidualBlock",
    "SFGConv",
    "StreamMerge",
    "TemperatureSchedule",
    "apply_temperature",
    "block_assignment",
    "default_p0",
    "find_sfg_layers",
    "initial_probabilities",
    "sampling_scope",
]
