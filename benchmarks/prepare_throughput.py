"""Prepare throughput: the single-process path against Beam's DirectRunner with 2 workers, one run.

    python benchmarks/prepare_throughput.py [--clips 12]

Both prepare the offline demo's clips (made once, before timing) with the demo teacher, so
the figure is decoding + labelling + writing, not downloading. Prints clips/s and frames/s
and the ratio to the single-process path measured in the same run.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from audionet_tf.core import config as cfg  # noqa: E402
from audionet_tf.preparation import runner  # noqa: E402
from audionet_tf.preparation.demo_clips import make_demo_clips  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=12, help="demo clips (6 s each)")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        clips = make_demo_clips(os.path.join(tmp, "clips"), args.clips)
        entries = tuple({"url": c.url, "start": 0, "duration": c.duration, "label": c.label} for c in clips)
        frames = int(sum(c.duration for c in clips) * 25)
        timings = {}
        for name, runner, extra in (("single process", None, []),
                                    ("Beam DirectRunner, 2 workers", "DirectRunner",
                                     ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"])):
            config = cfg.PipelineConfig(prepare=cfg.PrepareConfig(
                out=os.path.join(tmp, name.split()[0]), cache_dir=os.path.join(tmp, "cache"), teacher="demo-colour",
                clips=entries, holdout="0.2", runner=runner))
            start = time.perf_counter()
            if runner:
                from audionet_tf.preparation.beam import run_beam

                run_beam(config, extra)
            else:
                runner.prepare(config)
            timings[name] = time.perf_counter() - start
    base = timings["single process"]
    print(f"{len(clips)} clips, {frames} frames (demo teacher), {os.cpu_count()} cores")
    print(f"{'path':30s} {'clips/s':>8s} {'frames/s':>9s} {'ratio':>6s}")
    for name, seconds in timings.items():
        print(f"{name:30s} {len(clips) / seconds:8.2f} {frames / seconds:9.0f} {base / seconds:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
