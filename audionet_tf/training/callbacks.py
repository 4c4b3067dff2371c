"""Training callbacks: checkpoints, history, filter images, NaN guard (backups are in `backup`)."""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
from typing import Any

import keras
import numpy as np

from audionet_tf.core.storage import atomic_write_text

log = logging.getLogger(__name__)

def _finite_logs(logs: dict[str, Any] | None) -> bool:
    return all(np.all(np.isfinite(np.asarray(v, dtype=np.float64))) for v in (logs or {}).values())


def save_model_atomically(model: keras.Model, path: str) -> None:
    """Save a `.keras` file through a temporary name (Keras writes the final path directly)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.keras"
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class Checkpoints(keras.callbacks.Callback):
    """Keeps `last.keras` and `best.keras` (lowest `monitor`) in the run's checkpoints directory."""

    def __init__(self, directory: str, monitor: str = "kl", every: int = 1, write: bool = True):
        super().__init__()
        self.directory = directory
        self.monitor = monitor
        self.every = every
        self.write = write
        self.best = math.inf
        best_state = os.path.join(directory, "best.json")
        if os.path.isfile(best_state):
            with open(best_state, encoding="utf-8") as handle:
                self.best = float(json.load(handle).get(monitor, math.inf))

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = logs or {}
        done = epoch + 1
        if not self.write or not _finite_logs(logs):
            return
        last = self.params.get("epochs") if self.params else None
        if done % self.every and done != last:
            return
        save_model_atomically(self.model, os.path.join(self.directory, "last.keras"))
        # The epoch of last.keras: a run whose backups are damaged resumes from it.
        atomic_write_text(os.path.join(self.directory, "last.json"), json.dumps({"epoch": done}) + "\n")
        value = logs.get(self.monitor)
        if value is not None and float(value) < self.best:
            self.best = float(value)
            # The same model as last.keras: a copy costs a fraction of serialising it again.
            best = os.path.join(self.directory, "best.keras")
            tmp = f"{best}.{os.getpid()}.tmp"
            try:
                shutil.copyfile(os.path.join(self.directory, "last.keras"), tmp)
                os.replace(tmp, best)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            atomic_write_text(os.path.join(self.directory, "best.json"),
                              json.dumps({"epoch": done, self.monitor: self.best}) + "\n")


class History(keras.callbacks.Callback):
    """Per-epoch metrics in `history.csv`; on resume, rows of epochs that will be replayed are dropped.

    A row is appended each epoch (a 5,000-epoch run would otherwise rewrite a growing file
    every epoch); the file is rewritten whole, atomically, only when a column appears (the
    first validated epoch adds the `val_*` columns) and at the first epoch after a resume.
    """

    def __init__(self, path: str, write: bool = True):
        super().__init__()
        self.path = path
        self.write = write
        self.rows: list[dict[str, Any]] = []
        self.start_epoch = 0
        self.fields: list[str] | None = None  # the columns of the file as written; None: rewrite it

    def resume_at(self, epoch: int) -> None:
        """Keep the rows of epochs before `epoch` (1-based count of finished epochs)."""
        self.start_epoch = epoch
        if os.path.isfile(self.path):
            with open(self.path, newline="", encoding="utf-8") as handle:
                # A row cut short by a kill has missing cells; it belongs to an epoch being replayed.
                self.rows = [r for r in csv.DictReader(handle)
                             if None not in r.values() and int(r["epoch"]) <= epoch]
        self.fields = None

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
        self.rows.append(row)
        if not self.write:
            return
        if self.fields is not None and set(row) <= set(self.fields) and os.path.isfile(self.path):
            with open(self.path, "a", newline="", encoding="utf-8") as handle:
                csv.DictWriter(handle, fieldnames=self.fields).writerow(row)
            return
        fields: list[str] = []
        for r in self.rows:
            fields.extend(k for k in r if k not in fields)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, buffer.getvalue(), fsync=False)
        self.fields = fields


class LearningRateLog(keras.callbacks.Callback):
    """Makes each epoch's logs plain floats and adds the learning rate (for TensorBoard and the history).

    Put it first: the callbacks after it share the same logs dict.
    """

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if logs is not None:
            for key, value in logs.items():
                logs[key] = float(np.asarray(value, dtype=np.float64).reshape(-1)[0])
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class StopOnNaN(keras.callbacks.Callback):
    """Stops training at the first non-finite loss and remembers where."""

    def __init__(self):
        super().__init__()
        self.nan_epoch: int | None = None

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.nan_epoch = self.nan_epoch if self.nan_epoch is not None else -1
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        loss = (logs or {}).get("loss")
        if (loss is not None and not math.isfinite(float(loss))) or self.nan_epoch == -1:
            self.nan_epoch = epoch + 1
            self.model.stop_training = True


def filter_figure(kernel: np.ndarray, sample_rate: int) -> np.ndarray:
    """An RGB image (uint8 [H, W, 3]) of the conv filters: each one's taps and its frequency response
    (magnitude in dB against frequency in Hz, the peak marked and labelled)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kernel = np.asarray(kernel)[:, 0, :]  # [taps, filters]
    taps, filters = kernel.shape
    cols = 4
    rows = int(math.ceil(filters / cols))
    fig, axes = plt.subplots(rows, cols * 2, figsize=(cols * 4.4, rows * 1.9), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1.6] * cols})
    freqs = np.fft.rfftfreq(1024, d=1.0 / sample_rate)
    responses = 20 * np.log10(np.abs(np.fft.rfft(np.nan_to_num(kernel, nan=0.0, posinf=0.0, neginf=0.0), 1024,
                                                 axis=0)) + 1e-9)  # [freqs, filters]
    top = float(np.nanmax(responses)) if np.isfinite(responses).any() else 0.0  # a diverged run still plots
    for i in range(rows * cols):
        ax_t, ax_f = axes[i // cols][2 * (i % cols)], axes[i // cols][2 * (i % cols) + 1]
        if i >= filters:
            ax_t.axis("off")
            ax_f.axis("off")
            continue
        ax_t.plot(kernel[:, i], linewidth=0.8)
        ax_t.set_xticks([])
        ax_t.set_yticks([])
        ax_t.set_title(f"filter {i}", fontsize=7)
        response = responses[:, i]
        peak = int(response.argmax())
        ax_f.plot(freqs, response, linewidth=0.8, color="tab:orange")
        ax_f.plot(freqs[peak], response[peak], "v", color="tab:red", markersize=4)
        ax_f.set_title(f"peak {freqs[peak]:.0f} Hz", fontsize=7)
        ax_f.set_xlim(0, sample_rate / 2)
        if np.isfinite(top):
            ax_f.set_ylim(top - 40, top + 3)  # a common 40 dB range: tuned filters stand out
        ax_f.tick_params(labelsize=5, length=2)
        ax_f.set_xticks([0, sample_rate / 4, sample_rate / 2])
        ax_f.set_xticklabels([f"{f / 1000:g}k" for f in (0, sample_rate / 4, sample_rate / 2)])
        if i % cols == 0:
            ax_f.set_ylabel("dB", fontsize=6)
        if i // cols == rows - 1:
            ax_f.set_xlabel("Hz", fontsize=6)
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


class FilterImages(keras.callbacks.Callback):
    """Writes an image of the learned conv filters and their frequency responses to TensorBoard."""

    def __init__(self, log_dir: str, sample_rate: int, every: int = 50, write: bool = True):
        super().__init__()
        self.log_dir = log_dir
        self.sample_rate = sample_rate
        self.every = every
        self.write = write
        self._writer = None

    def _log(self, step: int) -> None:
        import tensorflow as tf

        if not self.write:
            return
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        image = filter_figure(self.model.get_layer("conv").kernel.numpy(), self.sample_rate)
        with self._writer.as_default():
            tf.summary.image("conv_filters", image[None], step=step)
        self._writer.flush()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if (epoch + 1) % self.every == 0:
            self._log(epoch + 1)

    def on_train_end(self, logs=None) -> None:
        epochs = self.params.get("epochs", 0) if self.params else 0
        if epochs % self.every:
            self._log(epochs)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
