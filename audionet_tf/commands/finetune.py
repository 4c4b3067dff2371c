"""Fine-tune a trained student to your own sound classes, and export the classifier like a student.

    audionet finetune --from runs/NAME --data labelled.csv [--holdout-fold 5] [--epochs 40]
    audionet finetune --from runs/NAME --data meta/esc50.csv --unfreeze-epochs 10 --unfreeze-learning-rate 1e-4
    python -m audionet_tf.finetune ...                    # the same flags

`--data` is a CSV in ESC-50's layout (`filename,fold,target,category`), its audio in `audio/` beside it
(or beside its `meta/` folder, as ESC-50 has it; `--audio-dir` otherwise), at any sample rate, mono or
stereo. A new head is put on one layer of the student (`--layer`; default its embedding: audionet's
`pooled`, SoundNet-8's `pool5`, SoundNet-5's `conv4`) and trained with the student frozen for `--epochs`,
then, with `--unfreeze-epochs N`, the whole network for N more at `--unfreeze-learning-rate`. Classes are
weighted by how rare their windows are (`--no-class-weights`: not). `--holdout-fold F` keeps fold F out of
training and prints its clip accuracy after every epoch and at the end, next to the class prior.

The run goes to `runs/<name>/` (config.json, history.csv, labels.txt, checkpoints/, model.keras,
metrics.json), written beside and renamed into place when it has finished; the export to
`saved_models/<name>/` (a SavedModel whose `serve` signature returns `scores`, `logits` and
`class_names`; TFLite float and int8; student.onnx), so `audionet predict --model saved_models/<name>
recording.wav` prints your class names over time. Settings come from the pipeline file's `[finetune]`
table (`--pipeline`), then flags. Bad labelled data (a missing or unreadable file, a target whose
category differs from another row's, one class only, a fold without rows, a held-out fold that is absent)
is refused with one message naming the CSV line or the value, before anything is trained or written.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Sequence

from audionet_tf.commands.argtypes import nonnegative_int, positive_float, positive_int
from audionet_tf.core import config as cfg, console, storage
from audionet_tf.core.errors import AudioNetError


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The finetune command's flags (each overrides the pipeline file's [finetune] value)."""
    p = argparse.ArgumentParser(prog=prog or "python -m audionet_tf.finetune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", help="pipeline TOML file whose [finetune] (and [export]) tables give the settings")
    p.add_argument("--from", dest="run", metavar="RUN", help="the trained student: a run directory or a .keras file")
    p.add_argument("--data", help="labelled CSV in ESC-50's layout: filename,fold,target,category")
    p.add_argument("--audio-dir", help="the CSV's audio folder (default: audio/ beside the CSV or its meta/ folder)")
    p.add_argument("--layer", help="the student layer the head reads (default: its embedding)")
    p.add_argument("--epochs", type=positive_int, help="epochs of the head alone, the student frozen")
    p.add_argument("--learning-rate", type=positive_float, help="the head's learning rate (Adam)")
    p.add_argument("--unfreeze-epochs", type=nonnegative_int, help="then epochs of the whole network (0: none)")
    p.add_argument("--unfreeze-learning-rate", type=positive_float, help="the whole network's learning rate")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--no-class-weights", dest="class_weights", action="store_false", default=None,
                   help="do not weigh classes by the rarity of their windows")
    p.add_argument("--holdout-fold", type=nonnegative_int, help="a fold kept out of training and scored")
    p.add_argument("--hop-s", type=positive_float, help="seconds between a clip's windows (default: the student's hop)")
    p.add_argument("--name", help="run name (default: <student run>-<CSV name>)")
    p.add_argument("--runs-dir")
    p.add_argument("--export-dir")
    p.add_argument("--no-export", dest="export", action="store_false", default=None)
    p.add_argument("--no-onnx", dest="onnx", action="store_false", default=None, help="no student.onnx in the export")
    p.add_argument("--seed", type=int)
    p.add_argument("--quiet", action="store_true", default=None, help="no line per epoch")
    p.add_argument("--verbose", action="store_true", help="show TensorFlow's own C++ log lines")
    return p


def resolve_config(args: argparse.Namespace) -> cfg.PipelineConfig:
    """Defaults ← pipeline file ← flags."""
    config = cfg.load_pipeline(args.pipeline)
    keys = {f.name for f in dataclasses.fields(cfg.FinetuneConfig)}
    config = cfg.override(config, "finetune", {k: v for k, v in vars(args).items() if k in keys})
    return cfg.override(config, "export", {"onnx": args.onnx})


def finetune(config: cfg.PipelineConfig) -> dict[str, str]:
    """Train the classifier, then export it (unless finetune.export is off): `{"run": ..., "export": ...}`."""
    from audionet_tf.training.finetune import finetune as train_classifier

    run_dir = train_classifier(config)
    done = {"run": run_dir}
    if config.finetune.export:
        from audionet_tf.serving.export import export_run

        done["export"] = storage.join(config.finetune.export_dir, storage.basename(run_dir))
        export_run(run_dir, done["export"], config.export)
    return done


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Command-line entry point; `prog`: the command as the user typed it, for --help."""
    import json
    import os

    args = build_parser(prog).parse_args(argv)
    console.setup(args.verbose, bool(args.quiet))
    try:
        config = resolve_config(args)
        done = finetune(config)
    except AudioNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written (the run is renamed into place only when it has finished)",
              file=sys.stderr)
        return 130
    metrics = json.loads(open(os.path.join(done["run"], "metrics.json"), encoding="utf-8").read())
    train = metrics["train"]
    print(f"\nrun {done['run']}: training clips {train['clip_accuracy']:.1%} (windows {train['window_accuracy']:.1%})")
    if "validation" in metrics:
        held = metrics["validation"]
        print(f"held-out fold {config.finetune.holdout_fold}: clip accuracy {held['clip_accuracy']:.1%} of "
              f"{held['clips']} clips (windows {held['window_accuracy']:.1%}; the class prior "
              f"{held['prior_clip_accuracy']:.1%})")
    if "export" in done:
        print(f"exported to {done['export']}")
    return 0
