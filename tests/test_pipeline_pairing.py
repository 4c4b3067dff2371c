"""After shuffling, every window still comes with its own teacher logits: a dataset whose logits encode
their window, read back through `reader.make_dataset` with the cache on and off."""
import numpy as np
import pytest

from audionet_tf.dataset import reader, records
from audionet_tf.dataset.writer import DatasetWriter

WINDOW, CLASSES = 640, 10
CLIPS, PER_CLIP = 6, 45  # 270 examples in shards of 32: ten shards, clips spread across them


def window_of(index: int) -> np.ndarray:
    """Example `index`'s audio: a pattern that differs for every index and every sample, exact in the int16 format."""
    j = np.arange(WINDOW)
    return ((((index * 613 + j * 7) % 20000) - 10000) / records.INT16_SCALE).astype(np.float32)


def logits_of(window: np.ndarray) -> np.ndarray:
    """Teacher logits computed from the window's content: its first sample and the sums of nine slices
    of it, in int16 units (exact in float32)."""
    codes = np.round(window * records.INT16_SCALE)
    return np.concatenate([codes[:1], codes[:-1].reshape(CLASSES - 1, -1).sum(axis=1)]).astype(np.float32)


FIRST_SAMPLE = {int(round(window_of(i)[0] * records.INT16_SCALE)): i for i in range(CLIPS * PER_CLIP)}
assert len(FIRST_SAMPLE) == CLIPS * PER_CLIP  # the first sample alone tells the example


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("pairing") / "data")
    spec = records.DatasetSpec(window_samples=WINDOW, num_classes=CLASSES, teacher="pairing",
                               logits_format="float32")
    writer = DatasetWriter(directory, spec, shard_size=32, token="t")
    for clip in range(CLIPS):
        indices = range(clip * PER_CLIP, (clip + 1) * PER_CLIP)
        windows = np.stack([window_of(i) for i in indices])
        logits = np.stack([logits_of(w) for w in windows])
        writer.add("train", windows, logits, f"clip_{clip}", np.arange(PER_CLIP) * 0.04)
    writer.finish(class_names=[f"c{i}" for i in range(CLASSES)])
    return directory


def check_pass(batches, expected_count):
    """Every (window, logits) pair matches; every example appears exactly once; returns the order."""
    seen = []
    for audio, logits in batches:
        audio, logits = audio.numpy()[..., 0], logits.numpy()
        for window, row in zip(audio, logits):
            np.testing.assert_array_equal(row, logits_of(window))  # logits computed from this very window
            index = FIRST_SAMPLE[int(round(window[0] * records.INT16_SCALE))]
            np.testing.assert_array_equal(window, window_of(index))
            seen.append(index)
    assert sorted(seen) == list(range(expected_count))
    return seen


@pytest.mark.parametrize("cache", ["memory", "none"])
@pytest.mark.parametrize("deterministic", [False, True])
def test_shuffled_batches_keep_each_window_with_its_logits(dataset, cache, deterministic):
    ds = reader.make_dataset(dataset, "train", 32, reader.ReadOptions(shuffle=True, seed=5, cache=cache,
                                                                      deterministic=deterministic, shuffle_buffer=64))
    first = check_pass(ds, CLIPS * PER_CLIP)
    check_pass(ds, CLIPS * PER_CLIP)  # a second iteration too
    assert first != list(range(CLIPS * PER_CLIP))  # shuffled, not read in order
    # Shuffled across clips and shards, not only within a batch.
    assert {index // PER_CLIP for index in first[:32]} != {first[0] // PER_CLIP}


def test_repeated_dataset_keeps_pairs_across_epochs(dataset):
    ds = reader.make_dataset(dataset, "train", 54,
                             reader.ReadOptions(shuffle=True, seed=1, cache="memory", repeat=True))
    epoch = CLIPS * PER_CLIP // 54
    batches = list(ds.take(2 * epoch))
    first = check_pass(batches[:epoch], CLIPS * PER_CLIP)
    second = check_pass(batches[epoch:], CLIPS * PER_CLIP)
    assert first != second  # each epoch in a new order, pairs intact
