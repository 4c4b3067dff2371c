"""A run's report: PNG plots and one `index.html` in `runs/NAME/report/`.

    python -m audionet_tf.report runs/NAME [--data DIR] [--clips 4]

Training curves (loss, KL, top-1/top-5 agreement, training and held-out), the 16 learned
filters and their frequency responses, per-clip timelines (the teacher's top class against
the student's over time, over the clip's spectrogram; held-out clips first), and the
evaluation tables when `evaluate` has written them. matplotlib with no display.
"""
from __future__ import annotations

import argparse
import csv
import html
import json
import os
import sys
from typing import Sequence

import numpy as np

from audionet_tf import data, records
from audionet_tf.errors import AudioNetError


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp.png"
    fig.savefig(tmp, dpi=90)
    _plt().close(fig)
    os.replace(tmp, path)


def plot_history(history_csv: str, out: str) -> str | None:
    """Training curves from history.csv."""
    if not os.path.isfile(history_csv):
        return None
    with open(history_csv, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return None
    plt = _plt()
    epochs = [int(r["epoch"]) for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, metric, title in zip(axes, ("loss", "top1_agreement", "top5_agreement"),
                                 ("distillation loss (KL)", "top-1 agreement", "top-5 agreement")):
        for prefix, label in (("", "training clips"), ("val_", "held-out clips")):
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
    path = os.path.join(out, "curves.png")
    _save(fig, path)
    return path


def plot_filters(model, sample_rate: int, out: str) -> str:
    """The conv filters and their frequency responses."""
    from audionet_tf.callbacks import filter_figure

    plt = _plt()
    image = filter_figure(model.get_layer("conv").kernel.numpy(), sample_rate)
    fig = plt.figure(figsize=(image.shape[1] / 90, image.shape[0] / 90))
    fig.figimage(image)
    path = os.path.join(out, "filters.png")
    _save(fig, path)
    return path


def plot_timeline(model, arrays: dict[str, np.ndarray], clip_id: str, class_names: list[str], sample_rate: int,
                  out: str) -> str:
    """Teacher's top class vs the student's over a clip, over its spectrogram."""
    plt = _plt()
    mine = arrays["clip_id"] == clip_id
    windows, teacher, times = arrays["audio"][mine], arrays["logits"][mine], arrays["time"][mine]
    student = model.predict(windows[..., None], verbose=0, batch_size=512)
    shown = sorted(set(teacher.argmax(1)) | set(student.argmax(1)))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 5), sharex=True,
                                      gridspec_kw={"height_ratios": [1, 1.3]})
    rank = {c: i for i, c in enumerate(shown)}
    top.step(times, [rank[c] for c in teacher.argmax(1)], where="post", label="teacher (frames)", linewidth=2)
    top.step(times, [rank[c] for c in student.argmax(1)], where="post", label="student (audio)", linestyle="--")
    top.set_yticks(range(len(shown)))
    top.set_yticklabels([class_names[c][:24] for c in shown], fontsize=7)
    top.set_title(f"{clip_id}: top class over time")
    top.legend(fontsize=7, loc="upper right")
    wave = windows.reshape(-1)  # consecutive windows of one period rebuild the clip's audio
    bottom.specgram(wave, NFFT=512, Fs=sample_rate, noverlap=384, xextent=(times[0], times[-1] + len(windows[0]) /
                                                                           sample_rate), cmap="magma")
    bottom.set_ylabel("Hz")
    bottom.set_xlabel("seconds")
    fig.tight_layout()
    path = os.path.join(out, f"timeline-{clip_id}.png")
    _save(fig, path)
    return path


def _table(title: str, rows: dict[str, dict], columns: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(f"<tr><td>{html.escape(str(name))}</td>" +
                   "".join(f"<td>{values.get(c, float('nan')):.4f}</td>" for c in columns) + "</tr>"
                   for name, values in rows.items())
    return f"<h2>{html.escape(title)}</h2><table><tr><th></th>{head}</tr>{body}</table>"


def make_report(run_dir: str, data_dir: str | None = None, max_clips: int = 4) -> str:
    """Write `run_dir/report/` (PNGs and index.html); returns the index path."""
    from audionet_tf.model import load_model

    model_path = os.path.join(run_dir, "model.keras")
    if not os.path.isfile(model_path):
        raise AudioNetError(f"{run_dir} holds no model.keras: not a finished training run")
    with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    data_dir = data_dir or config.get("dataset", {}).get("data_dir")
    out = os.path.join(run_dir, "report")
    os.makedirs(out, exist_ok=True)
    model = load_model(model_path)
    sample_rate = int(config.get("dataset", {}).get("sample_rate", 16000))
    images = []
    curves = plot_history(os.path.join(run_dir, "history.csv"), out)
    if curves:
        images.append(("Training curves", curves))
    images.append(("The 16 learned filters and their frequency responses", plot_filters(model, sample_rate, out)))
    if data_dir and os.path.isfile(os.path.join(data_dir, records.DESCRIPTION_FILE)):
        description = records.read_description(data_dir)
        names = records.read_class_names(data_dir, description)
        ok = [c for c in description.clips if c.get("status") == "ok"]
        ordered = [c["id"] for c in ok if c.get("split") == "validation"] + \
                  [c["id"] for c in ok if c.get("split") != "validation"]
        chosen = ordered[:max_clips]
        if chosen:
            arrays = data.load_arrays(data_dir, "all", clip_ids=chosen)
            for clip_id in chosen:
                split = next(c.get("split") for c in ok if c["id"] == clip_id)
                images.append((f"{clip_id} ({'held out' if split == 'validation' else 'training'})",
                               plot_timeline(model, arrays, clip_id, names, sample_rate, out)))
    tables = []
    distill_path, transfer_path = os.path.join(out, "distill.json"), os.path.join(out, "transfer.json")
    if os.path.isfile(distill_path):
        result = json.load(open(distill_path, encoding="utf-8"))
        tables.append(_table("Agreement with the teacher on held-out clips",
                             {"student": result["student"], "prior baseline": result["prior"]},
                             ("kl", "top1_agreement", "top5_agreement")))
    if os.path.isfile(transfer_path):
        result = json.load(open(transfer_path, encoding="utf-8"))
        tables.append(_table(f"Transfer: linear classifier accuracy ({result['cv']})", result["accuracy"],
                             ("mean", "std")))
    metrics_path = os.path.join(run_dir, "metrics.json")
    if os.path.isfile(metrics_path):
        metrics = json.load(open(metrics_path, encoding="utf-8"))
        tables.insert(0, _table("Final metrics", {k: v for k, v in metrics.items() if isinstance(v, dict)},
                                ("kl", "top1_agreement", "top5_agreement")))
    figures = "".join(f"<h2>{html.escape(title)}</h2><img src='{html.escape(os.path.basename(path))}'>"
                      for title, path in images)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>AudioNet run {html.escape(run_dir)}</title>"
            "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto}img{max-width:100%}"
            "td,th{padding:2px 10px;text-align:right}</style></head><body>"
            f"<h1>AudioNet run {html.escape(os.path.basename(os.path.normpath(run_dir)))}</h1>"
            f"<p>teacher: {html.escape(str(config.get('dataset', {}).get('teacher')))}; data: "
            f"{html.escape(str(data_dir))}</p>{''.join(tables)}{figures}</body></html>")
    index = os.path.join(out, "index.html")
    records.atomic_write_text(index, page)
    return index


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(prog="python -m audionet_tf.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--data", help="dataset directory (default: the run's)")
    p.add_argument("--clips", type=int, default=4, help="clips to draw timelines for")
    args = p.parse_args(argv)
    try:
        print(make_report(args.run, args.data, args.clips))
    except AudioNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
