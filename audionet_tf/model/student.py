"""The AudioNet student: the slides' layer table as a Keras functional model (channels last).

| layer              | kernel | padding                    | stride | output             |
|--------------------|--------|----------------------------|--------|--------------------|
| Conv1D, 16 filters | 64     | 32 zeros each side         | 2      | floor(L/2) + 1     |
| MaxPool1D          | 8      | 4 each side, never wins    | 1      | L_conv + 1         |
| mean over time     | all    |                            |        | 16                 |
| Dense              | 1000   |                            |        | logits             |
"""
from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from audionet_tf.core.config import ModelConfig

# (name, kernel, padding each side, stride): the slides' table, in order.
CONV = ("conv", 64, 32, 2)
POOL = ("maxpool", 8, 4, 1)
EMBEDDING_LAYERS = {"conv": "maxpool", "pooled": "pooled"}


def conv_length(length: int) -> int:
    """L_conv for an input of `length` samples."""
    _, kernel, pad, stride = CONV
    return (length + 2 * pad - kernel) // stride + 1


def pool_length(length: int) -> int:
    """L_pool for an input of `length` samples."""
    _, kernel, pad, stride = POOL
    return (conv_length(length) + 2 * pad - kernel) // stride + 1


@keras.saving.register_keras_serializable(package="audionet_tf")
class PairedConv1D(keras.layers.Conv1D):
    """Conv1D whose training pass computes a stride-2 convolution as a stride-1 one over sample pairs.

    Input [N, L, C] read as [N, L/2, 2C] against the kernel read as [K/2, 2C, F] gives the same
    products (for the slides' conv, outputs and kernel gradients came out bit-identical to
    Conv1D's), and oneDNN's stride-1 kernels with the conv's weight gradient cost less than its
    stride-2 ones: 67 against 81 ms of steps an epoch on a quiet AVX-512 machine (docs/speed.md).
    The bias's gradient is one compiled sum over the output's gradient (`_bias_add`), where Conv1D's
    broadcast add has TensorFlow reduce over two axes (about twice the CPU time alone).
    Inference (SavedModel, TFLite, ONNX) keeps Keras's own convolution, so the exports do not change.
    """

    def _pairs(self) -> bool:
        return (tuple(self.strides) == (2,) and self.kernel_size[0] % 2 == 0 and self.padding == "valid"
                and tuple(self.dilation_rate) == (1,) and self.groups == 1 and self.data_format == "channels_last")

    def call(self, inputs, training=None):
        if not training or not self._pairs():
            return super().call(inputs)
        channels, taps = self.kernel.shape[1], self.kernel_size[0]
        # A stride-2 valid conv with an even kernel never reads an odd length's last sample.
        even = inputs[:, : tf.shape(inputs)[1] // 2 * 2, :]
        pairs = tf.reshape(even, tf.stack([tf.shape(inputs)[0], -1, 2 * channels]))
        kernel = tf.reshape(self.kernel, [taps // 2, 2 * channels, self.filters])
        outputs = tf.nn.conv1d(pairs, kernel, 1, "VALID")
        if self.use_bias:
            outputs = _bias_add(outputs, self.bias)
        return outputs if self.activation is None else self.activation(outputs)


@tf.function(jit_compile=True, autograph=False)
def _channel_sums(values):
    """The sum over every axis but the last (one compiled pass)."""
    return tf.reduce_sum(values, axis=tf.range(tf.rank(values) - 1))


def _bias_add(outputs, bias):
    """`tf.nn.bias_add`, whose gradient for the bias is one compiled sum (BiasAddGrad costs about twice its CPU time)."""
    @tf.custom_gradient
    def add(x, b):
        return tf.nn.bias_add(x, b), lambda upstream: (upstream, _channel_sums(upstream))
    return add(outputs, tf.convert_to_tensor(bias))  # the variable read outside: its gradient reaches it by the read


@keras.saving.register_keras_serializable(package="audionet_tf")
class EdgeMaxPooling1D(keras.layers.Layer):
    """Stride-1 max pooling with `padding` positions each side that never win the max.

    Built from a "same" max pool (which already ignores its padding) plus the few extra
    edge outputs computed as maxima over the valid samples they cover. No -inf constant
    appears in the graph, so the layer converts to TFLite builtins and quantizes to int8.

    In training (`training=True`) the same maxima come from `_pool_with_offsets`: one compiled
    pass that also keeps, per output, which position of its window won, and a gradient that sends
    each output's gradient there (the first maximum, as the table's reference does). It costs
    what TensorFlow's own max pool and gradient (oneDNN's) cost on AVX-512 CPUs and about two
    thirds of it on AVX2 ones, where oneDNN's pooling gradient is the step's largest part
    (docs/speed.md). When the gradient it receives is one row broadcast over time (`TimeMean`'s,
    the next layer of the student), it is read as that row: each input position gets the row times
    the number of windows it won, in one compiled pass, with no [N, L, C] upstream written or read.
    """

    def __init__(self, pool_size: int = 8, padding: int = 4, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= padding < pool_size:
            raise ValueError(f"padding must be in [0, pool_size), got {padding} for pool_size {pool_size}")
        self.pool_size = int(pool_size)
        self.padding = int(padding)

    def call(self, inputs, training=None):
        if training:
            return _pool_with_offsets(inputs, self.pool_size, self.padding)
        k, p = self.pool_size, self.padding
        same_left = (k - 1) // 2
        same_right = k - 1 - same_left
        # Output j of the padded pool covers inputs [j - p, j - p + k); output i of the
        # "same" pool covers [i - same_left, i + same_right]. Extra edge outputs (or a crop)
        # make up the difference between the two paddings.
        body = ops.max_pool(inputs, pool_size=k, strides=1, padding="same")
        crop_left, crop_right = max(same_left - p, 0), max(same_right - p, 0)
        if crop_left or crop_right:
            body = body[:, crop_left: (-crop_right if crop_right else None), :]
        left = [ops.max(inputs[:, : k - p + e, :], axis=1, keepdims=True) for e in range(p - same_left)]
        right = [ops.max(inputs[:, -(same_left - e):, :], axis=1, keepdims=True)
                 for e in range(p - same_right)]
        pieces = left + [body] + right
        return ops.concatenate(pieces, axis=1) if len(pieces) > 1 else body

    def compute_output_shape(self, input_shape):
        batch, length, channels = input_shape
        out = None if length is None else length + 2 * self.padding - self.pool_size + 1
        return (batch, out, channels)

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size, "padding": self.padding}


@tf.function(jit_compile=True, autograph=False)
def _pool_offsets(inputs, pool_size, padding):
    """Maxima of the -inf-padded stride-1 windows and, per output, the offset in its window of the first one."""
    # Compiled by XLA into one pass over the input. The edges are a tf.pad, not a concatenation
    # with -inf blocks: XLA fuses the pad into the compares (the concatenation was written out
    # first and cost 1.6x as much).
    padded = tf.pad(inputs, [[0, 0], [padding, padding], [0, 0]], constant_values=float("-inf"))
    offset = tf.zeros(tf.shape(padded), tf.int32)
    if pool_size & (pool_size - 1) == 0:
        # Windows of 2, 4, ... pool_size, each the larger of its two halves: log2(pool_size) compares
        # per output instead of pool_size - 1.
        best, width = padded, 1
        while width < pool_size:
            count = tf.shape(best)[1] - width
            right = best[:, width: width + count]
            wins = right > best[:, :count]  # strictly greater: a tie keeps the left half, the earlier position
            best = tf.where(wins, right, best[:, :count])
            offset = tf.where(wins, offset[:, width: width + count] + width, offset[:, :count])
            width *= 2
        return best, offset
    n = tf.shape(inputs)[1] + 2 * padding - pool_size + 1
    best, offset = padded[:, :n], offset[:, :n]
    for d in range(1, pool_size):
        window = padded[:, d: d + n]
        wins = window > best  # strictly greater: a tie keeps the earlier position
        best = tf.where(wins, window, best)
        offset = tf.where(wins, tf.constant(d, tf.int32), offset)
    return best, offset


@tf.function(jit_compile=True, autograph=False)
def _pool_offsets_gradient(offset, upstream, pool_size, padding):
    """Each output's gradient added at the input position that won its window."""
    total = None
    for d in range(pool_size):
        part = tf.where(tf.equal(offset, tf.constant(d, tf.int32)), upstream, tf.zeros_like(upstream))
        part = tf.pad(part, [[0, 0], [d, pool_size - 1 - d], [0, 0]])
        total = part if total is None else total + part
    length = tf.shape(total)[1] - 2 * padding
    return total[:, padding: padding + length]


@tf.function(jit_compile=True, autograph=False)
def _pool_offsets_row_gradient(offset, row, pool_size, padding):
    """The gradient for an upstream gradient equal to `row` ([N, 1, C]) at every output: the row times
    the number of windows each input position won."""
    # Not _pool_offsets_gradient of the row broadcast: counting the wins and multiplying once took
    # 10-18 % less wall time with AVX-512 and 6-8 % with AVX2 kernels (three measurements each).
    wins = None
    for d in range(pool_size):
        part = tf.cast(tf.equal(offset, tf.constant(d, tf.int32)), row.dtype)
        part = tf.pad(part, [[0, 0], [d, pool_size - 1 - d], [0, 0]])
        wins = part if wins is None else wins + part
    length = tf.shape(wins)[1] - 2 * padding
    return wins[:, padding: padding + length] * row


def _time_row(upstream):
    """The [N, 1, C] row a traced gradient was broadcast from over time (`tf.broadcast_to`), else None."""
    # Only a graph (tf.function, as the train command runs) says how a tensor was made.
    if tf.executing_eagerly() or upstream.op.type != "BroadcastTo":
        return None
    row = upstream.op.inputs[0]
    return row if row.shape.rank == 3 and row.shape[1] == 1 else None


def _pool_with_offsets(inputs, pool_size: int, padding: int):
    """EdgeMaxPooling1D's output, with a gradient routed by the winning offsets (training only)."""
    @tf.custom_gradient
    def pool(x):
        best, offset = _pool_offsets(x, pool_size, padding)

        def gradient(upstream):
            row = _time_row(upstream)
            if row is not None:
                return _pool_offsets_row_gradient(offset, row, pool_size, padding)
            return _pool_offsets_gradient(offset, upstream, pool_size, padding)
        return best, gradient
    return pool(inputs)


@keras.saving.register_keras_serializable(package="audionet_tf")
class TimeMean(keras.layers.GlobalAveragePooling1D):
    """GlobalAveragePooling1D whose training gradient is its one row broadcast over time (`tf.broadcast_to`).

    The mean's own gradient is that row tiled into an [N, L, C] tensor; the max pool before it reads
    a broadcast as its row instead (`EdgeMaxPooling1D`), so the tiled gradient is never made
    (docs/speed.md). Inference is Keras's layer unchanged.
    """

    def call(self, inputs, mask=None, training=None):
        if not training or mask is not None or self.data_format != "channels_last" or self.keepdims:
            return super().call(inputs, mask=mask)
        return _mean_over_time(inputs)


def _mean_over_time(inputs):
    """The mean over axis 1, its gradient a broadcast of one row."""
    @tf.custom_gradient
    def mean(x):
        def gradient(upstream):
            row = upstream[:, None, :] / tf.cast(tf.shape(x)[1], upstream.dtype)
            return tf.broadcast_to(row, tf.shape(x))
        return tf.reduce_mean(x, axis=1), gradient
    return mean(inputs)


def build_audionet(input_length: int | None = None, num_classes: int = 1000, *,
                   conv_filters: int | None = None, input_scale: float | None = None,
                   name: str = "audionet") -> keras.Model:
    """The student: waveform windows `(L, 1)` at 16 kHz in, `num_classes` logits out.

    `conv_filters` and `input_scale` default to `config.ModelConfig`'s values, as in the train command.
    """
    defaults = ModelConfig()
    conv_filters = defaults.conv_filters if conv_filters is None else conv_filters
    input_scale = defaults.input_scale if input_scale is None else input_scale
    waveform = keras.Input(shape=(input_length, 1), name="waveform")
    x = waveform
    if input_scale != 1.0:
        x = keras.layers.Rescaling(input_scale, name="input_scale")(x)
    conv_name, kernel, pad, stride = CONV
    x = keras.layers.ZeroPadding1D(pad, name="conv_padding")(x)
    x = PairedConv1D(conv_filters, kernel, strides=stride, padding="valid", name=conv_name)(x)
    pool_name, pool_kernel, pool_pad, _ = POOL
    x = EdgeMaxPooling1D(pool_kernel, pool_pad, name=pool_name)(x)
    x = TimeMean(name="pooled")(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(waveform, logits, name=name)


def embedding_model(model: keras.Model, layer: str | None = None) -> keras.Model:
    """A model sharing `model`'s weights that outputs the features of one named layer (None: the default).

    audionet: `pooled`, the 16 features per window (the representation for transfer; the default),
    or `conv`, the max-pooled conv maps `(L_pool, 16)` per window. SoundNet: any layer of its table
    (`conv1` … `conv8`, `pool1` …), averaged over time into one vector per window (default: `pool5`
    of SoundNet-8, `conv4` of SoundNet-5).
    """
    from audionet_tf.model import classifier, soundnet

    facts = classifier.classifier_facts(model)
    if facts is not None and layer in (None, facts[1]):  # a fine-tuned classifier: the features its head reads
        return classifier.features_model(model)
    architecture = soundnet.architecture_of(model)
    if architecture != "audionet":
        return soundnet.embedding_model(model, architecture, layer)
    layer = layer or "pooled"
    if layer not in EMBEDDING_LAYERS:
        raise ValueError(f"layer must be one of {sorted(EMBEDDING_LAYERS)}, got {layer!r}")
    return keras.Model(model.input, model.get_layer(EMBEDDING_LAYERS[layer]).output,
                       name=f"{model.name}_{layer}")


def build_student(architecture: str = "audionet", input_length: int | None = None, num_classes: int = 1000, *,
                  conv_filters: int | None = None, input_scale: float | None = None) -> keras.Model:
    """The student of `architecture` (`audionet`: the slides' table; `soundnet5`, `soundnet8`: SoundNet's)."""
    from audionet_tf.model import soundnet

    if architecture == "audionet":
        return build_audionet(input_length, num_classes, conv_filters=conv_filters, input_scale=input_scale)
    if architecture not in soundnet.ARCHITECTURES:
        raise ValueError(f"architecture must be one of {', '.join(soundnet.ARCHITECTURES)}, got {architecture!r}")
    input_scale = ModelConfig().input_scale if input_scale is None else input_scale
    return soundnet.build_soundnet(architecture, input_length, num_classes, input_scale=input_scale)


def load_model(path: str) -> keras.Model:
    """Load a saved student or fine-tuned classifier (`.keras`), with Keras's safe mode on."""
    from audionet_tf.model import classifier  # noqa: F401  (registers its Features layer with Keras)

    return keras.saving.load_model(path, safe_mode=True, compile=False)


def student_window(architecture: str, window_s: float | None, sample_rate: int) -> int | None:
    """The window (samples) the student of `architecture` hears; None for audionet (the dataset's own window)."""
    if architecture == "audionet":
        return None
    from audionet_tf.model import soundnet

    return soundnet.default_window(architecture, window_s, sample_rate)


def model_window(model: keras.Model) -> int | None:
    """The window a student was built for (its input length), None when it takes any length (audionet)."""
    return model.input.shape[1]
