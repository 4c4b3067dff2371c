"""Export a trained student for other apps: a SavedModel with explicit signatures, TFLite float and int8
(the layout of an export directory is described in `commands/export.py` and docs/exports.md)."""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from typing import Any, Callable, Sequence

import numpy as np

from audionet_tf.core import storage
from audionet_tf.core.errors import AudioNetError
from audionet_tf.core.version import __version__
from audionet_tf.dataset import catalog, records

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-5
INT8_AGREEMENT_GOAL = 0.95
CALIBRATION_WINDOWS = 256
SIGNATURES = ["serving_default", "probabilities", "embed", "timeline", "serve", "__call__"]


def build_archive(model, sample_rate: int, window_samples: int, hop_samples: int):
    """A Keras ExportArchive that loads by convention, its pre- and post-processing inside.

    Windows `[N, L]` → logits `[N, C]` as the `serve` endpoint (what `keras.Model.export` writes:
    `keras.layers.TFSMLayer(path)` loads it with its defaults) and as `__call__` (so
    `tf.saved_model.load(path)(windows)` and `tensorflow_hub.KerasLayer(path)` work); the named
    signatures `serving_default`, `probabilities`, `embed`, and `timeline` (a waveform → per-window
    `logits`, `scores`, `embeddings` and `times` together, YAMNet's shape of answer).
    """
    import keras
    import tensorflow as tf

    from audionet_tf.model.student import embedding_model

    pooled = embedding_model(model)  # the architecture's default layer: audionet's `pooled`, SoundNet's pool5/conv4
    left, right = context_padding(window_samples, hop_samples)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.track(pooled)
    windows_spec = [tf.TensorSpec([None, None], tf.float32, name="windows")]

    def logits(windows):
        return model(tf.expand_dims(windows, -1), training=False)

    def serving(windows):
        return {"logits": logits(windows)}

    def probabilities(windows):
        return {"probabilities": tf.nn.softmax(logits(windows), axis=-1)}

    def embed(windows):
        return {"embedding": pooled(tf.expand_dims(windows, -1), training=False)}

    def timeline(waveform):
        waveform = tf.reshape(waveform, [-1])
        if left or right:  # a long window centred on each frame, as in training: zeros past the ends
            waveform = tf.pad(waveform, [[left, right]])
        short = tf.maximum(window_samples - tf.shape(waveform)[0], 0)
        waveform = tf.pad(waveform, [[0, short]])
        frames = tf.expand_dims(tf.signal.frame(waveform, window_samples, hop_samples, pad_end=False), -1)
        scores = model(frames, training=False)
        times = tf.cast(tf.range(tf.shape(frames)[0]) * hop_samples, tf.float32) / float(sample_rate)
        return {"logits": scores, "scores": tf.nn.softmax(scores, axis=-1),
                "embeddings": pooled(frames, training=False), "times": times}

    archive.add_endpoint("serving_default", serving, input_signature=windows_spec)
    archive.add_endpoint("probabilities", probabilities, input_signature=windows_spec)
    archive.add_endpoint("embed", embed, input_signature=windows_spec)
    archive.add_endpoint("timeline", timeline,
                         input_signature=[tf.TensorSpec([None], tf.float32, name="waveform")])
    archive.add_endpoint("serve", logits, input_signature=windows_spec)
    # An endpoint named __call__ makes the loaded object callable (TensorFlow's loader turns that
    # attribute into the call); ExportArchive also lists it among the signatures.
    archive.add_endpoint("__call__", logits, input_signature=windows_spec)
    return archive


def context_padding(window_samples: int, hop_samples: int) -> tuple[int, int]:
    """Zeros before and after a recording so that the window of frame k (at k hop) is centred on its period's
    middle, as in training: (0, 0) when the window is the hop (audionet), else SoundNet's long window's."""
    if window_samples <= hop_samples:
        return 0, 0
    left = (window_samples - hop_samples) // 2
    return left, window_samples - hop_samples - left


def sample_count(window_samples: int, wanted: int) -> int:
    """How many windows to check or calibrate with: `wanted`, fewer for long windows (about 2^21 samples in all:
    SoundNet-8's 13 s windows, 10 of them; audionet's 640-sample windows, all that are wanted)."""
    return max(8, min(wanted, (1 << 21) // max(1, window_samples)))


def convert_tflite(saved_model_dir: str, quantization: str = "float",
                   calibration: np.ndarray | None = None) -> bytes:
    """TFLite bytes of the SavedModel's `serving_default`: float, int8 (calibrated) or dynamic-range."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=["serving_default"])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization == "int8":
        if calibration is None or not len(calibration):
            raise ValueError("int8 quantization needs calibration windows")

        def representative():
            for window in calibration:
                yield [np.asarray(window, np.float32)[None, :]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    elif quantization == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantization != "float":
        raise ValueError(f"quantization must be float, int8 or dynamic, got {quantization!r}")
    return converter.convert()


def tflite_runner(path_or_bytes: str | bytes) -> Callable[[np.ndarray], np.ndarray]:
    """A function windows `[N, L]` → logits `[N, C]` running a `.tflite` with LiteRT (or TF's interpreter)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - LiteRT is in the test extra
        from tensorflow.lite.python.interpreter import Interpreter
    kwargs = {"model_content": path_or_bytes} if isinstance(path_or_bytes, bytes) else {"model_path": path_or_bytes}
    try:
        interpreter = Interpreter(**kwargs, num_threads=1)
    except (ValueError, RuntimeError) as exc:
        where = path_or_bytes if isinstance(path_or_bytes, str) else "TFLite model"
        raise AudioNetError(f"{where}: not a readable TFLite model ({exc})") from None

    def run(windows: np.ndarray) -> np.ndarray:
        windows = np.asarray(windows, np.float32)
        detail = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(detail["index"], list(windows.shape))
        interpreter.allocate_tensors()
        interpreter.set_tensor(detail["index"], windows)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])

    return run


def check_model(run: Callable[[np.ndarray], np.ndarray], windows: np.ndarray) -> np.ndarray:
    """Logits of one artifact on `windows`, checked for shape and finiteness (used on every artifact)."""
    logits = np.asarray(run(windows))
    if logits.shape[0] != len(windows) or not np.all(np.isfinite(logits)):
        raise AudioNetError(f"exported model gave logits of shape {logits.shape} or non-finite values")
    return logits


def export_model(model, out_dir: str, *, class_names: Sequence[str], sample_rate: int = 16000,
                 window_samples: int = 640, hop_samples: int = 640, metadata: dict[str, Any] | None = None,
                 calibration: np.ndarray | None = None) -> dict[str, Any]:
    """Write the SavedModel, both TFLite files, labels and metadata to `out_dir`; returns the metadata."""
    import tensorflow as tf

    num_classes = int(model.output.shape[-1])
    if len(class_names) != num_classes:
        raise AudioNetError(f"{len(class_names)} class names for a model with {num_classes} classes")
    remote = storage.is_remote(out_dir)
    out_dir = storage.abspath(out_dir)
    if remote:
        # Built and checked here, then uploaded file by file (an object store has no rename).
        staging = tempfile.mkdtemp(prefix=f"audionet-export-{storage.basename(out_dir)}.")
    else:
        parent = os.path.dirname(out_dir)
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.", dir=parent)
    try:
        build_archive(model, sample_rate, window_samples, hop_samples).write_out(staging, verbose=False)
        rng = np.random.default_rng(0)
        if calibration is not None and len(calibration):
            sample = np.asarray(calibration[:sample_count(window_samples, CALIBRATION_WINDOWS)], np.float32)
        else:
            sample = (0.3 * rng.standard_normal((sample_count(window_samples, 64), window_samples))).astype(np.float32)
        float_bytes = convert_tflite(staging, "float")
        if calibration is not None and len(calibration):
            int8_bytes, int8_kind = convert_tflite(staging, "int8", sample), "int8 (calibrated on dataset windows)"
        else:
            int8_bytes, int8_kind = convert_tflite(staging, "dynamic"), "dynamic-range (no dataset at hand)"
        for name, blob in (("model.tflite", float_bytes), ("model_int8.tflite", int8_bytes)):
            with open(os.path.join(staging, name), "wb") as handle:
                handle.write(blob)
        with open(os.path.join(staging, "labels.txt"), "w", encoding="utf-8") as handle:
            handle.write("\n".join(class_names) + "\n")

        keras_logits = check_model(lambda w: model.predict(w[..., None], verbose=0), sample)
        reloaded = tf.saved_model.load(staging)
        saved_logits = check_model(
            lambda w: reloaded.signatures["serving_default"](windows=tf.constant(w))["logits"].numpy(), sample)
        float_logits = check_model(tflite_runner(float_bytes), sample)
        int8_logits = check_model(tflite_runner(int8_bytes), sample)
        # Differences are relative to the logits' scale (at least 1): float32 rounding of
        # logits in the hundreds alone exceeds 1e-5 in absolute terms.
        scale = max(1.0, float(np.max(np.abs(keras_logits))))
        parity = {
            "logits_scale": scale,
            "savedmodel_max_abs_diff": float(np.max(np.abs(saved_logits - keras_logits))) / scale,
            "tflite_float_max_abs_diff": float(np.max(np.abs(float_logits - keras_logits))) / scale,
            "int8_top1_agreement_with_float": float(np.mean(int8_logits.argmax(1) == float_logits.argmax(1))),
            "windows": int(len(sample)),
            "windows_source": "dataset" if calibration is not None and len(calibration) else "random noise",
        }
        for key in ("savedmodel_max_abs_diff", "tflite_float_max_abs_diff"):
            if parity[key] > PARITY_TOLERANCE:
                raise AudioNetError(f"export parity check failed: {key} = {parity[key]:.2e} > {PARITY_TOLERANCE}")
        if parity["int8_top1_agreement_with_float"] < INT8_AGREEMENT_GOAL:
            log.warning("int8 model agrees with the float model on %.1f%% of windows (goal %.0f%%)",
                        100 * parity["int8_top1_agreement_with_float"], 100 * INT8_AGREEMENT_GOAL)
        doc = {
            "sample_rate": sample_rate, "window_samples": window_samples, "hop_samples": hop_samples,
            "window_ms": 1000.0 * window_samples / sample_rate, "num_classes": num_classes,
            "input": "float32 waveform windows [N, L] at sample_rate, in [-1, 1]",
            **_student_facts(model),
            "signatures": SIGNATURES,
            "int8_quantization": int8_kind, "parity": parity,
            "files": {name: os.path.getsize(os.path.join(staging, name))
                      for name in ("model.tflite", "model_int8.tflite", "saved_model.pb")},
            "versions": {"audionet_tf": __version__, "tensorflow": tf.__version__},
            **(metadata or {}),
        }
        storage.atomic_write_text(os.path.join(staging, "metadata.json"), json.dumps(doc, indent=2) + "\n")
        if remote:
            _upload_dir(staging, out_dir)
        else:
            _replace_dir(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # locally renamed into place already, unless it failed
    return doc


def _student_facts(model) -> dict[str, Any]:
    """The architecture and the layer the `embed` signature gives (predict and embed read them back)."""
    from audionet_tf.model import soundnet

    architecture = soundnet.architecture_of(model)
    return {"architecture": architecture, "embedding_layer": soundnet.DEFAULT_EMBEDDING.get(architecture, "pooled")}


def _upload_dir(staging: str, out_dir: str) -> None:
    """Put a finished export into an object store: an older export there is removed first, then each file is
    written once under its final name, metadata.json last (an export without it is unfinished)."""
    storage.remove_tree(out_dir)
    storage.copy_tree(staging, out_dir, last="metadata.json")


def _replace_dir(staging: str, out_dir: str) -> None:
    """Move the finished export into place; an older export there is removed only after that."""
    if os.path.exists(out_dir):
        old = f"{out_dir}.old-{os.getpid()}"
        os.replace(out_dir, old)
        os.replace(staging, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out_dir)


def calibration_windows(data_dir: str, count: int = CALIBRATION_WINDOWS, seed: int = 0,
                        window_samples: int | None = None) -> np.ndarray | None:
    """Up to `count` windows of a dataset's training split, or None when the dataset is not at hand;
    `window_samples`: the student's long windows (SoundNet), rebuilt from the frames read."""
    try:
        description = catalog.read_description(data_dir)
    except AudioNetError:
        return None
    shards = description.shards_for("train") or description.shards
    rng = np.random.default_rng(seed)
    windows = []
    for shard in shards[:4]:
        path = storage.join(data_dir, shard.file)
        if storage.exists(path):
            windows.append(records.read_examples(path, description.spec)["audio"])
    if not windows:
        return None
    if window_samples is not None and window_samples != description.spec.window_samples:
        from audionet_tf.dataset import context

        parts = [records.read_examples(storage.join(data_dir, s.file), description.spec) for s in shards[:4]
                 if storage.exists(storage.join(data_dir, s.file))]
        arrays = {k: np.concatenate([p[k] for p in parts]) for k in ("audio", "logits", "clip_id", "time")}
        order = np.lexsort((arrays["time"], arrays["clip_id"].astype(str)))
        long = context.context_windows({k: v[order] for k, v in arrays.items()}, description.spec, window_samples,
                                       data_dir)
        count = sample_count(window_samples, count)
        return long[np.sort(rng.permutation(len(long))[:count])]
    windows = np.concatenate(windows)
    return windows[rng.permutation(len(windows))[:count]]


def export_run(run_dir: str, out_dir: str) -> dict[str, Any]:
    """Export a training run (its `model.keras`, labels, config and metrics) to `out_dir`."""
    from audionet_tf.model.student import load_model

    model_path = storage.join(run_dir, "model.keras")
    if not storage.isfile(model_path):
        raise AudioNetError(f"{run_dir} holds no model.keras: not a finished training run")
    config = json.loads(storage.read_text(storage.join(run_dir, "config.json")))
    dataset = config.get("dataset", {})
    metrics_path = storage.join(run_dir, "metrics.json")
    metrics = json.loads(storage.read_text(metrics_path)) if storage.isfile(metrics_path) else {}
    class_names = [line for line in storage.read_text(storage.join(run_dir, "labels.txt")).splitlines()
                   if line.strip()]
    model = load_model(model_path)
    # What the student hears (SoundNet: its long window); runs from before the `student` entry: the dataset's.
    heard = config.get("student") or {}
    window = int(heard.get("window_samples") or dataset.get("window_samples", 640))
    return export_model(
        model, out_dir, class_names=class_names, sample_rate=int(dataset.get("sample_rate", 16000)),
        window_samples=window, hop_samples=int(dataset.get("hop_samples", 640)),
        calibration=calibration_windows(dataset.get("data_dir", ""), window_samples=window),
        metadata=without_machine_paths({"teacher": dataset.get("teacher"),
                                        "run": storage.basename(storage.abspath(run_dir)),
                                        "training_config": config, "final_metrics": metrics}))


def without_machine_paths(value: Any) -> Any:
    """`value` with every absolute path replaced by its last component (an export travels to other machines)."""
    if isinstance(value, dict):
        return {key: without_machine_paths(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_machine_paths(item) for item in value]
    if isinstance(value, str) and os.path.isabs(value):
        return os.path.basename(os.path.normpath(value))
    return value
