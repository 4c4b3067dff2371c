"""Held-out clips are evaluated every `validate_every` epochs, at every checkpoint and at the last epoch."""
import csv
import json
import os

import numpy as np
import pytest

from audionet_tf.commands import train
from audionet_tf.core import config as cfg
from audionet_tf.dataset.records import DatasetSpec
from audionet_tf.dataset.synthetic import write_synthetic_dataset
from audionet_tf.dataset.writer import DatasetWriter
from audionet_tf.evaluation import report
from audionet_tf.training import trainer


def expected_epochs(epochs: int, validate_every: int, checkpoint_every: int, start: int = 0) -> list[int]:
    """The schedule written out directly from its rule."""
    wanted = set(range(validate_every, epochs + 1, validate_every))
    wanted |= set(range(checkpoint_every, epochs + 1, checkpoint_every)) | {epochs}
    return sorted(e for e in wanted if e > start)


@pytest.mark.parametrize("epochs,validate_every,checkpoint_every,start", [
    (25, 4, 10, 0), (25, 4, 10, 10), (5000, 10, 10, 0), (7, 1, 10, 0), (3, 10, 10, 0)])
def test_schedule_follows_the_rule(epochs, validate_every, checkpoint_every, start):
    tc = cfg.TrainConfig(epochs=epochs, validate_every=validate_every, checkpoint_every=checkpoint_every)
    assert trainer.validation_epochs(tc, start) == expected_epochs(epochs, validate_every, checkpoint_every, start)


def test_the_slides_recipe_validates_one_epoch_in_ten():
    tc = cfg.TrainConfig()
    assert tc.epochs == 5000 and len(trainer.validation_epochs(tc)) == 500


def test_zero_is_refused_before_anything_is_written(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        train.main(["--data", str(tmp_path), "--runs-dir", str(tmp_path / "runs"), "--validate-every", "0"])
    assert info.value.code == 2 and "--validate-every" in capsys.readouterr().err
    pipeline = tmp_path / "p.toml"
    pipeline.write_text("[train]\nvalidate_every = 0\n")
    assert train.main(["--pipeline", str(pipeline), "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "validate_every" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_run_logs_held_out_metrics_on_the_scheduled_epochs_and_its_report_plots_them(tmp_path):
    data = tmp_path / "tones"
    write_synthetic_dataset(str(data), clips=4, seconds=1.0, num_classes=6, kinds=2, holdout=1, shard_size=50)
    config = cfg.PipelineConfig(train=cfg.TrainConfig(
        data=str(data), epochs=5, batch_size=32, learning_rate=0.01, validate_every=2, checkpoint_every=3,
        runs_dir=str(tmp_path / "runs"), name="sched", export=False, report=False, quiet=True))
    run = tmp_path / "runs" / "sched"
    assert train.train(config) == str(run)
    with open(run / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    assert [int(r["epoch"]) for r in rows if r["val_kl"]] == expected_epochs(5, 2, 3) == [2, 3, 4, 5]
    assert all(r["kl"] for r in rows)
    # best.keras is chosen on held-out KL measured at that checkpoint's epoch.
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    assert best["epoch"] in (3, 5)
    assert best["val_kl"] == pytest.approx(float(rows[best["epoch"] - 1]["val_kl"]))
    out = tmp_path / "report"
    out.mkdir()
    assert report.plot_history(str(run / "history.csv"), str(out)) == str(out / "curves.png")


def misleading_dataset(path):
    """Three training tones, each its own teacher class; the held-out clip plays the first tone under the second
    tone's class, so the better the student learns the training clips, the worse it does on the held-out one."""
    spec = DatasetSpec(sample_rate=16000, window_samples=640, frame_period_ms=40.0, num_classes=4, teacher="test")
    writer = DatasetWriter(str(path), spec, shard_size=50)
    rng = np.random.default_rng(0)
    starts = np.arange(25) * 640
    t = np.arange(26 * 640) / 16000
    clips = []
    for c, (hz, cls, split) in enumerate([(220, 0, "train"), (520, 1, "train"), (1230, 2, "train"),
                                          (220, 1, "validation")]):
        audio = (0.5 * np.sin(2 * np.pi * hz * t) + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)
        logits = rng.normal(size=(25, 4)).astype(np.float32)
        logits[:, cls] += 8.0
        writer.add(split, np.stack([audio[s:s + 640] for s in starts]), logits, f"clip{c}", starts / 16000)
        clips.append({"id": f"clip{c}", "url": None, "start": 0.0, "duration": 1.0, "label": str(cls), "split": split,
                      "status": "ok", "error": None, "examples": 25, "key": f"clip{c}"})
    writer.finish(clips=clips, class_names=["a", "b", "c", "d"])


def test_best_keras_is_the_checkpoint_with_the_lowest_held_out_kl(tmp_path):
    import keras

    from audionet_tf.dataset import reader
    from audionet_tf.model.student import load_model

    misleading_dataset(tmp_path / "data")
    config = cfg.PipelineConfig(train=cfg.TrainConfig(
        data=str(tmp_path / "data"), epochs=5, batch_size=32, learning_rate=0.01, validate_every=1,
        checkpoint_every=1, runs_dir=str(tmp_path / "runs"), name="best", export=False, report=False, quiet=True))
    run = tmp_path / "runs" / "best"
    train.train(config)
    with open(run / "history.csv", newline="") as handle:
        val_kl = {int(r["epoch"]): float(r["val_kl"]) for r in csv.DictReader(handle)}
    lowest = min(val_kl, key=val_kl.get)
    assert lowest < 5, val_kl  # the held-out KL rose as training went on: the best is not the last
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    assert best["epoch"] == lowest and best["val_kl"] == pytest.approx(val_kl[lowest])
    # The file holds that epoch's student: its held-out KL, computed here, is the one logged then.
    held = reader.load_arrays(str(tmp_path / "data"), "validation")
    student = load_model(str(run / "checkpoints" / "best.keras")).predict(held["audio"][..., None], verbose=0)
    teacher = keras.ops.convert_to_numpy(keras.ops.softmax(held["logits"].astype(np.float32)))
    log_student = keras.ops.convert_to_numpy(keras.ops.log_softmax(student))
    kl = np.mean(np.sum(teacher * (np.log(teacher) - log_student), axis=1))
    assert kl == pytest.approx(val_kl[lowest], rel=1e-3)


REPLICA_VALIDATION = """
import json, sys
from audionet_tf.core import config as cfg
from audionet_tf.commands import train
data, runs = sys.argv[1], sys.argv[2]
result = {}
for devices in (4, 1):
    config = cfg.PipelineConfig(train=cfg.TrainConfig(
        data=data, epochs=1, batch_size=32, learning_rate=0.01, devices=devices, name=f"v{devices}",
        runs_dir=runs, export=False, report=False, quiet=True, seed=3))
    run_dir = train.train(config)
    result[devices] = json.load(open(run_dir + "/metrics.json"))["validation"]
print(json.dumps(result))
"""


@pytest.mark.slow
def test_four_replicas_measure_the_held_out_clips_as_one_does(tmp_path):
    """100 held-out windows in global batches of 32: the last step has 4, one for each replica."""
    import subprocess
    import sys

    data = tmp_path / "tones"
    write_synthetic_dataset(str(data), clips=6, seconds=2.0, num_classes=12, kinds=3, holdout=2, shard_size=60)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-c", REPLICA_VALIDATION, str(data), str(tmp_path / "runs")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for metric, value in result["1"].items():
        assert result["4"][metric] == pytest.approx(value, rel=1e-3, abs=1e-4), metric


def test_every_evaluation_reads_the_held_out_windows_exactly_once(tmp_path):
    """The held-out input is one repeated iterator kept for the whole run, so each evaluation must take
    exactly one pass of it: 100 held-out windows in batches of 32 (four steps, the last of 4), evaluated
    after each of 3 epochs. The last epoch's held-out figures, in `history.csv` and `metrics.json`, equal
    the final model's KL and top-1 agreement over the 100 windows computed with NumPy."""
    import numpy as np

    from audionet_tf.dataset import reader
    from audionet_tf.model.student import load_model

    data = tmp_path / "tones"
    write_synthetic_dataset(str(data), clips=6, seconds=2.0, num_classes=12, kinds=3, holdout=2, shard_size=60)
    config = cfg.PipelineConfig(train=cfg.TrainConfig(
        data=str(data), epochs=3, batch_size=32, learning_rate=0.01, validate_every=1,
        runs_dir=str(tmp_path / "runs"), name="once", export=False, report=False, quiet=True))
    run = trainer.train(config)
    pairs = list(reader.make_dataset(str(data), "validation", 1000, reader.ReadOptions(shuffle=False)))
    x = np.concatenate([a for a, _ in pairs])
    teacher = np.concatenate([b for _, b in pairs]).astype(np.float64)
    assert len(x) == 100
    student = load_model(os.path.join(run, "model.keras")).predict(x, verbose=0).astype(np.float64)

    def log_softmax(z):
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    kl = float(np.mean(np.sum(np.exp(log_softmax(teacher)) * (log_softmax(teacher) - log_softmax(student)), axis=1)))
    top1 = float(np.mean(teacher.argmax(axis=1) == student.argmax(axis=1)))
    with open(os.path.join(run, "history.csv"), newline="") as handle:
        last = list(csv.DictReader(handle))[-1]
    final = json.load(open(os.path.join(run, "metrics.json")))["validation"]
    for measured in (float(last["val_kl"]), final["kl"]):
        assert measured == pytest.approx(kl, rel=1e-4)
    for measured in (float(last["val_top1_agreement"]), final["top1_agreement"]):
        assert measured == pytest.approx(top1, abs=1e-6)


def test_a_resumed_run_keeps_the_best_checkpoint_of_before_it_was_stopped_when_it_does_no_better(tmp_path):
    """Stopped by SIGTERM after its lowest held-out KL, then resumed by the same call: the epochs after the resume
    are worse on the held-out clip, so `best.keras` and `best.json` stay the files written before the stop."""
    import hashlib
    import signal

    import keras

    from audionet_tf.training.backup import Stopped

    class TermAfter(keras.callbacks.Callback):
        """SIGTERM to this process at the end of one epoch, as a scheduler would send it."""

        def __init__(self, epoch):
            super().__init__()
            self.epoch = epoch

        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == self.epoch:
                os.kill(os.getpid(), signal.SIGTERM)

    misleading_dataset(tmp_path / "data")
    config = cfg.PipelineConfig(train=cfg.TrainConfig(
        data=str(tmp_path / "data"), epochs=6, batch_size=32, learning_rate=0.01, validate_every=1,
        checkpoint_every=1, runs_dir=str(tmp_path / "runs"), name="resumed", export=False, report=False, quiet=True))
    run = tmp_path / "runs" / "resumed"
    with pytest.raises(Stopped):
        train.train(config, extra_callbacks=[TermAfter(3)])
    assert not (run / "metrics.json").exists()
    stopped_at = json.loads((run / "backup" / "state.json").read_text())["backups"][0]["epoch"]
    best_before = json.loads((run / "checkpoints" / "best.json").read_text())
    keras_before = hashlib.sha256((run / "checkpoints" / "best.keras").read_bytes()).hexdigest()
    assert train.train(config) == str(run)  # the same call again: the run continues
    with open(run / "history.csv", newline="") as handle:
        val_kl = {int(r["epoch"]): float(r["val_kl"]) for r in csv.DictReader(handle)}
    assert sorted(val_kl) == [1, 2, 3, 4, 5, 6]
    after = {e: v for e, v in val_kl.items() if e > stopped_at}
    # What this test is about: every validated epoch after the resume is worse than the best before it.
    assert 3 <= stopped_at < 6 and min(after.values()) > best_before["val_kl"], (stopped_at, best_before, val_kl)
    assert best_before["val_kl"] == pytest.approx(min(v for e, v in val_kl.items() if e <= stopped_at))
    assert json.loads((run / "checkpoints" / "best.json").read_text()) == best_before
    assert hashlib.sha256((run / "checkpoints" / "best.keras").read_bytes()).hexdigest() == keras_before
