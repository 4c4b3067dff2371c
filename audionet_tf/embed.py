"""Sound embeddings from the student, one `.npz` per input (`embedding` [M, D], `timestamps` [M] s).

    python -m audionet_tf.embed a.wav b.mp4 --out embeddings/ [--hop-ms 40] [--layer pooled|conv]

`pooled`: the 16 features the student averages before its classifier, per window (the
SoundNet-style transfer representation). `conv`: statistics over time of the 16 max-pooled
conv maps per window (mean, standard deviation and maximum: 48 values); it needs the
Keras model (a `.keras` file or a run directory's `model.keras`). Timestamps are window
starts in seconds. Files that cannot be read are reported and skipped (exit code 1).

Each input writes `<out>/<file name without extension>.npz`. Inputs whose names would write
the same file (`a.wav` and `a.mp4`, or `x/a.wav` and `y/a.wav`) are refused before anything
is written, and an existing `.npz` is replaced only with `--overwrite`.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
from typing import Sequence

import numpy as np

from audionet_tf import console, inference
from audionet_tf.errors import AudioNetError
from audionet_tf.media import read_audio


def conv_statistics(model, windows: np.ndarray) -> np.ndarray:
    """Mean, std and max over time of the max-pooled conv maps: `[N, 48]`."""
    maps = inference.keras_runner(model, "conv")(windows)
    return np.concatenate([maps.mean(axis=1), maps.std(axis=1), maps.max(axis=1)], axis=1)


def embed_wave(student: inference.Student, wave: np.ndarray, hop: int, layer: str, where: str):
    """Embeddings and window start times for one waveform."""
    windows, starts = inference.frame_audio(wave, student.window_samples, hop, where)
    if layer == "conv":
        if student.keras_model is None:
            raise AudioNetError(f"--layer conv needs a .keras model, not {student.source}")
        values = conv_statistics(student.keras_model, windows)
    else:
        if student.embed is None:
            raise AudioNetError(f"{student.source} has no embedding signature")
        values = inference.batched(student.embed, windows)
    return values.astype(np.float32), (starts / student.sample_rate).astype(np.float32)


def write_npz(path: str, embedding: np.ndarray, timestamps: np.ndarray) -> None:
    """Write an `.npz` atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, embedding=embedding, timestamps=timestamps)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as handle:
        handle.write(buffer.getvalue())
    os.replace(tmp, path)


def output_paths(files: Sequence[str], out_dir: str, overwrite: bool) -> list[str]:
    """The `.npz` each input writes; refuses inputs that would write the same file and, unless
    `overwrite`, outputs that already exist."""
    targets = [os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0] + ".npz") for path in files]
    by_target: dict[str, list[str]] = {}
    for path, target in zip(files, targets):
        by_target.setdefault(target, []).append(path)
    clashes = {target: paths for target, paths in by_target.items() if len(paths) > 1}
    if clashes:
        lines = "; ".join(f"{', '.join(paths)} would all write {target}" for target, paths in clashes.items())
        raise AudioNetError(f"inputs share a name: {lines}. Give each input a distinct file name "
                            f"(without extension), or embed them in separate runs with different --out")
    existing = [target for target in targets if os.path.exists(target)]
    if existing and not overwrite:
        raise AudioNetError(f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}: "
                            f"pass --overwrite to replace, or choose another --out")
    return targets


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The embed command's flags."""
    p = argparse.ArgumentParser(prog="python -m audionet_tf.embed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--model", help="export directory, .keras or run directory (default: newest export)")
    p.add_argument("--hop-ms", type=float, help="hop between windows (default: the training hop)")
    p.add_argument("--layer", choices=["pooled", "conv"], default="pooled")
    p.add_argument("--overwrite", action="store_true", help="replace .npz files that already exist in --out")
    p.add_argument("--verbose", action="store_true", help="show TensorFlow's own C++ log lines")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    args = parse_args(argv)
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
            wave = read_audio(path, student.sample_rate)
            embedding, timestamps = embed_wave(student, wave, hop, args.layer, path)
        except AudioNetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        write_npz(target, embedding, timestamps)
        print(f"[{number}/{len(args.files)}] {path} -> {target} {embedding.shape}")
    return 1 if failed else 0


if __name__ == "__main__":
    from audionet_tf.console import run_command

    raise SystemExit(run_command(main))
