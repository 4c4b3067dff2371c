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

from audionet_tf import config as cfg
from audionet_tf import embed, predict, train
from audionet_tf.model import load_model
from audionet_tf.synthetic import write_synthetic_dataset

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


def test_export_holds_every_artifact_and_its_parity(exported):
    meta = json.loads((exported["export"] / "metadata.json").read_text())
    for name in ("saved_model.pb", "model.tflite", "model_int8.tflite", "labels.txt", "metadata.json"):
        assert (exported["export"] / name).is_file(), name
    assert meta["sample_rate"] == 16000 and meta["window_samples"] == 640 and meta["num_classes"] == 8
    assert meta["parity"]["savedmodel_max_abs_diff"] <= 1e-5
    assert meta["parity"]["tflite_float_max_abs_diff"] <= 1e-5
    assert meta["parity"]["windows_source"] == "dataset" and meta["int8_quantization"].startswith("int8")
    assert meta["parity"]["int8_top1_agreement_with_float"] >= 0.95
    assert meta["final_metrics"]["validation"]["top1_agreement"] > 0.9


SIGNATURES = """
import json, sys
import numpy as np
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
windows = tf.constant(np.random.default_rng(0).uniform(-0.5, 0.5, (3, 640)).astype(np.float32))
out = {
    "logits": model.signatures["serving_default"](windows=windows)["logits"].shape.as_list(),
    "probabilities": float(tf.reduce_sum(model.signatures["probabilities"](windows=windows)["probabilities"][0])),
    "embed": model.signatures["embed"](windows=windows)["embedding"].shape.as_list(),
    "timeline": model.signatures["timeline"](waveform=tf.zeros([16000]))["times"].numpy().tolist()[:3],
    "short": model.signatures["timeline"](waveform=tf.zeros([100]))["logits"].shape.as_list(),
    "package_loaded": "audionet_tf" in sys.modules,
}
print(json.dumps(out))
"""


def test_savedmodel_signatures_in_a_fresh_tensorflow_only_process(exported):
    result = subprocess.run([sys.executable, "-c", SIGNATURES, str(exported["export"])], env=ENV,
                            capture_output=True, text=True, timeout=300, cwd="/")
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["logits"] == [3, 8] and out["embed"] == [3, 16] and abs(out["probabilities"] - 1) < 1e-5
    assert out["timeline"] == pytest.approx([0.0, 0.04, 0.08]) and out["short"] == [1, 8]
    assert out["package_loaded"] is False


def test_litert_runs_both_tflite_files_on_a_resized_input(exported):
    from ai_edge_litert.interpreter import Interpreter

    model = load_model(str(exported["run"] / "model.keras"))
    windows = np.random.default_rng(1).uniform(-0.5, 0.5, (5, 640)).astype(np.float32)
    expected = model.predict(windows[..., None], verbose=0)
    outputs = {}
    for name in ("model.tflite", "model_int8.tflite"):
        interpreter = Interpreter(model_path=str(exported["export"] / name))
        index = interpreter.get_input_details()[0]["index"]
        interpreter.resize_tensor_input(index, [5, 640])
        interpreter.allocate_tensors()
        interpreter.set_tensor(index, windows)
        interpreter.invoke()
        outputs[name] = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    scale = max(1.0, float(np.abs(expected).max()))
    assert float(np.abs(outputs["model.tflite"] - expected).max()) / scale <= 1e-5
    assert outputs["model_int8.tflite"].shape == (5, 8)


def test_predict_processes_good_files_and_names_the_bad_one(exported, tmp_path, capsys):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"")
    out = tmp_path / "result.json"
    code = predict.main([exported["a"], str(broken), exported["b"], "--model", str(exported["export"]),
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
    for model in (str(exported["run"] / "model.keras"), str(exported["export"] / "model.tflite")):
        again = tmp_path / "again.csv"
        assert predict.main([exported["a"], "--model", model, "--csv", str(again), "--quiet"]) == 0
        assert set(line.split(",")[3] for line in again.read_text().splitlines()[1:] if ",1," in line) == top_a


@pytest.mark.parametrize("make,message", [
    (lambda p: p.mkdir(), "not an export directory"),
    (lambda p: p.with_suffix(".tflite").write_bytes(b"TFL3" + b"\0" * 20), "TFLite"),
])
def test_bad_models_get_one_clear_message(exported, tmp_path, capsys, make, message):
    target = tmp_path / "model"
    make(target)
    path = str(target) if target.exists() else str(target.with_suffix(".tflite"))
    assert predict.main([exported["a"], "--model", path]) == 2
    err = capsys.readouterr().err
    assert message in err and path in err and "Traceback" not in err


def test_truncated_tflite_is_refused(exported, tmp_path, capsys):
    data = (exported["export"] / "model.tflite").read_bytes()
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(data[: len(data) // 3])
    assert predict.main([exported["a"], "--model", str(cut)]) == 2
    assert "cut.tflite" in capsys.readouterr().err


def test_embed_writes_npz_with_embeddings_and_timestamps(exported, tmp_path):
    out = tmp_path / "emb"
    assert embed.main([exported["a"], exported["b"], "--out", str(out), "--model", str(exported["export"])]) == 0
    a = np.load(out / "a.npz")
    assert a["embedding"].shape == (50, 16) and a["timestamps"][1] == pytest.approx(0.04)
    assert embed.main([exported["a"], "--out", str(out), "--model", str(exported["run"]), "--layer", "conv",
                       "--hop-ms", "20"]) == 0
    conv = np.load(out / "a.npz")
    assert conv["embedding"].shape == (99, 48) and conv["timestamps"][1] == pytest.approx(0.02)


@pytest.mark.parametrize("example", ["savedmodel_app.py", "litert_app.py", "tfsmlayer_app.py"])
def test_readme_snippets_run_and_are_in_the_readme(exported, example):
    code = (ROOT / "examples" / example).read_text()
    readme = (ROOT / "README.md").read_text()
    assert code.strip() in readme, f"README does not show examples/{example} verbatim"
    result = subprocess.run([sys.executable, str(ROOT / "examples" / example), str(exported["export"]),
                             exported["a"]], env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip()
    if example == "tfsmlayer_app.py":
        assert re.search(r"\(50, 2\)", result.stdout)
