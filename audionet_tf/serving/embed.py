"""Sound embeddings from the student: per window, pooled features or conv-map statistics, a recording
read and embedded in chunks of windows (memory flat in its length)."""
from __future__ import annotations

import io
import os
from typing import Any, Callable, Sequence

import numpy as np

from audionet_tf.core.errors import AudioNetError
from audionet_tf.serving import audio, inference


def conv_statistics(model, windows: np.ndarray) -> np.ndarray:
    """Mean, std and max over time of the max-pooled conv maps: `[N, 48]`."""
    maps = inference.keras_runner(model, "conv")(windows)
    return np.concatenate([maps.mean(axis=1), maps.std(axis=1), maps.max(axis=1)], axis=1)


def _embedder(student: inference.Student, layer: str) -> Callable[[np.ndarray], np.ndarray]:
    if layer == "conv":
        if student.keras_model is None:
            raise AudioNetError(f"--layer conv needs a .keras model, not {student.source}")
        return lambda windows: conv_statistics(student.keras_model, windows)
    if layer != "pooled":
        raise AudioNetError(f"layer must be pooled or conv, got {layer!r}")
    if student.embed is None:
        raise AudioNetError(f"{student.source} has no embedding signature")
    return lambda windows: inference.batched(student.embed, windows)


def _embed_source(student: inference.Student, source: audio.ArrayAudio | audio.FileAudio, hop: int, layer: str,
                  where: str) -> tuple[np.ndarray, np.ndarray]:
    embedder = _embedder(student, layer)
    values, starts = [], []
    for windows, chunk_starts in inference.window_chunks(source, student.window_samples, hop, where):
        values.append(embedder(windows).astype(np.float32))
        starts.append(chunk_starts)
    return np.concatenate(values), (np.concatenate(starts) / student.sample_rate).astype(np.float32)


def embed_wave(student: inference.Student, wave: np.ndarray, hop: int, layer: str, where: str):
    """Embeddings and window start times for one waveform already at the student's sample rate."""
    return _embed_source(student, audio.ArrayAudio(np.asarray(wave, np.float32)), hop, layer, where)


def embed_file(student: inference.Student, path: str, hop: int, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and window start times for any file ffmpeg reads, decoded and embedded chunk by chunk."""
    with inference.open_audio(path, student.sample_rate) as source:
        return _embed_source(student, source, hop, layer, path)


def embed_array(student: inference.Student, samples: np.ndarray, sample_rate: int, *,
                hop_seconds: float | None = None, layer: str = "pooled") -> dict[str, Any]:
    """Embeddings of each window of an array at `sample_rate` (resampled to the student's rate):
    `embeddings` `[M, D]` (D = 16 pooled, 48 conv statistics) and `times` `[M]` (window starts, s)."""
    source = inference.array_audio(samples, sample_rate, student)
    values, times = _embed_source(student, source, inference.hop_for(student, hop_seconds), layer, "audio")
    return {"embeddings": values, "times": times}


def embed_path(student: inference.Student, path: str, *, hop_seconds: float | None = None,
               layer: str = "pooled") -> dict[str, Any]:
    """`embed_array`'s answer for any file ffmpeg reads, decoded and embedded chunk by chunk."""
    values, times = embed_file(student, path, inference.hop_for(student, hop_seconds), layer)
    return {"embeddings": values, "times": times}


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
