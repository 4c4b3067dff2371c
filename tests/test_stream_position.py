"""A training stream restarted at a step continues exactly where the uninterrupted one was, reading at most one pass."""
import time

import numpy as np
import pytest
import tensorflow as tf

from audionet_tf.dataset import reader
from audionet_tf.dataset.synthetic import write_synthetic_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("stream") / "d"
    # 6 clips of 2 s = 300 training windows in 6 shards: several files, a pass that is not a whole number of batches.
    write_synthetic_dataset(str(path), clips=6, seconds=2.0, num_classes=8, kinds=3, shard_size=50)
    return str(path)


def batches(ds, count):
    """The first `count` batches' audio, each window reduced to a fingerprint."""
    out = []
    for audio, logits in ds.take(count):
        out.append(np.round(audio.numpy()[:, :, 0].sum(axis=1) * 1e4).astype(np.int64))
    return out


def stream(dataset, cache, skip=0, context=None, batch=32):
    options = reader.ReadOptions(shuffle=True, seed=3, cache=cache, repeat=True, shuffle_buffer=64, verify=False)
    return reader.make_dataset(dataset, "train", batch, options, skip_steps=skip, input_context=context)


@pytest.mark.parametrize("cache", ["none", "memory"])
def test_a_restarted_stream_goes_on_exactly_where_it_was(dataset, cache):
    whole = batches(stream(dataset, cache), 40)  # 40 batches of 32: more than four passes of 300
    fingerprints = np.concatenate(whole)
    per_pass = 300
    # Each pass holds every training window once, in an order of its own.
    first, second = fingerprints[:per_pass], fingerprints[per_pass:2 * per_pass]
    assert sorted(first) == sorted(second) and list(first) != list(second)
    for skip in (1, 9, 10, 23):  # inside the first pass, across pass boundaries, several passes on
        resumed = batches(stream(dataset, cache, skip), 40 - skip)
        for k, (got, want) in enumerate(zip(resumed, whole[skip:])):
            np.testing.assert_array_equal(got, want, err_msg=f"skip {skip}, batch {k}")
    # At most one pass is read: the first batch after 10,000 steps (over a thousand passes on) comes about as
    # fast as a fresh start's first (reading every pass before it takes over ten seconds here).
    seconds = {}
    for skip in (0, 10_000):
        start = time.monotonic()
        next(iter(stream(dataset, cache, skip)))
        seconds[skip] = time.monotonic() - start
    assert seconds[10_000] < 3 * seconds[0] + 1.0, seconds


def test_each_worker_restarts_its_own_part_of_the_stream(dataset):
    one_pass = sorted(np.concatenate(batches(stream(dataset, "none"), 10))[:300])
    parts = []
    for worker in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker, num_replicas_in_sync=2)
        whole = batches(stream(dataset, "none", context=context), 30)
        resumed = batches(stream(dataset, "none", skip=13, context=context), 17)
        for got, want in zip(resumed, whole[13:]):
            np.testing.assert_array_equal(got, want)
        parts.append(np.concatenate(whole)[:150])  # 6 shards of 50 split by file: a pass of this worker's 3
    # The two workers read disjoint parts that together are the whole training split, each window once.
    shared = set(parts[0]) & set(parts[1])
    assert not shared, f"both workers read {len(shared)} of the same windows"
    assert sorted(np.concatenate(parts)) == one_pass
