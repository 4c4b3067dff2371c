"""Training across two worker processes on loopback (MultiWorkerMirroredStrategy from TF_CONFIG)."""
import json
import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from audionet_tf.model import load_model
from audionet_tf.synthetic import write_synthetic_dataset

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_workers_agree_and_match_one_worker_with_the_same_global_batch(tmp_path):
    data = tmp_path / "data"
    write_synthetic_dataset(str(data), clips=4, seconds=2.0, num_classes=10, kinds=2, shard_size=50)
    common = ["--data", str(data), "--epochs", "3", "--batch-size", "64", "--learning-rate", "0.01", "--quiet",
              "--no-export", "--no-report", "--seed", "7"]
    cluster = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    workers = []
    for index in range(2):
        tf_config = {"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}}
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "audionet_tf.train", *common, "--strategy", "multiworker", "--name", "cluster"],
            cwd=tmp_path, env={**ENV, "TF_CONFIG": json.dumps(tf_config)}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True))
    logs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    digests = [re.search(r"final weights sha256 (\w+)", log).group(1) for log in logs]
    assert digests[0] == digests[1]
    # The chief wrote the run; the other worker left nothing behind.
    run = tmp_path / "runs" / "cluster"
    assert (run / "model.keras").is_file() and (run / "history.csv").is_file()
    assert not [name for name in os.listdir(run) if name.startswith(".worker")]
    assert len((run / "history.csv").read_text().splitlines()) == 4

    single = subprocess.run([sys.executable, "-m", "audionet_tf.train", *common, "--name", "single"], cwd=tmp_path,
                            env=ENV, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    together = load_model(str(run / "model.keras")).get_weights()
    alone = load_model(str(tmp_path / "runs" / "single" / "model.keras")).get_weights()
    assert max(float(np.abs(w).max()) for w in alone) > 0.05
    assert max(float(np.abs(a - b).max()) for a, b in zip(together, alone)) < 1e-4


@pytest.mark.slow
def test_a_killed_worker_and_the_cluster_restarted_with_the_same_commands_go_on(tmp_path):
    data = tmp_path / "data"
    write_synthetic_dataset(str(data), clips=4, seconds=2.0, num_classes=10, kinds=2, shard_size=50)
    args = [sys.executable, "-m", "audionet_tf.train", "--data", str(data), "--epochs", "400", "--batch-size", "64",
            "--quiet", "--no-export", "--no-report", "--strategy", "multiworker", "--name", "cluster",
            "--checkpoint-every", "1", "--collective-timeout-s", "10"]
    cluster = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]

    def start(index, epochs):
        tf_config = {"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}}
        command = [epochs if a == "400" else a for a in args]
        return subprocess.Popen(command, cwd=tmp_path, env={**ENV, "TF_CONFIG": json.dumps(tf_config)},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    workers = [start(0, "400"), start(1, "400")]
    state = tmp_path / "runs" / "cluster" / "backup" / "state.json"
    deadline = time.time() + 240
    while time.time() < deadline and not (state.exists() and json.loads(state.read_text())["epoch"] >= 3):
        time.sleep(0.1)
    workers[1].kill()
    workers[1].wait()
    # The survivor gives up on its dead peer instead of waiting forever.
    survivor_log = workers[0].communicate(timeout=180)[0]
    assert workers[0].returncode != 0, survivor_log[-2000:]
    killed_at = json.loads(state.read_text())["epoch"]
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


@pytest.mark.slow
def test_two_workers_train_on_a_dataset_with_held_out_clips_and_report_val_metrics(tmp_path):
    data = tmp_path / "data"
    write_synthetic_dataset(str(data), clips=4, seconds=2.0, num_classes=10, kinds=2, holdout=1, shard_size=50)
    cluster = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    workers = []
    for index in range(2):
        tf_config = {"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}}
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "audionet_tf.train", "--data", str(data), "--epochs", "2", "--batch-size", "64",
             "--quiet", "--no-export", "--no-report", "--strategy", "multiworker", "--name", "held"],
            cwd=tmp_path, env={**ENV, "TF_CONFIG": json.dumps(tf_config)}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True))
    logs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    digests = [re.search(r"final weights sha256 (\w+)", log).group(1) for log in logs]
    assert digests[0] == digests[1]
    run = tmp_path / "runs" / "held"
    rows = (run / "history.csv").read_text().splitlines()
    assert "val_kl" in rows[0].split(",") and len(rows) == 3
    metrics = json.loads((run / "metrics.json").read_text())
    held = load_model(str(run / "model.keras"))
    from audionet_tf import data as data_lib
    from audionet_tf.losses import DistillationLoss  # noqa: F401  (the model's loss, for load_model)
    val = data_lib.load_arrays(str(data), "validation")
    predicted = held.predict(val["audio"][..., None], verbose=0)
    # The held-out figure is the model's agreement on the held-out clip, computed here independently.
    expected = float(np.mean(predicted.argmax(1) == val["logits"].argmax(1)))
    assert metrics["validation"]["top1_agreement"] == pytest.approx(expected, abs=1e-6)
