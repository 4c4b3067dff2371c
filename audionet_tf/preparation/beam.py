"""Data preparation as an Apache Beam pipeline: the same labelling core and commit format, on any Beam runner.

    python -m audionet_tf.prepare --pipeline seed --runner DirectRunner \\
        --direct_num_workers 2 --direct_running_mode multi_processing
    python -m audionet_tf.prepare --pipeline pipelines/seed.toml --runner DaskRunner \\
        --dask_client_address tcp://HOST:8786
    python -m audionet_tf.prepare --manifest vggsound.csv --out gs://BUCKET/vggsound --runner DataflowRunner \\
        --project P --region R --temp_location gs://BUCKET/tmp --setup_file ./setup.py

The launcher withdraws what is stale and lists the clips that are not committed yet (as the
single-process path does, without reading a shard), groups them (`prepare.shard_clips` per
group, each group carrying its clips' settings keys) and spreads the groups over workers. A
worker labels a group's clips with `labelling.Labeller` (one per worker process and pipeline,
so the teacher is loaded once per worker, on first use, even where the runner calls
`setup` for every bundle, as the Dask runner does) and commits them with
`commits.CommitWriter`: shards under unique names, then the commit record. A bundle that the
runner retries (a worker lost mid-group) commits the same group again under other names; the
duplicate is ignored by every reader and removed when the job ends. While the job runs the
launcher keeps the index current from the commit records (`commits.IndexKeeper`); at the end
it consolidates them into the index; it never reads a shard.

`--runner DaskRunner` (Beam's Dask runner, `pip install -e .[dask]`) runs on a Dask cluster
(`dask scheduler`, `dask worker`; see docs/scale-dask.md): one Dask task per group, and the
scheduler is reached once before anything is changed, so a wrong address is one message. This
module is the only one that imports Apache Beam (`pip install -e .[beam]`, `.[gcp]` for `gs://`
and Dataflow).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from typing import Any, Sequence

from audionet_tf.core import config as cfg, storage
from audionet_tf.core.errors import AudioNetError
from audionet_tf.dataset import catalog, commits, records
from audionet_tf.preparation import labelling, teacher as teacher_lib
from audionet_tf.preparation.manifest import Clip

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


# One labeller per worker process and pipeline: Dask runs setup() for every bundle, so the teacher
# would otherwise be loaded once per group of clips. Only the latest pipeline's is kept, so a
# long-lived worker that serves many jobs holds one teacher, not one per job.
_WORKER_LABELLERS: dict[str, labelling.Labeller] = {}
_WORKER_LOCK = threading.Lock()


def worker_labeller(config_doc: dict, weights: str | None) -> labelling.Labeller:
    """This process's labeller for a pipeline: each worker loads the teacher once, whatever its number of bundles."""
    key = json.dumps([config_doc, weights], sort_keys=True, default=str)
    with _WORKER_LOCK:
        labeller = _WORKER_LABELLERS.get(key)
        if labeller is None:
            labeller = labelling.Labeller(_config_from(config_doc), set(), {}, weights)
            _WORKER_LABELLERS.clear()
            _WORKER_LABELLERS[key] = labeller
    return labeller


def make_group(clips: Sequence[Clip], keys: dict[str, str], held_out: set[str]) -> dict[str, Any]:
    """One unit of work: clips with their settings keys and held-out flags (plain data, small to ship)."""
    return {"clips": [c.to_dict() for c in clips], "keys": {c.id: keys[c.id] for c in clips},
            "held_out": sorted(c.id for c in clips if c.id in held_out)}


def make_label_group(config_doc: dict, weights: str | None, beam_args: Sequence[str]):
    """The DoFn that labels and commits one group of clips (built here so that only Beam runs import Beam)."""
    beam = _beam()

    class LabelGroup(beam.DoFn):
        def setup(self):
            from apache_beam.options.pipeline_options import PipelineOptions

            self.config = _config_from(config_doc)
            if storage.is_remote(self.config.prepare.out):
                storage.use_beam_filesystems(PipelineOptions(list(beam_args)))
            self.labeller = worker_labeller(config_doc, weights)

        def process(self, group):  # a make_group dict (no annotation: Beam logs a line per string type hint)
            pc = self.config.prepare
            labeller = self.labeller
            labeller.keys.update(group["keys"])
            held = set(group["held_out"])
            for clip_id in group["keys"]:
                (labeller.held_out.add if clip_id in held else labeller.held_out.discard)(clip_id)
            # Commits only at the group's end or at a full shard: a retried bundle commits the same groups.
            writer = commits.CommitWriter(pc.out, shard_size=pc.shard_size, shard_clips=len(group["clips"]) + 1)
            try:
                with contextlib.closing(labeller.label_clips([Clip(**item) for item in group["clips"]])) as outcomes:
                    for outcome in outcomes:
                        labeller.write(outcome, writer)
                writer.commit()
            except BaseException:
                writer.abort()
                raise
            yield len(group["clips"])

    return LabelGroup()


DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
DASK_CONNECT_TIMEOUT_S = 10  # Dask's own default is 30 s of retries; a wrong address should say so sooner
# How often the launcher looks at the workers' commits: at most once a second, and never spending more
# than a twentieth of its time on it (a listing of thousands of records on an object store takes seconds).
INDEX_POLL_S = 1.0
INDEX_POLL_SHARE = 20


def runner_path(name: str) -> str:
    """Beam's runner name for `--runner`: Beam does not know the Dask runner by its short name."""
    return DASK_RUNNER if name.lower() in ("daskrunner", "dask") else name


def dask_args(beam_args: Sequence[str]) -> list[str]:
    """The Dask runner's options with this project's defaults: one task per group, a bounded connection wait."""
    try:
        from apache_beam.runners.dask.dask_runner import DaskOptions
        import distributed  # noqa: F401
    except ImportError:
        raise AudioNetError("--runner DaskRunner needs Dask: pip install -e \".[dask]\"") from None
    from apache_beam.options.pipeline_options import PipelineOptions

    args = list(beam_args)
    dask = PipelineOptions(args).view_as(DaskOptions)
    if dask.npartitions is None and dask.partition_size is None:
        # Beam's default puts up to 128 groups in one Dask task, so a short list would run on one worker.
        args += ["--dask_partition_size", "1"]
    if dask.timeout is None:
        args += ["--dask_connection_timeout", str(DASK_CONNECT_TIMEOUT_S)]
    return args


def check_dask_cluster(options) -> None:
    """Reach the scheduler once before anything is changed: one message when it is not there or has no workers."""
    import distributed
    from apache_beam.runners.dask.dask_runner import DaskOptions

    dask = options.view_as(DaskOptions)
    if not dask.address and not dask.scheduler_file:
        return  # Beam starts a local Dask cluster in this process
    where = dask.address or f"the scheduler file {dask.scheduler_file}"
    timeout = dask.timeout if isinstance(dask.timeout, int) else DASK_CONNECT_TIMEOUT_S
    try:
        client = distributed.Client(address=dask.address, scheduler_file=dask.scheduler_file, timeout=timeout,
                                    set_as_default=False)
    except (OSError, ValueError) as exc:
        raise AudioNetError(f"cannot reach the Dask scheduler at {where} (--dask_client_address): {exc}. Start it "
                            f"with `dask scheduler` and its workers with `dask worker ADDRESS`, or fix the "
                            f"address") from None
    try:
        try:
            client.wait_for_workers(1, timeout=timeout)
        except (TimeoutError, OSError):
            raise AudioNetError(f"the Dask scheduler at {where} has no workers (waited {timeout} s): start them "
                                f"with `dask worker {dask.address or 'ADDRESS'}`") from None
        log.info("Dask scheduler at %s: %d workers", where, len(client.scheduler_info().get("workers", {})))
    finally:
        client.close()


def _run_pipeline(beam, options, groups: list[dict[str, Any]], label) -> None:
    pipeline = beam.Pipeline(options=options)
    (pipeline
     | "Groups" >> beam.Create(groups)
     | "Spread" >> beam.Reshuffle()
     | "Label and commit" >> beam.ParDo(label))
    result = pipeline.run()
    try:
        result.wait_until_finish()
    finally:
        client = getattr(result, "client", None)  # the Dask runner's connection to the scheduler
        if client is not None:
            client.close()


class IndexWatch:
    """The launcher's watch over the workers' commits: keeps the index current (see `commits.IndexKeeper`)."""

    def __init__(self, keeper: commits.IndexKeeper):
        self.keeper = keeper
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="index", daemon=True)

    def _run(self) -> None:
        wait = INDEX_POLL_S
        while not self.stop.wait(wait):
            started = time.monotonic()
            try:
                self.keeper.poll()
            except Exception as exc:  # the index is a cache: a failed refresh costs readers time, never data
                log.warning("could not refresh the index of %s: %s", self.keeper.directory, exc)
            wait = max(INDEX_POLL_S, INDEX_POLL_SHARE * (time.monotonic() - started))

    def __enter__(self):
        if self.keeper.every:
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()


def _for_workers(config: cfg.PipelineConfig) -> cfg.PipelineConfig:
    """The settings as workers need them: local paths made absolute, since a worker's directory is its own."""
    pc = config.prepare
    paths = {name: os.path.abspath(getattr(pc, name)) for name in ("out", "cache_dir")
             if not storage.is_remote(getattr(pc, name))}
    # A teacher file (.keras, .onnx, a SavedModel) and a labels file given relative to here.
    named = (*teacher_lib.REGISTRY_NAMES, teacher_lib.DEMO_TEACHER)
    paths.update({name: os.path.abspath(getattr(pc, name)) for name in ("teacher", "labels")
                  if getattr(pc, name) and getattr(pc, name) not in named and os.path.exists(getattr(pc, name))})
    return cfg.override(config, "prepare", paths)


def run_beam(config: cfg.PipelineConfig, beam_args: Sequence[str] = (), weights: str | None = "imagenet"):
    """Prepare `config`'s dataset with Beam (runner from `prepare.runner`); returns the prepare Summary."""
    beam = _beam()
    from apache_beam.options.pipeline_options import PipelineOptions

    pc = config.prepare
    out = pc.out
    runner = runner_path(pc.runner)
    if runner == DASK_RUNNER:
        beam_args = dask_args(beam_args)
    options = PipelineOptions(list(beam_args), runner=runner, save_main_session=False)
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
    if runner == DASK_RUNNER:
        check_dask_cluster(options)
    with labelling.output_lock(out):
        try:
            done = commits.plan(out, keys, pc.overwrite, clean=not remote)
        except OSError as exc:
            raise AudioNetError(f"cannot read {out}: {exc}") from None
        todo = [c for c in clips if c.id not in done]
        summary.skipped = [c.id for c in clips if c.id in done]
        log.info("%d clips: %d to prepare, %d already committed", len(clips), len(todo), len(done))
        if todo:
            groups = [make_group(todo[i:i + pc.shard_clips], keys, held_out)
                      for i in range(0, len(todo), pc.shard_clips)]
            label = make_label_group(_for_workers(config).to_dict(), weights, beam_args)
            keeper = commits.IndexKeeper(out, pc.index_every)
            keeper.start()
            try:
                with IndexWatch(keeper):
                    _run_pipeline(beam, options, groups, label)
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
        summary.shortened = {r.id: labelling.shortened_note(r) for r in outcomes if r is not None and r.ok
                             and r.shortened}
        if not any(r.ok for r in records_by_id.values()):
            raise labelling.nothing_prepared(summary)
        description = catalog.read_description(out)
        summary.examples = {split: description.examples(split) for split in records.SPLITS}
    return summary
