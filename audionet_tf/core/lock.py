"""One owner per directory: an exclusive lock the kernel releases when its holder dies.

Used by `prepare` (one per dataset directory) and `train` (one per run directory). The lock
is `flock` on a file inside the directory, so a process killed by SIGKILL or a power loss
leaves no stale owner: the next command simply gets the lock. The file also holds who took
it (PID, host, command, time) so a refusal can name the owner; that text is information
only, never the lock itself (PIDs are reused, and two processes that both find a dead owner
in a PID file could both take over). The file is never deleted: deleting it while another
process waits on the same inode would let two processes hold "the" lock at once.

On Linux, `flock` works across hosts on NFSv4 (the kernel maps it to a byte-range lock).
Object stores (`gs://`, `s3://`) have no locks; callers that write there must not rely on
this module (see `commits` for how preparation commits there without one).
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from typing import Any

from audionet_tf.core.errors import AudioNetError

log = logging.getLogger(__name__)


class LockHeld(AudioNetError):
    """Another live process owns the directory."""


class DirectoryLock:
    """An exclusive, non-blocking lock on `directory` (a `flock` on `directory/name`).

    `what` completes the refusal message: "… is being {what} by process …".
    """

    def __init__(self, directory: str, name: str = ".lock", what: str = "used"):
        self.directory = directory
        self.path = os.path.join(directory, name)
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> "DirectoryLock":
        """Take the lock or raise `LockHeld` naming the owner; never waits."""
        if self._fd is not None:
            return self
        try:
            os.makedirs(self.directory, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise AudioNetError(f"cannot write {self.directory}: {exc.strerror or exc} (making its lock file "
                                f"{os.path.basename(self.path)}); nothing was written") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise AudioNetError(f"cannot lock {self.path}: {exc.strerror or exc}") from None
            raise LockHeld(f"{self.directory} is being {self.what} by {describe_owner(read_owner(self.path))}; "
                           f"wait for it to finish or stop it (the lock is released when that process ends)") from None
        previous = read_owner(self.path)
        if previous:
            log.info("%s: the previous owner (%s) is gone; taking over", self.directory, describe_owner(previous))
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "command": " ".join(sys.argv)[:500]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(owner) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock up (the file stays: see the module's docstring)."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass  # a full or vanished disk: the lock goes with the descriptor anyway
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def intact(self) -> bool:
        """Whether the lock file is still the one locked: False when the directory was removed or replaced."""
        if self._fd is None:
            return False
        try:
            return os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
        except OSError:
            return False

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def __enter__(self) -> "DirectoryLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def read_owner(path: str) -> dict[str, Any]:
    """What the lock file says about its last owner ({} when empty or unreadable)."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read().strip()
        return json.loads(text) if text else {}
    except (OSError, ValueError):
        return {}


def describe_owner(owner: dict[str, Any]) -> str:
    """'process 123 on host h (since …: command)' or 'another process'."""
    if not owner.get("pid"):
        return "another process"
    text = f"process {owner['pid']}"
    if owner.get("host"):
        text += f" on {owner['host']}"
    if owner.get("started"):
        text += f" since {owner['started']}"
    if owner.get("command"):
        text += f" ({owner['command']})"
    return text
