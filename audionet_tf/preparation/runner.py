"""Prepare a dataset in one process: clip list → download → decode → teacher → committed TFRecord shards.

Two clips download at once and a background thread decodes ahead while the teacher labels full batches
(see `labelling.Labeller.label_clips`); clips are committed in small groups (see `dataset.commits`), so a
killed run loses only the open group."""
from __future__ import annotations

import contextlib
import logging
import time

from audionet_tf.core import config as cfg, console, storage
from audionet_tf.core.errors import AudioNetError
from audionet_tf.dataset import catalog, commits, records, split
from audionet_tf.preparation import labelling
from audionet_tf.preparation.labelling import Summary, clip_key, holdout_ids, list_clips, nothing_prepared, output_lock
from audionet_tf.preparation.manifest import Clip

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
        keeper = commits.IndexKeeper(pc.out, pc.index_every)
        keeper.start()
        writer = commits.CommitWriter(pc.out, shard_size=pc.shard_size, shard_clips=pc.shard_clips,
                                      on_commit=keeper.committed)
        log.info("%d clips: %d to prepare, %d already committed", len(clips), len(todo), len(done))
        try:
            _label_all(todo, labeller, writer, summary, config)
            writer.commit()
        except BaseException:
            writer.abort()  # the open shards only: every committed clip stays
            raise
        state = commits.finalise(pc.out, len(clips), clean=not storage.is_remote(pc.out))
        clips = records.LazyClips(state.clip_docs())
        if not any(c.ok for c in clips):
            raise nothing_prepared(summary)
        for warning in split.unseen_class_warnings(clips, catalog.read_class_names(pc.out)):
            log.warning("%s", warning)
            summary.warnings.append(warning)
        description = catalog.read_description(pc.out)
        summary.examples = {split: description.examples(split) for split in records.SPLITS}
    return summary


def _label_all(todo: list[Clip], labeller: labelling.Labeller, writer: commits.CommitWriter, summary: Summary,
               config: cfg.PipelineConfig) -> None:
    progress = console.Progress(len(todo), "prepare", log)
    counts = {"started": time.time(), "frames": 0, "clips": 0}
    with contextlib.closing(labeller.label_clips(todo)) as outcomes:  # closed at once on an error: decoding stops
        for outcome in outcomes:
            _take(outcome, labeller, writer, summary, config.prepare, progress, counts)
    progress.close()


def _take(outcome: labelling.Part | labelling.Labelled, labeller: labelling.Labeller, writer: commits.CommitWriter,
          summary: Summary, pc: cfg.PrepareConfig, progress: console.Progress, counts: dict) -> None:
    if isinstance(outcome, labelling.Labelled) and not outcome.ok:
        clip_id = outcome.doc["id"]
        if pc.strict:
            raise AudioNetError(f"clip {clip_id} failed (--strict): {outcome.doc['error']}")
        summary.failed[clip_id] = outcome.doc["error"]
        log.warning("clip %s failed: %s", clip_id, outcome.doc["error"])
    try:
        labeller.write(outcome, writer)
    except (OSError, tf_errors()) as exc:
        raise AudioNetError(f"cannot write to {pc.out}: {exc}. Free space (or fix the storage) and "
                            f"rerun the same command: the clips committed so far are kept") from None
    if isinstance(outcome, labelling.Part):
        counts["frames"] += len(outcome.windows)
        return
    counts["clips"] += 1
    if outcome.ok:
        counts["frames"] += 0 if outcome.windows is None else len(outcome.windows)
        summary.written.append(outcome.doc["id"])
        if outcome.doc.get("shortened"):
            summary.shortened[outcome.doc["id"]] = labelling.shortened_note(records.ClipRecord.from_doc(outcome.doc))
    rate = counts["frames"] / max(time.time() - counts["started"], 1e-6)
    progress.update(counts["clips"], f"clips; {outcome.doc['id']}: {outcome.doc['examples']} frames "
                                     f"({outcome.doc['split']}), {rate:.0f} frames/s")


def tf_errors() -> type:
    """TensorFlow's I/O error type (raised by its file systems for remote outputs)."""
    import tensorflow as tf

    return tf.errors.OpError
