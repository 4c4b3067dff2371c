"""Labelling speed: the whole `prepare` call against the same teacher's own compiled rate, side by side.

    python benchmarks/labelling_speed.py [--rounds 3] [--workloads 8x6,24x10] [--batch 32] [--onnx-threads 0]

The teacher is EfficientNetV2B0 with `weights=None`, saved as a `.keras` file (no download), and
the clips are local lavfi clips (320×240, 25 frames/s, with audio), made before any timing. Two
workloads by default: issue 18's 8 clips of 6 s (1,200 frames, where the teacher's start is a large
share) and 24 clips of 10 s (6,000 frames; VGGSound's clips are 10 s). Each round measures, for
each workload in turn, in this one process:

- `teacher alone` (the bar): the teacher's sustained frames/s through `Teacher.forward` (the
  compiled call with a fixed batch shape and the weights folded in that `prepare` runs, loaded
  once for the whole script),
  over as many frames as the workload has, in whole batches, measured right before and right
  after the prepare run; the mean of the two. **This replaced "the best of 5 timings of 4
  batches"** as the bar, because a best-of-5 picks the quietest moment of a shared machine while
  prepare is timed over its whole run; `best` is still printed as an extra column;
- `unfolded`: the same, with the weights left as variables (`--no-teacher-fold`): the model in a
  `tf.function`, the form issue 18 measured its bar with. Folding makes the teacher itself faster,
  so the bar above is the higher one;
- `prepare`: `runner.prepare` on all clips into a fresh directory, timed from the call to its
  return: loading the teacher, tracing it, decoding, labelling, writing and committing; split
  into `teacher ready` (from the call to the end of the teacher's first batch: load, trace,
  first call), `its batches` (every later `Teacher.forward` call inside the run, with their
  frames/s against the teacher alone: how much decoding on the same cores slows it) and
  `other` (the rest: time outside the teacher's calls after its first one);
- the teacher's start: `fresh` in each workload's first round (no kept graph: load the `.keras`
  file, trace, fold, keep the graph), `kept` in the later rounds (the folded graph the first
  round kept in the cache, `preparation/teacher_graphs.py`), as a rerun or a Beam worker sharing
  the cache starts;
- the load average (1 min) around the round, since the machine may be shared;
- `ONNX`: the same model (the same `.keras` file's network and weights) converted to ONNX with tf2onnx and
  run by onnxruntime as `--teacher model.onnx` runs it (`preparation/onnx_teacher.py`; its normalisation is
  inside the model, so the ONNX preprocessing is set to none), measured the same way in the same round:
  alone (before and after) and in a whole `prepare` call, and put against the Keras teacher (folded) alone
  and the Keras `prepare` of that round. `--onnx-threads` sets onnxruntime's intra-op threads (0: one per core).

It prints each round, then a table with the median and spread of the ratios over the rounds.
The command's own start (importing TensorFlow, a few seconds) is not counted.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import cpu_description, load  # noqa: E402

from audionet_tf.core import config as cfg  # noqa: E402
from audionet_tf.preparation import runner  # noqa: E402
from audionet_tf.preparation.media import ffmpeg_exe  # noqa: E402
from audionet_tf.preparation.teacher import load_teacher  # noqa: E402


def make_clips(folder: str, count: int, seconds: float) -> list[str]:
    """`count` local clips with moving pictures and a tone."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(count):
        path = os.path.join(folder, f"clip{i}.mp4")
        subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                        f"testsrc=size=320x240:rate=25:duration={seconds}", "-f", "lavfi", "-i",
                        f"sine=frequency={300 + 50 * i}:sample_rate=16000:duration={seconds}", "-c:v", "libx264",
                        "-pix_fmt", "yuv420p", "-c:a", "aac", "-t", str(seconds), path], check=True)
        paths.append(path)
    return paths


def best_rate(teacher, frames: np.ndarray) -> float:
    """The teacher's best frames/s: the best of 5 timings of 4 batches (the quietest moment of the machine)."""
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(4):
            teacher.forward(frames)
        best = max(best, 4 * len(frames) / (time.perf_counter() - start))
    return best


def sustained_rate(teacher, frames: np.ndarray, count: int) -> float:
    """The teacher's frames/s over `count` frames (whole batches), batch after batch as prepare runs them."""
    calls = -(-count // len(frames))
    start = time.perf_counter()
    for _ in range(calls):
        teacher.forward(frames)
    return calls * len(frames) / (time.perf_counter() - start)


@contextlib.contextmanager
def timed(calls: list[tuple[float, float]], loading: list[float]):
    """Time every `Teacher.forward` call and the teacher's load while the block runs (this script only)."""
    from audionet_tf.preparation import teacher as teachers

    forward, load = teachers.Teacher.forward, teachers.load_teacher
    onnx_forward = teachers.OnnxTeacher.forward

    def timing(method):
        def timed_forward(self, batch):
            start = time.perf_counter()
            try:
                return method(self, batch)
            finally:
                calls.append((start, time.perf_counter() - start))

        return timed_forward

    def timed_load(*args, **kwargs):
        start = time.perf_counter()
        try:
            return load(*args, **kwargs)
        finally:
            loading.append(time.perf_counter() - start)

    teachers.Teacher.forward, teachers.load_teacher = timing(forward), timed_load
    teachers.OnnxTeacher.forward = timing(onnx_forward)
    try:
        yield
    finally:
        teachers.Teacher.forward, teachers.load_teacher = forward, load
        teachers.OnnxTeacher.forward = onnx_forward


def timed_prepare(config: cfg.PipelineConfig) -> tuple:
    """One whole prepare call, timed: its summary, start and seconds, each teacher call's (start, seconds) and
    each teacher load's seconds."""
    calls: list[tuple[float, float]] = []
    loading: list[float] = []
    start = time.perf_counter()
    with timed(calls, loading):
        summary = runner.prepare(config)
    return summary, start, time.perf_counter() - start, calls, loading


def run_round(teacher, unfolded, batch: np.ndarray, model_path: str, clips: list[str], seconds: float, out: str,
              cache: str, fresh: bool) -> dict:
    """One side-by-side measurement: the teacher alone, the whole prepare call, the teacher alone again."""
    if fresh:
        shutil.rmtree(os.path.join(cache, "teachers"), ignore_errors=True)
    entries = tuple({"url": p, "start": 0, "duration": seconds, "label": "x"} for p in clips)
    frames = int(round(seconds * 25)) * len(clips)
    load_before = os.getloadavg()[0]
    before = sustained_rate(teacher, batch, frames)
    unfolded_before = sustained_rate(unfolded, batch, frames)
    best = best_rate(teacher, batch)
    config = cfg.PipelineConfig(prepare=cfg.PrepareConfig(
        out=out, cache_dir=cache, teacher=model_path, teacher_batch=len(batch), clips=entries, holdout="0"))
    summary, start, seconds_, calls, loading = timed_prepare(config)
    after = sustained_rate(teacher, batch, frames)
    unfolded_after = sustained_rate(unfolded, batch, frames)
    best = max(best, best_rate(teacher, batch))
    assert summary.examples["train"] == frames, summary
    assert len(loading) == (1 if fresh else 0), "a kept graph is used in every round but the first"
    first_end = calls[0][0] + calls[0][1] - start  # the teacher loaded, traced and its first batch labelled
    busy = sum(c[1] for c in calls[1:])
    return {"start": "fresh" if fresh else "kept", "frames": frames, "sustained": (before + after) / 2,
            "before": before, "after": after, "best": best,
            "unfolded": (unfolded_before + unfolded_after) / 2,
            "prepare": frames / seconds_, "seconds": seconds_, "load_s": sum(loading), "ready_s": first_end,
            "busy_s": busy, "other_s": seconds_ - first_end - busy,
            "inside": len(batch) * (len(calls) - 1) / busy, "loadavg": (load_before + os.getloadavg()[0]) / 2}


def onnx_round(teacher, batch: np.ndarray, onnx_path: str, clips: list[str], seconds: float, out: str, cache: str,
               threads: int) -> dict:
    """The ONNX teacher's side of a round: alone before and after, and a whole prepare call with it."""
    entries = tuple({"url": p, "start": 0, "duration": seconds, "label": "x"} for p in clips)
    frames = int(round(seconds * 25)) * len(clips)
    before = sustained_rate(teacher, batch, frames)
    config = cfg.PipelineConfig(prepare=cfg.PrepareConfig(
        out=out, cache_dir=cache, teacher=onnx_path, teacher_batch=len(batch), clips=entries, holdout="0",
        onnx_threads=threads, **AS_IS))
    summary, start, seconds_, calls, loading = timed_prepare(config)
    after = sustained_rate(teacher, batch, frames)
    assert summary.examples["train"] == frames, summary
    busy = sum(c[1] for c in calls[1:])
    return {"sustained": (before + after) / 2, "before": before, "after": after, "prepare": frames / seconds_,
            "seconds": seconds_, "load_s": sum(loading), "ready_s": calls[0][0] + calls[0][1] - start,
            "inside": len(batch) * (len(calls) - 1) / busy}


def to_onnx(model, path: str) -> str:
    """The Keras model as an ONNX file with a dynamic batch: traced, its weights folded into constants, converted
    by tf2onnx. (`model.export(path, format="onnx")` leaves EfficientNetV2's normalisation constants as extra
    graph inputs with tf2onnx 1.17; freezing first does not.)"""
    import tensorflow as tf
    import tf2onnx
    from keras.src.export.tf2onnx_lib import patch_tf2onnx
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    patch_tf2onnx()  # tf2onnx 1.17 with NumPy 2, as Keras's own export does
    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="images")
    frozen = convert_variables_to_constants_v2(
        tf.function(lambda x: model(x, training=False), input_signature=[spec]).get_concrete_function())
    tf2onnx.convert.from_graph_def(frozen.graph.as_graph_def(), input_names=[frozen.inputs[0].name],
                                   output_names=[frozen.outputs[0].name], output_path=path)
    return path


# The network normalises inside (EfficientNetV2's include_preprocessing), as the Keras teacher does: the ONNX
# teacher's own preprocessing is set to none, so both see the same values.
AS_IS = {"onnx_scale": 1.0, "onnx_mean": (0.0,), "onnx_std": (1.0,)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workloads", default="8x6,24x10",
                        help="comma-separated CLIPSxSECONDS workloads, each measured in every round (default 8x6,24x10)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--onnx-threads", type=int, default=0,
                        help="onnxruntime's intra-op threads for the ONNX teacher (0: one per core, the default)")
    args = parser.parse_args(argv)
    workloads = [(int(c), float(s)) for c, s in (w.split("x") for w in args.workloads.split(","))]
    logging.disable(logging.WARNING)
    import keras
    import onnxruntime

    rows: dict[tuple[int, float, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_path = os.path.join(tmp, "EfficientNetV2B0.keras")
        network = keras.applications.EfficientNetV2B0(weights=None, classifier_activation=None,
                                                      input_shape=(224, 224, 3))
        network.save(model_path)
        onnx_path = to_onnx(network, os.path.join(tmp, "EfficientNetV2B0.onnx"))
        clips = {w: make_clips(os.path.join(tmp, f"clips{w[0]}x{w[1]:g}"), *w) for w in workloads}
        # The teacher alone, loaded once in this process: the same file, batch size and compiled call as prepare's.
        teacher = load_teacher(model_path, batch_size=args.batch)
        unfolded = load_teacher(model_path, batch_size=args.batch, fold=False)
        onnx = load_teacher(onnx_path, batch_size=args.batch,
                            prepare=cfg.PrepareConfig(onnx_threads=args.onnx_threads, **AS_IS))
        batch = np.random.default_rng(0).integers(0, 256, (args.batch, *teacher.input_size, 3), dtype=np.uint8)
        teacher.forward(batch)
        unfolded.forward(batch)
        gap = float(np.abs(onnx.forward(batch) - teacher.forward(batch)).max())
        print(f"ONNX against Keras on one batch: largest logit difference {gap:.2e} "
              f"(largest |logit| {float(np.abs(teacher.forward(batch)).max()):.2f}); "
              f"onnxruntime threads {onnx.model.threads}", flush=True)
        assert teacher.folded and not unfolded.folded
        for round_ in range(args.rounds):
            for w in workloads:
                r = run_round(teacher, unfolded, batch, model_path, clips[w], w[1],
                              os.path.join(tmp, f"data{round_}-{w[0]}"), os.path.join(tmp, "cache"), round_ == 0)
                o = onnx_round(onnx, batch, onnx_path, clips[w], w[1], os.path.join(tmp, f"onnx{round_}-{w[0]}"),
                               os.path.join(tmp, "cache"), args.onnx_threads)
                r.update({"onnx": o["sustained"], "onnx_prepare": o["prepare"], "onnx_inside": o["inside"],
                          "onnx_ready_s": o["ready_s"]})
                rows.setdefault((*w, r["start"]), []).append(r)
                print(f"round {round_ + 1}, {w[0]}x{w[1]:g} s ({r['frames']} frames), {r['start']} start, "
                      f"load {r['loadavg']:.1f}: "
                      f"teacher alone {r['sustained']:.1f} frames/s (before {r['before']:.1f}, after "
                      f"{r['after']:.1f}; best {r['best']:.1f}; unfolded {r['unfolded']:.1f}); prepare "
                      f"{r['prepare']:.1f} ({r['prepare'] / r['sustained']:.2f}x; {r['prepare'] / r['best']:.2f}x "
                      f"of best; {r['prepare'] / r['unfolded']:.2f}x of unfolded) in "
                      f"{r['seconds']:.1f} s = teacher ready {r['ready_s']:.1f} s (load {r['load_s']:.1f}) + its "
                      f"batches {r['busy_s']:.1f} s at {r['inside']:.1f} frames/s "
                      f"({r['inside'] / r['sustained']:.2f}x) + other {r['other_s']:.1f} s; "
                      f"ONNX alone {o['sustained']:.1f} frames/s (before {o['before']:.1f}, after {o['after']:.1f}; "
                      f"{o['sustained'] / r['sustained']:.2f}x Keras folded), ONNX prepare {o['prepare']:.1f} "
                      f"({o['prepare'] / r['prepare']:.2f}x Keras prepare; {o['prepare'] / o['sustained']:.2f}x "
                      f"ONNX alone) in {o['seconds']:.1f} s, teacher ready {o['ready_s']:.1f} s, its batches at "
                      f"{o['inside']:.1f} frames/s", flush=True)
    print(f"\nEfficientNetV2B0 (weights=None) .keras and .onnx, batch {args.batch}, {args.rounds} rounds; "
          f"ratios: median (min-max)\nCPU: {cpu_description()}; now {load()}; "
          f"onnxruntime {onnxruntime.__version__}, {onnx.model.threads} intra-op threads")
    print("| workload | teacher's start | load average | teacher alone, frames/s | prepare / teacher alone | prepare / best | "
          "unfolded teacher alone, frames/s | prepare / unfolded | teacher inside prepare / alone | "
          "teacher ready, s | ONNX teacher alone, frames/s | ONNX alone / Keras folded alone | "
          "ONNX prepare / Keras prepare | ONNX prepare / ONNX alone |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (count, seconds, start), rs in rows.items():
        def spread(values, fmt="{:.2f}"):
            return f"{fmt.format(np.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"

        print(f"| {count} clips of {seconds:g} s, {rs[0]['frames']} frames | {start} | "
              f"{min(r['loadavg'] for r in rs):.1f}-{max(r['loadavg'] for r in rs):.1f} | "
              f"{spread([r['sustained'] for r in rs], '{:.0f}')} | "
              f"**{spread([r['prepare'] / r['sustained'] for r in rs])}** | "
              f"{spread([r['prepare'] / r['best'] for r in rs])} | "
              f"{spread([r['unfolded'] for r in rs], '{:.0f}')} | "
              f"{spread([r['prepare'] / r['unfolded'] for r in rs])} | "
              f"{spread([r['inside'] / r['sustained'] for r in rs])} | "
              f"{spread([r['ready_s'] for r in rs], '{:.1f}')} | "
              f"{spread([r['onnx'] for r in rs], '{:.0f}')} | "
              f"**{spread([r['onnx'] / r['sustained'] for r in rs])}** | "
              f"{spread([r['onnx_prepare'] / r['prepare'] for r in rs])} | "
              f"{spread([r['onnx_prepare'] / r['onnx'] for r in rs])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
