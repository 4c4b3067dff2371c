"""A run directory and an export in an object store (`--runs-dir` / `--export-dir` URLs): every file of the run
lands there, the same command resumes from the backup there, and nothing is made on the local disk in its place."""
import json
import os
import signal
import uuid

import numpy as np
import pytest

from audionet_tf.commands import train
from audionet_tf.dataset.synthetic import write_synthetic_dataset
from saved_state import saved_state

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
    reference = saved_state((tmp_path / "runs" / "cloud" / "model.keras").read_bytes())

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
    final = saved_state(model_bytes)
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



# What a run writes to its directory, done by the project's own code with TensorFlow's GCS client. The whole train
# command cannot run against gcp-storage-emulator: TensorFlow marks a directory it creates (TensorBoard's log
# directories) with an empty object, and the emulator's media upload fails on an empty body (its handler takes
# len(None)) and closes the connection.
GCS_SCRIPT = """
import json, sys
import numpy as np, keras, tensorflow as tf
from audionet_tf.core import config as cfg, storage
from audionet_tf.model.student import build_audionet
from audionet_tf.serving.export import export_model
from audionet_tf.training import callbacks as cb
from audionet_tf.training.backup import Backup
from audionet_tf.training.trainer import compile_student

run, out = sys.argv[1], sys.argv[2]
def student():
    model = build_audionet(None, 12)
    compile_student(model, cfg.TrainConfig(learning_rate=0.01))
    return model
model = student()
rng = np.random.default_rng(0)
x, y = rng.standard_normal((16, 640, 1)).astype("float32"), rng.standard_normal((16, 12)).astype("float32")
model.fit(x, y, epochs=1, batch_size=8, verbose=0)  # optimizer state worth restoring
storage.write_bytes(storage.join(run, "config.json"), b'{"run": 1}\\n')
storage.write_bytes(storage.join(run, "config.json"), b'{"run": 2}\\n')  # rewritten whole
backup = Backup(storage.join(run, "backup"), every_epochs=1)
backup.set_model(model)
backup.on_epoch_end(0, {})
checkpoints = cb.Checkpoints(storage.join(run, "checkpoints"), monitor="kl")
checkpoints.set_model(model)
checkpoints.on_epoch_end(0, {"kl": 1.0})
history = cb.History(storage.join(run, "history.csv"))
history.on_epoch_end(0, {"kl": 2.0})
history.on_epoch_end(1, {"kl": 1.0})
cb.save_model_atomically(model, storage.join(run, "model.keras"))
export_model(model, out, class_names=[f"c{i}" for i in range(12)])

again = student()
restored = Backup(storage.join(run, "backup"), every_epochs=1).restore(again)
resumed = cb.History(storage.join(run, "history.csv"))
resumed.resume_at(1)
windows = x[:3, :, 0]
loaded = tf.saved_model.load(out).signatures["serving_default"](windows=tf.constant(windows))["logits"].numpy()
print(json.dumps({
    "restored": list(restored),
    "same_state": all(np.array_equal(a, b) for a, b in zip(model.get_weights() + [v.numpy() for v in model.optimizer.variables],
                                                           again.get_weights() + [v.numpy() for v in again.optimizer.variables])),
    "iterations": int(again.optimizer.iterations.numpy()),
    "keras_file_same": all(np.array_equal(a, b) for a, b in zip(
        model.get_weights(), keras.saving.load_model(storage.join(run, "model.keras"), compile=False).get_weights())),
    "history_rows": [r["epoch"] for r in resumed.rows],
    "config": storage.read_text(storage.join(run, "config.json")),
    "export_max_diff": float(np.max(np.abs(loaded - model.predict(windows[..., None], verbose=0)))),
    "listing": sorted(storage.listdir(run)),
}))
"""


@pytest.mark.slow
def test_a_runs_files_and_export_go_to_a_gcs_server_through_tensorflows_own_client(tmp_path, gcs_emulator):
    """Backups (written, then restored), checkpoints, history, model.keras and the export written by the project's
    code to `gs://` through `tf.io.gfile`'s GCS client, against gcp-storage-emulator on 127.0.0.1 (reached
    through the TLS proxy of `gcs_proxy.py`), and read back both by that client and by Google's own."""
    import subprocess
    import sys

    pytest.importorskip("cryptography", reason="part of the test extra")
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    from gcs_proxy import TlsProxy, make_certificates, tensorflow_env

    ca, cert, key = make_certificates(str(tmp_path))
    port = int(os.environ["STORAGE_EMULATOR_HOST"].rsplit(":", 1)[1])
    proxy = TlsProxy(("127.0.0.1", port), cert, key)
    work = tmp_path / "work"
    work.mkdir()
    try:
        result = subprocess.run([sys.executable, "-c", GCS_SCRIPT, f"{gcs_emulator}/runs/cloud",
                                 f"{gcs_emulator}/saved_models/cloud"], cwd=work, env=tensorflow_env(proxy, ca),
                                capture_output=True, text=True, timeout=400)
    finally:
        proxy.close()
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["restored"] == [1, 0] and report["same_state"] and report["iterations"] == 2, report
    assert report["keras_file_same"] and report["history_rows"] == ["1"] and report["config"] == '{"run": 2}\n'
    assert report["export_max_diff"] < 1e-4, report

    bucket = gcs.Client(project="test", credentials=AnonymousCredentials()).bucket("audionet")
    names = {blob.name for blob in bucket.list_blobs()}
    for name in ("config.json", "history.csv", "model.keras", "checkpoints/last.keras", "checkpoints/best.keras",
                 "checkpoints/best.json", "backup/state.json", "backup/epoch-000001-step-000000000.weights.h5"):
        assert f"runs/cloud/{name}" in names, sorted(names)
    for name in ("saved_model.pb", "model.tflite", "model_int8.tflite", "labels.txt", "metadata.json"):
        assert f"saved_models/cloud/{name}" in names, sorted(names)
    assert [n for n in names if n.startswith("saved_models/cloud/variables/")]
    assert not [n for n in names if "/." in n or n.endswith(".tmp")], sorted(names)  # final names only
    assert set(report["listing"]) >= {"config.json", "history.csv", "model.keras", "backup", "checkpoints"}
    assert not os.path.exists(work / "gs:") and not [n for n in os.listdir(work) if n.startswith("gs")]
