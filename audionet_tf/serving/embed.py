"""Sound embeddings from the student: per window, pooled features or conv-map statistics."""
from __future__ import annotations

import io
import os
from typing import Sequence

import numpy as np

from audionet_tf.core.errors import AudioNetError
from audionet_tf.serving import inference


def conv_statistics(model, windows: np.ndarray) -> np.ndarray:
    """Mean, std and max over time of the max-pooled conv maps: `[N, 48]`."""
    maps = inference.keras_runner(model, "conv")(windows)
    return np.concatenate([maps.mean(axis=1), maps.std(axis=1), maps.max(axis=1)], axis=1)


def embed_wave(student: inference.Student, wave: np.ndarray, hop: int, layer: str, where: str):
    """Embeddings and window start times for one waveform."""
    windows, starts = inference.frame_audio(wave, student.window_samples, hop, where)
    if layer == "conv":
        if student.keras_model is None:
            raise AudioNetError(f"--layer conv needs a .keras model, not {student.source}")
        values = conv_statistics(student.keras_model, windows)
    else:
        if student.embed is None:
            raise AudioNetError(f"{student.source} has no embedding signature")
        values = inference.batched(student.embed, windows)
    return values.astype(np.float32), (starts / student.sample_rate).astype(np.float32)


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
