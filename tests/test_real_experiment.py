"""The slides' experiment on real material: real instrument recordings paired with their drawings, a real
ImageNet teacher (EfficientNet-Lite0 from its wheel), the time split, and the held-out figures."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from litert_run import run_tflite

from audionet_tf.core import config as cfg
from audionet_tf.core.errors import AudioNetError
from audionet_tf.preparation import picture_clips
from audionet_tf.preparation.media import read_audio, read_frames

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "real" / "instruments"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
# Six of the 26 pairs whose drawings the teacher names as an instrument, of six kinds of sound
# (bellows reeds, plucked, struck strings, brass, bowed); few enough to run in about two minutes.
SIX = ("accordion", "banjo", "harp", "horn", "trombone", "violin")

needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"the real recordings are not here ({REAL} is absent)")


def _teacher_missing() -> str | None:
    from audionet_tf.preparation import efficientnet_lite

    try:
        efficientnet_lite.weights_path("EfficientNetLite0", "imagenet")
    except AudioNetError as exc:
        return str(exc)
    return None


def copy_pairs(folder: Path, names) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        for suffix in (".svg", ".ogg"):
            shutil.copy(REAL / f"{name}{suffix}", folder / f"{name}{suffix}")
    return folder


@needs_real
def test_picture_clips_last_whole_frame_periods_and_pan(tmp_path):
    """Each pair becomes a video as long as the recording's whole 40 ms periods, whose frames differ
    (the pan), with the recording as its sound, to the sample."""
    pairs = copy_pairs(tmp_path / "pairs", ("banjo", "drum_kit"))
    audio = cfg.AudioConfig()
    clips = picture_clips.make_picture_clips(str(pairs), str(tmp_path / "cache"), audio)
    assert [c.id for c in clips] == ["banjo", "drum_kit"]
    for clip in clips:
        recording = read_audio(str(pairs / f"{clip.id}.ogg"), 16000)
        periods = int(len(recording) / 640)
        assert clip.duration == pytest.approx(periods * 0.04) and clip.duration * 16000 <= len(recording)
        sound = read_audio(clip.url, 16000)
        assert len(sound) == periods * 640
        # The same sound; the last few samples differ (the resampler's edge where the video's audio ends),
        # and so do the decoded recording's overs past full scale (the video's audio is integer PCM).
        same, mine = recording[:len(sound) - 32], sound[:-32]
        within = np.abs(same) < 0.99
        assert within.mean() > 0.9
        np.testing.assert_allclose(mine[within], same[within], atol=2e-3)
        frames = read_frames(clip.url, 0.0, clip.duration, 25.0, (64, 64))
        assert len(frames) == periods
        assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 5  # the view moved
        assert frames.mean() > 100  # drawn on white, not on a transparent (black) ground


def test_a_folder_without_pairs_is_refused_by_name(tmp_path):
    (tmp_path / "only.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg' width='8' height='8'/>")
    with pytest.raises(AudioNetError, match=f"{tmp_path}: no picture \\+ recording pairs"):
        picture_clips.find_pairs(str(tmp_path))
    with pytest.raises(AudioNetError, match="is not a folder"):
        picture_clips.find_pairs(str(tmp_path / "absent"))


def test_evaluate_real_needs_its_folder(tmp_path):
    done = subprocess.run([sys.executable, "-m", "audionet_tf.evaluate", "real"], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "give --pictures FOLDER" in done.stderr and "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """`audionet evaluate real` on six real pairs with the real teacher: a short, faster recipe."""
    if not REAL.is_dir():
        pytest.skip(f"the real recordings are not here ({REAL} is absent)")
    missing = _teacher_missing()
    if missing:
        pytest.skip(f"no real teacher: {missing}")
    work = tmp_path_factory.mktemp("real")
    pairs = copy_pairs(work / "instruments", SIX)
    done = subprocess.run([sys.executable, "-m", "audionet_tf.evaluate", "real", "--pictures", str(pairs),
                           "--epochs", "40", "--learning-rate", "3e-3", "--batch-size", "128", "--no-report",
                           "--quiet"], cwd=work, env=ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((work / "runs" / "real" / "report" / "real.json").read_text())
    return {"work": work, "result": result, "stdout": done.stdout}


@pytest.mark.slow
def test_the_student_beats_the_prior_on_held_out_windows(real_run):
    result = real_run["result"]
    assert result["teacher"] == "EfficientNetLite0" and result["split"] == ["time"]
    assert sorted(result["per_clip"]) == sorted(SIX) and not result["clips"]["failed"]
    student, prior = result["student"], result["prior"]
    assert student["windows"] >= 150
    assert student["top1_agreement"] > prior["top1_agreement"] + 0.1, (student, prior)
    assert student["top5_agreement"] > prior["top5_agreement"], (student, prior)
    for cid, scores in result["per_clip"].items():
        top = scores["teacher_top"]
        assert top["class"] and 0 < top["mean_probability"] <= 1
    # The printed table and the Markdown page carry the same figures.
    assert f"{student['top1_agreement']:.1%}" in real_run["stdout"]
    page = (real_run["work"] / "runs" / "real" / "report" / "real.md").read_text()
    assert f"| all clips |  | {student['windows']} | {student['top1_agreement']:.1%} |" in page


@pytest.mark.slow
def test_the_integer_tflite_file_agrees_with_float_on_real_held_out_windows(real_run):
    """On the held-out windows of real recordings (never calibrated on), the integer TFLite file's top-1
    agrees with the float file's on at least 95 % of them, recomputed here with LiteRT."""
    from audionet_tf.dataset import reader

    export = real_run["work"] / "saved_models" / "real"
    meta = json.loads((export / "metadata.json").read_text())
    assert meta["parity"]["windows_split"] == "validation"
    windows = reader.load_arrays(str(real_run["work"] / "data" / "real"), "validation")["audio"].astype(np.float32)
    logits = {}
    for name in ("model.tflite", "model_int8.tflite"):
        logits[name] = run_tflite(export / name, windows)
    agreement = float(np.mean(logits["model_int8.tflite"].argmax(1) == logits["model.tflite"].argmax(1)))
    assert agreement == pytest.approx(meta["parity"]["int8_top1_agreement_with_float"])
    assert agreement >= 0.95, (agreement, meta["int8_quantization"], meta["parity"].get("int8_tried"))


@pytest.mark.slow
def test_the_integer_file_holds_on_the_same_sound_20_db_quieter(real_run, tmp_path):
    """Real sound comes at any level: on the held-out windows as recorded and 20 dB quieter, the integer file
    the export writes agrees with the float one on at least 95 % of each (one int8 scale per tensor, set by
    the loud calibration windows, does not: the export then keeps int16 activations)."""
    from audionet_tf.dataset import reader
    from audionet_tf.model.student import load_model
    from audionet_tf.serving import export

    data = str(real_run["work"] / "data" / "real")
    held = reader.load_arrays(data, "validation")["audio"].astype(np.float32)
    both = np.concatenate([held, 0.1 * held])
    model = load_model(str(real_run["work"] / "runs" / "real" / "model.keras"))
    meta = export.export_model(model, str(tmp_path / "quiet"), class_names=[f"c{i}" for i in range(1000)],
                               calibration=export.calibration_windows(data), check=both)
    float_logits = run_tflite(tmp_path / "quiet" / "model.tflite", both)
    int_logits = run_tflite(tmp_path / "quiet" / "model_int8.tflite", both)
    same = int_logits.argmax(1) == float_logits.argmax(1)
    assert meta["parity"]["int8_top1_agreement_with_float"] == pytest.approx(float(same.mean()))
    for part, name in ((slice(0, len(held)), "as recorded"), (slice(len(held), None), "20 dB quieter")):
        assert same[part].mean() >= 0.95, (name, float(same[part].mean()), meta["parity"].get("int8_tried"))
