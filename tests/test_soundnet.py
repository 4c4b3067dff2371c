"""SoundNet's students (model.architecture soundnet5 / soundnet8): each table against an independent NumPy
implementation (outputs and gradients, BatchNorm on batch statistics as in training), the long windows
rebuilt from a dataset of 40 ms windows, and training, resume, export, predict and embed end to end."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audionet_tf.dataset import reader
from audionet_tf.dataset.synthetic import write_synthetic_dataset

QUIET_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
REAL = Path(__file__).resolve().parents[1].parent / "shared" / "real"

# The tables, written again here: ("conv", name, filters, kernel, stride, pad) / ("pool", name, k, s).
TABLES = {
    "soundnet8": [("conv", "conv1", 16, 64, 2, 32), ("pool", "pool1", 8, 8), ("conv", "conv2", 32, 32, 2, 16),
                  ("pool", "pool2", 8, 8), ("conv", "conv3", 64, 16, 2, 8), ("conv", "conv4", 128, 8, 2, 4),
                  ("conv", "conv5", 256, 4, 2, 2), ("pool", "pool5", 4, 4), ("conv", "conv6", 512, 4, 2, 2),
                  ("conv", "conv7", 1024, 4, 2, 2), ("conv", "conv8", "classes", 8, 2, 0)],
    "soundnet5": [("conv", "conv1", 32, 64, 2, 32), ("pool", "pool1", 8, 8), ("conv", "conv2", 64, 32, 2, 16),
                  ("pool", "pool2", 8, 8), ("conv", "conv3", 128, 16, 2, 8), ("pool", "pool3", 8, 8),
                  ("conv", "conv4", 256, 8, 2, 4), ("conv", "conv5", "classes", 16, 12, 4)],
}
EPS = 1e-5


@pytest.fixture
def float64():
    """Keras in float64 for the comparisons, so that no max-pool tie or rounding blurs them."""
    import keras

    before, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx(before)
    keras.config.set_dtype_policy(policy)


def windows_of(x, kernel, stride):
    """[N, T, C, K] views: window t covers x[:, stride t: stride t + kernel]."""
    view = np.lib.stride_tricks.sliding_window_view(x, kernel, axis=1)
    count = (x.shape[1] - kernel) // stride + 1
    return view[:, : (count - 1) * stride + 1: stride]


def numpy_forward(arch, x, params, scale):
    """The table on x [N, L]: a tape of each layer's inputs for the backward pass, and the logits."""
    h = (x * scale)[..., None]
    tape = []
    rows = TABLES[arch]
    for i, row in enumerate(rows):
        if row[0] == "pool":
            _, name, k, s = row
            w = windows_of(h, k, s)
            tape.append(("pool", name, h, w))
            h = w.max(axis=3)
            continue
        _, name, _, k, s, p = row
        padded = np.pad(h, ((0, 0), (p, p), (0, 0)))
        kernel, bias = params[name]["kernel"], params[name]["bias"]
        cols = windows_of(padded, k, s)  # [N, T, C, K]
        z = np.einsum("ntck,kcf->ntf", cols, kernel) + bias
        tape.append(("conv", name, padded, cols, p, s, k))
        if i == len(rows) - 1:
            return z.mean(axis=1), tape, z
        mean, var = z.mean(axis=(0, 1)), z.var(axis=(0, 1))
        xhat = (z - mean) / np.sqrt(var + EPS)
        y = params[name]["gamma"] * xhat + params[name]["beta"]
        tape.append(("bn", name, xhat, var))
        tape.append(("relu", name, y))
        h = np.maximum(y, 0.0)


def numpy_backward(tape, g_logits, steps, params, scale):
    """Gradients of every weight, by hand, from the tape of `numpy_forward`."""
    grads = {}
    g = np.repeat(g_logits[:, None, :], steps, axis=1) / steps
    for entry in reversed(tape):
        kind, name = entry[0], entry[1]
        if kind == "relu":
            g = g * (entry[2] > 0)
        elif kind == "bn":
            xhat, var = entry[2], entry[3]
            m = xhat.shape[0] * xhat.shape[1]
            grads.setdefault(name, {})["gamma"] = (g * xhat).sum(axis=(0, 1))
            grads[name]["beta"] = g.sum(axis=(0, 1))
            gx = g * params[name]["gamma"]
            g = (m * gx - gx.sum(axis=(0, 1)) - xhat * (gx * xhat).sum(axis=(0, 1))) / (m * np.sqrt(var + EPS))
        elif kind == "conv":
            padded, cols, p, s, k = entry[2:]
            grads.setdefault(name, {})["kernel"] = np.einsum("ntck,ntf->kcf", cols, g)
            grads[name]["bias"] = g.sum(axis=(0, 1))
            g_cols = np.einsum("ntf,kcf->ntck", g, params[name]["kernel"])
            g_padded = np.zeros_like(padded)
            steps_t = g.shape[1]
            for tap in range(k):
                g_padded[:, tap: tap + s * (steps_t - 1) + 1: s, :] += g_cols[:, :, :, tap]
            g = g_padded[:, p: padded.shape[1] - p, :]
        else:  # pool: each window's gradient to its one maximum (kernel = stride: windows do not overlap)
            h, w = entry[2], entry[3]
            k = w.shape[3]
            winner = w.argmax(axis=3)  # [N, T, C]
            g_h = np.zeros_like(h)
            n_idx, t_idx, c_idx = np.meshgrid(*[np.arange(d) for d in winner.shape], indexing="ij")
            np.add.at(g_h, (n_idx, t_idx * k + winner, c_idx), g)
            g = g_h
    return grads


def keras_params(model, arch):
    """The model's weights by table row, with BatchNorm's gamma and beta set to random values."""
    rng = np.random.default_rng(1)
    params = {}
    rows = [r for r in TABLES[arch] if r[0] == "conv"]
    for i, row in enumerate(rows):
        name = row[1]
        last = i == len(rows) - 1
        conv = model.get_layer(name if last else f"{name}_conv")
        kernel, bias = conv.get_weights()
        bias = rng.normal(0, 0.1, bias.shape)
        conv.set_weights([kernel, bias])
        params[name] = {"kernel": kernel, "bias": bias}
        if not last:
            bn = model.get_layer(f"{name}_bn")
            gamma, beta = 1 + 0.3 * rng.standard_normal(bn.gamma.shape), 0.2 * rng.standard_normal(bn.beta.shape)
            bn.set_weights([gamma, beta, *bn.get_weights()[2:]])
            params[name].update(gamma=gamma, beta=beta)
    return params


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("arch", ["soundnet8", "soundnet5"])
def test_layer_lengths_follow_the_table(arch):
    from audionet_tf.model import soundnet
    from audionet_tf.model.student import build_student

    shortest = soundnet.min_input_length(arch)
    assert soundnet.layer_lengths(arch, shortest)[TABLES[arch][-1][1]] == 1
    assert soundnet.layer_lengths(arch, shortest - 1)[TABLES[arch][-1][1]] == 0
    for length in (shortest, shortest + 70001):
        model = build_student(arch, length, 3)
        n = length
        for row in TABLES[arch]:
            if row[0] == "conv":
                _, name, filters, k, s, p = row
                n = (n + 2 * p - k) // s + 1
                width = 3 if filters == "classes" else filters
            else:
                _, name, k, s = row
                n = (n - k) // s + 1
            assert model.get_layer(name).output.shape[1:] == (n, width), name
        assert model.output.shape == (None, 3)


@pytest.mark.parametrize("arch,extra", [("soundnet8", 0), ("soundnet5", 0), ("soundnet5", 98304)])
def test_outputs_and_gradients_match_an_independent_numpy_implementation(arch, extra, float64):
    """Training-mode outputs (BatchNorm on the batch's statistics) and every weight's gradient of the
    distillation loss; `extra` samples give the last conv two steps, which the logits average."""
    import tensorflow as tf

    from audionet_tf.model import losses, soundnet
    from audionet_tf.model.student import build_student

    scale, classes, temperature = 4.0, 5, 2.0
    length = soundnet.min_input_length(arch) + extra
    model = build_student(arch, length, classes, input_scale=scale)
    params = keras_params(model, arch)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(2, length))
    teacher = 3 * rng.standard_normal((2, classes))
    expected, tape, steps = numpy_forward(arch, x, params, scale)
    assert steps.shape[1] == (2 if extra else 1)
    loss_fn = losses.DistillationLoss(temperature)
    with tf.GradientTape() as tape_tf:
        got = model(tf.constant(x[..., None]), training=True)
        loss = loss_fn(tf.constant(teacher), got)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-7, atol=1e-7 * np.abs(expected).max())
    g_logits = temperature * (softmax(expected / temperature) - softmax(teacher / temperature)) / len(x)
    want = numpy_backward(tape, g_logits, steps.shape[1], params, scale)
    variables, names = [], []
    for row in [r for r in TABLES[arch] if r[0] == "conv"]:
        name = row[1]
        conv = model.get_layer(name if name == TABLES[arch][-1][1] else f"{name}_conv")
        variables += [conv.kernel, conv.bias]
        names += [(name, "kernel"), (name, "bias")]
        if name != TABLES[arch][-1][1]:
            bn = model.get_layer(f"{name}_bn")
            variables += [bn.gamma, bn.beta]
            names += [(name, "gamma"), (name, "beta")]
    grads = tape_tf.gradient(loss, variables)
    for (name, what), value in zip(names, grads):
        reference = want[name][what]
        np.testing.assert_allclose(np.asarray(value), reference, rtol=1e-6, atol=1e-6 * np.abs(reference).max() + 1e-12,
                                   err_msg=f"{name} {what}")
    # Inference: BatchNorm on its moving statistics, here made up.
    for row in [r for r in TABLES[arch] if r[0] == "conv"][:-1]:
        bn = model.get_layer(f"{row[1]}_bn")
        gamma, beta, _, _ = bn.get_weights()
        bn.set_weights([gamma, beta, 0.1 * rng.standard_normal(gamma.shape), rng.uniform(0.5, 2.0, gamma.shape)])
    h = (x * scale)[..., None]
    for i, row in enumerate(TABLES[arch]):
        if row[0] == "pool":
            h = windows_of(h, row[2], row[3]).max(axis=3)
            continue
        name, k, s, p = row[1], row[3], row[4], row[5]
        z = np.einsum("ntck,kcf->ntf", windows_of(np.pad(h, ((0, 0), (p, p), (0, 0))), k, s),
                      params[name]["kernel"]) + params[name]["bias"]
        if i == len(TABLES[arch]) - 1:
            h = z.mean(axis=1)
            break
        _, _, mean, var = model.get_layer(f"{name}_bn").get_weights()
        h = np.maximum(params[name]["gamma"] * (z - mean) / np.sqrt(var + EPS) + params[name]["beta"], 0.0)
    np.testing.assert_allclose(model(x[..., None], training=False).numpy(), h, rtol=1e-7,
                               atol=1e-7 * np.abs(h).max())


def test_long_windows_are_rebuilt_from_the_frames_of_their_own_split(tmp_path):
    """Each frame's long window is the clip's audio centred on the frame's period, zeros outside the clip
    and outside the split's own frames."""
    data = str(tmp_path / "tones")
    write_synthetic_dataset(data, clips=3, seconds=1.2, num_classes=4, kinds=2, holdout=1, shard_size=20)
    short = reader.load_arrays(data, "train")
    window = 3000
    long = reader.load_arrays(data, "train", window_samples=window)
    assert long["audio"].shape == (len(short["audio"]), window)
    np.testing.assert_array_equal(long["clip_id"], short["clip_id"])
    hop = 640
    for clip in sorted(set(short["clip_id"])):
        mine = short["clip_id"] == clip
        audio = short["audio"][mine].reshape(-1)  # 640-sample windows tile the clip
        padded = np.concatenate([np.zeros(window), audio, np.zeros(window)])
        for k, row in enumerate(long["audio"][mine]):
            start = window + (k * hop + hop // 2) - window // 2
            np.testing.assert_array_equal(row, padded[start:start + window].astype(np.float32))
    held = reader.load_arrays(data, "validation", window_samples=window)
    train_clips, held_clips = set(long["clip_id"]), set(held["clip_id"])
    assert not train_clips & held_clips
    # The first frame's window starts before the clip: zeros there, as the dataset's own edge windows.
    assert np.all(long["audio"][0][: window // 2 - hop // 2] == 0)


def test_windows_shorter_than_the_hop_cannot_be_rebuilt(tmp_path):
    from audionet_tf.core.errors import DatasetError

    data = str(tmp_path / "gaps")
    write_synthetic_dataset(data, clips=2, seconds=0.5, num_classes=3, kinds=2, window_samples=320)
    with pytest.raises(DatasetError, match=r"windows of 320 samples every 640.*--window-ms 40"):
        reader.load_arrays(data, "train", window_samples=4000)


def test_long_windows_are_read_and_run_a_few_at_a_time():
    """predict and embed bound memory by samples, not windows: SoundNet-8's 209,374-sample windows go 10 to a
    model call and 80 to a chunk read (256 and 2048 of audionet's 640), the same windows as a whole framing."""
    from audionet_tf.serving import audio, inference

    assert [inference.batch_windows(w) for w in (640, 56798, 209374)] == [256, 36, 10]
    wave = np.random.default_rng(0).standard_normal(16000 * 100).astype(np.float32)
    chunks = list(inference.window_chunks(audio.ArrayAudio(wave), 209374, 16000, "noise"))
    assert [len(w) for w, _ in chunks] == [80, 7]
    whole, starts = inference.frame_audio(wave, 209374, 16000, "noise")
    np.testing.assert_array_equal(np.concatenate([w for w, _ in chunks]), whole)
    np.testing.assert_array_equal(np.concatenate([s for _, s in chunks]), starts)
    calls = []
    inference.batched(lambda w: calls.append(len(w)) or np.zeros((len(w), 2)), whole)
    assert calls == [10] * 8 + [7]


def run_cli(module, *args, cwd, timeout=600):
    return subprocess.run([sys.executable, "-m", f"audionet_tf.{module}", *args], cwd=cwd, env=QUIET_ENV,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def short_tones(tmp_path_factory):
    """Two 0.8 s clips, a frame every 200 ms (8 windows, no held-out clip): two steps of batch 4 an epoch."""
    path = tmp_path_factory.mktemp("data") / "short_tones"
    write_synthetic_dataset(str(path), clips=2, seconds=0.8, num_classes=4, kinds=2, frame_period_ms=200,
                            window_samples=3200)
    return str(path)


REPLICAS = """
import json, sys
import keras
import numpy as np
from audionet_tf.core import config as cfg
from audionet_tf.commands import train
from audionet_tf.model.student import load_model
data, runs = sys.argv[1], sys.argv[2]
# float64: rounding (~1e-16) is too small for Adam to amplify, so what is left is the mathematics.
keras.config.set_floatx("float64")
keras.config.set_dtype_policy("float64")


class Initial(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.weights = {w.path: w.numpy() for w in self.model.weights}


out = {}
for devices in (2, 1):
    start = Initial()
    config = cfg.PipelineConfig(
        audio=cfg.AudioConfig(frame_period_ms=200, window_ms=200), model=cfg.ModelConfig(architecture="soundnet5"),
        train=cfg.TrainConfig(data=data, epochs=1, batch_size=4, learning_rate=1e-3, devices=devices,
                              name=f"replicas-{devices}", runs_dir=runs, export=False, report=False, quiet=True,
                              seed=3, histogram_every=100, checkpoint_every=100))
    run_dir = train.train(config, extra_callbacks=[start])
    model = load_model(run_dir + "/model.keras")
    out[devices] = (json.load(open(run_dir + "/config.json"))["run"]["replicas"], start.weights,
                    {w.path: w.numpy() for w in model.weights}, str(model.weights[0].dtype))
report = {"replicas": [out[2][0], out[1][0]], "dtype": out[1][3], "arrays": {}}
for path, one in out[1][2].items():
    report["arrays"][path] = {"start": float(np.abs(out[2][1][path] - out[1][1][path]).max()),
                              "moved": float(np.abs(one - out[1][1][path]).max()),
                              "diff": float(np.abs(out[2][2][path] - one).max())}
print(json.dumps(report))
"""


@pytest.mark.slow
def test_two_replicas_reach_the_weights_of_one(short_tones, tmp_path):
    """MirroredStrategy on two logical CPUs, two steps of SoundNet-5 through the trainer, in float64: every
    weight, BatchNorm's moving statistics included, equals one replica's with the same global batch (the
    BatchNorms are synchronised: each replica normalises by the global batch's statistics). The convs'
    biases before a BatchNorm have a gradient of exactly zero, so they move by rounding alone; they are
    held to the same bound in absolute terms."""
    result = subprocess.run([sys.executable, "-c", REPLICAS, short_tones, str(tmp_path / "runs")], env=QUIET_ENV,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == [2, 1] and report["dtype"] == "float64", report
    arrays = report["arrays"]
    assert len(arrays) == 26 and all(a["start"] == 0.0 for a in arrays.values()), arrays
    for path, a in arrays.items():
        assert a["diff"] < 1e-9, (path, a)
        if not path.endswith("_conv/bias"):  # every other weight moved a million times more than that
            assert a["moved"] > 5e-4, (path, a)


def test_a_browser_page_for_a_soundnet_student_is_refused_before_any_work(tmp_path):
    """The page frames recordings as audionet's windows (one per hop from the first sample): --web with a
    SoundNet student stops with one message naming why, and writes neither the export nor the page."""
    from audionet_tf.core.config import ExportConfig
    from audionet_tf.core.errors import AudioNetError
    from audionet_tf.model.student import build_student
    from audionet_tf.serving.export import export_model

    model = build_student("soundnet5", 56798, 3)
    with pytest.raises(AudioNetError, match="audionet students only; this soundnet5 student hears a 56798-sample"):
        export_model(model, str(tmp_path / "out"), class_names=["a", "b", "c"], window_samples=56798,
                     options=ExportConfig(web=str(tmp_path / "web")))
    assert list(tmp_path.iterdir()) == []


HOP = 3200  # a frame every 200 ms: the real set's 2 s clips give 10 frames each (15 train, 15 held out)
SN8_WINDOW = 209374


@pytest.fixture(scope="module")
def real8(tmp_path_factory):
    """SoundNet-8 distilled on three real recordings by the commands: prepare (a still of one colour under
    each recording, the demo-colour teacher naming the colour; the last half of each clip held out), train
    one epoch, then a second run that resumes it for a second epoch, exports and reports."""
    sounds = sorted((REAL / "instruments").glob("*.ogg"))[:3] if REAL.is_dir() else []
    if len(sounds) < 3:
        pytest.skip(f"real recordings not found in {REAL}")
    import imageio_ffmpeg

    root = tmp_path_factory.mktemp("real8")
    rows = []
    for colour, sound in zip(("red", "green", "blue"), sounds):
        video = root / f"{sound.stem}.mp4"
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i",
                        f"color=c={colour}:s=64x64:r=25:d=3", "-i", str(sound), "-t", "3", "-shortest",
                        "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(video)], check=True)
        rows.append(f"{video},0,2,{sound.stem}\n")
    (root / "clips.csv").write_text("url,start,duration,label\n" + "".join(rows))
    prepared = run_cli("prepare", "--manifest", str(root / "clips.csv"), "--teacher", "demo-colour", "--out",
                       str(root / "data"), "--holdout", "0", "--holdout-part", "0.5", "--frame-period-ms", "200",
                       "--window-ms", "200", "--quiet", cwd=root)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    # train reads the frame period and window it expects from the pipeline's [audio] section.
    (root / "audio.toml").write_text("[audio]\nframe_period_ms = 200\nwindow_ms = 200\n")
    args = ["--pipeline", str(root / "audio.toml"), "--data", str(root / "data"), "--architecture", "soundnet8",
            "--batch-size", "8", "--learning-rate", "1e-3", "--name", "real8", "--quiet", "--histogram-every", "2",
            "--checkpoint-every", "1", "--validate-every", "1"]  # histograms, filters and timelines: epoch 2
    first = run_cli("train", *args, "--epochs", "1", "--no-export", "--no-report", cwd=root)
    assert first.returncode == 0, first.stderr[-3000:]
    os.remove(root / "runs" / "real8" / "metrics.json")  # as if stopped before its end: the next run resumes
    second = run_cli("train", *args, "--epochs", "2", cwd=root)
    assert second.returncode == 0, second.stderr[-3000:]
    return {"root": root, "run": root / "runs" / "real8", "export": root / "saved_models" / "real8",
            "sounds": sounds, "resumed": second.stderr}


@pytest.mark.slow
def test_soundnet8_on_real_recordings_resumes_and_exports(real8):
    """The resumed run has both epochs; the export's SavedModel, TFLite float and int8 and ONNX files were
    checked against the Keras model on held-out long windows; the report is written."""
    assert "resumed from" in real8["resumed"] and "at epoch 1 step 0" in real8["resumed"], real8["resumed"][-2000:]
    history = (real8["run"] / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2"], history
    doc = json.loads((real8["run"] / "config.json").read_text())
    assert doc["student"] == {"architecture": "soundnet8", "window_samples": SN8_WINDOW, "hop_samples": HOP}
    meta = json.loads((real8["export"] / "metadata.json").read_text())
    assert meta["architecture"] == "soundnet8" and meta["window_samples"] == SN8_WINDOW
    parity = meta["parity"]
    assert parity["windows_split"] == "validation" and 0 < parity["windows"] <= 10, parity
    assert parity["savedmodel_max_abs_diff"] < 1e-5 and parity["tflite_float_max_abs_diff"] < 1e-5, parity
    assert meta["onnx"]["input"] == {"windows": ["batch", SN8_WINDOW]} and meta["onnx"]["window_fixed"]
    assert meta["onnx"]["outputs"]["embedding"] == ["batch", 256] and meta["onnx"]["embedding_layer"] == "pool5"
    assert parity["onnx_max_abs_diff"] < 1e-5 and parity["onnx_embedding_max_abs_diff"] < 1e-5, parity
    assert (real8["run"] / "report" / "index.html").is_file()


@pytest.mark.slow
def test_soundnet8_export_predicts_and_embeds_like_its_keras_model(real8):
    """The Python API on 2 s of a real recording: one window per 200 ms frame, centred on it (zeros past
    the ends), the same logits from model.keras, the SavedModel, model.tflite and student.onnx; the int8
    file runs in LiteRT alone; embeddings from the export's pool5 and from a named layer of the .keras."""
    import audionet_tf as an
    from audionet_tf.preparation.media import read_audio
    from litert_run import run_tflite

    wave = read_audio(str(real8["sounds"][0]), 16000)[:32000]
    keras_student = an.load_student(str(real8["run"] / "model.keras"))
    heard = an.predict(an.load_student(str(real8["export"])), wave, sample_rate=16000)
    assert heard["scores"].shape == (10, 6)  # 2 s of frames every 200 ms; demo-colour's 6 classes
    np.testing.assert_allclose(heard["times"][:3], [0.0, 0.2, 0.4], atol=1e-9)
    left = (SN8_WINDOW - HOP) // 2
    padded = np.concatenate([np.zeros(left, np.float32), wave, np.zeros(SN8_WINDOW, np.float32)])
    windows = np.stack([padded[k * HOP: k * HOP + SN8_WINDOW] for k in (0, 4, 9)])
    np.testing.assert_allclose(heard["logits"][[0, 4, 9]], keras_student.logits(windows), rtol=1e-4, atol=1e-4)
    for other in ("model.tflite", "student.onnx"):
        got = an.predict(an.load_student(str(real8["export"] / other)), wave, sample_rate=16000)["logits"]
        np.testing.assert_allclose(got, heard["logits"], rtol=1e-4, atol=1e-4, err_msg=other)
    int8 = run_tflite(real8["export"] / "model_int8.tflite", windows)
    assert int8.shape == (3, 6) and np.all(np.isfinite(int8))
    assert an.embed(an.load_student(str(real8["export"])), wave, sample_rate=16000)["embeddings"].shape == (10, 256)
    conv2 = an.embed(keras_student, wave, sample_rate=16000, layer="conv2")["embeddings"]
    assert conv2.shape == (10, 32)


PLAIN_APPS = """
import json, sys
import numpy as np
windows = np.load(sys.argv[2])
if sys.argv[1] == "tensorflow":
    import tensorflow as tf
    model = tf.saved_model.load(sys.argv[3])
    out = model.signatures["serving_default"](windows=tf.constant(windows))["logits"].numpy()
else:
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=sys.argv[3])
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], windows.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], windows)
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
print(json.dumps({"logits": out.tolist(), "audionet_tf": "audionet_tf" in sys.modules}))
"""


@pytest.mark.slow
def test_soundnet8_export_runs_in_apps_with_only_tensorflow_or_only_litert(real8, tmp_path):
    """An app that imports only TensorFlow (the SavedModel's serving_default) and one that imports only LiteRT
    (model.tflite) give model.keras's logits for SoundNet-8's long windows of a real recording."""
    import audionet_tf as an
    from audionet_tf.preparation.media import read_audio

    wave = read_audio(str(real8["sounds"][2]), 16000)
    wave = np.pad(wave, (0, max(0, SN8_WINDOW + 16000 - len(wave))))  # zeros past a recording's end, as predict
    windows = np.stack([wave[:SN8_WINDOW], wave[16000:16000 + SN8_WINDOW]]).astype(np.float32)
    np.save(tmp_path / "windows.npy", windows)
    expected = an.load_student(str(real8["run"] / "model.keras")).logits(windows)
    for app, path in (("tensorflow", real8["export"]), ("litert", real8["export"] / "model.tflite")):
        done = subprocess.run([sys.executable, "-c", PLAIN_APPS, app, str(tmp_path / "windows.npy"), str(path)],
                              env=QUIET_ENV, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert not result["audionet_tf"], app
        np.testing.assert_allclose(np.array(result["logits"]), expected, rtol=1e-4, atol=1e-4, err_msg=app)


@pytest.mark.slow
def test_soundnet8_predict_and_embed_commands_read_its_export(real8, capsys):
    """predict on a whole real recording (a window a second), embed with a named layer of the run's .keras;
    a layer only a .keras has, asked of the SavedModel, is refused naming why."""
    from audionet_tf.commands import embed as embed_cmd

    root, sound = real8["root"], real8["sounds"][0]
    predicted = run_cli("predict", str(sound), "--model", str(real8["export"]), "--hop-ms", "1000",
                        "--json", str(root / "p.json"), cwd=root)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    seconds = [line for line in predicted.stdout.splitlines() if line.strip().endswith(tuple("0123456789"))]
    assert len(seconds) >= 3, predicted.stdout  # a window every second of a recording of 4 s or more
    result = json.loads((root / "p.json").read_text())
    result = result[0] if isinstance(result, list) else result
    assert len(result["windows"]) == len(seconds) and result["duration"] >= 4, list(result)
    # embed's command in this process (its flags, files and exit status; predict above is the subprocess).
    assert embed_cmd.main([str(sound), "--model", str(real8["run"] / "model.keras"), "--layer", "conv7",
                           "--hop-ms", "1000", "--out", str(root / "emb")]) == 0
    assert np.load(root / "emb" / f"{sound.stem}.npz")["embedding"].shape == (len(seconds), 1024)
    assert embed_cmd.main([str(sound), "--model", str(real8["export"]), "--layer", "conv3",
                           "--out", str(root / "emb2")]) != 0
    assert "needs a .keras model" in capsys.readouterr().err


@pytest.mark.slow
def test_soundnet5_trains_resumes_and_exports_from_the_same_dataset(real8):
    """SoundNet-5 through the same commands on the same prepared real recordings: one epoch, a second run that
    resumes it, the export's SavedModel, TFLite and ONNX files checked against Keras, and the exported student
    giving model.keras's logits on windows of a real recording (its int8 file running in LiteRT alone)."""
    import audionet_tf as an
    from audionet_tf.model.student import student_window
    from audionet_tf.preparation.media import read_audio
    from litert_run import run_tflite

    root = real8["root"]
    args = ["--pipeline", str(root / "audio.toml"), "--data", str(root / "data"), "--architecture", "soundnet5",
            "--batch-size", "8", "--learning-rate", "1e-3", "--name", "real5", "--quiet", "--histogram-every", "2",
            "--checkpoint-every", "1", "--no-report"]
    first = run_cli("train", *args, "--epochs", "1", "--no-export", cwd=root)
    assert first.returncode == 0, first.stderr[-3000:]
    run = root / "runs" / "real5"
    os.remove(run / "metrics.json")
    second = run_cli("train", *args, "--epochs", "2", cwd=root)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stderr and "at epoch 1 step 0" in second.stderr, second.stderr[-2000:]
    assert [line.split(",")[0] for line in (run / "history.csv").read_text().splitlines()[1:]] == ["1", "2"]
    window = student_window("soundnet5", None, 16000)
    doc = json.loads((run / "config.json").read_text())
    assert doc["student"] == {"architecture": "soundnet5", "window_samples": window, "hop_samples": HOP}
    export = root / "saved_models" / "real5"
    meta = json.loads((export / "metadata.json").read_text())
    assert meta["architecture"] == "soundnet5" and meta["window_samples"] == window
    parity = meta["parity"]
    assert parity["savedmodel_max_abs_diff"] < 1e-5 and parity["tflite_float_max_abs_diff"] < 1e-5, parity
    assert parity["onnx_max_abs_diff"] < 1e-5, parity
    wave = read_audio(str(real8["sounds"][1]), 16000)[:32000]
    heard = an.predict(an.load_student(str(export)), wave, sample_rate=16000)
    assert heard["scores"].shape == (10, 6)
    left = (window - HOP) // 2
    padded = np.concatenate([np.zeros(left, np.float32), wave, np.zeros(window, np.float32)])
    windows = np.stack([padded[k * HOP: k * HOP + window] for k in (0, 5, 9)])
    keras_student = an.load_student(str(run / "model.keras"))
    np.testing.assert_allclose(heard["logits"][[0, 5, 9]], keras_student.logits(windows), rtol=1e-4, atol=1e-4)
    int8 = run_tflite(export / "model_int8.tflite", windows)
    assert int8.shape == (3, 6) and np.all(np.isfinite(int8))


def write_wav(path, samples, rate, channels):
    import wave as wavmod

    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    with wavmod.open(str(path), "wb") as handle:
        handle.setnchannels(channels)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(np.repeat(pcm[:, None], channels, axis=1).tobytes())


def test_transfer_follows_soundnets_protocol_on_a_csv_in_esc50s_layout(tmp_path, capsys):
    """SoundNet-5 features of a named layer, each clip repeated to a fixed length, a linear SVM (C = 0.01)
    per fold; the student's row recomputed here from the layer's outputs. Clips at 44.1 kHz stereo and 8 kHz."""
    import keras
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    from audionet_tf.commands import evaluate as evaluate_cmd
    from audionet_tf.core.errors import AudioNetError
    from audionet_tf.evaluation import evaluate
    from audionet_tf.model.student import build_student
    from audionet_tf.preparation.media import read_audio

    model = build_student("soundnet5", 56798, 3)
    model.save(str(tmp_path / "student.keras"))
    (tmp_path / "clips").mkdir()
    rows = ["filename,fold,target,category"]
    for target, kind in enumerate(("low", "high")):
        for i in range(6):
            rate, channels = (44100, 2) if i % 2 else (8000, 1)
            t = np.arange(int(0.7 * rate)) / rate
            # Overlapping classes (each a spread of pitches and noise), so that C changes the folds' scores.
            pitch = (300 if kind == "low" else 700) * (1 + 0.5 * i)
            tone = 0.4 * np.sin(2 * np.pi * pitch * t) + 0.2 * np.random.default_rng(i).standard_normal(len(t))
            write_wav(tmp_path / "clips" / f"{kind}{i}.wav", tone, rate, channels)
            rows.append(f"{kind}{i}.wav,{i % 3 + 1},{target},{kind}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    result = evaluate.transfer(str(tmp_path / "student.keras"), str(tmp_path / "labels.csv"), seed=1,
                               layer="conv2", seconds=4.0, audio_dir=str(tmp_path / "clips"))
    assert result["protocol"]["classifier"] == "svm" and result["protocol"]["C"] == 0.01
    assert result["protocol"]["clip_seconds"] == 4.0 and result["files"] == 12
    assert set(result["accuracy"]) == {"student", "random network", "log-mel/MFCC"}
    assert result["accuracy"]["student"]["dimensions"] == 64  # conv2's channels
    # The student's row from the layer itself: 4 s clips (64,000 samples), windows of 56,798 every 56,798
    # (one), conv2 averaged over time, a standardised linear SVM with C = 0.01 on each fold.
    conv2 = keras.Model(model.input, model.get_layer("conv2").output)
    x, y, folds = [], [], []
    for row in rows[1:]:
        name, fold, target, _ = row.split(",")
        wave = read_audio(str(tmp_path / "clips" / name), 16000)
        clip = np.tile(wave, -(-64000 // len(wave)))[:64000]
        x.append(conv2.predict(clip[None, :56798, None], verbose=0)[0].mean(axis=0))
        y.append(int(target))
        folds.append(int(fold))
    x, y, folds = np.array(x), np.array(y), np.array(folds)
    accuracies = []
    for fold in (1, 2, 3):
        clf = make_pipeline(StandardScaler(), LinearSVC(C=0.01, max_iter=20000, random_state=1))
        clf.fit(x[folds != fold], y[folds != fold])
        accuracies.append(float(clf.score(x[folds == fold], y[folds == fold])))
    assert result["accuracy"]["student"]["folds"] == pytest.approx(accuracies)
    lines = evaluate_cmd.transfer_lines(result)
    assert lines[2].startswith("| features | fold 1 | fold 2 | fold 3 | mean ± std |")
    # The command, on the default layer; then a layer the table does not have, and a CSV without folds.
    assert evaluate_cmd.main(["transfer", "--model", str(tmp_path / "student.keras"), "--dataset",
                              str(tmp_path / "labels.csv"), "--audio", str(tmp_path / "clips"),
                              "--out", str(tmp_path / "t.json")]) == 0
    printed = capsys.readouterr().out
    assert "soundnet5 layer conv4, svm C = 0.01" in printed and "| student |" in printed
    assert json.loads((tmp_path / "t.json").read_text())["accuracy"]["student"]["dimensions"] == 256
    with pytest.raises(AudioNetError, match="conv9"):
        evaluate.transfer(str(tmp_path / "student.keras"), str(tmp_path / "labels.csv"), layer="conv9",
                          audio_dir=str(tmp_path / "clips"))
    (tmp_path / "nofold.csv").write_text("filename,target,category\nlow0.wav,0,low\n")
    with pytest.raises(AudioNetError, match=r"nofold.csv row 2: needs filename, fold"):
        evaluate.transfer(str(tmp_path / "student.keras"), str(tmp_path / "nofold.csv"),
                          audio_dir=str(tmp_path / "clips"))
