"""Audio for the student: a file decoded through an ffmpeg pipe in blocks, an array brought to the model's rate.

A recording is never held whole: `FileAudio` hands out samples as they are asked for, and
`window_chunks` cuts them into the same windows a whole-file framing gives, a bounded number
at a time, so memory stays flat in the recording's length.
"""
from __future__ import annotations

import os
import queue
import subprocess
import tempfile
import threading
from math import gcd
from typing import Iterator

import numpy as np

from audionet_tf.core.errors import AudioNetError
from audionet_tf.preparation.media import MediaError, ffmpeg_exe

BLOCK_BYTES = 1 << 20  # read from ffmpeg's pipe at a time (262,144 samples)
PREFETCH_BLOCKS = 8  # read ahead: at most 8 MB decoded and not yet used


class ArrayAudio:
    """Samples of an array already in memory, handed out like `FileAudio`'s."""

    def __init__(self, wave: np.ndarray):
        self.wave = wave
        self.samples = 0  # handed out so far

    def read(self, count: int) -> np.ndarray:
        """Up to `count` samples; fewer only at the end."""
        block = self.wave[self.samples:self.samples + count]
        self.samples += len(block)
        return block


class FileAudio:
    """A file's audio as float32 mono at `sample_rate`, decoded by ffmpeg and read from its pipe on demand.

    A thread keeps up to PREFETCH_BLOCKS blocks of the pipe read ahead, so ffmpeg decodes while the
    caller computes (a pipe holds 64 KB: without it, ffmpeg would wait for each read). Use as a context
    manager; errors (no such file, no audio stream, undecodable) are `MediaError`s naming the file,
    raised when reading reaches them (at the latest when the stream ends)."""

    def __init__(self, path: str, sample_rate: int):
        if not os.path.isfile(path):
            raise MediaError(f"{path}: no such file")
        if os.path.getsize(path) == 0:
            raise MediaError(f"{path}: the file is empty")
        self.path = path
        # The same decoding as media.read_audio (mono, resampled by ffmpeg), read from a pipe.
        command = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-nostats", "-i", path, "-map", "0:a:0",
                   "-f", "f32le", "-acodec", "pcm_f32le", "-ac", "1", "-ar", str(sample_rate), "pipe:"]
        # stderr goes to a file: a pipe nobody drains could fill and stall ffmpeg.
        self._stderr = tempfile.TemporaryFile()
        self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=self._stderr)
        self._blocks: queue.Queue[bytes] = queue.Queue(maxsize=PREFETCH_BLOCKS)
        self._pending = b""  # the part of a block not handed out yet
        self._ended = False
        self._thread = threading.Thread(target=self._pump, name="audio-reader", daemon=True)
        self._thread.start()
        self.samples = 0  # handed out so far

    def _pump(self) -> None:
        try:
            while True:
                block = self._process.stdout.read(BLOCK_BYTES)
                self._blocks.put(block)
                if not block:  # end of stream
                    return
        except (OSError, ValueError):  # the pipe closed under us by close()
            self._blocks.put(b"")

    def read(self, count: int) -> np.ndarray:
        """Up to `count` samples; fewer only at the end of the stream (then checked for ffmpeg errors)."""
        if self._ended or count <= 0:
            return np.zeros(0, np.float32)
        wanted, parts, got = 4 * count, [], 0
        while got < wanted:
            block = self._pending or self._blocks.get()
            self._pending = b""
            if not block:
                self._finish()
                break
            take = block[: wanted - got]
            self._pending = block[len(take):]
            parts.append(take)
            got += len(take)
        data = b"".join(parts)
        # A partial sample at the end (never from ffmpeg's f32le) is dropped.
        samples = np.frombuffer(data[: len(data) - len(data) % 4], "<f4").astype(np.float32)
        self.samples += len(samples)
        return samples

    def _finish(self) -> None:
        self._ended = True
        code = self._process.wait()
        if code != 0:
            self._stderr.seek(0)
            stderr = self._stderr.read()
            if b"matches no streams" in stderr:
                raise MediaError(f"{self.path}: no audio stream")
            lines = [line for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
            tail = lines[-1].strip() if lines else f"exit status {code}"
            raise MediaError(f"{self.path}: ffmpeg cannot decode it ({tail})")

    def close(self) -> None:
        """Stop ffmpeg if it is still running, end the reading thread and release the pipe."""
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        while self._thread.is_alive():  # it may wait to put a block into a full queue
            try:
                self._blocks.get(timeout=0.1)
            except queue.Empty:
                pass
        self._process.stdout.close()
        self._stderr.close()

    def __enter__(self) -> "FileAudio":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def window_chunks(source: "ArrayAudio | FileAudio", window: int, hop: int, chunk_windows: int,
                  where: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Windows `[n, window]` (window k covers [k hop, k hop + window)) and their start samples, at most
    `chunk_windows` at a time: exactly the windows of the whole waveform, with only one chunk's samples
    held. Audio shorter than one window is an error naming `where`."""
    need = (chunk_windows - 1) * hop + window  # samples from a chunk's first window start to its last end
    first = 0  # index of the next window
    buffer = source.read(need)
    while True:
        count = min(1 + (len(buffer) - window) // hop, chunk_windows) if len(buffer) >= window else 0
        if count:
            frames = np.lib.stride_tricks.sliding_window_view(buffer, window)[: (count - 1) * hop + 1: hop]
            yield np.array(frames, np.float32), np.arange(first, first + count) * hop
            first += count
        if len(buffer) < need:  # the source has ended
            break
        rest = buffer[count * hop:]
        skip = count * hop - len(buffer)  # a hop longer than the window steps over samples not yet read
        while skip > 0:
            skipped = len(source.read(min(skip, need)))
            if not skipped:
                break
            skip -= skipped
        more = source.read(need - len(rest))
        buffer = np.concatenate([rest, more]) if len(rest) else more
    if source.samples < window:
        raise AudioNetError(f"{where}: {source.samples} samples of audio, shorter than one window ({window})")


def as_mono(audio: np.ndarray, where: str = "audio") -> np.ndarray:
    """float32 mono from `[samples]` or `[samples, channels]` (channels averaged); integer samples are
    scaled to [-1, 1] by their type's range, as WAV readers return them."""
    audio = np.asarray(audio)
    if np.issubdtype(audio.dtype, np.integer):
        audio = audio.astype(np.float64) / float(-np.iinfo(audio.dtype).min)
    elif not np.issubdtype(audio.dtype, np.floating):
        raise AudioNetError(f"{where}: samples of type {audio.dtype}, expected floats or integers")
    if audio.ndim == 2:
        if audio.shape[1] > audio.shape[0]:
            raise AudioNetError(f"{where}: shape {audio.shape} has more channels than samples; give "
                                f"[samples] or [samples, channels] (transpose a [channels, samples] array)")
        audio = audio.mean(axis=1)
    elif audio.ndim != 1:
        raise AudioNetError(f"{where}: expected [samples] or [samples, channels], got shape {audio.shape}")
    return np.ascontiguousarray(audio, np.float32)


def resample(audio: np.ndarray, sample_rate: int, target: int) -> np.ndarray:
    """`audio` (float32 mono) at `target` Hz, by polyphase filtering (scipy); unchanged when the rates agree."""
    if not sample_rate or sample_rate <= 0 or int(sample_rate) != sample_rate:
        raise AudioNetError(f"sample rate must be a positive whole number of Hz, got {sample_rate!r}")
    sample_rate = int(sample_rate)
    if sample_rate == target:
        return audio
    from scipy.signal import resample_poly

    common = gcd(sample_rate, target)
    return resample_poly(audio, target // common, sample_rate // common).astype(np.float32)
