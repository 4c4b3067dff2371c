"""The embed command's library part: embeddings of a file or waveform (computed by `inference`, chunk by
chunk) and the `.npz` files they go to."""
from __future__ import annotations

import io
import os
from typing import Sequence

import numpy as np

from audionet_tf.core.errors import AudioNetError
from audionet_tf.serving import audio, inference


conv_statistics = inference.conv_statistics


def embed_wave(student: inference.Student, wave: np.ndarray, hop: int, layer: str, where: str):
    """Embeddings and window start times for one waveform already at the student's sample rate."""
    return inference.embed_source(student, audio.ArrayAudio(np.asarray(wave, np.float32)), hop, layer, where)


def embed_file(student: inference.Student, path: str, hop: int, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and window start times for any file ffmpeg reads, decoded and embedded chunk by chunk."""
    with inference.open_audio(path, student.sample_rate) as source:
        return inference.embed_source(student, source, hop, layer, path)


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
