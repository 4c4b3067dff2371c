"""A run's report: PNG plots and one `index.html` in `runs/NAME/report/`.

    python -m audionet_tf.report runs/NAME [--data DIR] [--clips 10]

Training curves (loss, KL, top-1/top-5 agreement, training and held-out), the 16 learned
filters and their frequency responses, per-clip timelines (the teacher's top class against
the student's over time, over the clip's spectrogram, the held-out part shaded; held-out
clips first), and the tables that answer the slides' question: agreement overall and per
clip on held-out data next to the prior baseline, the teacher's and the student's top
classes there, and the K-fold table when `evaluate distill --folds` has written one. The
page names the run and dataset, never a path on the machine that made it. matplotlib with
no display.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from audionet_tf.core import console
from audionet_tf.core.errors import AudioNetError
from audionet_tf.evaluation.report import make_report


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Command-line entry point; `prog`: the command as the user typed it, for --help."""
    p = argparse.ArgumentParser(prog=prog or "python -m audionet_tf.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--data", help="dataset directory (default: the run's)")
    p.add_argument("--clips", type=int, default=10, help="clips to draw timelines for (held-out ones first)")
    p.add_argument("--verbose", action="store_true", help="show TensorFlow's own C++ log lines")
    args = p.parse_args(argv)
    console.setup(args.verbose)
    try:
        print(make_report(args.run, args.data, args.clips))
    except AudioNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
