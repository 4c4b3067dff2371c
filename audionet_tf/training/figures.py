"""Figures drawn during training (TensorBoard) and again in the report: a clip's timeline of top classes."""
from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

# pyplot's figure registry is global: one figure is drawn at a time, whichever thread draws it.
PYPLOT = threading.Lock()


def figure_due(epoch: int, every: int, thin_after: int = 0) -> bool:
    """Whether `epoch` (counted from 1) gets the periodic figures: every `every` epochs for the first
    `thin_after` of them, then every 2nd over as many epochs again, every 4th over the next doubling, and so on.

    A run of E epochs draws at most about thin_after x (1 + log2(E / (every x thin_after)) / 2) of each
    figure, instead of E / every: each image is hundreds of kilobytes in the run directory.
    """
    if epoch < 1 or epoch % every:
        return False
    index = epoch // every
    stride = 1
    while thin_after and index > thin_after * stride:
        stride *= 2
    return index % stride == 0


def pyplot():
    """matplotlib's pyplot with no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


class BackgroundDrawing:
    """Draws a callback's figures (or computes its summaries) and writes them on a thread of its own,
    while training goes on.

    Drawing the filter images and the timelines with matplotlib costs about as much as a dozen
    epochs of the seed experiment; what the figure shows (weights, predictions) is taken on the
    training thread first. One drawing per callback runs at a time: a new one first waits for the
    last, and a failed one is raised by the next `submit`, `check` or `wait`.
    """

    def __init__(self, name: str, failure: str = "a figure was not written"):
        self._name = name
        self._failure = failure
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future | None = None

    def submit(self, draw: Callable[..., Any], *args: Any) -> None:
        """Run `draw(*args)` in the background, after the drawing in progress."""
        self.wait()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)
        self._pending = self._pool.submit(draw, *args)

    def check(self) -> None:
        """Raise the failure of a drawing that has ended, without waiting for one still running."""
        if self._pending is not None and self._pending.done():
            self.wait()

    def wait(self) -> None:
        """Wait for the drawing in progress, if any; raise its failure."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Wait for the last drawing (raising its failure), then end the thread."""
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def finish_quietly(self) -> None:
        """Wait for the last drawing; log its failure instead of raising it (another error is on its way)."""
        try:
            self.close()
        except Exception as exc:  # noqa: BLE001 - the error being raised already says what went wrong
            log.warning("%s: %s", self._failure, str(exc).splitlines()[0][:300] if str(exc) else exc)


def clip_audio(windows: np.ndarray, times: np.ndarray, hop: int, sample_rate: int) -> np.ndarray:
    """A clip's audio rebuilt from its windows: each frame's own period from the middle of its window
    (zeros where a frame is missing, such as the guard frames of a time split)."""
    width = windows.shape[1]
    frames = np.round(np.asarray(times) * sample_rate / hop).astype(int)
    wave = np.zeros((int(frames.max()) + 1) * hop if len(frames) else 0, np.float32)
    offset = width // 2 - hop // 2
    for k, window in zip(frames, windows):
        part = window[max(0, offset): max(0, offset) + hop]
        wave[k * hop: k * hop + len(part)] = part
    return wave


def timeline_figure(teacher: np.ndarray, student: np.ndarray, times: np.ndarray, wave: np.ndarray,
                    class_names: Sequence[str], sample_rate: int, title: str,
                    held_out: tuple[float, float] | None = None):
    """The teacher's top class against the student's over a clip (held-out part shaded), over its spectrogram."""
    plt = pyplot()
    shown = sorted(set(teacher.argmax(1)) | set(student.argmax(1)))
    rank = {c: i for i, c in enumerate(shown)}
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 2.6 + 0.22 * len(shown)), sharex=True,
                                      gridspec_kw={"height_ratios": [1 + 0.15 * len(shown), 1.3]})
    period = float(np.median(np.diff(times))) if len(times) > 1 else 0.04
    end = float(times[-1]) + period if len(times) else 0.0
    if held_out is not None:
        for ax in (top, bottom):
            ax.axvspan(held_out[0], held_out[1], color="0.85" if ax is top else "white", alpha=0.5 if ax is top
                       else 0.15, zorder=0, label="held out" if ax is top else None)
    top.step(times, [rank[c] for c in teacher.argmax(1)], where="post", label="teacher (frames)", linewidth=2.2)
    top.step(times, [rank[c] for c in student.argmax(1)], where="post", label="student (audio)", linestyle="--",
             linewidth=1.4)
    top.set_yticks(range(len(shown)))
    top.set_yticklabels([class_names[c][:28] for c in shown], fontsize=7)
    top.set_ylim(-0.5, len(shown) - 0.5)
    top.set_title(title, fontsize=9)
    top.legend(fontsize=7, loc="upper right", ncol=3)
    if len(wave) >= 512:
        bottom.specgram(wave, NFFT=512, Fs=sample_rate, noverlap=384, xextent=(0.0, len(wave) / sample_rate),
                        cmap="magma")
    bottom.set_ylabel("Hz")
    bottom.set_xlabel("seconds")
    bottom.set_xlim(0.0, end)
    fig.tight_layout()
    return fig
