"""student.onnx: what the export writes (named outputs, dynamic axes, metadata, parity), and apps that run it
with onnxruntime and numpy alone, on real recordings, against the SavedModel and `audionet predict`."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest

import real_student
from audionet_tf.commands import export as export_cmd, predict as predict_cmd
from audionet_tf.core.config import ExportConfig
from audionet_tf.core.errors import AudioNetError
from audionet_tf.model.student import build_student, embedding_model
from audionet_tf.serving import inference, onnx_model

ROOT = real_student.ROOT
ENV = real_student.ENV
TOLERANCE = 1e-5  # the export's own parity tolerance: largest difference / the logits' scale (at least 1)

# Run before the app's own code: importing TensorFlow, Keras or this package (or the converter, which imports
# TensorFlow) fails, as it would where none is installed.
NO_TENSORFLOW = """
import sys
class Blocked:
    names = ("tensorflow", "keras", "tf_keras", "audionet_tf", "tf2onnx")
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ImportError(f"{name} is not installed here")
        return None
sys.meta_path.insert(0, Blocked())
try:
    import tensorflow
except ImportError:
    pass
else:
    sys.exit("tensorflow imported despite the blocker")
"""

RUN_WINDOWS = NO_TENSORFLOW + """
import json
import numpy as np
import onnxruntime
session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
windows = np.load(sys.argv[2])
logits, embedding = session.run(["logits", "embedding"], {"windows": windows})
np.save(sys.argv[3], logits)
np.save(sys.argv[4], embedding)
loaded = sorted(name for name in sys.modules if name.split(".")[0] in Blocked.names)
print(json.dumps({"meta": session.get_modelmeta().custom_metadata_map, "loaded": loaded}))
"""

RUN_EXAMPLE = NO_TENSORFLOW + """
import runpy
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
assert not [name for name in sys.modules if name.split(".")[0] in Blocked.names], "a blocked module was loaded"
"""


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b))) / max(1.0, float(np.max(np.abs(b))))


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    return real_student.exported(tmp_path_factory)


@pytest.mark.parametrize("architecture", [
    {"input_length": None, "num_classes": 5},  # the slides' student: input scale 256, 16 filters
    {"input_length": None, "num_classes": 7, "conv_filters": 8, "input_scale": 1.0},  # no scaling layer
    {"input_length": 640, "num_classes": 3},  # a fixed window: only the batch axis stays dynamic
    # SoundNet-5 at its shortest window (fixed, as the train command builds it): conv4's 256 averaged over time.
    {"architecture": "soundnet5", "input_length": 56798, "num_classes": 3},
])
def test_onnx_file_has_named_outputs_dynamic_axes_and_metadata(tmp_path, architecture):
    """Every student the builder makes converts: `windows` in, `logits` and `embedding` out with named axes, the
    class names and timing in metadata_props, and onnxruntime's numbers equal Keras's at several batch sizes and
    (where the model's input length is free) window lengths."""
    import onnx

    model = build_student(**architecture)
    soundnet = architecture.get("architecture", "audionet") != "audionet"
    names = [f"sound {i}" for i in range(architecture["num_classes"])]
    path = str(tmp_path / "student.onnx")
    onnx_model.write_onnx(model, path, class_names=names, sample_rate=16000, window_samples=640, hop_samples=320,
                          opset=15)
    proto = onnx.load(path)
    dims = lambda value: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]  # noqa: E731
    fixed = architecture["input_length"]
    assert [(v.name, dims(v)) for v in proto.graph.input] == [("windows", ["batch", fixed or "samples"])]
    features = 256 if soundnet else architecture.get("conv_filters", 16)
    assert sorted((v.name, dims(v)) for v in proto.graph.output) == [
        ("embedding", ["batch", features]), ("logits", ["batch", architecture["num_classes"]])]
    assert proto.opset_import[0].version == 15
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["class_names"]) == names
    assert (props["sample_rate"], props["window_samples"], props["hop_samples"]) == ("16000", "640", "320")
    assert (props["architecture"], props["embedding_layer"]) == (
        ("soundnet5", "conv4") if soundnet else ("audionet", "pooled"))
    assert ("fixed at" in props["input"]) == bool(fixed)

    student = onnx_model.open_onnx(path)
    rng = np.random.default_rng(1)
    pooled = embedding_model(model)
    sizes = [(1, fixed), (3, fixed)] if soundnet else [(1, 640), (5, 640), (3, 1600), (2, 321)]
    for batch, length in sizes:
        if fixed and length != fixed:
            continue
        windows = (0.4 * rng.standard_normal((batch, length))).astype(np.float32)
        keras_logits = model.predict(windows[..., None], verbose=0)
        assert relative(student.logits(windows), keras_logits) <= TOLERANCE, (batch, length)
        assert relative(student.embed(windows), pooled.predict(windows[..., None], verbose=0)) <= TOLERANCE
    if fixed:  # a window of another length is refused by onnxruntime, not silently misread
        with pytest.raises(Exception, match="(?i)dimension|shape"):
            student.logits(np.zeros((1, 1600), np.float32))


def test_export_writes_student_onnx_and_records_its_parity(real):
    meta = json.loads((real["export"] / "metadata.json").read_text())
    parity = meta["parity"]
    assert parity["onnx_max_abs_diff"] <= TOLERANCE and parity["onnx_embedding_max_abs_diff"] <= TOLERANCE
    assert meta["files"]["student.onnx"] == (real["export"] / "student.onnx").stat().st_size
    assert meta["onnx"] == {"file": "student.onnx", "opset": 15, "input": {"windows": ["batch", "samples"]},
                            "input_text": onnx_model.INPUT_TEXT, "window_fixed": False, "embedding_layer": "pooled",
                            "outputs": {"logits": ["batch", 6], "embedding": ["batch", 16]}}
    assert {"tf2onnx", "onnxruntime", "onnx"} <= set(meta["versions"])
    # The command prints the parity it recorded; recomputed here on the same 64 windows of noise from seed 0.
    assert json.loads(real["stdout"]) == parity
    windows = (0.3 * np.random.default_rng(0).standard_normal((64, 640))).astype(np.float32)
    from audionet_tf.model.student import load_model

    expected = load_model(str(real["keras"])).predict(windows[..., None], verbose=0)
    student = onnx_model.open_onnx(str(real["export"] / "student.onnx"))
    assert parity["onnx_max_abs_diff"] == pytest.approx(relative(student.logits(windows), expected), rel=1e-3,
                                                        abs=1e-9)


def test_app_without_tensorflow_gets_the_savedmodels_logits_on_real_recordings(real, tmp_path):
    """onnxruntime in a process where importing TensorFlow, Keras or audionet_tf fails, on every window of real
    recordings (decoded as predict decodes them): logits and embeddings within 1e-5 of the SavedModel's, relative
    to their scale, and the class names and timing read from the file's metadata."""
    import tensorflow as tf

    saved = tf.saved_model.load(str(real["export"]))
    for name in ("violin", "piano", "trumpet"):  # stereo, stereo, mono
        wave = real_student.decode(real["paths"][name])
        starts = np.arange(0, len(wave) - 640 + 1, 640)
        windows = np.stack([wave[s:s + 640] for s in starts]).astype(np.float32)
        np.save(tmp_path / "windows.npy", windows)
        done = subprocess.run([sys.executable, "-c", RUN_WINDOWS, str(real["export"] / "student.onnx"),
                               str(tmp_path / "windows.npy"), str(tmp_path / "logits.npy"),
                               str(tmp_path / "embedding.npy")], env=ENV, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        report = json.loads(done.stdout)
        assert report["loaded"] == []
        assert json.loads(report["meta"]["class_names"]) == real_student.INSTRUMENTS
        assert int(report["meta"]["sample_rate"]) == 16000 and int(report["meta"]["hop_samples"]) == 640
        logits = saved.signatures["serving_default"](windows=tf.constant(windows))["logits"].numpy()
        embedding = saved.signatures["embed"](windows=tf.constant(windows))["embedding"].numpy()
        assert relative(np.load(tmp_path / "logits.npy"), logits) <= TOLERANCE, name
        assert relative(np.load(tmp_path / "embedding.npy"), embedding) <= TOLERANCE, name
        if name in ("violin", "trumpet"):  # the trained student hears its own recordings
            assert real_student.INSTRUMENTS[int(np.bincount(logits.argmax(1)).argmax())] == name


def write_wav16(path, wave: np.ndarray) -> str:
    import wave as wavefile

    with wavefile.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes((np.clip(wave, -1, 32767 / 32768) * 32768).astype(np.int16).tobytes())
    return str(path)


def test_onnx_example_app_prints_predicts_per_second_scores(real, tmp_path, capsys):
    """examples/onnx_predict.py, run where TensorFlow cannot be imported, on real recordings brought to 16 kHz
    mono WAV, gives `audionet predict`'s per-second top classes and probabilities (SavedModel) to 1e-5."""
    for name in ("violin", "accordion"):
        wav = write_wav16(tmp_path / f"{name}.wav", real_student.decode(real["paths"][name]))
        done = subprocess.run([sys.executable, "-c", RUN_EXAMPLE, "examples/onnx_predict.py",
                               str(real["export"] / "student.onnx"), wav, str(tmp_path / "app.json")],
                              cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert predict_cmd.main([wav, "--model", str(real["export"]), "--json", str(tmp_path / "predict.json"),
                                 "--overwrite", "--quiet"]) == 0
        expected = json.loads((tmp_path / "predict.json").read_text())[0]["seconds"]
        got = json.loads((tmp_path / "app.json").read_text())
        assert [s["second"] for s in got] == [s["second"] for s in expected]
        for ours, theirs in zip(got, expected):
            assert [e["class"] for e in ours["top"]] == [e["class"] for e in theirs["top"]], (name, ours["second"])
            assert np.allclose([e["probability"] for e in ours["top"]], [e["probability"] for e in theirs["top"]],
                               atol=1e-5, rtol=0)
        rows = re.findall(r"^\s+(\d+) s  (\S+) ", done.stdout, flags=re.M)
        assert rows == [(str(s["second"]), s["top"][0]["class"]) for s in expected]
        assert "embeddings: (" in done.stdout
    capsys.readouterr()


def test_predict_and_embed_take_student_onnx(real, tmp_path, capsys):
    """`audionet predict rec --model student.onnx` gives the export directory's answer; embed too; a broken
    .onnx file gets one message naming it."""
    path = str(real["paths"]["trumpet"])
    onnx_path = str(real["export"] / "student.onnx")
    for model, out in ((str(real["export"]), "dir.json"), (onnx_path, "onnx.json")):
        assert predict_cmd.main([path, "--model", model, "--json", str(tmp_path / out), "--quiet"]) == 0
    by_dir, by_onnx = (json.loads((tmp_path / n).read_text())[0] for n in ("dir.json", "onnx.json"))
    assert by_onnx["model"] == onnx_path
    assert [s["top"][0]["class"] for s in by_onnx["seconds"]] == [s["top"][0]["class"] for s in by_dir["seconds"]]
    for ours, theirs in zip(by_onnx["windows"], by_dir["windows"]):
        assert np.allclose([e["probability"] for e in ours["top"]], [e["probability"] for e in theirs["top"]],
                           atol=1e-5)
    student = inference.load_student(onnx_path)
    assert student.class_names == real_student.INSTRUMENTS and student.window_samples == 640
    vectors = inference.embed(student, path)["embeddings"]
    reference = inference.embed(inference.load_student(str(real["export"])), path)["embeddings"]
    assert vectors.shape == reference.shape and relative(vectors, reference) <= TOLERANCE

    broken = tmp_path / "broken.onnx"
    broken.write_bytes((real["export"] / "student.onnx").read_bytes()[:500])
    with pytest.raises(AudioNetError, match=re.escape(str(broken))):
        inference.load_student(str(broken))
    assert predict_cmd.main([path, "--model", str(broken)]) == 2
    assert str(broken) in capsys.readouterr().err


def test_no_onnx_skips_it_and_a_page_without_onnx_is_refused(real, tmp_path, capsys):
    out = tmp_path / "plain"
    assert export_cmd.main([str(real["keras"]), "--out", str(out), "--no-onnx"]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert not (out / "student.onnx").exists() and "onnx" not in meta and "student.onnx" not in meta["files"]
    assert "onnx_max_abs_diff" not in meta["parity"]
    capsys.readouterr()
    assert export_cmd.main([str(real["keras"]), "--out", str(tmp_path / "no"), "--no-onnx", "--web",
                            str(tmp_path / "web")]) == 2
    assert "export.web: the page runs student.onnx" in capsys.readouterr().err
    assert not (tmp_path / "no").exists() and not (tmp_path / "web").exists()
    with pytest.raises(AudioNetError, match="export.onnx_opset: must be from 9 to 18"):
        ExportConfig(onnx_opset=19)
    # A pipeline file's [export] table sets the same settings for the export that ends training.
    from audionet_tf.core import config as cfg

    (tmp_path / "p.toml").write_text('[export]\nonnx = false\nonnx_opset = 13\n')
    assert cfg.load_pipeline(str(tmp_path / "p.toml")).export == ExportConfig(onnx=False, onnx_opset=13)
    (tmp_path / "bad.toml").write_text('[export]\nonxx = false\n')
    with pytest.raises(AudioNetError, match="unknown setting 'onxx'"):
        cfg.load_pipeline(str(tmp_path / "bad.toml"))


def test_onnx_page_snippet_is_on_the_exports_page():
    code = (ROOT / "examples" / "onnx_predict.py").read_text()
    page = (ROOT / "docs" / "exports.md").read_text()
    assert code.strip() in page, "docs/exports.md does not show examples/onnx_predict.py verbatim"
    # The usage line works from the project root, where the demo exports.
    assert re.search(r"^\s+python examples/onnx_predict\.py saved_models/demo/student\.onnx sound\.wav", code,
                     flags=re.M)
    assert "import tensorflow" not in code and "audionet_tf" not in code.split('"""', 2)[2]
