"""What the commands print: their own INFO lines and progress, not TensorFlow's C++ start-up noise.

TensorFlow's C++ side logs (CUDA stubs, CPU feature guard, cuInit, the TFLite converter) on
the process's stderr before and outside Python's logging; in TensorFlow 2.21 much of it comes
through absl before `TF_CPP_MIN_LOG_LEVEL` is read. So a command started from the shell
(`python -m audionet_tf.<command>`) drops those log lines from its stderr, unless the user set
`TF_CPP_MIN_LOG_LEVEL` themselves (their value wins) or passed `--verbose`. Everything else on
stderr (Python's messages, tracebacks, anything that is not a C++ log line) passes through.

Progress: a bar with an ETA on a terminal; plain log lines when stderr is not a terminal or
with `--quiet`.
"""
from __future__ import annotations

import atexit
import gc
import logging
import os
import re
import sys
import threading
import time
from typing import Callable, Sequence

# A C++ log line (absl/TSL format: severity, date, time, thread, file:line]), the two
# start-up lines that come without that prefix, the TFLite converter's line and LiteRT's
# note on its CPU delegate (printed by the interpreter each time a .tflite is loaded).
CPP_LOG_LINE = re.compile(rb"^(?:[IWE]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\]"
                          rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
                          rb"|To enable the following instructions: "
                          rb"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\."
                          rb"|fully_quantize: \d)")
QUIET_LEVEL = "3"

_state = {"quiet": False, "filter": None}


def tensorflow_quiet(argv: Sequence[str] | None = None) -> bool:
    """Whether TensorFlow's C++ logging is to be silenced: no `--verbose`, no user TF_CPP_MIN_LOG_LEVEL."""
    argv = sys.argv[1:] if argv is None else argv
    return "--verbose" not in argv and "TF_CPP_MIN_LOG_LEVEL" not in os.environ


def setup(verbose: bool = False, quiet: bool = False) -> None:
    """Every command's first call: TensorFlow's logging quiet (unless `verbose` or the user's own level),
    this project's INFO lines on, and progress bars or plain lines (`quiet`)."""
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_LEVEL)
        # The Python side of TensorFlow and absl (the converter's lines) keep only errors.
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
        logging.getLogger("absl").setLevel(logging.ERROR)
    _state["quiet"] = quiet
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def run_command(main: Callable[[], int]) -> int:
    """Run a command's `main` from `__main__`, its stderr filtered of C++ log lines unless asked otherwise."""
    if tensorflow_quiet():
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = QUIET_LEVEL
        _filter_stderr()
    try:
        return main()
    finally:
        # The process ends next, and its last garbage collection would walk every object TensorFlow and Keras
        # made: 1.3-1.7 s after a 20-epoch train, up to 5 s after 220. What the command wrote is closed by now
        # (atexit hooks and reference counts still run), so the objects left are frozen out of that walk.
        gc.freeze()


def _filter_stderr() -> None:
    """Point fd 2 at a pipe whose reader drops C++ log lines; Python's own stderr writes go straight out."""
    if _state["filter"] is not None:
        return
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    sys.stderr = open(original, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)

    def forward() -> None:
        with open(read_end, "rb", buffering=0) as pipe:
            pending = b""
            while True:
                chunk = pipe.read(65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                kept = b"".join(line + b"\n" for line in lines if not CPP_LOG_LINE.match(line))
                if kept:
                    os.write(original, kept)
            if pending and not CPP_LOG_LINE.match(pending):
                os.write(original, pending)

    thread = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    thread.start()
    _state["filter"] = thread

    def restore() -> None:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(original, 2)  # closes the pipe's last writer: the reader sees its end and stops
        thread.join(timeout=2.0)

    atexit.register(restore)


def keras_verbosity(quiet: bool, stream=None) -> int:
    """Keras `fit` verbosity: its progress bar (1) on a terminal, one line per epoch (2) otherwise."""
    stream = stream or sys.stdout
    return 2 if quiet or not (hasattr(stream, "isatty") and stream.isatty()) else 1


class Progress:
    """Progress of a long stage: a bar with an ETA on a terminal, else one log line per step."""

    def __init__(self, total: int, what: str, logger: logging.Logger | None = None, stream=None):
        self.total = max(0, int(total))
        self.what = what
        self.logger = logger or logging.getLogger("audionet_tf")
        self.stream = stream or sys.stderr
        self.started = time.time()
        self.bar = not _state["quiet"] and hasattr(self.stream, "isatty") and self.stream.isatty()

    def update(self, done: int, note: str = "") -> None:
        """Report `done` of `total` steps, with a note (for example a rate)."""
        elapsed = time.time() - self.started
        eta = elapsed / done * (self.total - done) if done else float("nan")
        eta_text = "?" if eta != eta else f"{int(eta // 60)}:{int(eta % 60):02d}"
        if self.bar:
            width = 24
            filled = int(width * done / self.total) if self.total else width
            self.stream.write(f"\r{self.what} [{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} "
                              f"{note}  ETA {eta_text}   ")
            self.stream.flush()
        else:
            self.logger.info("%s %d/%d %s", self.what, done, self.total, note)

    def close(self) -> None:
        """End the bar's line."""
        if self.bar:
            self.stream.write("\n")
            self.stream.flush()
