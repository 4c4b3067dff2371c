"""Training across two worker processes on loopback (MultiWorkerMirroredStrategy from TF_CONFIG)."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from saved_state import saved_state

from audionet_tf.dataset.synthetic import write_synthetic_dataset
from audionet_tf.model.student import load_model

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# The train command, also saving the seeded initial weights to start.npz (to check that training moved them).
SINGLE_WITH_START = """
import sys
import keras
import numpy as np
from audionet_tf.commands import train

class Start(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        np.savez("start.npz", **{f"w{i}": w for i, w in enumerate(self.model.get_weights())})

config = train.resolve_config(train.build_parser().parse_args(sys.argv[1:]))
train.train(config, extra_callbacks=[Start()])
"""


def start_cluster(args, cwd) -> list[subprocess.Popen]:
    """Two workers of the train command on 127.0.0.1 ports, the chief first; each one's output goes to a file
    (read back by `finish_cluster`), so a test can watch them while they run."""
    cluster = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    workers = []
    for index in range(2):
        tf_config = {"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}}
        output = open(os.path.join(cwd, f".worker-{index}-{time.time_ns()}.log"), "w+")
        worker = subprocess.Popen(
            [sys.executable, "-m", "audionet_tf.train", *args, "--strategy", "multiworker"],
            cwd=cwd, env={**ENV, "TF_CONFIG": json.dumps(tf_config)}, stdout=output, stderr=subprocess.STDOUT,
            text=True)
        worker.output = output
        workers.append(worker)
    return workers


def finish_cluster(workers, timeout=300) -> list[str]:
    """Wait for every worker; returns their logs, the chief's first."""
    deadline = time.time() + timeout
    try:
        for worker in workers:
            worker.wait(timeout=max(1.0, deadline - time.time()))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    logs = []
    for worker in workers:
        worker.output.seek(0)
        logs.append(worker.output.read())
        worker.output.close()
    return logs


def run_cluster(args, cwd, timeout=300, while_running=None) -> list[str]:
    """Two workers of the train command on 127.0.0.1 ports: both must finish and end with the same weights.

    `while_running(workers)` is called once both are started. Returns the workers' logs, the chief's first."""
    workers = start_cluster(args, cwd)
    if while_running is not None:
        while_running(workers)
    logs = finish_cluster(workers, timeout)
    assert [w.returncode for w in workers] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    digests = [re.search(r"final weights sha256 (\w+)", log).group(1) for log in logs]
    assert digests[0] == digests[1]
    return logs


def thread_count(pid: int) -> int | None:
    """The process's thread count from /proc (None once it has ended)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return int(next(line for line in status if line.startswith("Threads:")).split()[1])
    except (OSError, StopIteration):
        return None


def history_epochs(path) -> int:
    """Epochs in a run's history.csv so far (0 before the first)."""
    try:
        return max(0, len(path.read_text().splitlines()) - 1)
    except OSError:
        return 0


@pytest.mark.slow
def test_two_workers_agree_and_match_one_worker_with_the_same_global_batch(tmp_path):
    data = tmp_path / "data"
    write_synthetic_dataset(str(data), clips=4, seconds=2.0, num_classes=10, kinds=2, shard_size=50)
    common = ["--data", str(data), "--epochs", "3", "--batch-size", "64", "--learning-rate", "0.01", "--quiet",
              "--no-export", "--no-report", "--seed", "7"]
    run_cluster([*common, "--name", "cluster"], tmp_path)
    # The chief wrote the run; the other worker left nothing behind.
    run = tmp_path / "runs" / "cluster"
    assert (run / "model.keras").is_file() and (run / "history.csv").is_file()
    assert not [name for name in os.listdir(run) if name.startswith(".worker")]
    assert len((run / "history.csv").read_text().splitlines()) == 4

    single = subprocess.run([sys.executable, "-c", SINGLE_WITH_START, *common, "--name", "single"], cwd=tmp_path,
                            env=ENV, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    together = load_model(str(run / "model.keras")).get_weights()
    alone = load_model(str(tmp_path / "runs" / "single" / "model.keras")).get_weights()
    start = np.load(tmp_path / "start.npz")
    # Training moved every weight array from its seeded start far more than the two runs differ.
    moved = min(float(np.abs(a - start[f"w{i}"]).max()) for i, a in enumerate(alone))
    diff = max(float(np.abs(a - b).max()) for a, b in zip(together, alone))
    assert diff < 1e-4 and moved > 100 * diff and moved > 1e-3, (diff, moved)


@pytest.mark.slow
def test_a_killed_worker_and_the_cluster_restarted_with_the_same_commands_go_on(tmp_path):
    data = tmp_path / "data"
    write_synthetic_dataset(str(data), clips=4, seconds=2.0, num_classes=10, kinds=2, shard_size=50)
    args = [sys.executable, "-m", "audionet_tf.train", "--data", str(data), "--epochs", "400", "--batch-size", "64",
            "--quiet", "--no-export", "--no-report", "--strategy", "multiworker", "--name", "cluster",
            "--checkpoint-every", "1", "--collective-timeout-s", "10", "--deterministic", "--seed", "3"]
    cluster = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]

    def start(index, epochs):
        tf_config = {"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}}
        command = [epochs if a == "400" else a for a in args]
        return subprocess.Popen(command, cwd=tmp_path, env={**ENV, "TF_CONFIG": json.dumps(tf_config)},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    workers = [start(0, "400"), start(1, "400")]
    state = tmp_path / "runs" / "cluster" / "backup" / "state.json"
    deadline = time.time() + 240

    def saved_epoch():
        try:
            return json.loads(state.read_text())["backups"][0]["epoch"]
        except (OSError, ValueError, KeyError):
            return 0

    while time.time() < deadline and saved_epoch() < 3:
        time.sleep(0.1)
    workers[1].kill()
    workers[1].wait()
    # The survivor gives up on its dead peer instead of waiting forever: one message, the documented status.
    survivor_log = workers[0].communicate(timeout=180)[0]
    assert workers[0].returncode == 75, survivor_log[-3000:]
    assert "stopped: lost contact with another worker" in survivor_log and "Traceback" not in survivor_log
    killed_at = saved_epoch()
    assert killed_at < 400
    # The same commands (cut short so the test ends soon): the cluster resumes from the chief's backup.
    restarted = [start(0, str(killed_at + 3)), start(1, str(killed_at + 3))]
    logs = [w.communicate(timeout=300)[0] for w in restarted]
    assert [w.returncode for w in restarted] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    assert all(f"at epoch {killed_at}" in log for log in logs)
    digests = [re.search(r"final weights sha256 (\w+)", log).group(1) for log in logs]
    assert digests[0] == digests[1]
    epochs = [int(line.split(",")[0]) for line in
              (tmp_path / "runs" / "cluster" / "history.csv").read_text().splitlines()[1:]]
    assert epochs == list(range(1, killed_at + 4))
    # The state the restarted cluster ends in is the one an uninterrupted run reaches (weights and optimizer).
    single = [str(killed_at + 3) if a == "400" else ("single" if a == "cluster" else a)
              for a in args if a not in ("--strategy", "multiworker")]
    reference = subprocess.run(single, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr[-2000:]
    resumed = saved_state(tmp_path / "runs" / "cluster" / "model.keras")
    alone = saved_state(tmp_path / "runs" / "single" / "model.keras")
    assert sorted(resumed) == sorted(alone) and any("optimizer" in name for name in alone)
    for name in alone:
        np.testing.assert_allclose(resumed[name], alone[name], rtol=0, atol=1e-4, err_msg=name)


@pytest.mark.slow
def test_a_cluster_started_on_a_missing_dataset_has_the_chief_prepare_it_and_the_others_wait(tmp_path):
    from loopback import make_clip

    clips = [make_clip(str(tmp_path / f"{name}.mp4"), 2.0, video=f"color=c={name}:s=32x24:rate=25")
             for name in ("red", "blue", "green")]
    pipeline = tmp_path / "cluster.toml"
    entries = ",\n".join(f'  {{url = "{c}", start = 0, duration = 2, label = "{os.path.basename(c)[:-4]}"}}'
                         for c in clips)
    pipeline.write_text(f"""
[prepare]
teacher = "demo-colour"
out = "data/cluster"
cache_dir = "cache"
holdout = "0"
clips = [
{entries}
]

[train]
name = "cluster"
epochs = 2
batch_size = 32
learning_rate = 0.003
export = false
report = false
quiet = true
""")
    logs = run_cluster(["--pipeline", str(pipeline)], tmp_path, timeout=400)
    # Only the chief prepared; the other worker waited for the dataset and then trained with it.
    assert "is missing: preparing it" in logs[0] and "preparing it" not in logs[1]
    assert "waiting up to 3600 s for the chief to prepare it" in logs[1]
    assert json.loads((tmp_path / "data" / "cluster" / "dataset.json").read_text())
    assert len((tmp_path / "runs" / "cluster" / "history.csv").read_text().splitlines()) == 3


@pytest.mark.slow
def test_two_workers_train_on_a_dataset_with_held_out_clips_and_report_val_metrics(tmp_path):
    data = tmp_path / "data"
    write_synthetic_dataset(str(data), clips=4, seconds=2.0, num_classes=10, kinds=2, holdout=1, shard_size=50)
    run_cluster(["--data", str(data), "--epochs", "2", "--batch-size", "64", "--quiet", "--no-export",
                 "--no-report", "--name", "held"], tmp_path)
    run = tmp_path / "runs" / "held"
    rows = (run / "history.csv").read_text().splitlines()
    assert "val_kl" in rows[0].split(",") and len(rows) == 3
    metrics = json.loads((run / "metrics.json").read_text())
    held = load_model(str(run / "model.keras"))
    from audionet_tf.dataset import reader as data_lib
    from audionet_tf.model.losses import DistillationLoss  # noqa: F401  (the model's loss, for load_model)
    val = data_lib.load_arrays(str(data), "validation")
    predicted = held.predict(val["audio"][..., None], verbose=0)
    # The held-out figure is the model's agreement on the held-out clip, computed here independently.
    expected = float(np.mean(predicted.argmax(1) == val["logits"].argmax(1)))
    assert metrics["validation"]["top1_agreement"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.slow
def test_two_workers_train_on_a_streamed_dataset_split_by_file(tmp_path):
    """--cache none: the dataset is not held in memory; each worker streams its own shards (the split itself is
    checked batch by batch in test_stream_position), and the cluster trains and agrees."""
    data = tmp_path / "data"
    write_synthetic_dataset(str(data), clips=4, seconds=2.0, num_classes=10, kinds=2, shard_size=50)
    common = ["--data", str(data), "--epochs", "2", "--batch-size", "64", "--learning-rate", "0.01", "--quiet",
              "--no-export", "--no-report", "--seed", "7", "--cache", "none", "--name", "streamed"]
    logs = run_cluster(common, tmp_path)
    run = tmp_path / "runs" / "streamed"
    assert json.loads((run / "config.json").read_text())["train"]["cache"] == "none"
    assert len((run / "history.csv").read_text().splitlines()) == 3
    assert all("Traceback" not in log for log in logs)


def test_a_cluster_keeps_its_thread_count_flat_over_a_thousand_steps(tmp_path):
    data = tmp_path / "data"
    write_synthetic_dataset(str(data), clips=4, seconds=2.0, num_classes=10, kinds=2, shard_size=50)
    # 200 windows at batch 8: 25 steps an epoch, each with its all-reduces. With a timeout on every collective
    # (TensorFlow's CommunicationOptions, 60 s), each left a thread waiting it out and these same two workers
    # aborted near 16,000 threads at about epoch 30; here the default settings must stay flat to the end.
    epochs = 45
    history = tmp_path / "runs" / "threads" / "history.csv"
    samples: dict[int, list[tuple[int, int]]] = {0: [], 1: []}

    def watch(workers):
        while any(w.poll() is None for w in workers):
            done = history_epochs(history)
            for index, worker in enumerate(workers):
                count = thread_count(worker.pid)
                if count is not None:
                    samples[index].append((done, count))
            time.sleep(0.2)

    run_cluster(["--data", str(data), "--epochs", str(epochs), "--batch-size", "8", "--quiet", "--no-export",
                 "--no-report", "--name", "threads", "--histogram-every", "1000"], tmp_path, timeout=400,
                while_running=watch)
    assert history_epochs(history) == epochs
    for index, seen in samples.items():
        warm = [count for done, count in seen if done >= 3]  # after warm-up: every thread pool is made
        late = [count for done, count in seen if epochs - 5 <= done < epochs]  # the last epochs, still training
        assert warm and late, seen
        assert max(late) <= warm[0] + 25, (index, warm[0], max(late), seen[-20:])


@pytest.mark.slow
def test_sigterm_to_any_worker_stops_the_cluster_at_one_step_and_the_same_commands_finish(tmp_path):
    data = tmp_path / "data"
    write_synthetic_dataset(str(data), clips=4, seconds=2.0, num_classes=10, kinds=2, shard_size=50)
    # 25 steps an epoch, no backups but the ones the signals ask for (and the last).
    args = ["--data", str(data), "--epochs", "6", "--batch-size", "8", "--quiet",
            "--no-export", "--no-report", "--name", "cluster", "--checkpoint-every", "1000",
            "--histogram-every", "1000", "--deterministic", "--seed", "3"]
    run = tmp_path / "runs" / "cluster"
    epochs_before = 0
    for signalled in (1, 0):  # a worker first, then (in the resumed cluster) the chief
        workers = start_cluster(args, tmp_path)
        deadline = time.time() + 240
        while history_epochs(run / "history.csv") < epochs_before + 1 and time.time() < deadline \
                and all(w.poll() is None for w in workers):
            time.sleep(0.05)
        assert all(w.poll() is None for w in workers), "the cluster ended before it could be stopped"
        workers[signalled].send_signal(signal.SIGTERM)
        logs = finish_cluster(workers, timeout=180)
        assert [w.returncode for w in workers] == [75, 75], logs[0][-3000:] + logs[1][-3000:]
        assert all("Traceback" not in log for log in logs)
        assert (run / "backup" / "state.json").is_file(), "the chief saved nothing: " + logs[0][-1500:]
        saved = json.loads((run / "backup" / "state.json").read_text())["backups"][0]
        # Every worker stopped on the signal (none lost its peer), at the chief's newest backup, naming the signal.
        where = f"(epoch {saved['epoch']}, step {saved['step']}); run the same command to continue"
        assert all("stopped: stopped by SIGTERM" in log and where in log for log in logs), \
            logs[0][-1500:] + logs[1][-1500:]
        assert f"SIGTERM to worker {signalled}" in logs[1 - signalled]
        # ... which is the step they agreed on, not an earlier backup.
        proposed = re.search(r"every worker stops after step (\d+)", logs[signalled])
        assert proposed and saved["iterations"] == int(proposed.group(1)), (saved, logs[signalled][-3000:])
        epochs_before = saved["epoch"]
    logs = run_cluster(args, tmp_path)
    assert all("resumed from runs/cluster/backup/" in log for log in logs)
    epochs = [int(line.split(",")[0]) for line in (run / "history.csv").read_text().splitlines()[1:]]
    assert epochs == list(range(1, 7))
    # The state the twice-stopped cluster ends in is the one an uninterrupted process reaches.
    single = [sys.executable, "-m", "audionet_tf.train", *[("single" if a == "cluster" else a) for a in args]]
    reference = subprocess.run(single, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr[-2000:]
    resumed = saved_state(run / "model.keras")
    alone = saved_state(tmp_path / "runs" / "single" / "model.keras")
    assert sorted(resumed) == sorted(alone) and any("optimizer" in name for name in alone)
    for name in alone:
        np.testing.assert_allclose(resumed[name], alone[name], rtol=0, atol=1e-4, err_msg=name)


@pytest.mark.slow
def test_the_default_heartbeat_timeout_waits_out_a_frozen_worker_and_gives_up_on_a_dead_one(tmp_path):
    """No --collective-timeout-s: the default (train.collective_timeout_s, 60 s) is the coordination service's
    heartbeat timeout. Worker 1 frozen (SIGSTOP) for 20 s sends no heartbeat: under 60 s without one, so the
    chief waits, and the cluster goes on once it is thawed (TensorFlow's own timeout, 10 s, would have ended it).
    Then worker 1 is killed: the chief says it lost contact within the timeout (and some slack) and exits 75."""
    from audionet_tf.core.config import TrainConfig

    timeout_s = TrainConfig().collective_timeout_s
    data = tmp_path / "data"
    write_synthetic_dataset(str(data), clips=4, seconds=2.0, num_classes=10, kinds=2, shard_size=50)
    workers = start_cluster(["--data", str(data), "--epochs", "400", "--batch-size", "8", "--quiet", "--no-export",
                             "--no-report", "--name", "frozen", "--histogram-every", "1000"], tmp_path)

    def chief_said_lost() -> bool:
        workers[0].output.seek(0)
        return "lost contact with another worker" in workers[0].output.read()

    try:
        history = tmp_path / "runs" / "frozen" / "history.csv"
        deadline = time.time() + 300
        while history_epochs(history) < 1 and time.time() < deadline and all(w.poll() is None for w in workers):
            time.sleep(0.2)
        assert all(w.poll() is None for w in workers), "a worker ended before the fault"
        workers[1].send_signal(signal.SIGSTOP)
        time.sleep(20)
        alive = workers[0].poll() is None and not chief_said_lost()
        workers[1].send_signal(signal.SIGCONT)
        assert alive, "the chief gave up on a worker frozen for 20 s, under the 60 s heartbeat timeout"
        thawed_at = history_epochs(history)
        deadline = time.time() + 120
        while history_epochs(history) < thawed_at + 2 and time.time() < deadline and workers[0].poll() is None:
            time.sleep(0.2)
        assert history_epochs(history) >= thawed_at + 2, "the cluster did not go on after the thaw"
        workers[1].kill()
        killed = time.time()
        seconds = None
        # When the chief says so (its message comes before it exits, which takes a while more on a loaded machine).
        while seconds is None and time.time() < killed + timeout_s + 120 and workers[0].poll() is None:
            if chief_said_lost():
                seconds = time.time() - killed
            time.sleep(0.2)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGCONT)
    logs = finish_cluster(workers, timeout=120)
    assert workers[0].returncode == 75, logs[0][-3000:]
    assert "stopped: lost contact with another worker" in logs[0] and "Traceback" not in logs[0]
    seconds = seconds if seconds is not None else time.time() - killed
    assert seconds <= timeout_s + 30, seconds
