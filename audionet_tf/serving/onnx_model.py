"""The student as ONNX: written through Keras's own export (tf2onnx), run with onnxruntime.

`student.onnx` takes one input, `windows`: float32 `[batch, samples]` at the student's sample rate
in [-1, 1] (both axes dynamic when the Keras model's input length is unknown, as audionet's
is: it is convolutional, then a mean over time; a SoundNet student is built for its window, so
there the samples axis is fixed at `window_samples`), and gives two outputs: `logits` `[batch, C]`
and `embedding` `[batch, D]` (the architecture's default embedding layer, as the SavedModel's
`embed` signature: audionet's `pooled`, SoundNet-8's `pool5`, SoundNet-5's `conv4` averaged over time).
Its `metadata_props` say how to feed it and read it, as text:

| key | value |
|---|---|
| `class_names` | a JSON list of the C class names |
| `sample_rate`, `window_samples`, `hop_samples` | whole numbers: the rate, the trained window, the hop |
| `input`, `outputs` | a sentence each (the input's says when the window is fixed) |
| `architecture`, `embedding_layer` | the student's table (`audionet`, `soundnet5`, `soundnet8`) and the layer `embedding` gives |
| `audionet_tf_version` | the version that wrote it |

Nothing here imports TensorFlow but `write_onnx`: the runner needs onnxruntime and numpy only.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from audionet_tf.core.errors import AudioNetError
from audionet_tf.core.version import __version__

log = logging.getLogger(__name__)

ONNX_FILE = "student.onnx"
INPUT = "windows"
LOGITS, EMBEDDING = "logits", "embedding"
# Names of the dynamic axes (tf2onnx leaves them as unk__N).
BATCH_AXIS, SAMPLES_AXIS = "batch", "samples"
INPUT_TEXT = "windows float32 [batch, samples] at sample_rate, in [-1, 1]"
OUTPUTS_TEXT = "logits float32 [batch, classes]; embedding float32 [batch, features] (the {layer} features)"
FIXED_INPUT_TEXT = ("windows float32 [batch, {length}] at sample_rate, in [-1, 1]; the window is fixed at {length} "
                    "samples (the {architecture} student's window; a recording's windows are centred on each hop)")


def onnx_wrapper(model):
    """A Keras model sharing `model`'s weights: windows `[N, L]` → {`logits`, `embedding`}.

    Windows are 2-D, as the SavedModel's signatures and the TFLite files take them; the embedding
    comes from the same call (the architecture's default layer: `embedding_model`'s, sharing the layers).
    """
    import keras

    from audionet_tf.model.student import embedding_model

    both = keras.Model(model.input, {LOGITS: model.output, EMBEDDING: embedding_model(model).output})
    windows = keras.Input(shape=(model.input.shape[1],), name=INPUT)
    return keras.Model(windows, both(keras.ops.expand_dims(windows, -1)), name=f"{model.name}_onnx")


def write_onnx(model, path: str, *, class_names: Sequence[str], sample_rate: int, window_samples: int,
               hop_samples: int, opset: int) -> None:
    """Write `model` as ONNX to the local file `path`: named outputs, named dynamic axes, the metadata above."""
    import onnx
    import tensorflow as tf

    wrapper = onnx_wrapper(model)
    length = model.input.shape[1]
    # Keras exports only a model that has been called; one call on a window builds every layer.
    wrapper(np.zeros((1, length or window_samples), np.float32))
    spec = [tf.TensorSpec([None, length], tf.float32, name=INPUT)]
    try:
        with warnings.catch_warnings():
            # Keras's patch that lets tf2onnx run under numpy 2 probes np.object, which numpy warns about.
            warnings.filterwarnings("ignore", message=r"In the future `np\.object`", category=FutureWarning)
            wrapper.export(path, format="onnx", input_signature=spec, opset_version=opset, verbose=False)
    except Exception as exc:  # tf2onnx raises many types for an operator it cannot convert
        raise AudioNetError(f"cannot convert the student to ONNX opset {opset} ({type(exc).__name__}: {exc})") \
            from None
    proto = onnx.load(path)
    _name_dynamic_axes(proto.graph, length is None)
    architecture, layer = student_facts(model)
    props = {"class_names": json.dumps(list(class_names)), "sample_rate": str(int(sample_rate)),
             "window_samples": str(int(window_samples)), "hop_samples": str(int(hop_samples)),
             "input": input_text(model), "outputs": OUTPUTS_TEXT.format(layer=layer),
             "architecture": architecture, "embedding_layer": layer, "audionet_tf_version": __version__}
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = f"AudioNet student ({architecture}): waveform windows in, logits and {layer} features out"
    proto.graph.name = model.name  # not the traced function's name, which counts the process's functions
    onnx.checker.check_model(proto)
    onnx.save(proto, path)


def student_facts(model) -> tuple[str, str]:
    """The architecture that built `model` and the layer its embedding is taken from."""
    from audionet_tf.model import soundnet
    from audionet_tf.model.classifier import classifier_facts

    facts = classifier_facts(model)  # a fine-tuned classifier: the layer its head reads
    if facts is not None:
        return facts
    architecture = soundnet.architecture_of(model)
    return architecture, soundnet.DEFAULT_EMBEDDING.get(architecture, "pooled")


def input_text(model) -> str:
    """The sentence saying what the input takes: any window length, or the one the student was built for."""
    length = model.input.shape[1]
    if length is None:
        return INPUT_TEXT
    return FIXED_INPUT_TEXT.format(length=int(length), architecture=student_facts(model)[0])


def _name_dynamic_axes(graph, dynamic_length: bool) -> None:
    """Give the input's and outputs' unknown axes the names `batch` and `samples`, everywhere they appear."""
    renames = {}
    dims = graph.input[0].type.tensor_type.shape.dim
    renames[dims[0].dim_param] = BATCH_AXIS
    if dynamic_length and dims[1].dim_param:
        renames[dims[1].dim_param] = SAMPLES_AXIS
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in renames:
                dim.dim_param = renames[dim.dim_param]
    for output in graph.output:  # the batch axis of each output is the input's, whatever tf2onnx named it
        first = output.type.tensor_type.shape.dim[0]
        if not first.dim_value:
            first.dim_param = BATCH_AXIS


@dataclass
class OnnxStudent:
    """An ONNX student opened with onnxruntime: windows `[N, L]` → logits, or → embeddings; its metadata."""

    logits: Callable[[np.ndarray], np.ndarray]
    embed: Callable[[np.ndarray], np.ndarray] | None
    metadata: dict[str, Any]


def read_metadata(props: dict[str, str], where: str) -> dict[str, Any]:
    """The class names, sample rate, window and hop from an ONNX model's metadata_props (those it has)."""
    meta: dict[str, Any] = {}
    try:
        if "class_names" in props:
            meta["class_names"] = list(json.loads(props["class_names"]))
        for key in ("sample_rate", "window_samples", "hop_samples"):
            if key in props:
                meta[key] = int(props[key])
        for key in ("architecture", "embedding_layer"):
            if key in props:
                meta[key] = props[key]
    except (ValueError, TypeError) as exc:
        raise AudioNetError(f"{where}: unreadable metadata in the ONNX model ({exc})") from None
    return meta


def open_onnx(path: str, threads: int = 0) -> OnnxStudent:
    """`path` opened with onnxruntime on the CPU (`threads` 0: onnxruntime's choice)."""
    try:
        import onnxruntime
    except ImportError:  # pragma: no cover - a dependency of the package
        raise AudioNetError(f"{path}: running an ONNX model needs onnxruntime (pip install onnxruntime)") from None
    if not os.path.isfile(path):
        raise AudioNetError(f"{path}: no such ONNX file")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: its warnings are about graph optimisations
    try:
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...)
        raise AudioNetError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    inputs, outputs = session.get_inputs(), {o.name for o in session.get_outputs()}
    if len(inputs) != 1 or len(inputs[0].shape) != 2 or LOGITS not in outputs:
        raise AudioNetError(f"{path}: expected one input of windows [batch, samples] and an output named "
                            f"{LOGITS!r}, found inputs {[(i.name, i.shape) for i in inputs]} and outputs "
                            f"{sorted(outputs)}")
    name = inputs[0].name

    def run(output: str) -> Callable[[np.ndarray], np.ndarray]:
        def call(windows: np.ndarray) -> np.ndarray:
            return session.run([output], {name: np.asarray(windows, np.float32)})[0]
        return call

    meta = read_metadata(session.get_modelmeta().custom_metadata_map, path)
    embed = run(EMBEDDING) if EMBEDDING in outputs else None
    return OnnxStudent(run(LOGITS), embed, meta)
