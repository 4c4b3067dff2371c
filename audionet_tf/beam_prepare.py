"""Data preparation as an Apache Beam pipeline: the same stages and dataset format, on any Beam runner.

    python -m audionet_tf.prepare --pipeline pipelines/seed.toml --runner DirectRunner \\
        --direct_num_workers 2 --direct_running_mode multi_processing
    python -m audionet_tf.prepare --manifest audioset.csv --out gs://... --runner DataflowRunner --project ...

Clips are spread over workers (`Reshuffle`); each worker loads the teacher once
(`DoFn.setup`), downloads, decodes and labels whole clips, and emits serialized examples
per split, which Beam writes as TFRecord shards (Beam writes them under temporary names
and renames them when the job commits). Per-clip outcomes go to a side output. When the
job has finished, the shards are counted and checksummed and `dataset.json` is written
last, as in the single-process path. A clip that fails is recorded, not fatal. This module
is the only one that imports Apache Beam (`pip install -e .[beam]`).
"""
from __future__ import annotations

import glob
import json
import logging
import os
from typing import Sequence

from audionet_tf import config as cfg
from audionet_tf import records
from audionet_tf.errors import AudioNetError

log = logging.getLogger("audionet_tf.beam_prepare")

OUTCOMES = ".beam-outcomes"


def _beam():
    try:
        import apache_beam as beam
    except ImportError:
        raise AudioNetError("--runner needs Apache Beam: pip install -e .[beam]") from None
    return beam


class LabelClips:
    """Factory for the DoFn (kept out of module import so the single-process path never imports Beam)."""

    @staticmethod
    def make(config_doc: dict, weights: str | None):
        beam = _beam()

        class _LabelClip(beam.DoFn):
            def setup(self):
                from audionet_tf import download, teacher as teacher_lib

                self.config = _config_from(config_doc)
                pc = self.config.prepare
                self.teacher = teacher_lib.load_teacher(pc.teacher, pc.labels, weights=weights,
                                                        batch_size=pc.teacher_batch)
                self.downloader = download.Downloader(pc.cache_dir, retries=pc.retries, margin_s=pc.margin_s)
                self.spec = None

            def process(self, item):
                from audionet_tf import media, prepare
                from audionet_tf.manifest import Clip

                clip = Clip(**item["clip"])
                pc, ac = self.config.prepare, self.config.audio
                spec = prepare.dataset_spec(self.config, self.teacher)
                doc = {**clip.to_dict(), "split": item["split"], "key": item["key"]}
                try:
                    got = self.downloader.fetch(clip)
                    decoded = media.decode_clip(got.path, got.offset, clip.duration, ac, self.teacher.input_size)
                    windows, logits, times = prepare.label_clip(decoded, self.teacher, ac)
                except AudioNetError as exc:
                    yield beam.pvalue.TaggedOutput("outcomes", json.dumps(
                        {**doc, "status": "failed", "error": str(exc), "examples": 0}))
                    return
                for window, row, time in zip(windows, logits, times):
                    yield beam.pvalue.TaggedOutput(item["split"], records.make_example(
                        window, row, clip.id, float(time), spec))
                yield beam.pvalue.TaggedOutput("outcomes", json.dumps(
                    {**doc, "status": "ok", "error": None, "examples": int(len(windows))}))

        return _LabelClip()


def _config_from(doc: dict) -> cfg.PipelineConfig:
    """The pipeline settings, rebuilt on a worker from their plain-data form."""
    sections = {name: cfg.build_section(kind, doc[name], f"beam config [{name}]")
                for name, kind in cfg.SECTIONS.items()}
    return cfg.PipelineConfig(**sections, source=doc.get("source"))


def run_beam(config: cfg.PipelineConfig, beam_args: Sequence[str] = (), weights: str | None = "imagenet"):
    """Prepare `config`'s dataset with Beam (runner from `prepare.runner`); returns the prepare Summary."""
    beam = _beam()
    from apache_beam.options.pipeline_options import PipelineOptions

    from audionet_tf import prepare, teacher as teacher_lib

    pc, ac = config.prepare, config.audio
    clips = prepare.list_clips(config)
    held_out = prepare.holdout_ids(clips, pc.holdout)
    out = pc.out
    summary = prepare.Summary(out=out)
    with prepare.Lock(out):
        if os.path.isfile(os.path.join(out, records.DESCRIPTION_FILE)) and not pc.overwrite:
            raise AudioNetError(f"{out} already holds a dataset; the Beam path writes whole datasets: "
                                f"use --overwrite or another --out")
        teacher = teacher_lib.load_teacher(pc.teacher, pc.labels, weights=weights, batch_size=pc.teacher_batch)
        spec = prepare.dataset_spec(config, teacher)
        items = [{"clip": c.to_dict(), "split": "validation" if c.id in held_out else "train",
                  "key": prepare.clip_key(c, config)} for c in clips]
        expected = {split: sum(round(c.duration * ac.frames_per_second) for c, i in zip(clips, items)
                               if i["split"] == split) for split in records.SPLITS}
        token = os.urandom(4).hex()
        os.makedirs(out, exist_ok=True)
        options = PipelineOptions(list(beam_args), runner=pc.runner, save_main_session=False)
        doc = {**config.to_dict()}
        with beam.Pipeline(options=options) as pipeline:
            labelled = (pipeline
                        | "Clips" >> beam.Create(items)
                        | "Spread" >> beam.Reshuffle()
                        | "Label" >> beam.ParDo(LabelClips.make(doc, weights)).with_outputs(
                            "outcomes", *records.SPLITS))
            for split in records.SPLITS:
                shards = max(1, -(-expected[split] // pc.shard_size))
                (labelled[split]
                 | f"Write {split}" >> beam.io.WriteToTFRecord(
                     os.path.join(out, f"{split}-beam{token}"), file_name_suffix=records.SHARD_SUFFIX,
                     num_shards=shards))
            (labelled.outcomes | "Outcomes" >> beam.io.WriteToText(os.path.join(out, OUTCOMES + token)))

        outcomes = {}
        for path in glob.glob(os.path.join(out, OUTCOMES + token + "*")):
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        entry = json.loads(line)
                        outcomes[entry["id"]] = entry
            os.unlink(path)
        shard_infos = []
        for split in records.SPLITS:
            for path in sorted(glob.glob(os.path.join(out, f"{split}-beam{token}*{records.SHARD_SUFFIX}"))):
                count = len(records.read_examples(path, spec)["time"])
                if count == 0:
                    os.unlink(path)
                    continue
                shard_infos.append(records.ShardInfo(file=os.path.basename(path), split=split, examples=count,
                                                     sha256=records.file_sha256(path), bytes=os.path.getsize(path)))
        docs = [outcomes[c.id] for c in clips if c.id in outcomes]
        summary.written = [d["id"] for d in docs if d["status"] == "ok"]
        summary.failed = {d["id"]: d["error"] for d in docs if d["status"] == "failed"}
        if not summary.written:
            raise AudioNetError(f"no clip could be prepared into {out}: " +
                                "; ".join(f"{k}: {v}" for k, v in list(summary.failed.items())[:5]))
        records.write_class_names(out, teacher.class_names, spec)
        description = records.Description(spec=spec, shards=shard_infos, clips=docs, extra={
            "settings": {"teacher": pc.teacher, "labels": pc.labels, "holdout": pc.holdout, "runner": pc.runner}})
        records.write_description(out, description)
        referenced = {s.file for s in shard_infos}
        for name in os.listdir(out):
            if name.endswith(records.SHARD_SUFFIX) and name not in referenced:
                os.unlink(os.path.join(out, name))
        summary.examples = {split: description.examples(split) for split in records.SPLITS}
    return summary
