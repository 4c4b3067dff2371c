"""Data preparation on Apache Beam's DirectRunner, against the single-process path: same examples, resume, gs://."""
import os
import subprocess
import sys

import numpy as np
import pytest
from committed import example_multiset
from loopback import Server, make_clip

from audionet_tf.core import config as cfg, storage
from audionet_tf.dataset import catalog, commits, records
from audionet_tf.preparation import runner

beam = pytest.importorskip("apache_beam", reason="the beam extra is part of the test install")
TWO_WORKERS = ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("beam")
    www = root / "www"
    www.mkdir()
    make_clip(str(www / "red.mp4"), 3.0, video="color=c=red:size=32x24:rate=25")
    make_clip(str(www / "blue.mp4"), 3.0, video="color=c=blue:size=32x24:rate=30",
              audio="sine=frequency=900:sample_rate=44100")
    local = make_clip(str(root / "green.mp4"), 2.0, video="color=c=green:size=32x24:rate=25")
    server = Server(str(www))
    clips = ({"url": f"{server.url}/red.mp4", "start": 0.5, "duration": 2, "label": "red"},
             {"url": f"{server.url}/blue.mp4", "start": 0, "duration": 2.5, "label": "blue"},
             {"url": local, "start": 0, "duration": 2, "label": "green"},
             {"url": f"{server.url}/gone.mp4", "start": 0, "duration": 2, "label": "gone"})
    yield clips, root
    server.stop()


def config(out, clips, cache, runner=None):
    from audionet_tf.preparation.manifest import clips_from_entries

    red = clips_from_entries(clips[:1], "test")[0].id  # held out: in every list these tests use
    return cfg.PipelineConfig(prepare=cfg.PrepareConfig(
        out=str(out), cache_dir=str(cache), teacher="demo-colour", clips=tuple(clips), holdout=red, retries=0,
        shard_size=50, shard_clips=2, runner=runner))


@pytest.fixture(scope="module")
def single(served):
    clips, root = served
    summary = runner.prepare(config(root / "single", clips, root / "cache-single"))
    return summary, example_multiset(str(root / "single"))


@pytest.mark.slow
def test_direct_runner_resumes_grows_and_writes_the_same_examples(served, single, tmp_path):
    from audionet_tf.preparation.beam import run_beam

    clips, _ = served
    single_summary, single_examples = single
    out = tmp_path / "beam"
    first = run_beam(config(out, clips[:2], tmp_path / "cache", "DirectRunner"), TWO_WORKERS)
    assert sorted(first.written) == sorted(i for i in single_summary.written if "red" in i or "blue" in i)
    # The same output, a longer list: only the new clips are labelled, and added.
    grown = run_beam(config(out, clips, tmp_path / "cache", "DirectRunner"), TWO_WORKERS)
    assert sorted(grown.skipped) == sorted(first.written) and len(grown.written) == 1
    assert list(grown.failed) == list(single_summary.failed) and "404" in next(iter(grown.failed.values()))
    beam_examples = example_multiset(str(out))
    assert sum(beam_examples.values()) == 50 + 62 + 50 and max(beam_examples.values()) == 1
    assert beam_examples == single_examples  # every example, with its window and logits bytes
    description = catalog.read_description(str(out))
    catalog.verify_shards(str(out), description)
    assert {c.status for c in description.clips} == {"ok", "failed"} and description.finished["listed"] == 4
    # Nothing left to do: a third run labels nothing.
    again = run_beam(config(out, clips, tmp_path / "cache", "DirectRunner"), [])
    assert not again.written and len(again.skipped) == 3


def test_a_retried_bundle_does_not_duplicate_examples(served, single, tmp_path):
    """A bundle Beam retries runs the worker's group again: its second commit is ignored, then removed."""
    from audionet_tf.preparation.beam import make_group, make_label_group
    from audionet_tf.preparation.labelling import clip_key, holdout_ids
    from audionet_tf.preparation.manifest import clips_from_entries

    clips, _ = served
    _, single_examples = single
    conf = config(tmp_path / "beam", clips, tmp_path / "cache", "DirectRunner")
    listed = clips_from_entries(clips, "test")
    held_out = holdout_ids(listed, conf.prepare.holdout)
    keys = {c.id: clip_key(c, conf, c.id in held_out) for c in listed}
    label = make_label_group(conf.to_dict(), "imagenet", [])
    label.setup()
    for group in (listed[:2], listed[2:]):
        list(label.process(make_group(group, keys, held_out)))
    list(label.process(make_group(listed[:2], keys, held_out)))  # the retry of the first bundle
    out = str(tmp_path / "beam")
    # red fills a 50-example shard, so the group commits in two steps, and so does its retry.
    assert len(commits.read_state(out).duplicates) == 2
    assert example_multiset(out) == single_examples
    commits.finalise(out, len(listed))
    state = commits.read_state(out)
    assert not state.duplicates and example_multiset(out) == single_examples
    named = {s.file for s in state.shards()}
    assert {n for n in os.listdir(out) if n.endswith(records.SHARD_SUFFIX)} == named


@pytest.mark.slow
def test_beam_writes_commits_and_resumes_on_a_gcs_server(served, single, gcs_emulator, tmp_path, monkeypatch):
    from audionet_tf.preparation.beam import run_beam

    clips, _ = served
    _, single_examples = single
    monkeypatch.chdir(tmp_path)
    out = f"{gcs_emulator}/datasets/demo"
    args = []
    summary = run_beam(config(out, clips, tmp_path / "cache", "DirectRunner"), args)
    assert len(summary.written) == 3 and len(summary.failed) == 1
    assert not os.path.exists(tmp_path / "gs:"), "a gs:// path never becomes a local directory"
    # Copy the bucket's dataset here (through the same storage layer) and read it with TensorFlow.
    mirror = tmp_path / "mirror"
    for folder in ("", commits.COMMITS_DIR):
        remote = storage.join(out, folder) if folder else out
        os.makedirs(mirror / folder, exist_ok=True)
        for name in storage.list_sizes(remote):
            (mirror / folder / name).write_bytes(storage.read_bytes(storage.join(remote, name)))
    assert example_multiset(str(mirror)) == single_examples
    assert catalog.read_description(str(mirror)).finished["ok"] == 3
    before = commits.read_state(out).shards()
    again = run_beam(config(out, clips, tmp_path / "cache", "DirectRunner"), args)
    assert not again.written and len(again.skipped) == 3 and list(again.failed) == list(summary.failed)
    assert commits.read_state(out).shards() == before  # only the failed clip was tried again


def test_the_single_process_path_never_imports_beam(tmp_path):
    local = make_clip(str(tmp_path / "green.mp4"), 1.0, video="color=c=green:size=32x24:rate=25")
    script = ("import sys\nfrom audionet_tf.commands import prepare\n"
              f"code = prepare.main(['--manifest', {str(tmp_path / 'clips.csv')!r}, '--teacher', 'demo-colour', "
              f"'--out', {str(tmp_path / 'out')!r}, '--cache-dir', {str(tmp_path / 'cache')!r}])\n"
              "print(code, 'apache_beam' in sys.modules)\n")
    (tmp_path / "clips.csv").write_text(f"url,start,duration,label\n{local},0,1,green\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.stdout.split()[-2:] == ["0", "False"], result.stderr[-2000:]
    assert np.isclose(catalog.read_description(str(tmp_path / "out")).examples(), 25)


def test_setup_file_ships_the_package_to_remote_workers(tmp_path, monkeypatch):
    """What `--setup_file ./setup.py` makes Beam stage for Dataflow workers: an sdist of this package."""
    import tarfile

    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.stager import Stager

    root = os.path.join(os.path.dirname(__file__), "..")
    monkeypatch.chdir(root)
    staging = tmp_path / "staging"
    staging.mkdir()
    Stager.create_job_resources(PipelineOptions(["--setup_file", "./setup.py", "--sdk_location", "container"]),
                                str(staging))
    (sdist,) = [p for p in staging.iterdir() if p.name.endswith(".tar.gz")]
    with tarfile.open(sdist) as archive:
        names = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
    for module in ("preparation/beam", "preparation/labelling", "dataset/commits", "core/storage", "dataset/records",
                   "preparation/media", "preparation/teacher"):
        assert f"audionet_tf/{module}.py" in names
