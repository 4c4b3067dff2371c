"""The labelling core: one clip → its examples (windows, teacher logits, times, split per example) and outcome.

Both runners call it: `prepare` (one process, downloads overlapping labelling) and
`beam_prepare` (clips spread over Beam workers). The teacher is loaded on first use, when
the first clip has been downloaded, so a list whose clips all fail to download ends with
the per-clip reasons and never waits for (or fails on) the teacher's weights.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from audionet_tf.core import config as cfg, storage
from audionet_tf.core.errors import AudioNetError
from audionet_tf.core.lock import DirectoryLock
from audionet_tf.dataset import records, split as split_lib
from audionet_tf.dataset.split import holdout_ids  # noqa: F401  (re-exported for both runners)
from audionet_tf.preparation.manifest import Clip, clips_from_entries, read_manifest

log = logging.getLogger(__name__)

LOCK_FILE = ".prepare.lock"


class TeacherError(AudioNetError):
    """The teacher cannot be loaded: fatal for the run, not a property of one clip."""


def clip_key(clip: Clip, config: cfg.PipelineConfig, held_out: bool = False) -> str:
    """What makes a clip's examples: its entry, whether it is held out, and the settings that shape them."""
    pc, ac = config.prepare, config.audio
    doc = {"clip": {k: v for k, v in clip.to_dict().items() if k != "row"}, "audio": dataclasses.asdict(ac),
           "held_out": held_out,
           "teacher": pc.teacher, "labels": pc.labels, "audio_format": pc.audio_format,
           "logits_format": pc.logits_format, "frame_fit": pc.frame_fit,
           "time_split": [pc.holdout_part, pc.holdout_at] if pc.holdout_part else None}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def assign_splits(clip: Clip, times: np.ndarray, held_out: set[str], audio: cfg.AudioConfig,
                  time_split: "split_lib.TimeSplit | None") -> tuple[np.ndarray, dict | None]:
    """The split of each of a clip's examples ("train", "validation", or None for a guard frame, not
    written) and the record of its held-out part (see `split.frame_splits`)."""
    labels, held_part = split_lib.frame_splits(len(times), audio, time_split, clip.id in held_out, clip.id)
    return np.array(labels, dtype=object), held_part


def dataset_spec(config: cfg.PipelineConfig, teacher) -> records.DatasetSpec:
    """The dataset's shared facts for a pipeline and its teacher."""
    pc, ac = config.prepare, config.audio
    return records.DatasetSpec(sample_rate=ac.sample_rate, window_samples=ac.window_samples,
                               frame_period_ms=ac.frame_period_ms, num_classes=teacher.num_classes,
                               teacher=teacher.name, audio_format=pc.audio_format, logits_format=pc.logits_format)


def settings(config: cfg.PipelineConfig) -> dict[str, Any]:
    """The settings recorded in the dataset's header."""
    pc = config.prepare
    return {"settings": {"teacher": pc.teacher, "labels": pc.labels, "holdout": pc.holdout,
                         "holdout_part": pc.holdout_part, "holdout_at": pc.holdout_at, "frame_fit": pc.frame_fit,
                         "audio": dataclasses.asdict(config.audio)}}


@dataclass
class Labelled:
    """One clip's outcome: its record, and when it is labelled its examples."""

    doc: dict[str, Any]
    windows: np.ndarray | None = None
    logits: np.ndarray | None = None
    times: np.ndarray | None = None
    splits: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        """Whether the clip was labelled."""
        return self.doc["status"] == "ok"


class Labeller:
    """Downloads, decodes and labels clips with one teacher, loaded when the first clip needs it."""

    def __init__(self, config: cfg.PipelineConfig, held_out: set[str], keys: dict[str, str],
                 weights: str | None = "imagenet"):
        from audionet_tf.preparation import download

        pc = config.prepare
        self.config = config
        self.held_out = held_out
        self.keys = keys
        self.weights = weights
        self.time_split = split_lib.parse_time_split(pc.holdout_part, pc.holdout_at)
        self.downloader = download.Downloader(pc.cache_dir, retries=pc.retries, margin_s=pc.margin_s)
        self._teacher = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        """Whether the teacher has been loaded."""
        return self._teacher is not None

    @property
    def teacher(self):
        """The teacher (loaded on first use; a failure to load is a `TeacherError`)."""
        with self._lock:
            if self._teacher is None:
                from audionet_tf.preparation import teacher as teacher_lib

                pc = self.config.prepare
                try:
                    self._teacher = teacher_lib.load_teacher(pc.teacher, pc.labels, weights=self.weights,
                                                             batch_size=pc.teacher_batch)
                except AudioNetError as exc:
                    raise TeacherError(str(exc)) from None
            return self._teacher

    @property
    def spec(self) -> records.DatasetSpec:
        """The dataset spec (loads the teacher)."""
        return dataset_spec(self.config, self.teacher)

    def fetch(self, clip: Clip):
        """Download (or find) and decode a clip: the part that overlaps labelling."""
        from audionet_tf.preparation import media

        got = self.downloader.fetch(clip)
        return media.decode_clip(got.path, got.offset, clip.duration, self.config.audio, self.teacher.input_size,
                                 self.config.prepare.frame_fit)

    def doc(self, clip: Clip) -> dict[str, Any]:
        """A clip's record before its outcome is known."""
        split = "validation" if clip.id in self.held_out else "time" if self.time_split else "train"
        return {**clip.to_dict(), "split": split, "key": self.keys[clip.id]}

    def label(self, clip: Clip, decoded) -> Labelled:
        """A decoded clip's examples and record."""
        from audionet_tf.preparation import media

        ac = self.config.audio
        logits = self.teacher.logits(decoded.frames)
        windows = media.frame_windows(decoded.audio, len(decoded.frames), ac)
        times = np.asarray(decoded.times)
        splits, held_part = assign_splits(clip, times, self.held_out, ac, self.time_split)
        kept = splits != None  # noqa: E711  (guard frames: no split, not written)
        doc = {**self.doc(clip), "status": "ok", "error": None, "examples": int(kept.sum()),
               "teacher_top": split_lib.top_classes(logits, list(splits))}
        if held_part is not None:
            doc["held_out_part"] = held_part
        return Labelled(doc, windows[kept], logits[kept], times[kept], splits[kept])

    def failed(self, clip: Clip, error: BaseException) -> Labelled:
        """The record of a clip that could not be labelled."""
        return Labelled({**self.doc(clip), "status": "failed", "error": str(error), "examples": 0})

    def run(self, clip: Clip) -> Labelled:
        """Fetch, decode and label one clip; a clip-level failure is its outcome, not an exception."""
        try:
            return self.label(clip, self.fetch(clip))
        except TeacherError:
            raise
        except (AudioNetError, OSError) as exc:  # OSError: an unreadable cache file
            return self.failed(clip, exc)


# What both runners share around the core: the clip list, the lock, the summary.


@dataclass
class Summary:
    """What a prepare run did."""

    out: str
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    examples: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def list_clips(config: cfg.PipelineConfig) -> list[Clip]:
    """Every clip of the pipeline: demo clips, inline clips and a CSV list, checked before any download."""
    pc = config.prepare
    clips: list[Clip] = []
    if pc.demo:
        from audionet_tf.preparation.demo_clips import make_demo_clips

        clips += make_demo_clips(os.path.join(pc.cache_dir, "demo"))
    if pc.clips:
        base = os.path.dirname(os.path.abspath(config.source)) if config.source else "."
        clips += clips_from_entries(pc.clips, config.source or "[prepare] clips", base)
    if pc.manifest:
        clips += read_manifest(pc.manifest)
    if not clips:
        raise AudioNetError("no clips to prepare: give --manifest FILE.csv, a pipeline file with [[prepare.clips]], "
                            "or --demo")
    ids = [c.id for c in clips]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise AudioNetError(f"the same clip is listed twice: {', '.join(duplicates[:5])}")
    return clips


def output_lock(out: str):
    """The directory's lock for a local output; object stores have none (see `commits`: writers never collide)."""
    if storage.is_remote(out):
        log.info("%s is an object store: no lock; concurrent runs cannot corrupt each other (unique names), "
                 "but would label the same clips twice", out)
        return contextlib.nullcontext()
    return DirectoryLock(out, LOCK_FILE, what="prepared")


class NothingPrepared(AudioNetError):
    """No clip of the list could be labelled; the summary lists every clip's reason."""

    def __init__(self, message: str, summary: "Summary"):
        super().__init__(message)
        self.summary = summary


def nothing_prepared(summary: "Summary") -> NothingPrepared:
    """The error for a run after which the dataset holds no clip: every clip's reason, then what to do."""
    lines = [f"  failed {clip_id}: {why}" for clip_id, why in summary.failed.items()]
    if len(lines) > 50:
        lines = lines[:50] + [f"  … and {len(lines) - 50} more"]
    return NothingPrepared("\n".join([f"no clip could be prepared into {summary.out}; "
                                       f"{len(summary.failed)} failed:", *lines,
                                       "without internet, try the offline demo: "
                                       "audionet demo"]), summary)
