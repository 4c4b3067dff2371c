"""Inference on recordings of many lengths: one trace, and the same values as the model on each file."""
import logging

import numpy as np
import pytest

from audionet_tf.evaluation.features import student_features
from audionet_tf.model.student import build_audionet, embedding_model
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
        for wave in waves():
            windows, starts = inference.frame_audio(wave, 640, hop, "wave")
            logits = inference.batched(student.logits, windows)
            pooled = inference.batched(student.embed, windows)
            # Independent: a slice of the waveform per start, through the Keras model called eagerly
            # (eager calls trace nothing, so any retracing warning comes from the code under test).
            expected_windows = np.stack([wave[s:s + 640] for s in range(0, len(wave) - 639, hop)])
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
    for wave in waves():
        values, times = embed.embed_wave(student, wave, 320, "conv", "wave")
        windows = np.stack([wave[s:s + 640] for s in range(0, len(wave) - 639, 320)])
        maps = conv(windows[..., None]).numpy()
        expected = np.concatenate([maps.mean(1), maps.std(1), maps.max(1)], axis=1)
        np.testing.assert_allclose(values, expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(times, np.arange(len(windows)) * 320 / 16000, atol=1e-6)
        features = student_features(model, wave, 640, 640, "wave")
        assert features.shape == (64,) and np.all(np.isfinite(features))
    assert inference.keras_runner(model, "conv").traces == 1
    assert retracing.count == 0
