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
import struct
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from audionet_tf.core import storage
from audionet_tf.core.errors import DatasetError

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


HELD_OUT_SPLITS = ("validation", "time")  # a held-out clip, or a clip with a held-out part


@dataclass(frozen=True)
class ClipRecord:
    """One clip as a commit record lists it: its entry, where its examples went, and its outcome."""

    id: str
    status: str  # "ok" or "failed"
    split: str = "train"  # "train", "validation" (held out whole) or "time" (a part held out)
    url: str = ""
    start: float = 0.0
    duration: float = 0.0
    label: str = ""
    source: str = ""
    video_id: str = ""
    row: int | None = None  # the line of the clip list it came from
    key: str | None = None  # its entry and settings: a rerun relabels a clip whose key changed
    error: str | None = None  # why it failed
    examples: int = 0
    frames: int | None = None  # frames labelled (guard frames included): those with their picture and window
    usable_s: float | None = None  # their duration: `duration` unless the file ends inside the section
    shortened: str | None = None  # why fewer frames than `duration` asks were labelled (None: all were)
    teacher_top: dict[str, Any] | None = None  # the teacher's most frequent class per split, training classes
    held_out_part: dict[str, float] | None = None  # {"start_s", "end_s"} under the time split
    commit: str | None = None  # the commit record that holds it

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> "ClipRecord":
        """The record of a clip document (fields this version does not know are left out)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in known})

    @property
    def ok(self) -> bool:
        """Whether the clip was labelled (its examples are in the dataset)."""
        return self.status == "ok"

    @property
    def held_out_span(self) -> tuple[float, float] | None:
        """The held-out part's (start, end) in seconds, under the time split."""
        part = self.held_out_part
        return (part["start_s"], part["end_s"]) if part else None

    @property
    def held_out(self) -> bool:
        """Whether some of its examples are held out (the whole clip, or a part of it)."""
        return self.ok and self.split in HELD_OUT_SPLITS


@dataclass
class Description:
    """A dataset as readers see it: its spec, committed shards and clips, and whether it is finished."""

    spec: DatasetSpec
    shards: list[ShardInfo] = field(default_factory=list)
    clips: Sequence[ClipRecord] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    finished: dict[str, Any] | None = None  # what the last finished run recorded; None while preparing

    def held_out_clip_ids(self) -> list[str]:
        """The clips with held-out examples, in the order the dataset lists them."""
        return [c.id for c in self.clips if c.held_out]

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
            "clips": [{k: v for k, v in dataclasses.asdict(c).items() if v is not None} for c in self.clips],
            "finished": self.finished,
            **({"extra": self.extra} if self.extra else {}),
        }


class LazyClips(Sequence):
    """Clip records kept as JSON lines (or documents) and made `ClipRecord`s when read (a large dataset opens
    without decoding them)."""

    def __init__(self, items: Sequence[Any], as_records: bool = True):
        self._items = items
        self._as_records = as_records  # False: the clip documents themselves (for the commit protocol)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        item = self._items[index]
        doc = json.loads(item) if isinstance(item, (bytes, str)) else item
        return ClipRecord.from_doc(doc) if self._as_records else doc


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
