"""Training under the faults of long runs: signals, kills mid-epoch and mid-write, damaged backups, a second
command on the same run, full and vanishing storage. Each compares the state a run ends with (weights and
optimizer variables, read from the saved files) with an uninterrupted run of the same settings."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from writes import renames_left_unsynced_in_their_directory, renames_under, run_recording, unsynced_renames

from audionet_tf.commands import train
from audionet_tf.core import config as cfg
from audionet_tf.dataset.synthetic import write_synthetic_dataset
from saved_state import saved_state

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
EXIT_STOPPED = 75  # documented in the README ("Training": faults)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tones"
    # 6 clips of 2 s, 2 held out: 200 training windows, 25 steps per epoch at batch 8, in 4 shards.
    write_synthetic_dataset(str(path), clips=6, seconds=2.0, num_classes=12, kinds=3, holdout=2, shard_size=50)
    return str(path)


def flags(dataset, name, epochs=4, *extra):
    """A streamed, deterministic run with one step per execution and a backup every 10 steps."""
    return ["--data", dataset, "--epochs", str(epochs), "--batch-size", "8", "--learning-rate", "0.01",
            "--name", name, "--quiet", "--no-export", "--no-report", "--histogram-every", "1000",
            "--cache", "none", "--deterministic", "--steps-per-execution", "1", "--backup-every-steps", "10",
            "--checkpoint-every", "1", *extra]


def command(*args):
    return [sys.executable, "-m", "audionet_tf.train", *args]


def run(args, cwd, timeout=300):
    return subprocess.run(command(*args), cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def assert_same_state(a, b):
    assert sorted(a) == sorted(b)
    assert any("optimizer" in name for name in a), sorted(a)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.fixture(scope="module")
def uninterrupted(dataset, tmp_path_factory):
    """The reference: the same run without interruption, and its final state."""
    work = tmp_path_factory.mktemp("reference")
    result = run(flags(dataset, "ref"), work)
    assert result.returncode == 0, result.stderr[-3000:]
    return saved_state(work / "runs" / "ref" / "model.keras")


def state_file(work, name):
    return work / "runs" / name / "backup" / "state.json"


def newest(work, name):
    path = state_file(work, name)
    try:
        return json.loads(path.read_text())["backups"][0]
    except (OSError, ValueError, KeyError, IndexError):
        return None


def wait_for(predicate, process, seconds=240):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        if process is not None and process.poll() is not None:
            return False
        time.sleep(0.02)
    return False


# The train command, sending itself a real SIGTERM or SIGINT once `where` steps are trained: the stop then comes
# at a known step, between two of the backups taken every 10 steps, so a stop that did not save would leave the run
# at the older backup (an exact resume from there would still end in the uninterrupted state).
SIGNAL_SCRIPT = """
import os, signal, sys
import keras
from audionet_tf.commands import train
signum, where = int(sys.argv[1]), int(sys.argv[2])

class SignalAt(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == where:
            os.kill(os.getpid(), signum)

command_train = train.train
train.train = lambda config, **kw: command_train(config, **{**kw, "extra_callbacks": [SignalAt()]})
sys.exit(train.main(sys.argv[3:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_or_ctrl_c_saves_mid_epoch_and_the_same_command_ends_in_the_uninterrupted_state(
        dataset, tmp_path, uninterrupted, signum):
    args = flags(dataset, "term")
    stopped = subprocess.run([sys.executable, "-c", SIGNAL_SCRIPT, str(int(signum)), "37", *args], cwd=tmp_path,
                             env=ENV, capture_output=True, text=True, timeout=300)
    err = stopped.stderr
    assert stopped.returncode == EXIT_STOPPED, err[-3000:]
    assert f"stopped by {signum.name}" in err and "run the same command to continue" in err
    assert "Traceback" not in err
    # Saved where training was when the signal came: the signal is sent after step 37 (epoch 1, step 12) once
    # the backup callback has seen that step, so the next step boundary, 38, saves; not the backup of step 35.
    saved = newest(tmp_path, "term")
    assert (saved["iterations"], saved["epoch"], saved["step"]) == (38, 1, 13), saved
    assert f"epoch {saved['epoch']}, step {saved['step']}" in err
    resumed = run(args, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"continuing epoch {saved['epoch'] + 1} at step {saved['step']} of 25" in resumed.stderr
    assert_same_state(saved_state(tmp_path / "runs" / "term" / "model.keras"), uninterrupted)
    history = (tmp_path / "runs" / "term" / "history.csv").read_text().splitlines()[1:]
    assert [int(line.split(",")[0]) for line in history] == [1, 2, 3, 4]


KILL_SCRIPT = """
import os, signal, sys
import keras
from audionet_tf.commands import train
where = sys.argv[1]

class KillAt(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if where.isdigit() and int(self.model.optimizer.iterations.numpy()) == int(where):
            os.kill(os.getpid(), signal.SIGKILL)

save_weights = keras.Model.save_weights

def save_then_die(self, path, *a, **k):
    # The moment under test: the backup's temporary file is half written, and not renamed.
    save_weights(self, path, *a, **k)
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)
    os.kill(os.getpid(), signal.SIGKILL)

if where == "half-written":
    calls = []
    def counting(self, path, *a, **k):
        calls.append(path)
        return (save_then_die if len(calls) == 3 else save_weights)(self, path, *a, **k)
    keras.Model.save_weights = counting
config = train.resolve_config(train.build_parser().parse_args(sys.argv[2:]))
train.train(config, extra_callbacks=[KillAt()])
"""


@pytest.mark.slow
@pytest.mark.parametrize("where", ["37", "half-written"])
def test_sigkill_mid_epoch_or_during_a_backup_write_resumes_to_the_uninterrupted_state(dataset, tmp_path,
                                                                                      uninterrupted, where):
    args = flags(dataset, "kill")
    killed = subprocess.run([sys.executable, "-c", KILL_SCRIPT, where, *args], cwd=tmp_path, env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    backup_dir = tmp_path / "runs" / "kill" / "backup"
    if where != "37":  # the third backup was being written: its temporary file is there, the state names older ones
        assert [n for n in os.listdir(backup_dir) if n.startswith(".") and n.endswith(".tmp.weights.h5")]
        assert len(json.loads((backup_dir / "state.json").read_text())["backups"]) == 2
    resumed = run(args, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stderr and "resumed from" in resumed.stderr
    assert_same_state(saved_state(tmp_path / "runs" / "kill" / "model.keras"), uninterrupted)
    assert not [n for n in os.listdir(backup_dir) if n.startswith(".")]


@pytest.mark.slow
def test_damaged_backups_fall_back_on_the_previous_one_then_the_checkpoint_then_say_so(dataset, tmp_path,
                                                                                     uninterrupted):
    args = flags(dataset, "damaged", 2)
    first = run(args, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = tmp_path / "runs" / "damaged"
    # Make it look unfinished (as if killed after its last backup) and truncate the newest backup.
    os.unlink(run_dir / "metrics.json")
    backups = json.loads((run_dir / "backup" / "state.json").read_text())["backups"]
    assert len(backups) == 2
    newest_file = run_dir / "backup" / backups[0]["weights"]
    newest_file.write_bytes(newest_file.read_bytes()[:5000])
    again = run(flags(dataset, "damaged", 4), tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Traceback" not in again.stderr
    assert f"runs/damaged/backup/{backups[0]['weights']} is damaged" in again.stderr
    previous = backups[1]
    assert f"at epoch {previous['epoch']} step {previous['step']}" in again.stderr
    assert_same_state(saved_state(run_dir / "model.keras"), uninterrupted)

    # A corrupt state file: the backup files' names say where they were taken.
    os.unlink(run_dir / "metrics.json")
    (run_dir / "backup" / "state.json").write_text('{"backups": [')
    named = run(flags(dataset, "damaged", 4), tmp_path)
    assert named.returncode == 0, named.stderr[-3000:]
    assert "state.json is unreadable" in named.stderr and "at epoch 4 step 0" in named.stderr

    # Every backup damaged: the newest valid checkpoint.
    os.unlink(run_dir / "metrics.json")
    for name in os.listdir(run_dir / "backup"):
        if name.endswith(".weights.h5"):
            (run_dir / "backup" / name).write_bytes(b"not a weights file")
    third = run(flags(dataset, "damaged", 4), tmp_path)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "resumed from checkpoint" in third.stderr and "at epoch 4" in third.stderr

    # Nothing usable: one message, saying how to start afresh.
    os.unlink(run_dir / "metrics.json")
    for name in os.listdir(run_dir / "backup"):
        if name.endswith(".weights.h5"):
            (run_dir / "backup" / name).write_bytes(b"")
    (run_dir / "checkpoints" / "last.keras").write_bytes(b"PK broken")
    last = run(flags(dataset, "damaged", 4), tmp_path)
    assert last.returncode == 2 and "Traceback" not in last.stderr
    assert "no usable state left" in last.stderr and "last.keras" in last.stderr and "another --name" in last.stderr


@pytest.mark.slow
def test_a_second_command_on_a_run_being_trained_is_refused_naming_the_process(dataset, tmp_path):
    args = flags(dataset, "busy", 400)
    first = subprocess.Popen(command(*args), cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: newest(tmp_path, "busy") is not None, first), "the first run did not start"
        second = run(args, tmp_path)
        assert second.returncode == 2, second.stderr[-3000:]
        assert f"process {first.pid}" in second.stderr and "runs/busy is being trained" in second.stderr
        assert "Traceback" not in second.stderr
        assert not (tmp_path / "runs" / "busy-2").exists()
        assert first.poll() is None
    finally:
        first.kill()
        first.wait()
    # The lock dies with its holder: the same command now resumes the run.
    third = run(flags(dataset, "busy", 1), tmp_path)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "resumed from" in third.stderr


def _mount_tmpfs(path, size):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True, text=True)
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["full", "vanished"])
def test_storage_faults_end_in_one_message_naming_the_path_and_keep_the_last_backup(dataset, tmp_path, fault):
    runs = tmp_path / "runs"
    _mount_tmpfs(runs, "20m")
    try:
        args = flags(dataset, "disk", 400, "--runs-dir", str(runs))
        process = subprocess.Popen(command(*args), cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        backup = runs / "disk" / "backup"
        assert wait_for(lambda: (newest(tmp_path, "disk") or {}).get("iterations", 0) >= 20, process), \
            process.stderr.read()[-3000:] if process.poll() is not None else "no backup"
        good = newest(tmp_path, "disk")
        good_bytes = (backup / good["weights"]).read_bytes()
        if fault == "full":
            with open(runs / "ballast", "wb") as handle:
                try:
                    while True:
                        handle.write(b"\0" * (1 << 16))
                        handle.flush()
                except OSError:
                    pass
        else:
            shutil.rmtree(runs / "disk")
        err = process.communicate(timeout=120)[1]
        assert process.returncode == 2, err[-3000:]
        assert "Traceback" not in err
        line = [x for x in err.splitlines() if x.startswith("error:")]
        assert len(line) == 1, err[-3000:]
        assert "cannot write" in line[0] and str(runs / "disk") in line[0]
        if fault != "vanished":
            assert "is kept" in line[0]
            state = json.loads((backup / "state.json").read_text())["backups"][0]
            kept = backup / state["weights"]
            assert state["weights"] in line[0]
            if state["weights"] == good["weights"]:
                assert kept.read_bytes() == good_bytes
            saved_state(kept)  # reads back whole
    finally:
        subprocess.run(["umount", "-l", str(runs)], capture_output=True)


@pytest.mark.slow
def test_a_read_only_runs_directory_is_refused_with_one_message(dataset, tmp_path):
    runs = tmp_path / "runs"
    _mount_tmpfs(runs, "1m")
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(runs)], check=True)
        result = run(flags(dataset, "ro", 1, "--runs-dir", str(runs)), tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"cannot write {runs / 'ro'}" in result.stderr and "Read-only file system" in result.stderr
    finally:
        subprocess.run(["umount", "-l", str(runs)], capture_output=True)


def test_backups_by_time_fall_inside_epochs(dataset, tmp_path):
    from audionet_tf.core import config as cfg

    config = cfg.PipelineConfig(train=cfg.TrainConfig(
        data=dataset, epochs=2, batch_size=8, learning_rate=0.01, runs_dir=str(tmp_path / "runs"), name="minutes",
        export=False, report=False, quiet=True, cache="none", steps_per_execution=1, checkpoint_every=100,
        backup_every_minutes=1e-6, keep_backups=3))
    run_dir = train.train(config)
    backups = json.loads(open(os.path.join(run_dir, "backup", "state.json")).read())["backups"]
    # Newest first: the end of the run, then the last steps of epoch 2 (a time backup after every step).
    assert [(b["epoch"], b["step"]) for b in backups] == [(2, 0), (1, 24), (1, 23)]
    assert sorted(os.listdir(os.path.join(run_dir, "backup"))) == sorted(
        [b["weights"] for b in backups] + ["state.json"])



def test_a_whole_epoch_per_execution_is_cut_at_100_steps_so_backups_fall_inside_long_epochs(dataset, tmp_path):
    """--steps-per-execution 0 (the default): an epoch of 200 steps runs as two executions of 100, and backups
    (and a stop request) act at their boundary, not only at the epoch's end."""
    config = cfg.PipelineConfig(train=cfg.TrainConfig(
        data=dataset, epochs=1, batch_size=1, learning_rate=0.01, runs_dir=str(tmp_path / "runs"), name="cap",
        export=False, report=False, quiet=True, cache="none", steps_per_execution=0, checkpoint_every=100,
        backup_every_steps=1, keep_backups=3))
    run_dir = train.train(config)
    backups = json.loads(open(os.path.join(run_dir, "backup", "state.json")).read())["backups"]
    assert [(b["epoch"], b["step"], b["iterations"]) for b in backups] == [(1, 0, 200), (0, 100, 100)]


def test_an_unfinished_run_started_with_other_settings_is_refused_listing_the_differences(dataset, tmp_path,
                                                                                         monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert train.main(flags(dataset, "changed", 1)) == 0
    os.unlink(tmp_path / "runs" / "changed" / "metrics.json")  # as if killed before its end
    before = sorted(os.listdir(tmp_path / "runs" / "changed"))
    capsys.readouterr()
    assert train.main(flags(dataset, "changed", 2, "--learning-rate", "0.02", "--batch-size", "10")) == 2
    err = capsys.readouterr().err
    assert "run runs/changed is unfinished and was started with other settings" in err
    assert "train.batch_size: 8 then, 10 now" in err and "train.learning_rate: 0.01 then, 0.02 now" in err
    assert "Traceback" not in err and sorted(os.listdir(tmp_path / "runs")) == ["changed"]
    assert sorted(os.listdir(tmp_path / "runs" / "changed")) == before
    # What may change on a resume (here the epochs) is no difference: the same command with more epochs goes on.
    assert train.main(flags(dataset, "changed", 2)) == 0
    history = (tmp_path / "runs" / "changed" / "history.csv").read_text().splitlines()[1:]
    assert [int(line.split(",")[0]) for line in history] == [1, 2]

def test_backups_are_fsynced_before_their_rename(dataset, tmp_path):
    """A backup survives a power cut only if its weights and state.json reach the disk before the rename names
    them (a SIGKILL never loses the page cache, so the kill tests cannot see it)."""
    done, events = run_recording("audionet_tf.train", flags(dataset, "sync", 1), str(tmp_path / "writes.json"),
                                 str(tmp_path), ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    backup = tmp_path / "runs" / "sync" / "backup"
    renamed = [os.path.basename(dst) for _, dst in renames_under(events, str(backup))]
    # Backups after steps 10 and 20 and at the end of the epoch, each a weights file, then state.json.
    assert renamed == ["epoch-000000-step-000000010.weights.h5", "state.json",
                       "epoch-000000-step-000000020.weights.h5", "state.json",
                       "epoch-000001-step-000000000.weights.h5", "state.json"], renamed
    assert unsynced_renames(events, str(backup)) == []
    assert renames_left_unsynced_in_their_directory(events, str(backup)) == []


def _prepare_pipeline(path, clips):
    entries = ",\n".join(f'  {{url = "{c}", start = 0, duration = 2, label = "{os.path.basename(c)[:-4]}"}}'
                         for c in clips)
    path.write_text(f'[prepare]\nteacher = "demo-colour"\nout = "data"\ncache_dir = "cache"\nholdout = "0"\n'
                    f'shard_clips = 1\nclips = [\n{entries}\n]\n')
    return str(path)


def _prepare(pipeline, cwd, *extra):
    return subprocess.run([sys.executable, "-m", "audionet_tf.prepare", "--pipeline", pipeline, "--quiet", *extra],
                          cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


def _files(directory):
    """Every file of a dataset but its locks (who holds them is written there): name -> (size, mtime)."""
    found = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            if not (name.endswith(".lock") or ".readers" in os.path.relpath(path, directory)):
                found[os.path.relpath(path, directory)] = (os.path.getsize(path), os.stat(path).st_mtime_ns)
    return found


@pytest.mark.slow
def test_a_prepare_that_would_withdraw_shards_a_training_reads_is_refused_naming_it_and_adding_clips_is_not(
        tmp_path):
    from loopback import make_clip

    red, blue, green = (make_clip(str(tmp_path / f"{c}.mp4"), 2.0, video=f"color=c={c}:s=32x24:rate=25")
                        for c in ("red", "blue", "green"))
    two = _prepare_pipeline(tmp_path / "two.toml", [red, blue])
    first = _prepare(two, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    training = subprocess.Popen(command("--data", "data", "--epochs", "1000", "--batch-size", "8", "--quiet",
                                        "--no-export", "--no-report", "--name", "reading", "--cache", "none",
                                        "--backup-every-steps", "5", "--histogram-every", "1000"),
                                cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: (newest(tmp_path, "reading") or {}).get("iterations", 0) >= 5, training), \
            "the training did not start"
        before = _files(tmp_path / "data")
        # Every clip relabelled (--overwrite), or one clip's settings changed (held out now): both would delete
        # shards the training streams. Refused, naming the training, and the dataset is left as it was.
        blue_held = _prepare(two, tmp_path, "--holdout", "0.99")
        for refused in (_prepare(two, tmp_path, "--overwrite"), blue_held):
            assert refused.returncode == 2, refused.stderr[-3000:]
            assert "Traceback" not in refused.stderr
            assert f"data is being read by process {training.pid}" in refused.stderr
            assert "--name reading" in refused.stderr and "nothing was changed" in refused.stderr
            assert _files(tmp_path / "data") == before
        # Adding a clip to the dataset being read stays allowed, and the training goes on.
        added = _prepare(_prepare_pipeline(tmp_path / "three.toml", [red, blue, green]), tmp_path)
        assert added.returncode == 0, added.stderr[-3000:]
        assert "written now: 1 clips; already there: 2" in added.stdout
        steps = newest(tmp_path, "reading")["iterations"]
        assert wait_for(lambda: newest(tmp_path, "reading")["iterations"] >= steps + 20, training), \
            training.stderr.read()[-3000:] if training.poll() is not None else "the training stalled"
    finally:
        training.send_signal(signal.SIGTERM)
        err = training.communicate(timeout=120)[1]
    assert training.returncode == EXIT_STOPPED, err[-3000:]
    # Once the training has ended, the same overwrite goes ahead.
    again = _prepare(two, tmp_path, "--overwrite")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "written now: 2 clips" in again.stdout
