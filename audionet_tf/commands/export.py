"""Export a trained student for other apps: a SavedModel with explicit signatures, TFLite float and int8,
ONNX, and on request a page that runs the student in a browser.

    python -m audionet_tf.export runs/NAME --out saved_models/NAME
    python -m audionet_tf.export model.keras --out saved_models/NAME [--labels labels.txt]
    python -m audionet_tf.export runs/NAME --web web/NAME      # also the browser page

`saved_models/NAME/` holds:

- a SavedModel that needs nothing from this package and loads by convention: called on
  windows `[N, L]` float32 at 16 kHz in [-1, 1] it gives logits `[N, C]`
  (`tf.saved_model.load(path)(windows)`, `keras.layers.TFSMLayer(path)` through its `serve`
  endpoint, `tensorflow_hub.KerasLayer(path)`), with the signatures `serving_default`
  (windows → `logits`), `probabilities` (→ `probabilities` `[N, C]`), `embed` (→ `embedding`
  `[N, 16]`, the pooled features) and `timeline` (one waveform `[T]` → `logits` and `scores`
  `[M, C]`, `embeddings` `[M, 16]` and `times` `[M]`: window k covers samples
  [k·hop, k·hop + L), its time is its start in seconds; a waveform shorter than one window is
  zero-padded to one window) and `class_names` (no input → the names, a string tensor `[C]`);
- `model.tflite` (float32) and `model_int8.tflite` (int8 weights; int8 activations calibrated on
  windows of the training dataset when it is at hand and they agree with the float model on
  ≥ 95 % of its held-out windows, else int16 activations (16x8); dynamic-range with no dataset), both taking
  windows `[N, L]` of any N and L after `resize_tensor_input`, with builtin ops only;
- `student.onnx` (unless `--no-onnx`; opset 15 by default): one input `windows` float32
  `[batch, samples]` (both axes dynamic), outputs `logits` `[batch, C]` and `embedding`
  `[batch, 16]`, and in its metadata_props the class names (JSON), `sample_rate`,
  `window_samples` and `hop_samples`; it runs with onnxruntime alone;
- `labels.txt` and `metadata.json` (sample rate, window, hop, classes, teacher, training
  config and final metrics with every absolute path reduced to its last component, so the
  export holds no path of the machine that made it; versions, file sizes and parity
  figures: the largest difference
  between the Keras model's logits and the SavedModel's, float TFLite's or ONNX's (and ONNX's
  embedding against Keras's pooled features), divided by the
  logits' scale (largest magnitude, at least 1), must be ≤ 1e-5; the integer model's top-1
  agreement with the float model on the held-out windows is reported, with a warning under 95 %).

The whole directory is built beside its destination and renamed into place, so an
interrupted export never leaves a half-written model where an app would load it.

`--web DIR` also writes a static page to DIR (built beside it and renamed into place the same
way): `index.html`, `app.js`, `page.css`, `student.onnx` and onnxruntime-web's WebAssembly
runtime. Serve DIR over HTTP (`python -m http.server -d DIR`) and drop a recording on the page:
it is decoded, resampled and classified in the browser, and nothing is sent anywhere. The
runtime's files come from `--web-runtime DIR` (the npm package, its dist/, or an npm prefix),
else npm installs onnxruntime-web once into `cache/npm/` (only `--web` needs npm).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

from audionet_tf.core import config as cfg, console, storage
from audionet_tf.core.errors import AudioNetError
from audionet_tf.serving.export import calibration_windows, export_model, export_run, held_out_windows


def parse_args(argv: Sequence[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    """The export command's flags."""
    p = argparse.ArgumentParser(prog=prog or "python -m audionet_tf.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="a run directory (runs/NAME) or a .keras file")
    p.add_argument("--out", help="export directory (default: saved_models/<run or file name>)")
    p.add_argument("--labels", help="class names file, for a .keras file")
    p.add_argument("--sample-rate", type=int, default=16000, help="for a .keras file")
    p.add_argument("--window-samples", type=int, default=640, help="for a .keras file")
    p.add_argument("--hop-samples", type=int, default=640, help="for a .keras file")
    p.add_argument("--data", help="dataset to calibrate the int8 model on, for a .keras file")
    p.add_argument("--no-onnx", dest="onnx", action="store_false", default=None,
                   help="do not write student.onnx (nor the page, which runs it)")
    p.add_argument("--onnx-opset", type=int, help="ONNX opset of student.onnx (9 to 18; default 15)")
    p.add_argument("--web", metavar="DIR",
                   help="also write the browser page (index.html, student.onnx, its runtime) to DIR")
    p.add_argument("--web-runtime", metavar="DIR",
                   help="where onnxruntime-web's files are (default: npm installs them into cache/npm once)")
    p.add_argument("--verbose", action="store_true", help="show TensorFlow's own C++ log lines")
    return p.parse_args(argv)


def export_options(args: argparse.Namespace) -> cfg.ExportConfig:
    """The export settings: defaults ← flags."""
    given = {key: getattr(args, key) for key in ("onnx", "onnx_opset", "web", "web_runtime")}
    return cfg.build_section(cfg.ExportConfig, {k: v for k, v in given.items() if v is not None}, "export flags")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Export per parsed flags."""
    from audionet_tf.model.student import load_model, model_window

    options = export_options(args)
    name = os.path.splitext(storage.basename(args.source))[0]
    out = args.out or os.path.join("saved_models", name)
    if storage.isfile(storage.join(args.source, "config.json")) or os.path.isdir(args.source):
        return export_run(args.source, out, options)  # a run directory, local or in a bucket
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
    # A student built for one window (SoundNet's) is exported for it; audionet takes --window-samples.
    window = model_window(model) or args.window_samples
    return export_model(model, out, class_names=names, sample_rate=args.sample_rate,
                        window_samples=window, hop_samples=args.hop_samples,
                        calibration=calibration_windows(args.data, window_samples=window) if args.data else None,
                        check=held_out_windows(args.data, window_samples=window) if args.data else None,
                        options=options)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Command-line entry point; `prog`: the command as the user typed it, for --help."""
    args = parse_args(argv, prog)
    console.setup(args.verbose, getattr(args, "quiet", False))
    try:
        doc = run(args)
    except (AudioNetError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(doc["parity"], indent=2))
    return 0
