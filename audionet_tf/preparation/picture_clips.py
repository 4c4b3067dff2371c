"""Clips made of a picture and a recording: a slow pan and zoom over the picture, the recording as its sound.

A folder of pairs `NAME.svg` (or `.png`, `.jpg`, `.jpeg`) + `NAME.ogg` (or `.wav`, `.flac`, `.mp3`,
`.m4a`) becomes one video per pair (`prepare.pictures`, `--pictures DIR`): the picture on a white
ground (drawings are often transparent), zoomed from 1 to `ZOOM` while the view drifts across
it, so that no two frames are the same, at the dataset's frame rate, with the recording as its
audio. The video lasts the recording's whole frame periods (a 4.97 s recording makes a 4.96 s
video at 40 ms), so every frame has its window of sound. SVG drawings are rasterised by the
ffmpeg that imageio-ffmpeg ships (built with librsvg): nothing else to install. The sound is kept
lossless (FLAC in Matroska), to the sample: an AAC track would end within a frame of the asked length.

The clip id is the pair's name (`banjo`), so held-out lists and per-clip tables read as the folder
does. The videos are cached under `cache_dir/pictures`, keyed by both files' contents.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import subprocess

from audionet_tf.core.config import AudioConfig
from audionet_tf.core.errors import AudioNetError
from audionet_tf.preparation.manifest import Clip
from audionet_tf.preparation.media import MediaError, ffmpeg_exe, read_audio

log = logging.getLogger("audionet_tf.prepare")

PICTURE_SUFFIXES = (".svg", ".png", ".jpg", ".jpeg")
SOUND_SUFFIXES = (".ogg", ".wav", ".flac", ".mp3", ".m4a")
CANVAS = 640  # the picture is fitted into a white square of this many pixels
SIZE = 320  # the video's frames (the teacher's frame_fit takes them to its own size)
ZOOM = 1.2  # the zoom at the clip's end; the view drifts from the top left to the bottom right of the picture
VERSION = 1  # bumped when the videos change, so a cache of older ones is not reused
SAFE = re.compile(r"[^A-Za-z0-9_-]+")


def find_pairs(folder: str) -> list[tuple[str, str, str]]:
    """(name, picture, recording) for each pair in `folder`, by name; a folder without pairs is refused."""
    if not os.path.isdir(folder):
        raise AudioNetError(f"prepare.pictures: {folder} is not a folder (it should hold NAME.svg + NAME.ogg pairs)")
    stems: dict[str, dict[str, str]] = {}
    for entry in sorted(os.listdir(folder)):
        stem, suffix = os.path.splitext(entry)
        kind = "picture" if suffix.lower() in PICTURE_SUFFIXES else "sound" if suffix.lower() in SOUND_SUFFIXES else None
        if kind:
            if kind in stems.setdefault(stem, {}):
                raise AudioNetError(f"{folder}: two {kind}s named {stem} ({stems[stem][kind]} and {entry})")
            stems[stem][kind] = entry
    pairs = [(stem, os.path.join(folder, kinds["picture"]), os.path.join(folder, kinds["sound"]))
             for stem, kinds in sorted(stems.items()) if len(kinds) == 2]
    alone = sorted(f"{kinds.get('picture') or kinds.get('sound')}" for kinds in stems.values() if len(kinds) == 1)
    if alone:
        log.warning("%s: %d file(s) without a partner, left out: %s", folder, len(alone), ", ".join(alone[:5]))
    if not pairs:
        raise AudioNetError(f"{folder}: no picture + recording pairs (NAME{'|'.join(PICTURE_SUFFIXES)} beside "
                            f"NAME{'|'.join(SOUND_SUFFIXES)})")
    ids = [SAFE.sub("-", stem) for stem, _, _ in pairs]
    clashes = sorted({i for i in ids if ids.count(i) > 1})
    if clashes:
        raise AudioNetError(f"{folder}: pair names that give the same clip id: {', '.join(clashes)}")
    return pairs


def whole_periods(seconds: float, audio: AudioConfig) -> float:
    """The longest duration of whole frame periods within `seconds` (3 decimals, what a clip id records)."""
    period = audio.frame_period_ms / 1000.0
    return round(math.floor(seconds / period + 1e-6) * period, 3)


def make_picture_clips(folder: str, cache: str, audio: AudioConfig) -> list[Clip]:
    """A clip for every picture + recording pair in `folder`, its video made (or found) under `cache`."""
    out_dir = os.path.join(cache, f"v{VERSION}")
    os.makedirs(out_dir, exist_ok=True)
    clips = []
    for stem, picture, sound in find_pairs(folder):
        digest = hashlib.sha256()
        for path in (picture, sound):
            with open(path, "rb") as handle:
                digest.update(hashlib.sha256(handle.read()).digest())
        digest.update(f"{audio.frame_period_ms}".encode())
        name = SAFE.sub("-", stem)
        video = os.path.join(out_dir, f"{name}-{digest.hexdigest()[:12]}.mkv")
        seconds = len(read_audio(sound, audio.sample_rate)) / audio.sample_rate
        duration = whole_periods(seconds, audio)
        if duration <= 0:
            raise AudioNetError(f"{sound}: {seconds:.3f} s of sound, shorter than one frame period")
        if not os.path.isfile(video):
            write_video(video, picture, sound, duration, audio.frames_per_second)
        clips.append(Clip(id=name, url=os.path.abspath(video), start=0.0, duration=duration, label=stem,
                          source="local", video_id=name))
    log.info("%d picture + recording clips from %s", len(clips), folder)
    return clips


def write_video(path: str, picture: str, sound: str, duration: float, fps: float) -> None:
    """Write the pan-and-zoom video of `picture` with `sound` as its audio, `duration` seconds long."""
    frames = int(math.ceil(duration * fps)) + 1
    # A rasterised SVG is drawn at the canvas size (librsvg's decoder options) rather than scaled up.
    svg = ["-width", str(CANVAS), "-height", str(CANVAS), "-keep_ar", "1"] if picture.lower().endswith(".svg") else []
    graph = (f"color=white:s={CANVAS}x{CANVAS}:r={fps:g}:d={1.0 / fps:.6f}[ground];"
             f"[0:v]scale={CANVAS}:{CANVAS}:force_original_aspect_ratio=decrease[picture];"
             f"[ground][picture]overlay=(W-w)/2:(H-h)/2:format=auto,"
             f"zoompan=z='1+{ZOOM - 1:g}*on/{frames}':x='(iw-iw/zoom)*on/{frames}':y='(ih-ih/zoom)*on/{frames}'"
             f":d={frames}:s={SIZE}x{SIZE}:fps={fps:g},format=yuv420p[video]")
    tmp = f"{path}.{os.getpid()}.tmp.mkv"
    command = [ffmpeg_exe(), "-y", "-loglevel", "error", *svg, "-i", picture, "-i", sound,
               "-filter_complex", graph, "-map", "[video]", "-map", "1:a:0", "-t", f"{duration:.3f}",
               "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "flac", tmp]
    result = subprocess.run(command, capture_output=True)
    if result.returncode:
        if os.path.exists(tmp):
            os.unlink(tmp)
        hint = (" (an ffmpeg built without librsvg cannot read SVG: AUDIONET_FFMPEG names another, or convert the "
                "drawing to NAME.png)" if svg else "")
        raise MediaError(f"{picture} + {sound}: ffmpeg could not make the video "
                         f"({result.stderr.decode('utf-8', 'replace').strip()[-300:]}){hint}")
    os.replace(tmp, path)
