"""The slides' recipe for its whole length: per-epoch time, memory, threads and open files over a long run.

    nice python benchmarks/long_run.py [--epochs 5000] [--out benchmarks/out/long_run.csv]

Trains the student with the train command's code (`audionet_tf.commands.train.train`, the
project's defaults: TFRecord input, held-out clips every 10 epochs, checkpoints and backups
every 10, TensorBoard, filter images, timelines and histograms every 50; export and report
off) on the seed-shaped set (10 synthetic clips of 10 s, 2,000 training windows and 500 held
out, 1000 classes, batch 512), and after every epoch appends to a CSV its wall time, the
process's resident memory (VmRSS), its threads and its open file descriptors, and the size of
the run directory. At the end it prints the median epoch of the first `--compare` epochs after
`--warmup` against the last `--compare`, and the first and last values of each resource.
The CSV is written as the run goes: `--summarize` prints the same comparison from a CSV
already written (of a run in progress or cut short).
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from audionet_tf.commands import train  # noqa: E402
from audionet_tf.core import config as cfg  # noqa: E402
from audionet_tf.dataset.synthetic import write_synthetic_dataset  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine  # noqa: E402

FIELDS = ("epoch", "seconds", "rss_mb", "threads", "open_files", "run_dir_mb", "load_1min")


def resources() -> dict[str, float]:
    """This process's resident memory (MB), threads and open file descriptors, from /proc/self."""
    values = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key == "VmRSS":
                values["rss_mb"] = int(value.split()[0]) / 1024
            elif key == "Threads":
                values["threads"] = int(value)
    values["open_files"] = len(os.listdir("/proc/self/fd"))
    return values


def tree_mb(path: str) -> float:
    """Bytes under `path`, in MB."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass  # a temporary file renamed meanwhile
    return total / 1e6


class Recorder(keras.callbacks.Callback):
    """One CSV row per epoch: wall time of the epoch and the process's resources at its end."""

    def __init__(self, path: str, runs_dir: str):
        super().__init__()
        self.path, self.runs_dir = path, runs_dir
        self.rows: list[dict[str, float]] = []
        self._start = 0.0
        self._handle = None
        self._writer = None

    def on_train_begin(self, logs=None):
        self._handle = open(self.path, "w", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._handle, fieldnames=FIELDS)
        self._writer.writeheader()

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._start
        row = {"epoch": epoch + 1, "seconds": round(seconds, 5), **resources(), "load_1min": os.getloadavg()[0]}
        # The run directory's size is a walk of its files: every 10th epoch is enough to see growth.
        row["run_dir_mb"] = round(tree_mb(self.runs_dir), 3) if (epoch + 1) % 10 == 0 or epoch == 0 else ""
        row["rss_mb"] = round(row["rss_mb"], 1)
        self.rows.append(row)
        self._writer.writerow(row)
        self._handle.flush()

    def on_train_end(self, logs=None):
        if self._handle is not None:
            self._handle.close()


def summary(rows: list[dict[str, float]], warmup: int, compare: int) -> list[str]:
    """First `compare` epochs after `warmup` against the last `compare`, and each resource's first and last."""
    seconds = np.array([r["seconds"] for r in rows])
    first, last = seconds[warmup: warmup + compare], seconds[-compare:]
    lines = [f"epochs {warmup + 1}-{warmup + len(first)}: median {np.median(first) * 1000:.1f} ms, mean "
             f"{first.mean() * 1000:.1f}; epochs {len(rows) - len(last) + 1}-{len(rows)}: median "
             f"{np.median(last) * 1000:.1f} ms, mean {last.mean() * 1000:.1f}; last/first (medians) "
             f"{np.median(last) / np.median(first):.3f}, (means) {last.mean() / first.mean():.3f}"]
    for key in ("rss_mb", "threads", "open_files"):
        values = np.array([r[key] for r in rows], dtype=float)
        after = values[warmup:]
        lines.append(f"{key}: after warm-up {after[0]:.1f}, at the end {values[-1]:.1f}, maximum {values.max():.1f}")
    sizes = [r["run_dir_mb"] for r in rows if r["run_dir_mb"] != ""]
    lines.append(f"run directory: {sizes[0]:.2f} MB after epoch 1, {sizes[-1]:.2f} MB at the end")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=cfg.TrainConfig.epochs)
    parser.add_argument("--warmup", type=int, default=20, help="epochs left out of the comparison")
    parser.add_argument("--compare", type=int, default=100, help="epochs in each compared stretch")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out",
                                                      "long_run.csv"))
    parser.add_argument("--summarize", action="store_true", help="only summarise the CSV at --out")
    args = parser.parse_args(argv)
    if args.summarize:
        with open(args.out, newline="", encoding="utf-8") as handle:
            rows = [{k: (float(v) if v != "" else "") for k, v in row.items()} for row in csv.DictReader(handle)]
        loads = [r["load_1min"] for r in rows]
        print(f"{args.out}: {len(rows)} epochs; 1-minute load {min(loads):.1f}-{max(loads):.1f}")
        print("\n".join(summary(rows, args.warmup, args.compare)))
        return 0
    if args.epochs < args.warmup + 2 * args.compare:
        parser.error(f"--epochs must be at least --warmup + 2 x --compare ({args.warmup + 2 * args.compare})")
    logging.disable(logging.INFO)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    print(f"CPU: {machine.cpu_description()}; ISA caps: {machine.isa_caps()}; at start: {machine.load()}",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = os.path.join(tmp, "seed-shaped")
        write_synthetic_dataset(data_dir, clips=10, seconds=10.0, num_classes=1000, holdout=2, shard_size=256)
        runs_dir = os.path.join(tmp, "runs")
        recorder = Recorder(args.out, runs_dir)
        config = cfg.PipelineConfig(train=cfg.TrainConfig(data=data_dir, epochs=args.epochs, runs_dir=runs_dir,
                                                          name="long-run", export=False, report=False, quiet=True))
        start = time.perf_counter()
        train.train(config, extra_callbacks=[recorder])
        wall = time.perf_counter() - start
    print(f"CPU: {machine.cpu_description()}; at end: {machine.load()}")
    print(f"{args.epochs} epochs of the seed-shaped set in {wall:.0f} s ({wall / args.epochs * 1000:.1f} ms an "
          f"epoch, start-up included); per epoch: {args.out}")
    print("\n".join(summary(recorder.rows, args.warmup, args.compare)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
