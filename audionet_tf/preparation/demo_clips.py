"""The offline demo's clips: short videos made with ffmpeg whose scene changes, picture and sound together.

Each clip is a sequence of scenes of varying length (0.32 to 1.2 s, whole frames). A scene
shows one of the demo teacher's six colours and plays that colour's sound:

| colour  | sound                                  | told apart from                        |
|---------|----------------------------------------|----------------------------------------|
| red     | harmonic tone, 400 Hz fundamental      | magenta: a close pitch                 |
| magenta | harmonic tone, 440 Hz fundamental      | red                                    |
| blue    | harmonic tone, 1500 Hz fundamental     | cyan: a noise band at the same centre  |
| cyan    | noise band, 1300-1700 Hz               | blue                                   |
| yellow  | pure tone, 2500 Hz                     |                                        |
| green   | noise band, 3600-4400 Hz               |                                        |

Every scene's loudness varies (±9 dB), and each clip has white background noise at one of
three levels (SNR about 4, -2 and -6 dB): broad random filters let too much of it through,
so the filters that separate the scenes best are the ones tuned to their sounds. The demo
teacher (`teacher.DEMO_TEACHER`) labels frames by colour, so a student that learns from the
audio alone which colour is on screen, frame by frame, is doing what AudioNet does with
ImageNet.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
import wave

import numpy as np

from audionet_tf.preparation.manifest import Clip, make_clip
from audionet_tf.preparation.media import MediaError, ffmpeg_exe
from audionet_tf.preparation.teacher import DEMO_COLOURS

SAMPLE_RATE = 16000
FPS = 25
# (kind of sound, frequency in Hz) for each demo teacher class.
DEMO_SOUNDS = {"red": ("harmonic", 400.0), "green": ("band", 4000.0), "blue": ("harmonic", 1500.0),
               "yellow": ("tone", 2500.0), "magenta": ("harmonic", 440.0), "cyan": ("band", 1500.0)}
NOISE_LEVELS = (0.06, 0.12, 0.2)  # white background noise, RMS (scenes are about 0.1)
LOUDNESS_DB = 9.0  # each scene louder or softer by up to this much
CLIPS = 12
CLIP_SECONDS = 6.0
SCENE_FRAMES = (8, 30)  # shortest and longest scene, in frames of 40 ms
VERSION = 2  # bumped when the clips change, so a cache of older clips is not reused


def demo_clip_id(index: int) -> str:
    """The id prepare gives demo clip `index`: for `holdout` lists."""
    return f"demo-{index:02d}"


def scenes(index: int, seconds: float = CLIP_SECONDS) -> list[tuple[str, int]]:
    """Clip `index`'s scenes: (colour, frames), covering the clip, the colour changing at every cut."""
    rng = np.random.default_rng(1000 + index)
    kinds = list(DEMO_COLOURS)
    total, out, previous = int(round(seconds * FPS)), [], None
    while sum(n for _, n in out) < total:
        kind = kinds[int(rng.integers(len(kinds)))]
        if kind == previous:
            continue
        frames = int(rng.integers(SCENE_FRAMES[0], SCENE_FRAMES[1] + 1))
        out.append((kind, min(frames, total - sum(n for _, n in out))))
        previous = kind
    return out


def sound(kind: str, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` samples of one colour's sound, RMS about 0.1 before its loudness change."""
    shape, frequency = DEMO_SOUNDS[kind]
    t = np.arange(count) / SAMPLE_RATE
    phase = rng.uniform(0, 2 * np.pi)
    if shape == "tone":
        signal = np.sin(2 * np.pi * frequency * t + phase)
    elif shape == "harmonic":
        signal = sum(np.sin(2 * np.pi * h * frequency * t + h * phase) / h for h in (1, 2, 3, 4))
    else:  # a band of noise, ±200 Hz around the centre (4000 Hz: ±400)
        width = 400.0 if frequency > 3000 else 200.0
        spectrum = np.fft.rfft(rng.standard_normal(count))
        freqs = np.fft.rfftfreq(count, 1.0 / SAMPLE_RATE)
        spectrum[np.abs(freqs - frequency) > width] = 0.0
        signal = np.fft.irfft(spectrum, count)
    return 0.1 * signal / (signal.std() + 1e-12)


def clip_media(index: int, seconds: float = CLIP_SECONDS) -> tuple[np.ndarray, np.ndarray]:
    """Clip `index`'s frames (uint8 [N, 48, 64, 3]) and audio (float32, 16 kHz), scene by scene."""
    rng = np.random.default_rng(index)
    hop = SAMPLE_RATE // FPS
    frames, parts = [], []
    for kind, count in scenes(index, seconds):
        shade = rng.uniform(0.8, 1.0)
        colour = np.round(255 * shade * np.array(DEMO_COLOURS[kind])).astype(np.uint8)
        frames.append(np.broadcast_to(colour, (count, 48, 64, 3)))
        gain = 10 ** (rng.uniform(-LOUDNESS_DB, LOUDNESS_DB) / 20)
        parts.append(gain * sound(kind, count * hop, rng))
    audio = np.concatenate(parts)
    audio = audio + NOISE_LEVELS[index % len(NOISE_LEVELS)] * rng.standard_normal(len(audio))
    return np.concatenate(frames), np.clip(audio, -1, 1).astype(np.float32)


def make_demo_clips(folder: str, clips: int = CLIPS, seconds: float = CLIP_SECONDS) -> list[Clip]:
    """Write the demo's clips into `folder` (skipping those already there) and return them as Clips."""
    folder = os.path.join(folder, f"v{VERSION}")
    os.makedirs(folder, exist_ok=True)
    out = []
    for index in range(clips):
        name = demo_clip_id(index)
        path = os.path.join(folder, f"{name}.mp4")
        if not os.path.isfile(path):
            _write_clip(path, *clip_media(index, seconds))
        clip = make_clip(path, 0, seconds, "scenes", f"demo clip {name}")
        out.append(Clip(id=name, url=clip.url, start=0.0, duration=seconds, label="scenes", source="local",
                        video_id=name))
    return out


def _write_clip(path: str, frames: np.ndarray, audio: np.ndarray) -> None:
    tmp = f"{path}.{os.getpid()}.tmp.mp4"
    with tempfile.TemporaryDirectory() as scratch:
        wav = os.path.join(scratch, "audio.wav")
        with wave.open(wav, "wb") as handle:
            handle.setnchannels(1)
            handle.setsampwidth(2)
            handle.setframerate(SAMPLE_RATE)
            handle.writeframes((audio * 32767).astype("<i2").tobytes())
        command = [ffmpeg_exe(), "-y", "-loglevel", "error",
                   "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{frames.shape[2]}x{frames.shape[1]}",
                   "-r", str(FPS), "-i", "pipe:", "-i", wav,
                   "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k",
                   "-movflags", "+faststart", "-shortest", tmp]
        result = subprocess.run(command, input=np.ascontiguousarray(frames).tobytes(), capture_output=True)
    if result.returncode:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise MediaError(f"{path}: ffmpeg could not make the demo clip "
                         f"({result.stderr.decode('utf-8', 'replace').strip()[-300:]})")
    os.replace(tmp, path)
