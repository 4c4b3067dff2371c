"""Decoding with ffmpeg (the binary the imageio-ffmpeg wheel ships, driven by ffmpeg-python).

Sections are cut exactly at decode time (ffmpeg's output-side seek decodes from the file's
start and drops what comes before): a downloaded section's own edges are not trusted,
since downloads cut at keyframes.
"""
from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from audionet_tf.core.config import AudioConfig
from audionet_tf.core.errors import AudioNetError
from audionet_tf.dataset.split import window_starts


class MediaError(AudioNetError):
    """A file ffmpeg cannot read, or that lacks the stream asked for."""


@functools.lru_cache(maxsize=None)
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary: $AUDIONET_FFMPEG, else the one imageio-ffmpeg ships."""
    override = os.environ.get("AUDIONET_FFMPEG")
    if override:
        return override
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _stderr_tail(exc: Exception) -> str:
    stderr = getattr(exc, "stderr", b"") or b""
    lines = [line for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else str(exc)


def read_audio(path: str, sample_rate: int = 16000, start: float = 0.0, duration: float | None = None) -> np.ndarray:
    """Decode a file's audio as float32 mono in [-1, 1] at `sample_rate`, from `start` for `duration` s."""
    import ffmpeg

    if not os.path.isfile(path):
        raise MediaError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise MediaError(f"{path}: the file is empty")
    # -ss after -i decodes from the start and drops samples: exact to the sample, not the keyframe.
    output_args = {"format": "f32le", "acodec": "pcm_f32le", "ac": 1, "ar": sample_rate, "map": "0:a:0"}
    if start:
        output_args["ss"] = f"{start:.6f}"
    if duration is not None:
        output_args["t"] = f"{duration:.6f}"
    stream = ffmpeg.input(path).output("pipe:", **output_args)
    try:
        out, _ = stream.run(cmd=ffmpeg_exe(), capture_stdout=True, capture_stderr=True, quiet=True)
    except ffmpeg.Error as exc:
        tail = _stderr_tail(exc)
        if b"matches no streams" in (exc.stderr or b""):
            raise MediaError(f"{path}: no audio stream") from None
        raise MediaError(f"{path}: ffmpeg cannot decode it ({tail})") from None
    return np.frombuffer(out, dtype="<f4").astype(np.float32)


FRAME_FITS = ("crop", "squash", "letterbox")


def fit_filters(stream, size: tuple[int, int], fit: str = "crop"):
    """Bring frames to `size` (H, W): `crop` scales the shorter side to fit and cuts the centre (the
    ImageNet evaluation transform), `squash` scales both sides, `letterbox` fits the whole frame on black."""
    height, width = size
    if fit == "squash":
        return stream.filter("scale", width, height)
    if fit == "crop":
        stream = stream.filter("scale", width, height, force_original_aspect_ratio="increase")
        return stream.filter("crop", width, height)  # centred by default
    if fit == "letterbox":
        stream = stream.filter("scale", width, height, force_original_aspect_ratio="decrease")
        return stream.filter("pad", width, height, "(ow-iw)/2", "(oh-ih)/2", color="black")
    raise MediaError(f"frame fit must be one of {', '.join(FRAME_FITS)}, got {fit!r}")


def read_frames(path: str, start: float, duration: float, fps: float = 25.0,
                size: tuple[int, int] | None = None, fit: str = "crop") -> np.ndarray:
    """RGB frames uint8 `[N, H, W, 3]`, N = round(duration * fps): frame k is the source frame nearest start + k/fps.

    With a `size`, frames are brought to it as `fit` says (see `fit_filters`)."""
    import ffmpeg

    if not os.path.isfile(path):
        raise MediaError(f"{path}: no such file")
    count = int(round(duration * fps))
    stream = ffmpeg.input(path, ss=f"{start:.6f}", t=f"{duration + 1.0 / fps:.6f}").video
    # Timestamps start at 0 after the seek; the fps filter then repeats or drops source frames
    # so output frame k is the source frame nearest k/fps, whatever the source frame rate.
    stream = stream.filter("fps", fps=fps, start_time=0, round="near")
    if size is not None:
        stream = fit_filters(stream, size, fit)
    try:
        out, err = stream.output("pipe:", format="rawvideo", pix_fmt="rgb24", vframes=count).run(
            cmd=ffmpeg_exe(), capture_stdout=True, capture_stderr=True, quiet=True)
    except ffmpeg.Error as exc:
        if b"matches no streams" in (exc.stderr or b"") or b"does not contain any stream" in (exc.stderr or b""):
            raise MediaError(f"{path}: no video stream") from None
        raise MediaError(f"{path}: ffmpeg cannot decode it ({_stderr_tail(exc)})") from None
    if size is None:
        match = re.search(rb"Stream #\S+.*Video: rawvideo.*?, (\d+)x(\d+)", err)
        if not match:
            raise MediaError(f"{path}: cannot tell the video's frame size")
        size = (int(match.group(2)), int(match.group(1)))
    frame_bytes = size[0] * size[1] * 3
    got = len(out) // frame_bytes
    if got == 0:
        raise MediaError(f"{path}: no video frames in [{start:.2f} s, {start + duration:.2f} s)")
    return np.frombuffer(out[: got * frame_bytes], np.uint8).reshape(got, size[0], size[1], 3)


@dataclass
class DecodedClip:
    """A clip's exact section: audio, frames every period, and each frame's time from the clip's start."""

    audio: np.ndarray  # float32 [round(duration * sample_rate)]
    frames: np.ndarray  # uint8 [N, H, W, 3]
    times: np.ndarray  # float64 [N], k * period


def decode_clip(path: str, start: float, duration: float, audio: AudioConfig,
                frame_size: tuple[int, int] | None, fit: str = "crop") -> DecodedClip:
    """Decode exactly [start, start + duration): 16 kHz mono audio and one RGB frame per period (fitted as `fit`)."""
    samples = int(round(duration * audio.sample_rate))
    count = int(round(duration * audio.frames_per_second))
    wave = read_audio(path, audio.sample_rate, start, duration)
    # A clip may end up to one frame period early (container rounding); shorter is an error.
    slack_samples = audio.hop_samples
    if len(wave) < samples - slack_samples:
        raise MediaError(f"{path}: audio is {len(wave) / audio.sample_rate:.2f} s from {start:.2f} s, "
                         f"shorter than the {duration:.2f} s asked")
    wave = np.pad(wave[:samples], (0, max(0, samples - len(wave))))
    frames = read_frames(path, start, duration, audio.frames_per_second, frame_size, fit)
    if len(frames) < count - 1:
        raise MediaError(f"{path}: video has {len(frames)} frames from {start:.2f} s, "
                         f"fewer than the {count} of {duration:.2f} s")
    if len(frames) < count:
        frames = np.concatenate([frames, np.repeat(frames[-1:], count - len(frames), axis=0)])
    times = np.arange(count) * (audio.frame_period_ms / 1000.0)
    return DecodedClip(audio=wave.astype(np.float32), frames=frames[:count], times=times)


def frame_windows(wave: np.ndarray, num_frames: int, config: AudioConfig) -> np.ndarray:
    """The audio window of each frame, float32 `[N, window_samples]`.

    Frame k is on screen during [k P, (k + 1) P) (P: frame period). Its window of W samples is
    centred on the middle of that interval: it starts at round((k + 1/2) P sr) - W // 2. With
    the default W = P (640 samples) it is exactly [k P, (k + 1) P). Samples outside the clip
    are zeros.
    """
    from audionet_tf.dataset.split import window_starts

    width = config.window_samples
    starts = window_starts(num_frames, config)
    pad = width + config.hop_samples
    padded = np.pad(np.asarray(wave, np.float32), (pad, pad))
    return np.stack([padded[s + pad: s + pad + width] for s in starts]) if num_frames else \
        np.zeros((0, width), np.float32)



@dataclass
class Chunk:
    """Consecutive frames of a clip and their audio windows: frames `first` … `first + len(frames) - 1`."""

    first: int
    frames: np.ndarray  # uint8 [n, H, W, 3]
    windows: np.ndarray  # float32 [n, window_samples]


class _Pipe:
    """An ffmpeg process whose output is read as it comes (stderr goes to a file: a full pipe would block it)."""

    def __init__(self, stream, what: str, path: str, niceness: int = 0):
        import subprocess
        import tempfile

        self.what, self.path = what, path
        self.stderr = tempfile.TemporaryFile()
        args = stream.compile(cmd=ffmpeg_exe())
        args = [args[0], "-nostdin", "-filter_complex_threads", "1", *args[1:]]  # global options go first
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.stderr)
        if niceness:
            # Decoding runs ahead of the teacher: below its priority it fills the teacher's idle moments instead
            # of pausing one of its threads (every op of the teacher waits for its slowest thread).
            try:
                os.setpriority(os.PRIO_PROCESS, self.process.pid,
                               min(19, os.getpriority(os.PRIO_PROCESS, 0) + niceness))
            except (AttributeError, OSError):  # no setpriority (not a POSIX system), or the process has ended
                pass

    def read(self, size: int) -> bytes:
        """Up to `size` bytes; fewer only at the end of the output."""
        parts, got = [], 0
        while got < size:
            block = self.process.stdout.read(size - got)
            if not block:
                break
            parts.append(block)
            got += len(block)
        return b"".join(parts)

    def finish(self) -> None:
        """Wait for ffmpeg; a failure is a `MediaError` naming the file and ffmpeg's last line."""
        self.process.stdout.close()
        code = self.process.wait()
        self.stderr.seek(0)
        err = self.stderr.read()
        self.stderr.close()
        if code != 0:
            if b"matches no streams" in err or b"does not contain any stream" in err:
                raise MediaError(f"{self.path}: no {self.what} stream")
            lines = [line for line in err.decode("utf-8", "replace").splitlines() if line.strip()]
            raise MediaError(f"{self.path}: ffmpeg cannot decode it ({lines[-1].strip() if lines else code})")

    def kill(self) -> None:
        """Stop ffmpeg (the reader gave up on this clip)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for handle in (self.process.stdout, self.stderr):
            if not handle.closed:
                handle.close()


def stream_clip(path: str, start: float, duration: float, audio: AudioConfig, frame_size: tuple[int, int],
                fit: str = "crop", chunk_frames: int = 256, niceness: int = 0) -> Iterator[Chunk]:
    """`decode_clip`'s frames and `frame_windows`' windows, `chunk_frames` frames at a time, holding only one
    chunk's frames and audio: memory does not grow with the clip's length. The two ffmpeg processes run
    `niceness` steps below this process's scheduling priority."""
    import ffmpeg

    if not os.path.isfile(path):
        raise MediaError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise MediaError(f"{path}: the file is empty")
    samples = int(round(duration * audio.sample_rate))
    count = int(round(duration * audio.frames_per_second))
    width = audio.window_samples
    if count == 0:
        raise MediaError(f"{path}: {duration:.3f} s is shorter than one frame period")
    starts = window_starts(count, audio)
    audio_args = {"format": "f32le", "acodec": "pcm_f32le", "ac": 1, "ar": audio.sample_rate, "map": "0:a:0"}
    if start:
        audio_args["ss"] = f"{start:.6f}"
    audio_args["t"] = f"{duration:.6f}"
    # One thread each for decoding and filters: the teacher wants the cores, and ffmpeg's own threads would only
    # contend with it for them (decoding runs ahead of the teacher anyway).
    sound = _Pipe(ffmpeg.input(path, threads=1).output("pipe:", **audio_args), "audio", path, niceness)
    fps = audio.frames_per_second
    video = ffmpeg.input(path, ss=f"{start:.6f}", t=f"{duration + 1.0 / fps:.6f}", threads=1).video
    video = fit_filters(video.filter("fps", fps=fps, start_time=0, round="near"), frame_size, fit)
    video = video.output("pipe:", format="rawvideo", pix_fmt="rgb24", vframes=count)
    picture = _Pipe(video, "video", path, niceness)
    frame_bytes = frame_size[0] * frame_size[1] * 3
    wave = np.zeros(0, np.float32)  # samples [base, base + len(wave)) of the clip
    base, audio_done, video_done, last = 0, False, False, None
    try:
        for first in range(0, count, chunk_frames):
            stop = min(count, first + chunk_frames)
            # Audio up to the last window's end (the clip's samples only: past them windows hold zeros).
            need = min(samples, int(starts[stop - 1]) + width)
            if not audio_done and base + len(wave) < need:
                raw = sound.read((need - base - len(wave)) * 4)
                wave = np.concatenate([wave, np.frombuffer(raw[: len(raw) // 4 * 4], "<f4")])
                if base + len(wave) < need:
                    audio_done = True
                    sound.finish()
                    # A clip may end up to one frame period early (container rounding); shorter is an error.
                    if base + len(wave) < samples - audio.hop_samples:
                        raise MediaError(f"{path}: audio is {(base + len(wave)) / audio.sample_rate:.2f} s from "
                                         f"{start:.2f} s, shorter than the {duration:.2f} s asked")
            raw = picture.read((stop - first) * frame_bytes)
            got = len(raw) // frame_bytes
            frames = np.frombuffer(raw[: got * frame_bytes], np.uint8).reshape(got, *frame_size, 3)
            if got < stop - first:
                video_done = True
                picture.finish()
                if first + got == 0:
                    raise MediaError(f"{path}: no video frames in [{start:.2f} s, {start + duration:.2f} s)")
                if first + got < count - 1:
                    raise MediaError(f"{path}: video has {first + got} frames from {start:.2f} s, "
                                     f"fewer than the {count} of {duration:.2f} s")
                tail = frames[-1:] if got else last
                frames = np.concatenate([frames, np.repeat(tail, stop - first - got, axis=0)])
            last = frames[-1:]
            windows = np.zeros((stop - first, width), np.float32)
            for row, s in enumerate(starts[first:stop]):
                a, b = max(int(s), 0, base), min(int(s) + width, samples, base + len(wave))
                if b > a:
                    windows[row, a - int(s): b - int(s)] = wave[a - base: b - base]
            # Keep only what later windows can still need.
            keep_from = min(int(starts[stop]) if stop < count else samples, base + len(wave))
            if keep_from > base:
                wave, base = wave[keep_from - base:].copy(), keep_from
            yield Chunk(first, frames, windows)
        # Read both outputs to their end (a process cut off mid-write would fail) and check ffmpeg's exit.
        for pipe, done in ((sound, audio_done), (picture, video_done)):
            if not done:
                while pipe.read(1 << 16):
                    pass
                pipe.finish()
    finally:
        sound.kill()
        picture.kill()


def read_picture(path: str, size: tuple[int, int], fit: str = "crop") -> np.ndarray:
    """One picture file (PNG, JPEG, …) as RGB uint8 `[H, W, 3]`, brought to `size` as video frames are
    (`fit_filters`), so that a teacher sees a photograph as it would see it in a clip."""
    import ffmpeg

    if not os.path.isfile(path):
        raise MediaError(f"{path}: no such file")
    stream = fit_filters(ffmpeg.input(path).video, size, fit)
    try:
        out, _ = stream.output("pipe:", format="rawvideo", pix_fmt="rgb24", vframes=1).run(
            cmd=ffmpeg_exe(), capture_stdout=True, capture_stderr=True, quiet=True)
    except ffmpeg.Error as exc:
        raise MediaError(f"{path}: ffmpeg cannot decode it ({_stderr_tail(exc)})") from None
    if len(out) != size[0] * size[1] * 3:
        raise MediaError(f"{path}: ffmpeg gave {len(out)} bytes for one {size[1]}x{size[0]} picture")
    return np.frombuffer(out, np.uint8).reshape(size[0], size[1], 3)
