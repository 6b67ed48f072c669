"""Training helpers: Keras callbacks for SFG models (temperature annealing, TensorBoard grouping logger, the run
monitor of sfg_run) and atomic checkpoints."""

from sfg_keras.training.grouping_logger import GroupingLogger
from sfg_keras.training.monitor import TrainingMonitor
from sfg_keras.training.non_finite_guard import NonFiniteGuard, NonFiniteStepError
from sfg_keras.training.temperature_callback import TemperatureScheduler

__all__ = ["GroupingLogger", "NonFiniteGuard", "NonFiniteStepError", "TemperatureScheduler", "TrainingMonitor"]
