"""The input pipeline: a dataset directory's shards → batches of (windows [B, L, 1], teacher logits [B, C]).

One chain, in one function (`make_dataset`): list the split's shards → shuffle and shard the
files (per input pipeline) → interleave → batch → parse (`tf.io.parse_example`) → decode →
unbatch → cache in memory when it fits → shuffle examples with a seed → batch → prefetch.
Only committed shards are read (see `commits`; a dataset whose preparation has not
finished is read as committed so far, with a warning). Shards are checked against their
commit records (size, and SHA-256 for datasets that fit in memory) before reading, so a
truncated or corrupt shard is named instead of surfacing as a bare DataLossError in the
middle of training. Paths may be local or URLs (`gs://`, `ram://`): see `storage`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from audionet_tf.core import storage
from audionet_tf.core.errors import DatasetError
from audionet_tf.dataset import catalog, context, records

log = logging.getLogger(__name__)

# Decoded windows + logits above this size are streamed rather than cached ("auto").
DEFAULT_CACHE_LIMIT_MB = 2048
# Above this many shard bytes the start-up check compares sizes only, not checksums.
CHECKSUM_LIMIT_BYTES = 1 << 30


def check_description(data_dir: str, description: records.Description, *, expect_window: int | None = None,
                      expect_sample_rate: int | None = None, expect_classes: int | None = None) -> None:
    """Refuse a dataset whose window, sample rate or class count does not match what the model expects."""
    spec = description.spec
    for what, found, wanted in (("window length (samples)", spec.window_samples, expect_window),
                                ("sample rate", spec.sample_rate, expect_sample_rate),
                                ("class count", spec.num_classes, expect_classes)):
        if wanted is not None and found != wanted:
            raise DatasetError(f"dataset {data_dir} has {what} {found}, but the model expects {wanted}; "
                               f"prepare it again with matching settings or change the model's settings to match")


def split_files(data_dir: str, description: records.Description, split: str) -> list[str]:
    """Paths of the shards of `split` ("train", "validation" or "all")."""
    if split == "all":
        shards = description.shards
    elif split in records.SPLITS:
        shards = description.shards_for(split)
    else:
        raise ValueError(f"split must be one of {records.SPLITS + ('all',)}, got {split!r}")
    return [storage.join(data_dir, s.file) for s in shards if s.examples > 0]


def decoded_bytes(description: records.Description, split: str = "all") -> int:
    """Memory that the decoded float32 windows and logits of a split take."""
    count = description.examples(None if split == "all" else split)
    return count * 4 * (description.spec.window_samples + description.spec.num_classes)


@dataclass(frozen=True)
class ReadOptions:
    """How `make_dataset` reads a split: order, caching, which clips, and what to check first."""

    shuffle: bool = True
    seed: int = 0
    cache: str = "auto"  # "memory", "none", or "auto": in memory when the decoded split fits cache_limit_mb
    deterministic: bool = False
    repeat: bool = False
    clip_ids: tuple[str, ...] | None = None  # only these clips
    exclude_clip_ids: tuple[str, ...] | None = None
    expect_window: int | None = None  # refuse a dataset whose window, rate or class count differs
    expect_sample_rate: int | None = None
    expect_classes: int | None = None
    drop_remainder: bool = False
    shuffle_buffer: int = 10000
    cache_limit_mb: int = DEFAULT_CACHE_LIMIT_MB
    verify: bool = True  # check shard sizes (and checksums, up to CHECKSUM_LIMIT_BYTES) before reading
    # Windows of this many samples centred on each frame, rebuilt from neighbouring frames (`context`);
    # None: the dataset's own windows.
    window_samples: int | None = None


def make_dataset(data_dir: str, split: str = "train", batch_size: int = 512, options: ReadOptions | None = None, *,
                 description: records.Description | None = None, input_context=None, skip_steps: int = 0):
    """Batches of (windows `[B, L, 1]` float32 in [-1, 1], teacher logits `[B, C]` float32).

    `batch_size` is the global batch. `description` is the dataset's, when the caller has read it
    already. With an `input_context` (from `strategy.distribute_datasets_from_function`) the dataset
    yields per-replica batches: a split cached in memory is read whole by every worker, which takes
    its slice of each global batch (so N workers see exactly the batches one would); a streamed split
    is sharded by file across workers (by example when there are fewer files than workers).

    A shuffled, repeated stream's order is a function of the seed alone (each pass's order, a
    permutation of the cached split or of the streamed files, is drawn from the seed and the
    pass's number), so `skip_steps` (the global steps already trained) restarts it exactly
    where it stopped, reading at most one pass.
    """
    import tensorflow as tf

    o = options or ReadOptions()
    shuffle, seed, cache, repeat, drop_remainder = o.shuffle, o.seed, o.cache, o.repeat, o.drop_remainder
    description = description or catalog.read_description(data_dir)
    check_description(data_dir, description, expect_window=o.expect_window, expect_sample_rate=o.expect_sample_rate,
                      expect_classes=o.expect_classes)
    files = split_files(data_dir, description, split)
    if not files:
        raise DatasetError(f"dataset {data_dir} has no examples in its {split!r} split")
    if o.verify:
        total = sum(s.bytes for s in description.shards if split == "all" or s.split == split)
        catalog.verify_shards(data_dir, description, checksums=total <= CHECKSUM_LIMIT_BYTES,
                              splits=records.SPLITS if split == "all" else (split,))
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    spec = description.spec
    if o.window_samples is not None and o.window_samples != spec.window_samples:
        return _context_dataset(data_dir, description, split, batch_size, o, input_context, skip_steps)
    include = None if o.clip_ids is None else sorted(set(o.clip_ids))
    exclude = None if o.exclude_clip_ids is None else sorted(set(o.exclude_clip_ids))

    in_memory = cache == "memory" or (cache == "auto" and
                                      decoded_bytes(description, split) <= o.cache_limit_mb * (1 << 20))
    if cache not in ("auto", "memory", "none"):
        raise ValueError(f"cache must be 'auto', 'memory' or 'none', got {cache!r}")
    # A cached split is read once: reading it in order costs nothing and makes the order
    # depend on the seed alone.
    ordered = o.deterministic or in_memory
    workers = input_context.num_input_pipelines if input_context is not None else 1
    worker = input_context.input_pipeline_id if input_context is not None else 0
    per_replica = input_context.get_per_replica_batch_size(batch_size) if input_context is not None else batch_size
    if batch_size % workers:
        raise ValueError(f"batch size {batch_size} does not split evenly across {workers} workers")
    shard_files = workers > 1 and not in_memory and len(files) >= workers
    shard_examples = workers > 1 and not in_memory and len(files) < workers
    file_ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        file_ds = file_ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=False)
    if shard_files:
        file_ds = file_ds.shard(workers, worker)
    feature_spec = records.feature_spec()

    def parse(serialized):
        parsed = tf.io.parse_example(serialized, feature_spec)
        audio, logits = records.decode_parsed(parsed, spec)
        return audio, logits, parsed[records.CLIP_ID_KEY]

    if include is not None and not include:
        raise DatasetError(f"no clip ids given to select from dataset {data_dir}")

    def source(names=file_ds, in_order: bool = ordered):
        """One read of this pipeline's examples, from the files `names` yields."""
        ds = names.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 8),
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=in_order or None)
        ds = ds.batch(1024).map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=in_order or None)
        ds = ds.unbatch()
        if shard_examples:
            ds = ds.shard(workers, worker)
        if include is not None:
            wanted = tf.constant(include, dtype=tf.string)
            ds = ds.filter(lambda a, l, c: tf.reduce_any(tf.equal(c, wanted)))
        if exclude:
            unwanted = tf.constant(exclude, dtype=tf.string)
            ds = ds.filter(lambda a, l, c: tf.logical_not(tf.reduce_any(tf.equal(c, unwanted))))
        return ds.map(lambda a, l, c: (a, l), num_parallel_calls=tf.data.AUTOTUNE, deterministic=in_order or None)

    if in_memory and shuffle:
        # The whole split is one cached element; each pass permutes it with a stateless
        # shuffle seeded by (seed, pass), so the order depends on nothing but the seed, also
        # when tf.distribute rebuilds the pipeline per replica.
        count = description.examples(None if split == "all" else split)
        whole = source().batch(max(1, count)).cache()
        # Every worker reads the global stream here, so the position is in global batches.
        first_pass, offset = _position(skip_steps * batch_size, count, include or exclude)
        passes = tf.data.Dataset.counter(start=first_pass)
        ds = tf.data.Dataset.zip((passes, whole.repeat() if repeat else whole))

        def permute(index, pair):
            audio, logits = pair
            order = tf.random.experimental.stateless_shuffle(
                tf.range(tf.shape(audio)[0]), seed=tf.stack([tf.cast(seed, tf.int64), index]))
            begin = tf.where(tf.equal(index, first_pass), tf.constant(offset, tf.int32), 0)
            return tf.gather(audio, order[begin:]), tf.gather(logits, order[begin:])

        ds = ds.map(permute).rebatch(batch_size, drop_remainder=drop_remainder)
        if workers > 1:
            part = batch_size // workers
            ds = ds.map(lambda a, l: (a[worker * part:(worker + 1) * part], l[worker * part:(worker + 1) * part]))
        if per_replica != batch_size // workers:
            ds = ds.rebatch(per_replica, drop_remainder=drop_remainder)
    else:
        count = description.examples(None if split == "all" else split)
        if shuffle and repeat and not in_memory:
            # Streamed: each pass is read anew with seeds derived from (seed, pass), in a fixed
            # order, so a resume starts at its pass and skips only the part of it already seen.
            my_files = [name.decode() for name in file_ds.as_numpy_iterator()]
            mine = _pipeline_examples(my_files, data_dir, description, count, shard_files, shard_examples,
                                      workers, worker)
            first_pass, offset = _position(skip_steps * (batch_size // workers), mine, include or exclude)
            buffer = max(1, min(o.shuffle_buffer, count))

            def one_pass(index):
                # The pass's own file order (a stateless shuffle of (seed, pass)), then the buffer's
                # shuffle: a tensor seed there fails once a global seed is set, so its seed is fixed
                # and the pass's order comes from the files.
                order = tf.random.experimental.stateless_shuffle(
                    tf.range(len(my_files)), seed=tf.stack([tf.cast(seed, tf.int64), index]))
                names = tf.data.Dataset.from_tensor_slices(tf.gather(tf.constant(my_files), order))
                return source(names, in_order=True).shuffle(buffer, seed=seed)

            ds = tf.data.Dataset.counter(start=first_pass).flat_map(one_pass).skip(offset)
        else:
            ds = source()
            if in_memory:
                ds = ds.cache()
            if shuffle:
                ds = ds.shuffle(max(1, min(o.shuffle_buffer, count)), seed=seed, reshuffle_each_iteration=True)
            if repeat:
                ds = ds.repeat()
            if skip_steps:
                ds = ds.skip(skip_steps * (batch_size // workers))
        if in_memory and workers > 1:  # unshuffled: each worker's slice of the global batches
            ds = ds.batch(batch_size, drop_remainder=drop_remainder)
            part = batch_size // workers
            ds = ds.map(lambda a, l: (a[worker * part:(worker + 1) * part], l[worker * part:(worker + 1) * part]))
            ds = ds.rebatch(per_replica, drop_remainder=drop_remainder)
        else:
            ds = ds.batch(per_replica, drop_remainder=drop_remainder)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    tf_options = tf.data.Options()
    tf_options.deterministic = bool(o.deterministic)
    if input_context is None:
        # The shards are assigned to workers by file when there are enough, else by data.
        tf_options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.FILE if len(files) >= 2 else tf.data.experimental.AutoShardPolicy.DATA)
    return ds.with_options(tf_options)


def _context_dataset(data_dir: str, description: records.Description, split: str, batch_size: int, o: ReadOptions,
                     input_context, skip_steps: int):
    """`make_dataset` for long windows rebuilt from each split's frames (`context`): always from memory.

    The order is the in-memory path's (a stateless shuffle of (seed, pass) over the split), so a resume
    restarts where it stopped; each worker takes its slice of every global batch.
    """
    import tensorflow as tf

    arrays = load_arrays(data_dir, split, clip_ids=o.clip_ids, window_samples=o.window_samples,
                         description=description, verify=False)
    if o.exclude_clip_ids:
        keep = ~np.isin(arrays["clip_id"], np.array(sorted(set(o.exclude_clip_ids)), dtype=object))
        arrays = {"audio": arrays["audio"].subset(keep), **{k: v[keep] for k, v in arrays.items() if k != "audio"}}
    windows = arrays["audio"]
    count = len(windows)
    if not count:
        raise DatasetError(f"dataset {data_dir} has no examples in its {split!r} split")
    if windows.nbytes > o.cache_limit_mb * (1 << 20):
        raise DatasetError(f"dataset {data_dir}: the rebuilt audio of its {split!r} split takes "
                           f"{windows.nbytes / (1 << 20):.0f} MB, over train.cache_limit_mb = {o.cache_limit_mb}; "
                           f"raise it, or train on a smaller set")
    workers = input_context.num_input_pipelines if input_context is not None else 1
    worker = input_context.input_pipeline_id if input_context is not None else 0
    per_replica = input_context.get_per_replica_batch_size(batch_size) if input_context is not None else batch_size
    if batch_size % workers:
        raise ValueError(f"batch size {batch_size} does not split evenly across {workers} workers")
    width = windows.window
    buffer = tf.constant(windows.buffer)
    starts, logits = windows.starts, np.asarray(arrays["logits"], np.float32)
    if o.shuffle:
        first_pass, offset = _position(skip_steps * batch_size, count, None)
        whole = tf.data.Dataset.from_tensors((starts, logits))
        ds = tf.data.Dataset.zip((tf.data.Dataset.counter(start=first_pass), whole.repeat() if o.repeat else whole))

        def permute(index, pair):
            where, teacher = pair
            order = tf.random.experimental.stateless_shuffle(
                tf.range(tf.shape(where)[0]), seed=tf.stack([tf.cast(o.seed, tf.int64), index]))
            begin = tf.where(tf.equal(index, first_pass), tf.constant(offset, tf.int32), 0)
            return tf.gather(where, order[begin:]), tf.gather(teacher, order[begin:])

        ds = ds.map(permute).rebatch(batch_size, drop_remainder=o.drop_remainder)
    else:
        ds = tf.data.Dataset.from_tensor_slices((starts, logits))
        if o.repeat:
            ds = ds.repeat()
        if skip_steps:
            ds = ds.skip(skip_steps * batch_size)
        ds = ds.batch(batch_size, drop_remainder=o.drop_remainder)
    if workers > 1:
        part = batch_size // workers
        ds = ds.map(lambda a, l: (a[worker * part:(worker + 1) * part], l[worker * part:(worker + 1) * part]))
    if per_replica != batch_size // workers:
        ds = ds.rebatch(per_replica, drop_remainder=o.drop_remainder)

    def cut(where, teacher):
        audio = tf.map_fn(lambda s: tf.slice(buffer, tf.reshape(s, [1]), [width]), where,
                          fn_output_signature=tf.TensorSpec([width], tf.float32))
        return tf.reshape(audio, [-1, width, 1]), teacher

    ds = ds.map(cut, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)
    tf_options = tf.data.Options()
    tf_options.deterministic = True
    if input_context is None:
        tf_options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(tf_options)


def _position(examples: int, per_pass: int, filtered) -> tuple[int, int]:
    """(pass, offset in it) of a stream position counted in examples."""
    if not examples:
        return 0, 0
    if filtered:
        raise ValueError("a stream filtered by clip ids cannot be started part-way")
    return divmod(int(examples), max(1, int(per_pass)))


def _pipeline_examples(my_files: list[str], data_dir: str, description: records.Description, count: int, shard_files: bool,
                       shard_examples: bool, workers: int, worker: int) -> int:
    """How many examples one pass of this input pipeline holds (its files, or its share of the examples)."""
    if shard_files:
        sizes = {storage.join(data_dir, s.file): s.examples for s in description.shards}
        return sum(sizes[name] for name in my_files)
    if shard_examples:
        return len(range(worker, count, workers))
    return count


def load_arrays(data_dir: str, split: str = "all", clip_ids: Iterable[str] | None = None, *,
                window_samples: int | None = None, description: records.Description | None = None,
                verify: bool = True) -> dict[str, Any]:
    """A split's examples as NumPy arrays: audio `[N, L]`, logits `[N, C]`, clip_id `[N]`, time `[N]`.

    With `window_samples` other than the dataset's, audio is a `context.ContextWindows` of that width
    centred on each frame, rebuilt from each split's own frames (held-out audio never enters a
    training frame's window; "all" rebuilds the two splits apart).
    """
    description = description or catalog.read_description(data_dir)
    if window_samples is not None and window_samples != description.spec.window_samples:
        splits = records.SPLITS if split == "all" else (split,)
        parts = []
        for one in splits:
            if description.examples(one) == 0:
                continue
            arrays = load_arrays(data_dir, one, clip_ids, description=description, verify=verify)
            if not len(arrays["time"]):
                continue
            parts.append((context.context_windows(arrays, description.spec, window_samples, data_dir), arrays))
        if not parts:
            raise DatasetError(f"dataset {data_dir} has no examples in its {split!r} split")
        if len(parts) == 1:
            windows, arrays = parts[0]
            return {**arrays, "audio": windows}
        # One buffer for both splits, windows in clip-then-time order as for the dataset's own windows.
        offsets = np.cumsum([0] + [len(w.buffer) for w, _ in parts[:-1]])
        windows = context.ContextWindows(np.concatenate([w.buffer for w, _ in parts]),
                                         np.concatenate([w.starts + off for (w, _), off in zip(parts, offsets)]),
                                         window_samples)
        merged = {k: np.concatenate([a[k] for _, a in parts]) for k in ("logits", "clip_id", "time")}
        order = np.lexsort((merged["time"], merged["clip_id"].astype(str)))
        return {**{k: v[order] for k, v in merged.items()}, "audio": windows.subset(order)}
    files = split_files(data_dir, description, split)
    if verify:
        catalog.verify_shards(data_dir, description, checksums=True,
                              splits=records.SPLITS if split == "all" else (split,))
    if not files:
        raise DatasetError(f"dataset {data_dir} has no examples in its {split!r} split")
    parts = [records.read_examples(f, description.spec) for f in files]
    keys = ("audio", "logits", "clip_id", "time")
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in keys}
    if clip_ids is not None:
        keep = np.isin(arrays["clip_id"], np.array(sorted(set(clip_ids)), dtype=object))
        arrays = {k: v[keep] for k, v in arrays.items()}
    # Shards interleave clips; order by clip then time so each clip's windows are consecutive.
    order = np.lexsort((arrays["time"], arrays["clip_id"].astype(str)))
    return {k: v[order] for k, v in arrays.items()}
