"""Clip lists: inline `[[prepare.clips]]` tables, the project's CSV, AudioSet and VGGSound lists.

Every entry becomes a `Clip` (what to download or read, and which section). An entry is an
http(s) URL, an 11-character YouTube id, or an existing local file. A whole list is checked
before anything is downloaded; a bad row is refused with the file and row number.

| layout | recognised by | columns |
|---|---|---|
| project | header `url,start,duration,label` | url, start (s or mm:ss), duration (s), label |
| AudioSet | `# YTID, start_seconds, end_seconds, positive_labels` header lines | YouTube id, start, end, labels |
| VGGSound | no header, four columns | YouTube id, start (s), label, split; 10 s clips |
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

from audionet_tf.core.errors import AudioNetError

YOUTUBE_ID = re.compile(r"^[A-Za-z0-9_-]{11}$")
SAFE = re.compile(r"[^A-Za-z0-9_-]+")
PROJECT_COLUMNS = ("url", "start", "duration", "label")
VGGSOUND_SECONDS = 10.0


@dataclass(frozen=True)
class Clip:
    """One section of one video to download (or read) and label."""

    id: str  # unique and file-name safe: <video id>_<start ms>_<duration ms>
    url: str  # the http(s) URL to download, or an absolute local path
    start: float
    duration: float
    label: str = ""
    source: str = "youtube"  # youtube | url | local
    video_id: str = ""  # the download cache key
    row: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """For the dataset description."""
        return asdict(self)


def parse_time(value: Any, where: str) -> float:
    """Seconds from `30`, `30.5`, `00:30`, `2:30` or `1:02:03`."""
    if isinstance(value, bool):
        raise AudioNetError(f"{where}: bad time {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip()
        if not re.fullmatch(r"\d+(\.\d+)?(:\d{1,2}(\.\d+)?){0,2}", text):
            raise AudioNetError(f"{where}: bad time {value!r} (use seconds, mm:ss or hh:mm:ss)")
        parts = [float(p) for p in text.split(":")]
        if any(p >= 60 for p in parts[1:]):
            raise AudioNetError(f"{where}: bad time {value!r} (minutes and seconds must be under 60)")
        seconds = 0.0
        for part in parts:
            seconds = seconds * 60 + part
    if seconds < 0:
        raise AudioNetError(f"{where}: time {value!r} is negative")
    return seconds


def make_clip(url: Any, start: Any, duration: Any, label: Any, where: str, base_dir: str = ".",
              row: int | None = None) -> Clip:
    """Check one entry and turn it into a Clip."""
    if url is None or not str(url).strip():
        raise AudioNetError(f"{where}: missing url")
    url = str(url).strip()
    if start is None or str(start).strip() == "":
        raise AudioNetError(f"{where}: missing start")
    if duration is None or str(duration).strip() == "":
        raise AudioNetError(f"{where}: missing duration")
    start_s = parse_time(start, where)
    try:
        duration_s = float(duration)
    except (TypeError, ValueError):
        raise AudioNetError(f"{where}: bad duration {duration!r} (seconds)") from None
    if not duration_s > 0:
        raise AudioNetError(f"{where}: duration must be positive, got {duration!r}")
    if re.match(r"^https?://", url, re.I):
        source = "url"
        name = os.path.splitext(os.path.basename(url.split("?")[0].rstrip("/")))[0] or "video"
        video_id = SAFE.sub("-", f"{name}")[:40] + "-" + _short_hash(url)
    elif YOUTUBE_ID.match(url) and not os.path.exists(os.path.join(base_dir, url)):
        source, video_id = "youtube", url
        url = f"https://www.youtube.com/watch?v={url}"
    else:
        path = url if os.path.isabs(url) else os.path.join(base_dir, url)
        if not os.path.isfile(path):
            raise AudioNetError(f"{where}: {url!r} is not an http(s) URL, a YouTube id or an existing file")
        source, url = "local", os.path.abspath(path)
        video_id = SAFE.sub("-", os.path.splitext(os.path.basename(path))[0])[:40] + "-" + _short_hash(url)
    clip_id = f"{video_id}_{int(round(start_s * 1000))}_{int(round(duration_s * 1000))}"
    return Clip(id=clip_id, url=url, start=start_s, duration=duration_s, label=str(label or "").strip(),
                source=source, video_id=video_id, row=row)


def _short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def _unique(clips: list[Clip], where: str) -> list[Clip]:
    seen: dict[str, Clip] = {}
    for clip in clips:
        if clip.id in seen:
            raise AudioNetError(f"{where}: row {clip.row} repeats the clip of row {seen[clip.id].row} ({clip.id})")
        seen[clip.id] = clip
    return clips


def clips_from_entries(entries: Sequence[Mapping[str, Any]], where: str, base_dir: str = ".") -> list[Clip]:
    """Clips from a pipeline file's `[[prepare.clips]]` tables (url, start, duration, label)."""
    clips = []
    for number, entry in enumerate(entries, start=1):
        here = f"{where} clip {number}"
        if not isinstance(entry, Mapping):
            raise AudioNetError(f"{here}: must be a table with url, start, duration, label")
        unknown = sorted(set(entry) - set(PROJECT_COLUMNS))
        if unknown:
            raise AudioNetError(f"{here}: unknown column(s) {', '.join(unknown)} (known: {', '.join(PROJECT_COLUMNS)})")
        clips.append(make_clip(entry.get("url"), entry.get("start"), entry.get("duration"), entry.get("label"),
                               here, base_dir, row=number))
    return _unique(clips, where)


def read_manifest(path: str) -> list[Clip]:
    """Clips from a CSV list: the project's layout, AudioSet's or VGGSound's (detected)."""
    if not os.path.isfile(path):
        raise AudioNetError(f"clip list {path} does not exist")
    base = os.path.dirname(os.path.abspath(path))
    with open(path, newline="", encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    body = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    if not body:
        raise AudioNetError(f"{path}: the clip list is empty")
    comments = [line for _, line in body if line.lstrip().startswith("#")]
    rows = [(n, next(csv.reader([line], skipinitialspace=True))) for n, line in body
            if not line.lstrip().startswith("#")]
    clips: list[Clip] = []
    if any("YTID" in line for line in comments):
        for n, row in rows:
            where = f"{path} row {n}"
            if len(row) < 3:
                raise AudioNetError(f"{where}: expected YTID, start_seconds, end_seconds, positive_labels")
            start, end = parse_time(row[1], where), parse_time(row[2], where)
            clips.append(make_clip(row[0], start, end - start, row[3] if len(row) > 3 else "", where, base, n))
    elif rows and [c.strip().lower() for c in rows[0][1]] == list(PROJECT_COLUMNS):
        for n, row in rows[1:]:
            where = f"{path} row {n}"
            if len(row) != len(PROJECT_COLUMNS):
                raise AudioNetError(f"{where}: expected {len(PROJECT_COLUMNS)} columns "
                                    f"({','.join(PROJECT_COLUMNS)}), got {len(row)}")
            clips.append(make_clip(*row, where=where, base_dir=base, row=n))
    elif rows and rows[0][1] and rows[0][1][0].strip().lower() in ("url", "ytid", "youtube_id"):
        raise AudioNetError(f"{path} row {rows[0][0]}: unknown header {','.join(rows[0][1])!r} "
                            f"(the project's lists use {','.join(PROJECT_COLUMNS)})")
    else:
        for n, row in rows:
            where = f"{path} row {n}"
            if len(row) != 4:
                raise AudioNetError(f"{where}: expected youtube_id,start_seconds,label,split (VGGSound) or a "
                                    f"header {','.join(PROJECT_COLUMNS)}")
            clips.append(make_clip(row[0], row[1], VGGSOUND_SECONDS, row[2], where, base, n))
    if not clips:
        raise AudioNetError(f"{path}: the clip list has no clips")
    return _unique(clips, path)
