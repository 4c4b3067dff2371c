"""Which examples are held out: whole clips, or a part of every clip's time (with a guard).

Two ways to hold data out, which can be combined:

* **whole clips** (`prepare.holdout`): a fraction of the clips chosen by a hash of their
  ids, or a list of clip ids. Right when every class has several clips.
* **a part of every clip** (`prepare.holdout_part`, `prepare.holdout_at`): for example the
  last 20 % (`"0.2"`, `"end"`) or 2 seconds in the middle (`"2s"`, `"middle"`) of each clip.
  Right when each clip is its own class (the slides' ten videos): a held-out clip's sound
  would never be trained on, so no student could agree with the teacher on it.

A time split holds out whole frames. A frame's audio window may be wider than the frame
period (`--window-ms 80`), so the training frames whose window shares a sample with any
held-out window are dropped (the guard): no audio sample lies in both a training and a
held-out window.

Pure functions, no I/O: the caller decodes, labels and writes.
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from audionet_tf.core.config import AudioConfig
from audionet_tf.core.errors import AudioNetError

TRAIN, VALIDATION = "train", "validation"
PLACES = ("end", "start", "middle")


@dataclass(frozen=True)
class TimeSplit:
    """The held-out part of each clip: `amount` seconds or a fraction of the clip, at `at`."""

    amount: float
    seconds: bool  # True: `amount` is in seconds; False: a fraction of the clip
    at: str = "end"

    def span(self, duration: float) -> tuple[float, float]:
        """The held-out interval [start, end) in seconds from the clip's start, before frame alignment."""
        length = self.amount if self.seconds else self.amount * duration
        length = min(length, duration)
        if self.at == "start":
            return 0.0, length
        if self.at == "middle":
            begin = (duration - length) / 2.0
            return begin, begin + length
        return duration - length, duration


def parse_time_split(part: str | None, at: str = "end") -> TimeSplit | None:
    """`holdout_part` text ("", "0", "0.2" or "2s") and `holdout_at` → a TimeSplit, or None for no time split."""
    text = "" if part is None else str(part).strip().lower()
    if at not in PLACES:
        raise AudioNetError(f"holdout_at must be one of {', '.join(PLACES)}, got {at!r}")
    if text in ("", "0", "0.0", "none"):
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s)?", text)
    if not match:
        raise AudioNetError(f"holdout_part must be a fraction of each clip (0.2) or seconds (2s), got {part!r}")
    amount, seconds = float(match.group(1)), bool(match.group(2))
    if seconds and not amount > 0:
        raise AudioNetError(f"holdout_part must be more than 0 seconds, got {part!r}")
    if not seconds and not 0 < amount < 1:
        raise AudioNetError(f"holdout_part as a fraction must be between 0 and 1, got {part!r}")
    return TimeSplit(amount, seconds, at)


def window_starts(num_frames: int, audio: AudioConfig) -> np.ndarray:
    """First sample of each frame's window: frame k is on screen during [kP, (k+1)P); its window of W
    samples is centred on the middle of that interval (starts may be negative, ends past the clip)."""
    period = audio.frame_period_ms / 1000.0
    centres = np.round((np.arange(num_frames) + 0.5) * period * audio.sample_rate).astype(np.int64)
    return centres - audio.window_samples // 2


def frame_splits(num_frames: int, audio: AudioConfig, time_split: TimeSplit | None, whole_clip_held_out: bool,
                 clip_id: str = "clip") -> tuple[list[str | None], dict | None]:
    """Each frame's split ("train", "validation", or None: a guard frame, dropped) and the held-out record.

    The record (None without a time split) holds the held-out part's frame-aligned start and
    end in seconds, its frame count and the guard frames dropped; it goes into the clip's
    entry in dataset.json.
    """
    if whole_clip_held_out:
        return [VALIDATION] * num_frames, None
    if time_split is None or num_frames == 0:
        return [TRAIN] * num_frames, None
    period = audio.frame_period_ms / 1000.0
    duration = num_frames * period
    begin, end = time_split.span(duration)
    # Whole frames only: the first frame starting at or after `begin`, the last ending by `end`.
    first = max(0, math.ceil(begin / period - 1e-6))
    last = min(num_frames, math.floor(end / period + 1e-6))
    if last - first < 1:
        raise AudioNetError(f"clip {clip_id}: holding out {_describe(time_split)} leaves no whole frame "
                            f"of {audio.frame_period_ms:g} ms in its {duration:.2f} s to hold out")
    starts = window_starts(num_frames, audio)
    ends = starts + audio.window_samples
    held_lo, held_hi = int(starts[first:last].min()), int(ends[first:last].max())
    labels: list[str | None] = []
    guard = 0
    for k in range(num_frames):
        if first <= k < last:
            labels.append(VALIDATION)
        elif ends[k] <= held_lo or starts[k] >= held_hi:
            labels.append(TRAIN)
        else:
            labels.append(None)
            guard += 1
    if TRAIN not in labels:
        raise AudioNetError(f"clip {clip_id}: holding out {_describe(time_split)} of its {duration:.2f} s "
                            f"leaves no frame to train on")
    record = {"start_s": round(first * period, 6), "end_s": round(last * period, 6), "frames": last - first,
              "guard_frames": guard, "at": time_split.at}
    return labels, record


def _describe(time_split: TimeSplit) -> str:
    amount = f"{time_split.amount:g} s" if time_split.seconds else f"{time_split.amount:.0%}"
    return f"{amount} at the {time_split.at}"


def segment_splits(num_frames: int, audio: AudioConfig, segments: int, index: int) -> list[str | None]:
    """Frame splits for K-fold over time: segment `index` of `segments` equal parts held out, with the guard."""
    if not 0 <= index < segments:
        raise ValueError(f"segment {index} of {segments}")
    bounds = np.linspace(0, num_frames, segments + 1).round().astype(int)
    first, last = int(bounds[index]), int(bounds[index + 1])
    if last <= first:
        return [TRAIN] * num_frames
    starts = window_starts(num_frames, audio)
    ends = starts + audio.window_samples
    held_lo, held_hi = int(starts[first:last].min()), int(ends[first:last].max())
    return [VALIDATION if first <= k < last else TRAIN if ends[k] <= held_lo or starts[k] >= held_hi else None
            for k in range(num_frames)]


def holdout_ids(clips: Sequence, holdout: str) -> set[str]:
    """Clip ids held out whole: a fraction chosen by a hash of each id, or a comma-separated list.

    A list names clip ids (`<video id>_<start ms>_<duration ms>`, as prepare prints them) or
    plain video ids (a YouTube id, or a local file's hashed stem) that match exactly one clip.
    """
    text = str(holdout).strip()
    if text.lower() in ("", "none"):
        return set()
    try:
        fraction = float(text)
    except ValueError:
        return _named(clips, text)
    if not 0 <= fraction < 1:
        raise AudioNetError(f"--holdout fraction must be in [0, 1), got {holdout}")
    score = {c.id: int(hashlib.sha256(c.id.encode()).hexdigest()[:8], 16) / 2 ** 32 for c in clips}
    chosen = {i for i, s in score.items() if s < fraction}
    if fraction > 0 and len(clips) >= 2 and not chosen:
        chosen = {min(score, key=score.get)}
    if len(chosen) == len(clips) and clips:
        chosen.discard(max(chosen, key=score.get))
    return chosen


def _named(clips: Sequence, text: str) -> set[str]:
    ids = {c.id for c in clips}
    by_video: dict[str, list[str]] = {}
    for c in clips:
        by_video.setdefault(getattr(c, "video_id", "") or "", []).append(c.id)
    chosen, unknown, ambiguous = set(), [], []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part in ids:
            chosen.add(part)
        elif len(by_video.get(part, [])) == 1:
            chosen.add(by_video[part][0])
        elif len(by_video.get(part, [])) > 1:
            ambiguous.append(f"{part} ({', '.join(sorted(by_video[part]))})")
        else:
            unknown.append(part)
    valid = ", ".join(sorted(ids)[:20]) + (" ..." if len(ids) > 20 else "")
    if ambiguous:
        raise AudioNetError(f"--holdout: video id(s) with several clips, name the clip: {'; '.join(ambiguous)}")
    if unknown:
        raise AudioNetError(f"--holdout names clips that are not in the list: {', '.join(unknown[:5])}; clip ids "
                            f"are <video id>_<start ms>_<duration ms>; valid ids: {valid}")
    return chosen


def top_classes(logits: np.ndarray, labels: Sequence[str | None]) -> dict:
    """The teacher's most frequent top class on a clip's training and held-out frames, and every training top class."""
    top = np.asarray(logits).argmax(axis=1) if len(logits) else np.zeros(0, int)
    out: dict = {}
    for part in (TRAIN, VALIDATION):
        mine = top[np.array([label == part for label in labels], bool)] if len(top) else top
        out[part] = int(np.bincount(mine).argmax()) if len(mine) else None
        if part == TRAIN:
            out["train_classes"] = sorted(int(c) for c in set(mine.tolist()))
    return out


def unseen_class_warnings(clips: Sequence, class_names: Sequence[str]) -> list[str]:
    """A sentence for each held-out clip (`ClipRecord`s) whose most frequent teacher class is no training frame's
    top class."""
    trained = {c for clip in clips if clip.ok for c in (clip.teacher_top or {}).get("train_classes", [])}
    notes = []
    for clip in clips:
        top = (clip.teacher_top or {}).get(VALIDATION)
        if not clip.ok or top is None or top in trained:
            continue
        name = class_names[top] if 0 <= top < len(class_names) else f"class {top}"
        notes.append(f"held-out clip {clip.id}: the teacher's most frequent class on it ({name}) is the top class "
                     f"of no training frame, so no student can agree with it there; when each clip is its own "
                     f"class, hold out a part of every clip instead (holdout_part = \"0.2\", holdout = \"0\")")
    return notes
