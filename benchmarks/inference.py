"""Inference speed of every artifact on the same long recording, against the Keras model in the same run.

    python benchmarks/inference.py [--seconds 120] [--repeats 3]

Trains nothing: builds a student with random weights (speed does not depend on them),
exports it with the project's own export code (calibrating int8 on windows of a synthetic
dataset), then times windows/s and the real-time factor (seconds of audio per second of
compute) for Keras, the SavedModel, TFLite float and TFLite int8, TFLite on one thread.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from audionet_tf.export import calibration_windows, export_model, tflite_runner  # noqa: E402
from audionet_tf.model import build_audionet  # noqa: E402
from audionet_tf.synthetic import write_synthetic_dataset  # noqa: E402

RATE, WINDOW = 16000, 640


def best_time(fn, windows: np.ndarray, repeats: int) -> float:
    """Best wall time of `fn(windows)` over `repeats` runs, after one warm-up."""
    fn(windows)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(windows)
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="length of the recording")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    t = np.arange(int(args.seconds * RATE)) / RATE
    audio = (0.4 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
    windows = audio[: len(audio) // WINDOW * WINDOW].reshape(-1, WINDOW)
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_dataset(os.path.join(tmp, "data"), clips=4, seconds=4.0, num_classes=1000)
        model = build_audionet(None, 1000, input_scale=256.0)
        export_model(model, os.path.join(tmp, "export"), class_names=[str(i) for i in range(1000)],
                     calibration=calibration_windows(os.path.join(tmp, "data")))
        saved = tf.saved_model.load(os.path.join(tmp, "export")).signatures["serving_default"]
        runners = {
            "Keras (model.predict)": lambda w: model.predict(w[..., None], batch_size=1024, verbose=0),
            "SavedModel serving_default": lambda w: saved(windows=tf.constant(w))["logits"].numpy(),
            "TFLite float, 1 thread": tflite_runner(os.path.join(tmp, "export", "model.tflite")),
            "TFLite int8, 1 thread": tflite_runner(os.path.join(tmp, "export", "model_int8.tflite")),
        }
        seconds = {name: best_time(run, windows, args.repeats) for name, run in runners.items()}
    base = seconds["Keras (model.predict)"]
    audio_seconds = len(windows) * WINDOW / RATE
    print(f"{audio_seconds:.0f} s of audio = {len(windows)} windows of 40 ms, 1000 classes, best of {args.repeats}")
    print(f"{'artifact':28s} {'windows/s':>10s} {'x real time':>12s} {'vs Keras':>9s}")
    for name, value in seconds.items():
        print(f"{name:28s} {len(windows) / value:10.0f} {audio_seconds / value:12.0f} {base / value:8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
