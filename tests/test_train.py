"""Training end to end on small synthetic TFRecords: the command, its run directory, resume, replicas, NaN."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from audionet_tf.commands import train
from audionet_tf.core import config as cfg
from audionet_tf.core.errors import AudioNetError
from audionet_tf.dataset.synthetic import write_synthetic_dataset
from audionet_tf.model.student import load_model
from audionet_tf.training import trainer

QUIET_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def tree_digest(directory):
    """SHA-256 of every file under `directory`, by relative path."""
    digests = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                digests[os.path.relpath(path, directory)] = hashlib.sha256(handle.read()).hexdigest()
    return digests


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tones"
    write_synthetic_dataset(str(path), clips=6, seconds=2.0, num_classes=12, kinds=3, holdout=2, shard_size=60)
    return str(path)


def run_cli(*args, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "audionet_tf.train", *args], cwd=cwd, env=QUIET_ENV,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def finished_run(dataset, tmp_path_factory):
    """One real command-line run with export, shared by the tests that inspect its outputs."""
    work = tmp_path_factory.mktemp("work")
    result = run_cli("--data", dataset, "--epochs", "4", "--batch-size", "32", "--learning-rate", "0.01",
                     "--name", "tones", "--quiet", "--histogram-every", "2", "--no-report", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    return work, result


def test_run_directory_holds_config_history_checkpoints_and_model(finished_run):
    work, result = finished_run
    run = work / "runs" / "tones"
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["epochs"] == 4 and config["train"]["batch_size"] == 32
    assert config["train"]["learning_rate"] == 0.01 and config["dataset"]["num_classes"] == 12
    history = (run / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 4
    header = history[0].split(",")
    for column in ("epoch", "loss", "kl", "top1_agreement", "top5_agreement", "learning_rate", "val_kl",
                   "val_top1_agreement"):
        assert column in header
    for name in ("model.keras", "checkpoints/last.keras", "checkpoints/best.keras", "metrics.json", "labels.txt"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) >= {"train", "validation"}
    assert "held-out clips" in result.stdout and "top-1 agreement" in result.stdout


def test_tensorboard_reads_back_scalars_and_the_filter_image(finished_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    work, _ = finished_run
    logs = work / "runs" / "tones" / "logs"
    scalars = EventAccumulator(str(logs / "train"), size_guidance={"tensors": 0}).Reload()
    tags = set(scalars.Tags()["tensors"])
    for tag in ("epoch_loss", "epoch_kl", "epoch_top1_agreement", "epoch_top5_agreement", "epoch_learning_rate"):
        assert tag in tags, sorted(tags)
    assert len(scalars.Tensors("epoch_loss")) == 4
    assert any("histogram" in t or "kernel" in t for t in tags)
    images = EventAccumulator(str(logs / "filters"), size_guidance={"tensors": 0}).Reload()
    events = images.Tensors("conv_filters")
    assert [e.step for e in events] == [2, 4]
    png = events[-1].tensor_proto.string_val[2]
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # The last image shows the trained filters: the figure the callback redraws, pixel for pixel a new one of
    # the final kernel (and not the first image's).
    import tensorflow as tf

    from audionet_tf.training.callbacks import filter_figure

    first, last = (tf.io.decode_png(e.tensor_proto.string_val[2]).numpy() for e in events)
    kernel = load_model(str(work / "runs" / "tones" / "model.keras")).get_layer("conv").kernel.numpy()
    expected = filter_figure(kernel, 16000)
    assert last.shape == expected.shape and (last == expected).all()
    assert (first != last).any()
    val = EventAccumulator(str(logs / "validation"), size_guidance={"tensors": 0}).Reload()
    assert "epoch_top1_agreement" in val.Tags()["tensors"]


def test_export_matches_the_keras_model(finished_run):
    import tensorflow as tf

    work, _ = finished_run
    export = work / "saved_models" / "tones"
    if not export.is_dir():
        pytest.fail(f"training did not export to {export}")
    model = load_model(str(work / "runs" / "tones" / "model.keras"))
    x = np.random.default_rng(0).uniform(-1, 1, size=(4, 640)).astype(np.float32)
    expected = model.predict(x[..., None], verbose=0)
    saved = tf.saved_model.load(str(export))
    got = saved.signatures["serving_default"](tf.constant(x))
    got = next(iter(got.values())).numpy() if isinstance(got, dict) else got.numpy()
    scale = max(1.0, float(np.abs(expected).max()))
    assert float(np.abs(got - expected).max()) / scale <= 1e-5
    tflite = [f for f in os.listdir(export) if f.endswith(".tflite")]
    assert "model.tflite" in tflite
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(export / "model.tflite"))
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], list(x.shape) if len(detail["shape"]) == 2 else [4, 640, 1])
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], x.reshape(interpreter.get_input_details()[0]["shape"]))
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    assert float(np.abs(out - expected).max()) / scale <= 1e-5


def test_pipeline_file_sets_values_and_flags_override(dataset, tmp_path):
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(textwrap.dedent(f"""
        [train]
        data = "{dataset}"
        epochs = 2
        batch_size = 16
        learning_rate = 0.005
        name = "from-file"
        runs_dir = "{tmp_path / 'runs'}"
        export = false
        report = false
        quiet = true
    """))
    args = train.build_parser().parse_args(["--pipeline", str(pipeline), "--epochs", "1", "--batch-size", "32"])
    config = train.resolve_config(args)
    assert config.train.epochs == 1 and config.train.batch_size == 32
    assert config.train.learning_rate == 0.005 and config.train.name == "from-file"
    run_dir = train.train(config)
    assert json.loads(open(os.path.join(run_dir, "config.json")).read())["train"]["epochs"] == 1
    # The same settings again after the run finished: a new run, the old one untouched (every byte).
    before = tree_digest(run_dir)
    second = train.train(config)
    assert second.endswith("from-file-2") and tree_digest(run_dir) == before


@pytest.mark.parametrize("flags,message", [
    (["--batch-size", "0"], "--batch-size"),
    (["--epochs", "-3"], "--epochs"),
    (["--learning-rate", "nan"], "--learning-rate"),
    (["--bogus"], "unrecognized arguments"),
])
def test_impossible_values_are_refused_before_anything_is_written(dataset, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as info:
        train.main(["--data", dataset, "--runs-dir", str(tmp_path / "runs"), *flags])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_bad_pipeline_value_names_file_and_key(tmp_path, capsys):
    pipeline = tmp_path / "bad.toml"
    pipeline.write_text("[train]\nbatch_size = 0\n")
    assert train.main(["--pipeline", str(pipeline)]) == 2
    err = capsys.readouterr().err
    assert "bad.toml" in err and "batch_size" in err
    pipeline.write_text("[train]\nbatchsize = 5\n")
    assert train.main(["--pipeline", str(pipeline)]) == 2
    assert "unknown setting 'batchsize'" in capsys.readouterr().err


def test_missing_data_directory_says_how_to_make_it(tmp_path, capsys):
    code = train.main(["--data", str(tmp_path / "nowhere"), "--runs-dir", str(tmp_path / "runs")])
    assert code == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "python -m audionet_tf.prepare" in err
    assert not (tmp_path / "runs").exists()


def test_a_worker_waiting_for_the_chief_to_prepare_the_dataset_gives_up_after_dataset_wait_s(tmp_path):
    """A worker that is not the chief waits for the dataset (missing, or unfinished: no index says it is done)
    at most train.dataset_wait_s, then stops with one message saying what to do."""
    config = cfg.PipelineConfig(
        train=cfg.TrainConfig(dataset_wait_s=1.0),
        prepare=cfg.PrepareConfig(out=str(tmp_path / "data"), teacher="demo-colour",
                                  clips=({"url": str(tmp_path / "never.mp4"), "start": 0, "duration": 1},)))
    for state in ("missing", "unfinished"):
        if state == "unfinished":
            write_synthetic_dataset(str(tmp_path / "data"), clips=2, seconds=1.0, num_classes=4, kinds=2)
            os.unlink(tmp_path / "data" / "index.json")
        start = time.monotonic()
        with pytest.raises(AudioNetError, match=r"was not ready after 1 s \(train.dataset_wait_s\)") as info:
            trainer.ensure_dataset(config, prepare=lambda c: pytest.fail("only the chief prepares"), chief=False)
        assert "python -m audionet_tf.prepare" in str(info.value) and str(tmp_path / "data") in str(info.value)
        assert 1.0 <= time.monotonic() - start < 10, state


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_state(dataset, tmp_path):
    import keras

    class PoisonAfterTwoEpochs(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                kernel = self.model.get_layer("logits").kernel
                kernel.assign(np.full(kernel.shape, np.nan, np.float32))

    config = cfg.PipelineConfig(train=cfg.TrainConfig(
        data=dataset, epochs=6, batch_size=32, learning_rate=0.01, runs_dir=str(tmp_path / "runs"),
        name="nan", export=False, report=False, quiet=True, checkpoint_every=1))
    with pytest.raises(trainer.TrainingDiverged, match="NaN") as info:
        train.train(config, extra_callbacks=[PoisonAfterTwoEpochs()])
    assert "epoch 3" in str(info.value)
    run = tmp_path / "runs" / "nan"
    state = json.loads((run / "backup" / "state.json").read_text())["backups"][0]
    assert state["epoch"] == 2 and state["step"] == 0
    last = load_model(str(run / "checkpoints" / "last.keras"))
    assert all(np.isfinite(w).all() for w in last.get_weights())
    assert not (run / "model.keras").exists()


@pytest.mark.slow
def test_killed_run_continues_where_it_was(dataset, tmp_path):
    args = ["--data", dataset, "--epochs", "400", "--batch-size", "32", "--name", "killed", "--quiet",
            "--no-export", "--no-report", "--histogram-every", "1000", "--checkpoint-every", "1"]
    env = QUIET_ENV
    process = subprocess.Popen([sys.executable, "-m", "audionet_tf.train", *args], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "runs" / "killed" / "backup" / "state.json"
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if state.exists() and json.loads(state.read_text())["backups"][0]["epoch"] >= 3:
            break
        time.sleep(0.05)
    assert process.poll() is None, "training ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = json.loads(state.read_text())["backups"][0]["epoch"]
    assert 3 <= killed_at < 400
    # The same command, with the epoch count cut short so the test ends soon after resuming.
    args[3] = str(killed_at + 3)
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stderr and f"at epoch {killed_at}" in result.stderr
    history = (tmp_path / "runs" / "killed" / "history.csv").read_text().splitlines()[1:]
    epochs = [int(line.split(",")[0]) for line in history]
    assert epochs == list(range(1, killed_at + 4))
    assert (tmp_path / "runs" / "killed" / "model.keras").is_file()
    assert not (tmp_path / "runs" / "killed-2").exists()


REPLICA_SCRIPT = """
import json, sys
import keras
import numpy as np
from audionet_tf.core import config as cfg
from audionet_tf.commands import train
from audionet_tf.model.student import load_model
data, runs = sys.argv[1], sys.argv[2]

class Initial(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.weights = self.model.get_weights()

weights, initial = {}, {}
for devices in (4, 1):
    config = cfg.PipelineConfig(train=cfg.TrainConfig(
        data=data, epochs=3, batch_size=32, learning_rate=0.01, devices=devices, name=f"replicas-{devices}",
        runs_dir=runs, export=False, report=False, quiet=True, seed=7))
    start = Initial()
    run_dir = train.train(config, extra_callbacks=[start])
    replicas = json.load(open(run_dir + "/config.json"))["run"]["replicas"]
    weights[devices] = (replicas, load_model(run_dir + "/model.keras").get_weights())
    initial[devices] = start.weights
diff = max(float(np.abs(a - b).max()) for a, b in zip(weights[4][1], weights[1][1]))
# How far training moved each weight array from its seeded start (the smallest over the arrays).
moved = min(float(np.abs(a - b).max()) for a, b in zip(weights[1][1], initial[1]))
same_start = max(float(np.abs(a - b).max()) for a, b in zip(initial[4], initial[1]))
print(json.dumps({"replicas": [weights[4][0], weights[1][0]], "max_diff": diff, "moved": moved,
                  "same_start": same_start}))
"""


@pytest.mark.slow
def test_four_replicas_reach_the_weights_of_one(dataset, tmp_path):
    result = subprocess.run([sys.executable, "-c", REPLICA_SCRIPT, dataset, str(tmp_path / "runs")],
                            env=QUIET_ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == [4, 1]
    assert report["same_start"] == 0.0
    assert report["moved"] > 100 * report["max_diff"] and report["moved"] > 1e-3, report
    assert report["max_diff"] < 1e-4, report


def test_the_filter_figure_redrawn_for_a_new_kernel_is_a_new_figure_of_it():
    """The filter images are one figure redrawn each time: nothing of the kernel before may stay in it (the
    taps' range, the dB range and its ticks, the peaks and their labels), whatever the kernels are."""
    from audionet_tf.training.callbacks import FilterFigure

    rng = np.random.default_rng(3)
    kernels = [rng.standard_normal((64, 1, 16)).astype(np.float32) * scale for scale in (1.0, 0.01, 40.0)]
    kernels.append(np.zeros((64, 1, 16), np.float32))
    kernels.append(kernels[0].copy())
    kernels[-1][5, 0, 3] = np.nan  # a diverging run still gets its image
    kernels.append(np.full((64, 1, 16), 3e38, np.float32))  # its spectrum overflows: no dB range to set
    kernels.append(kernels[1])
    figure, images = FilterFigure(64, 16, 16000), []
    for kernel in kernels:
        with np.errstate(over="ignore"):  # the overflowing spectrum
            image = figure.draw(kernel)
            assert (image == FilterFigure(64, 16, 16000).draw(kernel)).all()
        images.append(image)
    assert all((a != b).any() for a, b in zip(images, images[1:]))
    with pytest.raises(ValueError, match="8 filters for a figure of 64 x 16"):
        figure.draw(kernels[0][..., :8])


def test_a_figure_that_fails_in_the_background_is_raised_not_lost(caplog):
    """Figures drawn on a background thread: a failure reaches the training thread at the next check (once the
    drawing has ended) or at the end, which waits for the last drawing; after another error it is logged."""
    import threading

    from audionet_tf.training.figures import BackgroundDrawing

    drawing, release, drawn = BackgroundDrawing("figure-test"), threading.Event(), []

    def fail(message):
        release.wait(30)
        raise OSError(message)

    drawing.submit(fail, "no space left on device")
    drawing.check()  # still drawing: training goes on
    release.set()
    for _ in range(3000):  # until the drawing has ended
        if drawing._pending.done():
            break
        time.sleep(0.01)
    with pytest.raises(OSError, match="no space left"):
        drawing.check()
    drawing.check()  # raised once, not again
    # A new drawing waits for the one in progress; the end waits for the last and raises its failure.
    release.clear()
    drawing.submit(fail, "the last figure")
    release.set()
    with pytest.raises(OSError, match="the last figure"):
        drawing.close()
    drawing.submit(drawn.append, "after")
    drawing.close()
    assert drawn == ["after"] and not [t for t in threading.enumerate() if t.name.startswith("figure-test")]
    # Training already failing: the last drawing's failure is logged, not raised over the first error.
    drawing.submit(fail, "while stopping")
    with caplog.at_level("WARNING"):
        drawing.finish_quietly()
    assert "while stopping" in caplog.text
