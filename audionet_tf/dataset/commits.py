"""Commits: how clips become part of a dataset, safely, one closed group of shards at a time.

A dataset directory holds, besides its shards:

    dataset.json             the header: schema version, the examples' shape, teacher, settings
    labels.txt               the class names
    commits/c-<time>-<writer>.json
                             one commit record per closed group of shards: the shard files
                             (split, example count, bytes, SHA-256) and every clip they hold
                             (entry, settings key, split, outcome); failed clips too
    index.json               the commit records as of the last time the index was written (a
                             cache: the records stay the truth): at the end of a run, and while
                             it runs every `prepare.index_every` commits (`IndexKeeper`)

A writer closes its open shards (renamed to their final names), then writes the commit
record (temporary name + rename locally; a write-once object on object stores). Only clips
named in a commit record exist for readers; a shard no record names is invisible and is
removed by the next run that holds the directory's lock. A kill therefore loses at most the
clips of the shards still open (`prepare.shard_clips` caps them).

Two writers never write the same file (every name carries a writer token), so on object
stores, where there is no lock, concurrent runs cannot corrupt each other: a clip committed
twice (a Beam retry, two runs at once) is resolved deterministically: commit records are
taken in order (those in the index first, then the others by name, which starts with the
UTC time), and a record that names a clip an earlier one already holds is ignored whole.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from audionet_tf.core import storage
from audionet_tf.core.errors import DatasetError
from audionet_tf.core.lock import LockHeld, WithdrawGuard
from audionet_tf.dataset import records

log = logging.getLogger(__name__)

COMMITS_DIR = "commits"
INDEX_FILE = "index.json"
COMMIT_PREFIX = "c-"
RECORD_FORMAT = "audionet-commit/1"


def new_token() -> str:
    """A name part unique to one writer (one run, one Beam bundle attempt)."""
    return uuid.uuid4().hex[:12]


def commit_name(token: str, number: int) -> str:
    """A commit record's file name: UTC time first, so later commits sort later."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"{time.time() % 1:.6f}"[1:].replace(".", "")
    return f"{COMMIT_PREFIX}{stamp}-{token}-{number:05d}.json"


def record_names(directory: str) -> list[str]:
    """The commit records' file names in a dataset directory, sorted (a record still under its temporary
    name, `.c-….tmp`, is not one)."""
    return sorted(n for n in storage.list_sizes(storage.join(directory, COMMITS_DIR))
                  if n.startswith(COMMIT_PREFIX) and n.endswith(".json"))


@dataclass
class State:
    """What a dataset directory holds: header, the accepted commits, and what is wrong with the rest.

    When every accepted commit is in the index, the clips stay the index's undecoded lines
    (`lines`), decoded one at a time when read: that is what keeps a 200,000-clip dataset
    small to open. Otherwise every record carries its decoded clips (`record["clips"]`).
    """

    header: dict[str, Any] | None
    accepted: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    duplicates: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    torn: dict[str, str] = field(default_factory=dict)  # commit record → why it cannot be read
    index: dict[str, Any] | None = None
    listing: dict[str, int] = field(default_factory=dict)  # top-level files → bytes
    lines: list[bytes] | None = None  # the index's clips, one JSON document per line

    def clip_docs(self) -> Sequence[dict[str, Any]]:
        """Each clip once: its committed record, else its latest failure (each names its `commit`)."""
        if self.lines is not None:
            return records.LazyClips(self.lines, as_records=False)
        ok: dict[str, dict] = {}
        failed: dict[str, dict] = {}
        for _, record in self.accepted:
            for doc in record["clips"]:
                (ok if doc.get("status") == "ok" else failed)[doc["id"]] = doc
        return list(ok.values()) + [d for i, d in failed.items() if i not in ok]

    def ok_count(self) -> int:
        """How many clips are committed (without decoding the index's clips)."""
        if self.lines is not None:
            return sum(1 for line in self.lines if _line_head(line)[1] == "ok")
        return sum(1 for d in self.clip_docs() if d.get("status") == "ok")

    def materialise(self) -> None:
        """Decode the index's clips into their commit records (for a run that changes the dataset)."""
        if self.lines is None:
            return
        by_commit: dict[str, list] = {name: [] for name, _ in self.accepted}
        for line in self.lines:
            doc = json.loads(line)
            by_commit.setdefault(doc.get("commit"), []).append(doc)
        for name, record in self.accepted:
            record["clips"] = by_commit[name]
        self.lines = None

    def shards(self) -> list[records.ShardInfo]:
        """The shards of the accepted commits."""
        return [records.ShardInfo(**s) for _, record in self.accepted for s in record["shards"]]


def _parse_record(text: str, where: str, name: str) -> dict[str, Any]:
    try:
        record = json.loads(text)
    except ValueError as exc:
        raise DatasetError(f"commit record {where} is torn or corrupt ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT or \
            not isinstance(record.get("clips"), list) or not isinstance(record.get("shards"), list):
        raise DatasetError(f"commit record {where} is not a commit record of this format")
    for doc in record["clips"]:
        doc["commit"] = name
    return record


def _read_index(directory: str, listing: dict[str, int]) -> tuple[dict[str, Any] | None, list[bytes] | None]:
    """The index and its clip lines, or (None, None) when there is none usable (it is only a cache)."""
    if INDEX_FILE not in listing:
        return None, None
    try:
        index = json.loads(storage.read_text(storage.join(directory, INDEX_FILE)))
        lines = storage.read_bytes(storage.join(directory, index["clips_file"])).splitlines()
        if len(lines) != index["clip_count"]:
            return None, None
        return index, lines
    except (OSError, ValueError, KeyError, TypeError):
        return None, None


def read_state(directory: str) -> State:
    """Header, index and commit records of `directory`: two listings, and only unindexed records opened."""
    listing = storage.list_sizes(directory)
    header = None
    if records.DESCRIPTION_FILE in listing:
        path = storage.join(directory, records.DESCRIPTION_FILE)
        try:
            header = json.loads(storage.read_text(path))
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{path}: unreadable dataset header ({exc}); rerun the same prepare command") from None
    commit_dir = storage.join(directory, COMMITS_DIR)
    names = record_names(directory)
    index, lines = _read_index(directory, listing)
    cached = (index or {}).get("commits", {})
    present = set(names)
    state = State(header=header, index=index, listing=listing)
    unindexed = [n for n in names if n not in cached]
    if index is not None and not unindexed and all(n in present for n in cached):
        # The usual case for a finished dataset: one index, no record opened, clips left undecoded.
        state.accepted = [(n, dict(record)) for n, record in cached.items()]
        state.lines = lines
        return state
    if index is not None and all(n in present for n in cached):
        # A running (or killed) run: the index plus the records committed since, the index's clips undecoded.
        _add_unindexed(state, directory, cached, lines, unindexed)
        return state
    records_by_name: dict[str, dict[str, Any]] = {}
    if index is not None:
        kept = State(header=None, accepted=[(n, dict(r)) for n, r in cached.items()], lines=lines)
        kept.materialise()
        records_by_name.update((n, r) for n, r in kept.accepted if n in present)
    for name in unindexed:
        record = _read_record(state, commit_dir, name)
        if record is not None:
            records_by_name[name] = record
    order = [n for n in cached if n in records_by_name] + [n for n in unindexed if n in records_by_name]
    claimed: set[str] = set()
    for name in order:
        record = records_by_name[name]
        ok_ids = [d["id"] for d in record["clips"] if d.get("status") == "ok"]
        if claimed.intersection(ok_ids):
            state.duplicates.append((name, record))
            continue
        claimed.update(ok_ids)
        state.accepted.append((name, record))
    return state


def _read_record(state: State, commit_dir: str, name: str) -> dict[str, Any] | None:
    """One commit record, or None with the reason it is torn noted in `state.torn`."""
    path = storage.join(commit_dir, name)
    try:
        return _parse_record(storage.read_text(path), path, name)
    except DatasetError as exc:
        state.torn[name] = str(exc)
    except OSError as exc:
        state.torn[name] = f"commit record {path} cannot be read ({exc})"
    return None


def clip_line(doc: dict[str, Any]) -> bytes:
    """A clip's index line: id and status first, so a reader can tell them without decoding the line."""
    return json.dumps({"id": doc["id"], "status": doc.get("status"), **doc}, separators=(",", ":")).encode()


def _line_head(line: bytes) -> tuple[str, str | None]:
    """A clip line's id and status, read without decoding the line when it starts as `clip_line` writes it."""
    if line.startswith(b'{"id":"'):
        end = line.find(b'"', 7)
        clip_id = line[7:end]
        if b"\\" not in clip_id and line.startswith(b'","status":"', end):
            status = line[end + 12:end + 14]
            if status == b"ok" and line.startswith(b'",', end + 14):
                return clip_id.decode(), "ok"
            if line.startswith(b'failed"', end + 12):
                return clip_id.decode(), "failed"
    doc = json.loads(line)  # a line of an older index, or an id with escapes
    return doc["id"], doc.get("status")


def _add_unindexed(state: State, directory: str, cached: dict[str, Any], lines: list[bytes],
                   unindexed: list[str]) -> None:
    """The index's commits and clips (lines kept undecoded) plus the records committed after it, resolved
    as `read_state` does: a record claiming a clip the index (or an earlier record) holds is a duplicate."""
    heads = [_line_head(line) for line in lines]
    claimed = {clip_id for clip_id, status in heads if status == "ok"}
    position = {clip_id: k for k, (clip_id, _) in enumerate(heads)}
    state.accepted = [(n, dict(record)) for n, record in cached.items()]
    added: dict[str, dict[str, Any]] = {}
    dropped: set[int] = set()
    commit_dir = storage.join(directory, COMMITS_DIR)
    for name in unindexed:
        record = _read_record(state, commit_dir, name)
        if record is None:
            continue
        ok_ids = [d["id"] for d in record["clips"] if d.get("status") == "ok"]
        if claimed.intersection(ok_ids):
            state.duplicates.append((name, record))
            continue
        claimed.update(ok_ids)
        state.accepted.append((name, record))
        for doc in record["clips"]:
            clip_id = doc["id"]
            if doc.get("status") != "ok" and clip_id in claimed:
                continue  # a clip committed elsewhere stays committed; its failure here is forgotten
            added[clip_id] = doc  # a committed clip, or the latest failure
            if clip_id in position:
                dropped.add(position[clip_id])
    state.lines = [line for k, line in enumerate(lines) if k not in dropped] + [clip_line(d) for d in added.values()]


def write_record(directory: str, name: str, shards: Sequence[records.ShardInfo],
                 clips: Sequence[dict[str, Any]], writer: str) -> dict[str, Any]:
    """Write one commit record (after its shards are in place); returns it."""
    record = {"format": RECORD_FORMAT, "writer": writer, "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "shards": [dataclasses.asdict(s) for s in shards], "clips": list(clips)}
    storage.makedirs(storage.join(directory, COMMITS_DIR))
    storage.write_text(storage.join(directory, COMMITS_DIR, name), json.dumps(record, separators=(",", ":")) + "\n")
    return record


def write_header(directory: str, spec: records.DatasetSpec, class_names: Sequence[str] | None,
                 extra: dict[str, Any] | None = None) -> None:
    """Write the class names, then `dataset.json`'s header (both small, both whole or absent)."""
    storage.makedirs(directory)
    if class_names is not None:
        if len(class_names) != spec.num_classes:
            raise ValueError(f"{len(class_names)} class names for {spec.num_classes} classes")
        storage.write_text(storage.join(directory, spec.class_names_file), "\n".join(class_names) + "\n")
    doc = {"schema_version": records.SCHEMA_VERSION, **dataclasses.asdict(spec),
           "window_ms": 1000.0 * spec.window_samples / spec.sample_rate, "commits": COMMITS_DIR,
           **({"extra": extra} if extra else {})}
    storage.write_text(storage.join(directory, records.DESCRIPTION_FILE), json.dumps(doc, indent=2) + "\n")


def ensure_header(directory: str, spec: records.DatasetSpec, class_names: Sequence[str],
                  extra: dict[str, Any] | None = None) -> None:
    """Write the header unless the same one is there (writers of one dataset may all call this)."""
    path = storage.join(directory, records.DESCRIPTION_FILE)
    if storage.exists(path):
        try:
            doc = json.loads(storage.read_text(path))
            if records.spec_from_header(doc, path) == spec and doc.get("extra") == (extra or None):
                return
        except (ValueError, DatasetError):
            pass
    write_header(directory, spec, class_names, extra)


def write_index(directory: str, state: State, finished: dict[str, Any] | None) -> None:
    """Consolidate the accepted commits: their clips (one JSON line each), then `index.json` naming that file.

    Readers then open two files instead of one per commit. The index is only a cache of the
    records: a kill between the steps leaves an older, still valid index (or none).
    """
    if state.lines is None:
        for name, record in state.accepted:
            for doc in record["clips"]:
                doc.setdefault("commit", name)
    docs = state.clip_docs()
    lines = state.lines if state.lines is not None else [clip_line(d) for d in docs]
    clips_file = f"index-clips-{new_token()}.jsonl"
    storage.write_bytes(storage.join(directory, clips_file), b"\n".join(lines) + b"\n")
    doc = {"format": "audionet-index/2", "finished": finished, "clips_file": clips_file, "clip_count": len(lines),
           "commits": {name: {"writer": record.get("writer"), "shards": record["shards"]}
                       for name, record in state.accepted}}
    storage.write_text(storage.join(directory, INDEX_FILE), json.dumps(doc, separators=(",", ":")) + "\n")
    for name in storage.list_sizes(directory):
        if name.startswith("index-clips-") and name != clips_file:
            storage.remove(storage.join(directory, name))


def retire(directory: str, names: Iterable[str], shards: Iterable[str] = ()) -> None:
    """Withdraw commit records (the record first, so a kill between steps leaves only unnamed shards)."""
    for name in names:
        storage.remove(storage.join(directory, COMMITS_DIR, name))
    for shard in shards:
        storage.remove(storage.join(directory, shard))


class ShardWriter:
    """One TFRecord shard, under its final name only once closed; size and SHA-256 counted as written."""

    def __init__(self, directory: str, name: str, split: str):
        self.directory, self.name, self.split = directory, name, split
        self.path = storage.join(directory, name)
        self.count = 0
        self._digest = hashlib.sha256()
        self._bytes = 0
        self._handle = storage.open_write(self.path)

    def write(self, record: bytes) -> None:
        """Append one serialized example (TFRecord framing: length, CRCs, data)."""
        framed = records.frame_record(record)
        self._handle.write(framed)
        self._digest.update(framed)
        self._bytes += len(framed)
        self.count += 1

    def close(self) -> records.ShardInfo:
        """Flush and put the shard in place; returns its description."""
        self._handle.close()
        return records.ShardInfo(file=self.name, split=self.split, examples=self.count,
                                 sha256=self._digest.hexdigest(), bytes=self._bytes)

    def abort(self) -> None:
        """Drop the unfinished shard."""
        storage.discard(self._handle, self.path)


class CommitWriter:
    """Writes clips into open shards (one per split) and commits them, with their clip records, in groups.

    The group is committed when it holds `shard_clips` clips or a split's shard reaches
    `shard_size` examples, and by `commit()`; a clip's examples never span two commits.
    """

    def __init__(self, directory: str, shard_size: int = 1024, shard_clips: int = 16, token: str | None = None,
                 on_commit: Callable[[str], None] | None = None):
        self.directory = directory
        self.on_commit = on_commit
        self.shard_size = shard_size
        self.shard_clips = shard_clips
        self.token = token or new_token()
        self.committed: list[tuple[str, dict[str, Any]]] = []
        self._open: dict[str, ShardWriter] = {}
        self._docs: list[dict[str, Any]] = []
        self._count = 0
        self._partial: str | None = None  # a clip whose parts are written and whose record is not yet added

    def add(self, doc: dict[str, Any], spec: records.DatasetSpec | None = None, windows: Any = None,
            logits: Any = None, times: Any = None, splits: Any = None) -> None:
        """Add one clip: its record, and for a labelled clip its examples (split per example) unless they came
        by `add_part`; a failed clip's parts are dropped."""
        if self._partial is not None:
            if doc["id"] != self._partial:
                raise ValueError(f"clip {self._partial} has parts written but no record; got {doc['id']}")
            self._partial = None
            if doc.get("status") != "ok":
                self._drop_open()  # the open shards hold this clip's parts alone (see add_part)
        elif doc.get("status") == "ok":
            self._write(doc["id"], spec, windows, logits, times, splits)
        self._docs.append(doc)
        full = any(w.count >= self.shard_size for w in self._open.values())
        if full or len(self._docs) >= self.shard_clips:
            self.commit()

    def add_part(self, clip_id: str, spec: records.DatasetSpec, windows: Any, logits: Any, times: Any,
                 splits: Any) -> None:
        """Write some of a long clip's examples now; its record follows with `add` after its last part.

        The clip's examples go into shards of their own (the group before it is committed first),
        so that a clip that fails half-way is dropped without touching any other clip."""
        if self._partial != clip_id:
            if self._partial is not None:
                raise ValueError(f"clip {self._partial} has parts written but no record; got parts of {clip_id}")
            self.commit()
            self._partial = clip_id
        self._write(clip_id, spec, windows, logits, times, splits)

    def _write(self, clip_id: str, spec, windows, logits, times, splits) -> None:
        for window, row, t, split in zip(windows, logits, times, splits):
            if split not in self._open:
                self._open[split] = ShardWriter(self.directory, f"{split}-{self.token}-{self._count:05d}"
                                                f"{records.SHARD_SUFFIX}", split)
            self._open[split].write(records.make_example(window, row, clip_id, float(t), spec))

    def _drop_open(self) -> None:
        for writer in self._open.values():
            writer.abort()
        self._open.clear()

    def commit(self) -> dict[str, Any] | None:
        """Close the open shards and write their commit record; returns it (None when there was nothing)."""
        if not self._docs:
            return None
        shards = [writer.close() for writer in self._open.values()]  # on failure abort() drops the rest
        self._open.clear()
        name = commit_name(self.token, self._count)
        record = write_record(self.directory, name, shards, self._docs, self.token)
        self.committed.append((name, record))
        if self.on_commit is not None:
            self.on_commit(name)
        self._docs, self._count = [], self._count + 1
        return record

    def abort(self) -> None:
        """Drop the open shards and the clips not yet committed."""
        self._drop_open()
        self._docs = []
        self._partial = None


def split_counts(splits: Sequence[str]) -> dict[str, int]:
    """Examples per split, for a clip's record."""
    values, counts = np.unique(np.asarray(splits, dtype=object).astype(str), return_counts=True)
    return {str(v): int(c) for v, c in zip(values, counts)}


def _shard_problem(directory: str, record: dict[str, Any], sizes: dict[str, int]) -> str | None:
    for shard in record["shards"]:
        path = storage.join(directory, shard["file"])
        if shard["file"] not in sizes:
            return f"its shard {path} is missing"
        if sizes[shard["file"]] != shard["bytes"]:
            return f"its shard {path} is {sizes[shard['file']]} bytes, not {shard['bytes']} (cut short)"
    return None


def plan(directory: str, keys: dict[str, str], overwrite: bool = False, clean: bool = True) -> set[str]:
    """Make `directory` consistent for a new run; returns the ids of the clips committed as wanted.

    Withdraws commit records that are torn, whose shards are missing or cut short, or that
    hold a clip no longer wanted as it is (other entry or settings, not in the list, or
    `overwrite`): their clips are labelled again. With `clean` (the caller holds the
    directory's lock) files no record names are deleted. Reads no shard.
    """
    state = read_state(directory)
    state.materialise()
    withdrawn: list[str] = []
    for name, why in state.torn.items():
        log.warning("%s: withdrawn; its clips are labelled again", why)
        withdrawn.append(name)
    done: set[str] = set()
    withdrawals: list[tuple[str, list[str]]] = []
    relabelled = 0
    for name, record in state.accepted:
        problem = _shard_problem(directory, record, state.listing)
        ok = [d for d in record["clips"] if d.get("status") == "ok"]
        stale = [d["id"] for d in ok if overwrite or keys.get(d["id"]) != d.get("key")]
        if problem:
            log.warning("commit record %s: %s; withdrawn, its %d clips are labelled again",
                        storage.join(directory, COMMITS_DIR, name), problem, len(ok))
        if problem or stale or not ok:  # a record of failures only: those clips are tried again
            withdrawn.append(name)
            withdrawals.append((name, [s["file"] for s in record["shards"] if not problem]))
            relabelled += 0 if problem else len(stale)
            continue
        done.update(d["id"] for d in ok)
    # Withdrawn shards vanish under a training that reads them: refused while one does (a local
    # directory: `clean`; object stores have no locks), before anything is changed.
    guard = WithdrawGuard(directory) if clean and any(files for _, files in withdrawals) else None
    if guard is not None:
        try:
            guard.acquire()
        except LockHeld as exc:
            why = "--overwrite" if overwrite else "their entries or settings changed"
            raise LockHeld(f"{exc}, and this prepare would withdraw {relabelled} committed clips ({why}) and delete "
                           f"their shards under it; nothing was changed; wait for that to finish or stop it, "
                           f"or prepare into another directory") from None
    try:
        for name, files in withdrawals:
            retire(directory, [name], files)
        retire(directory, [n for n in withdrawn if n in state.torn])
        if clean:
            remove_orphans(directory)
    finally:
        if guard is not None:
            guard.release()
    return done


def remove_orphans(directory: str) -> list[str]:
    """Delete shards and temporary files no commit record names (only while holding the lock)."""
    state = read_state(directory)
    named = {s["file"] for _, record in state.accepted + state.duplicates for s in record["shards"]}
    orphans = [n for n in state.listing if (n.endswith(records.SHARD_SUFFIX) and n not in named)
               or (n.startswith(".") and n.endswith(".tmp"))]
    for name in orphans:
        storage.remove(storage.join(directory, name))
    for name in storage.list_sizes(storage.join(directory, COMMITS_DIR)):
        if name.endswith(".tmp"):
            storage.remove(storage.join(directory, COMMITS_DIR, name))
    return orphans


def finalise(directory: str, listed: int, clean: bool = True) -> State:
    """After a run: withdraw duplicate commits, remove orphans (with `clean`), and write the index."""
    state = read_state(directory)
    state.materialise()
    for name, record in state.duplicates:
        retire(directory, [name], [s["file"] for s in record["shards"]])
    state.duplicates = []
    if clean:
        remove_orphans(directory)
    docs = state.clip_docs()
    ok = sum(1 for d in docs if d.get("status") == "ok")
    finished = {"listed": listed, "ok": ok, "failed": len(docs) - ok,
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if state.header is not None:
        write_index(directory, state, finished)
    return state


class IndexKeeper:
    """Keeps the index current while a run commits: rewritten once `every` commit records are missing from it.

    Only the launcher that holds the output runs it (never a worker): it lists and opens commit
    records, never a shard. A reader after a killed run then opens the index and at most about
    `every` records, whatever the dataset's size. `every` 0: the index is written only at the end.
    """

    def __init__(self, directory: str, every: int):
        self.directory = directory
        self.every = every
        self.indexed: set[str] = set()  # records the last index covered (or that it left out on purpose)
        self.pending: set[str] = set()  # records committed since
        self.refreshes = 0

    def start(self) -> None:
        """Take stock (after `plan`): what a killed run left out of the index counts as pending."""
        if not self.every:
            return
        state = read_state(self.directory)
        cached = set((state.index or {}).get("commits", {}))
        names = {n for n, _ in state.accepted + state.duplicates} | set(state.torn)
        self.indexed, self.pending = names & cached, names - cached
        if cached - names:  # the index names records `plan` withdrew: every reader would open every record
            self.refresh()
        else:
            self._maybe_refresh()

    def committed(self, name: str) -> None:
        """One commit record written by this process (the single-process launcher's writer)."""
        if self.every:
            self.pending.add(name)
            self._maybe_refresh()

    def poll(self) -> None:
        """Look for records other processes committed (the Beam launcher's workers): one listing."""
        if not self.every:
            return
        listed = set(record_names(self.directory))
        self.pending |= listed - self.indexed
        self._maybe_refresh()

    def _maybe_refresh(self) -> None:
        if len(self.pending) >= self.every:
            self.refresh()

    def refresh(self) -> None:
        """Rewrite the index from the commit records now there (marked unfinished)."""
        state = read_state(self.directory)
        if state.header is None:
            return
        write_index(self.directory, state, None)
        # Duplicates and torn records are never indexed; counting them as covered stops a rewrite per poll.
        self.indexed = {n for n, _ in state.accepted + state.duplicates} | set(state.torn)
        self.pending -= self.indexed
        self.refreshes += 1
        log.debug("index of %s rewritten: %d commit records", self.directory, len(state.accepted))
