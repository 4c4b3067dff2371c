"""The export in other apps: TensorFlow alone, LiteRT alone, TFSMLayer; predict and embed on real files."""
import json
import os
import re
import shutil
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest
from litert_run import run_tflite

from audionet_tf.commands import embed as embed_cmd, export as export_cmd, predict as predict_cmd, train
from audionet_tf.core import config as cfg
from audionet_tf.dataset.synthetic import write_synthetic_dataset
from audionet_tf.model.student import load_model
from audionet_tf.preparation.media import read_audio
from audionet_tf.serving import embed

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
TONES = {0: 220.0, 1: 220.0 * 2 ** 0.8}  # the synthetic dataset's first two kinds


def write_wav(path, seconds, frequency, rate=16000, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    tone = (0.5 * np.sin(2 * np.pi * frequency * t) * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(channels)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(np.repeat(tone[:, None], channels, axis=1).tobytes())
    return str(path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A student trained by the test on two kinds of tone, exported by the train command's own code."""
    work = tmp_path_factory.mktemp("apps")
    write_synthetic_dataset(str(work / "data"), clips=6, seconds=2.0, num_classes=8, kinds=2, holdout=2)
    config = cfg.PipelineConfig(train=cfg.TrainConfig(
        data=str(work / "data"), epochs=25, batch_size=64, learning_rate=3e-3, name="tones",
        runs_dir=str(work / "runs"), export_dir=str(work / "saved_models"), report=False, quiet=True))
    run_dir = train.train(config)
    export = work / "saved_models" / "tones"
    a = write_wav(work / "a.wav", 2.0, TONES[0])
    b = write_wav(work / "b.wav", 1.5, TONES[1], rate=44100, channels=2)
    return {"work": work, "run": Path(run_dir), "export": export, "a": a, "b": b}


def test_export_holds_every_artifact(exported):
    meta = json.loads((exported["export"] / "metadata.json").read_text())
    for name in ("saved_model.pb", "model.tflite", "model_int8.tflite", "student.onnx", "labels.txt",
                 "metadata.json"):
        assert (exported["export"] / name).is_file(), name
    assert meta["sample_rate"] == 16000 and meta["window_samples"] == 640 and meta["num_classes"] == 8
    assert meta["parity"]["windows_source"] == "dataset" and meta["int8_quantization"].startswith("int8")
    for name in ("model.tflite", "model_int8.tflite", "saved_model.pb", "student.onnx"):
        assert meta["files"][name] == (exported["export"] / name).stat().st_size
    assert meta["final_metrics"]["validation"]["top1_agreement"] > 0.9


def test_export_holds_no_path_of_the_machine_that_made_it(exported):
    """Every file of the export (metadata, labels, SavedModel, TFLite) is free of the run's, the
    dataset's and the export's absolute paths: the export is copied to other machines."""
    work = exported["work"]
    roots = {str(work), os.path.realpath(work)}
    found = []
    for path in exported["export"].rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            found += [f"{path.relative_to(exported['export'])}: {root}" for root in roots if root.encode() in content]
    assert not found, found
    meta = json.loads((exported["export"] / "metadata.json").read_text())
    assert meta["run"] == "tones" and meta["training_config"]["dataset"]["data_dir"] == "data"


SIGNATURES = """
import json, sys
import numpy as np
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
rng = np.random.default_rng(0)
windows = tf.constant(rng.uniform(-0.5, 0.5, (3, 640)).astype(np.float32))
waveform = (0.4 * np.sin(np.arange(640 * 6 + 300) * 0.05) * np.linspace(0.2, 1, 640 * 6 + 300)).astype(np.float32)
timeline = model.signatures["timeline"](waveform=tf.constant(waveform))
out = {
    "windows": windows.numpy().tolist(),
    "waveform": waveform.tolist(),
    "logits": model.signatures["serving_default"](windows=windows)["logits"].numpy().tolist(),
    "probabilities": model.signatures["probabilities"](windows=windows)["probabilities"].numpy().tolist(),
    "embed": model.signatures["embed"](windows=windows)["embedding"].numpy().tolist(),
    "timeline": {name: value.numpy().tolist() for name, value in timeline.items()},
    "short": model.signatures["timeline"](waveform=tf.constant(waveform[:100]))["logits"].numpy().tolist(),
    "package_loaded": "audionet_tf" in sys.modules,
}
print(json.dumps(out))
"""

# Each loader with its defaults, as its users write it, in a process that imports nothing of this package.
LOADERS = """
import json, sys
import numpy as np
windows = np.random.default_rng(0).uniform(-0.5, 0.5, (3, 640)).astype(np.float32)
out = {}
if sys.argv[2] == "tf.saved_model.load":
    import tensorflow as tf
    out["logits"] = tf.saved_model.load(sys.argv[1])(windows).numpy().tolist()
elif sys.argv[2] == "keras.layers.TFSMLayer":
    import keras
    layer = keras.layers.TFSMLayer(sys.argv[1])
    out["logits"] = np.asarray(layer(windows)).tolist()
    inputs = keras.Input((640,))  # inside a functional model too
    out["in_model"] = keras.Model(inputs, layer(inputs)).predict(windows, verbose=0).tolist()
else:
    import tensorflow_hub as hub
    out["logits"] = hub.KerasLayer(sys.argv[1])(windows).numpy().tolist()
out["windows"] = windows.tolist()
out["package_loaded"] = "audionet_tf" in sys.modules
print(json.dumps(out))
"""


def relative_diff(a, b):
    """Largest difference relative to the logits' scale (at least 1), as docs/exports.md states parity."""
    return float(np.abs(np.asarray(a) - np.asarray(b)).max()) / max(1.0, float(np.abs(b).max()))


def test_savedmodel_signatures_agree_with_the_keras_model(exported):
    """Each signature, run in a fresh TensorFlow-only process, against the Keras model computed here."""
    from audionet_tf.model.student import embedding_model

    result = subprocess.run([sys.executable, "-c", SIGNATURES, str(exported["export"])], env=ENV,
                            capture_output=True, text=True, timeout=300, cwd="/")
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["package_loaded"] is False
    model = load_model(str(exported["run"] / "model.keras"))
    windows = np.asarray(out["windows"], np.float32)
    expected = model(windows[..., None], training=False).numpy()
    assert relative_diff(out["logits"], expected) <= 1e-5
    logits = np.asarray(out["logits"])
    softmax = np.exp(logits - logits.max(1, keepdims=True))
    softmax /= softmax.sum(1, keepdims=True)
    np.testing.assert_allclose(out["probabilities"], softmax, atol=1e-6)
    pooled = embedding_model(model, "pooled")(windows[..., None], training=False).numpy()
    assert np.asarray(out["embed"]).shape == (3, 16)
    np.testing.assert_allclose(out["embed"], pooled, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(pooled).max()))
    # timeline: window k is samples [640k, 640k + 640) (6 whole windows; the last 300 samples start none),
    # with each window's logits, scores, embedding and time together.
    waveform = np.asarray(out["waveform"], np.float32)
    timeline = out["timeline"]
    assert sorted(timeline) == ["embeddings", "logits", "scores", "times"] and len(timeline["logits"]) == 6
    assert timeline["times"] == pytest.approx([0.04 * k for k in range(6)], abs=1e-6)
    framed = np.stack([waveform[640 * k:640 * k + 640] for k in range(6)])
    framed_logits = model(framed[..., None], training=False).numpy()
    assert relative_diff(timeline["logits"], framed_logits) <= 1e-5
    shifted = np.stack([waveform[640 * k + 1:640 * k + 641] for k in range(6)])  # a shift would show
    assert relative_diff(timeline["logits"], model(shifted[..., None], training=False).numpy()) > 1e-3
    framed_softmax = np.exp(framed_logits - framed_logits.max(1, keepdims=True))
    np.testing.assert_allclose(timeline["scores"], framed_softmax / framed_softmax.sum(1, keepdims=True), atol=1e-6)
    framed_pooled = embedding_model(model, "pooled")(framed[..., None], training=False).numpy()
    np.testing.assert_allclose(timeline["embeddings"], framed_pooled, rtol=1e-5,
                               atol=1e-5 * max(1.0, np.abs(framed_pooled).max()))
    # Shorter than one window: zero-padded to one window.
    padded = np.zeros((1, 640, 1), np.float32)
    padded[0, :100, 0] = waveform[:100]
    assert relative_diff(out["short"], model(padded, training=False).numpy()) <= 1e-5


@pytest.mark.parametrize("loader", ["tf.saved_model.load", "keras.layers.TFSMLayer", "tensorflow_hub.KerasLayer"])
def test_export_loads_by_convention(exported, loader):
    """`tf.saved_model.load(path)(windows)`, `keras.layers.TFSMLayer(path)` and `tensorflow_hub.KerasLayer(path)`,
    each with its defaults in a fresh process, give the Keras model's logits."""
    result = subprocess.run([sys.executable, "-c", LOADERS, str(exported["export"]), loader], env=ENV,
                            capture_output=True, text=True, timeout=300, cwd="/")
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["package_loaded"] is False
    model = load_model(str(exported["run"] / "model.keras"))
    expected = model(np.asarray(out["windows"], np.float32)[..., None], training=False).numpy()
    assert np.asarray(out["logits"]).shape == (3, 8)
    assert relative_diff(out["logits"], expected) <= 1e-5
    if "in_model" in out:
        assert relative_diff(out["in_model"], expected) <= 1e-5


def test_litert_runs_both_tflite_files_and_int8_agrees_with_float(exported):
    from audionet_tf.dataset import reader

    model = load_model(str(exported["run"] / "model.keras"))
    # Real windows the export never saw (the held-out clips), plus noise, on a resized input.
    held_out = reader.load_arrays(str(exported["work"] / "data"), "validation")["audio"]
    noise = np.random.default_rng(1).uniform(-0.5, 0.5, (5, 640)).astype(np.float32)
    windows = np.concatenate([held_out, noise]).astype(np.float32)
    expected = model(windows[..., None], training=False).numpy()
    outputs = {}
    for name in ("model.tflite", "model_int8.tflite"):
        outputs[name] = run_tflite(exported["export"] / name, windows)
    assert relative_diff(outputs["model.tflite"], expected) <= 1e-5
    int8 = outputs["model_int8.tflite"]
    assert int8.shape == expected.shape and np.all(np.isfinite(int8))
    # The documented level (docs/exports.md): the int8 model's top-1 agrees with the float model's on >= 95 % of real windows.
    real = len(held_out)
    assert real >= 40
    agreement = float(np.mean(int8[:real].argmax(1) == outputs["model.tflite"][:real].argmax(1)))
    assert agreement >= 0.95, agreement
    # Quantised, not unrelated: the int8 logits follow the float ones.
    assert np.corrcoef(int8[:real].ravel(), expected[:real].ravel())[0, 1] > 0.95


def test_predict_processes_good_files_and_names_the_bad_one(exported, tmp_path, capsys):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"")
    out = tmp_path / "result.json"
    code = predict_cmd.main([exported["a"], str(broken), exported["b"], "--model", str(exported["export"]),
                         "--top-k", "2", "--json", str(out)])
    assert code == 1
    assert "broken.wav" in capsys.readouterr().err
    results = json.loads(out.read_text())
    assert [Path(r["file"]).name for r in results] == ["a.wav", "b.wav"]
    assert len(results[0]["windows"]) == 50 and len(results[1]["windows"]) == 37
    top_a = {w["top"][0]["class"] for w in results[0]["windows"]}
    top_b = {w["top"][0]["class"] for w in results[1]["windows"]}
    assert len(top_a) == 1 and len(top_b) == 1 and top_a != top_b  # two tones, two classes
    # The same answers from the .keras and the float .tflite.
    again = tmp_path / "again.csv"
    for model in (str(exported["run"] / "model.keras"), str(exported["export"] / "model.tflite")):
        assert predict_cmd.main([exported["a"], "--model", model, "--csv", str(again), "--quiet", "--overwrite"]) == 0
        assert set(line.split(",")[3] for line in again.read_text().splitlines()[1:] if ",1," in line) == top_a
    # An existing result is never replaced without --overwrite: refused before any work, the file untouched.
    before = out.read_bytes()
    capsys.readouterr()
    assert predict_cmd.main([exported["b"], "--model", str(exported["export"]), "--json", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == before


def test_predict_per_second_figures_average_the_windows_probabilities(exported, tmp_path, capsys):
    out = tmp_path / "all.json"
    assert predict_cmd.main([exported["b"], "--model", str(exported["export"]), "--top-k", "8", "--json",
                             str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())[0]
    probabilities = np.zeros((len(result["windows"]), 8))
    for row, window in zip(probabilities, result["windows"]):
        for entry in window["top"]:
            row[entry["index"]] = entry["probability"]
    seconds = np.floor([w["time"] for w in result["windows"]]).astype(int)
    assert [s["second"] for s in result["seconds"]] == [0, 1]  # 1.5 s of audio
    for second in result["seconds"]:
        mean = probabilities[seconds == second["second"]].mean(axis=0)
        got = {e["index"]: e["probability"] for e in second["top"]}
        assert sum(got.values()) == pytest.approx(1.0, abs=1e-5)
        for index, value in got.items():
            assert value == pytest.approx(mean[index], abs=1e-6)
        top = max(got, key=got.get)
        assert f"{second['second']:4d} s  {second['top'][0]['class']} {got[top]:.2f}" in printed


def test_predict_defaults_to_the_newest_export(exported, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    now = time.time()
    for age, name in ((100, "older"), (0, "newer"), (200, "oldest")):
        shutil.copytree(exported["export"], tmp_path / "saved_models" / name)
        labels = tmp_path / "saved_models" / name / "labels.txt"
        labels.write_text("".join(f"{name} {line}\n" for line in labels.read_text().splitlines()))
        os.utime(tmp_path / "saved_models" / name, (now - age, now - age))
    out = tmp_path / "result.json"
    assert predict_cmd.main([exported["a"], "--json", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())[0]
    assert result["model"] == os.path.join("saved_models", "newer")
    assert all(w["top"][0]["class"].startswith("newer ") for w in result["windows"])
    # With no export at all: one message saying how to make one.
    monkeypatch.chdir(tmp_path / "saved_models")
    capsys.readouterr()
    assert predict_cmd.main([exported["a"]]) == 2
    assert "no exported model under saved_models/" in capsys.readouterr().err


@pytest.mark.parametrize("make,message", [
    (lambda p: p.mkdir(), "not an export directory"),
    (lambda p: p.with_suffix(".tflite").write_bytes(b"TFL3" + b"\0" * 20), "TFLite"),
])
def test_bad_models_get_one_clear_message(exported, tmp_path, capsys, make, message):
    target = tmp_path / "model"
    make(target)
    path = str(target) if target.exists() else str(target.with_suffix(".tflite"))
    assert predict_cmd.main([exported["a"], "--model", path]) == 2
    err = capsys.readouterr().err
    assert message in err and path in err and "Traceback" not in err


def test_truncated_tflite_is_refused(exported, tmp_path, capsys):
    data = (exported["export"] / "model.tflite").read_bytes()
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(data[: len(data) // 3])
    assert predict_cmd.main([exported["a"], "--model", str(cut)]) == 2
    assert "cut.tflite" in capsys.readouterr().err


def test_embed_writes_npz_with_embeddings_and_timestamps(exported, tmp_path):
    from audionet_tf.model.student import embedding_model

    out = tmp_path / "emb"
    assert embed_cmd.main([exported["a"], exported["b"], "--out", str(out), "--model", str(exported["export"])]) == 0
    a = np.load(out / "a.npz")
    assert a["embedding"].shape == (50, 16) and a["timestamps"][1] == pytest.approx(0.04)
    # Values: the Keras model's pooled layer on the file's windows.
    with wave.open(exported["a"]) as handle:
        samples = np.frombuffer(handle.readframes(handle.getnframes()), np.int16).astype(np.float32) / 32768
    model = load_model(str(exported["run"] / "model.keras"))
    pooled = embedding_model(model, "pooled")(samples.reshape(50, 640, 1), training=False).numpy()
    np.testing.assert_allclose(a["embedding"], pooled, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(pooled).max()))
    conv_out = tmp_path / "conv"
    assert embed_cmd.main([exported["a"], "--out", str(conv_out), "--model", str(exported["run"]), "--layer", "conv",
                       "--hop-ms", "20"]) == 0
    conv = np.load(conv_out / "a.npz")
    assert conv["embedding"].shape == (99, 48) and conv["timestamps"][1] == pytest.approx(0.02)


def test_embed_names_audio_shorter_than_one_window_and_goes_on(exported, tmp_path, capsys):
    short = write_wav(tmp_path / "short.wav", 0.03, TONES[0])  # 480 samples, the window is 640
    out = tmp_path / "emb"
    assert embed_cmd.main([short, exported["a"], "--out", str(out), "--model", str(exported["export"])]) == 1
    err = capsys.readouterr().err
    assert f"{short}: 480 samples of audio, shorter than one window (640)" in err and "Traceback" not in err
    assert sorted(os.listdir(out)) == ["a.npz"]
    assert embed_cmd.main([short, "--out", str(out), "--model", str(exported["export"])]) == 1
    assert "shorter than one window" in capsys.readouterr().err


def test_export_command_from_a_run_and_from_a_keras_file_records_its_parity(exported, tmp_path, capsys):
    """`python -m audionet_tf.export runs/NAME` (int8 calibrated on the run's dataset) and `MODEL.keras --labels`
    (no dataset: dynamic-range int8 and random-noise windows); the parity figures are recomputed here."""
    done = subprocess.run([sys.executable, "-m", "audionet_tf.export", str(exported["run"]), "--out",
                           str(tmp_path / "from-run")], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.loads((tmp_path / "from-run" / "metadata.json").read_text())
    assert meta["int8_quantization"] == "int8 (calibrated on dataset windows)"
    # Measured on the run's held-out windows (the calibration never saw them): 2 clips of 50 frames.
    assert meta["parity"]["windows_source"] == "dataset" and meta["parity"]["windows_split"] == "validation"
    assert meta["parity"]["windows"] == 100
    assert json.loads(done.stdout) == meta["parity"]
    assert (tmp_path / "from-run" / "labels.txt").read_text() == (exported["export"] / "labels.txt").read_text()

    labels = tmp_path / "names.txt"
    labels.write_text("".join(f"name {i}\n" for i in range(8)))
    out = tmp_path / "from-file"
    assert export_cmd.main([str(exported["run"] / "model.keras"), "--out", str(out), "--labels", str(labels)]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["int8_quantization"] == "dynamic-range (no dataset at hand)"
    assert meta["parity"]["windows_source"] == "random noise"
    assert (out / "labels.txt").read_text() == labels.read_text()
    # The figures, recomputed on the same windows (64 of noise from seed 0, as the export documents).
    windows = (0.3 * np.random.default_rng(0).standard_normal((64, 640))).astype(np.float32)
    expected = load_model(str(exported["run"] / "model.keras")).predict(windows[..., None], verbose=0)
    logits = {}
    for name in ("model.tflite", "model_int8.tflite"):
        logits[name] = run_tflite(out / name, windows)
    parity = meta["parity"]
    assert parity["windows"] == 64 and parity["logits_scale"] == pytest.approx(max(1.0, np.abs(expected).max()))
    assert parity["tflite_float_max_abs_diff"] == pytest.approx(relative_diff(logits["model.tflite"], expected),
                                                                rel=1e-3)
    assert parity["tflite_float_max_abs_diff"] <= 1e-5 and parity["savedmodel_max_abs_diff"] <= 1e-5
    assert parity["int8_top1_agreement_with_float"] == float(
        np.mean(logits["model_int8.tflite"].argmax(1) == logits["model.tflite"].argmax(1)))
    assert (out / "model_int8.tflite").stat().st_size < 0.9 * (out / "model.tflite").stat().st_size  # quantised


def test_embed_never_overwrites_silently(exported, tmp_path, capsys):
    out = tmp_path / "emb"
    assert embed_cmd.main([exported["a"], "--out", str(out), "--model", str(exported["export"])]) == 0
    before = (out / "a.npz").read_bytes()
    capsys.readouterr()
    # Two inputs with one stem (a.wav and a.flac, x/a.wav) would write the same a.npz: refused, nothing written.
    twin = tmp_path / "x"
    twin.mkdir()
    (twin / "a.wav").write_bytes(Path(exported["b"]).read_bytes())
    (tmp_path / "a.flac").write_bytes(b"")
    fresh = tmp_path / "fresh"
    assert embed_cmd.main([exported["a"], str(twin / "a.wav"), str(tmp_path / "a.flac"), exported["b"],
                       "--out", str(fresh), "--model", str(exported["export"])]) == 2
    err = capsys.readouterr().err
    assert exported["a"] in err and str(twin / "a.wav") in err and str(tmp_path / "a.flac") in err
    assert str(fresh / "a.npz") in err and "distinct file name" in err
    assert not fresh.exists() or not any(fresh.iterdir())
    # An existing output is kept unless --overwrite is given.
    assert embed_cmd.main([exported["b"], exported["a"], "--out", str(out), "--model", str(exported["export"]),
                       "--hop-ms", "20"]) == 2
    err = capsys.readouterr().err
    assert str(out / "a.npz") in err and "--overwrite" in err
    assert (out / "a.npz").read_bytes() == before and not (out / "b.npz").exists()
    assert embed_cmd.main([exported["a"], "--out", str(out), "--model", str(exported["export"]), "--hop-ms", "20",
                       "--overwrite"]) == 0
    assert np.load(out / "a.npz")["embedding"].shape == (99, 16)


def whole_file_probabilities(student, path):
    """The computation before streaming: the whole decoded file framed at once, batched from its first window."""
    wave_ = read_audio(path, 16000)
    windows = np.stack([wave_[s:s + 640] for s in range(0, len(wave_) - 639, 640)])
    logits = np.concatenate([student.logits(windows[i:i + 256]) for i in range(0, len(windows), 256)])
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return windows, exp / exp.sum(axis=-1, keepdims=True)


def test_predict_and_embed_stream_with_the_whole_files_results(exported, tmp_path):
    """A 200 s recording is read in three chunks of windows (2,048 + 2,048 + 904; the first boundary falls
    inside second 81): every window's top-k and every second's figures equal the whole-file computation's."""
    from audionet_tf.serving import inference

    rate, seconds = 16000, 200
    t = np.arange(seconds * rate) / rate
    tone = np.where((t // 7.3) % 2 == 0, TONES[0], TONES[1])  # the class changes every 7.3 s
    rng = np.random.default_rng(2)
    signal = 0.4 * np.sin(2 * np.pi * tone * t) + 0.05 * rng.standard_normal(len(t))
    path = tmp_path / "long.wav"
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes((signal * 32767).astype(np.int16).tobytes())
    assert inference.CHUNK_WINDOWS == 2048
    out = tmp_path / "long.json"
    assert predict_cmd.main([str(path), "--model", str(exported["export"]), "--top-k", "3", "--json", str(out),
                             "--quiet"]) == 0
    result = json.loads(out.read_text())[0]
    student = inference.load_student(str(exported["export"]))
    windows, probabilities = whole_file_probabilities(student, str(path))
    assert len(result["windows"]) == len(windows) == 5000 and result["duration"] == seconds
    for k, window in enumerate(result["windows"]):
        order = np.argsort(-probabilities[k])[:3]
        assert window["time"] == k * 640 / 16000
        assert [e["index"] for e in window["top"]] == order.tolist()
        assert [e["probability"] for e in window["top"]] == [float(probabilities[k][i]) for i in order]
    whole_seconds = np.floor(np.arange(len(windows)) * 0.04).astype(int)
    assert [s["second"] for s in result["seconds"]] == list(range(seconds))
    for entry in result["seconds"]:
        mean = probabilities[whole_seconds == entry["second"]].mean(axis=0)
        order = np.argsort(-mean)[:3]
        assert [(e["index"], e["probability"]) for e in entry["top"]] == [(int(i), float(mean[i])) for i in order]
    assert len({w["top"][0]["class"] for w in result["windows"]}) == 2  # both tones heard
    # embed at a hop other than the window (20 ms: 9,999 windows, five chunks), pooled and conv.
    for layer, model in (("pooled", exported["export"]), ("conv", exported["run"])):
        assert embed_cmd.main([str(path), "--out", str(tmp_path / layer), "--model", str(model), "--layer", layer,
                               "--hop-ms", "20"]) == 0
        got = np.load(tmp_path / layer / "long.npz")
        wave_ = read_audio(str(path), 16000)
        starts = range(0, len(wave_) - 639, 320)
        framed = np.stack([wave_[s:s + 640] for s in starts])
        student = inference.load_student(str(model / "model.keras") if layer == "conv" else str(model))
        run = student.embed if layer == "pooled" else lambda w: embed.conv_statistics(student.keras_model, w)
        expected = np.concatenate([run(framed[i:i + 256]) for i in range(0, len(framed), 256)]).astype(np.float32)
        assert got["embedding"].shape == expected.shape and len(expected) == 9999
        np.testing.assert_array_equal(got["embedding"], expected)
        np.testing.assert_allclose(got["timestamps"], np.arange(9999) * 0.02, atol=1e-4)


# Runs a module as `python -m` does and reports the process's own VmHWM when it exits. (A child's
# ru_maxrss from wait4 is no use here: Linux carries the parent's high-water mark across fork and exec,
# so a child of a large pytest process reports at least the parent's peak.)
PEAK = """
import re, runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
finally:
    status = open("/proc/self/status").read()
    sys.stderr.write("\\nVmHWM " + re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1) + "\\n")
"""


def peak_memory_mb(args, cwd):
    """Run `python -m audionet_tf.<command> ...` in a fresh process; its peak resident memory (VmHWM) in MB."""
    result = subprocess.run([sys.executable, "-c", PEAK, *args], env=ENV, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return int(re.findall(r"^VmHWM (\d+)$", result.stderr, flags=re.M)[-1]) / 1024


@pytest.mark.slow
def test_predict_and_embed_memory_is_flat_in_recording_length(tmp_path):
    """10 and 60 minutes of 16 kHz noise through predict (1000 classes, every window's top-k to JSON) and
    embed, each in a fresh process: peaks within 1.2x of each other, and under 1 GB for the hour."""
    import keras

    from audionet_tf.model.student import build_audionet
    from audionet_tf.preparation.media import ffmpeg_exe
    from audionet_tf.serving.export import export_model

    keras.utils.set_random_seed(0)
    export_model(build_audionet(None, 1000, input_scale=256.0), str(tmp_path / "export"),
                 class_names=[f"class_{i}" for i in range(1000)])
    peaks = {}
    for minutes in (10, 60):
        wav = tmp_path / f"noise{minutes}.wav"
        subprocess.run([ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i",
                        "anoisesrc=color=pink:amplitude=0.3:sample_rate=16000:seed=1", "-t", str(60 * minutes),
                        "-ac", "1", "-c:a", "pcm_s16le", str(wav)], check=True, timeout=120)
        peaks["predict", minutes] = peak_memory_mb(
            ["audionet_tf.predict", str(wav), "--model", "export", "--quiet", "--json", f"p{minutes}.json"], tmp_path)
        peaks["embed", minutes] = peak_memory_mb(
            ["audionet_tf.embed", str(wav), "--model", "export", "--out", f"e{minutes}"], tmp_path)
        wav.unlink()
    print({f"{command} {minutes} min": f"{mb:.0f} MB" for (command, minutes), mb in peaks.items()})
    assert len(json.loads((tmp_path / "p60.json").read_text())[0]["windows"]) == 90000
    assert np.load(tmp_path / "e60" / "noise60.npz")["embedding"].shape == (90000, 16)
    for command in ("predict", "embed"):
        assert peaks[command, 60] <= 1.2 * peaks[command, 10], peaks
        assert peaks[command, 60] < 1024, peaks


@pytest.mark.parametrize("example", ["savedmodel_app.py", "litert_app.py", "tfsmlayer_app.py"])
def test_export_page_snippets_run_and_are_on_the_page(exported, example):
    code = (ROOT / "examples" / example).read_text()
    page = (ROOT / "docs" / "exports.md").read_text()
    assert code.strip() in page, f"docs/exports.md does not show examples/{example} verbatim"
    # The usage line is a command that works from the project root, where the demo exports.
    usage = re.search(r"^\s+python (\S+) saved_models/demo sound\.wav$", code, flags=re.M)
    assert usage and (ROOT / usage.group(1)).is_file(), code.splitlines()[:3]
    result = subprocess.run([sys.executable, usage.group(1), str(exported["export"]), exported["a"]],
                            env=ENV, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip()
    if example == "tfsmlayer_app.py":  # TFSMLayer's default endpoint, then the features under a classifier
        assert re.search(r"^\(3, 8\)$", result.stdout, flags=re.M) and re.search(r"\(50, 2\)", result.stdout)
    if example == "savedmodel_app.py":  # 50 timeline rows, all the tone's class (as predict finds it)
        rows = re.findall(r"^\s*(\d+\.\d\d) s  (.+)$", result.stdout, flags=re.M)
        assert len(rows) == 50 and float(rows[1][0]) == pytest.approx(0.04) and len({r[1] for r in rows}) == 1
        assert "embeddings: (50, 16)" in result.stdout and "logits of two windows: (2, 8)" in result.stdout
    # b.wav is 44.1 kHz stereo: refused with its format and the expected one, not misread.
    refused = subprocess.run([sys.executable, usage.group(1), str(exported["export"]), exported["b"]],
                             env=ENV, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "b.wav: 44100 Hz, 2 channel(s), 16-bit; expected 16000 Hz mono 16-bit PCM" in refused.stderr


@pytest.mark.slow
def test_inference_benchmark_prints_the_speed_page_rows_and_their_sizes(tmp_path):
    """The speed page's inference table is the benchmark's output: same rows, same file sizes (speed varies
    by run; a 1 s recording keeps this quick), and the int8 saving stated in the text is the table's."""
    readme = (ROOT / "docs" / "speed.md").read_text()
    section = readme[readme.index("python benchmarks/inference.py"):]
    rows = dict(re.findall(r"^\| (.+?) \| ([\d,]+) bytes \|", section, flags=re.M))
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "inference.py"), "--seconds", "1",
                             "--repeats", "1"], env=ENV, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    printed = dict(re.findall(r"^\| (.+?) \| ([\d,]+) bytes \|", result.stdout, flags=re.M))
    assert list(printed) == list(rows) and len(rows) == 6
    for name, size in printed.items():
        ours, theirs = int(size.replace(",", "")), int(rows[name].replace(",", ""))
        # The SavedModel's protobuf and the ONNX file vary by a few bytes between runs (names that count the
        # functions and models built in the process); the TFLite files do not.
        varies = name.startswith(("SavedModel", "ONNX"))
        assert abs(ours - theirs) <= (0.001 * theirs if varies else 0), (name, ours, theirs)
    float_size = int(rows["TFLite float, 1 thread"].replace(",", ""))
    int8_size = int(rows["TFLite int8, 1 thread"].replace(",", ""))
    assert f"int8 file is {round(100 * (1 - int8_size / float_size))} % smaller" in " ".join(section.split())


def litert_top1_agreement(export_dir, windows) -> float:
    """The int8 file's top-1 agreement with the float file on `windows`, both run with LiteRT here."""
    tops = []
    for name in ("model.tflite", "model_int8.tflite"):
        tops.append(run_tflite(export_dir / name, windows).argmax(1))
    return float(np.mean(tops[0] == tops[1]))


def test_export_warns_when_int8_agrees_with_float_below_the_goal_and_only_then(exported, tmp_path, caplog):
    """Two real exports calibrated on the dataset's windows: the trained student (int8 agrees with float) and the
    same student with its logits squeezed into a sliver of their int8 range by one class far below the others
    (the other classes then differ by less than one int8 step, so int8 can no longer tell which is on top)."""
    import logging

    from audionet_tf.serving.export import CALIBRATION_WINDOWS, INT8_AGREEMENT_GOAL, calibration_windows, export_model

    trained = load_model(str(exported["run"] / "model.keras"))
    squeezed = load_model(str(exported["run"] / "model.keras"))
    kernel, bias = squeezed.get_layer("logits").get_weights()
    bias = np.zeros_like(bias)
    bias[-1] = -1e4
    squeezed.get_layer("logits").set_weights([kernel * 1e-3, bias])
    windows = calibration_windows(str(exported["work"] / "data"))
    names = [f"class {i}" for i in range(8)]
    seen = {}
    for name, model in (("trained", trained), ("squeezed", squeezed)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="audionet_tf.serving.export"):
            doc = export_model(model, str(tmp_path / name), class_names=names, calibration=windows)
        agreement = litert_top1_agreement(tmp_path / name, windows[:CALIBRATION_WINDOWS].astype(np.float32))
        assert doc["parity"]["int8_top1_agreement_with_float"] == pytest.approx(agreement)
        warnings = [r.getMessage() for r in caplog.records if "int8 model agrees" in r.getMessage()]
        seen[name] = (agreement, warnings, doc["parity"])
    (good, good_warnings, _), (bad, bad_warnings, bad_parity) = seen["trained"], seen["squeezed"]
    # One export on each side of the goal.
    assert good >= INT8_AGREEMENT_GOAL > bad, seen
    assert good_warnings == []
    assert bad_warnings == [f"int8 model agrees with the float model on {100 * bad:.1f}% of "
                            f"{bad_parity['windows']} {bad_parity['windows_split']} windows "
                            f"(goal {100 * INT8_AGREEMENT_GOAL:.0f}%)"]


def test_predict_per_second_figures_average_every_window_of_a_second_split_by_a_chunk_boundary(
        exported, tmp_path, capsys, monkeypatch):
    """Chunks of 7 windows: second 0 (windows 0-24) spans four chunks and second 1 three, and the tone changes at
    0.52 s, inside a chunk of second 0: each second's figures are the mean over all of its windows."""
    from audionet_tf.serving import inference

    monkeypatch.setattr(inference, "CHUNK_WINDOWS", 7)
    rate = 16000
    t = np.arange(int(1.5 * rate)) / rate
    tone = np.where(t < 0.52, TONES[0], TONES[1])
    path = tmp_path / "change.wav"
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes((0.5 * np.sin(2 * np.pi * tone * t) * 32767).astype(np.int16).tobytes())
    out = tmp_path / "change.json"
    assert predict_cmd.main([str(path), "--model", str(exported["export"]), "--top-k", "8", "--json", str(out),
                             "--quiet"]) == 0
    result = json.loads(out.read_text())[0]
    probabilities = np.zeros((len(result["windows"]), 8))
    for row, window in zip(probabilities, result["windows"]):
        for entry in window["top"]:
            row[entry["index"]] = entry["probability"]
    assert len(probabilities) == 37
    # Both tones are heard within second 0: its average is not that of any one chunk's windows.
    assert len({int(probabilities[k].argmax()) for k in range(25)}) == 2
    seconds = np.floor([w["time"] for w in result["windows"]]).astype(int)
    assert [s["second"] for s in result["seconds"]] == [0, 1]
    for second in result["seconds"]:
        mean = probabilities[seconds == second["second"]].mean(axis=0)
        got = {e["index"]: e["probability"] for e in second["top"]}
        assert sorted(got) == list(range(8))
        for index, value in got.items():
            assert value == pytest.approx(mean[index], abs=1e-6), (second["second"], index)
