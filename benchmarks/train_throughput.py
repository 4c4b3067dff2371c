"""Training throughput on the seed-shaped problem, against a plain `model.fit` baseline in the same run.

    python benchmarks/train_throughput.py [--epochs 40] [--repeats 3]

The problem has the seed set's shape: 2,475 windows of 640 samples with 1000 teacher
logits, batch 512 (about 5 steps per epoch). Three ways to train the same student:

- baseline: `model.fit(x, y, batch_size=512)` on NumPy arrays, Keras defaults;
- pipeline: the project's TFRecord input pipeline (cached, stateless shuffle, repeated)
  with one `fit` call per epoch's worth of steps (`steps_per_execution`), no callbacks;
- train: `audionet_tf.train.train()` as a user runs it (callbacks, backups, checkpoints,
  TensorBoard), minus export and report.

Each is timed over the same number of epochs after one warm-up epoch; the best of
`--repeats` is kept (the machine is shared) and printed as samples/s and as a ratio to the
baseline measured in this run.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from audionet_tf import config as cfg  # noqa: E402
from audionet_tf import data, train  # noqa: E402
from audionet_tf.model import build_audionet  # noqa: E402
from audionet_tf.synthetic import write_synthetic_dataset  # noqa: E402

BATCH = 512


class EpochTimer(keras.callbacks.Callback):
    """Wall time of the epochs after the first (which includes tracing)."""

    def __init__(self):
        super().__init__()
        self.start = None
        self.seconds = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            self.start = time.perf_counter()

    def on_train_end(self, logs=None):
        self.seconds = time.perf_counter() - self.start


def baseline(data_dir: str, epochs: int) -> float:
    """samples/s of plain model.fit on NumPy arrays."""
    arrays = data.load_arrays(data_dir, "train")
    x, y = arrays["audio"][..., None], arrays["logits"]
    keras.utils.set_random_seed(0)
    model = build_audionet(None, y.shape[1])
    train.compile_student(model, cfg.TrainConfig())
    timer = EpochTimer()
    model.fit(x, y, batch_size=BATCH, epochs=epochs + 1, verbose=0, callbacks=[timer], shuffle=True)
    return len(x) * epochs / timer.seconds


def pipeline(data_dir: str, epochs: int) -> float:
    """samples/s of the project's input pipeline and fit settings, without callbacks."""
    count = data.records.read_description(data_dir).examples("train")
    steps = math.ceil(count / BATCH)
    keras.utils.set_random_seed(0)
    model = build_audionet(None, 1000)
    train.compile_student(model, cfg.TrainConfig(), steps_per_execution=steps)
    ds = data.make_dataset(data_dir, "train", BATCH, repeat=True)
    timer = EpochTimer()
    model.fit(ds, epochs=epochs + 1, steps_per_epoch=steps, verbose=0, callbacks=[timer])
    return steps * BATCH * epochs / timer.seconds


def full_train(data_dir: str, epochs: int, runs_dir: str, checkpoint_every: int) -> float:
    """samples/s of `train.train()` with its callbacks, as a user runs it."""
    count = data.records.read_description(data_dir).examples("train")
    steps = math.ceil(count / BATCH)
    timer = EpochTimer()
    config = cfg.PipelineConfig(train=cfg.TrainConfig(
        data=data_dir, epochs=epochs + 1, runs_dir=runs_dir, name=f"bench-{time.time_ns()}", export=False,
        report=False, quiet=True, checkpoint_every=checkpoint_every))
    train.train(config, extra_callbacks=[timer])
    return steps * BATCH * epochs / timer.seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40, help="timed epochs per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    import logging

    logging.disable(logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = os.path.join(tmp, "seed-shaped")
        # 9 clips of 10 s and one of 9 s: the seed set's 2,475 windows.
        write_synthetic_dataset(data_dir, clips=10, seconds=[10.0] * 9 + [9.0], num_classes=1000,
                                shard_size=256)
        runs = os.path.join(tmp, "runs")
        best = {"baseline": 0.0, "pipeline": 0.0, "train (checkpoint every 10)": 0.0}
        for _ in range(args.repeats):
            best["baseline"] = max(best["baseline"], baseline(data_dir, args.epochs))
            best["pipeline"] = max(best["pipeline"], pipeline(data_dir, args.epochs))
            best["train (checkpoint every 10)"] = max(best["train (checkpoint every 10)"],
                                                      full_train(data_dir, args.epochs, runs, 10))
    base = best["baseline"]
    print(f"seed-shaped problem: 2,475 windows x 640 samples, 1000 classes, batch {BATCH}, "
          f"{args.epochs} timed epochs, best of {args.repeats}")
    print(f"{'method':32s} {'samples/s':>10s} {'ratio':>7s}")
    for name, value in best.items():
        print(f"{name:32s} {value:10.0f} {value / base:6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
