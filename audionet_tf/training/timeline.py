"""TensorBoard shows the student learning: for one or two held-out clips, the teacher-vs-student
timeline image every N epochs (IMAGES tab, `timeline/<clip>`) and the clip's audio once (AUDIO tab)."""
from __future__ import annotations

from typing import Sequence

import keras
import numpy as np

from audionet_tf.core import storage
from audionet_tf.dataset import catalog, reader, records
from audionet_tf.training.figures import figure_due

TIMELINE_CLIPS = 2


def figure_image(fig) -> np.ndarray:
    """A matplotlib figure as an RGB image (uint8 [H, W, 3]); closes the figure."""
    import matplotlib.pyplot as plt

    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


class TimelineImages(keras.callbacks.Callback):
    """Every `every` epochs (thinned after `thin_after` of them: `figures.figure_due`), the teacher's top class
    against the student's over each chosen clip.

    The student's predictions are made at the epoch; the figures are drawn and written in the
    background (`figures.BackgroundDrawing`), and training's end waits for them.
    """

    def __init__(self, log_dir: str, arrays: dict[str, np.ndarray], clips: Sequence[records.ClipRecord],
                 class_names: Sequence[str], sample_rate: int, hop: int, every: int = 10, thin_after: int = 0):
        super().__init__()
        self.log_dir = log_dir
        self.arrays = arrays
        self.clips = list(clips)
        self.class_names = list(class_names)
        self.sample_rate = sample_rate
        self.hop = hop
        self.every = every
        self.thin_after = thin_after
        self._writer = None
        self._last = -1
        self._drawing = None
        self._predict_function = None

    def _writer_ready(self):
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        return self._writer

    def on_train_begin(self, logs=None) -> None:
        import tensorflow as tf

        from audionet_tf.training.figures import clip_audio

        with self._writer_ready().as_default():
            for clip in self.clips:
                mine = self.arrays["clip_id"] == clip.id
                wave = clip_audio(self.arrays["audio"][mine], self.arrays["time"][mine], self.hop, self.sample_rate)
                tf.summary.audio(f"clip/{clip.id}", wave[None, :, None], self.sample_rate, step=0)
        self._writer.flush()

    def _log(self, step: int) -> None:
        from audionet_tf.training.figures import BackgroundDrawing

        if step == self._last:
            return
        self._last = step
        predictions = []
        for clip in self.clips:
            heard = self.arrays.get("student_audio", self.arrays["audio"])
            windows = np.asarray(heard[self.arrays["clip_id"] == clip.id], np.float32)
            predictions.append(np.concatenate([self._predict(windows[i:i + 512, :, None]).numpy()
                                               for i in range(0, len(windows), 512)]))
        if self._drawing is None:
            self._drawing = BackgroundDrawing("timelines")
        self._drawing.submit(self._draw, step, predictions, self._writer_ready())

    def _predict(self, windows: np.ndarray):
        import tensorflow as tf

        if self._predict_function is None:
            # A plain call, not predict(): no collective step, so only the chief needs to run it.
            # Compiled: one call releases the GIL for the whole forward pass, while the figures
            # of the epoch before may still be drawn on another thread.
            self._predict_function = tf.function(
                lambda x: self.model(x, training=False),
                input_signature=[tf.TensorSpec([None, windows.shape[1], 1], tf.float32)])
        return self._predict_function(windows)

    def _draw(self, step: int, predictions: list[np.ndarray], writer) -> None:
        import tensorflow as tf

        from audionet_tf.training.figures import PYPLOT, clip_audio, timeline_figure

        with writer.as_default():
            for clip, student in zip(self.clips, predictions):
                mine = self.arrays["clip_id"] == clip.id
                windows, times = self.arrays["audio"][mine], self.arrays["time"][mine]
                with PYPLOT:
                    fig = timeline_figure(self.arrays["logits"][mine], student, times,
                                          clip_audio(windows, times, self.hop, self.sample_rate), self.class_names,
                                          self.sample_rate, f"{clip.id} at epoch {step}", clip.held_out_span)
                    image = figure_image(fig)
                tf.summary.image(f"timeline/{clip.id}", image[None], step=step)
        writer.flush()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if self._drawing is not None:
            self._drawing.check()
        if epoch == 0 or figure_due(epoch + 1, self.every, self.thin_after):
            self._log(epoch + 1)

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def on_train_end(self, logs=None) -> None:
        epochs = self.params.get("epochs", 0) if self.params else 0
        if epochs:
            self._log(epochs)
        try:
            if self._drawing is not None:
                self._drawing.close()
        finally:
            self._close()

    def finish_after_error(self) -> None:
        """Training ends on an exception: let the timelines being drawn be written."""
        if self._drawing is not None:
            self._drawing.finish_quietly()
        self._close()


def timeline_callbacks(data_dir: str, description: records.Description, log_dir: str, every: int,
                       hop: int, write: bool = True, thin_after: int = 0,
                       window_samples: int | None = None) -> list[keras.callbacks.Callback]:
    """The timeline callback for the first held-out clips of a dataset (none without held-out data);
    `window_samples`: the student's window when it is not the dataset's (SoundNet)."""
    held = [c for c in description.clips if c.held_out]
    if not write or not held or not description.examples("validation"):
        return []
    chosen = held[:TIMELINE_CLIPS]
    arrays = reader.load_arrays(data_dir, "all", clip_ids=[c.id for c in chosen])
    if window_samples is not None and window_samples != description.spec.window_samples:
        # The student's long windows, centred on the same frames; the clip's audio is still drawn from the dataset's.
        arrays["student_audio"] = reader.load_arrays(data_dir, "all", clip_ids=[c.id for c in chosen],
                                                     window_samples=window_samples, description=description)["audio"]
    return [TimelineImages(storage.join(log_dir, "timelines"), arrays, chosen,
                           catalog.read_class_names(data_dir, description), description.spec.sample_rate, hop, every,
                           thin_after)]
