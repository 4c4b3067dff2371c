"""The dataset format and its input pipeline, on real TFRecord files written by the tests."""
import hashlib
import json
import os

import numpy as np
import pytest

from audionet_tf.core.errors import DatasetError
from audionet_tf.dataset import catalog, reader, records
from audionet_tf.dataset.writer import DatasetWriter


def write_dataset(path, clips=3, frames=10, num_classes=6, window=64, audio_format="int16",
                  logits_format="float16", shard_size=7, validation=("clip2",)):
    """A small real dataset whose windows and logits encode (clip, frame) so tests can check them."""
    spec = records.DatasetSpec(window_samples=window, num_classes=num_classes, teacher="test",
                               audio_format=audio_format, logits_format=logits_format)
    writer = DatasetWriter(str(path), spec, shard_size=shard_size)
    expected = {}
    for c in range(clips):
        clip_id = f"clip{c}"
        windows = np.stack([np.full(window, (c * 100 + k) / 1000.0) for k in range(frames)]).astype(np.float32)
        logits = np.zeros((frames, num_classes), np.float32)
        logits[:, c % num_classes] = 5.0
        logits[:, -1] = np.arange(frames) / 4.0
        split = "validation" if clip_id in validation else "train"
        writer.add(split, windows, logits, clip_id, np.arange(frames) * 0.04)
        expected[clip_id] = (split, windows, logits)
    clip_docs = [{"id": cid, "split": s, "status": "ok", "examples": frames} for cid, (s, _, _) in expected.items()]
    writer.finish(clips=clip_docs, class_names=[f"c{i}" for i in range(num_classes)])
    return expected


@pytest.mark.parametrize("audio_format,logits_format", [("int16", "float16"), ("float32", "float32")])
def test_round_trip_through_shards(tmp_path, audio_format, logits_format):
    expected = write_dataset(tmp_path, audio_format=audio_format, logits_format=logits_format)
    description = catalog.read_description(str(tmp_path))
    assert description.examples("train") == 20 and description.examples("validation") == 10
    assert len(description.shards_for("train")) == 3  # 7 + 7 + 6
    doc = json.loads((tmp_path / records.DESCRIPTION_FILE).read_text())
    for key in ("schema_version", "sample_rate", "window_samples", "frame_period_ms", "num_classes", "teacher",
                "class_names_file"):
        assert key in doc
    (name,) = os.listdir(tmp_path / "commits")
    record = json.loads((tmp_path / "commits" / name).read_text())
    assert all(len(s["sha256"]) == 64 and s["examples"] > 0 for s in record["shards"])
    for shard in record["shards"]:  # the checksum counted while writing is the file's
        assert hashlib.sha256((tmp_path / shard["file"]).read_bytes()).hexdigest() == shard["sha256"]
    assert sorted(c["id"] for c in record["clips"]) == sorted(expected)
    arrays = reader.load_arrays(str(tmp_path), "all")
    tolerance = 1.0 / 32767 if audio_format == "int16" else 1e-7
    for clip_id, (_, windows, logits) in expected.items():
        mine = arrays["clip_id"] == clip_id
        np.testing.assert_allclose(arrays["audio"][mine], windows, atol=tolerance)
        np.testing.assert_allclose(arrays["logits"][mine], logits, atol=2e-3)
        np.testing.assert_allclose(arrays["time"][mine], np.arange(10) * 0.04, atol=1e-6)
    assert catalog.read_class_names(str(tmp_path)) == [f"c{i}" for i in range(6)]


def test_nothing_is_readable_until_committed_and_no_temporary_files_left(tmp_path):
    spec = records.DatasetSpec(window_samples=8, num_classes=2)
    writer = DatasetWriter(str(tmp_path), spec, shard_size=3)
    writer.add("train", np.zeros((5, 8)), np.zeros((5, 2)), "a", np.arange(5))
    # One shard is complete, one is still open under a temporary name.
    names = os.listdir(tmp_path)
    assert records.DESCRIPTION_FILE not in names
    assert sum(n.endswith(records.SHARD_SUFFIX) for n in names) == 1
    assert any(n.endswith(".tmp") for n in names)
    with pytest.raises(DatasetError, match="no clip of it is committed"):
        reader.make_dataset(str(tmp_path))
    writer.finish()
    names = os.listdir(tmp_path)
    assert not any(n.endswith(".tmp") for n in names)
    assert catalog.read_description(str(tmp_path)).examples() == 5


def test_pipeline_batches_windows_and_logits(tmp_path):
    write_dataset(tmp_path)
    ds = reader.make_dataset(str(tmp_path), "train", 8, reader.ReadOptions(seed=1, deterministic=True))
    batches = list(ds)
    assert [b[0].shape[0] for b in batches] == [8, 8, 4]
    assert batches[0][0].shape[1:] == (64, 1) and batches[0][1].shape[1:] == (6,)
    seen = np.sort(np.concatenate([b[0].numpy()[:, 0, 0] for b in batches]))
    np.testing.assert_allclose(seen, np.sort([(c * 100 + k) / 1000 for c in (0, 1) for k in range(10)]), atol=1e-4)

    # The same seed gives the same order; another seed another.
    def first_samples(seed):
        return np.concatenate([b[0].numpy()[:, 0, 0] for b in
                               reader.make_dataset(str(tmp_path), "train", 8, reader.ReadOptions(seed=seed))])

    again, other = first_samples(1), first_samples(2)
    first = np.concatenate([b[0].numpy()[:, 0, 0] for b in batches])
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_held_out_clips_stay_out_of_training(tmp_path):
    write_dataset(tmp_path, validation=("clip1",))
    train_values = np.concatenate([x.numpy()[:, 0, 0] for x, _ in reader.make_dataset(str(tmp_path), "train", 64)])
    val_values = np.concatenate([x.numpy()[:, 0, 0] for x, _ in reader.make_dataset(str(tmp_path), "validation", 64)])
    assert len(train_values) == 20 and len(val_values) == 10
    assert np.all((train_values < 0.05) | (train_values > 0.15))
    assert np.all((val_values > 0.05) & (val_values < 0.15))


@pytest.mark.parametrize("expect,message", [
    ({"expect_window": 640}, "window length"),
    ({"expect_sample_rate": 22050}, "sample rate"),
    ({"expect_classes": 1000}, "class count"),
])
def test_refuses_a_dataset_that_does_not_fit_the_model(tmp_path, expect, message):
    write_dataset(tmp_path)
    with pytest.raises(DatasetError, match=message) as info:
        reader.make_dataset(str(tmp_path), options=reader.ReadOptions(**expect))
    assert str(tmp_path) in str(info.value)


def test_truncated_shard_is_named(tmp_path):
    write_dataset(tmp_path)
    shard = catalog.read_description(str(tmp_path)).shards_for("train")[1]
    path = tmp_path / shard.file
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DatasetError, match="truncated") as info:
        reader.make_dataset(str(tmp_path))
    assert shard.file in str(info.value)


def test_corrupt_shard_is_named(tmp_path):
    write_dataset(tmp_path)
    shard = catalog.read_description(str(tmp_path)).shards_for("train")[0]
    path = tmp_path / shard.file
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="checksum") as info:
        reader.make_dataset(str(tmp_path))
    assert shard.file in str(info.value)


def test_missing_directory_says_how_to_make_one(tmp_path):
    with pytest.raises(DatasetError, match="audionet_tf.prepare"):
        reader.make_dataset(str(tmp_path / "nothing-here"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no clip of it is committed"):
        reader.make_dataset(str(tmp_path / "empty"))
