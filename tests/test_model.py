"""The student implements the slides' layer table: shapes, numerics and gradients against NumPy, a .keras round trip."""
import numpy as np
import pytest

from audionet_tf.commands import train
from audionet_tf.core import config as cfg
from audionet_tf.model import losses
from audionet_tf.model.student import build_audionet, conv_length, embedding_model, load_model, pool_length


def numpy_forward(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, dense_w: np.ndarray,
                  dense_b: np.ndarray, scale: float = 1.0) -> dict:
    """The slides' table written directly: x [N, L] → every intermediate, logits [N, C] last."""
    n, length = x.shape
    taps, _, filters = kernel.shape
    padded = np.concatenate([np.zeros((n, 32)), x * scale, np.zeros((n, 32))], axis=1)
    l_conv = (length + 64 - taps) // 2 + 1
    frames = np.stack([padded[:, 2 * t: 2 * t + taps] for t in range(l_conv)], axis=1)  # [N, L_conv, taps]
    conv = frames @ kernel[:, 0, :] + bias
    pooled_in = np.concatenate([np.full((n, 4, filters), -np.inf), conv, np.full((n, 4, filters), -np.inf)], axis=1)
    l_pool = l_conv + 8 - 8 + 1
    windows = np.stack([pooled_in[:, t: t + 8, :] for t in range(l_pool)], axis=1)  # [N, L_pool, 8, F]
    pool = windows.max(axis=2)
    features = pool.mean(axis=1)
    return {"frames": frames, "conv": conv, "windows": windows, "pool": pool, "features": features,
            "logits": features @ dense_w + dense_b}


def numpy_audionet(x, kernel, bias, dense_w, dense_b, scale: float = 1.0) -> np.ndarray:
    """Logits [N, C] of the layer table."""
    return numpy_forward(x, kernel, bias, dense_w, dense_b, scale)["logits"]


def numpy_gradients(x, teacher, kernel, bias, dense_w, dense_b, scale: float, temperature: float) -> dict:
    """Gradients of the batch-mean distillation loss T^2 KL(softmax(t/T) || softmax(s/T)), derived by hand."""
    f = numpy_forward(x, kernel, bias, dense_w, dense_b, scale)
    n = x.shape[0]

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    # d/ds of T^2 KL = T (softmax(s/T) - softmax(t/T)), averaged over the batch.
    g_logits = temperature * (softmax(f["logits"] / temperature) - softmax(teacher / temperature)) / n
    g_features = g_logits @ dense_w.T
    l_pool = f["pool"].shape[1]
    g_pool = np.repeat(g_features[:, None, :], l_pool, axis=1) / l_pool
    # Each window's gradient goes to the one conv output that is its maximum.
    winner = f["windows"].argmax(axis=2) + np.arange(l_pool)[None, :, None] - 4  # conv index
    g_conv = np.zeros_like(f["conv"])
    nn, _, ff = np.meshgrid(np.arange(n), np.arange(l_pool), np.arange(g_conv.shape[2]), indexing="ij")
    np.add.at(g_conv, (nn, winner, ff), g_pool)
    return {"kernel": np.einsum("ntk,ntf->kf", f["frames"], g_conv)[:, None, :], "bias": g_conv.sum(axis=(0, 1)),
            "dense_w": f["features"].T @ g_logits, "dense_b": g_logits.sum(axis=0)}


def random_weights(rng, classes: int):
    """Weights with negative conv activations, so the max pool's padding would win if it could."""
    return (rng.normal(size=(64, 1, 16)).astype(np.float32) * 0.3, rng.normal(size=16).astype(np.float32) - 2.0,
            rng.normal(size=(16, classes)).astype(np.float32), rng.normal(size=classes).astype(np.float32))


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
    model = build_audionet(num_classes=7, input_scale=1.0)  # any length
    kernel, bias, dense_w, dense_b = random_weights(rng, 7)
    model.get_layer("conv").set_weights([kernel, bias])
    model.get_layer("logits").set_weights([dense_w, dense_b])
    x = rng.uniform(-1, 1, size=(3, length)).astype(np.float32)
    expected = numpy_audionet(x.astype(np.float64), kernel, bias, dense_w, dense_b)
    got = model.predict(x[..., None], verbose=0)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("length,scale,temperature", [(640, 256.0, 1.0), (333, 1.0, 2.0)])
def test_training_gradients_match_a_numpy_backward_pass(length, scale, temperature, compiled):
    """Eagerly and traced (as the train command runs the step: there the pool reads the mean's gradient as one row)."""
    import tensorflow as tf

    rng = np.random.default_rng(length)
    model = build_audionet(num_classes=7, input_scale=scale)
    kernel, bias, dense_w, dense_b = random_weights(rng, 7)
    kernel /= scale  # keeps activations of the order of the bias, so the pool's maxima shift between windows
    model.get_layer("conv").set_weights([kernel, bias])
    model.get_layer("logits").set_weights([dense_w, dense_b])
    # The reference gives each window's gradient to its unique maximum: draw inputs without
    # near-ties in any window (float32 rounding could pick another position).
    for _ in range(20):
        x = rng.uniform(-1, 1, size=(4, length)).astype(np.float32)
        reference = numpy_forward(x.astype(np.float64), kernel, bias, dense_w, dense_b, scale)
        ranked = np.sort(reference["windows"], axis=2)
        if np.all(ranked[:, :, -1, :] - ranked[:, :, -2, :] > 1e-4):
            break
    else:
        pytest.fail("no tie-free input found")
    teacher = rng.normal(size=(4, 7)).astype(np.float32) * 3
    expected = numpy_gradients(x.astype(np.float64), teacher.astype(np.float64), kernel.astype(np.float64),
                               bias.astype(np.float64), dense_w.astype(np.float64), dense_b.astype(np.float64),
                               scale, temperature)
    loss_fn = losses.DistillationLoss(temperature)
    conv, dense = model.get_layer("conv"), model.get_layer("logits")

    def step(inputs, teacher_logits):
        with tf.GradientTape() as tape:
            logits = model(inputs, training=True)  # the training pass: its own conv, pool and mean formulations
            loss = loss_fn(teacher_logits, logits)
        return logits, tape.gradient(loss, [conv.kernel, conv.bias, dense.kernel, dense.bias])

    logits, got = (tf.function(step) if compiled else step)(tf.constant(x[..., None]), tf.constant(teacher))
    np.testing.assert_allclose(np.asarray(logits), reference["logits"], rtol=1e-4, atol=1e-4)
    for name, value in zip(("kernel", "bias", "dense_w", "dense_b"), got):
        want = expected[name]
        np.testing.assert_allclose(np.asarray(value), want, rtol=2e-3, atol=2e-3 * np.abs(want).max(), err_msg=name)


def test_python_api_and_train_command_build_the_same_student():
    """One default for the input scale: the config's, whether built from Python or by the train command."""
    model = build_audionet(640)
    assert model.get_layer("input_scale").scale == cfg.ModelConfig().input_scale
    assert model.get_layer("conv").filters == cfg.ModelConfig().conv_filters
    resolved = train.resolve_config(train.build_parser().parse_args(["--data", "somewhere"]))
    assert resolved.model.input_scale == cfg.ModelConfig().input_scale


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


@pytest.mark.parametrize("pool_size,padding", [(8, 4), (5, 2)])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
def test_training_pool_gives_each_window_to_its_first_maximum_on_ties(pool_size, padding, compiled):
    """Conv outputs with many exact ties (a few integer values): the training pass of the max pool and the
    mean gives the maxima and, per window, the gradient to its earliest maximum, as the NumPy reference does."""
    import tensorflow as tf

    from audionet_tf.model.student import EdgeMaxPooling1D, TimeMean

    rng = np.random.default_rng(pool_size)
    x = rng.integers(-2, 2, size=(3, 41, 5)).astype(np.float32)
    weights = rng.normal(size=(3, 5)).astype(np.float32)
    pool, mean = EdgeMaxPooling1D(pool_size, padding), TimeMean()

    def run(values):
        with tf.GradientTape() as tape:
            tape.watch(values)
            maxima = pool(values, training=True)
            loss = tf.reduce_sum(mean(maxima, training=True) * weights)
        return maxima, tape.gradient(loss, values)

    maxima, gradient = (tf.function(run) if compiled else run)(tf.constant(x))
    edge = np.full((3, padding, 5), -np.inf)
    padded = np.concatenate([edge, x, edge], axis=1)
    outputs = x.shape[1] + 2 * padding - pool_size + 1
    windows = np.stack([padded[:, t: t + pool_size] for t in range(outputs)], axis=1)  # [N, T, K, C]
    np.testing.assert_array_equal(np.asarray(maxima), windows.max(axis=2))
    first = windows.argmax(axis=2) + np.arange(outputs)[None, :, None] - padding  # np.argmax: the first maximum
    expected = np.zeros_like(x)
    n, _, c = np.meshgrid(np.arange(3), np.arange(outputs), np.arange(5), indexing="ij")
    np.add.at(expected, (n, first, c), np.broadcast_to(weights[:, None, :] / outputs, first.shape))
    np.testing.assert_allclose(np.asarray(gradient), expected, rtol=1e-6, atol=1e-7)
