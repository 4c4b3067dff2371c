"""Teachers from ONNX files (`--teacher model.onnx`), run with onnxruntime: a vision model exported from PyTorch
or any other framework labels frames like any teacher.

What the file must hold (anything else is refused at load with one message naming the file):

- one input: an image batch of rank 4, `[N, 3, H, W]` (NCHW, PyTorch's layout) or `[N, H, W, 3]` (NHWC,
  TensorFlow's), told apart by where the 3 channels are; H and W fixed (they are the size frames are decoded
  at); N dynamic (run at the teacher's batch size) or fixed (run that many frames at a time: a model
  exported with a batch of 1 works, one frame per call); float32, float16 or float64;
- its first output: one vector of logits per frame, `[N, C]`.

Frames reach the model as the `PrepareConfig.onnx_*` settings say (`Preprocessing`): RGB uint8 frames, put in
`onnx_channels` order (RGB or BGR), multiplied by `onnx_scale`, then `(x - onnx_mean) / onnx_std` per
channel; the defaults are torchvision's ImageNet models' (RGB, 1/255, ImageNet's mean and std). Class names
come from the labels file, else ImageNet's for a model with 1000 outputs, else `class_<i>`
(`teacher.teacher_class_names`).

An ONNX teacher is not a TensorFlow function: its `forward` (`teacher.OnnxTeacher`) runs the onnxruntime
session (`OnnxModel.run`); nothing is traced or folded, and no graph is kept between runs (`teacher_graphs`
leaves it alone: loading the file is the whole start). onnxruntime uses `prepare.onnx_threads` intra-op threads (0: one per core) and does not spin
waiting threads, since ffmpeg decodes on the same cores.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from audionet_tf.core import config as cfg
from audionet_tf.core.errors import AudioNetError

log = logging.getLogger("audionet_tf.prepare")

SUFFIX = ".onnx"
EXPECTED = ("an ONNX model whose one input is an image batch [N, 3, H, W] or [N, H, W, 3] (float, H and W "
            "fixed) and whose first output is one vector of logits per frame, [N, C]")
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def is_onnx(spec: str) -> bool:
    """Whether a teacher setting names an ONNX file."""
    return spec.lower().endswith(SUFFIX)


@dataclass(frozen=True)
class Preprocessing:
    """How RGB uint8 frames become an ONNX teacher's input values (the `prepare.onnx_*` settings)."""

    channels: str
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def of(cls, pc: cfg.PrepareConfig | None = None) -> "Preprocessing":
        """The preprocessing a prepare section sets (the defaults without one)."""
        pc = pc if pc is not None else cfg.PrepareConfig()
        return cls(pc.onnx_channels, pc.onnx_scale, tuple(pc.onnx_mean), tuple(pc.onnx_std))

    def to_dict(self) -> dict[str, Any]:
        """Plain data: what a dataset's header and its clips' settings keys record."""
        return {"channels": self.channels, "scale": self.scale, "mean": list(self.mean), "std": list(self.std)}

    def apply(self, frames: np.ndarray) -> np.ndarray:
        """float32 `[N, H, W, 3]` in the model's channel order and value range, from uint8 RGB frames."""
        x = np.asarray(frames, np.float32)
        if self.channels == "BGR":
            x = x[..., ::-1]
        # (x * scale - mean) / std as one multiply-add per value.
        gain = np.float32(self.scale) / np.asarray(self.std, np.float32)
        offset = -np.asarray(self.mean, np.float32) / np.asarray(self.std, np.float32)
        return x * gain + offset


def settings_of(pc: cfg.PrepareConfig) -> dict[str, Any] | None:
    """The preprocessing a prepare section's ONNX teacher labels with, as plain data; None for another teacher."""
    return Preprocessing.of(pc).to_dict() if is_onnx(pc.teacher) else None


def input_layout(dims: list, path: str) -> tuple[str, tuple[int, int], int | None]:
    """`(layout, (H, W), fixed batch or None)` from an ONNX input's shape, or the error saying what was expected."""
    if len(dims) != 4:
        raise AudioNetError(f"teacher {path}: its input has shape {_shape_text(dims)} (rank {len(dims)}); "
                            f"expected {EXPECTED}")
    if dims[3] == 3:
        layout, spatial = "NHWC", dims[1:3]
    elif dims[1] == 3:
        layout, spatial = "NCHW", dims[2:4]
    else:
        raise AudioNetError(f"teacher {path}: its input has shape {_shape_text(dims)}, with no axis of 3 colour "
                            f"channels; expected {EXPECTED}")
    if not all(isinstance(d, int) and d > 0 for d in spatial):
        raise AudioNetError(f"teacher {path}: its input has shape {_shape_text(dims)}, whose height and width "
                            f"are not fixed; export it with a fixed input size (expected {EXPECTED})")
    batch = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None
    return layout, (int(spatial[0]), int(spatial[1])), batch


def input_size_of(path: str) -> tuple[int, int] | None:
    """An ONNX file's input size (H, W) read without starting onnxruntime (with the `onnx` package, when it is
    installed), or None when only loading it can tell."""
    if not os.path.isfile(path):
        return None
    try:
        import onnx

        model = onnx.load(path, load_external_data=False)
        initialised = {init.name for init in model.graph.initializer}
        first = next(i for i in model.graph.input if i.name not in initialised)
        dims = [d.dim_value if d.HasField("dim_value") else None for d in first.type.tensor_type.shape.dim]
        return input_layout(dims, path)[1]
    except Exception:  # not installed, not readable, not an image model: the load says which, by name
        return None


def _shape_text(dims: list) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) and d > 0 else "?" for d in dims) + "]"


@dataclass
class OnnxModel:
    """An onnxruntime session with what it takes: its input's name, type and layout, frames' size and preprocessing."""

    path: str
    session: Any = field(repr=False)
    input_name: str
    input_dtype: Any
    layout: str  # NCHW | NHWC
    input_size: tuple[int, int]
    model_batch: int | None  # the model's fixed batch size, or None for a dynamic one
    num_classes: int
    preprocessing: Preprocessing
    threads: int

    def run(self, frames: np.ndarray) -> np.ndarray:
        """Logits float32 `[N, C]` of any number of uint8 RGB frames, in calls of the model's fixed batch if it has one."""
        x = self.preprocessing.apply(frames)
        if self.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        x = np.ascontiguousarray(x, self.input_dtype)
        step = self.model_batch or len(x)
        out = []
        for i in range(0, len(x), step):
            part = x[i:i + step]
            n = len(part)
            if n < step:  # a fixed batch: the last call padded
                part = np.concatenate([part, np.zeros((step - n, *part.shape[1:]), part.dtype)])
            try:
                logits = self.session.run(None, {self.input_name: part})[0]
            except Exception as exc:  # onnxruntime raises its own types for a model that fails to run
                raise AudioNetError(f"teacher {self.path}: onnxruntime failed to run it on a batch of "
                                    f"{len(part)} frames ({_short(exc)})") from None
            if logits.ndim != 2 or logits.shape[0] != len(part) or logits.shape[1] != self.num_classes:
                raise AudioNetError(f"teacher {self.path}: its first output has shape {list(logits.shape)} for "
                                    f"{len(part)} frames; expected one vector of {self.num_classes} logits per "
                                    f"frame, [{len(part)}, {self.num_classes}]")
            out.append(np.asarray(logits[:n], np.float32))
        return np.concatenate(out) if out else np.zeros((0, self.num_classes), np.float32)


def load_onnx_model(path: str, pc: cfg.PrepareConfig | None = None) -> OnnxModel:
    """An ONNX file's session, with the preprocessing and threads of a prepare section (the defaults without one),
    checked to take an image batch and give a vector of logits per frame."""
    pc = pc if pc is not None else cfg.PrepareConfig()
    if not os.path.isfile(path):
        raise AudioNetError(f"teacher model {path} does not exist")
    try:
        import onnxruntime as ort
    except ImportError:
        raise AudioNetError(f"teacher {path}: an ONNX teacher needs onnxruntime, which the package "
                            f"installs: pip install onnxruntime") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = pc.onnx_threads or (os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # A spinning thread would take a core from ffmpeg between batches.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available] or available
    try:
        session = ort.InferenceSession(path, sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own types for a file it cannot read
        raise AudioNetError(f"teacher {path}: cannot read it as an ONNX model ({_short(exc)}); expected "
                            f"{EXPECTED}") from None
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise AudioNetError(f"teacher {path}: it takes {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                            f"expected {EXPECTED}")
    first = inputs[0]
    dims = [d if isinstance(d, int) else None for d in first.shape]
    layout, size, model_batch = input_layout(dims, path)
    dtype = _DTYPES.get(first.type)
    if dtype is None:
        raise AudioNetError(f"teacher {path}: its input {first.name} is {first.type}; expected {EXPECTED}")
    output = session.get_outputs()[0]
    out_dims = list(output.shape or [])
    if out_dims and len(out_dims) != 2:
        raise AudioNetError(f"teacher {path}: its first output {output.name} has shape {_shape_text(out_dims)}; "
                            f"expected one vector of logits per frame, [N, C]")
    # One call on black frames: the number of classes when the file leaves it open, and a model that cannot
    # run, or gives something else than a vector per frame, fails here, naming its file, not at the first clip.
    probe = np.zeros((model_batch or 1, *size, 3), np.float32)
    probe = np.ascontiguousarray(probe.transpose(0, 3, 1, 2) if layout == "NCHW" else probe, dtype)
    try:
        got = session.run(None, {first.name: probe})[0]
    except Exception as exc:  # onnxruntime raises its own types for a model that fails to run
        raise AudioNetError(f"teacher {path}: onnxruntime failed to run it ({_short(exc)}); expected "
                            f"{EXPECTED}") from None
    declared = out_dims[1] if out_dims and isinstance(out_dims[1], int) and out_dims[1] > 0 else None
    if got.ndim != 2 or got.shape[0] != len(probe) or declared not in (None, got.shape[1]):
        raise AudioNetError(f"teacher {path}: its first output has shape {list(got.shape)} for {len(probe)} "
                            f"frames; expected one vector of logits per frame, [N, C]")
    model = OnnxModel(path, session, first.name, dtype, layout, size, model_batch, int(got.shape[1]),
                      Preprocessing.of(pc), options.intra_op_num_threads)
    log.info("teacher %s: ONNX, input %s %s at %dx%d, %d classes, batch %s, %d onnxruntime threads", path,
             first.name, layout, *size, model.num_classes, model_batch or "dynamic", model.threads)
    return model


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:300] + " …"
