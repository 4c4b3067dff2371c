"""A run's report: PNG plots and one `index.html` in `runs/NAME/report/` (see `commands/report.py`)."""
from __future__ import annotations

import csv
import html
import io
import json
import os
from typing import Sequence

import numpy as np

from audionet_tf.core import storage
from audionet_tf.core.errors import AudioNetError
from audionet_tf.dataset import catalog, reader, records
from audionet_tf.training.figures import clip_audio, pyplot, timeline_figure


def _save(fig, path: str) -> None:
    # Rendered in memory, then written whole (locally through a temporary name; in an object store once).
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=90, format="png")
    pyplot().close(fig)
    storage.write_bytes(path, buffer.getvalue(), fsync=False)


def plot_history(history_csv: str, out: str) -> str | None:
    """Training curves from history.csv."""
    if not storage.isfile(history_csv):
        return None
    rows = list(csv.DictReader(io.StringIO(storage.read_text(history_csv), newline="")))
    if not rows:
        return None
    plt = pyplot()
    epochs = [int(r["epoch"]) for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, metric, title in zip(axes, ("loss", "top1_agreement", "top5_agreement"),
                                 ("distillation loss (KL)", "top-1 agreement", "top-5 agreement")):
        for prefix, label in (("", "training data"), ("val_", "held-out data")):
            # Held-out metrics exist only on the epochs that were validated (train.validate_every).
            points = [(e, float(r[prefix + metric])) for e, r in zip(epochs, rows) if r.get(prefix + metric)]
            if points:
                ax.plot(*zip(*points), label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if metric == "loss":
            ax.set_yscale("log")
        ax.legend()
    fig.tight_layout()
    path = storage.join(out, "curves.png")
    _save(fig, path)
    return path


def _student_window(model) -> int | None:
    """The window a student was built for (SoundNet), None when it takes any length (audionet)."""
    return model.input.shape[1]


def plot_filters(model, sample_rate: int, out: str) -> str:
    """The conv filters and their frequency responses (Hz, dB, each filter's peak marked)."""
    from audionet_tf.training.callbacks import filter_figure

    plt = pyplot()
    first = "conv" if _student_window(model) is None else "conv1_conv"  # audionet's conv, SoundNet's conv1
    image = filter_figure(model.get_layer(first).kernel.numpy(), sample_rate)
    fig = plt.figure(figsize=(image.shape[1] / 90, image.shape[0] / 90))
    fig.figimage(image)
    path = storage.join(out, "filters.png")
    _save(fig, path)
    return path


def plot_timeline(model, arrays: dict[str, np.ndarray], clip_id: str, class_names: list[str], sample_rate: int,
                  out: str, hop: int | None = None, held_out: tuple[float, float] | None = None,
                  title: str | None = None) -> str:
    """Teacher's top class vs the student's over a clip, over its spectrogram; written to timeline-<clip>.png."""
    mine = arrays["clip_id"] == clip_id
    windows, teacher, times = arrays["audio"][mine], arrays["logits"][mine], arrays["time"][mine]
    heard = arrays.get("student_audio", arrays["audio"])[mine]  # SoundNet: its long windows on the same frames
    student = model.predict(np.asarray(heard)[..., None], verbose=0, batch_size=32)
    hop = hop or windows.shape[1]
    fig = timeline_figure(teacher, student, times, clip_audio(windows, times, hop, sample_rate), class_names,
                          sample_rate, title or f"{clip_id}: top class over time", held_out)
    path = storage.join(out, f"timeline-{clip_id}.png")
    _save(fig, path)
    return path


def top_names(logits: np.ndarray, class_names: Sequence[str], count: int = 3) -> str:
    """The most frequent top classes of some windows, with their shares: "rooster 80%, hen 20%"."""
    if not len(logits):
        return ""
    classes, counts = np.unique(logits.argmax(1), return_counts=True)
    order = np.argsort(-counts)[:count]
    return ", ".join(f"{class_names[classes[i]]} {counts[i] / counts.sum():.0%}" for i in order)


def _table(title: str, rows: dict[str, dict], columns: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(f"<tr><td>{html.escape(str(name))}</td>" +
                   "".join(f"<td>{values.get(c, float('nan')):.4f}</td>" for c in columns) + "</tr>"
                   for name, values in rows.items())
    return f"<h2>{html.escape(title)}</h2><table><tr><th></th>{head}</tr>{body}</table>"


def _rows_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]], note: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    note = f"<p>{html.escape(note)}</p>" if note else ""
    return f"<h2>{html.escape(title)}</h2>{note}<table><tr>{head}</tr>{body}</table>"


def clip_table(result: dict, description: records.Description, arrays: dict[str, np.ndarray] | None,
               student: dict[str, np.ndarray], class_names: Sequence[str]) -> str:
    """Per clip: its label, the teacher's and the student's top classes on its held-out part, agreement, prior."""
    labels = {c.id: c.label for c in description.clips}
    rows = []
    for cid, scores in result["per_clip"].items():
        teacher_part = student_part = ""
        if arrays is not None and cid in student:
            mine = (arrays["clip_id"] == cid) & arrays["held"]
            teacher_part = top_names(arrays["logits"][mine], class_names)
            student_part = top_names(student[cid][mine[arrays["clip_id"] == cid]], class_names)
        rows.append((cid, labels.get(cid, ""), teacher_part, student_part,
                     f"{scores['student']['top1_agreement']:.1%}", f"{scores['prior']['top1_agreement']:.1%}",
                     scores["student"]["windows"]))
    where = "each clip's held-out part" if result.get("split") == ["time"] else "the held-out clips"
    return _rows_table(f"Per clip, on {where}",
                       ("clip", "label", "teacher's top classes", "student's top classes", "top-1 agreement",
                        "prior baseline", "windows"), rows,
                       "The prior baseline always answers the teacher's mean distribution over the training data.")


def folds_table(folds: dict) -> str:
    """The K-fold evaluation: each fold's agreement next to its prior."""
    rows = [(number, f"{fold['top1_agreement']:.1%}", f"{fold['prior']['top1_agreement']:.1%}", f"{fold['kl']:.4f}",
             fold["windows"], ", ".join(fold["clips"]) if folds.get("by", "clips") == "clips" else "every clip")
            for number, fold in enumerate(folds["per_fold"], start=1)]
    summary = folds["summary"]["top1_agreement"]
    return _rows_table(f"{folds['folds']} folds over {folds.get('by', 'clips')} ({folds['epochs']} epochs each): "
                       f"top-1 {summary['mean']:.1%} ± {summary['std']:.1%}",
                       ("fold", "top-1 agreement", "prior baseline", "KL", "windows", "held out"), rows)


def make_report(run_dir: str, data_dir: str | None = None, max_clips: int = 10) -> str:
    """Write `run_dir/report/` (PNGs and index.html); returns the index path."""
    from audionet_tf.evaluation import evaluate
    from audionet_tf.model.student import load_model

    model_path = storage.join(run_dir, "model.keras")
    if not storage.isfile(model_path):
        raise AudioNetError(f"{run_dir} holds no model.keras: not a finished training run")
    config = json.loads(storage.read_text(storage.join(run_dir, "config.json")))
    data_dir = data_dir or config.get("dataset", {}).get("data_dir")
    out = storage.join(run_dir, "report")
    storage.makedirs(out)
    model = load_model(model_path)
    dataset = config.get("dataset", {})
    sample_rate = int(dataset.get("sample_rate", 16000))
    images, tables = [], []
    curves = plot_history(storage.join(run_dir, "history.csv"), out)
    if curves:
        images.append(("Training curves", curves))
    images.append(("The 16 learned filters and their frequency responses (peak marked)",
                   plot_filters(model, sample_rate, out)))
    distill_path, transfer_path = storage.join(out, "distill.json"), storage.join(out, "transfer.json")
    if data_dir and storage.isfile(storage.join(data_dir, records.DESCRIPTION_FILE)):
        description = catalog.read_description(data_dir)
        names = catalog.read_class_names(data_dir, description)
        ok = [c for c in description.clips if c.ok]
        held = set(description.held_out_clip_ids())
        result = None
        if held and description.examples("validation"):
            # The agreement tables come from evaluate's own computation (reused when evaluate wrote it).
            result = json.loads(storage.read_text(distill_path)) if storage.isfile(distill_path) else \
                evaluate.distill(run_dir, data_dir)
        ordered = [c.id for c in ok if c.id in held] + [c.id for c in ok if c.id not in held]
        chosen = ordered[:max_clips]
        arrays = None
        if chosen:
            arrays = reader.load_arrays(data_dir, "all", clip_ids=chosen)
            window = _student_window(model)
            if window is not None and window != description.spec.window_samples:
                arrays["student_audio"] = reader.load_arrays(data_dir, "all", clip_ids=chosen, window_samples=window,
                                                             description=description)["audio"]
            val = reader.load_arrays(data_dir, "validation", clip_ids=[c for c in chosen if c in held]) \
                if held & set(chosen) else None
            held_keys = set() if val is None else set(zip(val["clip_id"].tolist(), np.round(val["time"], 4).tolist()))
            arrays["held"] = np.array([(c, t) in held_keys for c, t in
                                       zip(arrays["clip_id"].tolist(), np.round(arrays["time"], 4).tolist())], bool)
        student = {}
        hop = int(dataset.get("hop_samples") or description.spec.window_samples)
        for clip_id in chosen:
            clip = next(c for c in ok if c.id == clip_id)
            mine = arrays["clip_id"] == clip_id
            heard = arrays.get("student_audio", arrays["audio"])[mine]
            student[clip_id] = model.predict(np.asarray(heard)[..., None], verbose=0, batch_size=32)
            span = clip.held_out_span
            kind = {"validation": "held out", "time": "held-out part shaded"}.get(clip.split, "training")
            label = f" [{clip.label}]" if clip.label else ""
            title = f"{clip_id}{label} ({kind}): teacher's top class vs the student's"
            images.append((f"{clip_id}{label} ({kind})",
                           plot_timeline(model, arrays, clip_id, names, sample_rate, out, hop, span, title)))
        if result is not None:
            tables.append(_table("Agreement with the teacher on held-out data",
                                 {"student": result["student"], "prior baseline": result["prior"]},
                                 ("kl", "top1_agreement", "top5_agreement")))
            tables.append(clip_table(result, description, arrays, student, names))
            if "folds" in result:
                tables.append(folds_table(result["folds"]))
    elif storage.isfile(distill_path):
        result = json.loads(storage.read_text(distill_path))
        tables.append(_table("Agreement with the teacher on held-out data",
                             {"student": result["student"], "prior baseline": result["prior"]},
                             ("kl", "top1_agreement", "top5_agreement")))
        if "folds" in result:
            tables.append(folds_table(result["folds"]))
    if storage.isfile(transfer_path):
        result = json.loads(storage.read_text(transfer_path))
        tables.append(_table(f"Transfer: linear classifier accuracy ({result['cv']})", result["accuracy"],
                             ("mean", "std")))
    metrics_path = storage.join(run_dir, "metrics.json")
    if storage.isfile(metrics_path):
        metrics = json.loads(storage.read_text(metrics_path))
        tables.insert(0, _table("Final metrics", {k: v for k, v in metrics.items() if isinstance(v, dict)},
                                ("kl", "top1_agreement", "top5_agreement")))
    figures = "".join(f"<h2>{html.escape(title)}</h2><img src='{html.escape(os.path.basename(path))}'>"
                      for title, path in images)
    # Names only, never machine paths: reports are shared.
    name = storage.basename(run_dir)
    data_name = storage.basename(data_dir) if data_dir else "none"
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>AudioNet run {html.escape(name)}</title>"
            "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto}img{max-width:100%}"
            "td,th{padding:2px 10px;text-align:right}</style></head><body>"
            f"<h1>AudioNet run {html.escape(name)}</h1>"
            f"<p>teacher: {html.escape(str(dataset.get('teacher')))}; dataset: "
            f"{html.escape(data_name)}</p>{''.join(tables)}{figures}</body></html>")
    index = storage.join(out, "index.html")
    storage.atomic_write_text(index, page)
    return index
