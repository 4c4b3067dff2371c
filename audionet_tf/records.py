"""The dataset format: sharded TFRecords of (audio window, teacher logits) and their description.

One `tf.train.Example` per frame:

| key       | type         | content                                                     |
|-----------|--------------|-------------------------------------------------------------|
| `audio`   | bytes        | the window, 16 kHz mono, int16 PCM or float32, little-endian |
| `logits`  | bytes        | the teacher's logits, float16 or float32, little-endian     |
| `clip_id` | bytes        | the clip the frame comes from                               |
| `time`    | float        | the frame's time in seconds from the clip's start           |

Every dataset directory holds `dataset.json` (the header: schema version, sample rate,
window, frame period, class count, teacher, class names file), the class names file, and
commit records naming the shards and the clips they hold (see `commits`). A reader sees the
committed shards only; `read_description` assembles header and commits into a `Description`
(clips, shards with example counts, sizes and SHA-256 checksums).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import struct
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from audionet_tf import storage
from audionet_tf.errors import DatasetError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: header + commit records (1: one dataset.json written at the end)
DESCRIPTION_FILE = "dataset.json"
CLASS_NAMES_FILE = "labels.txt"
SHARD_SUFFIX = ".tfrecord"
SPLITS = ("train", "validation")

AUDIO_KEY = "audio"
LOGITS_KEY = "logits"
CLIP_ID_KEY = "clip_id"
TIME_KEY = "time"

AUDIO_DTYPES = {"int16": "<i2", "float32": "<f4"}
LOGITS_DTYPES = {"float16": "<f2", "float32": "<f4"}
INT16_SCALE = 32767.0


@dataclass(frozen=True)
class DatasetSpec:
    """What every example of one dataset shares."""

    sample_rate: int = 16000
    window_samples: int = 640
    frame_period_ms: float = 40.0
    num_classes: int = 1000
    teacher: str = "unknown"
    class_names_file: str = CLASS_NAMES_FILE
    audio_format: str = "int16"
    logits_format: str = "float16"

    def __post_init__(self) -> None:
        if self.audio_format not in AUDIO_DTYPES:
            raise ValueError(f"audio_format must be one of {sorted(AUDIO_DTYPES)}, got {self.audio_format!r}")
        if self.logits_format not in LOGITS_DTYPES:
            raise ValueError(f"logits_format must be one of {sorted(LOGITS_DTYPES)}, got {self.logits_format!r}")
        if self.window_samples < 1 or self.num_classes < 1 or self.sample_rate < 1:
            raise ValueError("sample_rate, window_samples and num_classes must be positive")


@dataclass
class ShardInfo:
    """One finished shard: its file name (relative to the dataset directory), split, count, checksum."""

    file: str
    split: str
    examples: int
    sha256: str
    bytes: int


@dataclass
class Description:
    """A dataset as readers see it: its spec, committed shards and clips, and whether it is finished."""

    spec: DatasetSpec
    shards: list[ShardInfo] = field(default_factory=list)
    clips: Sequence[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    finished: dict[str, Any] | None = None  # what the last finished run recorded; None while preparing

    def shards_for(self, split: str) -> list[ShardInfo]:
        """The shards of one split."""
        return [s for s in self.shards if s.split == split]

    def examples(self, split: str | None = None) -> int:
        """Example count of one split, or of all."""
        return sum(s.examples for s in self.shards if split is None or s.split == split)

    def to_json(self) -> dict[str, Any]:
        """The whole description as one JSON document (for tools; not a file of the dataset)."""
        return {
            "schema_version": self.schema_version,
            **dataclasses.asdict(self.spec),
            "window_ms": 1000.0 * self.spec.window_samples / self.spec.sample_rate,
            "examples": {split: self.examples(split) for split in SPLITS},
            "shards": [dataclasses.asdict(s) for s in self.shards],
            "clips": list(self.clips),
            "finished": self.finished,
            **({"extra": self.extra} if self.extra else {}),
        }


class LazyClips(Sequence):
    """Clip records kept as JSON lines and decoded when read (a large dataset opens without decoding them)."""

    def __init__(self, items: Sequence[Any]):
        self._items = items

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        item = self._items[index]
        return json.loads(item) if isinstance(item, (bytes, str)) else item


def spec_from_header(doc: Any, where: str) -> DatasetSpec:
    """The DatasetSpec of a `dataset.json` header, naming `where` in any error."""
    if not isinstance(doc, dict):
        raise DatasetError(f"{where}: the dataset header is not a JSON object")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DatasetError(f"{where}: schema version {version!r} is not supported (this package reads "
                           f"version {SCHEMA_VERSION}); prepare the dataset again")
    names = {f.name for f in dataclasses.fields(DatasetSpec)}
    try:
        return DatasetSpec(**{k: doc[k] for k in names if k in doc})
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{where}: malformed dataset header: {exc}") from None


def atomic_write_text(path: str, text: str, fsync: bool = True) -> None:
    """Write `text` to a local `path` through a temporary file in the same directory and a rename."""
    storage.write_bytes(path, text.encode("utf-8"), fsync=fsync)


def encode_audio(window: np.ndarray, audio_format: str) -> bytes:
    """Pack a float window in [-1, 1] as int16 PCM or float32 bytes."""
    window = np.asarray(window, dtype=np.float32).reshape(-1)
    if audio_format == "int16":
        return np.round(np.clip(window, -1.0, 1.0) * INT16_SCALE).astype("<i2").tobytes()
    return window.astype("<f4").tobytes()


def make_example(window: np.ndarray, logits: np.ndarray, clip_id: str, time: float,
                 spec: DatasetSpec) -> bytes:
    """One serialized `tf.train.Example` for a (window, logits) pair."""
    import tensorflow as tf

    window = np.asarray(window)
    logits = np.asarray(logits).reshape(-1)
    if window.size != spec.window_samples:
        raise ValueError(f"window has {window.size} samples, the dataset's windows have {spec.window_samples}")
    if logits.size != spec.num_classes:
        raise ValueError(f"logits have {logits.size} classes, the dataset has {spec.num_classes}")
    feature = {
        AUDIO_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[encode_audio(window, spec.audio_format)])),
        LOGITS_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[logits.astype(LOGITS_DTYPES[spec.logits_format]).tobytes()])),
        CLIP_ID_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[clip_id.encode("utf-8")])),
        TIME_KEY: tf.train.Feature(float_list=tf.train.FloatList(value=[float(time)])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def feature_spec() -> dict[str, Any]:
    """The `tf.io.parse_example` spec for this schema."""
    import tensorflow as tf

    return {
        AUDIO_KEY: tf.io.FixedLenFeature([], tf.string),
        LOGITS_KEY: tf.io.FixedLenFeature([], tf.string),
        CLIP_ID_KEY: tf.io.FixedLenFeature([], tf.string),
        TIME_KEY: tf.io.FixedLenFeature([], tf.float32),
    }


def decode_parsed(parsed: dict[str, Any], spec: DatasetSpec) -> tuple[Any, Any]:
    """Turn a parsed batch into float32 windows `[B, L, 1]` in [-1, 1] and float32 logits `[B, C]`."""
    import tensorflow as tf

    if spec.audio_format == "int16":
        audio = tf.cast(tf.io.decode_raw(parsed[AUDIO_KEY], tf.int16, little_endian=True), tf.float32)
        audio = audio / INT16_SCALE
    else:
        audio = tf.io.decode_raw(parsed[AUDIO_KEY], tf.float32, little_endian=True)
    logits_dtype = tf.float16 if spec.logits_format == "float16" else tf.float32
    logits = tf.cast(tf.io.decode_raw(parsed[LOGITS_KEY], logits_dtype, little_endian=True), tf.float32)
    audio = tf.reshape(audio, [-1, spec.window_samples, 1])
    logits = tf.reshape(logits, [-1, spec.num_classes])
    return audio, logits


def read_examples(path: str, spec: DatasetSpec) -> dict[str, np.ndarray]:
    """Every example of one shard as NumPy arrays (audio, logits, clip_id, time); for tools and tests."""
    import tensorflow as tf

    records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
    if not records:
        return {"audio": np.zeros((0, spec.window_samples), np.float32),
                "logits": np.zeros((0, spec.num_classes), np.float32),
                "clip_id": np.zeros((0,), object), "time": np.zeros((0,), np.float32)}
    parsed = tf.io.parse_example(tf.constant(records), feature_spec())
    audio, logits = decode_parsed(parsed, spec)
    return {"audio": audio.numpy()[..., 0], "logits": logits.numpy(),
            "clip_id": np.array([c.decode("utf-8") for c in parsed[CLIP_ID_KEY].numpy()], dtype=object),
            "time": parsed[TIME_KEY].numpy()}


def _masked_crc32c(data: bytes) -> int:
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame_record(record: bytes) -> bytes:
    """One record in TFRecord framing: length, its masked CRC-32C, the data, the data's masked CRC-32C."""
    length = struct.pack("<Q", len(record))
    return b"".join([length, struct.pack("<I", _masked_crc32c(length)), record,
                     struct.pack("<I", _masked_crc32c(record))])


def file_sha256(path: str) -> str:
    """SHA-256 of a file's bytes (local path or URL)."""
    if storage.is_remote(path):
        return hashlib.sha256(storage.read_bytes(path)).hexdigest()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class DatasetWriter:
    """Writes examples into shards of at most `shard_size` per split; `finish()` commits them with the clips.

    For tools and tests that write a whole dataset at once (`prepare` commits in groups
    through `commits.CommitWriter`). Shard names carry a token unique to this writer.
    """

    def __init__(self, directory: str, spec: DatasetSpec, shard_size: int = 1024, token: str | None = None):
        from audionet_tf import commits

        if shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {shard_size}")
        self.directory = directory
        self.spec = spec
        self.shard_size = shard_size
        self.token = token or commits.new_token()
        self.finished: list[ShardInfo] = []
        self._open: dict[str, Any] = {}
        self._index: dict[str, int] = {}
        storage.makedirs(directory)

    def add(self, split: str, windows: np.ndarray, logits: np.ndarray, clip_id: str,
            times: Sequence[float]) -> None:
        """Add one clip's examples (windows `[N, L]`, logits `[N, C]`, times `[N]`) to `split`."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        windows = np.asarray(windows)
        logits = np.asarray(logits)
        if not len(windows) == len(logits) == len(times):
            raise ValueError(f"clip {clip_id}: {len(windows)} windows, {len(logits)} logits, {len(times)} times")
        for window, row, time in zip(windows, logits, times):
            self._writer(split).write(make_example(window, row, clip_id, float(time), self.spec))
            if self._open[split].count >= self.shard_size:
                self.finished.append(self._open.pop(split).close())

    def _writer(self, split: str):
        from audionet_tf.commits import ShardWriter

        if split not in self._open:
            index = self._index.get(split, 0)
            self._index[split] = index + 1
            self._open[split] = ShardWriter(self.directory, f"{split}-{self.token}-{index:05d}{SHARD_SUFFIX}", split)
        return self._open[split]

    def flush(self) -> list[ShardInfo]:
        """Close the open shards (so far written examples become finished, not yet committed, shards)."""
        for split in list(self._open):
            writer = self._open.pop(split)
            if writer.count:
                self.finished.append(writer.close())
            else:
                writer.abort()
        return list(self.finished)

    def abort(self) -> None:
        """Drop the open, unfinished shards."""
        for writer in self._open.values():
            writer.abort()
        self._open.clear()

    def finish(self, clips: Iterable[dict[str, Any]] = (), class_names: Sequence[str] | None = None,
               extra: dict[str, Any] | None = None) -> Description:
        """Close the shards, write the header and class names, then commit shards and clips in one record."""
        from audionet_tf import commits

        self.flush()
        commits.write_header(self.directory, self.spec, class_names, extra)
        clips = list(clips)
        commits.write_record(self.directory, commits.commit_name(self.token, 0), self.finished, clips, self.token)
        state = commits.read_state(self.directory)
        finished = {"clips": len(state.clip_docs())}
        commits.write_index(self.directory, state, finished)
        return read_description(self.directory)


def write_class_names(directory: str, class_names: Sequence[str], spec: DatasetSpec) -> None:
    """Write the class names file, one name per line, after checking the count."""
    if len(class_names) != spec.num_classes:
        raise ValueError(f"{len(class_names)} class names for {spec.num_classes} classes")
    storage.write_text(storage.join(directory, spec.class_names_file), "\n".join(class_names) + "\n")


HOW_TO_PREPARE = ("make one with `python -m audionet_tf.prepare --pipeline pipelines/demo.toml` "
                  "(offline) or `python -m audionet_tf.prepare --manifest FILE.csv --out DIR`")
RERUN = "rerun the same prepare command (it relabels only the clips that are not committed)"


def read_description(directory: str) -> Description:
    """The dataset as committed so far: header + commit records, with a clear message when there is none."""
    from audionet_tf import commits

    # Object stores have no directories: there, a dataset that is not there has no header.
    if not storage.is_remote(directory) and not storage.exists(directory):
        raise DatasetError(f"dataset directory {directory} does not exist; {HOW_TO_PREPARE}")
    state = commits.read_state(directory)
    header_path = storage.join(directory, DESCRIPTION_FILE)
    if state.header is None:
        raise DatasetError(f"{directory} holds no {DESCRIPTION_FILE}: no clip of it is committed yet (empty, or "
                           f"its preparation stopped before the first commit); {HOW_TO_PREPARE}")
    spec = spec_from_header(state.header, header_path)
    if state.torn:
        name, why = sorted(state.torn.items())[0]
        raise DatasetError(f"{why}; {RERUN}: it withdraws that record and relabels its clips")
    description = Description(spec=spec, shards=state.shards(), clips=state.clip_docs(),
                              extra=dict(state.header.get("extra") or {}))
    index = state.index or {}
    complete = index.get("finished") and set(index.get("commits", {})) >= {n for n, _ in state.accepted}
    description.finished = index.get("finished") if complete else None
    if not description.shards:
        raise DatasetError(f"{directory} has no committed examples yet; {RERUN}")
    if description.finished is None:
        ok = sum(1 for c in description.clips if c.get("status") == "ok")
        log.warning("dataset %s: its preparation has not finished (or is running); using the %d clips committed "
                    "so far; %s", directory, ok, RERUN)
    return description


def read_class_names(directory: str, description: Description | None = None) -> list[str]:
    """The dataset's class names (one per class)."""
    description = description or read_description(directory)
    path = storage.join(directory, description.spec.class_names_file)
    if not storage.exists(path):
        return [f"class_{i}" for i in range(description.spec.num_classes)]
    names = [line for line in storage.read_text(path).splitlines() if line.strip()]
    if len(names) != description.spec.num_classes:
        raise DatasetError(f"{path}: {len(names)} class names for {description.spec.num_classes} classes")
    return names


def verify_shards(directory: str, description: Description, checksums: bool = True,
                  splits: Sequence[str] = SPLITS) -> None:
    """Check that every committed shard is there, whole and unchanged (one listing, then checksums)."""
    sizes = storage.list_sizes(directory)
    for shard in description.shards:
        if shard.split not in splits:
            continue
        path = storage.join(directory, shard.file)
        if shard.file not in sizes:
            raise DatasetError(f"shard {path}, named in a commit record, is missing; {RERUN}")
        if sizes[shard.file] != shard.bytes:
            raise DatasetError(f"shard {path} is {sizes[shard.file]} bytes, its commit record says {shard.bytes}: "
                               f"truncated or changed; {RERUN}")
        if checksums and file_sha256(path) != shard.sha256:
            raise DatasetError(f"shard {path} fails its SHA-256 checksum: corrupt or changed; delete it and "
                               f"{RERUN}")
