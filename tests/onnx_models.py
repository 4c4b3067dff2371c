"""ONNX teachers for tests, made from Keras models with tf2onnx (Keras 3's `model.export(path, format="onnx")`)."""
import numpy as np

SIZE = 32
CLASSES = 5
TOLERANCE = 1e-5  # of the largest |logit|: tf2onnx and onnxruntime compute the same float32 network in another
# order (measured: 1.7e-7 on the tiny net, 6.5e-7 on EfficientNet-Lite0, whose logits reach 10.9)


def tiny_net(seed: int = 3):
    """A small conv net with random weights (fixed by `seed`) taking RGB [0, 255] at 32×32: 5 logits."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3))
    # Weights of unit scale and biases, so that the logits are far from zero whatever the input's range.
    init = dict(kernel_initializer="he_normal", bias_initializer=keras.initializers.RandomNormal(stddev=1.0))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="tanh", **init)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu", **init)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(CLASSES, **init)(x))


def export_onnx(model, path, batch=None) -> str:
    """`model` as an ONNX file through tf2onnx, with a dynamic (None) or a fixed batch."""
    import tensorflow as tf

    spec = [tf.TensorSpec((batch, *model.input_shape[1:]), tf.float32, name="images")]
    model.export(str(path), format="onnx", verbose=False, input_signature=spec)
    return str(path)


def channels_first(model):
    """The same network taking NCHW input (PyTorch's layout): a transpose in front of it."""
    import keras

    height, width, channels = model.input_shape[1:]
    inputs = keras.Input((channels, height, width))
    return keras.Model(inputs, model(keras.layers.Permute((2, 3, 1))(inputs)))


def close(got: np.ndarray, expected: np.ndarray) -> bool:
    """The same logits within TOLERANCE."""
    scale = float(np.abs(expected).max())
    return got.shape == expected.shape and float(np.abs(got - expected).max()) <= TOLERANCE * scale


def same_labels(a: dict, b: dict) -> None:
    """Two preparations' examples (`committed.by_frame`) hold the same audio, logits within TOLERANCE and the same
    top class (but where the top two are within 1e-3: a near tie may go either way within the tolerance)."""
    assert a.keys() == b.keys() and a
    for key in a:
        assert a[key][0] == b[key][0], key
        assert close(a[key][1], b[key][1]), (key, float(np.abs(a[key][1] - b[key][1]).max()))
        top = np.sort(b[key][1])[-2:]
        if top[1] - top[0] > 1e-3:
            assert a[key][1].argmax() == b[key][1].argmax(), key
