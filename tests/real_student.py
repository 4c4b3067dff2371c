"""A student trained by the tests on real instrument recordings, exported by the export command (ONNX and the
browser page's tests share it; it is made once per test session)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "real"
INSTRUMENTS = ["accordion", "violin", "trumpet", "piano", "harp", "drum_kit"]  # mono and stereo recordings
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
_made: dict = {}


def recordings() -> dict[str, Path]:
    """The real recordings the tests use, or a skip naming what is missing."""
    paths = {name: REAL / "instruments" / f"{name}.ogg" for name in INSTRUMENTS}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        pytest.skip(f"real recordings absent ({missing[0]}, ...): they come with the team's shared/real folder")
    return paths


def decode(path: Path, rate: int = 16000) -> np.ndarray:
    """The whole file at `rate`, mono float32, as predict reads it (the project's ffmpeg pipe)."""
    from audionet_tf.serving.audio import FileAudio

    with FileAudio(str(path), rate) as source:
        return source.read(1 << 30)


def exported(tmp_path_factory) -> dict:
    """A six-instrument student (trained here for a few seconds with Keras on windows of the recordings, so its
    classes are the instruments), saved as .keras and exported by `python -m audionet_tf.export`."""
    if "export" in _made:
        return _made
    import keras

    from audionet_tf.model.student import build_audionet

    paths = recordings()
    work = tmp_path_factory.mktemp("real-student")
    windows, labels = [], []
    for label, name in enumerate(INSTRUMENTS):
        wave = decode(paths[name])
        count = len(wave) // 640
        windows.append(wave[: count * 640].reshape(count, 640))
        labels.append(np.full(count, label))
    windows, labels = np.concatenate(windows), np.concatenate(labels)
    keras.utils.set_random_seed(0)
    model = build_audionet(None, len(INSTRUMENTS))
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    history = model.fit(windows[..., None], labels, batch_size=64, epochs=12, shuffle=True, verbose=0)
    model.save(work / "instruments.keras")
    (work / "labels.txt").write_text("".join(f"{name}\n" for name in INSTRUMENTS))
    done = subprocess.run([sys.executable, "-m", "audionet_tf.export", str(work / "instruments.keras"),
                           "--labels", str(work / "labels.txt"), "--out", str(work / "export")],
                          cwd=work, env=ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    _made.update(work=work, export=work / "export", keras=work / "instruments.keras", paths=paths,
                 accuracy=float(history.history["accuracy"][-1]), stdout=done.stdout)
    return _made
