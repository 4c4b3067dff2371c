"""What does the student hear? Top classes over time for any audio or video file.

    python -m audionet_tf.predict recording.wav clip.mp4 [--model saved_models/NAME] [--top-k 5]
    python -m audionet_tf.predict a.wav --json out.json        # or --csv out.csv

Any file ffmpeg reads, at any sample rate and channel count (resampled to 16 kHz mono).
Prints, per file, the top-k classes of each window (at the training hop) and of each
second (probabilities averaged over its windows). `--model` takes an export directory, a
`.keras`, a `.tflite` or an `.onnx` file (default: the newest export under saved_models/). With
several files, one that cannot be read is reported and the others are still processed;
the exit code is then 1. A recording is decoded and classified in chunks of windows, so
memory does not grow with its length (an hour runs in under 1 GB).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from audionet_tf.core import console
from audionet_tf.core.errors import AudioNetError
from audionet_tf.serving import inference
from audionet_tf.serving.predict import predict_file, write_csv, write_json


def parse_args(argv: Sequence[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    """The predict command's flags."""
    p = argparse.ArgumentParser(prog=prog or "python -m audionet_tf.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+")
    p.add_argument("--model", help="export directory, .keras, .tflite or .onnx (default: newest under saved_models/)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--hop-ms", type=float, help="hop between windows (default: the training hop; SoundNet "
                                                "students on long recordings: e.g. 1000)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", help="write the results as JSON")
    out.add_argument("--csv", help="write the per-window results as CSV")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json or --csv file")
    p.add_argument("--quiet", action="store_true", help="no timeline on the terminal")
    p.add_argument("--verbose", action="store_true", help="show TensorFlow's own C++ log lines")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Command-line entry point; `prog`: the command as the user typed it, for --help."""
    args = parse_args(argv, prog)
    console.setup(args.verbose)
    if args.top_k < 1:
        print("error: --top-k must be at least 1", file=sys.stderr)
        return 2
    target = args.json or args.csv
    if target and os.path.exists(target) and not args.overwrite:
        # Checked before any work: a long run must not end by refusing to write its result.
        print(f"error: {target} already exists: pass --overwrite to replace it, or write to another file",
              file=sys.stderr)
        return 2
    if args.hop_ms is not None and not args.hop_ms > 0:
        print(f"error: --hop-ms must be positive, got {args.hop_ms}", file=sys.stderr)
        return 2
    try:
        student = inference.load_student(args.model or inference.newest_export())
    except AudioNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results, failed = [], 0
    for path in args.files:
        try:
            hop = int(round(args.hop_ms * student.sample_rate / 1000)) if args.hop_ms else None
            result = predict_file(student, path, args.top_k, hop)
        except AudioNetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        results.append(result)
        if not args.quiet:
            print(f"{path} ({result.duration:.2f} s)")
            for second in result.per_second():
                tops = ", ".join(f"{e['class']} {e['probability']:.2f}" for e in second["top"])
                print(f"  {second['second']:4d} s  {tops}")
    if args.json:
        write_json(args.json, results)
    if args.csv:
        write_csv(args.csv, results)
    return 1 if failed else 0
