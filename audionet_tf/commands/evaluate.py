"""Does the student hear what the teacher sees, and do its features transfer?

    python -m audionet_tf.evaluate distill --run runs/NAME --data DIR [--folds K --epochs E]
    python -m audionet_tf.evaluate transfer --model runs/NAME --dataset ESC-50-master [--folds 5]
    python -m audionet_tf.evaluate real --pictures FOLDER [--pipeline real --epochs E]

`distill` compares the student with the teacher on the held-out data only (whole held-out
clips, or each clip's held-out part under the time split, as the dataset description
records): KL, top-1 and top-5 agreement per clip and overall, next to a prior baseline that
always predicts the teacher's mean distribution over the training data, and names any
held-out clip whose teacher class no training window has. `--folds K` also trains K fresh
students, each without one fold, and scores each on its fold: folds of clips (K = number of
clips is leave-one-clip-out), or K time segments of every clip when the dataset uses the
time split or has fewer clips than folds (training windows that share samples with the
fold's are left out).

`real` runs the slides' experiment on real material (`pipelines/real.toml`): every NAME.svg (or
.png/.jpg) + NAME.ogg (or .wav/.flac/.mp3) pair of FOLDER becomes a video (a slow pan over the
picture, the recording as its sound), labelled by a real ImageNet teacher (EfficientNet-Lite0,
offline), the last 20 % of every clip held out; the student is trained and exported, and its
held-out top-1 and top-5 agreement with the teacher is printed next to the prior baseline, overall
and per clip, with the teacher's own top class in each clip, and written to the run's
report/real.json and report/real.md.

`transfer` classifies a labelled sound dataset with a linear classifier (standardisation +
logistic regression) on file-level features, cross-validated on the dataset's own folds
(ESC-50's `meta/esc50.csv`) or stratified k-fold (one folder per class), for: the trained
student, the same network with random weights, and log-mel/MFCC statistics.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

from audionet_tf.core import config as cfg, console, storage
from audionet_tf.commands.argtypes import positive_float, positive_int
from audionet_tf.core.errors import AudioNetError
from audionet_tf.evaluation.evaluate import distill, transfer


def print_table(title: str, rows: dict[str, dict[str, float]], columns: Sequence[str]) -> None:
    """A small text table."""
    print(title)
    print(f"  {'':22s}" + "".join(f"{c:>16s}" for c in columns))
    for name, values in rows.items():
        print(f"  {name:22s}" + "".join(f"{values[c]:16.4f}" for c in columns))


def transfer_lines(result: dict[str, Any]) -> list[str]:
    """The transfer table as Markdown: one row per feature set, accuracy on each fold, mean ± std, dimensions."""
    p = result.get("protocol", {})
    lines = [f"{os.path.basename(os.path.normpath(result['dataset']))}: {result['files']} files, "
             f"{len(result['classes'])} classes, {result['cv']} (chance {result['chance']:.3f}); "
             f"{p.get('architecture')} layer {p.get('layer')}, {p.get('classifier')}"
             + (f" C = {p['C']:g}" if p.get("C") else "")
             + (f", clips repeated to {p['clip_seconds']:.2f} s" if p.get("clip_seconds") else ", clips as they are"),
             ""]
    folds = len(next(iter(result["accuracy"].values()))["folds"])
    lines.append("| features | " + " | ".join(f"fold {i + 1}" for i in range(folds)) + " | mean ± std | dimensions |")
    lines.append("|---" * (folds + 3) + "|")
    for name, row in result["accuracy"].items():
        lines.append(f"| {name} | " + " | ".join(f"{a:.3f}" for a in row["folds"])
                     + f" | {row['mean']:.3f} ± {row['std']:.3f} | {row['dimensions']} |")
    return lines


def distill_lines(result: dict[str, Any]) -> list[str]:
    """The distill tables as text: overall, per clip (student and prior), and per fold."""
    columns = ("kl", "top1_agreement", "top5_agreement")
    where = "each clip's held-out part" if result.get("split") == ["time"] else "the held-out clips"
    lines = [f"{result['data']}: {where} ({len(result['held_out_clips'])} clips)",
             f"  {'':28s}" + "".join(f"{c:>16s}" for c in columns)]
    for name, values in (("student", result["student"]), ("prior baseline", result["prior"])):
        lines.append(f"  {name:28s}" + "".join(f"{values[c]:16.4f}" for c in columns))
    lines.append("per clip: top-1 agreement of the student (prior baseline), windows")
    for cid, scores in result["per_clip"].items():
        lines.append(f"  {cid:40s} {scores['student']['top1_agreement']:.3f} ({scores['prior']['top1_agreement']:.3f})"
                     f"  {scores['student']['windows']}" + ("  class never trained on"
                                                              if cid in result.get("unseen_class_clips", []) else ""))
    if "folds" in result:
        folds = result["folds"]
        lines.append(f"{folds['folds']} folds over {folds.get('by', 'clips')}, {folds['epochs']} epochs each: "
                     f"top-1 agreement {folds['summary']['top1_agreement']['mean']:.3f} ± "
                     f"{folds['summary']['top1_agreement']['std']:.3f}")
        for number, fold in enumerate(folds["per_fold"], start=1):
            lines.append(f"  fold {number}: top-1 {fold['top1_agreement']:.3f} (prior "
                         f"{fold['prior']['top1_agreement']:.3f}), KL {fold['kl']:.3f}, {fold['windows']} windows")
    return lines


def real_config(args: argparse.Namespace) -> cfg.PipelineConfig:
    """The real experiment's settings: defaults ← pipeline file ← flags."""
    config = cfg.load_pipeline(args.pipeline)
    config = cfg.override(config, "prepare", {"pictures": args.pictures, "out": args.out, "teacher": args.teacher,
                                              "cache_dir": args.cache_dir})
    config = cfg.override(config, "train", {"epochs": args.epochs, "learning_rate": args.learning_rate,
                                            "batch_size": args.batch_size, "seed": args.seed, "name": args.name,
                                            "runs_dir": args.runs_dir, "export_dir": args.export_dir,
                                            "export": args.export, "report": args.report, "quiet": args.quiet or None})
    if not config.prepare.pictures:
        raise AudioNetError(f"evaluate real: give --pictures FOLDER (picture + recording pairs, e.g. NAME.svg + "
                            f"NAME.ogg); {config.source or 'the pipeline'} sets no prepare.pictures")
    return config


def parse_args(argv: Sequence[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    """The evaluate command's flags."""
    p = argparse.ArgumentParser(prog=prog or "python -m audionet_tf.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("distill", help="student vs teacher on held-out clips")
    d.add_argument("--run", required=True)
    d.add_argument("--data", help="dataset directory (default: the run's)")
    d.add_argument("--folds", type=int, default=0,
                   help="also train K students, each without one fold (of clips, or of each clip's time)")
    d.add_argument("--epochs", type=int, help="epochs for each fold's student (default: the run's)")
    r = sub.add_parser("real", help="prepare picture + recording pairs, train, score on held-out windows")
    r.add_argument("--pictures", help="folder of NAME.svg|png|jpg + NAME.ogg|wav|flac|mp3 pairs (required unless "
                                      "the pipeline file sets prepare.pictures)")
    r.add_argument("--pipeline", default="real", help="pipeline TOML file or built-in recipe (default: real)")
    r.add_argument("--out", help="dataset directory (default: the pipeline's prepare.out, data/real)")
    r.add_argument("--teacher", help="teacher (default: the pipeline's, EfficientNetLite0)")
    r.add_argument("--cache-dir", help="where the videos and downloads are kept (default: cache/clips)")
    r.add_argument("--epochs", type=positive_int)
    r.add_argument("--learning-rate", type=positive_float)
    r.add_argument("--batch-size", type=positive_int)
    r.add_argument("--seed", type=int)
    r.add_argument("--name", help="run name (default: the pipeline's, real)")
    r.add_argument("--runs-dir")
    r.add_argument("--export-dir")
    r.add_argument("--no-export", dest="export", action="store_false", default=None)
    r.add_argument("--no-report", dest="report", action="store_false", default=None)
    t = sub.add_parser("transfer", help="linear classifier on student features vs baselines")
    t.add_argument("--model", required=True, help="run directory, export directory or .keras")
    t.add_argument("--dataset", required=True,
                   help="ESC-50's folder, a CSV in its layout (filename,fold,target,category), or one folder per class")
    t.add_argument("--audio", help="the CSV's audio folder (default: audio/ beside its meta/ folder, or beside it)")
    t.add_argument("--layer", help="features of this layer (audionet: pooled, conv; default both; SoundNet: "
                                   "conv1 ... conv8, pool1 ...; default pool5 for soundnet8, conv4 for soundnet5)")
    t.add_argument("--classifier", choices=["svm", "logistic"], default="svm",
                   help="linear SVM (SoundNet's, default) or logistic regression, after standardisation")
    t.add_argument("--C", dest="c", type=float, default=0.01, help="the SVM's C (default 0.01, SoundNet's)")
    t.add_argument("--seconds", type=float,
                   help="each clip repeated to this length (default: the longest clip, at least one window; 0: as is)")
    t.add_argument("--folds", type=int, default=5)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", help="JSON output (default: <model>/report/transfer.json for a run directory)")
    for sub_parser in (d, t, r):
        sub_parser.add_argument("--verbose", action="store_true", help="show TensorFlow's own C++ log lines")
        sub_parser.add_argument("--quiet", action="store_true", help="log lines instead of a progress bar")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Command-line entry point; `prog`: the command as the user typed it, for --help."""
    args = parse_args(argv, prog)
    console.setup(args.verbose, getattr(args, "quiet", False))
    try:
        if args.command == "real":
            from audionet_tf.evaluation.real_experiment import run_experiment, text_lines

            result = run_experiment(real_config(args))
            for line in text_lines(result):
                print(line)
            print(f"written to {storage.join(result['run_dir'], 'report', 'real.json')} and real.md")
        elif args.command == "distill":
            data_dir = args.data
            if data_dir is None:
                with open(os.path.join(args.run, "config.json"), encoding="utf-8") as handle:
                    data_dir = json.load(handle)["dataset"]["data_dir"]
            result = distill(args.run, data_dir, args.folds, args.epochs)
            for line in distill_lines(result):
                print(line)
        else:
            if args.folds < 2:
                raise AudioNetError(f"--folds must be at least 2, got {args.folds}")
            result = transfer(args.model, args.dataset, args.folds, args.seed, layer=args.layer,
                              classifier=args.classifier, c=args.c, seconds=args.seconds, audio_dir=args.audio)
            out = args.out or (os.path.join(args.model, "report", "transfer.json") if os.path.isdir(args.model)
                               else os.path.splitext(args.model)[0] + "-transfer.json")
            storage.atomic_write_text(out, json.dumps(result, indent=2) + "\n")
            for line in transfer_lines(result):
                print(line)
            for path, why in result["skipped"].items():
                print(f"  skipped {path}: {why}")
            print(f"written to {out}")
    except AudioNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
