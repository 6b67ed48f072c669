"""Training helpers: Keras callbacks for SFG models (temperature annealing, TensorBoard grouping logger)."""

from sfg_keras.training.grouping_logger import GroupingLogger
from sfg_keras.training.temperature_callback import TemperatureScheduler

__all__ = ["GroupingLogger", "TemperatureScheduler"]
