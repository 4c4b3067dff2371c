"""Synthetic datasets in the real format: clips of tones whose "teacher" logits follow the tone.

For benchmarks and tests that need the shape of a real dataset (the seed set: 10 clips of
10 s → 2,500 windows of 640 samples with 1000 logits) without video or a teacher. Each clip
has one of a few sound kinds (a sine at a kind-specific frequency plus noise); the teacher's
logits favour that kind's class, with frame-to-frame jitter, so a student can learn them.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from audionet_tf.dataset import records
from audionet_tf.dataset.writer import DatasetWriter


def write_synthetic_dataset(out_dir: str, *, clips: int = 10, seconds: float | Sequence[float] = 10.0,
                            num_classes: int = 1000,
                            kinds: int = 5, sample_rate: int = 16000, window_samples: int = 640,
                            frame_period_ms: float = 40.0, holdout: int = 0, shard_size: int = 1024,
                            seed: int = 0, audio_format: str = "int16",
                            logits_format: str = "float16") -> records.Description:
    """Write a dataset of `clips` synthetic clips to `out_dir`; the last `holdout` clips are held out."""
    rng = np.random.default_rng(seed)
    spec = records.DatasetSpec(sample_rate=sample_rate, window_samples=window_samples,
                               frame_period_ms=frame_period_ms, num_classes=num_classes, teacher="synthetic-tones",
                               audio_format=audio_format, logits_format=logits_format)
    writer = DatasetWriter(out_dir, spec, shard_size=shard_size, token="synthetic")
    hop = int(round(sample_rate * frame_period_ms / 1000.0))
    lengths = [float(seconds)] * clips if np.isscalar(seconds) else [float(s) for s in seconds]
    if len(lengths) != clips:
        raise ValueError(f"{len(lengths)} clip lengths for {clips} clips")
    frequencies = 220.0 * 2.0 ** (np.arange(kinds) * 0.8)  # kinds spread over a few octaves
    class_of_kind = rng.choice(num_classes, size=kinds, replace=False)
    clip_docs = []
    for c in range(clips):
        frames = int(round(lengths[c] * 1000.0 / frame_period_ms))
        kind = c % kinds
        clip_id = f"synthetic_{c:04d}"
        split = "validation" if c >= clips - holdout else "train"
        t = np.arange(frames * hop + window_samples) / sample_rate
        audio = 0.5 * np.sin(2 * np.pi * frequencies[kind] * (1 + 0.01 * rng.standard_normal()) * t)
        audio = (audio + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)
        starts = np.arange(frames) * hop
        windows = np.stack([audio[s:s + window_samples] for s in starts])
        logits = rng.normal(0.0, 1.0, size=(frames, num_classes)).astype(np.float32)
        logits[:, class_of_kind[kind]] += 8.0
        writer.add(split, windows, logits, clip_id, starts / sample_rate)
        clip_docs.append({"id": clip_id, "url": None, "start": 0.0, "duration": lengths[c], "label": f"tone {kind}",
                          "split": split, "status": "ok", "error": None, "examples": frames, "key": clip_id})
    names = [f"class_{i}" for i in range(num_classes)]
    return writer.finish(clips=clip_docs, class_names=names, extra={"synthetic": {"kinds": kinds, "seed": seed}})
