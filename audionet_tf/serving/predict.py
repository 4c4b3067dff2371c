"""Top classes over time for a recording: per window and per second (probabilities averaged)."""
from __future__ import annotations

import csv
import io
from typing import Any

import numpy as np

from audionet_tf.preparation.media import read_audio
from audionet_tf.serving import inference


def predict_file(student: inference.Student, path: str, top_k: int = 5) -> dict[str, Any]:
    """Per-window and per-second top-k classes of one file."""
    wave = read_audio(path, student.sample_rate)
    windows, starts = inference.frame_audio(wave, student.window_samples, student.hop_samples, path)
    probs = inference.softmax(inference.batched(student.logits, windows))
    times = starts / student.sample_rate
    k = min(top_k, probs.shape[1])

    def top(p: np.ndarray) -> list[dict[str, Any]]:
        order = np.argsort(-p)[:k]
        return [{"class": student.class_names[i], "index": int(i), "probability": float(p[i])} for i in order]

    seconds = np.floor(times).astype(int)
    return {
        "file": path, "duration": len(wave) / student.sample_rate, "model": student.source,
        "windows": [{"time": float(t), "top": top(p)} for t, p in zip(times, probs)],
        "seconds": [{"second": int(s), "top": top(probs[seconds == s].mean(axis=0))} for s in np.unique(seconds)],
    }


def to_csv(results: list[dict[str, Any]]) -> str:
    """One row per (file, window, rank)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["file", "time", "rank", "class", "probability"])
    for result in results:
        for window in result["windows"]:
            for rank, entry in enumerate(window["top"], start=1):
                writer.writerow([result["file"], f"{window['time']:.3f}", rank, entry["class"],
                                 f"{entry['probability']:.6f}"])
    return buffer.getvalue()
