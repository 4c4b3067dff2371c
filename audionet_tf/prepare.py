"""Prepare a dataset: clip list → download → decode → teacher → sharded TFRecords.

    python -m audionet_tf.prepare --pipeline pipelines/seed.toml        # the slides' ten clips
    python -m audionet_tf.prepare --pipeline pipelines/demo.toml        # offline demo clips
    python -m audionet_tf.prepare --manifest clips.csv --teacher ResNet50 --out data/mine

Clips that cannot be had (gone, private, no network, no audio, too short) are recorded
with the reason in the summary and in `dataset.json`, and the others go on (`--strict`
makes any failure fatal). Held-out data (`split.py`): whole clips (`--holdout`: a fraction,
chosen by a hash of the clip id, or a comma-separated list of ids), and/or a part of every
clip (`--holdout-part 0.2 --holdout-at end`) with a guard so that no audio sample is in both
a training and a held-out window. A rerun skips clips already written with the same settings (`--overwrite`
redoes them); a second prepare on the same directory while one runs is refused.

`--runner NAME [Beam pipeline options]` runs the same stages as an Apache Beam pipeline
(`pip install -e .[beam]`; see `beam_prepare.py`).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Sequence

from audionet_tf import config as cfg
from audionet_tf import console
from audionet_tf import records
from audionet_tf.errors import AudioNetError
from audionet_tf.manifest import Clip, clips_from_entries, read_manifest
from audionet_tf.split import holdout_ids  # noqa: F401  (where it used to live)

log = logging.getLogger("audionet_tf.prepare")

LOCK_FILE = ".prepare.lock"


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
        from audionet_tf.demo import make_demo_clips

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


def clip_key(clip: Clip, config: cfg.PipelineConfig) -> str:
    """What makes a clip's examples: its entry and the settings that shape them."""
    pc, ac = config.prepare, config.audio
    doc = {"clip": {k: v for k, v in clip.to_dict().items() if k != "row"}, "audio": dataclasses.asdict(ac),
           "teacher": pc.teacher, "labels": pc.labels, "audio_format": pc.audio_format,
           "logits_format": pc.logits_format, "frame_fit": pc.frame_fit,
           "time_split": [pc.holdout_part, pc.holdout_at] if pc.holdout_part else None}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


class Lock:
    """An exclusive lock on an output directory (a file holding the owner's PID)."""

    def __init__(self, directory: str):
        self.path = os.path.join(directory, LOCK_FILE)

    def __enter__(self) -> "Lock":
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pid = self._owner()
                if pid is not None and _alive(pid):
                    raise AudioNetError(f"{os.path.dirname(self.path)} is being prepared by process {pid}; "
                                        f"wait for it, or remove {self.path} if that process is gone") from None
                log.warning("taking over the lock of process %s, which is gone", pid)
                os.unlink(self.path)
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(str(os.getpid()))
            return self
        raise AudioNetError(f"cannot lock {self.path}")

    def _owner(self) -> int | None:
        try:
            with open(self.path, encoding="utf-8") as handle:
                return int(handle.read().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def __exit__(self, *exc) -> None:
        if os.path.exists(self.path) and self._owner() == os.getpid():
            os.unlink(self.path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _previous(out: str, keys: dict[str, str], overwrite: bool) -> tuple[list[records.ShardInfo], list[dict], set]:
    """Shards and clip records of an earlier run that stay valid (every clip in them still wanted as is)."""
    try:
        description = records.read_description(out)
    except AudioNetError:
        return [], [], set()
    docs = {c["id"]: c for c in description.clips}
    valid = {cid for cid, c in docs.items()
             if not overwrite and c.get("status") == "ok" and keys.get(cid) == c.get("key")}
    kept_shards = []
    for shard in description.shards:
        clips_in = set(shard_clips(out, shard, description.spec))
        if clips_in <= valid:
            kept_shards.append(shard)
        else:
            valid -= clips_in
    return kept_shards, [docs[cid] for cid in valid], valid


def shard_clips(out: str, shard: records.ShardInfo, spec: records.DatasetSpec) -> list[str]:
    """The clip ids whose examples a shard holds."""
    path = os.path.join(out, shard.file)
    if not os.path.isfile(path):
        return ["<missing>"]
    return sorted(set(records.read_examples(path, spec)["clip_id"]))


def dataset_spec(config: cfg.PipelineConfig, teacher) -> records.DatasetSpec:
    """The dataset's shared facts for a pipeline and its teacher."""
    pc, ac = config.prepare, config.audio
    return records.DatasetSpec(sample_rate=ac.sample_rate, window_samples=ac.window_samples,
                               frame_period_ms=ac.frame_period_ms, num_classes=teacher.num_classes,
                               teacher=teacher.name, audio_format=pc.audio_format, logits_format=pc.logits_format)


def label_clip(decoded, teacher, audio: cfg.AudioConfig):
    """A decoded clip's examples: windows `[N, L]`, teacher logits `[N, C]`, frame times `[N]`."""
    from audionet_tf import media

    logits = teacher.logits(decoded.frames)
    windows = media.frame_windows(decoded.audio, len(decoded.frames), audio)
    return windows, logits, decoded.times


def prepare(config: cfg.PipelineConfig, weights: str | None = "imagenet") -> Summary:
    """Prepare the pipeline's dataset in `prepare.out`; returns what happened to each clip."""
    import numpy as np

    from audionet_tf import download, media, split as split_lib, teacher as teacher_lib

    pc, ac = config.prepare, config.audio
    clips = list_clips(config)
    held_out = holdout_ids(clips, pc.holdout)
    time_split = split_lib.parse_time_split(pc.holdout_part, pc.holdout_at)
    summary = Summary(out=pc.out)
    with Lock(pc.out):
        keys = {c.id: clip_key(c, config) for c in clips}
        kept_shards, kept_docs, done = _previous(pc.out, keys, pc.overwrite)
        todo = [c for c in clips if c.id not in done]
        summary.skipped = sorted(done)
        teacher = teacher_lib.load_teacher(pc.teacher, pc.labels, weights=weights, batch_size=pc.teacher_batch)
        spec = dataset_spec(config, teacher)
        downloader = download.Downloader(pc.cache_dir, retries=pc.retries, margin_s=pc.margin_s)
        writer = records.DatasetWriter(pc.out, spec, shard_size=pc.shard_size)
        docs = {d["id"]: d for d in kept_docs}

        def fetch_and_decode(clip: Clip):
            got = downloader.fetch(clip)
            return media.decode_clip(got.path, got.offset, clip.duration, ac, teacher.input_size, pc.frame_fit)

        log.info("%d clips: %d to prepare, %d already done; teacher %s (%d classes)", len(clips), len(todo),
                 len(done), teacher.name, teacher.num_classes)
        started, frames_done = time.time(), 0
        progress = console.Progress(len(todo), "prepare", log)
        # Two clips are downloaded and decoded ahead while the teacher labels the current one.
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            futures = [pool.submit(fetch_and_decode, clip) for clip in todo[:2]]
            for index, clip in enumerate(todo):
                if index + 2 < len(todo):
                    futures.append(pool.submit(fetch_and_decode, todo[index + 2]))
                split = "validation" if clip.id in held_out else "time" if time_split else "train"
                doc = {**clip.to_dict(), "split": split, "key": keys[clip.id]}
                try:
                    windows, logits, times = label_clip(futures[index].result(), teacher, ac)
                    labels, held_part = split_lib.frame_splits(len(windows), ac, time_split, clip.id in held_out,
                                                               clip.id)
                    for part in records.SPLITS:  # a time-split clip adds its two parts separately
                        mine = np.array([label == part for label in labels], bool)
                        if mine.any():
                            writer.add(part, windows[mine], logits[mine], clip.id, np.asarray(times)[mine])
                    if held_part is not None:
                        doc["held_out_part"] = held_part
                    doc["teacher_top"] = split_lib.top_classes(logits, labels)
                except (AudioNetError, OSError) as exc:  # OSError: a full disk or unreadable cache file
                    if pc.strict:
                        writer.abort()
                        raise AudioNetError(f"clip {clip.id} failed (--strict): {exc}") from None
                    docs[clip.id] = {**doc, "status": "failed", "error": str(exc), "examples": 0}
                    summary.failed[clip.id] = str(exc)
                    log.warning("clip %s failed: %s", clip.id, exc)
                    continue
                frames_done += len(windows)
                kept = sum(label is not None for label in labels)  # guard frames are dropped
                docs[clip.id] = {**doc, "status": "ok", "error": None, "examples": kept}
                summary.written.append(clip.id)
                rate = frames_done / max(time.time() - started, 1e-6)
                progress.update(index + 1, f"clips; {clip.id}: {len(windows)} frames ({split}), {rate:.0f} frames/s")
            progress.close()
        ordered = [docs[c.id] for c in clips if c.id in docs]
        for warning in split_lib.unseen_class_warnings(ordered, teacher.class_names):
            log.warning("%s", warning)
            summary.warnings.append(warning)
        extra = {"settings": {"teacher": pc.teacher, "labels": pc.labels, "holdout": pc.holdout,
                              "holdout_part": pc.holdout_part, "holdout_at": pc.holdout_at,
                              "frame_fit": pc.frame_fit,
                              "audio": dataclasses.asdict(ac)}}
        if not summary.written and not kept_shards:
            writer.abort()
            raise AudioNetError(f"no clip could be prepared into {pc.out}: " +
                                "; ".join(f"{k}: {v}" for k, v in list(summary.failed.items())[:5]))
        description = writer.finish(clips=ordered, class_names=teacher.class_names, previous=kept_shards,
                                    extra=extra)
        referenced = {s.file for s in description.shards}
        for name in os.listdir(pc.out):
            if name.endswith(records.SHARD_SUFFIX) and name not in referenced:
                os.unlink(os.path.join(pc.out, name))
        summary.examples = {split: description.examples(split) for split in records.SPLITS}
    return summary


def print_summary(summary: Summary) -> None:
    """The per-clip outcome, for people."""
    print(f"\ndataset {summary.out}: {summary.examples.get('train', 0)} training and "
          f"{summary.examples.get('validation', 0)} held-out examples")
    print(f"  written now: {len(summary.written)} clips; already there: {len(summary.skipped)}; "
          f"failed: {len(summary.failed)}")
    for clip_id, why in summary.failed.items():
        print(f"  failed {clip_id}: {why}")
    for warning in summary.warnings:
        print(f"  note: {warning}")


PREPARE_FLAGS = {
    "out": str, "manifest": str, "teacher": str, "labels": str, "teacher_batch": int, "cache_dir": str,
    "holdout": str, "holdout_part": str, "holdout_at": str, "frame_fit": str,
    "shard_size": int, "audio_format": str, "logits_format": str, "retries": int, "margin_s": float,
    "runner": str,
}


def build_parser() -> argparse.ArgumentParser:
    """The prepare command's flags (each overrides the pipeline file's value)."""
    p = argparse.ArgumentParser(prog="python -m audionet_tf.prepare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", help="pipeline TOML file")
    for name, kind in PREPARE_FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind, dest=name)
    p.add_argument("--window-ms", type=float, help="audio window per frame (default: one frame period)")
    p.add_argument("--frame-period-ms", type=float)
    p.add_argument("--sample-rate", type=int)
    p.add_argument("--demo", action="store_true", default=None, help="make and use the offline demo's clips")
    p.add_argument("--strict", action="store_true", default=None, help="any clip that fails is fatal")
    p.add_argument("--overwrite", action="store_true", default=None, help="redo clips already written")
    p.add_argument("--quiet", action="store_true", help="log lines instead of a progress bar")
    p.add_argument("--verbose", action="store_true", help="show TensorFlow's own C++ log lines")
    return p


def resolve_config(args: argparse.Namespace) -> cfg.PipelineConfig:
    """Defaults ← pipeline file ← flags."""
    config = cfg.load_pipeline(args.pipeline)
    values = {k: getattr(args, k) for k in (*PREPARE_FLAGS, "demo", "strict", "overwrite")}
    config = cfg.override(config, "prepare", values)
    return cfg.override(config, "audio", {"window_ms": args.window_ms, "frame_period_ms": args.frame_period_ms,
                                          "sample_rate": args.sample_rate})


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = build_parser()
    # With --runner, flags this command does not know are Beam pipeline options.
    args, beam_args = parser.parse_known_args(argv)
    console.setup(args.verbose, args.quiet)
    try:
        config = resolve_config(args)
        if config.prepare.runner:
            if config.prepare.holdout_part:
                raise AudioNetError("--runner: the Beam path holds out whole clips only; drop --holdout-part "
                                    "or prepare without --runner")
            from audionet_tf.beam_prepare import run_beam

            summary = run_beam(config, beam_args)
        elif beam_args:
            parser.error(f"unrecognized arguments: {' '.join(beam_args)}")
        else:
            summary = prepare(config)
    except AudioNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_summary(summary)
    return 0


if __name__ == "__main__":
    from audionet_tf.console import run_command

    raise SystemExit(run_command(main))
