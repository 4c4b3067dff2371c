"""Top classes over time for a recording: per window and per second (probabilities averaged).

A recording is read and classified in chunks of windows (`inference.CHUNK_WINDOWS`; fewer of
SoundNet's long windows, `inference.batch_windows`), so memory stays flat in its length; each window
keeps only its top-k classes, and JSON or CSV results are written window by window to a temporary
file that is renamed into place.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from typing import IO, Any, Iterable, Iterator

import numpy as np

from audionet_tf.serving import inference


@dataclass
class Prediction:
    """One file's top-k classes per window and per second (indices into `class_names`, probabilities)."""

    file: str
    duration: float
    model: str
    class_names: list[str]
    times: np.ndarray  # float64 [M], window starts in seconds
    window_top: np.ndarray  # int32 [M, k]
    window_probability: np.ndarray  # float32 [M, k]
    seconds: np.ndarray  # int64 [S]
    second_top: np.ndarray  # int32 [S, k]
    second_probability: np.ndarray  # float32 [S, k]

    def _entries(self, top: np.ndarray, probability: np.ndarray) -> list[dict[str, Any]]:
        return [{"class": self.class_names[i], "index": int(i), "probability": float(p)}
                for i, p in zip(top, probability)]

    def windows(self) -> Iterator[dict[str, Any]]:
        """Each window's time and top-k, one dict at a time."""
        for t, top, probability in zip(self.times, self.window_top, self.window_probability):
            yield {"time": float(t), "top": self._entries(top, probability)}

    def per_second(self) -> list[dict[str, Any]]:
        """Each second's top-k of the probabilities averaged over its windows."""
        return [{"second": int(s), "top": self._entries(top, probability)}
                for s, top, probability in zip(self.seconds, self.second_top, self.second_probability)]

    def to_dict(self) -> dict[str, Any]:
        """The whole result as plain data (what `--json` writes for one file)."""
        return {"file": self.file, "duration": self.duration, "model": self.model,
                "windows": list(self.windows()), "seconds": self.per_second()}


def _top(probabilities: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-probabilities, axis=-1)[..., :k]
    return order.astype(np.int32), np.take_along_axis(probabilities, order, axis=-1)


def predict_file(student: inference.Student, path: str, top_k: int = 5, hop: int | None = None) -> Prediction:
    """Per-window and per-second top-k classes of one file, read and classified chunk by chunk
    (a window every `hop` samples; None: the training hop)."""
    k = min(top_k, len(student.class_names))
    tops, top_probabilities, starts = [], [], []
    seconds, second_tops, second_probabilities = [], [], []
    pending_second, pending = None, []  # a second's window probabilities, which may span chunks

    def close_second() -> None:
        if pending:
            mean = (np.concatenate(pending) if len(pending) > 1 else pending[0]).mean(axis=0)
            top, probability = _top(mean, k)
            seconds.append(pending_second)
            second_tops.append(top)
            second_probabilities.append(probability)

    with inference.open_audio(path, student.sample_rate) as source:
        for windows, chunk_starts in inference.window_chunks(inference.heard_audio(student, source),
                                                             student.window_samples, hop or student.hop_samples, path):
            probabilities = inference.softmax(inference.batched(student.logits, windows))
            top, probability = _top(probabilities, k)
            tops.append(top)
            top_probabilities.append(probability)
            starts.append(chunk_starts)
            chunk_seconds = np.floor(chunk_starts / student.sample_rate).astype(int)
            for second in np.unique(chunk_seconds):
                rows = probabilities[chunk_seconds == second]
                if second != pending_second:
                    close_second()
                    pending_second, pending = int(second), []
                pending.append(rows)
        close_second()
        samples = source.samples
    return Prediction(
        file=path, duration=samples / student.sample_rate, model=student.source,
        class_names=student.class_names, times=np.concatenate(starts) / student.sample_rate,
        window_top=np.concatenate(tops), window_probability=np.concatenate(top_probabilities),
        seconds=np.asarray(seconds, np.int64), second_top=np.stack(second_tops),
        second_probability=np.stack(second_probabilities))


def _replace_atomically(path: str, write) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str, results: Iterable[Prediction]) -> None:
    """The results as one JSON list (one object per file, as `Prediction.to_dict`), written window by
    window to a temporary file renamed into place."""

    def write(handle: IO[str]) -> None:
        handle.write("[")
        for number, result in enumerate(results):
            head = json.dumps({"file": result.file, "duration": result.duration, "model": result.model})
            handle.write(("," if number else "") + "\n  " + head[:-1] + ',\n    "windows": [')
            for index, window in enumerate(result.windows()):
                handle.write(("," if index else "") + "\n      " + json.dumps(window))
            handle.write('\n    ],\n    "seconds": ' + json.dumps(result.per_second()) + "\n  }")
        handle.write("\n]\n")

    _replace_atomically(path, write)


def write_csv(path: str, results: Iterable[Prediction]) -> None:
    """One row per (file, window, rank), written to a temporary file renamed into place."""

    def write(handle: IO[str]) -> None:
        writer = csv.writer(handle)
        writer.writerow(["file", "time", "rank", "class", "probability"])
        for result in results:
            for window in result.windows():
                for rank, entry in enumerate(window["top"], start=1):
                    writer.writerow([result.file, f"{window['time']:.3f}", rank, entry["class"],
                                     f"{entry['probability']:.6f}"])

    _replace_atomically(path, write)
