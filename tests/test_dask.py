"""Data preparation on a Dask cluster started here: `dask scheduler` and two `dask worker` processes on 127.0.0.1.

The prepare command runs with `--runner DaskRunner --dask_client_address tcp://127.0.0.1:PORT`, as a user
would run it, and its output is compared, example by example, with the single-process path's.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from committed import example_multiset
from loopback import make_clip

from audionet_tf.core import config as cfg
from audionet_tf.dataset import catalog, commits
from audionet_tf.preparation import runner
from audionet_tf.preparation.beam import INDEX_POLL_S
from audionet_tf.preparation.manifest import make_clip as clip_entry
from audionet_tf.preparation.manifest import read_manifest

pytest.importorskip("apache_beam", reason="the beam extra is part of the test install")
distributed = pytest.importorskip("distributed", reason="the test extra installs Dask (apache-beam[dask])")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
       "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
COLOURS = ("red", "green", "blue", "yellow", "white", "black")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A Dask scheduler and its workers, each a separate process in its own session (killed whole at the end)."""

    def __init__(self, folder, workers: int = 2):
        self.folder = folder
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.logs = []
        # --idle-timeout and --death-timeout: a cluster this test fails to stop still ends by itself.
        self.scheduler = self._start("scheduler", ["scheduler", "--host", "127.0.0.1", "--port",
                                                   self.address.rsplit(":", 1)[1], "--no-dashboard",
                                                   "--idle-timeout", "900"])
        self.workers = [self.start_worker(i) for i in range(workers)]

    def _start(self, name, args):
        log = open(os.path.join(self.folder, f"{name}.log"), "w")
        self.logs.append(log)
        return subprocess.Popen([sys.executable, "-m", "dask", *args], env=ENV, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def start_worker(self, number):
        return self._start(f"worker-{number}", ["worker", self.address, "--nworkers", "1", "--nthreads", "1",
                                                "--no-nanny", "--no-dashboard", "--death-timeout", "120",
                                                "--local-directory", os.path.join(self.folder, f"w{number}")])

    def client(self):
        return distributed.Client(self.address, timeout=30, set_as_default=False)

    def wait_for_workers(self, count):
        with self.client() as client:
            client.wait_for_workers(count, timeout=60)

    def teachers_loaded(self) -> list[int]:
        """Per live worker, how many labellers in it have loaded their teacher (one per pipeline it ran)."""
        def loaded():
            from audionet_tf.preparation import beam

            return sum(1 for labeller in beam._WORKER_LABELLERS.values() if labeller.loaded)

        with self.client() as client:
            return sorted(client.run(loaded).values())

    def worker_running(self, group: int):
        """The worker process labelling group `group` now (the Dask task of a group is its partition), or None."""
        def executing(dask_worker):
            return [key[1] for key in (ts.key for ts in dask_worker.state.executing) if isinstance(key, tuple)]

        with self.client() as client:
            pids = client.run(os.getpid)
            running = client.run(executing)
        for address, groups in running.items():
            if group in groups:
                return next(p for p in self.workers if p.pid == pids[address])
        return None

    def stop(self):
        for process in [self.scheduler, *self.workers]:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for log in self.logs:
            log.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dask")
    running = Cluster(str(folder))
    try:
        running.wait_for_workers(2)
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Eight local clips (3 s of a colour and a tone each) and the single-process path's examples for them."""
    root = tmp_path_factory.mktemp("dask-clips")
    entries = []
    for i in range(8):
        colour = COLOURS[i % len(COLOURS)]
        path = make_clip(str(root / f"{i}-{colour}.mp4"), 3.0, video=f"color=c={colour}:size=32x24:rate=25",
                         audio=f"sine=frequency={300 + 50 * i}:sample_rate=16000")
        entries.append({"url": path, "start": 0, "duration": 3, "label": colour})
    runner.prepare(config(root / "single", entries, root / "cache"))
    return entries, root, example_multiset(str(root / "single"))


# The first clip is held out, by name, in every list: a held-out fraction holds out at least one clip of a short
# list, and which one can change as the list grows (a changed setting, which relabels that clip).
def held_out(first):
    return clip_entry(first["url"], first["start"], first["duration"], first["label"], "clips").id


def config(out, entries, cache):
    return cfg.PipelineConfig(prepare=cfg.PrepareConfig(
        out=str(out), cache_dir=str(cache), teacher="demo-colour", clips=tuple(entries), holdout=held_out(entries[0]),
        retries=0, shard_size=50, shard_clips=2))


def write_manifest(path, entries):
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("url,start,duration,label\n")
        handle.writelines(f"{e['url']},{e['start']},{e['duration']},{e['label']}\n" for e in entries)
    return str(path)


def command(manifest, out, cache, address, *extra):
    first = read_manifest(manifest)[0]
    return [sys.executable, "-m", "audionet_tf.prepare", "--manifest", manifest, "--teacher", "demo-colour",
            "--out", str(out), "--cache-dir", str(cache), "--holdout", first.id, "--retries", "0",
            "--shard-size", "50", "--shard-clips", "2", "--quiet", "--runner", "DaskRunner",
            "--dask_client_address", address, *extra]


def run(args, timeout=240):
    return subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=timeout)


def single_for(examples, ids):
    """The single-process path's examples of some clips."""
    return type(examples)({k: n for k, n in examples.items() if k[1] in ids})


def committed_ids(out):
    return {c.id for c in catalog.read_description(str(out)).clips if c.ok}


@pytest.mark.slow
def test_a_dask_cluster_prepares_the_same_examples_and_grows_the_output(cluster, clips, tmp_path):
    entries, root, single = clips
    out = tmp_path / "out"
    first = run(command(write_manifest(tmp_path / "four.csv", entries[:4]), out, tmp_path / "cache",
                        cluster.address))
    assert first.returncode == 0, first.stderr[-3000:]
    assert "written now: 4 clips" in first.stdout
    four = committed_ids(out)
    assert len(four) == 4 and example_multiset(out) == single_for(single, four)
    # Both workers labelled clips, and each loaded the teacher once for the pipeline (not once per group).
    assert cluster.teachers_loaded() == [1, 1]
    # The same output, a longer list: only the new clips are labelled.
    grown = run(command(write_manifest(tmp_path / "six.csv", entries[:6]), out, tmp_path / "cache",
                        cluster.address))
    assert grown.returncode == 0, grown.stderr[-3000:]
    assert "written now: 2 clips; already there: 4" in grown.stdout
    examples = example_multiset(out)
    assert max(examples.values()) == 1  # nothing labelled twice
    assert examples == single_for(single, committed_ids(out)) and len(committed_ids(out)) == 6
    description = catalog.read_description(str(out))
    catalog.verify_shards(str(out), description)
    assert description.finished["listed"] == 6 and description.finished["ok"] == 6


@pytest.mark.slow
def test_an_unreachable_scheduler_is_one_message_naming_it(tmp_path, clips):
    entries, _, _ = clips
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    result = run(command(write_manifest(tmp_path / "one.csv", entries[:1]), tmp_path / "out", tmp_path / "cache",
                         address), timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and address in errors[0] and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert elapsed < 60, elapsed  # the connection wait is bounded (10 s by default), not Dask's retries forever
    assert not os.path.exists(tmp_path / "out")  # refused before anything was written


@pytest.mark.slow
def test_a_worker_killed_mid_group_loses_nothing_and_duplicates_nothing(cluster, clips, tmp_path):
    """SIGKILL to the worker labelling a group whose first clip it has just committed: the engine runs the group
    again (its first clip committed twice) or the job stops with one message; the same command then completes
    with every clip committed once."""
    entries, _, single = clips
    out = tmp_path / "out"
    manifest = write_manifest(tmp_path / "eight.csv", entries)
    order = [clip.id for clip in read_manifest(manifest)]  # a fresh output: group g is clips 3g, 3g+1, 3g+2
    args = command(manifest, out, tmp_path / "cache", cluster.address, "--index-every", "1", "--shard-clips", "3")
    log = open(tmp_path / "first.log", "w")
    launcher = subprocess.Popen(args, env=ENV, stdout=log, stderr=subprocess.STDOUT)
    commit_dir = out / commits.COMMITS_DIR
    seen, victim, mid_run_index, first_commit = set(), None, None, None
    deadline = time.monotonic() + 180
    try:
        while launcher.poll() is None:
            assert time.monotonic() < deadline
            for name in sorted(os.listdir(commit_dir)) if commit_dir.is_dir() else ():
                if victim is not None or not name.endswith(".json") or name in seen:
                    continue
                seen.add(name)
                first_commit = first_commit or time.monotonic()
                ids = [c["id"] for c in json.loads((commit_dir / name).read_text())["clips"]]
                group = order.index(ids[0]) // 3
                if ids == [order[3 * group]] and group < 2:  # the first clip of a three-clip group
                    victim = cluster.worker_running(group)
                    if victim is not None:
                        os.killpg(victim.pid, signal.SIGKILL)
                        victim.wait()
            index = out / commits.INDEX_FILE
            if mid_run_index is None and index.exists():
                mid_run_index = json.loads(index.read_text())
            time.sleep(0.02)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        launcher.wait()
        log.close()
    committing_s = time.monotonic() - (first_commit or time.monotonic())
    first = (tmp_path / "first.log").read_text()
    assert victim is not None, "no worker was caught between two clips of a group: " + first[-2000:]
    # The engine retried the lost group, or the job stopped with one message.
    assert launcher.returncode == 0 or (launcher.returncode == 2 and first.count("error:") == 1), first[-3000:]
    assert "Traceback" not in first
    # While the workers committed, the launcher kept the index current (marked unfinished): it looks at most
    # once a second, at most a twentieth of its time, so a job that commits for a few seconds has one.
    assert mid_run_index is not None
    assert mid_run_index["finished"] is None or committing_s < 5 * INDEX_POLL_S, committing_s
    if launcher.returncode == 0:  # retried: already complete, the group's first clip once
        assert example_multiset(out) == single
    again = run(args)
    assert again.returncode == 0, again.stderr[-3000:]
    examples = example_multiset(out)
    assert max(examples.values()) == 1 and len(committed_ids(out)) == 8  # no example twice, no clip lost
    assert examples == single
    catalog.verify_shards(str(out), catalog.read_description(str(out)))
    assert not commits.read_state(str(out)).duplicates


@pytest.mark.slow
def test_a_dask_cluster_labels_with_an_onnx_teacher_as_one_process_does(cluster, clips, tmp_path):
    """An ONNX teacher (made here with tf2onnx, NCHW) on the workers: the same examples as one process, within
    the tolerance of `onnx_models` (the same onnxruntime on both sides; only the batches' make-up differs)."""
    pytest.importorskip("onnxruntime", reason="the test extra installs onnxruntime")
    pytest.importorskip("tf2onnx", reason="the test extra installs tf2onnx")
    from committed import by_frame
    from onnx_models import channels_first, export_onnx, same_labels, tiny_net

    entries, _, _ = clips
    teacher = export_onnx(channels_first(tiny_net()), tmp_path / "teacher.onnx")
    manifest = write_manifest(tmp_path / "three.csv", entries[:3])
    single = cfg.PipelineConfig(prepare=cfg.PrepareConfig(
        out=str(tmp_path / "single"), cache_dir=str(tmp_path / "cache"), teacher=teacher, manifest=manifest,
        holdout=read_manifest(manifest)[0].id, retries=0, shard_size=50, shard_clips=2, logits_format="float32"))
    runner.prepare(single)
    args = command(manifest, tmp_path / "dask", tmp_path / "cache", cluster.address, "--logits-format", "float32")
    args[args.index("--teacher") + 1] = teacher
    result = run(args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "written now: 3 clips" in result.stdout
    same_labels(by_frame(tmp_path / "dask"), by_frame(tmp_path / "single"))
