"""The student implements the slides' layer table: shapes, numerics against NumPy, and a .keras round trip."""
import numpy as np
import pytest

from audionet_tf.model import build_audionet, conv_length, embedding_model, load_model, pool_length


def numpy_audionet(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, dense_w: np.ndarray,
                   dense_b: np.ndarray) -> np.ndarray:
    """The slides' table written directly: x [N, L] → logits [N, C]."""
    n, length = x.shape
    taps, _, filters = kernel.shape
    padded = np.concatenate([np.zeros((n, 32)), x, np.zeros((n, 32))], axis=1)
    l_conv = (length + 64 - taps) // 2 + 1
    conv = np.empty((n, l_conv, filters))
    for t in range(l_conv):
        conv[:, t, :] = padded[:, 2 * t: 2 * t + taps] @ kernel[:, 0, :] + bias
    pooled_in = np.concatenate([np.full((n, 4, filters), -np.inf), conv, np.full((n, 4, filters), -np.inf)], axis=1)
    l_pool = l_conv + 8 - 8 + 1
    pool = np.stack([pooled_in[:, t: t + 8, :].max(axis=1) for t in range(l_pool)], axis=1)
    features = pool.mean(axis=1)
    return features @ dense_w + dense_b


@pytest.mark.parametrize("length", [640, 641, 100, 15360])
def test_shapes_follow_the_table(length):
    model = build_audionet(input_length=length)
    assert model.get_layer("conv").output.shape == (None, length // 2 + 1, 16)
    assert model.get_layer("maxpool").output.shape == (None, length // 2 + 2, 16)
    assert model.get_layer("pooled").output.shape == (None, 16)
    assert model.output.shape == (None, 1000)
    assert conv_length(length) == length // 2 + 1 and pool_length(length) == length // 2 + 2


def test_summary_shows_the_table_shapes():
    lines = []
    build_audionet(input_length=640).summary(print_fn=lambda line, **_: lines.append(line))
    text = "\n".join(lines)
    for shape in ("(None, 321, 16)", "(None, 322, 16)", "(None, 16)", "(None, 1000)"):
        assert shape in text


@pytest.mark.parametrize("length", [640, 333, 64])
def test_numerics_match_an_independent_numpy_implementation(length):
    rng = np.random.default_rng(length)
    model = build_audionet(num_classes=7)  # any length
    # Negative activations matter: the max pool's padding must never win.
    kernel = rng.normal(size=(64, 1, 16)).astype(np.float32) * 0.3
    bias = rng.normal(size=16).astype(np.float32) - 2.0
    dense_w = rng.normal(size=(16, 7)).astype(np.float32)
    dense_b = rng.normal(size=7).astype(np.float32)
    model.get_layer("conv").set_weights([kernel, bias])
    model.get_layer("logits").set_weights([dense_w, dense_b])
    x = rng.uniform(-1, 1, size=(3, length)).astype(np.float32)
    expected = numpy_audionet(x.astype(np.float64), kernel, bias, dense_w, dense_b)
    got = model.predict(x[..., None], verbose=0)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_keras_round_trip_gives_the_same_outputs(tmp_path):
    model = build_audionet(num_classes=5, input_scale=4.0)
    x = np.random.default_rng(0).uniform(-1, 1, size=(2, 640, 1)).astype(np.float32)
    path = str(tmp_path / "student.keras")
    model.save(path)
    loaded = load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    pooled = embedding_model(loaded, "pooled").predict(x, verbose=0)
    conv = embedding_model(loaded, "conv").predict(x, verbose=0)
    assert pooled.shape == (2, 16) and conv.shape == (2, 322, 16)
    np.testing.assert_allclose(conv.mean(axis=1), pooled, atol=1e-5)
