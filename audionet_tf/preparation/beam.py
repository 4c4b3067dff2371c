"""Data preparation as an Apache Beam pipeline: the same labelling core and commit format, on any Beam runner.

    python -m audionet_tf.prepare --pipeline seed --runner DirectRunner \\
        --direct_num_workers 2 --direct_running_mode multi_processing
    python -m audionet_tf.prepare --manifest vggsound.csv --out gs://BUCKET/vggsound --runner DataflowRunner \\
        --project P --region R --temp_location gs://BUCKET/tmp --setup_file ./setup.py

The launcher withdraws what is stale and lists the clips that are not committed yet (as the
single-process path does, without reading a shard), groups them (`prepare.shard_clips` per
group) and spreads the groups over workers (`Reshuffle`). A worker labels a group's clips
with `labelling.Labeller` (teacher loaded once per worker, on first use) and commits them
with `commits.CommitWriter`: shards under unique names, then the commit record. A bundle
that Beam retries commits the same group again under other names; the duplicate is
ignored by every reader and removed when the job ends. Then the launcher consolidates the
commit records into the index; it never reads a shard. This module is the only one that
imports Apache Beam (`pip install -e .[beam]`, `.[gcp]` for `gs://` and Dataflow).
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

from audionet_tf.core import config as cfg, storage
from audionet_tf.core.errors import AudioNetError
from audionet_tf.dataset import catalog, commits, records
from audionet_tf.preparation import labelling

log = logging.getLogger("audionet_tf.beam_prepare")


def _beam():
    try:
        import apache_beam as beam
    except ImportError:
        raise AudioNetError("--runner needs Apache Beam: pip install -e .[beam] (and .[gcp] for gs:// outputs "
                            "or Dataflow)") from None
    return beam


def _config_from(doc: dict) -> cfg.PipelineConfig:
    """The pipeline settings, rebuilt on a worker from their plain-data form."""
    sections = {name: cfg.build_section(kind, doc[name], f"beam config [{name}]")
                for name, kind in cfg.SECTIONS.items()}
    return cfg.PipelineConfig(**sections, source=doc.get("source"))


def make_label_group(config_doc: dict, held_out: Sequence[str], keys: dict[str, str], weights: str | None,
                     beam_args: Sequence[str]):
    """The DoFn that labels and commits one group of clips (built here so that only Beam runs import Beam)."""
    beam = _beam()

    class LabelGroup(beam.DoFn):
        def setup(self):
            from apache_beam.options.pipeline_options import PipelineOptions

            self.config = _config_from(config_doc)
            if storage.is_remote(self.config.prepare.out):
                storage.use_beam_filesystems(PipelineOptions(list(beam_args)))
            self.labeller = labelling.Labeller(self.config, set(held_out), keys, weights)

        def process(self, group: dict[str, Any]):
            from audionet_tf.preparation.manifest import Clip

            pc = self.config.prepare
            # Commits only at the group's end or at a full shard: a retried bundle commits the same groups.
            writer = commits.CommitWriter(pc.out, shard_size=pc.shard_size, shard_clips=len(group["clips"]) + 1)
            try:
                for outcome in self.labeller.label_clips([Clip(**item) for item in group["clips"]]):
                    self.labeller.write(outcome, writer)
                writer.commit()
            except BaseException:
                writer.abort()
                raise
            yield len(group["clips"])

    return LabelGroup()


def run_beam(config: cfg.PipelineConfig, beam_args: Sequence[str] = (), weights: str | None = "imagenet"):
    """Prepare `config`'s dataset with Beam (runner from `prepare.runner`); returns the prepare Summary."""
    beam = _beam()
    from apache_beam.options.pipeline_options import PipelineOptions

    pc = config.prepare
    out = pc.out
    options = PipelineOptions(list(beam_args), runner=pc.runner, save_main_session=False)
    remote = storage.is_remote(out)
    if remote:
        from apache_beam.io.filesystems import FileSystems

        storage.use_beam_filesystems(options)
        try:
            FileSystems.get_filesystem(out)
        except ValueError:
            raise AudioNetError(f"--out {out}: Beam has no file system for it here; for gs:// install the gcp "
                                f"extra: pip install -e \".[gcp]\"") from None
    clips = labelling.list_clips(config)
    held_out = labelling.holdout_ids(clips, pc.holdout)
    keys = {c.id: labelling.clip_key(c, config, c.id in held_out) for c in clips}
    summary = labelling.Summary(out=out)
    with labelling.output_lock(out):
        try:
            done = commits.plan(out, keys, pc.overwrite, clean=not remote)
        except OSError as exc:
            raise AudioNetError(f"cannot read {out}: {exc}") from None
        todo = [c for c in clips if c.id not in done]
        summary.skipped = [c.id for c in clips if c.id in done]
        log.info("%d clips: %d to prepare, %d already committed", len(clips), len(todo), len(done))
        if todo:
            groups = [{"clips": [c.to_dict() for c in todo[i:i + pc.shard_clips]]}
                      for i in range(0, len(todo), pc.shard_clips)]
            label = make_label_group(config.to_dict(), sorted(held_out & {c.id for c in todo}),
                                     {c.id: keys[c.id] for c in todo}, weights, beam_args)
            try:
                with beam.Pipeline(options=options) as pipeline:
                    (pipeline
                     | "Groups" >> beam.Create(groups)
                     | "Spread" >> beam.Reshuffle()
                     | "Label and commit" >> beam.ParDo(label))
            except AudioNetError:
                raise
            except Exception as exc:  # the runner wraps a worker's failure in its own types
                raise AudioNetError(f"the Beam job failed: {exc}. The clips committed so far are kept; rerun the "
                                    f"same command to label the others") from None
        state = commits.finalise(out, len(clips), clean=not remote)
        records_by_id = {c.id: c for c in records.LazyClips(state.clip_docs())}
        outcomes = [records_by_id.get(c.id) for c in todo]
        summary.written = [r.id for r in outcomes if r is not None and r.ok]
        summary.failed = {r.id: r.error for r in outcomes if r is not None and r.status == "failed"}
        if not any(r.ok for r in records_by_id.values()):
            raise labelling.nothing_prepared(summary)
        description = catalog.read_description(out)
        summary.examples = {split: description.examples(split) for split in records.SPLITS}
    return summary
