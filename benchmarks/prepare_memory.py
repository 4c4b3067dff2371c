"""Peak memory of `prepare` against the length of one local clip, in chunks and (for comparison) whole.

    python benchmarks/prepare_memory.py [--seconds 60 150 300] [--chunks 256 100000]

Each run prepares one local clip (lavfi, 64×48 at 25 frames/s, frames brought to 224×224 for a
small `.keras` teacher, so that frames dominate) in a fresh process, and reports that process's
high-water mark (`ru_maxrss`, which is VmHWM on Linux). `--chunks 100000` puts a whole clip of up to
an hour in one chunk: what `prepare` held before it decoded in chunks.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SCRIPT = """
import resource, sys
from audionet_tf.core import config as cfg
from audionet_tf.preparation import runner
root, seconds, chunk = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
clip = {"url": f"{root}/clip{seconds:g}.mp4", "start": 0, "duration": seconds, "label": "x"}
summary = runner.prepare(cfg.PipelineConfig(prepare=cfg.PrepareConfig(
    out=f"{root}/data{seconds:g}-{chunk}", cache_dir=f"{root}/cache", teacher=f"{root}/teacher.keras",
    clips=(clip,), holdout="0", chunk_frames=chunk)))
print(summary.examples["train"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[60, 150, 300])
    parser.add_argument("--chunks", type=int, nargs="+", default=[256, 100000])
    args = parser.parse_args(argv)
    import keras

    from audionet_tf.preparation.media import ffmpeg_exe

    with tempfile.TemporaryDirectory() as root:
        inputs = keras.Input((224, 224, 3))
        x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
        keras.Model(inputs, keras.layers.Dense(10)(x)).save(os.path.join(root, "teacher.keras"))
        for seconds in args.seconds:
            subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                            f"testsrc=size=64x48:rate=25:duration={seconds:g}", "-f", "lavfi", "-i",
                            f"sine=frequency=440:sample_rate=16000:duration={seconds:g}", "-c:v", "libx264",
                            "-pix_fmt", "yuv420p", "-c:a", "aac", os.path.join(root, f"clip{seconds:g}.mp4")],
                           check=True)
        print(f"{'chunk_frames':>12s} " + " ".join(f"{s:>8g} s" for s in args.seconds) + "   (peak MB)")
        for chunk in args.chunks:
            peaks = []
            for seconds in args.seconds:
                out = subprocess.run([sys.executable, "-c", SCRIPT, root, str(seconds), str(chunk)],
                                     capture_output=True, text=True, check=True).stdout.split()
                peaks.append(int(out[-1]) / 1024)
            ratio = peaks[-1] / peaks[0]
            print(f"{chunk:12d} " + " ".join(f"{p:10.0f}" for p in peaks) +
                  f"   last/first {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
