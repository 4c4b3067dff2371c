"""Sound embeddings from the student, one `.npz` per input (`embedding` [M, D], `timestamps` [M] s).

    python -m audionet_tf.embed a.wav b.mp4 --out embeddings/ [--hop-ms 40] [--layer pooled|conv|pool5|conv7|...]

`pooled`: the 16 features the student averages before its classifier, per window (the
SoundNet-style transfer representation). `conv`: statistics over time of the 16 max-pooled
conv maps per window (mean, standard deviation and maximum: 48 values); it needs the
Keras model (a `.keras` file or a run directory's `model.keras`). Timestamps are window
starts in seconds. Files that cannot be read are reported and skipped (exit code 1). A
recording is decoded and embedded in chunks of windows, so memory does not grow with its length.

Each input writes `<out>/<file name without extension>.npz`. Inputs whose names would write
the same file (`a.wav` and `a.mp4`, or `x/a.wav` and `y/a.wav`) are refused before anything
is written, and an existing `.npz` is replaced only with `--overwrite`.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from audionet_tf.core import console
from audionet_tf.core.errors import AudioNetError
from audionet_tf.serving import inference
from audionet_tf.serving.embed import embed_file, output_paths, write_npz


def parse_args(argv: Sequence[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    """The embed command's flags."""
    p = argparse.ArgumentParser(prog=prog or "python -m audionet_tf.embed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--model", help="export directory, .keras or run directory (default: newest export)")
    p.add_argument("--hop-ms", type=float, help="hop between windows (default: the training hop)")
    p.add_argument("--layer", help="audionet: pooled (default) or conv (a .keras model); SoundNet: the export's "
                                   "default (soundnet8 pool5, soundnet5 conv4), or any layer of its table "
                                   "(conv1 ... conv8, pool1, pool2, pool5, ...) from a .keras model")
    p.add_argument("--overwrite", action="store_true", help="replace .npz files that already exist in --out")
    p.add_argument("--verbose", action="store_true", help="show TensorFlow's own C++ log lines")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Command-line entry point; `prog`: the command as the user typed it, for --help."""
    args = parse_args(argv, prog)
    console.setup(args.verbose)
    try:
        targets = output_paths(args.files, args.out, args.overwrite)
        model = args.model or inference.newest_export()
        if os.path.isfile(os.path.join(model, "model.keras")):
            model = os.path.join(model, "model.keras")
        student = inference.load_student(model)
        if args.hop_ms is not None and not args.hop_ms > 0:
            raise AudioNetError(f"--hop-ms must be positive, got {args.hop_ms}")
    except AudioNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    hop = int(round(args.hop_ms * student.sample_rate / 1000)) if args.hop_ms else student.hop_samples
    os.makedirs(args.out, exist_ok=True)
    failed = 0
    for number, (path, target) in enumerate(zip(args.files, targets), start=1):
        try:
            embedding, timestamps = embed_file(student, path, hop, args.layer)
        except AudioNetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        write_npz(target, embedding, timestamps)
        print(f"[{number}/{len(args.files)}] {path} -> {target} {embedding.shape}")
    return 1 if failed else 0
