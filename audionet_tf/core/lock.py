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
from typing import Any, Callable

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
        _lock_or_refuse(fd, self.path, lambda: (
            f"{self.directory} is being {self.what} by {describe_owner(read_owner(self.path))}; "
            f"wait for it to finish or stop it (the lock is released when that process ends)"))
        previous = read_owner(self.path)
        if previous:
            log.info("%s: the previous owner (%s) is gone; taking over", self.directory, describe_owner(previous))
        _write_owner(fd, _owner(self.what))
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock up (the file stays: see the module's docstring)."""
        if self._fd is not None:
            _unlock(self._fd)
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


# Readers of a directory against a writer that withdraws files (prepare --overwrite on a dataset that
# a training reads). Each reader holds a shared `flock` on READERS_LOCK for as long as it reads,
# and an exclusive one on its own file in READERS_DIR that says who it is; a withdrawing writer
# needs READERS_LOCK exclusively, so it waits for no one: it either gets it (no reader) or names
# the readers and stops. Like DirectoryLock, the kernel drops both locks when a process dies.
READERS_LOCK = ".readers.lock"
READERS_DIR = ".readers"


class ReadLease:
    """A reader's hold on `directory`: while it lasts, a `WithdrawGuard` on the directory is refused, naming it."""

    def __init__(self, directory: str, what: str = "read"):
        self.directory = directory
        self.what = what
        self.path: str | None = None
        self._own: int | None = None
        self._shared: int | None = None

    def acquire(self) -> "ReadLease":
        """Register as a reader, or raise `LockHeld` naming the process withdrawing files from the directory."""
        if self._shared is not None:
            return self
        readers = os.path.join(self.directory, READERS_DIR)
        os.makedirs(readers, exist_ok=True)
        # Who this reader is goes first: a writer that finds the shared lock held can always name it.
        self.path = os.path.join(readers, f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}.json")
        self._own = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        fcntl.flock(self._own, fcntl.LOCK_EX)
        os.pwrite(self._own, (json.dumps(_owner(self.what)) + "\n").encode(), 0)
        gate = os.path.join(self.directory, READERS_LOCK)
        try:
            self._shared = os.open(gate, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._shared, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            self.release()
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise LockHeld(f"{self.directory} is being rewritten by {describe_owner(read_owner(gate))}; "
                           f"it would withdraw files this reads: wait for it to finish") from None
        return self

    def release(self) -> None:
        """Stop reading: the registration file goes, and the locks with the descriptors."""
        if self.path is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            self.path = None
        for fd in (self._own, self._shared):
            if fd is not None:
                os.close(fd)
        self._own = self._shared = None

    def __enter__(self) -> "ReadLease":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


class WithdrawGuard:
    """Held by a writer while it withdraws files of `directory`: refused while any `ReadLease` on it lasts."""

    def __init__(self, directory: str, what: str = "rewritten"):
        self.directory = directory
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> "WithdrawGuard":
        """Take the guard, or raise `LockHeld` naming every live reader; never waits."""
        if self._fd is not None:
            return self
        gate = os.path.join(self.directory, READERS_LOCK)
        fd = os.open(gate, os.O_RDWR | os.O_CREAT, 0o644)
        _lock_or_refuse(fd, gate, lambda: "{} is being read by {}".format(
            self.directory, "; ".join(describe_owner(o) for o in live_readers(self.directory)) or "another process"))
        _write_owner(fd, _owner(self.what))
        self._fd = fd
        return self

    def release(self) -> None:
        """Let readers in again."""
        if self._fd is not None:
            _unlock(self._fd)
            self._fd = None

    def __enter__(self) -> "WithdrawGuard":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def live_readers(directory: str) -> list[dict[str, Any]]:
    """Who holds a `ReadLease` on `directory` now; the files of readers that died are removed."""
    readers = os.path.join(directory, READERS_DIR)
    try:
        names = sorted(os.listdir(readers))
    except OSError:
        return []
    live = []
    for name in names:
        path = os.path.join(readers, name)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # gone meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            live.append(read_owner(path))
        else:
            try:
                os.unlink(path)  # its reader died without releasing it
            except OSError:
                pass
        finally:
            os.close(fd)
    return live


def _owner(what: str) -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(sys.argv)[:500], "doing": what}


def _lock_or_refuse(fd: int, path: str, refusal: Callable[[], str]) -> None:
    """Take an exclusive `flock` on `fd` without waiting; when another process holds it, close `fd` and raise
    `LockHeld` with `refusal()` (called only then: it reads who holds it)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise AudioNetError(f"cannot lock {path}: {exc.strerror or exc}") from None
        raise LockHeld(refusal()) from None


def _write_owner(fd: int, owner: dict[str, Any]) -> None:
    """Name the holder in its lock file (read by whoever is refused)."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(owner) + "\n").encode(), 0)


def _unlock(fd: int) -> None:
    """Empty the lock file, then give the lock up and close it."""
    try:
        os.ftruncate(fd, 0)
    except OSError:
        pass  # a full or vanished disk: the lock goes with the descriptor anyway
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
