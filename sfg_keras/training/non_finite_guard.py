"""`NonFiniteGuard`: stop (or count and go on) when a training step's loss or gradients are not finite.

`SFGNetwork.train_step` never applies a non-finite update: the weights, the optimizer's slots and the
batch-normalisation statistics keep their values and the step's logs hold `non_finite_step = 1`. This callback turns
that flag into the run's behaviour: `"stop"` raises `NonFiniteStepError` naming the step (and, when the caller can tell,
the files of the batch) before any later checkpoint is written; `"skip"` counts the skipped batches and goes on.
"""

from __future__ import annotations

from collections.abc import Callable

import keras

NON_FINITE_POLICIES = ("stop", "skip")


class NonFiniteStepError(ValueError):
    """A training step's loss or gradients were NaN or infinite (the update was not applied).

    Attributes:
        step: the 1-based optimizer iteration of the step.
    """

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class NonFiniteGuard(keras.callbacks.Callback):
    """Reacts to the steps `SFGNetwork.train_step` did not apply because their loss or gradients were not finite.

    Place it before checkpoint callbacks: with `policy="stop"` it raises during `on_train_batch_end` of the bad
    step, so no checkpoint follows it and the last one written stays the last good state.

    Args:
        policy: `"stop"` (raise `NonFiniteStepError`) or `"skip"` (count the batch and go on).
        describe_batch: optional callable `iteration -> str` naming what the batch of an iteration held (e.g. its
            files), added to the message.
        max_reported: int. In `"skip"` mode, how many skipped steps are printed one by one. Defaults to 10.

    Example:

    ```python
    model.fit(dataset, callbacks=[NonFiniteGuard("stop"), PeriodicCheckpoint("model_dir/models", 100)])
    ```
    """

    def __init__(self, policy: str = "stop", describe_batch: Callable[[int], str] | None = None,
                 max_reported: int = 10):
        super().__init__()
        if policy not in NON_FINITE_POLICIES:
            raise ValueError(f"`policy` must be one of {NON_FINITE_POLICIES}. Received: policy={policy!r}")
        self.policy = policy
        self.describe_batch = describe_batch
        self.max_reported = int(max_reported)
        self.skipped: list[int] = []

    def _describe(self, step: int) -> str:
        if self.describe_batch is None:
            return ""
        try:
            description = self.describe_batch(step)
        except Exception as error:  # a description is a courtesy; never hide the real problem behind it
            description = f"(could not list the batch: {type(error).__name__}: {error})"
        return f"; the batch held {description}" if description else ""

    def on_train_batch_end(self, batch, logs=None):
        if not logs or float(logs.get("non_finite_step", 0.0)) < 0.5:
            return
        step = int(self.model.optimizer.iterations.numpy())
        if self.policy == "stop":
            raise NonFiniteStepError(
                f"Training step {step}: the loss or a gradient is NaN or infinite{self._describe(step)}. The update "
                f"was not applied and no checkpoint was written after step {step - 1}; fix the data (or lower "
                "[TRAINING] lr), or set [TRAINING] non_finite = skip to skip such batches.",
                step,
            )
        self.skipped.append(step)
        if len(self.skipped) <= self.max_reported:
            print(f"Warning: step {step} skipped (NaN or infinite loss or gradient){self._describe(step)}.",
                  flush=True)

    def on_train_end(self, logs=None):
        if self.skipped:
            print(f"{len(self.skipped)} training step(s) skipped for a non-finite loss or gradient: "
                  f"{self.skipped[:20]}{' ...' if len(self.skipped) > 20 else ''}", flush=True)
