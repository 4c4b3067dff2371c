"""Which bounds training at scale: reading TFRecords, or the training step? Both measured in one run.

    python benchmarks/input_pipeline.py [--examples 20000] [--shards 16]

Writes a dataset larger than the seed set, then measures, on this machine:

- streaming read: `make_dataset(cache="none")` (interleaved shards, parse, decode, shuffle
  buffer), examples/s — what a dataset too big for memory gives;
- cached read: the same split cached in memory, after its first pass;
- training step: `fit` on one cached batch repeated (no input cost), samples/s.

The ratio streaming / training says whether the input pipeline can keep the step fed.
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
import tensorflow as tf  # noqa: E402

from audionet_tf.core import config as cfg  # noqa: E402
from audionet_tf.dataset import reader  # noqa: E402
from audionet_tf.dataset.synthetic import write_synthetic_dataset  # noqa: E402
from audionet_tf.model.student import build_audionet  # noqa: E402
from audionet_tf.training import trainer

BATCH = 512


def read_rate(data_dir: str, cache: str, batches: int) -> float:
    """examples/s of iterating the input pipeline (after one warm-up pass when cached)."""
    ds = reader.make_dataset(data_dir, "train", BATCH, reader.ReadOptions(cache=cache, repeat=True, verify=False))
    iterator = iter(ds)
    warm = batches if cache == "memory" else 2
    for _ in range(warm):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * BATCH / (time.perf_counter() - start)


def step_rate(num_classes: int, steps: int) -> float:
    """samples/s of the training step alone, on one batch held in memory."""
    keras.utils.set_random_seed(0)
    model = build_audionet(None, num_classes)
    trainer.compile_student(model, cfg.TrainConfig(), steps_per_execution=steps)
    x = tf.random.uniform([BATCH, 640, 1], -1, 1)
    y = tf.random.normal([BATCH, num_classes])
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0)
    start = time.perf_counter()
    model.fit(ds, epochs=2, steps_per_epoch=steps, verbose=0)
    return 2 * steps * BATCH / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20000)
    parser.add_argument("--shards", type=int, default=16)
    args = parser.parse_args(argv)
    clips = max(1, args.examples // 250)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = os.path.join(tmp, "big")
        write_synthetic_dataset(data_dir, clips=clips, seconds=10.0, num_classes=1000,
                                shard_size=math.ceil(clips * 250 / args.shards))
        batches = max(4, clips * 250 // BATCH)
        streaming = read_rate(data_dir, "none", batches)
        cached = read_rate(data_dir, "memory", batches)
    step = step_rate(1000, 5)
    print(f"{clips * 250} examples in {args.shards} shards, batch {BATCH}, {os.cpu_count()} cores")
    print(f"{'measure':28s} {'examples/s':>11s} {'vs step':>8s}")
    for name, value in (("streaming read (no cache)", streaming), ("cached read", cached),
                        ("training step", step)):
        print(f"{name:28s} {value:11.0f} {value / step:7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
