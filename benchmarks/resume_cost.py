"""What a mid-epoch resume costs on a streamed dataset: the time to skip the steps already trained.

    python benchmarks/resume_cost.py [--clips 100] [--batch-size 64]

A resume rebuilds the training input at the position of the steps already trained: the
example order is a function of the seed (each pass shuffled with a seed of its own), so the
stream starts at the interrupted pass and skips only the part of it already seen
(`make_dataset(..., skip_steps=N)`). This times the first batch after ½, 1, 2 and 5 epochs
of a streamed (`cache="none"`) dataset of `--clips` 10-second synthetic clips (more windows
than the shuffle buffer), against a fresh start and against skipping every trained batch
from the start of the stream (`.skip(N)`, what a resume without the pass seeds must do),
and prints docs/speed.md's rows.
"""
from __future__ import annotations

import argparse
import math
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from audionet_tf.dataset import reader  # noqa: E402
from audionet_tf.dataset.synthetic import write_synthetic_dataset  # noqa: E402


def first_batch_seconds(data_dir: str, batch: int, skip: int, naive: bool = False) -> float:
    """Seconds from building the input to holding its first batch after `skip` steps."""
    start = time.perf_counter()
    options = reader.ReadOptions(shuffle=True, seed=0, cache="none", repeat=True, verify=False)
    ds = reader.make_dataset(data_dir, "train", batch, options, skip_steps=0 if naive else skip)
    next(iter(ds.skip(skip) if naive else ds))
    return time.perf_counter() - start


def main() -> None:
    """Print the skip cost per fraction of an epoch."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--clips", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        description = write_synthetic_dataset(os.path.join(tmp, "d"), clips=args.clips, seconds=10.0,
                                              num_classes=1000, kinds=5, shard_size=1024)
        steps = math.ceil(description.examples("train") / args.batch_size)
        print(f"{description.examples('train')} streamed windows, batch {args.batch_size}: {steps} steps per epoch")
        first_batch_seconds(os.path.join(tmp, "d"), args.batch_size, 0)  # warm-up: graph building, file cache
        base = first_batch_seconds(os.path.join(tmp, "d"), args.batch_size, 0)
        print(f"fresh start: first batch after {base:.2f} s")
        print("| resumed after | first batch (the project) | × a fresh start | skipping every trained batch | × a fresh start |")
        print("|---|---|---|---|---|")
        for fraction in (0.5, 1.0, 2.0, 5.0):
            skip = int(steps * fraction)
            ours = first_batch_seconds(os.path.join(tmp, "d"), args.batch_size, skip)
            naive = first_batch_seconds(os.path.join(tmp, "d"), args.batch_size, skip, naive=True)
            print(f"| {skip} steps ({fraction:g} epochs) | {ours:.2f} s | {ours / base:.1f}× | {naive:.2f} s | "
                  f"{naive / base:.1f}× |")


if __name__ == "__main__":
    main()
