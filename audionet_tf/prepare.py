"""Prepare a dataset: clip list → download → decode → teacher → sharded TFRecords.

    python -m audionet_tf.prepare --pipeline pipelines/seed.toml        # the slides' ten clips
    python -m audionet_tf.prepare --pipeline pipelines/demo.toml        # offline demo clips
    python -m audionet_tf.prepare --manifest clips.csv --teacher ResNet50 --out data/mine

Clips that cannot be had (gone, private, no network, no audio, too short) are recorded
with the reason in the summary and in the dataset's commit records, and the others go on (`--strict`
makes any failure fatal). Held-out data (`split.py`): whole clips (`--holdout`: a fraction,
chosen by a hash of the clip id, or a comma-separated list of ids), and/or a part of every
clip (`--holdout-part 0.2 --holdout-at end`) with a guard so that no audio sample is in both
a training and a held-out window. Clips are committed in small groups as they are labelled (see `commits`): a
killed run loses only the open group, and the same command again labels only the clips that
are not committed (or whose entry or settings changed; `--overwrite` redoes them all). A
second prepare on the same local directory while one runs is refused.

`--runner NAME [Beam pipeline options]` runs the same labelling core (`labelling`) and
commits as an Apache Beam pipeline (`pip install -e .[beam]`; see `beam_prepare.py`).
`--out` may be a URL (`gs://…`, `ram://…`): see `storage`.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import logging
import sys
import time
from typing import Sequence

from audionet_tf import commits, console, labelling, records, split, storage
from audionet_tf import config as cfg
from audionet_tf.errors import AudioNetError
from audionet_tf.labelling import (NothingPrepared, Summary, clip_key, dataset_spec, holdout_ids,  # noqa: F401
                                   list_clips, nothing_prepared, output_lock)
from audionet_tf.manifest import Clip

log = logging.getLogger("audionet_tf.prepare")


def prepare(config: cfg.PipelineConfig, weights: str | None = "imagenet") -> Summary:
    """Prepare the pipeline's dataset in `prepare.out`; returns what happened to each clip."""
    pc = config.prepare
    clips = list_clips(config)
    held_out = holdout_ids(clips, pc.holdout)
    summary = Summary(out=pc.out)
    with output_lock(pc.out):
        keys = {c.id: clip_key(c, config, c.id in held_out) for c in clips}
        done = commits.plan(pc.out, keys, pc.overwrite, clean=not storage.is_remote(pc.out))
        todo = [c for c in clips if c.id not in done]
        summary.skipped = [c.id for c in clips if c.id in done]
        labeller = labelling.Labeller(config, held_out, keys, weights)
        writer = commits.CommitWriter(pc.out, shard_size=pc.shard_size, shard_clips=pc.shard_clips)
        log.info("%d clips: %d to prepare, %d already committed", len(clips), len(todo), len(done))
        try:
            _label_all(todo, labeller, writer, summary, config)
            writer.commit()
        except BaseException:
            writer.abort()  # the open shards only: every committed clip stays
            raise
        state = commits.finalise(pc.out, len(clips), clean=not storage.is_remote(pc.out))
        docs = state.clip_docs()
        if not any(d.get("status") == "ok" for d in docs):
            raise nothing_prepared(summary)
        for warning in split.unseen_class_warnings(docs, records.read_class_names(pc.out)):
            log.warning("%s", warning)
            summary.warnings.append(warning)
        description = records.read_description(pc.out)
        summary.examples = {split: description.examples(split) for split in records.SPLITS}
    return summary


def _label_all(todo: list[Clip], labeller: labelling.Labeller, writer: commits.CommitWriter, summary: Summary,
               config: cfg.PipelineConfig) -> None:
    pc = config.prepare
    started, frames_done, header = time.time(), 0, False
    progress = console.Progress(len(todo), "prepare", log)
    # Two clips are downloaded and decoded ahead while the teacher labels the current one.
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(labeller.fetch, clip) for clip in todo[:2]]
        for index, clip in enumerate(todo):
            if index + 2 < len(todo):
                futures.append(pool.submit(labeller.fetch, todo[index + 2]))
            try:
                outcome = labeller.label(clip, futures[index].result())
            except labelling.TeacherError:
                raise
            except (AudioNetError, OSError) as exc:  # OSError: an unreadable cache file
                outcome = labeller.failed(clip, exc)
            futures[index] = None  # the decoded clip is not kept
            if not outcome.ok:
                if pc.strict:
                    raise AudioNetError(f"clip {clip.id} failed (--strict): {outcome.doc['error']}")
                summary.failed[clip.id] = outcome.doc["error"]
                log.warning("clip %s failed: %s", clip.id, outcome.doc["error"])
                writer.add(outcome.doc)
                continue
            spec = labeller.spec
            try:
                if not header:
                    commits.ensure_header(pc.out, spec, labeller.teacher.class_names, labelling.settings(config))
                    header = True
                writer.add(outcome.doc, spec, outcome.windows, outcome.logits, outcome.times, outcome.splits)
            except (OSError, tf_errors()) as exc:
                raise AudioNetError(f"cannot write to {pc.out}: {exc}. Free space (or fix the storage) and "
                                    f"rerun the same command: the clips committed so far are kept") from None
            frames_done += len(outcome.windows)
            summary.written.append(clip.id)
            rate = frames_done / max(time.time() - started, 1e-6)
            progress.update(index + 1, f"clips; {clip.id}: {len(outcome.windows)} frames ({outcome.doc['split']}), "
                                       f"{rate:.0f} frames/s")
    progress.close()


def tf_errors() -> type:
    """TensorFlow's I/O error type (raised by its file systems for remote outputs)."""
    import tensorflow as tf

    return tf.errors.OpError


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
    "holdout": str, "holdout_part": str, "holdout_at": str, "frame_fit": str, "shard_size": int, "shard_clips": int, "audio_format": str, "logits_format": str,
    "retries": int, "margin_s": float,
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
