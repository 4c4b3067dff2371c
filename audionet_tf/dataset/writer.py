"""A whole dataset written at once, for tools and tests: shards per split, then one commit record
(`preparation` commits in groups through `commits.CommitWriter` instead)."""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from audionet_tf.core import storage
from audionet_tf.dataset import catalog, commits
from audionet_tf.dataset.records import SHARD_SUFFIX, SPLITS, DatasetSpec, Description, ShardInfo, make_example


class DatasetWriter:
    """Writes examples into shards of at most `shard_size` per split; `finish()` commits them with the clips.

    For tools and tests that write a whole dataset at once (`prepare` commits in groups
    through `commits.CommitWriter`). Shard names carry a token unique to this writer.
    """

    def __init__(self, directory: str, spec: DatasetSpec, shard_size: int = 1024, token: str | None = None):
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
        if split not in self._open:
            index = self._index.get(split, 0)
            self._index[split] = index + 1
            self._open[split] = commits.ShardWriter(self.directory, f"{split}-{self.token}-{index:05d}{SHARD_SUFFIX}", split)
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
        self.flush()
        commits.write_header(self.directory, self.spec, class_names, extra)
        clips = list(clips)
        commits.write_record(self.directory, commits.commit_name(self.token, 0), self.finished, clips, self.token)
        state = commits.read_state(self.directory)
        finished = {"clips": len(state.clip_docs())}
        commits.write_index(self.directory, state, finished)
        return catalog.read_description(self.directory)
