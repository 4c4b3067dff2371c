"""Train the AudioNet student on a prepared dataset.

    python -m audionet_tf.train --data data/demo --epochs 50 --name demo
    python -m audionet_tf.train --pipeline demo                    # prepares what is missing, then trains
    python -m audionet_tf.train                                     # the slides' seed experiment

Defaults are the slides' recipe (batch 512, Adam 1e-4, 5000 epochs, KL to the teacher's
softmax). The run goes to `runs/<name>/` (config, TensorBoard logs, checkpoints, backup,
history, final model) and is exported to `saved_models/<name>/`. Running the same command
again after a crash continues the run from its last backup; running it after the run
finished starts a new run `<name>-2`. SIGTERM or Ctrl-C saves a backup where training is
and exits with status 75; the same command continues from there. Watch with
`tensorboard --logdir runs`.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, Sequence

from audionet_tf.core import config as cfg, console, storage
from audionet_tf.core.config import PipelineConfig
from audionet_tf.commands.argtypes import nonnegative_float, nonnegative_int, positive_float, positive_int
from audionet_tf.core.errors import AudioNetError
from audionet_tf.training.trainer import PeerLost



def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The train command's flags (each overrides the pipeline file's value)."""
    p = argparse.ArgumentParser(prog=prog or "python -m audionet_tf.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", help="pipeline TOML file, or a built-in recipe: demo, seed (default: seed when --data is not given)")
    p.add_argument("--data", help="prepared dataset directory (default: the pipeline's local.out)")
    p.add_argument("--epochs", type=positive_int)
    p.add_argument("--batch-size", type=positive_int, help="global batch, split across replicas")
    p.add_argument("--learning-rate", type=positive_float)
    p.add_argument("--temperature", type=positive_float, help="distillation temperature T (loss scaled by T^2)")
    p.add_argument("--devices", type=positive_int, help="number of replicas (GPUs; logical CPUs when none)")
    p.add_argument("--strategy", choices=["mirrored", "multiworker"])
    p.add_argument("--collective-timeout-s", type=positive_float,
                   help="multiworker: seconds without a heartbeat before workers give up on a peer")
    p.add_argument("--name", help="run name (default: the pipeline's, or the dataset directory's name)")
    p.add_argument("--runs-dir", help="where runs go: a local directory, or a URL (gs://BUCKET/runs, ram://...)")
    p.add_argument("--export-dir", help="where exports go: a local directory, or a URL (gs://BUCKET/saved_models)")
    p.add_argument("--seed", type=int)
    p.add_argument("--quiet", action="store_true", default=None, help="log lines instead of progress bars")
    p.add_argument("--verbose", action="store_true", help="show TensorFlow's own C++ log lines")
    p.add_argument("--deterministic", action="store_true", default=None, help="reproducible data order and ops")
    p.add_argument("--cache", choices=["auto", "memory", "none"])
    p.add_argument("--steps-per-execution", type=nonnegative_int, help=f"0: a whole epoch per call, at most {cfg.AUTO_STEPS_PER_EXECUTION} steps")
    p.add_argument("--checkpoint-every", type=positive_int, help="epochs between checkpoints and backups")
    p.add_argument("--backup-every-steps", type=nonnegative_int, help="also back up every N steps (0: off)")
    p.add_argument("--backup-every-minutes", type=nonnegative_float, help="also back up every N minutes (0: off)")
    p.add_argument("--histogram-every", type=positive_int)
    p.add_argument("--figures-before-thinning", type=nonnegative_int,
                   help="figures at every --histogram-every epochs for the first N, then half as often "
                        "over each doubling of the run (0: never thinned)")
    p.add_argument("--validate-every", type=positive_int,
                   help="epochs between evaluations of the held-out clips (checkpoint and last epochs always)")
    p.add_argument("--input-scale", type=positive_float, help="waveform gain inside the model")
    p.add_argument("--architecture", choices=list(cfg.ARCHITECTURES),
                   help="the student's layer table: audionet (the slides', default), soundnet5, soundnet8")
    p.add_argument("--window-s", type=positive_float,
                   help="SoundNet students: seconds of audio centred on each frame (default: the shortest "
                        "window with one output step)")
    p.add_argument("--no-export", dest="export", action="store_false", default=None)
    p.add_argument("--no-report", dest="report", action="store_false", default=None)
    p.add_argument("--no-prepare", dest="prepare", action="store_false", default=True,
                   help="do not prepare a missing dataset from the pipeline's clip list")
    return p


def resolve_config(args: argparse.Namespace) -> PipelineConfig:
    """Defaults ← pipeline file ← flags."""
    pipeline = args.pipeline
    if pipeline is None and args.data is None:
        pipeline = "seed"
    config = cfg.load_pipeline(pipeline)
    train_keys = {f.name for f in dataclasses.fields(cfg.TrainConfig)}
    config = cfg.override(config, "train", {k: v for k, v in vars(args).items() if k in train_keys})
    config = cfg.override(config, "model", {"input_scale": args.input_scale, "architecture": args.architecture,
                                            "window_s": args.window_s})
    return config


def _finish(config: PipelineConfig, run_dir: str) -> None:
    """Export and report at the end of a run, as the pipeline asks."""
    tc = config.train
    if tc.export:
        from audionet_tf.serving import export

        out = storage.join(tc.export_dir, storage.basename(run_dir))
        export.export_run(run_dir, out, config.export)
        print(f"exported to {out}")
    if tc.report:
        from audionet_tf.evaluation import report

        print(f"report: {report.make_report(run_dir)}")


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Command-line entry point; `prog`: the command as the user typed it, for --help."""
    args = build_parser(prog).parse_args(argv)
    from audionet_tf.training.backup import EXIT_STOPPED, Stopped

    console.setup(args.verbose, bool(args.quiet))
    try:
        config = resolve_config(args)
        if args.pipeline is None and args.data is None:
            print("no --data or --pipeline: running the slides' seed experiment (--pipeline seed); "
                  "for the offline demo: python -m audionet_tf.train --pipeline demo", file=sys.stderr)
        train(config, prepare_missing=args.prepare)
    except (Stopped, PeerLost) as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return EXIT_STOPPED
    except AudioNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to continue from the last backup", file=sys.stderr)
        return 130
    return 0


def _prepare(config: PipelineConfig) -> None:
    from audionet_tf.commands.prepare import print_summary
    from audionet_tf.preparation.runner import prepare

    print_summary(prepare(config))


def train(config: PipelineConfig, *, prepare_missing: bool = True, extra_callbacks: Sequence[Any] = ()) -> str:
    """What the command runs: prepare a missing dataset, train, then export and report; returns the run directory."""
    from audionet_tf.training.trainer import train as train_student

    return train_student(config, prepare=_prepare if prepare_missing else None,
                         finish=lambda run_dir: _finish(config, run_dir), extra_callbacks=extra_callbacks)
