"""SoundNet's students (Aytar, Vondrick, Torralba, NeurIPS 2016) as Keras functional models, channels last.

Each is a table of 1-D layers: a conv is (name, filters, kernel, stride, zero padding each side), a
pool is (name, kernel, stride) with no padding. BatchNorm + ReLU follow every conv but the last,
whose outputs over time are per-step logits over the teacher's classes; the model's `logits`
layer averages those steps into one logit vector per window.

SoundNet-8 (output lengths for the default 16 kHz window of L = 209,374 samples, 13.09 s):

| layer | filters | kernel | stride | padding | output |
|-------|---------|--------|--------|---------|--------|
| conv1 | 16      | 64     | 2      | 32      | 104,688 |
| pool1 |         | 8      | 8      |         | 13,086 |
| conv2 | 32      | 32     | 2      | 16      | 6,544  |
| pool2 |         | 8      | 8      |         | 818    |
| conv3 | 64      | 16     | 2      | 8       | 410    |
| conv4 | 128     | 8      | 2      | 4       | 206    |
| conv5 | 256     | 4      | 2      | 2       | 104    |
| pool5 |         | 4      | 4      |         | 26     |
| conv6 | 512     | 4      | 2      | 2       | 14     |
| conv7 | 1024    | 4      | 2      | 2       | 8      |
| conv8 | classes | 8      | 2      | 0       | 1      |

SoundNet-5 (default 16 kHz window L = 56,798 samples, 3.55 s): conv1 32 k64 s2 p32 → 28,400;
pool1 8/8 → 3,550; conv2 64 k32 s2 p16 → 1,776; pool2 8/8 → 222; conv3 128 k16 s2 p8 → 112;
pool3 8/8 → 14; conv4 256 k8 s2 p4 → 8; conv5 classes k16 s12 p4 → 1.
"""
from __future__ import annotations

import math

import keras

from audionet_tf.core.config import ARCHITECTURES  # noqa: F401  (re-exported: the model's list is the settings')

# ("conv", name, filters, kernel, stride, padding); filters None: the teacher's class count.
# ("pool", name, kernel, stride).
SOUNDNET8 = (
    ("conv", "conv1", 16, 64, 2, 32), ("pool", "pool1", 8, 8),
    ("conv", "conv2", 32, 32, 2, 16), ("pool", "pool2", 8, 8),
    ("conv", "conv3", 64, 16, 2, 8),
    ("conv", "conv4", 128, 8, 2, 4),
    ("conv", "conv5", 256, 4, 2, 2), ("pool", "pool5", 4, 4),
    ("conv", "conv6", 512, 4, 2, 2),
    ("conv", "conv7", 1024, 4, 2, 2),
    ("conv", "conv8", None, 8, 2, 0),
)
SOUNDNET5 = (
    ("conv", "conv1", 32, 64, 2, 32), ("pool", "pool1", 8, 8),
    ("conv", "conv2", 64, 32, 2, 16), ("pool", "pool2", 8, 8),
    ("conv", "conv3", 128, 16, 2, 8), ("pool", "pool3", 8, 8),
    ("conv", "conv4", 256, 8, 2, 4),
    ("conv", "conv5", None, 16, 12, 4),
)
TABLES = {"soundnet8": SOUNDNET8, "soundnet5": SOUNDNET5}
# The representation SoundNet's transfer experiments read (pool5 of the 8-layer net; the 5-layer
# net's best layer, conv4, in the paper's Table 5), and what embed gives when no layer is named.
DEFAULT_EMBEDDING = {"soundnet8": "pool5", "soundnet5": "conv4"}


def table(architecture: str) -> tuple:
    """The layer table of a SoundNet architecture."""
    if architecture not in TABLES:
        raise ValueError(f"architecture must be one of {sorted(TABLES)}, got {architecture!r}")
    return TABLES[architecture]


def layer_lengths(architecture: str, length: int) -> dict[str, int]:
    """Output length of every named layer for an input of `length` samples (0 or less: too short)."""
    lengths = {}
    for row in table(architecture):
        if row[0] == "conv":
            _, name, _, kernel, stride, pad = row
            length = (length + 2 * pad - kernel) // stride + 1 if length + 2 * pad >= kernel else 0
        else:
            _, name, kernel, stride = row
            length = (length - kernel) // stride + 1 if length >= kernel else 0
        lengths[name] = length
    return lengths


def min_input_length(architecture: str) -> int:
    """The shortest input (samples) for which the last conv gives one output step."""
    low, high = 1, 1
    while layer_lengths(architecture, high)[table(architecture)[-1][1]] < 1:
        low, high = high, high * 2
    while low < high:  # the last length grows with the input: bisect
        mid = (low + high) // 2
        if layer_lengths(architecture, mid)[table(architecture)[-1][1]] >= 1:
            high = mid
        else:
            low = mid + 1
    return high


def default_window(architecture: str, window_s: float | None, sample_rate: int) -> int:
    """The window (samples) a student hears: `window_s` at `sample_rate`, else the shortest with one output step."""
    shortest = min_input_length(architecture)
    if window_s is None:
        return shortest
    wanted = int(math.ceil(window_s * sample_rate))
    if wanted < shortest:
        raise ValueError(f"model.window_s {window_s} s is {wanted} samples at {sample_rate} Hz; {architecture} "
                         f"needs at least {shortest} ({shortest / sample_rate:.2f} s) for one output step")
    return wanted


def build_soundnet(architecture: str = "soundnet8", input_length: int | None = None, num_classes: int = 1000, *,
                   input_scale: float = 256.0, name: str | None = None) -> keras.Model:
    """SoundNet-8 or -5 per its table: waveform windows `(L, 1)` in, `num_classes` logits out (conv steps averaged).

    `input_length` fixes the window (the train command does: other code reads it from the model's input);
    None takes any length of at least `min_input_length(architecture)`.
    """
    rows = table(architecture)
    if input_length is not None and input_length < min_input_length(architecture):
        raise ValueError(f"{architecture} needs inputs of at least {min_input_length(architecture)} samples, "
                         f"got {input_length}")
    waveform = keras.Input(shape=(input_length, 1), name="waveform")
    x = waveform
    if input_scale != 1.0:
        x = keras.layers.Rescaling(input_scale, name="input_scale")(x)
    last = rows[-1][1]
    for row in rows:
        if row[0] == "pool":
            _, layer_name, kernel, stride = row
            x = keras.layers.MaxPooling1D(kernel, strides=stride, padding="valid", name=layer_name)(x)
            continue
        _, layer_name, filters, kernel, stride, pad = row
        if pad:
            x = keras.layers.ZeroPadding1D(pad, name=f"{layer_name}_padding")(x)
        filters = num_classes if filters is None else filters
        if layer_name == last:
            x = keras.layers.Conv1D(filters, kernel, strides=stride, padding="valid", name=layer_name)(x)
            break
        # The conv's bias is kept (as in SoundNet's code), although BatchNorm's shift makes it redundant.
        x = keras.layers.Conv1D(filters, kernel, strides=stride, padding="valid", name=f"{layer_name}_conv")(x)
        # Synchronized: under several replicas the batch statistics are the global batch's, so N replicas
        # train the weights one replica would (unsynchronized, each replica would normalise by its own slice).
        x = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, synchronized=True,
                                            name=f"{layer_name}_bn")(x)
        x = keras.layers.ReLU(name=layer_name)(x)
    logits = keras.layers.GlobalAveragePooling1D(name="logits")(x)
    return keras.Model(waveform, logits, name=name or architecture)


def architecture_of(model: keras.Model) -> str:
    """Which table built `model` (from its layers' names): audionet, soundnet5 or soundnet8."""
    for layer in model.layers:  # a fine-tuned classifier (model/classifier.py) may hold only part of its table
        if getattr(layer, "student_facts", None):
            return layer.student_facts[0]
    names = {layer.name for layer in model.layers}
    if "conv8" in names:
        return "soundnet8"
    if "conv5" in names and "pool3" in names:
        return "soundnet5"
    return "audionet"


def embedding_layers(architecture: str) -> tuple[str, ...]:
    """The layers whose outputs embed can give, in table order (each conv's after its ReLU)."""
    return tuple(row[1] for row in table(architecture))


def embedding_model(model: keras.Model, architecture: str, layer: str | None = None) -> keras.Model:
    """`model`'s `layer` (None: DEFAULT_EMBEDDING) averaged over time: one vector per window, sharing weights."""
    layer = layer or DEFAULT_EMBEDDING[architecture]
    names = embedding_layers(architecture)
    if layer not in names:
        raise ValueError(f"layer must be one of {', '.join(names)} for {architecture}, got {layer!r}")
    features = keras.layers.GlobalAveragePooling1D(name=f"{layer}_mean")(model.get_layer(layer).output)
    return keras.Model(model.input, features, name=f"{model.name}_{layer}")
