"""Inference speed of every artifact on the same long recording, against the Keras model in the same run.

    python benchmarks/inference.py [--seconds 120] [--repeats 3]

Trains nothing: builds a student with random weights (speed does not depend on them),
exports it with the project's own export code (calibrating int8 on windows of a synthetic
dataset), then times windows/s and the real-time factor (seconds of audio per second of
compute) for Keras, the SavedModel, TFLite float, int8 and 16x8 (LiteRT on one thread) and
student.onnx (onnxruntime on one thread), and prints docs/speed.md's table rows (file sizes included).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from audionet_tf.dataset.synthetic import write_synthetic_dataset  # noqa: E402
from audionet_tf.model.student import build_audionet  # noqa: E402
from audionet_tf.serving.export import (calibration_sample, calibration_windows, convert_tflite,  # noqa: E402
                                        export_model, tflite_runner)
from audionet_tf.serving.onnx_model import ONNX_FILE, open_onnx  # noqa: E402

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


def _tree_size(root: str, skip: tuple[str, ...] = ()) -> int:
    """Bytes of every file under `root`, except names ending in `skip`."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root)
               for f in files if not f.endswith(skip))


def _keras_size(model, tmp: str) -> int:
    """Bytes of the model saved as a `.keras` file."""
    path = os.path.join(tmp, "model.keras")
    model.save(path)
    return os.path.getsize(path)


def main(argv=None) -> int:
    """Time every artifact and print docs/speed.md's table rows."""
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
        calibration = calibration_windows(os.path.join(tmp, "data"))
        # Seeded, so that the rows' file sizes are the same in every run: with random weights, whether int8
        # activations meet the export's agreement goal (else it keeps the 16x8 file) depends on the draw.
        keras.utils.set_random_seed(0)
        model = build_audionet(None, 1000, input_scale=256.0)
        export = os.path.join(tmp, "export")
        facts = export_model(model, export, class_names=[str(i) for i in range(1000)], calibration=calibration)
        # Both integer files are timed, whichever of them the export kept as model_int8.tflite: their
        # speeds differ by an order of magnitude (16x8 runs on LiteRT's reference kernels).
        integer = {kind: convert_tflite(export, kind, calibration_sample(calibration, WINDOW))
                   for kind in ("int8", "16x8")}
        saved = tf.saved_model.load(export).signatures["serving_default"]
        runners = {
            "Keras `model.predict`": lambda w: model.predict(w[..., None], batch_size=1024, verbose=0),
            "SavedModel `serving_default`": lambda w: saved(windows=tf.constant(w))["logits"].numpy(),
            "TFLite float, 1 thread": tflite_runner(os.path.join(export, "model.tflite")),
            "TFLite int8, 1 thread": tflite_runner(integer["int8"]),
            "TFLite 16x8, 1 thread": tflite_runner(integer["16x8"]),
            "ONNX, onnxruntime, 1 thread": open_onnx(os.path.join(export, ONNX_FILE), threads=1).logits,
        }
        sizes = {
            "Keras `model.predict`": _keras_size(model, tmp),
            "SavedModel `serving_default`": _tree_size(export, skip=(".tflite", ".onnx", ".txt", ".json")),
            "TFLite float, 1 thread": os.path.getsize(os.path.join(export, "model.tflite")),
            "TFLite int8, 1 thread": len(integer["int8"]),
            "TFLite 16x8, 1 thread": len(integer["16x8"]),
            "ONNX, onnxruntime, 1 thread": os.path.getsize(os.path.join(export, ONNX_FILE)),
        }
        kept = os.path.getsize(os.path.join(export, "model_int8.tflite"))
        seconds = {name: best_time(run, windows, args.repeats) for name, run in runners.items()}
    base = seconds["Keras `model.predict`"]
    audio_seconds = len(windows) * WINDOW / RATE
    float_size, int8_size = sizes["TFLite float, 1 thread"], sizes["TFLite int8, 1 thread"]
    # The rows are printed exactly as docs/speed.md's table shows them.
    print(f"| artifact ({audio_seconds:.0f} s recording, {len(windows)} windows, 1000 classes, best of "
          f"{args.repeats}) | file size | × real time | relative to Keras |")
    print("|---|---|---|---|")
    for name, value in seconds.items():
        print(f"| {name} | {sizes[name]:,} bytes | {audio_seconds / value:,.0f}× | {base / value:.2f}× |")
    print(f"\nint8 file: {int8_size:,} bytes, {100 * (1 - int8_size / float_size):.0f} % smaller than the "
          f"float file ({float_size:,} bytes)")
    print(f"the export's model_int8.tflite ({kept:,} bytes): {facts['int8_quantization']}; agreement with float "
          f"on its check windows: {facts['parity']['int8_tried']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
