"""The slides' experiment on real material: picture + recording pairs → prepare → train → held-out agreement.

`run_experiment(config)` chains the package's own stages: `prepare` (the pairs of
`prepare.pictures` made into videos by `preparation/picture_clips.py`, labelled by the pipeline's
teacher, the pipeline's held-out split), `train` (then the export, whose int8 file is checked
against the float one on the held-out windows), and `distill` (held-out KL, top-1 and top-5
agreement with the teacher next to the prior baseline, overall and per clip). To each clip it
adds what the teacher itself sees in it: the class of highest mean probability over the clip's
frames, and that probability. The whole result is written to the run's `report/real.json`
and `report/real.md`.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable

import numpy as np

from audionet_tf.core import config as cfg, storage
from audionet_tf.core.errors import ConfigError
from audionet_tf.dataset import catalog, reader
from audionet_tf.evaluation.evaluate import distill
from audionet_tf.serving.inference import softmax

log = logging.getLogger("audionet_tf.evaluate")


def teacher_top_classes(data_dir: str) -> dict[str, dict[str, Any]]:
    """Each clip's class of highest mean teacher probability over all its frames: name, index, probability."""
    arrays = reader.load_arrays(data_dir, "all")
    names = catalog.read_class_names(data_dir)
    out = {}
    for cid in np.unique(arrays["clip_id"]):
        mean = softmax(arrays["logits"][arrays["clip_id"] == cid].astype(np.float64)).mean(axis=0)
        top = int(mean.argmax())
        out[str(cid)] = {"class": names[top], "index": top, "mean_probability": float(mean[top]),
                         "frames": int(np.sum(arrays["clip_id"] == cid))}
    return out


def run_experiment(config: cfg.PipelineConfig, *, weights: str | None = "imagenet",
                   on_prepared: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Prepare the pipeline's picture + recording pairs, train the student, export it, and score it on the
    held-out windows; returns the result (also in the run's report/real.json and real.md)."""
    from audionet_tf.evaluation import report
    from audionet_tf.preparation.runner import prepare
    from audionet_tf.serving import export
    from audionet_tf.training import trainer

    if not config.prepare.pictures:
        raise ConfigError("the real experiment needs a folder of picture + recording pairs: give --pictures DIR "
                          "(or prepare.pictures in the pipeline file)")
    started = time.time()
    summary = prepare(config, weights=weights)
    if on_prepared is not None:
        on_prepared(summary)
    prepared_s = time.time() - started
    exported: dict[str, Any] = {}

    def finish(run_dir: str) -> None:
        if config.train.export:
            out = storage.join(config.train.export_dir, storage.basename(run_dir))
            exported.update(export.export_run(run_dir, out), directory=out)
        if config.train.report:
            report.make_report(run_dir)

    run_dir = trainer.train(config, finish=finish)
    trained_s = time.time() - started - prepared_s
    result = distill(run_dir, config.data_dir)
    tops = teacher_top_classes(config.data_dir)
    for cid, scores in result["per_clip"].items():
        scores["teacher_top"] = tops[cid]
    result.update({
        "experiment": "real", "pictures": storage.basename(config.prepare.pictures.rstrip("/")),
        "teacher": catalog.read_description(config.data_dir).spec.teacher,
        "clips": {"prepared": len(summary.written) + len(summary.skipped), "failed": dict(summary.failed)},
        "train": {"epochs": config.train.epochs, "batch_size": config.train.batch_size,
                  "learning_rate": config.train.learning_rate, "seed": config.train.seed},
        "seconds": {"prepare": round(prepared_s, 1), "train": round(trained_s, 1)},
    })
    if exported:
        result["export"] = {"directory": storage.basename(exported["directory"]),
                            "int8_quantization": exported.get("int8_quantization"),
                            "int8_top1_agreement_with_float": exported["parity"]["int8_top1_agreement_with_float"],
                            "windows": exported["parity"]["windows"],
                            "windows_source": exported["parity"]["windows_source"]}
    storage.atomic_write_text(storage.join(run_dir, "report", "real.json"), json.dumps(result, indent=2) + "\n")
    storage.atomic_write_text(storage.join(run_dir, "report", "real.md"), "\n".join(markdown(result)) + "\n")
    result["run_dir"] = run_dir
    return result


def table_rows(result: dict[str, Any]) -> list[list[str]]:
    """The per-clip table: clip, the teacher's top class (mean probability), held-out windows, student and
    prior top-1 and top-5 agreement; the overall row first."""
    s, p = result["student"], result["prior"]
    rows = [["all clips", "", str(s["windows"]), f"{s['top1_agreement']:.1%}", f"{p['top1_agreement']:.1%}",
             f"{s['top5_agreement']:.1%}", f"{p['top5_agreement']:.1%}"]]
    for cid, scores in sorted(result["per_clip"].items()):
        top, st, pr = scores.get("teacher_top", {}), scores["student"], scores["prior"]
        seen = f"{top['class']} ({top['mean_probability']:.2f})" if top else ""
        rows.append([cid, seen, str(st["windows"]), f"{st['top1_agreement']:.1%}", f"{pr['top1_agreement']:.1%}",
                     f"{st['top5_agreement']:.1%}", f"{pr['top5_agreement']:.1%}"])
    return rows


HEADER = ["clip", "teacher's top class (mean p)", "held-out windows", "student top-1", "prior top-1",
          "student top-5", "prior top-5"]


def text_lines(result: dict[str, Any]) -> list[str]:
    """The result as a text table, for the console."""
    rows = [HEADER, *table_rows(result)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = [f"{result['data']}: teacher {result['teacher']}, held-out part of each of "
             f"{len(result['held_out_clips'])} clips; student trained {result['train']['epochs']} epochs"]
    for number, row in enumerate(rows):
        lines.append("  " + "  ".join(cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i])
                                      for i, cell in enumerate(row)))
        if number == 1:
            lines.append("")
    if "export" in result:
        lines.append(f"int8 TFLite ({result['export']['int8_quantization']}): top-1 agrees with the float model on "
                     f"{result['export']['int8_top1_agreement_with_float']:.1%} of "
                     f"{result['export']['windows']} {result['export']['windows_source']} windows")
    return lines


def markdown(result: dict[str, Any]) -> list[str]:
    """The result as a Markdown page (the run's report/real.md)."""
    lines = [f"# {result['data']}: the student against the teacher on held-out windows", "",
             f"Teacher {result['teacher']}; held out: {', '.join(result['split'])} split over "
             f"{len(result['held_out_clips'])} clips; student trained {result['train']['epochs']} epochs "
             f"(batch {result['train']['batch_size']}, learning rate {result['train']['learning_rate']:g}).", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in table_rows(result):
        lines.append("| " + " | ".join(row) + " |")
    if "export" in result:
        lines += ["", f"int8 TFLite ({result['export']['int8_quantization']}): top-1 agrees with the float model on "
                      f"{result['export']['int8_top1_agreement_with_float']:.1%} of "
                      f"{result['export']['windows']} {result['export']['windows_source']} windows."]
    return lines
