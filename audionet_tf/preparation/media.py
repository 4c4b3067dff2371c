"""Decoding with ffmpeg (the binary the imageio-ffmpeg wheel ships, driven by ffmpeg-python).

Sections are cut exactly at decode time (ffmpeg's output-side seek decodes from the file's
start and drops what comes before): a downloaded section's own edges are not trusted,
since downloads cut at keyframes.

Real files rarely line up to the frame: the audio may end before the video or before the
section asked, the video before the audio. A section is labelled as far as both go: frame k
is kept when the file has its picture and its whole audio window (`usable_frames`; a window
may miss at most `prepare.end_slack_ms` of audio at its end, filled with zeros, never more),
and `Extent` says how far that was and why. Whether a shortened clip is kept is the caller's
decision (`prepare.min_clip_seconds`, in `labelling`).
"""
from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from audionet_tf.core.config import AudioConfig, PrepareConfig
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
    """RGB frames uint8 `[N, H, W, 3]`, N ≤ round(duration * fps): frame k is the source frame on screen at the
    middle of its period, start + (k + 1/2) / fps (the last that began before it), whatever the source's frame
    rate, constant or not; fewer when the video ends inside the section (the last frame is the last whose
    middle the video reaches).

    With a `size`, frames are brought to it as `fit` says (see `fit_filters`)."""
    import ffmpeg

    if not os.path.isfile(path):
        raise MediaError(f"{path}: no such file")
    count = int(round(duration * fps))
    stream = ffmpeg.input(path, ss=f"{start:.6f}", t=f"{duration + 1.0 / fps:.6f}").video
    # Timestamps start at 0 after the seek; the fps filter (round="near") then repeats or drops source frames
    # so that output frame k is the one on screen at (k + 1/2) / fps, whatever the source frame rate.
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


@dataclass(frozen=True)
class Extent:
    """How much of an asked section a file holds, and how many of its frames can be labelled.

    Frame k is labelled when the file has both its picture and its whole audio window: frames
    0 … `frames` - 1, a prefix of the section (see `usable_frames`)."""

    asked_frames: int  # round(duration / period)
    frames: int  # frames labelled: both their picture and their whole window exist
    period_s: float
    duration_s: float  # the section asked
    audio_end_s: float | None = None  # where the audio ends in the section; None: it lasts the whole section
    video_end_s: float | None = None  # where the pictures end (frames × period); None: they last the section

    @property
    def seconds(self) -> float:
        """The usable duration: the labelled frames' periods."""
        return round(self.frames * self.period_s, 6)

    @property
    def shortened(self) -> bool:
        """Whether fewer frames are labelled than the section asked."""
        return self.frames < self.asked_frames

    def why(self) -> str:
        """Why the section is shorter than asked, for records and the console ("" when it is not)."""
        if not self.shortened:
            return ""
        ends = []
        if self.audio_end_s is not None:
            ends.append(f"audio ends {self.audio_end_s:.2f} s into the {self.duration_s:.2f} s asked")
        if self.video_end_s is not None:
            ends.append(f"video has pictures for {int(round(self.video_end_s / self.period_s))} of the "
                        f"{self.asked_frames} frames asked")
        return "; ".join(ends) or f"the file holds {self.frames} of the {self.asked_frames} frames asked"

    def to_doc(self) -> dict:
        """What a clip's record says of it: frames labelled, usable seconds, and why it is shorter."""
        doc = {"frames": self.frames, "usable_s": self.seconds}
        if self.shortened:
            doc["shortened"] = self.why()
        return doc


def usable_frames(audio_samples: int, video_frames: int, asked_frames: int, section_samples: int,
                  audio: AudioConfig, slack_samples: int) -> int:
    """How many of a section's frames have their picture and their whole audio window.

    Frame k needs picture k (`video_frames` of them) and the samples of its window that lie in
    the section ([0, `section_samples`): a wide window's part before the section's start or
    after its asked end is zeros, as for every clip), of which at most `slack_samples` at the
    end may be missing from the decoded audio (container rounding; they are zeros). Window ends
    only grow with k, so the usable frames are a prefix."""
    count = min(video_frames, asked_frames)
    if count <= 0:
        return 0
    ends = np.minimum(window_starts(count, audio) + audio.window_samples, section_samples)
    return int(np.searchsorted(ends, audio_samples + slack_samples, side="right"))


def slack_samples(audio: AudioConfig, slack_ms: float) -> int:
    """`slack_ms` (`prepare.end_slack_ms`) in samples at the audio's rate."""
    return int(round(slack_ms * audio.sample_rate / 1000.0))


def _extent(audio_samples: int, video_frames: int, duration: float, audio: AudioConfig, slack: int,
            audio_ended: bool, video_ended: bool) -> Extent:
    period = audio.frame_period_ms / 1000.0
    asked_frames = int(round(duration * audio.frames_per_second))
    section = int(round(duration * audio.sample_rate))
    frames = usable_frames(audio_samples, video_frames, asked_frames, section, audio, slack)
    full = usable_frames(audio_samples, asked_frames, asked_frames, section, audio, slack)  # as far as the audio goes
    audio_short = audio_ended and full < asked_frames
    video_short = video_ended and video_frames < asked_frames
    return Extent(asked_frames, frames, period, duration,
                  audio_end_s=round(audio_samples / audio.sample_rate, 6) if audio_short else None,
                  video_end_s=round(video_frames * period, 6) if video_short else None)


@dataclass
class DecodedClip:
    """A clip's section: audio, its usable frames (one every period) and each frame's time from the clip's start."""

    audio: np.ndarray  # float32, the section's decoded samples (at most round(duration * sample_rate))
    frames: np.ndarray  # uint8 [N, H, W, 3], N = extent.frames
    times: np.ndarray  # float64 [N], k * period
    extent: Extent | None = None


def decode_clip(path: str, start: float, duration: float, audio: AudioConfig,
                frame_size: tuple[int, int] | None, fit: str = "crop",
                slack_ms: float = PrepareConfig.end_slack_ms) -> DecodedClip:
    """Decode [start, start + duration): 16 kHz mono audio and the RGB frames (fitted as `fit`) whose picture
    and whole window the file holds (`usable_frames`; a section the file ends inside is labelled as far as it
    goes: `DecodedClip.extent` says how far)."""
    samples = int(round(duration * audio.sample_rate))
    count = int(round(duration * audio.frames_per_second))
    wave = read_audio(path, audio.sample_rate, start, duration)[:samples]
    frames = read_frames(path, start, duration, audio.frames_per_second, frame_size, fit)[:count]
    extent = _extent(len(wave), len(frames), duration, audio, slack_samples(audio, slack_ms),
                     audio_ended=len(wave) < samples, video_ended=len(frames) < count)
    times = np.arange(extent.frames) * (audio.frame_period_ms / 1000.0)
    return DecodedClip(audio=wave.astype(np.float32), frames=frames[:extent.frames], times=times, extent=extent)


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


class ClipStream:
    """`decode_clip`'s frames and `frame_windows`' windows, `chunk_frames` frames at a time, holding only one
    chunk's frames and audio: memory does not grow with the clip's length. The two ffmpeg processes run
    `niceness` steps below this process's scheduling priority.

    An iterator of `Chunk`s that stops at the last frame with both its picture and its whole
    window (`usable_frames`). `extent` says how far that was and why: it is set with the last
    chunk when the end is found while reading it (a clip of one chunk always has it with its
    chunk), else when the iteration ends. `close()` stops ffmpeg."""

    def __init__(self, path: str, start: float, duration: float, audio: AudioConfig, frame_size: tuple[int, int],
                 fit: str = "crop", chunk_frames: int = 256, niceness: int = 0,
                 slack_ms: float = PrepareConfig.end_slack_ms):
        if not os.path.isfile(path):
            raise MediaError(f"{path}: no such file")
        if os.path.getsize(path) == 0:
            raise MediaError(f"{path}: the file is empty")
        if int(round(duration * audio.frames_per_second)) == 0:
            raise MediaError(f"{path}: {duration:.3f} s is shorter than one frame period")
        self.extent: Extent | None = None
        self._chunks = self._read(path, start, duration, audio, frame_size, fit, chunk_frames, niceness,
                                  slack_samples(audio, slack_ms))

    def __iter__(self) -> "ClipStream":
        return self

    def __next__(self) -> Chunk:
        return next(self._chunks)

    def close(self) -> None:
        """Stop decoding (both ffmpeg processes end)."""
        self._chunks.close()

    def _read(self, path: str, start: float, duration: float, audio: AudioConfig, frame_size: tuple[int, int],
              fit: str, chunk_frames: int, niceness: int, slack: int) -> Iterator[Chunk]:
        import ffmpeg

        samples = int(round(duration * audio.sample_rate))
        count = int(round(duration * audio.frames_per_second))
        width = audio.window_samples
        starts = window_starts(count, audio)
        audio_args = {"format": "f32le", "acodec": "pcm_f32le", "ac": 1, "ar": audio.sample_rate, "map": "0:a:0"}
        if start:
            audio_args["ss"] = f"{start:.6f}"
        audio_args["t"] = f"{duration:.6f}"
        # One thread each for decoding and filters: the teacher wants the cores, and ffmpeg's own threads would
        # only contend with it for them (decoding runs ahead of the teacher anyway).
        sound = _Pipe(ffmpeg.input(path, threads=1).output("pipe:", **audio_args), "audio", path, niceness)
        fps = audio.frames_per_second
        video = ffmpeg.input(path, ss=f"{start:.6f}", t=f"{duration + 1.0 / fps:.6f}", threads=1).video
        video = fit_filters(video.filter("fps", fps=fps, start_time=0, round="near"), frame_size, fit)
        video = video.output("pipe:", format="rawvideo", pix_fmt="rgb24", vframes=count)
        picture = _Pipe(video, "video", path, niceness)
        frame_bytes = frame_size[0] * frame_size[1] * 3
        wave = np.zeros(0, np.float32)  # samples [base, base + len(wave)) of the clip
        base, audio_done, video_done = 0, False, False
        audio_total, video_total = samples, count  # what each stream holds, once it is found to end early
        # Frames that can still be labelled: all, until one of the streams is found to end early.
        usable = count
        try:
            for first in range(0, count, chunk_frames):
                stop = min(usable, first + chunk_frames)
                if stop <= first:
                    break
                # Audio up to the last window's end (the section's samples only: past them windows hold zeros).
                need = min(samples, int(starts[stop - 1]) + width)
                if not audio_done and base + len(wave) < need:
                    raw = sound.read((need - base - len(wave)) * 4)
                    wave = np.concatenate([wave, np.frombuffer(raw[: len(raw) // 4 * 4], "<f4")])
                    if base + len(wave) < need:
                        audio_done, audio_total = True, base + len(wave)
                        sound.finish()
                        usable = min(usable, usable_frames(audio_total, count, count, samples, audio, slack))
                        stop = min(stop, usable)
                raw = picture.read((stop - first) * frame_bytes) if stop > first else b""
                got = len(raw) // frame_bytes
                if got < stop - first:
                    video_done, video_total = True, first + got
                    picture.finish()
                    if video_total == 0:
                        raise MediaError(f"{path}: no video frames in [{start:.2f} s, {start + duration:.2f} s)")
                    usable = min(usable, video_total)
                    stop = min(stop, usable)
                if stop <= first:
                    break
                frames = np.frombuffer(raw[: (stop - first) * frame_bytes], np.uint8).reshape(stop - first,
                                                                                             *frame_size, 3)
                windows = np.zeros((stop - first, width), np.float32)
                for row, s in enumerate(starts[first:stop]):
                    a, b = max(int(s), 0, base), min(int(s) + width, samples, base + len(wave))
                    if b > a:
                        windows[row, a - int(s): b - int(s)] = wave[a - base: b - base]
                # Keep only what later windows can still need.
                keep_from = min(int(starts[stop]) if stop < count else samples, base + len(wave))
                if keep_from > base:
                    wave, base = wave[keep_from - base:].copy(), keep_from
                if stop >= usable:  # the last chunk: how far the clip goes is known now
                    self.extent = _extent(audio_total, video_total, duration, audio, slack, audio_done, video_done)
                yield Chunk(first, frames, windows)
            if self.extent is None:  # the stream ended right after a chunk, or before any frame had its window
                self.extent = _extent(audio_total, video_total, duration, audio, slack, audio_done, video_done)
            # A clip that went the whole way: read both outputs to their end (a process cut off mid-write would
            # fail) and check ffmpeg's exit. A shortened one stops here: what is left is not used.
            if usable == count:
                for pipe, done in ((sound, audio_done), (picture, video_done)):
                    if not done:
                        while pipe.read(1 << 16):
                            pass
                        pipe.finish()
        finally:
            sound.kill()
            picture.kill()


def stream_clip(path: str, start: float, duration: float, audio: AudioConfig, frame_size: tuple[int, int],
                fit: str = "crop", chunk_frames: int = 256, niceness: int = 0,
                slack_ms: float = PrepareConfig.end_slack_ms) -> ClipStream:
    """A `ClipStream` of the section [start, start + duration) (see there)."""
    return ClipStream(path, start, duration, audio, frame_size, fit, chunk_frames, niceness, slack_ms)


def measure_clip(path: str, start: float, duration: float, audio: AudioConfig,
                 slack_ms: float = PrepareConfig.end_slack_ms, niceness: int = 0) -> Extent:
    """How many frames `stream_clip` gives for this section, found by decoding it once (pictures at 2×2 pixels,
    so what this costs is the decoding): for a long clip whose held-out part depends on its length."""
    stream = ClipStream(path, start, duration, audio, (2, 2), "squash", 1024, niceness, slack_ms)
    try:
        for _ in stream:
            pass
    finally:
        stream.close()
    return stream.extent


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
