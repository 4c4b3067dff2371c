"""SoundNet-8's training time per epoch: the train command's step (FitLoop) against PyTorch eager, in one run.

    python benchmarks/train_soundnet.py [--windows 48] [--batch 16] [--epochs 3] [--warmup 1] [--repeats 1]

The data: `--windows` random windows of SoundNet-8's default length (209,374 samples, 13.09 s at
16 kHz) with random teacher logits over `--classes` classes (the step's cost does not depend on
what the windows hold). An epoch is one pass over them at `--batch`. Two ways to train the same
network on them, each repeat running both in turn so that the machine's load hits them alike:

- TensorFlow: `build_student("soundnet8", ...)` compiled by the trainer's own `compile_student`
  (Adam 1e-4, the distillation loss, the agreement metrics) and trained by the train command's
  loop (`training/loop.py` FitLoop: a whole epoch per `tf.function` call) on a repeated, batched
  `tf.data` stream of the arrays in memory; no validation, no callbacks;
- PyTorch eager: the same layers (`benchmarks/torch_soundnet.py`: Conv1d, BatchNorm1d, ReLU,
  MaxPool1d), loss, optimizer (Adam with Keras's epsilon) and data, with torch's default threads
  and with one thread, in `benchmarks/.venv-torch` (created as `train_throughput.py` does when
  missing). It first checks that its network gives the Keras student's logits on the same weights.

Each measurement skips `--warmup` epochs (tracing) and times the next `--epochs`. The run prints
the CPU, its vector extensions, the ISA caps in force and the load beside the figures; the ratio
is PyTorch's faster setting over TensorFlow's time per epoch (above 1: TensorFlow is faster).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine  # noqa: E402
from train_throughput import ensure_torch, VENV  # noqa: E402

from audionet_tf.core import config as cfg  # noqa: E402
from audionet_tf.model import soundnet  # noqa: E402
from audionet_tf.model.student import build_student  # noqa: E402
from audionet_tf.training import loop, trainer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


class EpochTimes(keras.callbacks.Callback):
    """Wall time of each epoch after the first `warmup`."""

    def __init__(self, warmup: int):
        super().__init__()
        self.warmup, self.times, self._start = warmup, [], 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if epoch >= self.warmup:
            self.times.append(time.perf_counter() - self._start)


def make_arrays(windows: int, classes: int, path: str) -> tuple[np.ndarray, np.ndarray, list]:
    """Random windows and logits, the Keras student's initial weights and its training-mode logits, saved for torch."""
    import tensorflow as tf

    length = soundnet.min_input_length("soundnet8")
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.5, 0.5, (windows, length)).astype(np.float32)
    y = (3 * rng.standard_normal((windows, classes))).astype(np.float32)
    keras.utils.set_random_seed(0)
    model = build_student("soundnet8", length, classes)
    start = model.get_weights()
    probe = model(tf.constant(x[:4, :, None]), training=True).numpy()
    # The layer table travels with the weights: torch_soundnet.py builds its network from model/soundnet.py's rows.
    saved = {"audio": x, "logits": y, "keras_logits": probe, "input_scale": np.float32(cfg.ModelConfig().input_scale),
             "table": np.array(json.dumps(soundnet.table("soundnet8")))}
    convs = [r for r in soundnet.table("soundnet8") if r[0] == "conv"]
    for i, row in enumerate(convs):
        last = i == len(convs) - 1
        kernel, bias = model.get_layer(row[1] if last else f"{row[1]}_conv").get_weights()
        saved[f"kernel{i}"], saved[f"bias{i}"] = kernel, bias
        if not last:
            gamma, beta, _, _ = model.get_layer(f"{row[1]}_bn").get_weights()
            saved[f"gamma{i}"], saved[f"beta{i}"] = gamma, beta
    np.savez(path, **saved)
    return x, y, start


def tensorflow_epochs(x: np.ndarray, y: np.ndarray, start: list, batch: int, warmup: int, epochs: int) -> dict:
    """Mean wall time per timed epoch of the train command's loop on the arrays."""
    import tensorflow as tf

    model = build_student("soundnet8", x.shape[1], y.shape[1])
    model.set_weights(start)
    steps = len(x) // batch
    trainer.compile_student(model, cfg.TrainConfig(learning_rate=1e-4, batch_size=batch), steps)
    data = tf.data.Dataset.from_tensor_slices((x[..., None], y)).shuffle(len(x), seed=0).batch(
        batch, drop_remainder=True).repeat().prefetch(2)
    strategy = tf.distribute.get_strategy()
    fit_loop = loop.FitLoop(model, strategy, steps, (tf.zeros([1, x.shape[1], 1]), tf.zeros([1, y.shape[1]])))
    timer = EpochTimes(warmup)
    fit_loop.fit(iter(data), epochs=warmup + epochs, initial_epoch=0, steps_per_epoch=steps, callbacks=[timer],
                 verbose=0)
    return {"epoch_s": float(np.mean(timer.times)), "epochs": timer.times}


def pytorch_epochs(arrays: str, batch: int, warmup: int, epochs: int, threads: int) -> dict:
    """The torch baseline in its own environment: its JSON line."""
    python = os.path.join(VENV, "bin", "python")
    result = subprocess.run([python, os.path.join(HERE, "torch_soundnet.py"), arrays, "--epochs", str(epochs),
                             "--warmup", str(warmup), "--batch", str(batch), "--threads", str(threads)],
                            capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"torch baseline failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    """Run both trainers `--repeats` times and print the table with the machine beside it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=48)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--torch-requirement", default="torch", help="what pip installs into the torch venv")
    args = parser.parse_args(argv)
    torch_version = ensure_torch(args.torch_requirement)
    import tensorflow as tf

    print(f"CPU: {machine.cpu_description()}")
    print(f"ISA caps: {machine.isa_caps()}")
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, torch {torch_version}")
    print(f"soundnet8, {args.windows} windows of {soundnet.min_input_length('soundnet8')} samples, "
          f"{args.classes} classes, batch {args.batch} ({args.windows // args.batch} steps an epoch), "
          f"{args.warmup} warm-up + {args.epochs} timed epochs")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        arrays = os.path.join(tmp, "soundnet8.npz")
        x, y, start = make_arrays(args.windows, args.classes, arrays)
        for repeat in range(args.repeats):
            row = {"load before": machine.load()}
            row["tensorflow"] = tensorflow_epochs(x, y, start, args.batch, args.warmup, args.epochs)
            row["torch"] = pytorch_epochs(arrays, args.batch, args.warmup, args.epochs, 0)
            row["torch 1 thread"] = pytorch_epochs(arrays, args.batch, args.warmup, args.epochs, 1)
            row["load after"] = machine.load()
            rows.append(row)
            best = min(row["torch"]["epoch_s"], row["torch 1 thread"]["epoch_s"])
            print(f"repeat {repeat + 1}: load {row['load before']} -> {row['load after']}")
            print(f"  TensorFlow (train command's loop)  {row['tensorflow']['epoch_s']:8.2f} s/epoch")
            print(f"  PyTorch eager, {row['torch']['threads']} threads          {row['torch']['epoch_s']:8.2f} s/epoch")
            print(f"  PyTorch eager, 1 thread           {row['torch 1 thread']['epoch_s']:8.2f} s/epoch")
            print(f"  ratio (PyTorch's faster / TensorFlow): {best / row['tensorflow']['epoch_s']:.2f}x")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
