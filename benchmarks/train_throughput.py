"""Training time per epoch on the seed-shaped set: the train command, plain Keras `fit`, PyTorch eager.

    python benchmarks/train_throughput.py [--epochs 30] [--repeats 3] [--process-epochs 20,220]
        [--torch-requirement torch]

The set has the seed experiment's shape: 10 synthetic clips of 10 s, 2,500 windows of 640
samples with 1000 teacher logits, two clips (500 windows) held out, batch 512 (4 steps per
epoch). Three ways to train the same student on it (PyTorch with two thread settings), measured
in one run, each repeat running all of them in turn so the machine's load hits them alike:

- train command: `audionet_tf.train.train()` with the project's defaults, as a user runs it with `--quiet`
  (TFRecord input, callbacks, TensorBoard, checkpoints and backups every 10 epochs, held-out
  clips evaluated every `validate_every` epochs), minus export and report;
- train command as a process: `python -m audionet_tf.train` run twice per repeat, for the two
  `--process-epochs` counts (export and report off); its time per epoch is the difference of
  the two wall times over the difference of the epochs, so start-up, the first tracing and the
  end of training cancel out and validation, checkpoints and TensorBoard are counted at their share
  (200 epochs apart by default: a second of start-up noise is 5 ms an epoch, where 100 apart it was
  10 and the per-repeat figures ranged 61-113 ms);
- Keras fit: `model.fit(x, y, batch_size=512)` on NumPy arrays, Keras defaults, no validation;
- PyTorch eager: the same layers, loss (KL), optimizer (Adam 1e-4) and data in memory, no
  validation, with torch's default threads and with one thread; the ratio column is relative
  to the faster of the two. It runs `benchmarks/torch_baseline.py` in `benchmarks/.venv-torch`,
  which this script creates with `pip install <--torch-requirement> numpy` when it is missing
  (torch is never a dependency of the package or its tests), and first checks that its
  network gives the Keras student's logits on the same weights. Both of PyTorch's layouts are
  run with each thread setting: `Conv1d` on [N, 1, L] and `Conv2d` on channels-last [N, 1, 1, L].

The run prints the CPU, its vector extensions, the ISA caps in force (`ONEDNN_MAX_CPU_ISA`,
`XLA_FLAGS`, `ATEN_CPU_CAPABILITY`: set them to emulate an older CPU; PyTorch's process inherits
them) and the load, and the FLOP floor of a step: the layer table's multiply-adds at batch 512
(conv forward and its weight gradient, the dense layer forward and both its gradients) over the
float32 matrix-product throughput measured in the same run (the faster of NumPy's BLAS and
TensorFlow's `matmul` on 2048 x 2048).

Each measurement skips `--warmup` epochs (tracing, the first validation and checkpoint) and
times the next `--epochs`, so periodic work (validation, checkpoints) is counted at its
share; the train command's last epoch (final checkpoint, filter images) is not timed. The
"steps" column is the time inside the training steps; "overhead" is the rest of the epoch.
"""
from __future__ import annotations

import argparse
import gc
import shutil
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from audionet_tf.commands import train
from audionet_tf.core import config as cfg  # noqa: E402
from audionet_tf.dataset import reader  # noqa: E402
from audionet_tf.dataset.synthetic import write_synthetic_dataset  # noqa: E402
from audionet_tf.model.student import build_audionet  # noqa: E402
from audionet_tf.training import trainer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine  # noqa: E402

BATCH = 512
HERE = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(HERE, ".venv-torch")
TORCH_SCRIPT = os.path.join(HERE, "torch_baseline.py")
COMMAND = "python benchmarks/train_throughput.py"


class EpochClock(keras.callbacks.Callback):
    """Wall time of epochs [warmup, warmup + epochs) and the part of it inside the training steps."""

    def __init__(self, warmup: int, epochs: int):
        super().__init__()
        self.warmup, self.epochs = warmup, epochs
        self.start = self.end = None
        self.steps = 0.0
        self._batch_start = 0.0
        self._timing = False

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.warmup:
            self.start = time.perf_counter()
        if epoch == self.warmup + self.epochs:
            self.end = time.perf_counter()
        self._timing = self.warmup <= epoch < self.warmup + self.epochs

    def on_train_batch_begin(self, batch, logs=None):
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self._timing:
            self.steps += time.perf_counter() - self._batch_start

    def on_train_end(self, logs=None):
        if self.end is None:
            self.end = time.perf_counter()

    def result(self) -> dict[str, float]:
        """Mean seconds per timed epoch, whole and in the steps."""
        return {"epoch_s": (self.end - self.start) / self.epochs, "steps_s": self.steps / self.epochs}


HOOKS = ("on_train_begin", "on_epoch_begin", "on_train_batch_begin", "on_train_batch_end", "on_test_begin",
         "on_test_end", "on_epoch_end", "on_train_end")


class Breakdown:
    """Where each epoch of the train command goes: per epoch, the wall time, the steps, the held-out
    evaluation and each callback's hooks (the time between them is the loop's own)."""

    def __init__(self):
        self.epochs: dict[int, dict[str, float]] = {}
        self.epoch = -1
        self._begin = None

    def _add(self, part: str, seconds: float) -> None:
        row = self.epochs.setdefault(self.epoch, {})
        row[part] = row.get(part, 0.0) + seconds

    def wrap(self, callbacks):
        """Time every hook of these callbacks (instances are patched; the train command runs once)."""
        for callback in callbacks:
            name = type(callback).__name__
            for hook in HOOKS:
                original = getattr(callback, hook)

                def timed(*args, _original=original, _name=name, _hook=hook, **kwargs):
                    if _hook == "on_epoch_begin":
                        self._epoch_begin(args[0])
                    start = time.perf_counter()
                    try:
                        return _original(*args, **kwargs)
                    finally:
                        self._add(f"{_name}" if _hook not in ("on_train_batch_begin", "on_train_batch_end")
                                  else f"{_name} (batch)", time.perf_counter() - start)
                setattr(callback, hook, timed)

    def _epoch_begin(self, epoch: int) -> None:
        now = time.perf_counter()
        if self._begin is not None and epoch != self.epoch:
            self._add("epoch", now - self._begin)
        if epoch != self.epoch:
            self.epoch, self._begin = epoch, now

    def install(self):
        """Time the train command's loop: its steps, its held-out evaluations and its callbacks' hooks."""
        from audionet_tf.training import loop

        original_fit, breakdown = loop.FitLoop.fit, self

        def timed(function, part):
            def call(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return function(*args, **kwargs)
                finally:
                    breakdown._add(part, time.perf_counter() - start)
            return call

        def fit(fit_loop, iterator, **kwargs):
            if not getattr(fit_loop, "_timed", False):
                fit_loop._train_function = timed(fit_loop._train_function, "steps")
                fit_loop.evaluate = timed(fit_loop.evaluate, "evaluation")
                fit_loop._timed = True
            self.wrap(kwargs["callbacks"])
            try:
                return original_fit(fit_loop, iterator, **kwargs)
            finally:
                loop.FitLoop.fit = original_fit
                breakdown.finish()

        loop.FitLoop.fit = fit
        # Python's cyclic garbage collector pauses whichever thread allocates: counted apart.
        gc_start: dict[str, float] = {}

        def collection(phase, info):
            if phase == "start":
                gc_start["t"] = time.perf_counter()
            elif "t" in gc_start and threading.current_thread() is threading.main_thread():
                breakdown._add(f"gc (generation {info['generation']})", time.perf_counter() - gc_start.pop("t"))

        gc.callbacks.append(collection)
        self._collection = collection
        return self

    def finish(self) -> None:
        """The last epoch's wall time ends here."""
        if self._begin is not None:
            self._add("epoch", time.perf_counter() - self._begin)
            self._begin = None
        if getattr(self, "_collection", None) in gc.callbacks:
            gc.callbacks.remove(self._collection)

    def table(self, first: int, last: int) -> str:
        """Per epoch [first, last): wall, steps, evaluation, then each part over 1 ms, in ms."""
        lines = []
        for epoch in range(first, last):
            row = dict(self.epochs.get(epoch, {}))
            wall, steps = row.pop("epoch", 0.0), row.pop("steps", 0.0)
            evaluation = row.pop("evaluation", 0.0)
            # A collection happens inside a step, a hook or the loop: listed, not added again.
            hooks = sum(v for k, v in row.items() if not k.startswith("gc"))
            parts = ", ".join(f"{k} {v * 1000:.1f}" for k, v in sorted(row.items(), key=lambda kv: -kv[1])
                              if v >= 0.001)
            loop = wall - steps - evaluation - hooks
            if epoch == max(self.epochs):
                # Training's end (waiting for the files and figures, the final metrics) is counted in it.
                lines.append(f"epoch {epoch + 1:3d} and training's end: {wall * 1000:.1f} ms; " + ", ".join(
                    f"{k} {v * 1000:.1f}" for k, v in sorted(self.epochs[epoch].items(), key=lambda kv: -kv[1])
                    if v >= 0.001 and k != "epoch"))
                continue
            lines.append(f"epoch {epoch + 1:3d}: {wall * 1000:6.1f} ms, steps {steps * 1000:6.1f}, outside "
                         f"{(wall - steps) * 1000:5.1f} ({(wall - steps) / wall:4.0%}): evaluation "
                         f"{evaluation * 1000:.1f}, loop {loop * 1000:.1f}; {parts}")
        return "\n".join(lines)


def train_command(data_dir: str, runs_dir: str, warmup: int, epochs: int,
                  validate_every: int = cfg.TrainConfig.validate_every, breakdown: bool = False,
                  histogram_every: int = cfg.TrainConfig.histogram_every) -> dict[str, float]:
    """`train.train()` with the defaults, one epoch more than timed (its final work is not timed)."""
    clock = EpochClock(warmup, epochs)
    config = cfg.PipelineConfig(train=cfg.TrainConfig(
        data=data_dir, epochs=warmup + epochs + 1, runs_dir=runs_dir, name=f"bench-{time.time_ns()}",
        export=False, report=False, quiet=True, validate_every=validate_every,
        histogram_every=histogram_every))
    parts = Breakdown().install() if breakdown else None
    train.train(config, extra_callbacks=[clock])
    if parts is not None:
        print(f"train command, per epoch (timed: {warmup + 1}-{warmup + epochs}; ms):\n"
              f"{parts.table(0, warmup + epochs + 1)}", flush=True)
    return clock.result()


def keras_fit(x: np.ndarray, y: np.ndarray, warmup: int, epochs: int) -> dict[str, float]:
    """Plain `model.fit` on NumPy arrays with Keras's defaults."""
    keras.utils.set_random_seed(0)
    model = build_audionet(None, y.shape[1])
    trainer.compile_student(model, cfg.TrainConfig(), steps_per_execution=1)
    clock = EpochClock(warmup, epochs)
    model.fit(x, y, batch_size=BATCH, epochs=warmup + epochs, verbose=0, callbacks=[clock])
    return clock.result()


def pytorch(arrays: str, warmup: int, epochs: int, threads: int = 0, layout: str = "ncl") -> dict[str, float]:
    """The PyTorch eager loop, in its own virtual environment (`threads` 0: torch's default)."""
    python = os.path.join(VENV, "bin", "python")
    out = subprocess.run([python, TORCH_SCRIPT, arrays, "--epochs", str(epochs), "--warmup", str(warmup),
                          "--threads", str(threads), "--layout", layout],
                         capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"torch baseline failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def train_process(data_dir: str, runs_dir: str, epochs: int) -> float:
    """Wall seconds of `python -m audionet_tf.train` for `epochs` epochs on the set (export and report off)."""
    name = f"process-{time.time_ns()}"
    command = [sys.executable, "-m", "audionet_tf.train", "--data", data_dir, "--epochs", str(epochs),
               "--runs-dir", runs_dir, "--name", name, "--quiet", "--no-export", "--no-report"]
    start = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if out.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    shutil.rmtree(os.path.join(runs_dir, name), ignore_errors=True)
    return seconds


def tf_matmul_gflops(size: int = 2048, seconds: float = 1.0) -> float:
    """float32 GFLOP/s of TensorFlow's matrix product (oneDNN's or Eigen's kernels, every core)."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    a, b = (tf.constant(rng.standard_normal((size, size), dtype=np.float32)) for _ in range(2))
    product = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)[:1, :1]))
    product().numpy()
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == float("inf"):
        start = time.perf_counter()
        product().numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


def step_flops(batch: int, window: int, classes: int) -> float:
    """Multiply-adds x 2 of one training step by the layer table (the input needs no gradient)."""
    from audionet_tf.model.student import CONV, conv_length

    _, taps, _, _ = CONV
    filters = cfg.ModelConfig().conv_filters
    conv = 2 * batch * conv_length(window) * taps * filters
    dense = 2 * batch * filters * classes
    return 2 * conv + 3 * dense


def ensure_torch(requirement: str) -> str:
    """The torch virtual environment, created with `pip install <requirement> numpy` if missing."""
    python = os.path.join(VENV, "bin", "python")
    check = [python, "-c", "import torch; print(torch.__version__)"]
    if os.path.exists(python) and subprocess.run(check, capture_output=True).returncode == 0:
        return subprocess.run(check, capture_output=True, text=True).stdout.strip()
    subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    print(f"installing {requirement} into {VENV} (PyPI's default torch is the CUDA build, about 3 GB "
          f"with its nvidia packages; a CPU build is smaller)", file=sys.stderr)
    subprocess.run([python, "-m", "pip", "install", "-q", requirement, "numpy"], check=True)
    return subprocess.run(check, capture_output=True, text=True, check=True).stdout.strip()


def write_arrays(data_dir: str, path: str) -> tuple[np.ndarray, np.ndarray]:
    """The train split and a Keras student's initial weights and logits, for the torch process."""
    arrays = reader.load_arrays(data_dir, "train")
    x, y = arrays["audio"].astype(np.float32), arrays["logits"].astype(np.float32)
    keras.utils.set_random_seed(0)
    model = build_audionet(None, y.shape[1])
    probe = model.predict(x[:8, :, None], verbose=0)
    kernel, bias = model.get_layer("conv").get_weights()
    dense_kernel, dense_bias = model.get_layer("logits").get_weights()
    np.savez(path, audio=x, logits=y, conv_kernel=kernel, conv_bias=bias, dense_kernel=dense_kernel,
             dense_bias=dense_bias, keras_logits=probe, input_scale=np.float32(cfg.ModelConfig().input_scale))
    return x[..., None], y


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30, help="timed epochs per measurement")
    parser.add_argument("--warmup", type=int, default=10, help="untimed epochs first (one validation + checkpoint)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--validate-every", type=int, default=cfg.TrainConfig.validate_every,
                        help="the train command's validation frequency")
    parser.add_argument("--histogram-every", type=int, default=cfg.TrainConfig.histogram_every,
                        help="the train command's epochs between filter images, timelines and histograms")
    parser.add_argument("--breakdown", action="store_true",
                        help="print where each of the train command's epochs goes (steps, evaluation, each callback)")
    parser.add_argument("--torch-requirement", default="torch", help="what pip installs into the torch venv")
    parser.add_argument("--process-epochs", default="20,220",
                        help="the two epoch counts of the train command run as a process (empty: not run)")
    args = parser.parse_args(argv)
    logging.disable(logging.INFO)
    torch_version = ensure_torch(args.torch_requirement)
    process_epochs = [int(n) for n in args.process_epochs.split(",") if n.strip()]
    if process_epochs and (len(process_epochs) != 2 or process_epochs[0] >= process_epochs[1]):
        parser.error("--process-epochs takes two increasing counts, such as 20,220")
    print(f"CPU: {machine.cpu_description()}; ISA caps: {machine.isa_caps()}; at start: {machine.load()}", flush=True)
    gflops = {"NumPy": machine.matmul_gflops(), "TensorFlow": tf_matmul_gflops()}
    torch_ways = {"PyTorch eager": (0, "ncl"), "PyTorch eager, 1 thread": (1, "ncl"),
                  "PyTorch eager, channels last": (0, "nhwc"), "PyTorch eager, channels last, 1 thread": (1, "nhwc")}
    results: dict[str, list[dict[str, float]]] = {"train command": [], "Keras fit (NumPy)": [],
                                                  **{name: [] for name in torch_ways}}
    process: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = os.path.join(tmp, "seed-shaped")
        description = write_synthetic_dataset(data_dir, clips=10, seconds=10.0, num_classes=1000, holdout=2,
                                              shard_size=256)
        arrays = os.path.join(tmp, "trainer.npz")
        x, y = write_arrays(data_dir, arrays)
        for _ in range(args.repeats):
            results["train command"].append(train_command(data_dir, os.path.join(tmp, "runs"), args.warmup,
                                                          args.epochs, args.validate_every,
                                                          args.breakdown, args.histogram_every))
            results["Keras fit (NumPy)"].append(keras_fit(x, y, args.warmup, args.epochs))
            for name, (threads, layout) in torch_ways.items():
                results[name].append(pytorch(arrays, args.warmup, args.epochs, threads, layout))
            if process_epochs:
                short, long = (train_process(data_dir, os.path.join(tmp, "process-runs"), n) for n in process_epochs)
                process.append((long - short) / (process_epochs[1] - process_epochs[0]))
    print(f"CPU: {machine.cpu_description()}; ISA caps: {machine.isa_caps()}; at end: {machine.load()}")
    check = max(results[name][0]["relative_logits_difference"] for name in torch_ways)
    print(f"seed-shaped set: {description.examples('train')} training windows x 640 samples (+"
          f"{description.examples('validation')} held out), 1000 classes, batch {BATCH}; "
          f"{args.epochs} timed epochs after {args.warmup}, {args.repeats} interleaved repeats; "
          f"torch {torch_version} (same logits as Keras on the same weights: relative difference {check:.1e})")
    # The ratio is to the faster PyTorch variant of this run (one thread can win on a loaded machine).
    torch_epoch = min(float(np.median([r["epoch_s"] for r in results[name]])) for name in torch_ways)
    print(f"{'method':24s} {'ms/epoch (median, range)':>26s} {'steps':>6s} {'overhead':>13s} {'vs PyTorch':>10s}")
    rows = []
    for name, runs in results.items():
        epoch = np.array([r["epoch_s"] for r in runs]) * 1000
        steps = np.array([r["steps_s"] for r in runs]) * 1000
        med, over = float(np.median(epoch)), float(np.median(epoch - steps))
        speed = torch_epoch * 1000 / med
        print(f"{name:24s} {med:8.0f} ({epoch.min():.0f}-{epoch.max():.0f}){'':8s} {np.median(steps):6.0f} "
              f"{over:6.0f} ({over / med:4.0%}) {speed:9.2f}x")
        rows.append(f"| {name} | {med:.0f} ms ({epoch.min():.0f}–{epoch.max():.0f}) | {np.median(steps):.0f} ms | "
                    f"{over:.0f} ms ({over / med:.0%}) | {speed:.2f}× |")
    flags = f" --validate-every {args.validate_every}" if args.validate_every != cfg.TrainConfig.validate_every else ""
    if args.histogram_every != cfg.TrainConfig.histogram_every:
        flags += f" --histogram-every {args.histogram_every}"
    print(f"\ndocs/speed.md rows ({COMMAND} --epochs {args.epochs} --repeats {args.repeats}{flags}):")
    print("| way to train | time per epoch (median, range) | in the steps | overhead | speed vs the faster PyTorch |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    # Each repeat ran every way in turn under the same load: its own ratio shows the spread.
    per_repeat = [min(results[name][i]["epoch_s"] for name in torch_ways)
                  / results["train command"][i]["epoch_s"] for i in range(args.repeats)]
    overheads = [1 - r["steps_s"] / r["epoch_s"] for r in results["train command"]]
    print(f"\ntrain command vs the faster PyTorch of the same repeat: "
          f"{', '.join(f'{r:.2f}×' for r in per_repeat)}; its overhead per repeat: "
          f"{', '.join(f'{o:.0%}' for o in overheads)}")
    if process:
        med = float(np.median(process)) * 1000
        print(f"train command as a process (python -m audionet_tf.train, {process_epochs[1]} minus "
              f"{process_epochs[0]} epochs): {med:.0f} ms per epoch (per repeat: "
              f"{', '.join(f'{p * 1000:.0f}' for p in process)}), {torch_epoch * 1000 / med:.2f}x the faster PyTorch")
        print(f"| train command as a process | {med:.0f} ms | | | {torch_epoch * 1000 / med:.2f}× |")
    # The floor: the layer table's arithmetic at the measured matrix-product throughput.
    steps_per_epoch = -(-len(x) // BATCH)
    flops = step_flops(BATCH, x.shape[1], y.shape[1])
    best = max(gflops.values())
    floor_ms = flops / best / 1e6
    step_ms = float(np.median([r["steps_s"] for r in results["train command"]])) * 1000 / steps_per_epoch
    print(f"FLOP floor: {flops / 1e9:.3f} GFLOP a step (batch {BATCH}) at {best:.0f} GFLOP/s (float32 "
          f"2048x2048 product: NumPy {gflops['NumPy']:.0f}, TensorFlow {gflops['TensorFlow']:.0f}) = "
          f"{floor_ms:.1f} ms; the train command's step: {step_ms:.1f} ms = {step_ms / floor_ms:.1f}x the floor")
    return 0


if __name__ == "__main__":
    sys.exit(main())
