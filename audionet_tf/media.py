"""Decoding with ffmpeg (the binary the imageio-ffmpeg wheel ships, driven by ffmpeg-python)."""
from __future__ import annotations

import functools
import os

import numpy as np

from audionet_tf.errors import AudioNetError


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
