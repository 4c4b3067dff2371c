"""PyTorch weights files (`.pth`, `.pt`) read into NumPy arrays without PyTorch, and without running their code.

`torch.save` writes a state dict in one of two layouts, and this module reads both:

- the legacy serialisation (torch before 1.6, and `_use_new_zipfile_serialization=False`), one stream of
  five pickles and raw bytes: a magic number, a protocol version (1001), a description of the machine
  (`little_endian`, type sizes), the object itself, in which every tensor is a call
  `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` whose storage is a persistent id
  `("storage", torch.FloatStorage, key, location, numel, view)`, then the list of storage keys, then
  for each key in that order an 8-byte little-endian element count and the storage's raw little-endian
  bytes;
- the zip layout (torch 1.6 and later): `<name>/data.pkl` holds the same pickle, with persistent ids
  `("storage", torch.FloatStorage, key, location, numel)`, and `<name>/data/<key>` each storage's bytes.

A pickle can call any importable function (`os.system` among them) while it is read. Here the
unpickler resolves only the names a state dict needs (`collections.OrderedDict`, the tensor and
parameter rebuilders of `torch._utils`, and the storage types, each mapped to a stand-in of this
module); any other name, a file cut short, a storage that does not hold what a tensor asks of it, or a
file in neither layout is one `WeightsFileError` naming the file.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, BinaryIO

import numpy as np

from audionet_tf.core.errors import AudioNetError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# Storage types by the name a pickle gives them, and the little-endian dtype of their elements.
# bfloat16 has no NumPy dtype: its 16 bits are the top half of a float32's and are widened to that.
STORAGE_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "BFloat16Storage": "<u2",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?",
}


class WeightsFileError(AudioNetError):
    """A weights file that cannot be read safely: wrong layout, cut short, or asking to run code."""


class _StorageType:
    """Stands for `torch.<name>Storage` in a pickle: only its element type is kept."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name])


class _Storage:
    """One storage: its key, element type and element count; its elements once they are read."""

    def __init__(self, storage_type: _StorageType, key: str, numel: int):
        self.type, self.key, self.numel = storage_type, key, numel
        self.data: np.ndarray | None = None


class _Tensor:
    """A tensor waiting for its storage's bytes (they follow the pickle in the legacy layout)."""

    def __init__(self, storage: Any, offset: Any, size: Any, stride: Any):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)


def _rebuild_tensor(storage, offset, size, stride, *_ignored):  # requires_grad, hooks, metadata: not weights
    return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(data, *_ignored):  # requires_grad, hooks
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
    """Resolves only the names of `_ALLOWED` and the storage types; storages come from `storages`."""

    def __init__(self, stream: BinaryIO, path: str, storages: dict[str, _Storage], read_storage=None):
        super().__init__(stream)
        self.path, self.storages, self.read_storage = path, storages, read_storage

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise WeightsFileError(f"weights file {self.path}: its pickle asks for {module}.{name}, which a "
                               f"state dict of tensors never needs; refusing to run it")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and isinstance(pid[4], int) and pid[4] >= 0):
            raise WeightsFileError(f"weights file {self.path}: a persistent id {pid!r:.80} that is not a storage")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        storage = self.storages.get(key)
        if storage is None:
            storage = self.storages[key] = _Storage(storage_type, key, numel)
            if self.read_storage is not None:
                self.read_storage(storage)
        if storage.type.dtype != storage_type.dtype or storage.numel != numel:
            raise WeightsFileError(f"weights file {self.path}: storage {key} is given two types or sizes")
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return storage
        # An old file's view into a larger storage: (its own key, offset, size), in elements.
        if not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[1], int)
                and isinstance(view[2], int) and 0 <= view[1] and view[1] + view[2] <= numel):
            raise WeightsFileError(f"weights file {self.path}: storage view {view!r:.80} outside its storage")
        return ("view", storage, view[1], view[2])


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch weights file by name, as NumPy arrays (legacy or zip layout; no code run)."""
    if not os.path.isfile(path):
        raise WeightsFileError(f"weights file {path} does not exist")
    try:
        if zipfile.is_zipfile(path):
            obj = _read_zip(path)
        else:
            with open(path, "rb") as handle:
                obj = _read_legacy(handle, path)
        return _state_dict(obj, path)
    except WeightsFileError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            struct.error, zipfile.BadZipFile, OverflowError, MemoryError, RecursionError) as exc:
        raise WeightsFileError(f"weights file {path}: not a PyTorch weights file, or cut short "
                               f"({type(exc).__name__}: {exc})") from None


def _read_legacy(handle: BinaryIO, path: str) -> Any:
    size = os.fstat(handle.fileno()).st_size

    def header() -> Any:  # the header pickles hold plain values
        return _Unpickler(handle, path, {}).load()

    if header() != LEGACY_MAGIC:
        raise WeightsFileError(f"weights file {path}: neither a zip archive nor PyTorch's legacy serialisation "
                               f"(no magic number)")
    if header() != LEGACY_PROTOCOL:
        raise WeightsFileError(f"weights file {path}: a legacy protocol version other than {LEGACY_PROTOCOL}")
    info = header()
    if not isinstance(info, dict) or info.get("little_endian") is not True:
        raise WeightsFileError(f"weights file {path}: written on a big-endian machine, which is not supported")
    storages: dict[str, _Storage] = {}
    obj = _Unpickler(handle, path, storages).load()
    keys = _Unpickler(handle, path, {}).load()
    if not isinstance(keys, list) or set(keys) != set(storages) or len(keys) != len(storages):
        raise WeightsFileError(f"weights file {path}: its list of storages does not match the tensors'")
    for key in keys:
        storage = storages[key]
        count = handle.read(8)
        if len(count) != 8:
            raise WeightsFileError(f"weights file {path}: cut short before storage {key}")
        numel, = struct.unpack("<q", count)
        if numel != storage.numel:
            raise WeightsFileError(f"weights file {path}: storage {key} holds {numel} elements, its tensors "
                                   f"say {storage.numel}")
        nbytes = numel * storage.type.dtype.itemsize
        if handle.tell() + nbytes > size:  # checked before reading: a forged count cannot claim memory
            raise WeightsFileError(f"weights file {path}: cut short in storage {key} ({nbytes} bytes "
                                   f"announced, {size - handle.tell()} left)")
        storage.data = np.frombuffer(handle.read(nbytes), storage.type.dtype)
    return obj


def _read_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [name for name in names if name.endswith("/data.pkl") and name.count("/") == 1]
        if len(pickles) != 1:
            raise WeightsFileError(f"weights file {path}: a zip archive without one <name>/data.pkl "
                                   f"(not written by torch.save)")
        prefix = pickles[0][: -len("data.pkl")]
        if prefix + "byteorder" in names and archive.read(prefix + "byteorder").strip() != b"little":
            raise WeightsFileError(f"weights file {path}: written big-endian, which is not supported")

        def read_storage(storage: _Storage) -> None:
            name = f"{prefix}data/{storage.key}"
            try:
                entry = archive.getinfo(name)
            except KeyError:
                raise WeightsFileError(f"weights file {path}: storage {name} is missing") from None
            nbytes = storage.numel * storage.type.dtype.itemsize
            if entry.file_size != nbytes:
                raise WeightsFileError(f"weights file {path}: storage {name} has {entry.file_size} bytes, its "
                                       f"tensors say {nbytes}")
            storage.data = np.frombuffer(archive.read(name), storage.type.dtype)

        return _Unpickler(io.BytesIO(archive.read(pickles[0])), path, {}, read_storage).load()


def _state_dict(obj: Any, path: str) -> dict[str, np.ndarray]:
    # A training checkpoint often nests the weights one level down.
    if isinstance(obj, dict) and not any(isinstance(v, _Tensor) for v in obj.values()):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise WeightsFileError(f"weights file {path}: does not hold a state dict (a mapping of names to tensors)")
    out = {}
    for name, value in obj.items():
        if not isinstance(name, str) or not isinstance(value, _Tensor):
            raise WeightsFileError(f"weights file {path}: entry {name!r:.60} is not a named tensor")
        out[name] = _materialise(value, path, name)
    return out


def _materialise(tensor: _Tensor, path: str, name: str) -> np.ndarray:
    storage, base = tensor.storage, 0
    if isinstance(storage, tuple) and len(storage) == 4 and storage[0] == "view":
        storage, base, view_numel = storage[1], storage[2], storage[3]
    elif isinstance(storage, _Storage):
        view_numel = storage.numel
    else:
        raise WeightsFileError(f"weights file {path}: tensor {name} has no storage")
    offset, size, stride = tensor.offset, tensor.size, tensor.stride
    if not (isinstance(offset, int) and offset >= 0 and len(size) == len(stride)
            and all(isinstance(d, int) and d >= 0 for d in size + stride)):
        raise WeightsFileError(f"weights file {path}: tensor {name} has a malformed shape {size} / stride {stride}")
    if storage.data is None or len(storage.data) != storage.numel:
        raise WeightsFileError(f"weights file {path}: storage of tensor {name} was never read")
    data = storage.data[base: base + view_numel]
    if storage.type.name == "BFloat16Storage":
        data = (data.astype(np.uint32) << 16).view(np.float32)
    if 0 in size:
        return np.zeros(size, data.dtype)
    last = offset + sum((d - 1) * s for d, s in zip(size, stride))
    if last >= len(data):
        raise WeightsFileError(f"weights file {path}: tensor {name} of shape {size} reaches past its storage "
                               f"({last + 1} > {len(data)} elements)")
    strides = tuple(s * data.dtype.itemsize for s in stride)
    view = np.lib.stride_tricks.as_strided(data[offset:], shape=size, strides=strides, writeable=False)
    return np.array(view, dtype=data.dtype.newbyteorder("="))
