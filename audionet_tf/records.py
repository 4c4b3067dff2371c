"""The dataset format: sharded TFRecords of (audio window, teacher logits) and their description.

One `tf.train.Example` per frame:

| key       | type         | content                                                     |
|-----------|--------------|-------------------------------------------------------------|
| `audio`   | bytes        | the window, 16 kHz mono, int16 PCM or float32, little-endian |
| `logits`  | bytes        | the teacher's logits, float16 or float32, little-endian     |
| `clip_id` | bytes        | the clip the frame comes from                               |
| `time`    | float        | the frame's time in seconds from the clip's start           |

Every dataset directory holds `dataset.json` (the description: schema version, sample
rate, window, frame period, class count, teacher, class names file, clips and shards with
their example counts and SHA-256 checksums) and the class names file. Shards are written
under a temporary name and renamed when complete; the description is written last, also
through a temporary name, so a reader never takes an unfinished directory for a dataset.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from audionet_tf.errors import DatasetError

SCHEMA_VERSION = 1
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
    """The contents of `dataset.json`."""

    spec: DatasetSpec
    shards: list[ShardInfo] = field(default_factory=list)
    clips: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def shards_for(self, split: str) -> list[ShardInfo]:
        """The shards of one split."""
        return [s for s in self.shards if s.split == split]

    def examples(self, split: str | None = None) -> int:
        """Example count of one split, or of all."""
        return sum(s.examples for s in self.shards if split is None or s.split == split)

    def to_json(self) -> dict[str, Any]:
        """The JSON document written to `dataset.json`."""
        return {
            "schema_version": self.schema_version,
            **dataclasses.asdict(self.spec),
            "window_ms": 1000.0 * self.spec.window_samples / self.spec.sample_rate,
            "examples": {split: self.examples(split) for split in SPLITS},
            "shards": [dataclasses.asdict(s) for s in self.shards],
            "clips": self.clips,
            **({"extra": self.extra} if self.extra else {}),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any], where: str) -> "Description":
        """Parse a `dataset.json` document, naming `where` in any error."""
        version = doc.get("schema_version")
        if version != SCHEMA_VERSION:
            raise DatasetError(f"{where}: schema version {version!r} is not supported (this package reads "
                               f"version {SCHEMA_VERSION}); prepare the dataset again")
        names = {f.name for f in dataclasses.fields(DatasetSpec)}
        try:
            spec = DatasetSpec(**{k: doc[k] for k in names if k in doc})
            shards = [ShardInfo(**s) for s in doc.get("shards", [])]
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"{where}: malformed description: {exc}") from None
        return cls(spec=spec, shards=shards, clips=list(doc.get("clips", [])), extra=dict(doc.get("extra", {})),
                   schema_version=version)


def atomic_write_text(path: str, text: str, fsync: bool = True) -> None:
    """Write `text` to `path` through a temporary file in the same directory and a rename."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the result should read like any other file
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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


def file_sha256(path: str) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ShardWriter:
    """Writes one shard under a temporary name; `close()` renames it into place."""

    def __init__(self, directory: str, name: str, split: str):
        import tensorflow as tf

        self.directory = directory
        self.name = name
        self.split = split
        self.count = 0
        self._tmp = os.path.join(directory, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
        self._writer = tf.io.TFRecordWriter(self._tmp)

    def write(self, record: bytes) -> None:
        """Append one serialized example."""
        self._writer.write(record)
        self.count += 1

    def close(self) -> ShardInfo:
        """Finish the shard: flush, rename into place, and return its description."""
        self._writer.close()
        final = os.path.join(self.directory, self.name)
        os.replace(self._tmp, final)
        return ShardInfo(file=self.name, split=self.split, examples=self.count, sha256=file_sha256(final),
                         bytes=os.path.getsize(final))

    def abort(self) -> None:
        """Drop the unfinished shard."""
        self._writer.close()
        if os.path.exists(self._tmp):
            os.unlink(self._tmp)


class DatasetWriter:
    """Writes examples into shards of at most `shard_size` per split; `finish()` writes the description.

    Shard names carry a token unique to this writer, so a later writer adding to the same
    directory (a resumed prepare) never overwrites a shard an earlier one finished.
    """

    def __init__(self, directory: str, spec: DatasetSpec, shard_size: int = 1024, token: str | None = None):
        if shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {shard_size}")
        self.directory = directory
        self.spec = spec
        self.shard_size = shard_size
        self.token = token or uuid.uuid4().hex[:8]
        self.finished: list[ShardInfo] = []
        self._open: dict[str, ShardWriter] = {}
        self._index: dict[str, int] = {}
        os.makedirs(directory, exist_ok=True)

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

    def _writer(self, split: str) -> ShardWriter:
        if split not in self._open:
            index = self._index.get(split, 0)
            self._index[split] = index + 1
            name = f"{split}-{self.token}-{index:05d}{SHARD_SUFFIX}"
            self._open[split] = ShardWriter(self.directory, name, split)
        return self._open[split]

    def flush(self) -> list[ShardInfo]:
        """Close the open shards (so far written examples become finished shards)."""
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
               previous: Sequence[ShardInfo] = (), extra: dict[str, Any] | None = None) -> Description:
        """Close the shards, write the class names, then the description (last)."""
        self.flush()
        if class_names is not None:
            write_class_names(self.directory, class_names, self.spec)
        description = Description(spec=self.spec, shards=list(previous) + self.finished, clips=list(clips),
                                  extra=dict(extra or {}))
        write_description(self.directory, description)
        return description


def write_class_names(directory: str, class_names: Sequence[str], spec: DatasetSpec) -> None:
    """Write the class names file, one name per line, after checking the count."""
    if len(class_names) != spec.num_classes:
        raise ValueError(f"{len(class_names)} class names for {spec.num_classes} classes")
    atomic_write_text(os.path.join(directory, spec.class_names_file), "\n".join(class_names) + "\n")


def write_description(directory: str, description: Description) -> None:
    """Write `dataset.json` atomically."""
    atomic_write_text(os.path.join(directory, DESCRIPTION_FILE), json.dumps(description.to_json(), indent=2) + "\n")


HOW_TO_PREPARE = ("make one with `python -m audionet_tf.prepare --pipeline pipelines/demo.toml` "
                  "(offline) or `python -m audionet_tf.prepare --manifest FILE.csv --out DIR`")


def read_description(directory: str) -> Description:
    """Read a dataset directory's description, with a clear message when there is none."""
    if not os.path.isdir(directory):
        raise DatasetError(f"dataset directory {directory} does not exist; {HOW_TO_PREPARE}")
    path = os.path.join(directory, DESCRIPTION_FILE)
    if not os.path.isfile(path):
        raise DatasetError(f"{directory} holds no {DESCRIPTION_FILE}: it is not a finished dataset "
                           f"(empty, or its preparation did not complete); {HOW_TO_PREPARE}")
    try:
        with open(path, encoding="utf-8") as handle:
            doc = json.load(handle)
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: unreadable description: {exc}") from None
    if not isinstance(doc, dict):
        raise DatasetError(f"{path}: the description is not a JSON object")
    return Description.from_json(doc, path)


def read_class_names(directory: str, description: Description | None = None) -> list[str]:
    """The dataset's class names (one per class)."""
    description = description or read_description(directory)
    path = os.path.join(directory, description.spec.class_names_file)
    if not os.path.isfile(path):
        return [f"class_{i}" for i in range(description.spec.num_classes)]
    with open(path, encoding="utf-8") as handle:
        names = [line.rstrip("\n") for line in handle if line.strip()]
    if len(names) != description.spec.num_classes:
        raise DatasetError(f"{path}: {len(names)} class names for {description.spec.num_classes} classes")
    return names


def verify_shards(directory: str, description: Description, checksums: bool = True,
                  splits: Sequence[str] = SPLITS) -> None:
    """Check that every shard named in the description is there, whole and unchanged."""
    for shard in description.shards:
        if shard.split not in splits:
            continue
        path = os.path.join(directory, shard.file)
        if not os.path.isfile(path):
            raise DatasetError(f"shard {path} named in {DESCRIPTION_FILE} is missing")
        size = os.path.getsize(path)
        if size != shard.bytes:
            raise DatasetError(f"shard {path} is {size} bytes, the description says {shard.bytes}: "
                               f"truncated or changed; prepare the dataset again")
        if checksums and file_sha256(path) != shard.sha256:
            raise DatasetError(f"shard {path} fails its SHA-256 checksum: corrupt or changed; "
                               f"prepare the dataset again")
