"""`audionet COMMAND [flags]`: every command of the package under one installed name.

    audionet demo                          # the offline demo: train --pipeline demo
    audionet prepare --pipeline seed       # the slides' ten clips → a dataset
    audionet train --pipeline seed         # prepare what is missing, train, export, report
    audionet predict recording.wav

`audionet X ...` is `python -m audionet_tf.X ...` (and `python -m audionet_tf X ...`): the same flags,
help, messages, quiet start-up and exit statuses. `audionet X --help` lists a command's flags.
"""
from __future__ import annotations

import importlib
import sys
from typing import Sequence

from audionet_tf.core.version import __version__

COMMANDS = {
    "demo": "the offline demo: makes clips, labels them, trains, exports, reports (train --pipeline demo)",
    "prepare": "clip list → download → decode → teacher → sharded TFRecords",
    "train": "train the student on a dataset (prepares a pipeline's missing dataset first)",
    "finetune": "a classifier of your own labelled sounds on a trained student, exported like one",
    "export": "SavedModel and TFLite from a run or a .keras file",
    "predict": "what the student hears in recordings: top classes per window and per second",
    "embed": "sound embeddings per window, one .npz per input",
    "evaluate": "agreement with the teacher on held-out clips; the real experiment; transfer to sound classification",
    "report": "a run's plots and tables as one HTML page",
}


def usage() -> str:
    """The command list, for `audionet --help`."""
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {what}" for name, what in COMMANDS.items()]
    return ("usage: audionet COMMAND [flags]   (audionet COMMAND --help for its flags)\n\ncommands:\n"
            + "\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None, prog: str = "audionet") -> int:
    """Dispatch `audionet COMMAND ...` to the command's own `main`; `prog`: how the user started it, so that
    `audionet prepare --help` names `audionet prepare` (and `python -m audionet_tf prepare --help` that)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        (sys.stdout if argv else sys.stderr).write(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"audionet_tf {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"audionet: unknown command {name!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    typed = f"{prog} {name}"
    if name == "demo":
        name, rest = "train", ["--pipeline", "demo", *rest]
    return importlib.import_module(f"audionet_tf.commands.{name}").main(rest, prog=typed)


def run(prog: str = "audionet") -> int:
    """The installed `audionet` script (and `python -m audionet_tf`, with its own `prog`): the same quiet
    start-up as `python -m audionet_tf.<command>`."""
    from audionet_tf.core.console import run_command

    return run_command(lambda: main(prog=prog))
