"""What a command's write path asks of the OS: run a module with its fsyncs and renames recorded, for tests
of durability (a SIGKILL never loses the page cache, so only the calls themselves show a missing fsync)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

# Runs `python -m MODULE ARGS` with every os.fsync recorded (by the path its descriptor names) and every
# rename recorded by an audit hook (`os.rename` is raised by os.rename and os.replace), in the order they
# happen; the list is written to RECORD as JSON when the command ends. The command's own code is unchanged.
RECORD_WRITES = """
import atexit, json, os, runpy, sys

record, module = sys.argv[1], sys.argv[2]
events = []
real_fsync = os.fsync

def fsync(fd):
    number = fd if isinstance(fd, int) else fd.fileno()
    events.append(["fsync", os.readlink(f"/proc/self/fd/{number}")])
    return real_fsync(fd)

def renames(event, args):
    if event == "os.rename":
        events.append(["rename", os.path.abspath(os.fsdecode(args[0])), os.path.abspath(os.fsdecode(args[1]))])

os.fsync = fsync
sys.addaudithook(renames)
atexit.register(lambda: json.dump(events, open(record, "w")))
sys.argv = [module, *sys.argv[3:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def run_recording(module: str, args: list[str], record: str, cwd: str, env: dict,
                  timeout: float = 300) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    """Run `python -m module args` with its fsyncs and renames recorded; (the finished process, the events)."""
    done = subprocess.run([sys.executable, "-c", RECORD_WRITES, record, module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    with open(record) as handle:
        return done, json.load(handle)


def renames_under(events: list[list[str]], directory: str) -> list[tuple[str, str]]:
    """(source, destination) of every rename whose destination is inside `directory`."""
    root = os.path.realpath(directory) + os.sep
    return [(e[1], e[2]) for e in events if e[0] == "rename" and os.path.realpath(e[2]).startswith(root)]


def unsynced_renames(events: list[list[str]], directory: str) -> list[str]:
    """Destinations inside `directory` of renames whose source file was not fsynced before the rename."""
    synced, missing = set(), []
    root = os.path.realpath(directory) + os.sep
    for event in events:
        if event[0] == "fsync":
            synced.add(os.path.realpath(event[1]))
        elif os.path.realpath(event[2]).startswith(root) and os.path.realpath(event[1]) not in synced:
            missing.append(os.path.relpath(event[2], directory))
    return missing


def renames_left_unsynced_in_their_directory(events: list[list[str]], directory: str) -> list[str]:
    """Destinations inside `directory` of renames whose directory was not fsynced after them: a power cut
    could lose the new name even though the file's data is on disk."""
    pending, root = {}, os.path.realpath(directory) + os.sep
    for event in events:
        if event[0] == "rename" and os.path.realpath(event[2]).startswith(root):
            pending[os.path.realpath(event[2])] = os.path.relpath(event[2], directory)
        elif event[0] == "fsync":
            synced = os.path.realpath(event[1])
            pending = {dst: name for dst, name in pending.items() if os.path.dirname(dst) != synced}
    return sorted(pending.values())
