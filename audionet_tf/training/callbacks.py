"""Training callbacks: checkpoints, history, filter images, NaN guard (backups are in `backup`)."""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
import time
from typing import Any, Callable

import keras
import numpy as np

from audionet_tf.core import storage
from audionet_tf.core.storage import atomic_write_text
from audionet_tf.training import figures

log = logging.getLogger(__name__)

def _finite_logs(logs: dict[str, Any] | None) -> bool:
    return all(np.all(np.isfinite(np.asarray(v, dtype=np.float64))) for v in (logs or {}).values())


# The object kinds whose attribute skip-sets Keras's saving looks up while walking a model.
_SAVING_KINDS = ("Operation", "Layer", "Functional", "Sequential", "Metric", "Optimizer", "Loss")


def cache_saving_skipsets() -> None:
    """Fill, on this thread, the cache Keras's saving reads its attribute skip-sets from.

    Keras 3 (3.15 here) stores each skip-set under `saving_attr_skipset_<kind>` but looks it up
    under `saving_attr_skiplist_<kind>`, so every `save` or `save_weights` builds them again from
    new reference objects (a Layer, an Optimizer with its variables, a Metric, ...): about 70 KB of
    native memory that is never given back, per save. A run saving a checkpoint and a backup every
    10 epochs grew by ~14 KB an epoch. The cache is thread-local: call this on the saving thread.
    """
    try:
        from keras.src.backend.common import global_state
        from keras.src.saving import saving_lib
    except ImportError:  # a Keras laid out otherwise: nothing to work around
        return
    for kind in _SAVING_KINDS:
        key = f"saving_attr_skiplist_{kind}"
        if global_state.get_global_attribute(key) is None:
            global_state.set_global_attribute(key, saving_lib.get_attr_skipset(kind))


def save_model_atomically(model: keras.Model, path: str) -> None:
    """Save a `.keras` file through a temporary name (Keras writes the final path directly).

    In an object store (no rename) Keras zips the file in memory and uploads it whole under `path`."""
    cache_saving_skipsets()
    if storage.is_remote(path):
        storage.clear_for_rewrite(path)
        model.save(path)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.keras"
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class BackgroundWriter(figures.BackgroundDrawing):
    """Writes files from a copy of a model's state on one background thread, while training goes on.

    Serialising a `.keras` file or a weights backup costs about as much as an epoch of the seed
    experiment; copying the weights and optimizer state into a second model of the same
    architecture (`make_copy`) costs a few eager assignments. One write runs at a time: a new
    one first waits for the last, and a failed write is raised by the next `submit`, `check` or `wait`.
    """

    def __init__(self, make_copy: Callable[[], keras.Model], name: str):
        super().__init__(name, failure="a background write failed too")
        self._make_copy = make_copy
        self._copy: keras.Model | None = None

    def submit(self, model: keras.Model, write: Callable[[keras.Model], None]) -> None:  # type: ignore[override]
        """Copy `model`'s state now; `write(copy)` runs in the background."""
        self.wait()  # the copy is free again
        if self._copy is None:
            self._copy = self._make_copy()
            self._copy.optimizer.build(self._copy.trainable_variables)
        self._copy.set_weights(model.get_weights())
        for target, source in zip(self._copy.optimizer.variables, model.optimizer.variables):
            target.assign(source)
        super().submit(write, self._copy)


class WritesInBackground:
    """For a callback whose files a `BackgroundWriter` (`self._writer`, or None) writes: training's end waits
    for them."""

    _writer: BackgroundWriter | None

    def on_train_end(self, logs=None) -> None:
        if self._writer is not None:
            self._writer.close()

    def finish_after_error(self) -> None:
        """Training ends on an exception: let the file being written finish."""
        if self._writer is not None:
            self._writer.finish_quietly()


class Checkpoints(WritesInBackground, keras.callbacks.Callback):
    """Keeps `last.keras` and `best.keras` (lowest `monitor`) in the run's checkpoints directory.

    With `make_copy` (a function returning a compiled model of the same architecture) the files
    are written by a `BackgroundWriter` while training goes on; training's end waits for them.
    """

    def __init__(self, directory: str, monitor: str = "kl", every: int = 1, write: bool = True,
                 make_copy: Callable[[], keras.Model] | None = None):
        super().__init__()
        self.directory = directory
        self.monitor = monitor
        self.every = every
        self.write = write
        self.best = math.inf
        self._writer = BackgroundWriter(make_copy, "checkpoints") if make_copy is not None else None
        best_state = storage.join(directory, "best.json")
        if storage.isfile(best_state):
            self.best = float(json.loads(storage.read_text(best_state)).get(monitor, math.inf))

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = logs or {}
        done = epoch + 1
        if self._writer is not None:
            self._writer.check()
        if not self.write or not _finite_logs(logs):
            return
        last = self.params.get("epochs") if self.params else None
        if done % self.every and done != last:
            return
        value = logs.get(self.monitor)
        best = float(value) if value is not None and float(value) < self.best else None
        if best is not None:
            self.best = best
        if self._writer is None:
            self._write(self.model, done, best)
        else:
            self._writer.submit(self.model, lambda copy: self._write(copy, done, best))

    def _write(self, model: keras.Model, done: int, best: float | None) -> None:
        save_model_atomically(model, storage.join(self.directory, "last.keras"))
        # The epoch of last.keras: a run whose backups are damaged resumes from it.
        atomic_write_text(storage.join(self.directory, "last.json"), json.dumps({"epoch": done}) + "\n")
        if best is not None and storage.is_remote(self.directory):
            # One upload of the same bytes, under the final name (no rename in an object store).
            path = storage.join(self.directory, "best.keras")
            storage.write_bytes(path, storage.read_bytes(storage.join(self.directory, "last.keras")))
        elif best is not None:
            # The same model as last.keras: a copy costs a fraction of serialising it again.
            path = os.path.join(self.directory, "best.keras")
            tmp = f"{path}.{os.getpid()}.tmp"
            try:
                shutil.copyfile(os.path.join(self.directory, "last.keras"), tmp)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        if best is not None:
            atomic_write_text(storage.join(self.directory, "best.json"),
                              json.dumps({"epoch": done, self.monitor: best}) + "\n")


class History(keras.callbacks.Callback):
    """Per-epoch metrics in `history.csv`; on resume, rows of epochs that will be replayed are dropped.

    A row is appended each epoch (a 5,000-epoch run would otherwise rewrite a growing file
    every epoch); the file is rewritten whole, atomically, only when a column appears (the
    first validated epoch adds the `val_*` columns) and at the first epoch after a resume.
    A local file's rows are not kept in memory (a rewrite reads them back from the file), so
    memory does not grow with the run's length; an object store's file is rewritten whole
    each epoch from the rows kept.
    """

    def __init__(self, path: str, write: bool = True):
        super().__init__()
        self.path = path
        self.write = write
        self.rows: list[dict[str, Any]] = []  # the rows not (only) in the file: all of them for a remote file
        self.start_epoch = 0
        self.fields: list[str] | None = None  # the columns of the file as written; None: rewrite it

    def resume_at(self, epoch: int) -> None:
        """Keep the rows of epochs before `epoch` (1-based count of finished epochs)."""
        self.start_epoch = epoch
        self.rows = []
        if storage.isfile(self.path):
            # A row cut short by a kill has missing cells; it belongs to an epoch being replayed.
            self.rows = [r for r in csv.DictReader(io.StringIO(storage.read_text(self.path), newline=""))
                         if None not in r.values() and int(r["epoch"]) <= epoch]
        self.fields = None

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if not self.write:
            return
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
        remote = storage.is_remote(self.path)
        # An object can only be written whole: there the file is rewritten each epoch.
        if self.fields is not None and set(row) <= set(self.fields) and not remote and os.path.isfile(self.path):
            with open(self.path, "a", newline="", encoding="utf-8") as handle:
                csv.DictWriter(handle, fieldnames=self.fields).writerow(row)
            return
        if self.fields is not None and not remote and os.path.isfile(self.path):
            with open(self.path, newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
        else:
            rows = self.rows
        rows = [*rows, row]
        fields: list[str] = []
        for r in rows:
            fields.extend(k for k in r if k not in fields)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, buffer.getvalue(), fsync=False)
        self.fields = fields
        self.rows = rows if remote else []


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


class FilterFigure:
    """The conv filters' figure, built once and redrawn for each kernel: each filter's taps and its frequency
    response (magnitude in dB against frequency in Hz, the peak marked and labelled).

    Building the 32 panels (their axes, ticks and static labels) was most of a draw's cost. The first draw
    plots the kernel; the next ones set the lines, peaks, titles and limits that depend on it, and give the
    image a new figure would. A plain `Figure` on an Agg canvas: pyplot's global registry never holds it.
    """

    COLUMNS = 4

    def __init__(self, taps: int, filters: int, sample_rate: int):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        cols = self.COLUMNS
        rows = int(math.ceil(filters / cols))
        self.taps, self.filters, self.sample_rate = taps, filters, sample_rate
        self.freqs = np.fft.rfftfreq(1024, d=1.0 / sample_rate)
        self.fig = Figure(figsize=(cols * 4.4, rows * 1.9))
        FigureCanvasAgg(self.fig)
        # A fixed layout, not tight_layout: measuring every label's extent was most of the figure's cost.
        axes = self.fig.subplots(rows, cols * 2, squeeze=False,
                                 gridspec_kw={"width_ratios": [1, 1.6] * cols, "left": 0.03, "right": 0.99,
                                              "top": 1 - 0.3 / (rows * 1.9), "bottom": 0.45 / (rows * 1.9),
                                              "wspace": 0.35, "hspace": 0.55})
        self._panels = []
        for i in range(rows * cols):
            ax_t, ax_f = axes[i // cols][2 * (i % cols)], axes[i // cols][2 * (i % cols) + 1]
            if i >= filters:
                ax_t.axis("off")
                ax_f.axis("off")
                continue
            ax_t.set_xticks([])
            ax_t.set_yticks([])
            ax_t.set_title(f"filter {i}", fontsize=7)
            peak_title = ax_f.set_title("", fontsize=7)
            ax_f.set_xlim(0, sample_rate / 2)
            ax_f.tick_params(labelsize=5, length=2)
            ax_f.set_xticks([0, sample_rate / 4, sample_rate / 2])
            ax_f.set_xticklabels([f"{f / 1000:g}k" for f in (0, sample_rate / 4, sample_rate / 2)])
            if i % cols == 0:
                ax_f.set_ylabel("dB", fontsize=6)
            if i // cols == rows - 1:
                ax_f.set_xlabel("Hz", fontsize=6)
            self._panels.append((ax_t, ax_f, peak_title))
        self._lines: list[tuple] = []  # each filter's taps line, response line and peak mark, from the first draw

    def draw(self, kernel: np.ndarray) -> np.ndarray:
        """An RGB image (uint8 [H, W, 3]) of this kernel ([taps, 1, filters], the shape the figure was built for)."""
        taps = np.asarray(kernel)[:, 0, :]  # [taps, filters]
        if taps.shape != (self.taps, self.filters):
            raise ValueError(f"a kernel of {taps.shape[0]} taps x {taps.shape[1]} filters for a figure of "
                             f"{self.taps} x {self.filters}")
        responses = 20 * np.log10(np.abs(np.fft.rfft(np.nan_to_num(taps, nan=0.0, posinf=0.0, neginf=0.0), 1024,
                                                     axis=0)) + 1e-9)  # [freqs, filters]
        top = float(np.nanmax(responses)) if np.isfinite(responses).any() else 0.0  # a diverged run still plots
        if not np.isfinite(top) and self._lines:
            # The dB limits and ticks an earlier kernel set would stay: autoscale on a new figure, as a first draw.
            return FilterFigure(self.taps, self.filters, self.sample_rate).draw(kernel)
        first = not self._lines
        for i, (ax_t, ax_f, peak_title) in enumerate(self._panels):
            response = responses[:, i]
            peak = int(response.argmax())
            if first:  # plotted with the data, so matplotlib's autoscaling sets the limits
                self._lines.append((ax_t.plot(taps[:, i], linewidth=0.8)[0],
                                    ax_f.plot(self.freqs, response, linewidth=0.8, color="tab:orange")[0],
                                    ax_f.plot(self.freqs[peak], response[peak], "v", color="tab:red",
                                              markersize=4)[0]))
            else:
                taps_line, response_line, peak_mark = self._lines[i]
                taps_line.set_ydata(taps[:, i])
                ax_t.relim()  # the new taps' range, as a first draw's autoscaling gives
                ax_t.autoscale_view()
                response_line.set_ydata(response)
                peak_mark.set_data([self.freqs[peak]], [response[peak]])
            peak_title.set_text(f"peak {self.freqs[peak]:.0f} Hz")
            if np.isfinite(top):
                ax_f.set_ylim(top - 40, top + 3)  # a common 40 dB range: tuned filters stand out
                ax_f.set_yticks([math.ceil(top) - 40, math.ceil(top) - 20, math.ceil(top)])  # three: each costs to draw
        self.fig.canvas.draw()
        return np.asarray(self.fig.canvas.buffer_rgba())[..., :3].copy()


def filter_figure(kernel: np.ndarray, sample_rate: int) -> np.ndarray:
    """An RGB image (uint8 [H, W, 3]) of the conv filters (`FilterFigure`, drawn once)."""
    taps, _, filters = np.asarray(kernel).shape
    return FilterFigure(taps, filters, sample_rate).draw(kernel)


class FilterImages(keras.callbacks.Callback):
    """Writes an image of the learned conv filters and their frequency responses to TensorBoard.

    The kernel is read at the epoch; the figure is drawn and written in the background
    (`figures.BackgroundDrawing`), and training's end waits for it.
    """

    def __init__(self, log_dir: str, sample_rate: int, every: int = 50, write: bool = True, thin_after: int = 0,
                 layer: str = "conv"):
        super().__init__()
        self.layer = layer  # the first conv: `conv` of audionet, `conv1_conv` of SoundNet
        self.log_dir = log_dir
        self.sample_rate = sample_rate
        self.every = every
        self.thin_after = thin_after
        self.write = write
        self._writer = None
        self._drawing = figures.BackgroundDrawing("filter-images")
        self._figure: FilterFigure | None = None  # built at the first image, redrawn for the next

    def _log(self, step: int) -> None:
        import tensorflow as tf

        if not self.write:
            return
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        self._drawing.submit(self._draw, np.array(self.model.get_layer(self.layer).kernel.numpy()), step, self._writer)

    def _draw(self, kernel: np.ndarray, step: int, writer) -> None:
        import tensorflow as tf

        with figures.PYPLOT:  # one figure drawn at a time (the timelines draw on another thread)
            if self._figure is None:  # the layer's kernel keeps its shape for the whole run
                taps, _, filters = kernel.shape
                self._figure = FilterFigure(taps, filters, self.sample_rate)
            image = self._figure.draw(kernel)
        with writer.as_default():
            tf.summary.image("conv_filters", image[None], step=step)
        writer.flush()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        self._drawing.check()
        if figures.figure_due(epoch + 1, self.every, self.thin_after):
            self._log(epoch + 1)

    def _close(self) -> None:
        self._figure = None  # after the last drawing: its canvas is a few megabytes
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def on_train_end(self, logs=None) -> None:
        epochs = self.params.get("epochs", 0) if self.params else 0
        if epochs and not figures.figure_due(epochs, self.every, self.thin_after):
            self._log(epochs)
        try:
            self._drawing.close()
        finally:
            self._close()

    def finish_after_error(self) -> None:
        """Training ends on an exception: let the image being drawn be written."""
        self._drawing.finish_quietly()
        self._close()


class TensorBoardLogs(keras.callbacks.Callback):
    """TensorBoard's epoch scalars and weight histograms, with the tags `keras.callbacks.TensorBoard` writes,
    at a fraction of its cost per epoch.

    `train/` gets `epoch_<name>` for each training log (and `learning_rate`) and
    `<weight path>/histogram` every `histogram_every` epochs (0-based epochs divisible by it, as
    Keras counts, thinned after `thin_after` as `figures.figure_due` says; written in the background
    from the weights read at the epoch); `validation/` gets `epoch_<name>` for each `val_<name>` log and
    `evaluation_<name>_vs_iterations` at the optimizer's step. The scalars of consecutive
    epochs are collected and written by one `tf.function` call per writer every `flush_seconds`
    and when training ends, instead of one eager op per value and epoch. Tags are an input of
    that function, so it is traced (and run empty) once, when training begins (for `validation/` too when
    `validation` is true, else at its first use), not in the middle of the epochs.
    """

    def __init__(self, log_dir: str, histogram_every: int = 0, write: bool = True, flush_seconds: float = 5.0,
                 validation: bool = False, thin_after: int = 0):
        super().__init__()
        self.log_dir = log_dir
        self.histogram_every = histogram_every
        self.thin_after = thin_after
        self.write = write
        self.flush_seconds = flush_seconds
        self.validation = validation
        self._writers: dict[str, Any] = {}
        self._functions: dict[str, Any] = {}
        self._rows: list[tuple[int, int, dict[str, float], dict[str, float]]] = []
        self._last_flush = time.monotonic()
        self._histograms = figures.BackgroundDrawing("histograms")

    def _writer(self, name: str):
        import tensorflow as tf

        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(storage.join(self.log_dir, name))
        return self._writers[name]

    def _scalars_function(self, writer_name: str):
        import tensorflow as tf

        from tensorboard.plugins.scalar import metadata

        if writer_name not in self._functions:
            # What `tf.summary.scalar` writes, with the tag as given: inside the loop below it
            # would be prefixed with the loop's name scope.
            scalar = metadata.create_summary_metadata(display_name=None, description=None).SerializeToString()
            writer = self._writer(writer_name)

            @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.float32),
                                          tf.TensorSpec([None], tf.int64)])
            def write(tags, values, steps):
                with writer.as_default():
                    for i in tf.range(tf.shape(tags)[0]):
                        tf.summary.write(tags[i], values[i], step=steps[i], metadata=scalar)

            # Traced and run once now with no rows (it writes nothing): the first call of a function
            # also builds its graph in the runtime, 0.1-0.2 s here, which would fall on an epoch.
            write(tf.constant([], tf.string), tf.constant([], tf.float32), tf.constant([], tf.int64))
            self._functions[writer_name] = write
        return self._functions[writer_name]

    def on_train_begin(self, logs=None) -> None:
        if self.write:
            self._scalars_function("train")
            if self.validation:
                self._scalars_function("validation")

    def _flush(self) -> None:
        import tensorflow as tf

        rows, self._rows = self._rows, []
        self._last_flush = time.monotonic()
        events: dict[str, tuple[list[str], list[float], list[int]]] = {}

        def put(writer_name: str, tag: str, value: float, step: int) -> None:
            tags, values, steps = events.setdefault(writer_name, ([], [], []))
            tags.append(tag)
            values.append(value)
            steps.append(step)

        # In each file, the order of one eager write per value: an epoch's training values, then its held-out ones.
        for epoch, iterations, train, val in rows:
            for name, value in train.items():
                put("train", f"epoch_{name}", value, epoch)
            for name, value in val.items():
                put("validation", f"epoch_{name}", value, epoch)
                put("validation", f"evaluation_{name}_vs_iterations", value, iterations)
        for writer_name, (tags, values, steps) in events.items():
            self._scalars_function(writer_name)(tf.constant(tags, tf.string), tf.constant(values, tf.float32),
                                                tf.constant(steps, tf.int64))

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if not self.write:
            return
        logs = dict(logs or {})
        if "learning_rate" not in logs:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        train = {k: float(v) for k, v in logs.items() if not k.startswith("val_")}
        val = {k[4:]: float(v) for k, v in logs.items() if k.startswith("val_")}
        iterations = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) if val else 0
        self._rows.append((epoch, iterations, train, val))
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self._flush()
        self._histograms.check()
        if self.histogram_every and (epoch == 0 or figures.figure_due(epoch, self.histogram_every, self.thin_after)):
            # The weights are read now; the histograms (one eager op each) are written in the background.
            weights = [(f"{weight.path.replace(':', '_')}/histogram", np.array(weight.numpy()))
                       for layer in self.model.layers for weight in layer.weights]
            self._histograms.submit(self._write_histograms, weights, epoch, self._writer("train"))

    @staticmethod
    def _write_histograms(weights: list[tuple[str, np.ndarray]], step: int, writer) -> None:
        import tensorflow as tf

        with writer.as_default(step=step):
            for name, value in weights:
                tf.summary.histogram(name, value)

    def finish_after_error(self) -> None:
        """Training ends on an exception: write what is collected."""
        try:
            self.on_train_end()
        except Exception as exc:  # noqa: BLE001 - the error being raised already says what went wrong
            log.warning("TensorBoard logs not written: %s", str(exc).splitlines()[0][:300] if str(exc) else exc)

    def on_train_end(self, logs=None) -> None:
        try:
            self._histograms.close()
            if self._rows:
                self._flush()
        finally:
            for writer in self._writers.values():
                writer.close()
            self._writers.clear()
            self._functions.clear()
