"""Where the train command's own step goes: TensorFlow's profiler over a few epochs, per op.

    python benchmarks/train_step_profile.py [--epochs 5] [--top 25]
    ONEDNN_MAX_CPU_ISA=AVX2 XLA_FLAGS=--xla_cpu_max_isa=AVX2 python benchmarks/train_step_profile.py

Trains the student with the train command's code (`audionet_tf.commands.train.train`, its defaults,
export and report off) on the seed-shaped set (10 synthetic clips of 10 s, batch 512) and traces
`--epochs` epochs after 12 untimed ones with `tf.profiler.experimental`. The trace's events are summed
per op over every thread and divided by the steps traced: milliseconds of CPU per step, the compiled
(XLA) passes under their fusion names, the input pipeline's work beside the model's. What
`benchmarks/train_step_variants.py` times apart, this shows inside the command as it runs.
"""
from __future__ import annotations

import argparse
import collections
import glob
import logging
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

from audionet_tf.commands import train  # noqa: E402
from audionet_tf.core import config as cfg  # noqa: E402
from audionet_tf.dataset.synthetic import write_synthetic_dataset  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine  # noqa: E402

WARMUP = 12
# Events that contain others (the executor's and XLA's own spans), left out of the per-op sums.
CONTAINERS = ("ExecutorState", "CpuExecutable", "BlockUntilReady", "EagerExecute", "EagerKernelExecute",
              "EagerLocalExecute", "KernelAndDeviceFunc", "TFE_Py_Execute", "_train_steps", "_test_steps",
              "Iterator::", "PrefetchProduce", "ExecutorDoneCallback")


class Profile(keras.callbacks.Callback):
    """Traces epochs [WARMUP, WARMUP + epochs) and counts their steps."""

    def __init__(self, log_dir: str, epochs: int):
        super().__init__()
        self.log_dir, self.epochs, self.steps = log_dir, epochs, 0

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == WARMUP:
            tf.profiler.experimental.start(self.log_dir)
        elif epoch == WARMUP + self.epochs:
            tf.profiler.experimental.stop()

    def on_epoch_end(self, epoch, logs=None):
        if WARMUP <= epoch < WARMUP + self.epochs:
            self.steps += self.params["steps"]


def op_times(log_dir: str) -> dict[str, float]:
    """Milliseconds per op name, summed over every thread of the trace in `log_dir`."""
    space = xplane_pb2.XSpace()
    with open(glob.glob(os.path.join(log_dir, "**", "*.xplane.pb"), recursive=True)[0], "rb") as f:
        space.ParseFromString(f.read())
    totals: dict[str, float] = collections.defaultdict(float)
    for plane in space.planes:
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                name = names.get(event.metadata_id, "?")
                if not name.startswith(CONTAINERS):
                    # Graph ops are named "scope/op:Type"; keep the op, drop the loop's scopes.
                    totals[name.split(":")[0].replace("while/body/_1/", "").replace("while/", "")] += \
                        event.duration_ps / 1e9
    return totals


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="epochs traced, after 12 untimed ones")
    parser.add_argument("--top", type=int, default=25, help="ops printed, the costliest first")
    args = parser.parse_args(argv)
    logging.disable(logging.INFO)
    print(f"CPU: {machine.cpu_description()}; ISA caps: {machine.isa_caps()}; at start: {machine.load()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = os.path.join(tmp, "seed-shaped")
        write_synthetic_dataset(data_dir, clips=10, seconds=10.0, num_classes=1000, holdout=2, shard_size=256)
        profile = Profile(os.path.join(tmp, "profile"), args.epochs)
        config = cfg.PipelineConfig(train=cfg.TrainConfig(
            data=data_dir, epochs=WARMUP + args.epochs + 1, runs_dir=os.path.join(tmp, "runs"), name="profile",
            export=False, report=False, quiet=True))
        train.train(config, extra_callbacks=[profile])
        totals = op_times(profile.log_dir)
    print(f"at end: {machine.load()}; {profile.steps} steps traced (batch 512); CPU ms per step, summed over threads:")
    ranked = sorted(totals.items(), key=lambda item: -item[1])
    for name, ms in ranked[:args.top]:
        print(f"{ms / profile.steps:8.3f}  {name}")
    print(f"{sum(totals.values()) / profile.steps:8.3f}  all ops")
    return 0


if __name__ == "__main__":
    sys.exit(main())
