"""Resumable training state: backups by epochs, steps or minutes, fallback on damage, stop on request.

A backup is a `.weights.h5` file (model weights and optimizer state, including the
optimizer's step counter) plus `state.json`, written atomically after it, naming the file
and where training was: `epoch` (finished epochs) and `step` (steps done in the next one).
The newest `keep` backups stay, so a damaged newest file falls back on the one before it,
then on `checkpoints/last.keras`. A new backup is written to a temporary name and renamed
only when complete: a kill, a full disk or a vanished directory never replaces a good
backup with a partial one.

Backups are taken at the end of an execution of the training loop (`steps_per_execution` steps
in one call); by default an execution is a whole epoch of at most `config.AUTO_STEPS_PER_EXECUTION`
steps. With `make_copy`, the state is copied there and written by a background thread.
"""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import threading
import time
from typing import Any, Callable, Sequence

import keras
import numpy as np

from audionet_tf.core.errors import AudioNetError
from audionet_tf.core import storage
from audionet_tf.core.storage import atomic_write_text
from audionet_tf.training.callbacks import BackgroundWriter, WritesInBackground, cache_saving_skipsets

log = logging.getLogger(__name__)

BACKUP_STATE = "state.json"
BACKUP_NAME = re.compile(r"epoch-(\d{6})-step-(\d{9})\.weights\.h5")
# Exit status of a run stopped on request (SIGTERM, Ctrl-C) after saving: EX_TEMPFAIL,
# "try again" — the same command continues.
EXIT_STOPPED = 75


class Stopped(AudioNetError):
    """Training stopped on request (SIGTERM / SIGINT) after saving a backup."""


class BackupWriteError(AudioNetError):
    """A backup (or another file of the run) could not be written."""


class NoUsableState(AudioNetError):
    """Every backup and checkpoint of a run is damaged."""


class StopRequest:
    """Turns SIGTERM and SIGINT into a request that the Backup callback honours at the next step boundary.

    A second Ctrl-C stops at once (KeyboardInterrupt). Only the main thread can install handlers;
    elsewhere this does nothing.
    """

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        log.warning("%s received: saving a backup at the next step boundary, then stopping", self.signal_name)

    def install(self) -> "StopRequest":
        """Catch SIGTERM and SIGINT from now on."""
        try:
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread
            self._previous.clear()
        return self

    def restore(self) -> None:
        """Give the signals back to their previous handlers."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for."""
        return self.signal_name is not None

    def due(self, step: int) -> bool:
        """Whether to stop at this step boundary (`step`: the optimizer's steps so far)."""
        return self.requested

    @property
    def reason(self) -> str:
        """What asked for the stop, for the message."""
        return str(self.signal_name)


class ClusterStopRequest(StopRequest):
    """A stop asked of any worker of a cluster stops every worker after the same step.

    The worker that gets the signal proposes "after step s + 1" (s: its steps so far) under one
    key of TensorFlow's coordination service; the first proposal wins. A thread on each worker
    waits for that key (one blocking call, no polling) and acknowledges it. The proposer waits
    for every acknowledgement before its next step: no worker can finish step s + 1 without the
    proposer's part of that step's all-reduce, so every worker knows the step before it gets
    there, and all of them save (the chief into the run) and stop at the same step boundary.
    """

    KEY = "audionet_tf/stop"

    def __init__(self, task: str, tasks: Sequence[str], wait_s: float):
        super().__init__()
        self.task = task
        self.tasks = list(tasks)
        self.wait_ms = int(wait_s * 1000)
        self._agreed: dict[str, Any] | None = None
        self._proposed = False

    def install(self) -> "ClusterStopRequest":
        """Catch SIGTERM and SIGINT, and start waiting for another worker's stop."""
        super().install()
        threading.Thread(target=self._watch, name="audionet-cluster-stop", daemon=True).start()
        return self

    @staticmethod
    def _context():
        from tensorflow.python.eager import context

        return context.context()

    def _watch(self) -> None:
        try:
            value = self._context().get_config_key_value(self.KEY)  # blocks until set, or the cluster ends
            self._agreed = json.loads(value)
            self._context().set_config_key_value(f"{self.KEY}/ack/{self.task}", "1")
        except Exception:  # the cluster ended or lost a worker: the main thread reports that
            return

    def due(self, step: int) -> bool:
        """Whether every worker stops at this boundary; first proposes a stop if this worker was signalled."""
        if self._agreed is None and self.signal_name is not None and not self._proposed:
            self._propose(step)
        return self._agreed is not None and step >= int(self._agreed["step"])

    def _propose(self, step: int) -> None:
        import tensorflow as tf

        self._proposed = True
        context = self._context()
        proposal = {"step": step + 1, "signal": self.signal_name, "task": self.task}
        try:
            context.set_config_key_value(self.KEY, json.dumps(proposal))
        except tf.errors.AlreadyExistsError:
            pass  # another worker asked first: its step holds
        agreed = json.loads(context.get_config_key_value(self.KEY, self.wait_ms))
        # A dead worker never acknowledges: the heartbeats fail this wait (a lost peer) first.
        for task in self.tasks:
            context.get_config_key_value(f"{self.KEY}/ack/{task}", self.wait_ms)
        self._agreed = agreed
        log.warning("every worker stops after step %d", agreed["step"])

    @property
    def reason(self) -> str:
        """The signal, and the worker that got it when that was another one."""
        agreed = self._agreed or {}
        if agreed.get("task") not in (None, self.task):
            return f"{agreed['signal']} to {agreed['task']}"
        return str(self.signal_name or agreed.get("signal"))


def _finite(model: keras.Model, logs: dict[str, Any] | None) -> bool:
    finite_logs = all(np.all(np.isfinite(np.asarray(v, dtype=np.float64))) for v in (logs or {}).values())
    return finite_logs and all(np.all(np.isfinite(np.asarray(w))) for w in model.get_weights())


def read_state(backup_dir: str) -> dict[str, Any] | None:
    """The backup directory's state (None when there is none, or it is unreadable)."""
    path = storage.join(backup_dir, BACKUP_STATE)
    try:
        if not storage.exists(path):
            return None
        state = json.loads(storage.read_text(path))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        # The weights files' names say where they were taken: use them, newest first.
        log.warning("backup state %s is unreadable (%s); using the backup files' names", path, exc)
        found = []
        for name in sorted(storage.listdir(backup_dir), reverse=True):
            match = BACKUP_NAME.fullmatch(name)
            if match:
                found.append({"weights": name, "epoch": int(match.group(1)), "step": int(match.group(2))})
        return {"backups": found, "damaged": path}
    if "backups" not in state:  # written by an earlier version: one backup
        state = {"backups": [{"weights": state["weights"], "epoch": state["epoch"], "step": 0}]}
    return state


class RunDirGuard(keras.callbacks.Callback):
    """Stops with one message when the run directory disappears (removed, or its storage gone).

    Without it, the next write would quietly make a new, partial run directory in its place.
    Put it first: it checks before the others write.
    """

    def __init__(self, run_dir: str, lock):
        super().__init__()
        self.run_dir = run_dir
        self.lock = lock

    def _check(self) -> None:
        if self.lock is not None and not self.lock.intact():
            raise BackupWriteError(f"cannot write {self.run_dir}: the run directory has disappeared (removed, or its "
                                   f"storage is gone); nothing more is written; restore the directory or its "
                                   f"storage and run the same command to continue from its last backup")

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        self._check()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        self._check()


class Backup(WritesInBackground, keras.callbacks.Callback):
    """Saves weights and optimizer state every `every_epochs` epochs, `every_steps` steps or `every_minutes`
    minutes (whichever comes first; 0 turns the last two off), and when a stop is requested.

    `restore()` is called before `fit` and returns (epoch, step) to continue from.
    """

    def __init__(self, backup_dir: str, every_epochs: int = 10, every_steps: int = 0, every_minutes: float = 0.0,
                 keep: int = 2, write: bool = True, restore_dir: str | None = None,
                 checkpoint_dir: str | None = None, stop: StopRequest | None = None, steps_per_epoch: int = 1,
                 make_copy: Callable[[], keras.Model] | None = None):
        super().__init__()
        # With `make_copy`, backups are written in the background from a copy of the state
        # taken where training was; a stop request or training's end waits for the last one.
        self._writer = BackgroundWriter(make_copy, "backups") if make_copy is not None and write else None
        self.backup_dir = backup_dir
        self.every_epochs = every_epochs
        self.every_steps = every_steps
        self.every_seconds = every_minutes * 60.0
        self.keep = max(1, keep)
        self.write = write
        # Every worker of a cluster resumes from the chief's backup, so they all start alike.
        self.restore_dir = restore_dir or backup_dir
        self.checkpoint_dir = checkpoint_dir
        self.stop = stop
        self.steps_per_epoch = steps_per_epoch
        self.last_saved: dict[str, Any] | None = None
        self._last_step = 0
        self._last_time = time.monotonic()
        self._epoch = 0
        self._epoch_start_step = 0
        self._offset = 0  # steps of the first epoch done before a mid-epoch resume

    def begin(self, steps_per_epoch: int, offset: int = 0) -> None:
        """Before each `fit`: its steps per epoch, and the steps of its first epoch already done."""
        self.steps_per_epoch = steps_per_epoch
        self._offset = offset

    # -- restoring ----------------------------------------------------------------------------------------

    def restore(self, model: keras.Model) -> tuple[int, int]:
        """Load the newest usable backup into `model` (and its optimizer): (finished epochs, steps into the next)."""
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        state = read_state(self.restore_dir)
        candidates = [] if state is None else list(state["backups"])
        bad: list[str] = [state["damaged"]] if state and "damaged" in state else []
        for entry in candidates:
            path = storage.join(self.restore_dir, entry["weights"])
            try:
                model.load_weights(path)
            except Exception as exc:  # h5py reports truncation and corruption with several types
                log.warning("backup %s is damaged or missing (%s); trying the previous one",
                            path, str(exc).splitlines()[0][:200])
                bad.append(path)
                continue
            self.last_saved = dict(entry)
            self._note_restored(model)
            log.info("resumed from %s at epoch %d step %d", path, entry["epoch"], entry.get("step", 0))
            return int(entry["epoch"]), int(entry.get("step", 0))
        fallback = self._restore_checkpoint(model, bad)
        if fallback is not None:
            return fallback, 0
        if bad:
            raise NoUsableState(
                f"no usable state left to resume {os.path.dirname(self.restore_dir)}: damaged: {', '.join(bad)}; "
                f"to start afresh, remove {self.restore_dir} and the checkpoints directory, or pick another --name")
        return 0, 0

    def _restore_checkpoint(self, model: keras.Model, bad: list[str]) -> int | None:
        if not self.checkpoint_dir:
            return None
        last = storage.join(self.checkpoint_dir, "last.keras")
        marker = storage.join(self.checkpoint_dir, "last.json")
        if not (bad and storage.isfile(last) and storage.isfile(marker)):
            return None
        try:
            epoch = int(json.loads(storage.read_text(marker))["epoch"])
            model.load_weights(last)
        except Exception as exc:
            log.warning("checkpoint %s is damaged (%s)", last, str(exc).splitlines()[0][:200])
            bad.append(last)
            return None
        self._note_restored(model)
        log.warning("resumed from checkpoint %s at epoch %d (the backups were damaged)", last, epoch)
        return epoch

    def _note_restored(self, model: keras.Model) -> None:
        self._last_step = int(model.optimizer.iterations.numpy()) if model.optimizer is not None else 0
        self._last_time = time.monotonic()

    # -- saving -------------------------------------------------------------------------------------------

    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._epoch = epoch
        self._epoch_start_step = self._step() - self._offset
        self._offset = 0

    def on_train_batch_begin(self, batch: int, logs=None) -> None:
        if self.stop is not None and self.stop.due(self._step()) and self._step() == self._last_step:
            self._stopped()  # asked to stop before anything new was trained

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        if batch + 1 >= self.steps_per_epoch:
            return  # the epoch's end follows: save there, after validation and the epoch's logs
        step = self._step()
        stopping = self.stop is not None and self.stop.due(step)
        if not (stopping or self._due(step)):
            return
        if _finite(self.model, None):
            self._save(self._epoch, step - self._epoch_start_step, step)
        if stopping:
            self._stopped()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if self._writer is not None:
            self._writer.check()
        done = epoch + 1
        last = self.params.get("epochs") if self.params else None
        step = self._step()
        stopping = self.stop is not None and self.stop.due(step)
        if done % self.every_epochs == 0 or done == last or stopping or self._due(step):
            if _finite(self.model, logs):
                self._save(done, 0, step)
            else:
                log.warning("epoch %d: loss or weights are not finite; the backup keeps the last good state", done)
        if stopping:
            self._stopped()

    def _due(self, step: int) -> bool:
        if self.every_steps and step - self._last_step >= self.every_steps:
            return True
        return bool(self.every_seconds) and time.monotonic() - self._last_time >= self.every_seconds

    def _stopped(self) -> None:
        if self._writer is not None:
            self._writer.close()
        where = self.last_saved
        saved = (f"saved {storage.join(self.restore_dir, where['weights'])} (epoch {where['epoch']}, "
                 f"step {where.get('step', 0)})" if where else "nothing had been trained yet")
        raise Stopped(f"stopped by {self.stop.reason}: {saved}; run the same command to continue")

    def _save(self, epoch: int, step_in_epoch: int, step: int) -> None:
        self._last_step = step
        self._last_time = time.monotonic()
        entry = {"epoch": epoch, "step": step_in_epoch, "iterations": step,
                 "weights": f"epoch-{epoch:06d}-step-{step_in_epoch:09d}.weights.h5"}  # BACKUP_NAME
        if not self.write:
            self.last_saved = entry
            return
        if self._writer is None:
            self._write(self.model, entry)
        else:
            self._writer.submit(self.model, lambda copy: self._write(copy, entry))

    def _write(self, model: keras.Model, entry: dict[str, Any]) -> None:
        final = storage.join(self.backup_dir, entry["weights"])
        remote = storage.is_remote(final)
        tmp = storage.join(self.backup_dir, f".{entry['weights']}.{os.getpid()}.tmp.weights.h5")
        state = read_state(self.backup_dir) or {"backups": []}
        kept = [b for b in state["backups"] if b["weights"] != entry["weights"]][: self.keep - 1]
        cache_saving_skipsets()
        try:
            storage.makedirs(self.backup_dir)
            if remote:
                # No rename in an object store: Keras writes the file locally, then uploads it whole
                # under its final name; state.json names it only after that.
                storage.clear_for_rewrite(final)
                model.save_weights(final, overwrite=True)
            else:
                model.save_weights(tmp, overwrite=True)
                storage.fsync_path(tmp)  # the rename must not reach the disk before the data
                os.replace(tmp, final)
            atomic_write_text(storage.join(self.backup_dir, BACKUP_STATE),
                              json.dumps({"backups": [entry, *kept]}, indent=1) + "\n")
        except Exception as exc:
            try:
                if not remote and os.path.exists(tmp):
                    os.unlink(tmp)
            except OSError:
                pass
            reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0][:200]
            good = kept[0] if kept else None
            if self.last_saved and storage.isfile(storage.join(self.backup_dir, self.last_saved["weights"])):
                good = self.last_saved
            keeps = (f"the last good backup {storage.join(self.backup_dir, good['weights'])} (epoch {good['epoch']}, "
                     f"step {good.get('step', 0)}) is kept" if good else "no backup had been written yet")
            raise BackupWriteError(f"cannot write the backup {final}: {reason}; {keeps}; free space or fix the "
                                   f"directory, then run the same command to continue") from None
        self.last_saved = entry
        keep_names = {b["weights"] for b in (entry, *kept)}
        for old in storage.listdir(self.backup_dir):
            # Also the temporary files of writes that a kill interrupted (a weights file, or state.json's).
            stale_state = old.startswith(f".{BACKUP_STATE}.") and old.endswith(".tmp")
            if (old.endswith(".weights.h5") and old not in keep_names) or stale_state:
                try:
                    storage.remove(storage.join(self.backup_dir, old))
                except OSError:
                    pass
