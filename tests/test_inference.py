"""Inference on recordings of many lengths: one trace, the same values as the model on each file, streamed
in chunks with the whole file's windows, and arrays taken at their own sample rate."""
import logging
import wave

import numpy as np
import pytest

from audionet_tf.core.errors import AudioNetError
from audionet_tf.evaluation.features import student_features
from audionet_tf.model.student import build_audionet, embedding_model
from audionet_tf.preparation.media import read_audio
from audionet_tf.serving import embed, inference

# Window counts 1..300: under, at and over one batch (inference.BATCH = 256), hop 640 and 320.
LENGTHS = [640, 1000, 640 * 7 + 13, 640 * 40, 640 * 256, 640 * 300 + 5]


class Retracing(logging.Handler):
    """Collects TensorFlow's "triggered tf.function retracing" warnings."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def emit(self, record):
        self.count += "retracing" in record.getMessage()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    import keras

    keras.utils.set_random_seed(3)
    model = build_audionet(None, 5, input_scale=256.0)
    path = tmp_path_factory.mktemp("inference") / "model.keras"
    model.save(path)
    return model, str(path)


@pytest.fixture
def retracing():
    import tensorflow as tf

    handler = Retracing()
    tf.get_logger().addHandler(handler)
    yield handler
    tf.get_logger().removeHandler(handler)


def waves():
    rng = np.random.default_rng(0)
    return [(0.3 * rng.standard_normal(n)).astype(np.float32) for n in LENGTHS]


def test_keras_student_traces_once_for_files_of_many_lengths(saved, retracing):
    model, path = saved
    student = inference.load_student(path)
    pooled_model = embedding_model(model, "pooled")
    for hop in (640, 320):
        for samples in waves():
            windows, starts = inference.frame_audio(samples, 640, hop, "wave")
            logits = inference.batched(student.logits, windows)
            pooled = inference.batched(student.embed, windows)
            # Independent: a slice of the waveform per start, through the Keras model called eagerly
            # (eager calls trace nothing, so any retracing warning comes from the code under test).
            expected_windows = np.stack([samples[s:s + 640] for s in range(0, len(samples) - 639, hop)])
            np.testing.assert_array_equal(windows, expected_windows)
            expected = model(expected_windows[..., None], training=False).numpy()
            scale = max(1.0, float(np.abs(expected).max()))
            assert np.abs(logits - expected).max() / scale <= 1e-5
            np.testing.assert_allclose(pooled, pooled_model(expected_windows[..., None]).numpy(),
                                       rtol=1e-4, atol=1e-4)
    assert student.logits.traces == 1 and student.embed.traces == 1
    assert retracing.count == 0


def test_embed_and_transfer_features_trace_once(saved, retracing):
    model, path = saved
    student = inference.load_student(path)
    conv = embedding_model(model, "conv")
    for samples in waves():
        values, times = embed.embed_wave(student, samples, 320, "conv", "wave")
        windows = np.stack([samples[s:s + 640] for s in range(0, len(samples) - 639, 320)])
        maps = conv(windows[..., None]).numpy()
        expected = np.concatenate([maps.mean(1), maps.std(1), maps.max(1)], axis=1)
        np.testing.assert_allclose(values, expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(times, np.arange(len(windows)) * 320 / 16000, atol=1e-6)
        features = student_features(model, samples, 640, 640, "wave")
        assert features.shape == (64,) and np.all(np.isfinite(features))
    assert inference.keras_runner(model, "conv").traces == 1
    assert retracing.count == 0


def write_wav(path, samples, rate, channels=1):
    """A 16-bit PCM WAV of float samples in [-1, 1] (`[T]`, or `[T, channels]`)."""
    pcm = np.clip(np.asarray(samples) * 32767, -32768, 32767).astype(np.int16)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(channels)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(pcm.tobytes())
    return str(path)


@pytest.mark.parametrize("hop", [640, 320, 1000])
def test_streamed_windows_are_the_whole_files_windows(tmp_path, monkeypatch, hop):
    """Read through ffmpeg's pipe in chunks of windows, a file gives the windows of its whole decoded
    waveform, across every chunk boundary (a small chunk makes many), and its sample count."""
    rng = np.random.default_rng(1)
    source = write_wav(tmp_path / "a.wav", 0.3 * rng.standard_normal((44100 * 3 + 17, 2)), 44100, channels=2)
    whole = read_audio(source, 16000)
    count = 1 + (len(whole) - 640) // hop
    monkeypatch.setattr(inference, "CHUNK_WINDOWS", 7)
    with inference.open_audio(source, 16000) as audio:
        chunks = list(inference.window_chunks(audio, 640, hop, source))
        assert audio.samples == len(whole)
    assert [len(w) for w, _ in chunks[:-1]] == [7] * (len(chunks) - 1) and 0 < len(chunks[-1][0]) <= 7
    windows = np.concatenate([w for w, _ in chunks])
    np.testing.assert_array_equal(np.concatenate([s for _, s in chunks]), np.arange(count) * hop)
    np.testing.assert_array_equal(windows, np.stack([whole[s:s + 640] for s in range(0, count * hop, hop)]))


def test_streamed_file_errors_name_the_file(tmp_path):
    short = write_wav(tmp_path / "short.wav", np.zeros(639), 16000)
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    for path, message in ((short, "639 samples of audio, shorter than one window"),
                          (str(text), "ffmpeg cannot decode it"), (str(tmp_path / "missing.wav"), "no such file")):
        with pytest.raises(AudioNetError, match=message) as caught:
            with inference.open_audio(path, 16000) as audio:
                list(inference.window_chunks(audio, 640, 640, path))
        assert path in str(caught.value)


def test_arrays_are_taken_at_their_own_sample_rate(saved, tmp_path):
    """One second at 44.1 kHz is 25 windows of 40 ms, not 68; the answer is the 16 kHz array's, and the
    same file's; an array without its rate is refused."""
    model, path = saved
    student = inference.load_student(path)
    t = np.arange(44100) / 44100
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    result = inference.predict(student, tone, 44100)
    assert result["scores"].shape == (25, 5) and result["logits"].shape == (25, 5)
    np.testing.assert_allclose(result["times"], np.arange(25) * 0.04)
    np.testing.assert_allclose(result["scores"].sum(axis=1), 1.0, rtol=1e-5)
    at_16k = inference.predict_array(student, np.sin(2 * np.pi * 440 * np.arange(16000) / 16000) * 0.5, 16000)
    # Resampled, not reinterpreted: each window's class is that of the same tone given at 16 kHz.
    assert np.mean(result["scores"].argmax(1)[1:-1] == at_16k["scores"].argmax(1)[1:-1]) == 1.0
    stereo_int16 = (np.repeat(tone[:, None], 2, axis=1) * 32767).astype(np.int16)
    np.testing.assert_allclose(inference.predict_array(student, stereo_int16, 44100)["scores"], result["scores"],
                               atol=1e-3)
    from_file = inference.predict(student, write_wav(tmp_path / "tone.wav", tone, 44100))  # ffmpeg resamples
    assert from_file["scores"].shape == (25, 5)
    assert np.mean(from_file["scores"].argmax(1)[1:-1] == at_16k["scores"].argmax(1)[1:-1]) == 1.0
    with pytest.raises(AudioNetError, match="sample rate"):
        inference.predict(student, tone)
    with pytest.raises(AudioNetError, match="give no sample_rate"):
        inference.predict(student, str(tmp_path / "tone.wav"), 44100)
    with pytest.raises(AudioNetError, match=r"shape \(2, 44100\)"):
        inference.predict_array(student, np.stack([tone, tone]), 44100)
    embedded = inference.embed(student, tone, 44100)
    assert embedded["embeddings"].shape == (25, 16)
    np.testing.assert_allclose(embedded["times"], result["times"])
    twenty = inference.embed(student, tone, 44100, hop_seconds=0.02, layer="conv")
    assert twenty["embeddings"].shape == (49, 48)
    assert inference.embed(student, str(tmp_path / "tone.wav"))["embeddings"].shape == (25, 16)


def test_a_stream_left_early_stops_ffmpeg_and_its_reader(tmp_path, monkeypatch):
    """An error in the middle of a recording leaves no ffmpeg process and no reading thread behind."""
    import threading
    import time

    # 10 minutes: more than the reading thread may hold ahead (8 MB), so it waits on a full queue when left.
    path = write_wav(tmp_path / "long.wav", np.zeros(16000 * 600), 16000)
    monkeypatch.setattr(inference, "CHUNK_WINDOWS", 256)
    threads = threading.active_count()
    processes = []
    for _ in range(3):
        with pytest.raises(RuntimeError, match="stop"):
            with inference.open_audio(path, 16000) as audio:
                processes.append(audio._process)
                for windows, _ in inference.window_chunks(audio, 640, 640, path):
                    time.sleep(1.0)  # a slow consumer: the thread fills its queue and waits
                    raise RuntimeError("stop")
    assert all(process.poll() is not None for process in processes)
    assert threading.active_count() == threads
