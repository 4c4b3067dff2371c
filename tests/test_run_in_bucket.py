"""A run directory and an export in an object store (`--runs-dir` / `--export-dir` URLs): every file of the run
lands there, the same command resumes from the backup there, and nothing is made on the local disk in its place."""
import io
import json
import os
import signal
import uuid
import zipfile

import h5py
import numpy as np
import pytest

from audionet_tf.commands import train
from audionet_tf.dataset.synthetic import write_synthetic_dataset

EXIT_STOPPED = 75


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tones"
    # 6 clips of 2 s, 2 held out: 200 training windows, 25 steps per epoch at batch 8 (as test_faults).
    write_synthetic_dataset(str(path), clips=6, seconds=2.0, num_classes=12, kinds=3, holdout=2, shard_size=50)
    return str(path)


def flags(dataset, runs_dir, *extra):
    """A deterministic, streamed run of 3 epochs with one step per execution and a backup every 10 steps."""
    return ["--data", dataset, "--epochs", "3", "--batch-size", "8", "--learning-rate", "0.01", "--name", "cloud",
            "--runs-dir", runs_dir, "--quiet", "--histogram-every", "1000", "--cache", "none", "--deterministic",
            "--steps-per-execution", "1", "--backup-every-steps", "10", "--checkpoint-every", "1", *extra]


def state_of_keras_file(data):
    """Every array of a `.keras` file's state (weights and optimizer variables), by path inside the file."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        handle = h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r")
    arrays = {}
    handle.visititems(lambda name, item: arrays.__setitem__(name, np.array(item))
                      if isinstance(item, h5py.Dataset) else None)
    handle.close()
    return arrays


def files_under(url):
    """Paths (relative to `url`) of every file under it, as TensorFlow's file system lists them."""
    import tensorflow as tf

    found = set()
    for root, _, files in tf.io.gfile.walk(url):
        for name in files:
            found.add(f"{root}/{name}"[len(url) + 1:])
    return found


@pytest.mark.slow
def test_a_run_in_ram_urls_resumes_from_its_backup_there_and_ends_like_a_local_run(dataset, tmp_path, monkeypatch,
                                                                                   caplog):
    import keras
    import tensorflow as tf

    monkeypatch.chdir(tmp_path)
    # The reference: the same run on the local disk, uninterrupted, in this process.
    assert train.main(flags(dataset, str(tmp_path / "runs"), "--no-export", "--no-report")) == 0
    reference = state_of_keras_file((tmp_path / "runs" / "cloud" / "model.keras").read_bytes())

    root = f"ram://bucket-{uuid.uuid4().hex[:8]}"
    args = flags(dataset, f"{root}/runs", "--export-dir", f"{root}/saved_models")

    class SigtermAt(keras.callbacks.Callback):
        """A real SIGTERM to this process after step 37 (epoch 2, step 12), between two of the periodic backups."""

        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) == 37:
                os.kill(os.getpid(), signal.SIGTERM)

    command_train = train.train
    monkeypatch.setattr(train, "train", lambda config, **kw: command_train(
        config, **{**kw, "extra_callbacks": [SigtermAt()]}))
    assert train.main(args) == EXIT_STOPPED
    run = f"{root}/runs/cloud"
    state = json.loads(tf.io.gfile.GFile(f"{run}/backup/state.json").read())
    assert (state["backups"][0]["iterations"], state["backups"][0]["epoch"], state["backups"][0]["step"]) == \
        (38, 1, 13), state
    assert not tf.io.gfile.exists(f"{run}/model.keras")

    class CountSteps(keras.callbacks.Callback):
        steps = 0

        def on_train_batch_end(self, batch, logs=None):
            CountSteps.steps += 1

    # The same command again: it trains only the 75 - 38 steps left after the bucket's backup.
    monkeypatch.setattr(train, "train", lambda config, **kw: command_train(
        config, **{**kw, "extra_callbacks": [CountSteps()]}))
    caplog.clear()
    with caplog.at_level("INFO", logger="audionet_tf"):
        assert train.main(args) == 0
    assert "continuing epoch 2 at step 13 of 25" in caplog.text
    assert CountSteps.steps == 75 - 38
    assert "no lock there" in caplog.text  # what a bucket cannot promise, said at the start

    model_bytes = tf.io.gfile.GFile(f"{run}/model.keras", "rb").read()
    final = state_of_keras_file(model_bytes)
    assert sorted(final) == sorted(reference) and any("optimizer" in name for name in final)
    for name in final:
        np.testing.assert_array_equal(final[name], reference[name], err_msg=name)

    files = files_under(run)
    for name in ("config.json", "labels.txt", "history.csv", "metrics.json", "model.keras", "checkpoints/last.keras",
                 "checkpoints/best.keras", "checkpoints/last.json", "checkpoints/best.json", "backup/state.json",
                 "report/index.html", "report/curves.png", "report/filters.png", "report/distill.json"):
        assert name in files, (name, sorted(files))
    backups = [n for n in files if n.startswith("backup/") and n.endswith(".weights.h5")]
    assert len(backups) == 2 and not [n for n in files if "/." in n or n.startswith(".")], sorted(files)
    for kind in ("train", "validation", "config"):
        assert [n for n in files if n.startswith(f"logs/{kind}/events.out.tfevents")], sorted(files)
    history = tf.io.gfile.GFile(f"{run}/history.csv").read().splitlines()[1:]
    assert [int(line.split(",")[0]) for line in history] == [1, 2, 3]
    png = tf.io.gfile.GFile(f"{run}/report/curves.png", "rb").read()
    assert png.startswith(b"\x89PNG")

    export = f"{root}/saved_models/cloud"
    exported = files_under(export)
    for name in ("saved_model.pb", "model.tflite", "model_int8.tflite", "labels.txt", "metadata.json"):
        assert name in exported, sorted(exported)
    assert [n for n in exported if n.startswith("variables/")]
    loaded = tf.saved_model.load(export)
    windows = np.random.default_rng(0).standard_normal((3, 640)).astype(np.float32) * 0.3
    logits = loaded.signatures["serving_default"](windows=tf.constant(windows))["logits"].numpy()
    expected = keras.saving.load_model(f"{run}/model.keras", compile=False).predict(windows[..., None], verbose=0)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)

    # A URL never becomes a local folder (`ram:` here, or in the dataset's folder).
    assert not os.path.exists(tmp_path / "ram:") and not os.path.exists(os.path.join(dataset, "ram:"))
    assert not [n for n in os.listdir(tmp_path) if n.startswith(("ram", "gs"))]
