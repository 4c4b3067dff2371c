"""How long a cluster takes to notice a dead worker: two loopback workers of the train command, one
`kill -9`ed (or SIGSTOPped with --signal 19) after three epochs, the survivor's exit status and time printed.

    python benchmarks/cluster_dead_peer.py --victim 1 [--collective-timeout-s 10]

The dataset is synthetic (4 clips of 2 s, 10 classes); batch 8 gives 25 steps an epoch.
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from audionet_tf.dataset.synthetic import write_synthetic_dataset  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--victim", type=int, choices=[0, 1], default=1, help="the worker to kill (0: the chief)")
    parser.add_argument("--signal", type=int, default=int(signal.SIGKILL))
    parser.add_argument("--collective-timeout-s", default=None, help="the train flag (default: its own)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        data = os.path.join(work, "data")
        write_synthetic_dataset(data, clips=4, seconds=2.0, num_classes=10, kinds=2, shard_size=50)
        cluster = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
        extra = [] if args.collective_timeout_s is None else ["--collective-timeout-s", args.collective_timeout_s]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
        workers = []
        for index in range(2):
            config = {"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}}
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "audionet_tf.train", "--data", data, "--epochs", "400", "--batch-size", "8",
                 "--quiet", "--no-export", "--no-report", "--name", "dead-peer", "--strategy", "multiworker",
                 "--histogram-every", "1000", *extra], cwd=work, env={**env, "TF_CONFIG": json.dumps(config)},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        history = os.path.join(work, "runs", "dead-peer", "history.csv")
        while not (os.path.exists(history) and len(open(history).read().splitlines()) > 3):
            time.sleep(0.2)
            if any(w.poll() is not None for w in workers):
                raise SystemExit("a worker ended before the fault")
        workers[args.victim].send_signal(args.signal)
        start = time.time()
        survivor = workers[1 - args.victim]
        survivor.wait(timeout=600)
        seconds = time.time() - start
        workers[args.victim].kill()
        print(f"worker {args.victim} sent signal {args.signal}: worker {1 - args.victim} exited "
              f"{survivor.returncode} after {seconds:.1f} s")


if __name__ == "__main__":
    main()
