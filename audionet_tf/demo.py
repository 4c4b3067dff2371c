"""The offline demo's clips: short videos made with ffmpeg in which picture and sound go together.

Each kind of clip has one of the demo teacher's colours on screen and its own sound (a tone
at a kind-specific pitch, over a little noise); clips of one kind differ in shade, pitch
(±4 %) and loudness, so the student has to learn the sound, not memorise one file. The
demo teacher (`teacher.DEMO_TEACHER`) labels frames by colour, so a student that learns
from the audio alone which colour is on screen is doing what AudioNet does with ImageNet.
"""
from __future__ import annotations

import os
import subprocess

from audionet_tf.manifest import Clip, make_clip
from audionet_tf.media import MediaError, ffmpeg_exe
from audionet_tf.teacher import DEMO_COLOURS

# Pitch of each kind's tone (Hz), one per demo teacher class.
DEMO_TONES = {"red": 220.0, "green": 440.0, "blue": 880.0, "yellow": 1760.0, "magenta": 330.0, "cyan": 3000.0}
CLIPS_PER_KIND = 3
CLIP_SECONDS = 4.0


def demo_clip_id(kind: str, index: int) -> str:
    """The id prepare gives the demo clip (kind, index): for `holdout` lists."""
    return f"demo-{kind}-{index}"


def make_demo_clips(folder: str, clips_per_kind: int = CLIPS_PER_KIND, seconds: float = CLIP_SECONDS) -> list[Clip]:
    """Write the demo's clips into `folder` (skipping those already there) and return them as Clips."""
    os.makedirs(folder, exist_ok=True)
    clips = []
    for kind, colour in DEMO_COLOURS.items():
        for index in range(clips_per_kind):
            name = demo_clip_id(kind, index)
            path = os.path.join(folder, f"{name}.mp4")
            if not os.path.isfile(path):
                _write_clip(path, colour, DEMO_TONES[kind] * (1.0 + 0.04 * (index - 1)), 2.0 + 0.8 * index,
                            0.85 + 0.075 * index, seconds)
            clip = make_clip(path, 0, seconds, kind, f"demo clip {name}")
            clips.append(Clip(id=name, url=clip.url, start=0.0, duration=seconds, label=kind, source="local",
                              video_id=name))
    return clips


def _write_clip(path: str, colour: tuple, frequency: float, level: float, shade: float, seconds: float) -> None:
    rgb = "".join(f"{int(round(255 * c * shade)):02x}" for c in colour)
    tmp = f"{path}.{os.getpid()}.tmp.mp4"
    command = [
        ffmpeg_exe(), "-y", "-loglevel", "error",
        "-f", "lavfi", "-i", f"color=c=0x{rgb}:s=64x48:r=25:d={seconds}",
        "-f", "lavfi", "-i", f"sine=frequency={frequency:.1f}:sample_rate=16000:duration={seconds}",
        "-f", "lavfi", "-i", f"anoisesrc=color=pink:amplitude=0.05:sample_rate=16000:duration={seconds}:seed=7",
        "-filter_complex", f"[1:a]volume={level:.3f}[tone];[tone][2:a]amix=inputs=2:normalize=0[a]",
        "-map", "0:v", "-map", "[a]", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "96k",
        "-movflags", "+faststart", "-shortest", tmp,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise MediaError(f"{path}: ffmpeg could not make the demo clip ({result.stderr.strip()[-300:]})")
    os.replace(tmp, path)
