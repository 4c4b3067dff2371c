"""The export in other apps: TensorFlow alone, LiteRT alone, TFSMLayer; predict and embed on real files."""
import json
import os
import re
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from audionet_tf.commands import embed as embed_cmd, predict as predict_cmd, train
from audionet_tf.core import config as cfg
from audionet_tf.dataset.synthetic import write_synthetic_dataset
from audionet_tf.model.student import load_model
from audionet_tf.serving import embed, predict
from audionet_tf.training import trainer

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
    for name in ("saved_model.pb", "model.tflite", "model_int8.tflite", "labels.txt", "metadata.json"):
        assert (exported["export"] / name).is_file(), name
    assert meta["sample_rate"] == 16000 and meta["window_samples"] == 640 and meta["num_classes"] == 8
    assert meta["parity"]["windows_source"] == "dataset" and meta["int8_quantization"].startswith("int8")
    for name in ("model.tflite", "model_int8.tflite", "saved_model.pb"):
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
    "timeline_logits": timeline["logits"].numpy().tolist(),
    "timeline_times": timeline["times"].numpy().tolist(),
    "short": model.signatures["timeline"](waveform=tf.constant(waveform[:100]))["logits"].numpy().tolist(),
    "package_loaded": "audionet_tf" in sys.modules,
}
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
    # timeline: window k is samples [640k, 640k + 640) (6 whole windows; the last 300 samples start none).
    waveform = np.asarray(out["waveform"], np.float32)
    assert len(out["timeline_logits"]) == 6
    assert out["timeline_times"] == pytest.approx([0.04 * k for k in range(6)], abs=1e-6)
    framed = np.stack([waveform[640 * k:640 * k + 640] for k in range(6)])
    assert relative_diff(out["timeline_logits"], model(framed[..., None], training=False).numpy()) <= 1e-5
    shifted = np.stack([waveform[640 * k + 1:640 * k + 641] for k in range(6)])  # a shift would show
    assert relative_diff(out["timeline_logits"], model(shifted[..., None], training=False).numpy()) > 1e-3
    # Shorter than one window: zero-padded to one window.
    padded = np.zeros((1, 640, 1), np.float32)
    padded[0, :100, 0] = waveform[:100]
    assert relative_diff(out["short"], model(padded, training=False).numpy()) <= 1e-5


def test_litert_runs_both_tflite_files_and_int8_agrees_with_float(exported):
    from ai_edge_litert.interpreter import Interpreter

    from audionet_tf.dataset import reader

    model = load_model(str(exported["run"] / "model.keras"))
    # Real windows the export never saw (the held-out clips), plus noise, on a resized input.
    held_out = reader.load_arrays(str(exported["work"] / "data"), "validation")["audio"]
    noise = np.random.default_rng(1).uniform(-0.5, 0.5, (5, 640)).astype(np.float32)
    windows = np.concatenate([held_out, noise]).astype(np.float32)
    expected = model(windows[..., None], training=False).numpy()
    outputs = {}
    for name in ("model.tflite", "model_int8.tflite"):
        interpreter = Interpreter(model_path=str(exported["export"] / name))
        index = interpreter.get_input_details()[0]["index"]
        interpreter.resize_tensor_input(index, list(windows.shape))
        interpreter.allocate_tensors()
        interpreter.set_tensor(index, windows)
        interpreter.invoke()
        outputs[name] = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
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
    if example == "tfsmlayer_app.py":
        assert re.search(r"\(50, 2\)", result.stdout)
    if example == "savedmodel_app.py":  # 50 timeline rows, all the tone's class (as predict finds it)
        rows = re.findall(r"^\s*(\d+\.\d\d) s  (.+)$", result.stdout, flags=re.M)
        assert len(rows) == 50 and float(rows[1][0]) == pytest.approx(0.04) and len({r[1] for r in rows}) == 1
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
    assert list(printed) == list(rows) and len(rows) == 4
    for name, size in printed.items():
        ours, theirs = int(size.replace(",", "")), int(rows[name].replace(",", ""))
        # The SavedModel's protobuf varies by a few bytes between runs; the other files do not.
        assert abs(ours - theirs) <= (0.001 * theirs if name.startswith("SavedModel") else 0), (name, ours, theirs)
    float_size = int(rows["TFLite float, 1 thread"].replace(",", ""))
    int8_size = int(rows["TFLite int8, 1 thread"].replace(",", ""))
    assert f"int8 file is {round(100 * (1 - int8_size / float_size))} % smaller" in " ".join(section.split())
