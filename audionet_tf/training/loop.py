"""The training loop: epochs of a fixed number of steps on one repeated input, many steps per call.

Keras's `fit` costs a large fixed time per epoch for a model this small (it resets its
metrics eagerly, reads them back, re-creates the validation iterator and reduces each
step's logs across replicas); an epoch here is four steps. This loop keeps one training
iterator and one repeated validation iterator for the whole run, runs up to
`steps_per_execution` steps in one `tf.function` call (metrics reset inside the first call of
an epoch), and calls the Keras callbacks at the boundaries of those calls, with the same
arguments `fit` gives them. It uses only Keras's public API (`train_step`, `test_step`,
`get_metrics_result`, `compute_loss`, `compute_metrics`) and `tf.distribute`'s
`strategy.run`, under one replica, MirroredStrategy or MultiWorkerMirroredStrategy alike.
"""
from __future__ import annotations

import gc
import sys
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf


# The GIL's switch interval while training (Python's default is 5 ms); see FitLoop.fit.
SWITCH_INTERVAL_S = 0.0005


def _floats(logs: dict[str, Any]) -> dict[str, float]:
    return {k: float(np.asarray(v, dtype=np.float64).reshape(-1)[0]) for k, v in logs.items()}


class FitLoop:
    """Trains a compiled model with Keras callbacks, `steps_per_execution` steps per `tf.function` call."""

    def __init__(self, model: keras.Model, strategy: tf.distribute.Strategy, steps_per_execution: int,
                 example_batch: tuple[Any, Any]):
        self.model = model
        self.strategy = strategy
        self.steps_per_execution = max(1, int(steps_per_execution))
        self._build_metrics(example_batch)
        self._train_function = tf.function(self._train_steps, reduce_retracing=True)
        self._test_function = tf.function(self._test_steps, reduce_retracing=True)

    def _build_metrics(self, example_batch: tuple[Any, Any]) -> None:
        # The loss and metric trackers make their variables on first use; that must happen
        # eagerly, under the strategy, before any step is traced.
        x, y = example_batch
        with self.strategy.scope():
            y_pred = self.model(x, training=False)
            self.model.compute_loss(x=x, y=y, y_pred=y_pred, training=False)
            self.model.compute_metrics(x, y, y_pred, sample_weight=None)
        self.model.reset_metrics()

    def _reset_metrics(self) -> None:
        for metric in self.model.metrics:
            metric.reset_state()

    def _train_steps(self, iterator, steps, reset: bool):
        if reset:
            self._reset_metrics()
        for _ in tf.range(steps):
            self.strategy.run(self.model.train_step, args=(next(iterator),))
        # Read in cross-replica context: the metric variables hold every replica's sums.
        return self.model.get_metrics_result()

    def _test_steps(self, iterator, steps):
        self._reset_metrics()
        for _ in tf.range(steps):
            self.strategy.run(self.model.test_step, args=(next(iterator),))
        return self.model.get_metrics_result()

    def evaluate(self, iterator, steps: int) -> dict[str, float]:
        """Metrics over the next `steps` batches of a (repeated) held-out iterator."""
        return _floats(self._test_function(iterator, tf.constant(steps, tf.int64)))

    def fit(self, iterator, *, epochs: int, initial_epoch: int, steps_per_epoch: int,
            callbacks: Sequence[keras.callbacks.Callback], verbose: int,
            validation: tuple[Any, int] | None = None, validation_epochs: Sequence[int] = ()) -> dict[str, float]:
        """Epochs `initial_epoch`..`epochs - 1` of `steps_per_epoch` steps; the held-out (iterator, steps) are
        evaluated after the 1-based epochs in `validation_epochs`. Returns the last epoch's logs."""
        calls = keras.callbacks.CallbackList(list(callbacks), add_history=False, add_progbar=verbose != 0,
                                             verbose=verbose, epochs=epochs, steps=steps_per_epoch, model=self.model)
        self.model.stop_training = False
        # Figures are drawn and files written on other threads of this process while the epochs
        # run; matplotlib and serialisation hold the GIL for long stretches, and the training
        # thread, back from a call that released it, waits up to one switch interval (5 ms by
        # default) each time it needs it again. A shorter interval bounds that wait.
        switch = sys.getswitchinterval()
        sys.setswitchinterval(min(switch, SWITCH_INTERVAL_S))
        # Python's oldest-generation collection walks every object of the process (TensorFlow's
        # and Keras's included): 0.2 s here, falling on whichever epoch crosses its threshold.
        # What exists when training starts is collected once and frozen (kept out of later
        # collections) until training ends; what the epochs allocate is collected as usual.
        gc.collect()
        gc.freeze()
        try:
            return self._epochs(iterator, calls, epochs, initial_epoch, steps_per_epoch, validation,
                                set(validation_epochs))
        except BaseException:
            # Stopped, a fault or a kill: what is buffered or being written in the background is
            # finished (its own failure logged) before the exception goes on.
            for callback in callbacks:
                finish = getattr(callback, "finish_after_error", None)
                if finish is not None:
                    finish()
            raise
        finally:
            gc.unfreeze()
            sys.setswitchinterval(switch)

    def _epochs(self, iterator, calls, epochs: int, initial_epoch: int, steps_per_epoch: int,
                validation: tuple[Any, int] | None, validate_after: set[int]) -> dict[str, float]:
        model = self.model
        calls.on_train_begin()
        epoch_logs: dict[str, float] = {}
        for epoch in range(initial_epoch, epochs):
            calls.on_epoch_begin(epoch)
            step, logs = 0, {}
            while step < steps_per_epoch:
                steps = min(self.steps_per_execution, steps_per_epoch - step)
                calls.on_train_batch_begin(step)
                logs = self._train_function(iterator, tf.constant(steps, tf.int64), step == 0)
                step += steps
                calls.on_train_batch_end(step - 1, logs)
                if model.stop_training:
                    break
            epoch_logs = _floats(logs)
            if validation is not None and epoch + 1 in validate_after:
                val_iterator, val_steps = validation
                calls.on_test_begin()
                val_logs = self.evaluate(val_iterator, val_steps)
                calls.on_test_end(val_logs)
                epoch_logs.update({f"val_{k}": v for k, v in val_logs.items()})
            calls.on_epoch_end(epoch, epoch_logs)
            if model.stop_training:
                break
        model.optimizer.finalize_variable_values(model.trainable_weights)
        calls.on_train_end(epoch_logs)
        return epoch_logs
