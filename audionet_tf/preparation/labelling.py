"""The labelling core: one clip → its examples (windows, teacher logits, times, split per example) and outcome.

Both runners call it: `runner` (one process) and `beam` (clips spread over Beam workers), through
`Labeller.label_clips`: downloads run ahead, a background thread decodes clips in chunks, and the
teacher labels fixed-size batches that run across clip boundaries. The teacher starts loading in a
thread of its own when the first clip has been downloaded, so a list whose clips all fail to download
ends with the per-clip reasons and never waits for (or fails on) the teacher's weights; decoding does
not wait for the load when the teacher's input size is known without it (`teacher.input_size_of`).
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import queue
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from audionet_tf.core import config as cfg, storage
from audionet_tf.core.errors import AudioNetError
from audionet_tf.core.lock import DirectoryLock
from audionet_tf.dataset import records, split as split_lib
from audionet_tf.dataset.split import holdout_ids  # noqa: F401  (re-exported for both runners)
from audionet_tf.preparation import onnx_teacher
from audionet_tf.preparation.manifest import Clip, clips_from_entries, read_manifest

log = logging.getLogger(__name__)

LOCK_FILE = ".prepare.lock"


class TeacherError(AudioNetError):
    """The teacher cannot be loaded: fatal for the run, not a property of one clip."""


class ClipTooShort(AudioNetError):
    """A clip whose usable part (frames with their picture and whole window) is under `prepare.min_clip_seconds`."""


def check_usable(path: str, extent, pc: cfg.PrepareConfig) -> None:
    """Refuse a shortened clip left with less than `prepare.min_clip_seconds`, or with no frame at all
    (`ClipTooShort`, naming the file)."""
    if extent.frames == 0:
        raise ClipTooShort(f"{path}: {extent.why()}: no frame has both its picture and its whole window")
    if extent.shortened and extent.seconds < pc.min_clip_seconds:
        raise ClipTooShort(f"{path}: {extent.why()}: {extent.frames} frames ({extent.seconds:.2f} s) can be "
                           f"labelled, under the minimum of {pc.min_clip_seconds:g} s (prepare.min_clip_seconds, "
                           f"--min-clip-seconds)")


def held_part_within(held_part: dict | None, splits: np.ndarray, period_s: float) -> dict | None:
    """A held-out part's record cut to the frames a clip turned out to have (`splits`, planned on more)."""
    if held_part is None:
        return None
    frames = int(np.sum(splits == split_lib.VALIDATION))
    guard = int(np.sum(splits == None))  # noqa: E711  (guard frames: no split)
    end = min(held_part["end_s"], round(len(splits) * period_s, 6))
    return {**held_part, "end_s": max(end, held_part["start_s"]) if frames else held_part["start_s"],
            "frames": frames, "guard_frames": guard}


def clip_key(clip: Clip, config: cfg.PipelineConfig, held_out: bool = False) -> str:
    """What makes a clip's examples: its entry, whether it is held out, and the settings that shape them."""
    pc, ac = config.prepare, config.audio
    doc = {"clip": {k: v for k, v in clip.to_dict().items() if k != "row"}, "audio": dataclasses.asdict(ac),
           "held_out": held_out,
           "teacher": pc.teacher, "labels": pc.labels, "audio_format": pc.audio_format,
           "logits_format": pc.logits_format, "frame_fit": pc.frame_fit,
           "time_split": [pc.holdout_part, pc.holdout_at] if pc.holdout_part else None}
    if pc.end_slack_ms != cfg.PrepareConfig.end_slack_ms:
        # Only when changed: the keys of clips committed before the setting existed stay valid.
        doc["end_slack_ms"] = pc.end_slack_ms
    if onnx_teacher.is_onnx(pc.teacher):  # its preprocessing changes its logits (absent otherwise: keys stay)
        doc["onnx"] = onnx_teacher.settings_of(pc)
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
                         "audio": dataclasses.asdict(config.audio),
                         **({"onnx": onnx_teacher.settings_of(pc)} if onnx_teacher.is_onnx(pc.teacher) else {})}}


@dataclass
class Labelled:
    """One clip's outcome: its record, and for a clip labelled whole its examples (a clip longer than one
    chunk comes as `Part`s first, and its `Labelled` carries no examples)."""

    doc: dict[str, Any]
    windows: np.ndarray | None = None
    logits: np.ndarray | None = None
    times: np.ndarray | None = None
    splits: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        """Whether the clip was labelled."""
        return self.doc["status"] == "ok"


@dataclass
class Part:
    """Labelled examples of one chunk of a clip longer than `prepare.chunk_frames` frames."""

    clip_id: str
    windows: np.ndarray
    logits: np.ndarray
    times: np.ndarray
    splits: np.ndarray


# A part-filled batch waits this long for the next clip's frames, then runs padded, so that a slow
# download does not hold back the commit of the clips before it.
FLUSH_AFTER_S = 2.0
# Decoded frames waiting for the teacher, in chunks of `prepare.chunk_frames`: enough to keep it busy (and for
# decoding to get ahead while the teacher loads), few enough to bound memory whatever a clip's length.
QUEUED_CHUNKS = 4
_FULL_DISK = re.compile(r"No space left on device|Disk quota exceeded|Read-only file system", re.I)


def run_fault(exc: BaseException) -> bool:
    """Whether an error met while fetching or decoding a clip stops the run: the teacher cannot load, memory or
    the disk is full. Anything else is that clip's failure."""
    if isinstance(exc, (TeacherError, MemoryError)) or not isinstance(exc, Exception):
        return True
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return True
    return isinstance(exc, AudioNetError) and bool(_FULL_DISK.search(str(exc)))


def failure_reason(exc: BaseException) -> str:
    """A clip's failure as its record says it: our own errors by their message, others by type and message."""
    if isinstance(exc, (AudioNetError, OSError)):
        return str(exc)
    return f"unexpected {type(exc).__name__} while fetching or decoding it: {exc}"


class _Top:
    """The teacher's top class counts on a clip's training and held-out frames, gathered chunk by chunk."""

    def __init__(self):
        self.counts: dict[str, np.ndarray] = {}

    def add(self, logits: np.ndarray, splits: np.ndarray) -> None:
        top = logits.argmax(axis=1) if len(logits) else np.zeros(0, int)
        for part in (split_lib.TRAIN, split_lib.VALIDATION):
            mine = top[splits == part]
            counts = np.bincount(mine, minlength=logits.shape[1])
            self.counts[part] = self.counts[part] + counts if part in self.counts else counts

    def doc(self) -> dict:
        out: dict = {}
        for part in (split_lib.TRAIN, split_lib.VALIDATION):
            counts = self.counts.get(part)
            out[part] = int(counts.argmax()) if counts is not None and counts.sum() else None
            if part == split_lib.TRAIN:
                out["train_classes"] = [] if counts is None else [int(c) for c in np.flatnonzero(counts)]
        return out


class _ClipState:
    """A clip in flight between the decoder and the writer."""

    def __init__(self, clip: Clip, streamed: bool):
        self.clip = clip
        self.streamed = streamed
        self.times = self.splits = self.held_part = None
        self.slots: collections.deque = collections.deque()
        self.parts: list[Part] = []
        self.top = _Top()
        self.examples = 0
        self.extent = None  # media.Extent, at its end
        self.ended = False
        self.error: BaseException | None = None


class _Slot:
    """One decoded chunk waiting for its logits (its frames are let go once all are copied into batches)."""

    def __init__(self, state: _ClipState, chunk, num_classes: int):
        self.state = state
        self.chunk = chunk
        self.size = len(chunk.frames)
        self.copied = 0
        self.filled = 0
        self.logits = np.empty((self.size, num_classes), np.float32)


class _FrameBudget:
    """How many decoded frames may wait for the teacher: the decoder waits while a chunk would exceed it."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._changed = threading.Condition()

    def take(self, count: int, stop: threading.Event) -> bool:
        """Wait for room for `count` frames (always granted when none wait); False if `stop` came first."""
        with self._changed:
            while self.used and self.used + count > self.limit:
                if stop.is_set():
                    return False
                self._changed.wait(0.2)
            self.used += count
            return True

    def give(self, count: int) -> None:
        """`count` frames no longer wait (copied into a batch, or dropped)."""
        with self._changed:
            self.used -= count
            self._changed.notify_all()


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
        # Resolved here, before any download thread starts (see `download.Downloader`).
        self.downloader = download.Downloader(pc.cache_dir, retries=pc.retries, margin_s=pc.margin_s)
        self._teacher = None
        self._lock = threading.Lock()
        self._loader: threading.Thread | None = None
        self._load_done = threading.Event()
        self._load_error: BaseException | None = None
        self._size: tuple[int, int] | None = None
        self._header = False

    @property
    def loaded(self) -> bool:
        """Whether the teacher has been loaded."""
        return self._teacher is not None

    def start_loading(self) -> None:
        """Start loading the teacher in a thread of its own (once), so that decoding goes on meanwhile."""
        from audionet_tf.preparation import teacher as teacher_lib

        with self._lock:
            if self._loader is None:
                self._size = teacher_lib.input_size_of(self.config.prepare.teacher)  # before the load checks it
                self._loader = threading.Thread(target=self._load, name="audionet-teacher", daemon=True)
                self._loader.start()

    def _load(self) -> None:
        from audionet_tf.preparation import teacher_graphs

        pc = self.config.prepare
        try:
            # Loaded and compiled (traced, folded) here, while decoding goes on; or from a graph a run kept.
            kept = os.path.join(pc.cache_dir, "teachers") if pc.teacher_cache else None
            teacher = teacher_graphs.load_teacher(pc.teacher, pc.labels, self.weights, pc.teacher_batch,
                                                  pc.teacher_fold, kept, pc)
            if self._size is not None and tuple(teacher.input_size) != tuple(self._size):
                raise TeacherError(f"teacher {pc.teacher}: its file gives the input size {self._size}, but the "
                                   f"loaded model takes {teacher.input_size}")
            self._teacher = teacher
        except AudioNetError as exc:
            self._load_error = exc if isinstance(exc, TeacherError) else TeacherError(str(exc))
        except BaseException as exc:  # memory exhausted while loading, for one: the caller's to raise
            self._load_error = exc
        finally:
            self._load_done.set()

    @property
    def teacher(self):
        """The teacher (loaded on first use, or waited for if loading; a failure to load is a `TeacherError`)."""
        if self._teacher is None:
            self.start_loading()
            self._load_done.wait()
            if self._teacher is None:
                raise self._load_error
        return self._teacher

    def frame_size(self) -> tuple[int, int]:
        """The size frames are decoded at: the teacher's input size, known before it has loaded if it can be."""
        self.start_loading()
        if self._teacher is None and self._size is not None:
            return self._size
        return self.teacher.input_size

    @property
    def spec(self) -> records.DatasetSpec:
        """The dataset spec (loads the teacher)."""
        return dataset_spec(self.config, self.teacher)

    def doc(self, clip: Clip) -> dict[str, Any]:
        """A clip's record before its outcome is known."""
        split = "validation" if clip.id in self.held_out else "time" if self.time_split else "train"
        return {**clip.to_dict(), "split": split, "key": self.keys[clip.id]}

    def failed(self, clip: Clip, error: BaseException) -> Labelled:
        """The record of a clip that could not be labelled."""
        return Labelled({**self.doc(clip), "status": "failed", "error": failure_reason(error), "examples": 0})

    def frame_count(self, clip: Clip) -> int:
        """How many frames (and examples before guards are dropped) a clip gives."""
        return int(round(clip.duration * self.config.audio.frames_per_second))

    def label_clips(self, clips: Sequence[Clip], ahead: int = 2) -> Iterator[Part | Labelled]:
        """Every clip's outcome, in order: `ahead` clips download at once while a background thread decodes
        in chunks and the teacher labels full batches that run across clip boundaries.

        A clip of more than `prepare.chunk_frames` frames comes as `Part`s then its `Labelled`; a shorter
        one as its `Labelled` with its examples. A clip's failure is its `Labelled`; a fault of the run
        (`run_fault`) is raised."""
        work: queue.Queue = queue.Queue()
        budget = _FrameBudget(QUEUED_CHUNKS * self.config.prepare.chunk_frames)
        stop = threading.Event()
        producer = threading.Thread(target=self._decode_all, args=(list(clips), ahead, work, budget, stop),
                                    name="audionet-decode", daemon=True)
        producer.start()
        try:
            yield from self._label_queue(list(clips), work, budget)
        finally:
            stop.set()
            producer.join(timeout=10)
            # A run that ends while the teacher still loads (its clips all failed) must not leave a thread
            # building a model behind it: it would take the caller's CPU and draw from Keras's random seeds.
            if self._loader is not None:
                self._loader.join()

    def _decode_all(self, clips: list[Clip], ahead: int, work: queue.Queue, budget: _FrameBudget,
                    stop: threading.Event) -> None:
        """The producer: downloads (`ahead` at once) and decodes clips in order into `work`, as far ahead of the
        teacher as `budget` allows."""

        def put(item) -> bool:
            if stop.is_set():
                return False
            if item[0] == "chunk" and not budget.take(len(item[2].frames), stop):
                return False
            work.put(item)
            return True

        pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, ahead), thread_name_prefix="audionet-fetch")
        try:
            futures = {i: pool.submit(self.downloader.fetch, clip) for i, clip in enumerate(clips[:ahead])}
            for index, clip in enumerate(clips):
                if index + ahead < len(clips):
                    futures[index + ahead] = pool.submit(self.downloader.fetch, clips[index + ahead])
                try:
                    got = futures.pop(index).result()
                    self.start_loading()
                    item = self._decode_one(index, clip, got, put)
                    if item is None:
                        return
                except BaseException as exc:  # sorted out here: a clip's failure, or the run's
                    if run_fault(exc):
                        put(("fault", index, exc))
                        return
                    log.debug("clip %s failed", clip.id, exc_info=True)
                    item = ("failed", index, exc)
                if not put(item):
                    return
            put(("done", None, None))
        except BaseException as exc:  # outside any one clip: the consumer must not wait for ever
            put(("fault", None, exc))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _decode_one(self, index: int, clip: Clip, got, put) -> tuple | None:
        """One clip's items for the consumer: its splits, its chunks, and the item that ends it (None once `put`
        refuses one: the run is stopping).

        The splits are planned on the frames the clip really has: known when its first chunk comes for a clip
        of one chunk; measured first (`media.measure_clip`) for a longer clip under a time split, whose
        held-out part depends on its length; otherwise no split depends on it (the listed length is used)."""
        from audionet_tf.preparation import media

        pc, ac = self.config.prepare, self.config.audio
        stream = media.stream_clip(got.path, got.offset, clip.duration, ac, self.frame_size(), pc.frame_fit,
                                   pc.chunk_frames, pc.decode_niceness, pc.end_slack_ms)
        with contextlib.closing(stream):
            pending = next(stream, None)
            extent = stream.extent
            if extent is None and self.time_split is not None:
                extent = media.measure_clip(got.path, got.offset, clip.duration, ac, pc.end_slack_ms,
                                            pc.decode_niceness)
            if extent is not None:
                check_usable(got.path, extent, pc)
            planned = extent.frames if extent is not None else self.frame_count(clip)
            times = np.arange(planned) * (ac.frame_period_ms / 1000.0)
            splits, held_part = assign_splits(clip, times, self.held_out, ac, self.time_split)
            if not put(("start", index, (times, splits, held_part))):
                return None
            while pending is not None and pending.first < planned:
                chunk = pending
                if chunk.first + len(chunk.frames) > planned:  # the measured length caps the stream
                    keep = planned - chunk.first
                    chunk = media.Chunk(chunk.first, chunk.frames[:keep], chunk.windows[:keep])
                if not put(("chunk", index, chunk)):
                    return None
                pending = next(stream, None)
                if stream.extent is not None:  # before its last chunk is labelled
                    check_usable(got.path, stream.extent, pc)
        final = stream.extent if stream.extent is not None and stream.extent.frames <= planned else extent
        check_usable(got.path, final, pc)
        return ("end", index, final)

    def _label_queue(self, clips: list[Clip], work: queue.Queue, budget: _FrameBudget) -> Iterator[Part | Labelled]:
        """The consumer: fills fixed-size batches from the decoded chunks, runs the teacher, hands out outcomes."""
        pc = self.config.prepare
        states: dict[int, _ClipState] = {}
        waiting: collections.deque = collections.deque()  # slots whose frames are not all in a batch yet
        batch: np.ndarray | None = None
        segments: list[tuple[_Slot, int, int, int]] = []  # (slot, its first frame, batch row, frames)
        fill, head = 0, 0

        def run_batch() -> None:
            nonlocal fill
            logits = self.teacher.forward(batch)
            for slot, first, row, n in segments:
                slot.logits[first:first + n] = logits[row:row + n]
                slot.filled += n
            segments.clear()
            fill = 0

        def ready() -> Iterator[Part | Labelled]:
            nonlocal head
            while head < len(clips) and head in states:
                state = states[head]
                if state.error is not None:
                    yield self.failed(state.clip, state.error)
                elif state.slots and state.slots[0].filled == state.slots[0].size:
                    part = self._part(state, state.slots.popleft())
                    if state.streamed:
                        yield part
                    else:
                        state.parts.append(part)
                    continue
                elif state.ended and not state.slots:
                    yield self._labelled(state)
                else:
                    return
                del states[head]
                head += 1

        while True:
            try:
                kind, index, value = work.get(timeout=FLUSH_AFTER_S)
            except queue.Empty:
                if fill:  # the decoder is slow (a download): label what is there
                    run_batch()
                    yield from ready()
                continue
            if kind == "done":
                break
            if kind == "fault":
                if isinstance(value, AudioNetError):
                    raise value
                where = f"clip {clips[index].id}: " if index is not None else "decoding: "
                raise AudioNetError(f"{where}{type(value).__name__}: {value}; the run cannot go on (the clips "
                                    f"committed so far are kept: rerun the same command)") from value
            state = states.setdefault(index, _ClipState(clips[index], self.frame_count(clips[index])
                                                        > pc.chunk_frames))
            if kind == "start":
                state.times, state.splits, state.held_part = value
            elif kind == "chunk":
                slot = _Slot(state, value, self.teacher.num_classes)
                state.slots.append(slot)
                waiting.append(slot)
            elif kind == "end":
                state.ended = True
                state.extent = value
            else:
                state.error = value
            while waiting:
                slot = waiting[0]
                if slot.state.error is not None:  # its clip failed later on: no need to label the rest
                    budget.give(slot.size - slot.copied)
                    slot.chunk.frames = None
                    waiting.popleft()
                    continue
                if batch is None:
                    batch = np.zeros((self.teacher.batch_size, *slot.chunk.frames.shape[1:]), np.uint8)
                n = min(slot.size - slot.copied, len(batch) - fill)
                batch[fill:fill + n] = slot.chunk.frames[slot.copied:slot.copied + n]
                segments.append((slot, slot.copied, fill, n))
                slot.copied += n
                fill += n
                budget.give(n)
                if slot.copied == slot.size:
                    slot.chunk.frames = None  # in the batch now: only its windows and logits are still needed
                    waiting.popleft()
                if fill == len(batch):
                    run_batch()
            yield from ready()
        if fill:
            run_batch()
        yield from ready()

    def _part(self, state: _ClipState, slot: _Slot) -> Part:
        """A labelled chunk's examples (guard frames dropped)."""
        first, n = slot.chunk.first, slot.size
        splits = state.splits[first:first + n]
        kept = splits != None  # noqa: E711  (guard frames: no split, not written)
        state.top.add(slot.logits, splits)
        state.examples += int(kept.sum())
        return Part(state.clip.id, slot.chunk.windows[kept], slot.logits[kept], state.times[first:first + n][kept],
                    splits[kept])

    def _labelled(self, state: _ClipState) -> Labelled:
        """A clip's record once all its frames are labelled (with its examples when it was labelled whole)."""
        doc = {**self.doc(state.clip), "status": "ok", "error": None, "examples": state.examples,
               "teacher_top": state.top.doc()}
        extent = state.extent
        held_part = state.held_part
        if extent is not None:
            doc.update(extent.to_doc())
            if extent.frames < len(state.splits):  # fewer frames than its splits were planned on
                held_part = held_part_within(held_part, state.splits[:extent.frames], extent.period_s)
            if extent.shortened:
                log.info("clip %s: kept %d of the %d frames asked (%.2f of %.2f s): %s", state.clip.id,
                         extent.frames, extent.asked_frames, extent.seconds, extent.duration_s, extent.why())
        if held_part is not None:
            doc["held_out_part"] = held_part
        if state.streamed:
            return Labelled(doc)
        parts = state.parts
        join = (lambda name: np.concatenate([getattr(p, name) for p in parts])) if parts else None
        return Labelled(doc, *(join(name) for name in ("windows", "logits", "times", "splits"))) if parts \
            else Labelled(doc)

    def write(self, event: Part | Labelled, writer) -> None:
        """Hand one outcome of `label_clips` to a `commits.CommitWriter` (the dataset's header goes first)."""
        from audionet_tf.dataset import commits

        if isinstance(event, Part) or event.windows is not None:
            if not self._header:
                commits.ensure_header(self.config.prepare.out, self.spec, self.teacher.class_names,
                                      settings(self.config))
                self._header = True
        if isinstance(event, Part):
            writer.add_part(event.clip_id, self.spec, event.windows, event.logits, event.times, event.splits)
        elif event.windows is not None:
            writer.add(event.doc, self.spec, event.windows, event.logits, event.times, event.splits)
        else:
            writer.add(event.doc)


# What both runners share around the core: the clip list, the lock, the summary.


@dataclass
class Summary:
    """What a prepare run did."""

    out: str
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    shortened: dict[str, str] = field(default_factory=dict)  # clips kept shorter than asked: why
    examples: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def shortened_note(clip: records.ClipRecord) -> str:
    """A clip kept shorter than asked, for the summary: how much of it was labelled, and why."""
    return f"{clip.usable_s:.2f} of the {clip.duration:.2f} s asked ({clip.frames} frames): {clip.shortened}"


def list_clips(config: cfg.PipelineConfig) -> list[Clip]:
    """Every clip of the pipeline: demo clips, picture + recording pairs, inline clips and a CSV list, checked
    before any download."""
    pc = config.prepare
    clips: list[Clip] = []
    if pc.demo:
        from audionet_tf.preparation.demo_clips import make_demo_clips

        clips += make_demo_clips(os.path.join(pc.cache_dir, "demo"))
    if pc.pictures:
        from audionet_tf.preparation.picture_clips import make_picture_clips

        clips += make_picture_clips(pc.pictures, os.path.join(pc.cache_dir, "pictures"), config.audio)
    if pc.clips:
        base = os.path.dirname(os.path.abspath(config.source)) if config.source else "."
        clips += clips_from_entries(pc.clips, config.source or "[prepare] clips", base)
    if pc.manifest:
        clips += read_manifest(pc.manifest)
    if not clips:
        raise AudioNetError("no clips to prepare: give --manifest FILE.csv, a pipeline file with [[prepare.clips]], "
                            "--pictures DIR (picture + recording pairs) or --demo")
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
