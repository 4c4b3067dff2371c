"""Training samples/s with one worker against two local workers (MultiWorkerMirroredStrategy), one run.

    python benchmarks/multiworker.py [--epochs 20]

Both train the seed-shaped problem (2,475 windows, 1000 classes, global batch 512) with
the same command, one as a single process, one as two processes on 127.0.0.1 ports. On a
2-core machine the two workers share the cores, so the ratio shows the cost of the
collective communication, not a speed-up; on separate machines each worker brings its own.
The figure is the time of the epochs after the first, read from worker 0's `fit` log
(steps x time per step).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
EPOCH_LINE = re.compile(r"^(\d+)/\d+ - \S+ - (\d+(?:\.\d+)?)(m?s)/step", re.M)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def epoch_seconds(log: str) -> list[float]:
    """Epoch durations from Keras's `verbose=2` lines ("5/5 - 1s - 120ms/step - ...": steps x time per step)."""
    return [int(steps) * float(v) / (1000.0 if unit == "ms" else 1.0) for steps, v, unit in EPOCH_LINE.findall(log)]


def run(data_dir: str, work: str, epochs: int, workers: int) -> float:
    """samples/s over the epochs after the first, for `workers` processes."""
    args = [sys.executable, "-m", "audionet_tf.train", "--data", data_dir, "--epochs", str(epochs), "--quiet",
            "--no-export", "--no-report", "--name", f"w{workers}", "--checkpoint-every", str(epochs)]
    if workers == 1:
        logs = [subprocess.run(args, cwd=work, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               check=True).stdout]
    else:
        cluster = [f"127.0.0.1:{free_port()}" for _ in range(workers)]
        processes = [subprocess.Popen(args + ["--strategy", "multiworker"], cwd=work, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      env={**ENV, "TF_CONFIG": json.dumps(
                                          {"cluster": {"worker": cluster}, "task": {"type": "worker", "index": i}})})
                     for i in range(workers)]
        logs = [p.communicate()[0] for p in processes]
        if any(p.returncode for p in processes):
            raise SystemExit("a worker failed:\n" + "\n".join(log[-2000:] for log in logs))
    seconds = epoch_seconds(logs[0])[1:]
    return 2475 // 512 * 512 * len(seconds) / sum(seconds) if seconds else float("nan")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args(argv)
    from audionet_tf.dataset.synthetic import write_synthetic_dataset

    with tempfile.TemporaryDirectory() as work:
        data_dir = os.path.join(work, "seed-shaped")
        write_synthetic_dataset(data_dir, clips=10, seconds=[10.0] * 9 + [9.0], num_classes=1000)
        one = run(data_dir, work, args.epochs, 1)
        two = run(data_dir, work, args.epochs, 2)
    print(f"seed-shaped problem, global batch 512, {args.epochs} epochs, {os.cpu_count()} cores")
    print(f"{'workers':10s} {'samples/s':>10s} {'ratio':>7s}")
    print(f"{'1':10s} {one:10.0f} {1.0:6.2f}x")
    print(f"{'2 (local)':10s} {two:10.0f} {two / one:6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
