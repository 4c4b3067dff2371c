"""What a mid-epoch resume costs on a streamed dataset: the time to skip the steps already trained.

    python benchmarks/resume_cost.py [--clips 100] [--batch-size 64]

A resume rebuilds the training input and skips the batches already trained (the example
order is a function of the seed, so the stream continues exactly where it stopped). This
times the first batch after skipping ½, 1 and 2 epochs of a streamed (`cache="none"`,
deterministic) dataset of `--clips` 10-second synthetic clips (more windows than the
shuffle buffer), against a fresh start, and prints the README's rows.
"""
from __future__ import annotations

import argparse
import math
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from audionet_tf import data  # noqa: E402
from audionet_tf.synthetic import write_synthetic_dataset  # noqa: E402


def first_batch_seconds(data_dir: str, batch: int, skip: int) -> float:
    """Seconds from building the input to holding its first batch after `skip` batches."""
    start = time.perf_counter()
    ds = data.make_dataset(data_dir, "train", batch, shuffle=True, seed=0, cache="none", deterministic=True,
                           repeat=True, verify=False).skip(skip)
    next(iter(ds))
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
        print("| resumed after | first batch after | extra time per epoch skipped |")
        print("|---|---|---|")
        for fraction in (0.5, 1.0, 2.0):
            skip = int(steps * fraction)
            seconds = first_batch_seconds(os.path.join(tmp, "d"), args.batch_size, skip)
            print(f"| {skip} steps ({fraction:g} epoch) | {seconds:.2f} s | "
                  f"{(seconds - base) / fraction:.2f} s |")


if __name__ == "__main__":
    main()
