"""What a dataset directory holds, as committed so far: its description, class names and shard checks."""
from __future__ import annotations

import logging
from typing import Sequence

from audionet_tf.core import storage
from audionet_tf.core.errors import DatasetError
from audionet_tf.dataset import commits
from audionet_tf.dataset.records import DESCRIPTION_FILE, SPLITS, Description, LazyClips, file_sha256, spec_from_header

log = logging.getLogger("audionet_tf.dataset")


HOW_TO_PREPARE = ("make one with `python -m audionet_tf.prepare --pipeline demo` "
                  "(offline) or `python -m audionet_tf.prepare --manifest FILE.csv --out DIR`")
RERUN = "rerun the same prepare command (it relabels only the clips that are not committed)"


def read_description(directory: str) -> Description:
    """The dataset as committed so far: header + commit records, with a clear message when there is none."""
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
    description = Description(spec=spec, shards=state.shards(), clips=LazyClips(state.clip_docs()),
                              extra=dict(state.header.get("extra") or {}))
    index = state.index or {}
    complete = index.get("finished") and set(index.get("commits", {})) >= {n for n, _ in state.accepted}
    description.finished = index.get("finished") if complete else None
    if not description.shards:
        raise DatasetError(f"{directory} has no committed examples yet; {RERUN}")
    if description.finished is None:
        ok = state.ok_count()
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
