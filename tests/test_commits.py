"""Crash safety and resume of `prepare`: real SIGKILLs, torn records, lost shards, two writers, a full disk."""
import collections
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from committed import example_multiset
from loopback import make_clip
from writes import renames_left_unsynced_in_their_directory, renames_under, run_recording, unsynced_renames

from audionet_tf.core.config import PrepareConfig
from audionet_tf.core.errors import AudioNetError, DatasetError
from audionet_tf.dataset import catalog, commits, reader, records
from audionet_tf.commands import prepare as prepare_cmd
from audionet_tf.preparation import runner
from audionet_tf.preparation.manifest import read_manifest

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
COLOURS = ("red", "green", "blue", "yellow", "white", "black")


@pytest.fixture(scope="module")
def clip_list(tmp_path_factory):
    """Twelve one-second local clips of plain colours (the demo teacher's classes), in a project CSV."""
    root = tmp_path_factory.mktemp("clips")
    rows = ["url,start,duration,label"]
    for i in range(12):
        colour = COLOURS[i % len(COLOURS)]
        make_clip(str(root / f"{i:02d}-{colour}.mp4"), 1.0, video=f"color=c={colour}:size=32x24:rate=25",
                  audio=f"sine=frequency={200 + 50 * i}:sample_rate=16000")
        rows.append(f"{i:02d}-{colour}.mp4,0,1,{colour}")
    (root / "clips.csv").write_text("\n".join(rows) + "\n")
    return str(root / "clips.csv")


def flags(manifest, out, cache):
    return ["--manifest", manifest, "--teacher", "demo-colour", "--out", str(out), "--cache-dir", str(cache),
            "--shard-clips", "2", "--holdout", "0.25"]


def config_for(manifest, out, cache, holdout=None):
    extra = ["--holdout", holdout] if holdout else []
    return prepare_cmd.resolve_config(prepare_cmd.build_parser().parse_args([*flags(manifest, out, cache), *extra]))


def first_four(clip_list):
    """The first four clips of the list, and the id of one to hold out in both lists.

    A held-out fraction holds out at least one clip of a short list, and which one can change as the list
    grows (a changed setting, which withdraws that clip's commit and relabels it): naming it keeps it.
    """
    path = os.path.join(os.path.dirname(clip_list), "first-four.csv")
    with open(clip_list) as whole, open(path, "w") as part:
        part.write("".join(whole.readlines()[:5]))
    return path, read_manifest(path)[0].id


def committed_ok(directory):
    try:
        description = catalog.read_description(str(directory))
    except DatasetError:
        return set()
    return {c.id for c in description.clips if c.status == "ok"}


def check_consistent(directory):
    """What is committed is whole: every committed clip's examples are in the committed shards, once."""
    try:
        description = catalog.read_description(str(directory))
    except DatasetError as exc:
        assert "no clip of it is committed" in str(exc) or "no committed examples" in str(exc)
        return
    catalog.verify_shards(str(directory), description, checksums=True)
    counts = collections.Counter(key[1] for key in example_multiset(directory).elements())
    assert counts == {c.id: c.examples for c in description.clips if c.status == "ok"}
    # The training input reads exactly the committed examples, whatever else lies in the directory.
    batches = reader.make_dataset(str(directory), "all", 64, reader.ReadOptions(shuffle=False))
    read = sum(int(x.shape[0]) for x, _ in batches)
    assert read == sum(counts.values())


# Runs prepare with every rename held back 1 s by an audit hook (`os.rename` is raised before
# `os.rename`/`os.replace` run): the moment between a shard's rename and its commit record's then
# lasts long enough to be seen and killed from outside, and prepare's own code path is unchanged.
SLOW_RENAMES = """
import runpy, sys, time

def hold_renames(event, args):
    if event == "os.rename":
        time.sleep(1.0)

sys.addaudithook(hold_renames)
sys.argv[0] = "audionet_tf.prepare"
runpy.run_module("audionet_tf.prepare", run_name="__main__", alter_sys=True)
"""


def start(manifest, out, cache, log, slow_renames=False):
    """A prepare process whose output goes to a file (a pipe nobody reads could stall it).

    With `slow_renames` every rename it makes is held back 1 s (see SLOW_RENAMES).
    """
    launcher = ["-c", SLOW_RENAMES] if slow_renames else ["-m", "audionet_tf.prepare"]
    command = [sys.executable, *launcher, *flags(manifest, out, cache)]
    with open(log, "w") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(command, env=ENV, stdout=handle, stderr=subprocess.STDOUT)


def wait_for(process, condition, timeout=120):
    """Poll `condition` until it holds or the process ends; True when it held while the process ran."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if condition():
            return True
        time.sleep(0.005)
    return False


def kill(pid):
    """SIGKILL `pid`; False when it had already ended (a loaded machine can be slower than a run)."""
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


def shard_names(out):
    return {n for n in os.listdir(out) if n.endswith(records.SHARD_SUFFIX)} if os.path.isdir(out) else set()


def uncommitted_shard(out, old=frozenset()):
    """A new shard already under its final name that no commit record names yet (the middle of a commit)."""
    if not os.path.isdir(out):
        return False
    shards = shard_names(out) - old
    named = set()
    # A record still under its temporary name (whole, its rename held back) commits nothing.
    for name in commits.record_names(out):
        try:
            named |= {s["file"] for s in json.loads(open(os.path.join(out, "commits", name)).read())["shards"]}
        except (OSError, ValueError, KeyError):
            pass
    return bool(shards - named)


def record_in_writing(out):
    """A commit record whole under its temporary name, its rename still to come."""
    folder = os.path.join(out, "commits")
    return os.path.isdir(folder) and any(n.endswith(".tmp") for n in os.listdir(folder))


def commit_count(out):
    return len(commits.record_names(out))


@pytest.mark.slow
def test_killed_prepares_lose_only_open_groups_and_resume_labels_only_the_rest(clip_list, tmp_path):
    reference = tmp_path / "reference"
    runner.prepare(config_for(clip_list, reference, tmp_path / "cache"))
    expected = example_multiset(reference)
    assert sum(expected.values()) == 12 * 25

    out = str(tmp_path / "data")
    rng = random.Random(0)
    # Labelling batches frames across clips, so several groups can be committed within a few milliseconds:
    # the kills that must find work left run with renames held back (see SLOW_RENAMES), the middle of a
    # commit first, while all six groups are still to come.
    kills = [("mid-commit", True, lambda p, old, n: wait_for(p, lambda: uncommitted_shard(out, old) and
                                                             record_in_writing(out))),
             ("first commit", True, lambda p, old, n: wait_for(p, lambda: commit_count(out) >= n + 1)),
             ("fourth commit", False, lambda p, old, n: wait_for(p, lambda: commit_count(out) >= 4)),
             ("random", False, lambda p, old, n: time.sleep(rng.uniform(0.0, 3.0)))]
    killed_with_work_left = 0
    for number, (moment, slow, kill_when) in enumerate(kills):
        before = committed_ok(out)
        log = tmp_path / f"run-{number}.log"
        old = frozenset(shard_names(out))
        process = start(clip_list, out, tmp_path / "cache", log, slow_renames=slow)
        seen = kill_when(process, old, commit_count(out))
        assert seen or not slow, f"{moment}: renames held back, yet not seen (exit {process.poll()}): " \
                                 f"{log.read_text()[-3000:]}"
        if process.poll() is None and kill(process.pid):
            killed_with_work_left += 1
            if moment == "mid-commit":  # killed in the middle of a commit: a shard in place that no record names
                                        # (its record whole, but under its temporary name)
                assert uncommitted_shard(out, old)
        process.wait(timeout=60)
        output = log.read_text()
        check_consistent(out)
        after = committed_ok(out)
        assert before <= after, "a kill never loses a committed clip"
        if process.returncode == 0:  # it finished before the kill: it labelled exactly what was not committed
            assert f"already there: {len(before)};" in output
    assert killed_with_work_left >= 2
    # The same command again labels only what is not committed, and the result is the clean run's.
    left = 12 - len(committed_ok(out))
    result = subprocess.run([sys.executable, "-m", "audionet_tf.prepare", *flags(clip_list, out, tmp_path / "cache")],
                            env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"written now: {left} clips; already there: {12 - left};" in result.stdout
    assert example_multiset(out) == expected
    assert catalog.read_description(out).finished["ok"] == 12
    leftovers = [n for n in os.listdir(out) if n.endswith(".tmp") or
                 (n.endswith(records.SHARD_SUFFIX) and n not in {s.file for s in catalog.read_description(out).shards})]
    leftovers += [n for n in os.listdir(os.path.join(out, "commits")) if n.endswith(".tmp")]
    assert not leftovers


def test_torn_record_and_lost_shards_are_named_and_a_rerun_repairs_them(clip_list, tmp_path):
    out = tmp_path / "data"
    config = config_for(clip_list, out, tmp_path / "cache")
    runner.prepare(config)
    expected = example_multiset(out)
    names = sorted(os.listdir(out / "commits"))
    assert len(names) == 6  # 12 clips, 2 per group
    # A torn commit record (of a run that did not finish, so no index holds a copy of it):
    # readers name it and say what to do.
    (out / commits.INDEX_FILE).unlink()
    torn = out / "commits" / names[1]
    torn_clips = {c["id"] for c in json.loads(torn.read_text())["clips"]}
    torn.write_text(torn.read_text()[:40])
    with pytest.raises(DatasetError, match="torn") as info:
        reader.make_dataset(str(out))
    assert names[1] in str(info.value) and "rerun the same prepare command" in str(info.value)
    # A shard that a commit names goes missing, another is cut short.
    record = json.loads((out / "commits" / names[3]).read_text())
    (out / record["shards"][0]["file"]).unlink()
    lost_clips = {c["id"] for c in record["clips"]}
    cut = json.loads((out / "commits" / names[4]).read_text())
    shard = out / cut["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:100])
    cut_clips = {c["id"] for c in cut["clips"]}
    torn.unlink()  # readers now see the missing shard
    with pytest.raises(DatasetError, match="missing") as info:
        reader.make_dataset(str(out), "all")
    assert record["shards"][0]["file"] in str(info.value)
    torn.write_text("{")
    summary = runner.prepare(config)
    assert set(summary.written) == torn_clips | lost_clips | cut_clips
    assert len(summary.skipped) == 12 - len(summary.written)
    assert example_multiset(out) == expected


# Runs prepare and SIGKILLs it at the moment its new index replaces the old one: the new index is written in
# full under its temporary name, and the rename is what the audit hook (raised before it runs) stops.
KILL_AT_INDEX = """
import os, runpy, signal, sys

def kill_at_index(event, args):
    if event == "os.rename" and os.path.basename(os.fsdecode(args[1])) == "index.json":
        os.kill(os.getpid(), signal.SIGKILL)

sys.addaudithook(kill_at_index)
sys.argv[0] = "audionet_tf.prepare"
runpy.run_module("audionet_tf.prepare", run_name="__main__", alter_sys=True)
"""


def test_a_kill_while_the_index_is_written_leaves_the_older_index_and_readers_use_the_records(
        clip_list, tmp_path, caplog):
    four, held_out = first_four(clip_list)
    out, cache = tmp_path / "data", tmp_path / "cache"
    runner.prepare(config_for(four, out, cache, held_out))
    older = (out / commits.INDEX_FILE).read_bytes()
    killed = subprocess.run([sys.executable, "-c", KILL_AT_INDEX, *flags(clip_list, out, cache), "--holdout", held_out],
                            env=ENV, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (out / commits.INDEX_FILE).read_bytes() == older
    assert [n for n in os.listdir(out) if n.startswith(".index.json.")]  # the new one, never renamed
    # Readers take the older index and the records it lacks: every clip, and say the run has not finished.
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert len(committed_ok(out)) == 12
    assert "its preparation has not finished (or is running); using the 12 clips committed so far" in caplog.text
    assert "rerun the same prepare command" in caplog.text
    check_consistent(out)
    # The same command labels nothing and writes the new index.
    summary = runner.prepare(config_for(clip_list, out, cache, held_out))
    assert not summary.written and len(summary.skipped) == 12
    assert len(json.loads((out / commits.INDEX_FILE).read_text())["commits"]) == commit_count(out) == 6
    assert not [n for n in os.listdir(out) if n.startswith(".index.json.")]
    caplog.clear()
    with caplog.at_level("WARNING"):
        committed_ok(out)
    assert "has not finished" not in caplog.text


def test_a_resume_with_nothing_to_do_does_not_import_tensorflow(clip_list, tmp_path):
    out, cache = tmp_path / "data", tmp_path / "cache"
    runner.prepare(config_for(clip_list, out, cache))
    # -X importtime lists every module the command imports, on stderr.
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "audionet_tf.prepare",
                           *flags(clip_list, out, cache)], env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    imported = [line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    assert "audionet_tf.preparation.runner" in imported
    assert not [name for name in imported if name.split(".")[0] in ("tensorflow", "keras")]
    assert "12 already committed" in done.stderr and "0 to prepare" in done.stderr


@pytest.mark.slow
def test_a_prepare_adding_clips_does_not_disturb_a_training_reading_the_dataset(clip_list, tmp_path):
    """Training takes the shards committed when it starts; a prepare committing more clips meanwhile (and
    removing files no record names) leaves it running to its end on what it took."""
    four, held_out = first_four(clip_list)
    out, cache = tmp_path / "data", tmp_path / "cache"
    runner.prepare(config_for(four, out, cache, held_out))
    before = catalog.read_description(str(out))
    training = subprocess.Popen(
        [sys.executable, "-m", "audionet_tf.train", "--data", str(out), "--epochs", "60", "--batch-size", "8",
         "--cache", "none", "--quiet", "--no-export", "--no-report", "--name", "reader", "--checkpoint-every", "1"],
        cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(training, lambda: (tmp_path / "runs" / "reader" / "backup" / "state.json").exists(), 240)
        summary = runner.prepare(config_for(clip_list, out, cache, held_out))
        assert len(summary.written) == 8 and len(summary.skipped) == 4
        assert training.poll() is None, "the training ended before the prepare did: nothing was tested"
        err = training.communicate(timeout=600)[1]
    finally:
        training.kill()
    assert training.returncode == 0, err[-3000:]
    config = json.loads((tmp_path / "runs" / "reader" / "config.json").read_text())
    assert config["dataset"]["train_examples"] == before.examples("train") < \
        catalog.read_description(str(out)).examples("train")


def test_commits_are_fsynced_before_their_rename(clip_list, tmp_path):
    """A commit survives a power cut only if its shards and record reach the disk before the rename names them."""
    out = tmp_path / "data"
    done, events = run_recording("audionet_tf.prepare", flags(clip_list, out, tmp_path / "cache"),
                                 str(tmp_path / "writes.json"), str(tmp_path), ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    renamed = [os.path.relpath(dst, out) for _, dst in renames_under(events, str(out))]
    assert sum(n.startswith("commits" + os.sep) for n in renamed) == 6
    assert sum(n.endswith(records.SHARD_SUFFIX) for n in renamed) == len(catalog.read_description(str(out)).shards)
    assert unsynced_renames(events, str(out)) == []
    assert renames_left_unsynced_in_their_directory(events, str(out)) == []


def test_a_second_prepare_on_the_same_directory_is_refused_until_the_first_dies(clip_list, tmp_path):
    out = tmp_path / "data"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom audionet_tf.core.lock import DirectoryLock\n"
                               f"DirectoryLock({str(out)!r}, '.prepare.lock', 'prepared').acquire()\n"
                               "print('held', flush=True)\ntime.sleep(600)\n"], env=ENV, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(AudioNetError, match=f"being prepared by process {holder.pid}"):
            runner.prepare(config_for(clip_list, out, tmp_path / "cache"))
        assert not (out / records.DESCRIPTION_FILE).exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert len(runner.prepare(config_for(clip_list, out, tmp_path / "cache")).written) == 12


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_stops_with_one_message_and_keeps_every_committed_clip(clip_list, tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mount)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        out = mount / "data"
        result = subprocess.run([sys.executable, "-m", "audionet_tf.prepare",
                                 *flags(clip_list, out, tmp_path / "cache")], env=ENV, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 2
        assert "cannot write to" in result.stderr and "No space left" in result.stderr and \
            "rerun the same command" in result.stderr and "Traceback" not in result.stderr
        kept = committed_ok(out)
        assert 0 < len(kept) < 12
        check_consistent(out)
        assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
        subprocess.run(["mount", "-o", "remount,size=4m", str(mount)], check=True)
        summary = runner.prepare(config_for(clip_list, out, tmp_path / "cache"))
        assert set(summary.skipped) == kept and len(summary.written) == 12 - len(kept)
        check_consistent(out)
    finally:
        subprocess.run(["umount", str(mount)])


def test_a_killed_prepare_left_its_index_at_most_index_every_records_behind(clip_list, tmp_path):
    """The single-process launcher rewrites the index as it commits (every `--index-every` records, here 2): after
    a SIGKILL the index, marked unfinished, names all but at most 2 of the commit records."""
    out, log = tmp_path / "out", tmp_path / "prepare.log"
    command = [sys.executable, "-c", SLOW_RENAMES, *flags(clip_list, out, tmp_path / "cache"), "--shard-clips", "1",
               "--index-every", "2"]
    with open(log, "w") as handle:
        process = subprocess.Popen(command, env=ENV, stdout=handle, stderr=subprocess.STDOUT)
    commit_dir = out / commits.COMMITS_DIR

    def records_now():
        return {n for n in os.listdir(commit_dir) if n.endswith(".json")} if commit_dir.is_dir() else set()

    try:
        assert wait_for(process, lambda: len(records_now()) >= 7), log.read_text()[-2000:]
    finally:
        kill(process.pid)
        process.wait()
    index = json.loads((out / commits.INDEX_FILE).read_text())
    assert index["finished"] is None
    left_out = records_now() - set(index["commits"])
    assert len(left_out) <= 2 and len(index["commits"]) >= 5, (sorted(left_out), sorted(index["commits"]))
    check_consistent(out)


def write_synthetic_dataset(directory) -> None:
    """A finished dataset's header and index for 200,000 clips in 12,500 commits of 16 (no shards)."""
    spec = records.DatasetSpec(num_classes=1000, teacher="EfficientNetV2B0")
    commits.write_header(str(directory), spec, None, {"settings": {"teacher": "EfficientNetV2B0"}})
    os.makedirs(directory / "commits")
    accepted = []
    for g in range(12500):
        clips = [{"id": f"vid{g:05d}x{k:02d}_30000_10000", "url": f"https://www.youtube.com/watch?v=vid{g:05d}x{k:02d}",
                  "start": 30.0, "duration": 10.0, "label": "waterfall burbling", "source": "youtube",
                  "video_id": f"vid{g:05d}x{k:02d}", "row": g * 16 + k, "split": "train", "key": "0123456789abcdef",
                  "status": "ok", "error": None, "examples": 250} for k in range(16)]
        shard = {"file": f"train-tok-{g:05d}.tfrecord", "split": "train", "examples": 4000, "sha256": "0" * 64,
                 "bytes": 4000 * 3400}
        name = f"c-20260101T000000000000-tok-{g:05d}.json"
        (directory / "commits" / name).write_text("")  # the listing is what the reader checks; the index holds them
        accepted.append((name, {"format": commits.RECORD_FORMAT, "writer": "tok", "shards": [shard],
                                "clips": clips}))
    state = commits.State(header=None, accepted=accepted)
    commits.write_index(str(directory), state, {"listed": 200000, "ok": 200000, "failed": 0})


@pytest.mark.slow
def test_a_description_of_200000_clips_loads_fast_and_small(tmp_path):
    """A synthetic finished dataset (header + index, 12,500 commits of 16 clips): under 2 s and 500 MB."""
    write_synthetic_dataset(tmp_path)
    # VmHWM: this process's peak resident memory (ru_maxrss would include the forking pytest's).
    script = ("import sys, time\nstart = time.perf_counter()\nfrom audionet_tf.dataset import catalog\n"
              "d = catalog.read_description(sys.argv[1])\nseconds = time.perf_counter() - start\n"
              "peak = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
              "print(len(d.clips), d.examples(), d.finished['ok'], seconds, peak / 1024)\n")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=ENV, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    clips, count, ok, seconds, peak_mb = result.stdout.split()
    assert (int(clips), int(count), int(ok)) == (200000, 200000 * 250, 200000)
    assert float(seconds) < 2.0 and float(peak_mb) < 500, (seconds, peak_mb)

# A launcher that commits groups of 16 one-example clips until it is killed, keeping the index current.
COMMITTER = """
import sys
import numpy as np
from audionet_tf.dataset import commits, records
out, every = sys.argv[1], int(sys.argv[2])
spec = records.DatasetSpec(num_classes=1000, teacher="EfficientNetV2B0")
keeper = commits.IndexKeeper(out, every)
keeper.start()
writer = commits.CommitWriter(out, shard_size=10 ** 6, shard_clips=16, on_commit=keeper.committed)
window, logits = np.zeros(spec.window_samples, np.float32), np.zeros(1000, np.float32)
for n in range(10 ** 9):
    doc = {"id": f"new{n:07d}_0_10000", "url": f"https://example.org/new{n}.mp4", "start": 0.0, "duration": 10.0,
           "label": "x", "row": n, "split": "train", "key": "0123456789abcdef", "status": "ok", "error": None,
           "examples": 1}
    writer.add(doc, spec, [window], [logits], [0.0], ["train"])
"""
# The first read after the kill: how many commit records it opens (an audit hook sees every open).
FIRST_READ = """
import sys, time
opened = []
sys.addaudithook(lambda event, args: opened.append(args[0]) if event == "open" and "/commits/c-" in str(args[0])
                 else None)
start = time.perf_counter()
from audionet_tf.dataset import catalog
d = catalog.read_description(sys.argv[1])
seconds = time.perf_counter() - start
print(len(d.clips), len(opened), d.finished is None, seconds)
"""


@pytest.mark.slow
def test_a_killed_200000_clip_run_is_first_read_through_its_index(tmp_path):
    """A run growing a 200,000-clip dataset keeps its index current: after a SIGKILL, the first read opens at most
    `prepare.index_every` commit records (128 by default), not every record since the run began."""
    every = PrepareConfig().index_every
    write_synthetic_dataset(tmp_path)
    log = tmp_path / "committer.log"  # a file: a full pipe would stall the child
    with open(log, "w") as handle:
        child = subprocess.Popen([sys.executable, "-c", COMMITTER, str(tmp_path), str(every)], env=ENV,
                                 stdout=handle, stderr=subprocess.STDOUT)
    commit_dir = tmp_path / commits.COMMITS_DIR
    deadline = time.monotonic() + 240
    try:
        while len(os.listdir(commit_dir)) < 12500 + 2 * every + every // 2:  # two rewrites, then some
            assert child.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    committed = sum(1 for n in os.listdir(commit_dir) if n.endswith(".json")) - 12500
    result = subprocess.run([sys.executable, "-c", FIRST_READ, str(tmp_path)], env=ENV, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    clips, opened, unfinished, seconds = result.stdout.split()
    assert int(clips) == 200000 + 16 * committed and unfinished == "True"
    # Without the rewrites it would open every record of the run (more than 2 * every).
    assert int(opened) <= every, (opened, committed)
    print(f"killed after {committed} new commits: first read opened {opened} records in {float(seconds):.2f} s")


def test_a_listing_while_another_writer_commits_keeps_every_record_already_there(tmp_path):
    """Readers list `commits/` while other writers commit into it (temporary name, then rename): a file renamed
    away between the listing and its size is left out, and every record already there is still listed."""
    import threading

    folder = tmp_path / "commits"
    folder.mkdir()
    kept = {f"c-{i:03d}-kept.json" for i in range(20)}
    for name in kept:
        (folder / name).write_text("{}")
    stop, rounds = threading.Event(), []

    def commit_more():
        k = 0
        while not stop.is_set():
            tmp = folder / f".c-new{k}.json.tmp"
            tmp.write_text("{}")
            os.replace(tmp, folder / f"c-new{k % 50}.json")
            k += 1
        rounds.append(k)

    writer = threading.Thread(target=commit_more)
    writer.start()
    missing, listings, deadline = 0, 0, time.time() + 2.0
    try:
        while time.time() < deadline:
            listings += 1
            missing += not kept <= set(commits.record_names(str(tmp_path)))
    finally:
        stop.set()
        writer.join()
    assert rounds[0] > 100 and listings > 100  # both sides ran, many times over
    assert missing == 0, f"{missing} of {listings} listings lost records already committed"
