"""Export a trained student for other apps: a SavedModel with explicit signatures, TFLite float and int8.

    python -m audionet_tf.export runs/NAME --out saved_models/NAME
    python -m audionet_tf.export model.keras --out saved_models/NAME [--labels labels.txt]

`saved_models/NAME/` holds:

- a SavedModel that needs nothing from this package and loads by convention: called on
  windows `[N, L]` float32 at 16 kHz in [-1, 1] it gives logits `[N, C]`
  (`tf.saved_model.load(path)(windows)`, `keras.layers.TFSMLayer(path)` through its `serve`
  endpoint, `tensorflow_hub.KerasLayer(path)`), with the signatures `serving_default`
  (windows → `logits`), `probabilities` (→ `probabilities` `[N, C]`), `embed` (→ `embedding`
  `[N, 16]`, the pooled features) and `timeline` (one waveform `[T]` → `logits` and `scores`
  `[M, C]`, `embeddings` `[M, 16]` and `times` `[M]`: window k covers samples
  [k·hop, k·hop + L), its time is its start in seconds; a waveform shorter than one window is
  zero-padded to one window);
- `model.tflite` (float32) and `model_int8.tflite` (int8 weights; int8 activations calibrated on
  windows of the training dataset when it is at hand and they agree with the float model on
  ≥ 95 % of its held-out windows, else int16 activations (16x8); dynamic-range with no dataset), both taking
  windows `[N, L]` of any N and L after `resize_tensor_input`, with builtin ops only;
- `labels.txt` and `metadata.json` (sample rate, window, hop, classes, teacher, training
  config and final metrics with every absolute path reduced to its last component, so the
  export holds no path of the machine that made it; versions, file sizes and parity
  figures: the largest difference
  between the Keras model's logits and the SavedModel's or float TFLite's, divided by the
  logits' scale (largest magnitude, at least 1), must be ≤ 1e-5; the integer model's top-1
  agreement with the float model on the held-out windows is reported, with a warning under 95 %).

The whole directory is built beside its destination and renamed into place, so an
interrupted export never leaves a half-written model where an app would load it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

from audionet_tf.core import console, storage
from audionet_tf.core.errors import AudioNetError
from audionet_tf.serving.export import calibration_windows, export_model, export_run, held_out_windows


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The export command's flags."""
    p = argparse.ArgumentParser(prog="python -m audionet_tf.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="a run directory (runs/NAME) or a .keras file")
    p.add_argument("--out", help="export directory (default: saved_models/<run or file name>)")
    p.add_argument("--labels", help="class names file, for a .keras file")
    p.add_argument("--sample-rate", type=int, default=16000, help="for a .keras file")
    p.add_argument("--window-samples", type=int, default=640, help="for a .keras file")
    p.add_argument("--hop-samples", type=int, default=640, help="for a .keras file")
    p.add_argument("--data", help="dataset to calibrate the int8 model on, for a .keras file")
    p.add_argument("--verbose", action="store_true", help="show TensorFlow's own C++ log lines")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Export per parsed flags."""
    from audionet_tf.model.student import load_model

    name = os.path.splitext(storage.basename(args.source))[0]
    out = args.out or os.path.join("saved_models", name)
    if storage.isfile(storage.join(args.source, "config.json")) or os.path.isdir(args.source):
        return export_run(args.source, out)  # a run directory, local or in a bucket
    if not storage.isfile(args.source):
        raise AudioNetError(f"{args.source}: no such run directory or .keras file")
    try:
        model = load_model(args.source)
    except Exception as exc:  # Keras raises several types for a file it cannot read
        raise AudioNetError(f"{args.source}: cannot load it as a .keras model ({exc})") from None
    classes = int(model.output.shape[-1])
    names = [f"class_{i}" for i in range(classes)]
    if args.labels:
        with open(args.labels, encoding="utf-8") as handle:
            names = [line.rstrip("\n") for line in handle if line.strip()]
    return export_model(model, out, class_names=names, sample_rate=args.sample_rate,
                        window_samples=args.window_samples, hop_samples=args.hop_samples,
                        calibration=calibration_windows(args.data) if args.data else None,
                        check=held_out_windows(args.data) if args.data else None)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    args = parse_args(argv)
    console.setup(args.verbose, getattr(args, "quiet", False))
    try:
        doc = run(args)
    except (AudioNetError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(doc["parity"], indent=2))
    return 0
