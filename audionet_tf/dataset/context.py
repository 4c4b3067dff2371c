"""Long windows from a dataset of short ones: the audio a SoundNet student hears around each teacher frame.

A dataset stores one window of W_d samples per frame, centred on the middle of the frame's period
(`split.window_starts`). When W_d is at least the frame hop H, the windows of a clip's consecutive
frames cover its audio without a gap (with the default W_d = H = 640 they tile it exactly), so the
clip's audio is rebuilt from them, and each frame's long window of W samples is cut from it,
centred on the same point: frame k's centre c_k = round((k + 0.5) P sr), window [c_k - W // 2,
c_k - W // 2 + W). Samples outside the frames read are zeros (past the clip's edges, as when the
dataset was written; and past the split's own frames: a training frame's window never holds
samples of a held-out frame, since the audio is rebuilt from one split's frames at a time).

The rebuilt audio of a split is held in memory once (4 bytes a sample, plus W of zeros per clip);
the windows are views into it, copied only when taken.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from audionet_tf.core.errors import DatasetError
from audionet_tf.dataset import records


class ContextWindows:
    """Windows `[N, W]` of a rebuilt audio buffer: `buffer[starts[i]: starts[i] + W]` is window i."""

    def __init__(self, buffer: np.ndarray, starts: np.ndarray, window: int):
        self.buffer = np.asarray(buffer, np.float32)
        self.starts = np.asarray(starts, np.int64)
        self.window = int(window)

    @property
    def shape(self) -> tuple[int, int]:
        """(N, W), as an array of the windows would have."""
        return (len(self.starts), self.window)

    @property
    def nbytes(self) -> int:
        """Bytes the buffer takes (the windows themselves are not stored)."""
        return self.buffer.nbytes

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: Any) -> np.ndarray:
        view = np.lib.stride_tricks.sliding_window_view(self.buffer, self.window)
        return np.array(view[self.starts[index]], np.float32)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self[np.arange(len(self))] if dtype is None else self[np.arange(len(self))].astype(dtype)

    def subset(self, keep: np.ndarray) -> "ContextWindows":
        """The windows at `keep` (a mask or indices), sharing the buffer."""
        return ContextWindows(self.buffer, self.starts[keep], self.window)


def frame_centres(times: np.ndarray, spec: records.DatasetSpec) -> np.ndarray:
    """Sample index (from the clip's start) of the middle of each frame's period."""
    period = spec.frame_period_ms / 1000.0
    frames = np.round(np.asarray(times, np.float64) / period).astype(np.int64)
    return np.round((frames + 0.5) * period * spec.sample_rate).astype(np.int64)


def check_rebuildable(spec: records.DatasetSpec, where: str) -> None:
    """Refuse a dataset whose windows leave gaps between frames (W_d < hop): its clips' audio cannot be rebuilt."""
    hop = int(round(spec.sample_rate * spec.frame_period_ms / 1000.0))
    if spec.window_samples < hop:
        raise DatasetError(f"dataset {where} stores windows of {spec.window_samples} samples every {hop}: the "
                           f"samples between them are not in the dataset, so a longer window cannot be rebuilt; "
                           f"prepare it again with audio.window_ms >= audio.frame_period_ms "
                           f"(--window-ms {spec.frame_period_ms:g})")


def context_windows(arrays: dict[str, np.ndarray], spec: records.DatasetSpec, window: int,
                    where: str = "dataset") -> ContextWindows:
    """The long window of each example of `arrays` (one split's, sorted by clip then time: `reader.load_arrays`)."""
    check_rebuildable(spec, where)
    audio, clip_ids, times = arrays["audio"], arrays["clip_id"], arrays["time"]
    width = spec.window_samples
    centres = frame_centres(times, spec)
    parts, starts, base = [], np.zeros(len(times), np.int64), 0
    for clip in dict.fromkeys(clip_ids.tolist()):  # in order of first appearance
        rows = np.flatnonzero(clip_ids == clip)
        mine = centres[rows]
        # The clip's buffer spans every long window of its frames: [lo, hi) in samples from the clip's start.
        lo = int(mine.min()) - window // 2
        hi = int(mine.max()) - window // 2 + window
        clip_buffer = np.zeros(hi - lo, np.float32)
        for row, centre in zip(rows, mine):
            first = int(centre) - width // 2 - lo
            a, b = max(first, 0), min(first + width, len(clip_buffer))
            # Stored samples before the clip's start are zeros already; nothing real is overwritten.
            if int(centre) - width // 2 < 0:
                a = max(a, -lo)
            if a < b:
                clip_buffer[a:b] = audio[row, a - first:b - first]
        starts[rows] = base + (mine - window // 2 - lo)
        parts.append(clip_buffer)
        base += len(clip_buffer)
    buffer = np.concatenate(parts) if parts else np.zeros(window, np.float32)
    return ContextWindows(buffer, starts, window)
