"""Labelling speed: the whole `prepare` call against the same teacher's best compiled forward pass, side by side.

    python benchmarks/labelling_speed.py [--rounds 3] [--clips 8] [--seconds 6] [--batch 32]

The teacher is EfficientNetV2B0 with `weights=None`, saved as a `.keras` file (no download), and
the clips are local lavfi clips (320×240, 25 frames/s, with audio), made before any timing. Each
round measures, in this one process:

- `compiled`: the best of 5 timings of 4 batches through `Teacher.forward` (the tf.function with a
  fixed batch shape that `prepare` runs), after one warm-up call, measured before and after the
  prepare run (the better of the two: the machine is shared, and the bar is the teacher's best);
- `prepare`: `runner.prepare` on all clips into a fresh directory, timed from the call to its
  return: loading the teacher, tracing it, decoding, labelling, writing and committing;
- `labelling`: the same run's frames over its time after the teacher was ready (the run minus the
  teacher's load and first call, both timed inside the run);
- `in prepare`: the frames/s of the teacher's batches inside the run (every call but the first),
  which shows how much of the gap is the teacher itself slowed by decoding on the same cores.

It prints frames/s for each and the ratios to `compiled` within the round, then the spread of the
ratios over the rounds. The command's own start (importing TensorFlow, a few seconds) is not counted.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from audionet_tf.core import config as cfg  # noqa: E402
from audionet_tf.preparation import runner  # noqa: E402
from audionet_tf.preparation.media import ffmpeg_exe  # noqa: E402
from audionet_tf.preparation.teacher import load_teacher  # noqa: E402


def make_clips(folder: str, count: int, seconds: float) -> list[str]:
    """`count` local clips with moving pictures and a tone."""
    paths = []
    for i in range(count):
        path = os.path.join(folder, f"clip{i}.mp4")
        subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                        f"testsrc=size=320x240:rate=25:duration={seconds}", "-f", "lavfi", "-i",
                        f"sine=frequency={300 + 50 * i}:sample_rate=16000:duration={seconds}", "-c:v", "libx264",
                        "-pix_fmt", "yuv420p", "-c:a", "aac", "-t", str(seconds), path], check=True)
        paths.append(path)
    return paths


def compiled_rate(model_path: str, batch: int) -> tuple[float, float]:
    """Best frames/s of the compiled forward pass, and the seconds the teacher took to load and first run."""
    start = time.perf_counter()
    teacher = load_teacher(model_path, batch_size=batch)
    frames = np.random.default_rng(0).integers(0, 256, (batch, *teacher.input_size, 3), dtype=np.uint8)
    teacher.forward(frames)
    ready = time.perf_counter() - start
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(4):
            teacher.forward(frames)
        best = max(best, 4 * batch / (time.perf_counter() - start))
    return best, ready


@contextlib.contextmanager
def timed(calls: list[float], loading: list[float]):
    """Time every `Teacher.forward` call and the teacher's load while the block runs (this script only)."""
    from audionet_tf.preparation import teacher as teachers

    forward, load = teachers.Teacher.forward, teachers.load_teacher

    def timed_forward(self, batch):
        start = time.perf_counter()
        try:
            return forward(self, batch)
        finally:
            calls.append(time.perf_counter() - start)

    def timed_load(*args, **kwargs):
        start = time.perf_counter()
        try:
            return load(*args, **kwargs)
        finally:
            loading.append(time.perf_counter() - start)

    teachers.Teacher.forward, teachers.load_teacher = timed_forward, timed_load
    try:
        yield
    finally:
        teachers.Teacher.forward, teachers.load_teacher = forward, load


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    import keras

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_path = os.path.join(tmp, "EfficientNetV2B0.keras")
        keras.applications.EfficientNetV2B0(weights=None, classifier_activation=None,
                                            input_shape=(224, 224, 3)).save(model_path)
        clips = make_clips(tmp, args.clips, args.seconds)
        entries = tuple({"url": p, "start": 0, "duration": args.seconds, "label": "x"} for p in clips)
        frames = int(round(args.seconds * 25)) * len(clips)
        for round_ in range(args.rounds):
            best, ready = compiled_rate(model_path, args.batch)
            config = cfg.PipelineConfig(prepare=cfg.PrepareConfig(
                out=os.path.join(tmp, f"data{round_}"), cache_dir=os.path.join(tmp, "cache"), teacher=model_path,
                teacher_batch=args.batch, clips=entries, holdout="0"))
            calls: list[float] = []
            loading: list[float] = []
            start = time.perf_counter()
            with timed(calls, loading):
                summary = runner.prepare(config)
            seconds = time.perf_counter() - start
            best = max(best, compiled_rate(model_path, args.batch)[0])
            assert summary.examples["train"] == frames, summary
            start_up = sum(loading) + calls[0]
            inside = args.batch * (len(calls) - 1) / sum(calls[1:])
            rows.append((best, frames / seconds, frames / max(seconds - start_up, 1e-6)))
            print(f"round {round_ + 1}: compiled {best:.1f} frames/s; prepare {frames / seconds:.1f} "
                  f"({frames / seconds / best:.2f}x) in {seconds:.1f} s; labelling {rows[-1][2]:.1f} "
                  f"({rows[-1][2] / best:.2f}x; teacher load + first call {start_up:.1f} s); in prepare "
                  f"{inside:.1f} ({inside / best:.2f}x)", flush=True)
    whole = [r[1] / r[0] for r in rows]
    labelling = [r[2] / r[0] for r in rows]
    print(f"\n{len(clips)} clips of {args.seconds:g} s, {frames} frames, EfficientNetV2B0 (weights=None) .keras, "
          f"batch {args.batch}, {os.cpu_count()} cores, {args.rounds} rounds")
    print(f"prepare / compiled:   {np.median(whole):.2f}x (min {min(whole):.2f}, max {max(whole):.2f})")
    print(f"labelling / compiled: {np.median(labelling):.2f}x (min {min(labelling):.2f}, max {max(labelling):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
