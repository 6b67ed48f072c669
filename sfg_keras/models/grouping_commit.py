"""`GroupingCommit`: the callback that ends the search of a search-then-commit run at the schedule's step."""

from __future__ import annotations

import keras


class GroupingCommit(keras.callbacks.Callback):
    """Runs an `SFGNetwork`'s search-then-commit schedule in `fit`: resolves a schedule given in fractions of the run
    from the steps `fit` will take, and commits (`SFGNetwork.commit`) before the first step past `commit_step`.

    The check runs when training starts (a run resumed after the commit point commits before its first step) and
    before every batch, so a checkpoint written at the commit step holds the searched network, and a run resumed from
    it commits exactly where an uninterrupted run did. `SFGNetwork.fit` adds this callback by itself when the
    network's schedule has a `commit_step`; give it explicitly to control its place among your callbacks.

    Example:

    ```python
    options = NetworkOptions(temperature_schedule=TemperatureSchedule(commit_step=600))
    model = sfg_small_cnn(tasks, options)
    model.fit(data, steps_per_epoch=2000, callbacks=[GroupingCommit()])  # commits before step 601
    ```
    """

    def on_train_begin(self, logs=None):
        schedule = getattr(self.model, "temperature_schedule", None)
        if schedule is not None and schedule.is_relative:
            epochs, steps = self.params.get("epochs"), self.params.get("steps")
            if not steps:
                raise ValueError(
                    f"{self.model.name}: its grouping schedule is given in fractions of the run, and fit cannot tell "
                    "how many steps it will take (a dataset of unknown size). Pass `steps_per_epoch`, or resolve the "
                    "schedule first: `model.resolve_schedule(total_steps)`."
                )
            done = int(self.model.optimizer.iterations.numpy())
            self.model.resolve_schedule(done + int(epochs) * int(steps))
        self._check()

    def on_train_batch_begin(self, batch, logs=None):
        self._check()

    def _check(self) -> None:
        commit = getattr(self.model, "maybe_commit", None)
        if commit is None:
            raise ValueError(
                f"GroupingCommit needs an SFGNetwork; received a model of type {type(self.model).__name__}."
            )
        commit()
