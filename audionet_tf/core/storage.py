"""One file-system layer for dataset directories: local paths, and `gs://`, `s3://`, `ram://` URLs.

Local paths use the operating system (temporary name, fsync, rename, fsync of the directory, so
that the new name too survives a power cut). Any other path goes
through TensorFlow's `tf.io.gfile` (GCS built in, `ram://` in memory, others through
TensorFlow's file-system plugins), or through Apache Beam's `FileSystems` once a Beam run
has called `use_beam_filesystems()` (Beam's GCS and S3 clients, configured by its pipeline
options). A URL is never turned into a local directory (no `gs:` folder on this machine).

Object stores have no rename that is atomic, but an object appears whole or not at all:
there, files are written directly under their final, unique name.
"""
from __future__ import annotations

import io
import os
import re
import tempfile
import uuid
from typing import IO, Any

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_beam_options: Any = None  # set by use_beam_filesystems()


def is_remote(path: str) -> bool:
    """Whether `path` is a URL (`gs://…`, `s3://…`, `ram://…`) rather than a local path."""
    return bool(_URL.match(str(path)))


def join(directory: str, *names: str) -> str:
    """`directory/name` for local paths and URLs alike."""
    if is_remote(directory):
        return "/".join([directory.rstrip("/"), *names])
    return os.path.join(directory, *names)


def use_beam_filesystems(options: Any = None) -> None:
    """Route URLs through Apache Beam's `FileSystems` (with these pipeline options) in this process."""
    global _beam_options
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    _beam_options = options if options is not None else PipelineOptions([])
    FileSystems.set_options(_beam_options)


def use_tf_filesystems() -> None:
    """Route URLs through `tf.io.gfile` again (the default)."""
    global _beam_options
    _beam_options = None


def _beam_fs():
    if _beam_options is None:
        return None
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def exists(path: str) -> bool:
    """Whether a file or directory is there."""
    if not is_remote(path):
        return os.path.exists(path)
    fs = _beam_fs()
    return fs.exists(path) if fs else _gfile().exists(path)


def isfile(path: str) -> bool:
    """Whether a file (not a directory) is there."""
    if not is_remote(path):
        return os.path.isfile(path)
    fs = _beam_fs()
    if fs:
        return fs.exists(path)
    gfile = _gfile()
    return gfile.exists(path) and not gfile.isdir(path)


def listdir(directory: str) -> list[str]:
    """Names of the entries directly inside `directory`, sorted ([] when it is absent)."""
    if not is_remote(directory):
        try:
            return sorted(os.listdir(directory))
        except FileNotFoundError:
            return []
    gfile = _gfile()
    if not gfile.isdir(directory):
        return []
    return sorted(n.rstrip("/") for n in gfile.listdir(directory))


def abspath(path: str) -> str:
    """An absolute local path; a URL as it is."""
    return path if is_remote(path) else os.path.abspath(path)


def basename(path: str) -> str:
    """The last component of a local path or a URL (a trailing slash ignored)."""
    return os.path.basename(str(path).rstrip("/")) if is_remote(path) else os.path.basename(os.path.normpath(path))


def copy_tree(local_dir: str, url: str, last: str | None = None) -> None:
    """Copy a local directory's files under `url`, each written once under its final name; `last`
    (a file name at the top) is written after every other file, so its presence says the copy is whole."""
    deferred = None
    for root, _, files in os.walk(local_dir):
        relative = os.path.relpath(root, local_dir)
        parts = [] if relative == "." else relative.split(os.sep)
        makedirs(join(url, *parts))
        for name in sorted(files):
            target = join(url, *parts, name)
            if last is not None and not parts and name == last:
                deferred = (os.path.join(root, name), target)
                continue
            with open(os.path.join(root, name), "rb") as handle:
                write_bytes(target, handle.read())
    if deferred is not None:
        with open(deferred[0], "rb") as handle:
            write_bytes(deferred[1], handle.read())


def remove_tree(path: str) -> None:
    """Delete a directory and everything under it; one already gone is fine."""
    if not is_remote(path):
        import shutil

        shutil.rmtree(path, ignore_errors=True)
        return
    gfile = _gfile()
    if not gfile.exists(path):
        return
    try:
        gfile.rmtree(path)
    except Exception:  # noqa: BLE001 - ram:// lists no folder it was not asked to make: delete file by file
        for name in gfile.glob(path.rstrip("/") + "/**"):
            if not gfile.isdir(name):
                gfile.remove(name)


def makedirs(directory: str) -> None:
    """Create a local directory; a no-op for URLs (object stores have no directories to make)."""
    if not is_remote(directory):
        os.makedirs(directory, exist_ok=True)
    elif directory.startswith("ram://"):
        _gfile().makedirs(directory)


def list_sizes(directory: str) -> dict[str, int]:
    """Names and sizes of the files directly inside `directory` (one listing; {} when it is absent)."""
    if not is_remote(directory):
        try:
            with os.scandir(directory) as listing:
                entries = list(listing)
        except FileNotFoundError:
            return {}
        sizes = {}
        for entry in entries:
            try:
                if entry.is_file():
                    sizes[entry.name] = entry.stat().st_size
            except FileNotFoundError:
                continue  # renamed or removed since the listing (another writer's temporary file): not there
        return sizes
    prefix = directory.rstrip("/") + "/"
    fs = _beam_fs()
    if fs:
        result = fs.match([prefix + "*"])[0]
        return {m.path[len(prefix):]: m.size_in_bytes for m in result.metadata_list
                if "/" not in m.path[len(prefix):]}
    gfile = _gfile()
    if not gfile.isdir(directory):
        return {}
    names = [n for n in gfile.listdir(directory) if not n.endswith("/")]
    return {n: gfile.stat(prefix + n).length for n in names}


def read_bytes(path: str) -> bytes:
    """A whole file's bytes."""
    if not is_remote(path):
        with open(path, "rb") as handle:
            return handle.read()
    fs = _beam_fs()
    if fs:
        with fs.open(path) as handle:
            return handle.read()
    with _gfile().GFile(path, "rb") as handle:
        return handle.read()


def read_text(path: str) -> str:
    """A whole text file (UTF-8)."""
    return read_bytes(path).decode("utf-8")


def fsync_path(path: str) -> None:
    """Make a local file's data, or the names a local directory holds, durable (a rename is on disk once its
    directory is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clear_for_rewrite(path: str) -> None:
    """Before a file is written again under the same name by a writer other than this module's (Keras):
    TensorFlow's `ram://` appends to an existing file opened with "wb" instead of replacing it.
    Elsewhere nothing to do (an object is replaced whole; a local file is truncated)."""
    if str(path).startswith("ram://") and _gfile().exists(path):
        _gfile().remove(path)


def write_bytes(path: str, data: bytes, fsync: bool = True) -> None:
    """Write a whole file so that a reader sees all of it or nothing (temp + fsync + rename locally).

    `fsync=False` for files rewritten often whose loss in a power cut is harmless: the rename
    alone keeps them whole."""
    if is_remote(path):
        with open_write(path) as handle:
            handle.write(data)
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the result should read like any other file
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
        if fsync:
            fsync_path(directory)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: str, text: str) -> None:
    """`write_bytes` for UTF-8 text."""
    write_bytes(path, text.encode("utf-8"))


class _LocalShardFile(io.RawIOBase):
    """A local file written under a temporary name and renamed to `path` by `close()` after an fsync."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.tmp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
        self._handle = open(self.tmp, "wb")

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._handle.write(data)
        return len(data)

    def close(self) -> None:
        if self.closed:
            return
        self._handle.flush()  # a full disk raises here, and the file stays open for discard()
        os.fsync(self._handle.fileno())
        self._handle.close()
        os.replace(self.tmp, self.path)
        fsync_path(os.path.dirname(os.path.abspath(self.path)))
        super().close()

    def discard(self) -> None:
        """Drop the unfinished file (also when its buffered bytes cannot be flushed: a full disk)."""
        try:
            self._handle.close()
        except OSError:
            pass
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)
        super().close()


def open_write(path: str) -> IO[bytes]:
    """A binary file to write; it appears under `path` only when closed (locally: temp + rename)."""
    if not is_remote(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return _LocalShardFile(path)
    fs = _beam_fs()
    if fs:
        return fs.create(path, mime_type="application/octet-stream")
    clear_for_rewrite(path)
    return _gfile().GFile(path, "wb")


def discard(handle: IO[bytes], path: str) -> None:
    """Abandon a file opened with `open_write` (nothing is left under its final name locally)."""
    if isinstance(handle, _LocalShardFile):
        handle.discard()
        return
    try:
        handle.close()
    finally:
        remove(path)


def remove(path: str) -> None:
    """Delete a file; a file already gone is fine."""
    if not is_remote(path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    fs = _beam_fs()
    try:
        if fs:
            if fs.exists(path):
                fs.delete([path])
        elif _gfile().exists(path):
            _gfile().remove(path)
    except Exception as exc:  # noqa: BLE001 - each client raises its own "not found"
        if exists(path):
            raise OSError(f"cannot delete {path}: {exc}") from None


def atomic_write_text(path: str, text: str, fsync: bool = True) -> None:
    """Write `text` to a local `path` through a temporary file in the same directory and a rename."""
    write_bytes(path, text.encode("utf-8"), fsync=fsync)
