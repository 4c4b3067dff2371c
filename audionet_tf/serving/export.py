"""Export a trained student for other apps: a SavedModel with explicit signatures, TFLite float and int8,
ONNX, and a browser page (the layout of an export directory is described in `commands/export.py` and
docs/exports.md)."""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from typing import Any, Callable, Sequence

import numpy as np

from audionet_tf.core import storage
from audionet_tf.core.config import ExportConfig
from audionet_tf.core.errors import AudioNetError
from audionet_tf.core.version import __version__
from audionet_tf.dataset import catalog, records
from audionet_tf.serving import onnx_model, web
from audionet_tf.training import finetune

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-5
INT8_AGREEMENT_GOAL = 0.95
CALIBRATION_WINDOWS = 1024  # training windows the int8 file is calibrated on
CHECK_WINDOWS = 2048  # held-out windows the parity figures are measured on, at most
SIGNATURES = ["serving_default", "probabilities", "embed", "timeline", "serve", "class_names", "__call__"]


def build_archive(model, sample_rate: int, window_samples: int, hop_samples: int,
                  class_names: Sequence[str] | None = None, classifier: bool = False):
    """A Keras ExportArchive that loads by convention, its pre- and post-processing inside.

    Windows `[N, L]` → logits `[N, C]` as the `serve` endpoint (what `keras.Model.export` writes:
    `keras.layers.TFSMLayer(path)` loads it with its defaults) and as `__call__` (so
    `tf.saved_model.load(path)(windows)` and `tensorflow_hub.KerasLayer(path)` work); the named
    signatures `serving_default`, `probabilities`, `embed`, and `timeline` (a waveform → per-window
    `logits`, `scores`, `embeddings` and `times` together, YAMNet's shape of answer), and `class_names`
    (no input → the names, a string tensor `[C]`). A fine-tuned `classifier`'s `serve` gives
    `scores` (probabilities), `logits` and `class_names` together, so an app needs nothing beside the model.
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
    names = tf.constant(list(class_names or [f"class_{i}" for i in range(int(model.output.shape[-1]))]))

    def named_scores(windows):
        scores = logits(windows)
        return {"scores": tf.nn.softmax(scores, axis=-1), "logits": scores, "class_names": tf.identity(names)}

    archive.add_endpoint("class_names", lambda: {"class_names": tf.identity(names)}, input_signature=[])
    archive.add_endpoint("serve", named_scores if classifier else logits, input_signature=windows_spec)
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


def calibration_sample(calibration: np.ndarray, window_samples: int) -> np.ndarray:
    """The windows the integer TFLite files are calibrated on (float32): the first of `calibration`."""
    return np.asarray(calibration[:sample_count(window_samples, CALIBRATION_WINDOWS)], np.float32)


def sample_count(window_samples: int, wanted: int) -> int:
    """How many windows to check or calibrate with: `wanted`, fewer for long windows (about 2^21 samples in all:
    SoundNet-8's 13 s windows, 10 of them; audionet's 640-sample windows, all that are wanted)."""
    return max(8, min(wanted, (1 << 21) // max(1, window_samples)))


def convert_tflite(saved_model_dir: str, quantization: str = "float",
                   calibration: np.ndarray | None = None) -> bytes:
    """TFLite bytes of the SavedModel's `serving_default`: float, int8 or 16x8 (calibrated on `calibration`
    windows; int8 weights per channel, int8 or int16 activations, float input and output) or dynamic-range."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=["serving_default"])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization in ("int8", "16x8"):
        if calibration is None or not len(calibration):
            raise ValueError(f"{quantization} quantization needs calibration windows")

        def representative():
            for window in calibration:
                yield [np.asarray(window, np.float32)[None, :]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS_INT8 if quantization == "int8"
            else tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    elif quantization == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantization != "float":
        raise ValueError(f"quantization must be float, int8, 16x8 or dynamic, got {quantization!r}")
    return converter.convert()


def quantize_int8(saved_model_dir: str, calibration: np.ndarray, windows: np.ndarray,
                  float_logits: np.ndarray) -> tuple[bytes, str, dict[str, float]]:
    """The integer TFLite file: int8 activations when their top-1 agrees with the float model's on `windows`
    at INT8_AGREEMENT_GOAL, else int16 activations (16x8) if they agree more; with each one's agreement.

    Real sound spans a wide range of loudness, and one int8 scale per tensor, set by the loudest
    calibration windows, leaves quiet windows a few levels of the input and of the conv maps (on real
    recordings int8 agrees far less on quiet windows than on loud ones: docs/exports.md, "int8 on real
    sound"). int16 activations keep 256 times finer steps
    with the same int8 weights, still integer-only, but LiteRT runs them on slower reference kernels."""
    tried, kinds = {}, {}
    for kind in ("int8", "16x8"):
        try:
            blob = convert_tflite(saved_model_dir, kind, calibration)
        except RuntimeError as exc:
            if kind == "int8":
                raise
            # The converter has no 16x8 kernel for some ops (SQRT, in a classifier on audionet's conv statistics).
            log.warning("int8 TFLite: no 16x8 file (%s); keeping int8 activations", exc)
            break
        logits = check_model(tflite_runner(blob), windows)
        tried[kind] = float(np.mean(logits.argmax(1) == float_logits.argmax(1)))
        kinds[kind] = blob
        if tried[kind] >= INT8_AGREEMENT_GOAL:
            break
    best = max(tried, key=lambda kind: (tried[kind], kind == "int8"))
    what = ("int8 (calibrated on dataset windows)" if best == "int8" else
            "16x8: int8 weights, int16 activations (calibrated on dataset windows; int8 activations agreed on "
            f"{tried['int8']:.1%})")
    log.info("int8 TFLite: %s", ", ".join(f"{kind} agrees on {share:.1%}" for kind, share in tried.items()))
    return kinds[best], what, tried


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
                 calibration: np.ndarray | None = None, check: np.ndarray | None = None,
                 options: ExportConfig | None = None, classifier: bool = False) -> dict[str, Any]:
    """Write the SavedModel, both TFLite files, ONNX, labels and metadata to `out_dir` (and the page
    `options.web` asks for); returns the metadata.

    int8 is calibrated on `calibration` (training windows); the parity figures are measured on `check`
    (held-out windows, which the calibration never saw), else on the calibration windows, else on noise."""
    import tensorflow as tf

    from audionet_tf.model.classifier import classifier_facts

    options = options or ExportConfig()
    if options.web and storage.is_remote(options.web):
        raise AudioNetError(f"--web {options.web}: the page is written to a local directory (serve it from there)")
    architecture = onnx_model.student_facts(model)[0]
    if options.web and architecture != "audionet":  # before any work, as the other refusals
        raise AudioNetError(f"--web {options.web}: the browser page runs audionet students only; this {architecture} "
                            f"student hears a {window_samples}-sample window centred on each hop, which the page "
                            f"does not build (use predict, or student.onnx with that framing: docs/exports.md)")
    runtime = web.runtime_dir(options) if options.web else None  # before any work: npm may be missing

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
    page = None
    try:
        # A fine-tuned classifier's serve gives its names, however it is exported (its run, or its .keras alone).
        classifier = classifier or classifier_facts(model) is not None
        build_archive(model, sample_rate, window_samples, hop_samples, class_names,
                      classifier).write_out(staging, verbose=False)
        rng = np.random.default_rng(0)
        if check is not None and len(check):
            sample = np.asarray(check[:sample_count(window_samples, CHECK_WINDOWS)], np.float32)
            split = "validation"
        elif calibration is not None and len(calibration):
            sample = calibration_sample(calibration, window_samples)
            split = "train"
        else:
            noise = (sample_count(window_samples, 64), window_samples)
            sample, split = (0.3 * rng.standard_normal(noise)).astype(np.float32), None
        float_bytes = convert_tflite(staging, "float")
        float_logits = check_model(tflite_runner(float_bytes), sample)
        tried: dict[str, float] = {}
        if calibration is not None and len(calibration):
            int8_bytes, int8_kind, tried = quantize_int8(staging, calibration_sample(calibration, window_samples),
                                                         sample, float_logits)
        else:
            int8_bytes, int8_kind = convert_tflite(staging, "dynamic"), "dynamic-range (no dataset at hand)"
        for name, blob in (("model.tflite", float_bytes), ("model_int8.tflite", int8_bytes)):
            with open(os.path.join(staging, name), "wb") as handle:
                handle.write(blob)
        with open(os.path.join(staging, "labels.txt"), "w", encoding="utf-8") as handle:
            handle.write("\n".join(class_names) + "\n")
        if options.onnx:
            onnx_model.write_onnx(model, os.path.join(staging, onnx_model.ONNX_FILE), class_names=class_names,
                                  sample_rate=sample_rate, window_samples=window_samples, hop_samples=hop_samples,
                                  opset=options.onnx_opset)

        keras_logits = check_model(lambda w: model.predict(w[..., None], verbose=0), sample)
        reloaded = tf.saved_model.load(staging)
        saved_logits = check_model(
            lambda w: reloaded.signatures["serving_default"](windows=tf.constant(w))["logits"].numpy(), sample)
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
            "windows_source": "dataset" if split else "random noise",
            "windows_split": split,
        }
        if tried:
            parity["int8_tried"] = tried  # each quantisation's agreement on the same windows
        if options.onnx:
            parity.update(onnx_parity(model, os.path.join(staging, onnx_model.ONNX_FILE), sample, keras_logits))
        for key in ("savedmodel_max_abs_diff", "tflite_float_max_abs_diff", "onnx_max_abs_diff",
                    "onnx_embedding_max_abs_diff"):
            if parity.get(key, 0.0) > PARITY_TOLERANCE:
                raise AudioNetError(f"export parity check failed: {key} = {parity[key]:.2e} > {PARITY_TOLERANCE}")
        if parity["int8_top1_agreement_with_float"] < INT8_AGREEMENT_GOAL:
            log.warning("int8 model agrees with the float model on %.1f%% of %d %s windows (goal %.0f%%)",
                        100 * parity["int8_top1_agreement_with_float"], len(sample), split or "noise",
                        100 * INT8_AGREEMENT_GOAL)
        else:
            log.info("int8 model agrees with the float model on %.1f%% of %d %s windows",
                     100 * parity["int8_top1_agreement_with_float"], len(sample), split or "noise")
        files = ["model.tflite", "model_int8.tflite", "saved_model.pb"] + [onnx_model.ONNX_FILE] * options.onnx
        doc = {
            "sample_rate": sample_rate, "window_samples": window_samples, "hop_samples": hop_samples,
            "window_ms": 1000.0 * window_samples / sample_rate, "num_classes": num_classes,
            "input": "float32 waveform windows [N, L] at sample_rate, in [-1, 1]",
            **_student_facts(model),
            "signatures": SIGNATURES,
            "int8_quantization": int8_kind, "parity": parity,
            "files": {name: os.path.getsize(os.path.join(staging, name)) for name in files},
            "versions": {"audionet_tf": __version__, "tensorflow": tf.__version__, **onnx_versions(options)},
            **({"onnx": onnx_description(model, options)} if options.onnx else {}),
            **(metadata or {}),
        }
        storage.atomic_write_text(os.path.join(staging, "metadata.json"), json.dumps(doc, indent=2) + "\n")
        if options.web:  # built before the export moves: an export that fails leaves no page behind either
            page = write_web(os.path.join(staging, onnx_model.ONNX_FILE), options.web, runtime,
                             class_names=class_names, sample_rate=sample_rate, window_samples=window_samples,
                             hop_samples=hop_samples)
        if remote:
            _upload_dir(staging, out_dir)
        else:
            _replace_dir(staging, out_dir)
        if options.web:
            _replace_dir(page, storage.abspath(options.web))
            log.info("browser page written to %s (serve it over HTTP: python -m http.server -d %s)",
                     options.web, options.web)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # locally renamed into place already, unless it failed
        if page:
            shutil.rmtree(page, ignore_errors=True)  # the same for the page
    return doc


def _student_facts(model) -> dict[str, Any]:
    """The architecture and the layer the `embed` signature gives (predict and embed read them back)."""
    architecture, layer = onnx_model.student_facts(model)
    return {"architecture": architecture, "embedding_layer": layer}


def onnx_parity(model, path: str, windows: np.ndarray, keras_logits: np.ndarray) -> dict[str, float]:
    """The ONNX file's largest differences from Keras on `windows`: logits (checked like every artefact)
    and the embedding, each relative to its scale (at least 1)."""
    from audionet_tf.model.student import embedding_model

    student = onnx_model.open_onnx(path, threads=1)
    logits = check_model(student.logits, windows)
    embedding = student.embed(windows)
    keras_embedding = embedding_model(model).predict(windows[..., None], verbose=0)  # the architecture's layer
    scale = max(1.0, float(np.max(np.abs(keras_logits))))
    embedding_scale = max(1.0, float(np.max(np.abs(keras_embedding))))
    return {"onnx_max_abs_diff": float(np.max(np.abs(logits - keras_logits))) / scale,
            "onnx_embedding_max_abs_diff": float(np.max(np.abs(embedding - keras_embedding))) / embedding_scale}


def onnx_description(model, options: ExportConfig) -> dict[str, Any]:
    """What metadata.json says of student.onnx: its opset, input and outputs with their axes (the samples axis
    fixed when the student was built for one window, as SoundNet's are), and the layer `embedding` gives."""
    from audionet_tf.model.student import embedding_model

    length = model.input.shape[1]
    samples = onnx_model.SAMPLES_AXIS if length is None else int(length)
    features = int(embedding_model(model).output.shape[-1])
    return {"file": onnx_model.ONNX_FILE, "opset": options.onnx_opset,
            "input": {onnx_model.INPUT: [onnx_model.BATCH_AXIS, samples]},
            "input_text": onnx_model.input_text(model), "window_fixed": length is not None,
            "embedding_layer": onnx_model.student_facts(model)[1],
            "outputs": {onnx_model.LOGITS: [onnx_model.BATCH_AXIS, int(model.output.shape[-1])],
                        onnx_model.EMBEDDING: [onnx_model.BATCH_AXIS, features]}}


def onnx_versions(options: ExportConfig) -> dict[str, str]:
    """The versions of the converter and runtime that wrote and checked student.onnx."""
    if not options.onnx:
        return {}
    from importlib.metadata import version

    return {name: version(name) for name in ("tf2onnx", "onnx", "onnxruntime")}


def write_web(onnx_path: str, web_dir: str, runtime: str, **student: Any) -> str:
    """The browser page, built in a new directory beside `web_dir` (renamed into place by the caller)."""
    target = storage.abspath(web_dir)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    page = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.", dir=os.path.dirname(target))
    os.chmod(page, 0o755)  # mkdtemp's 0700 would keep a web server running as another user out
    try:
        web.write_page(page, onnx_path, runtime, **student)
    except BaseException:
        shutil.rmtree(page, ignore_errors=True)
        raise
    return page


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
    """Up to `count` windows drawn at random from a dataset's training split (shards in a random order, read
    until there are four times `count`), or None when the dataset is not at hand; `window_samples`: the
    student's long windows (SoundNet), rebuilt from the frames read, fewer of them (`sample_count`)."""
    return _sample_windows(data_dir, "train", count, seed, window_samples)


def held_out_windows(data_dir: str, count: int = CHECK_WINDOWS, seed: int = 0,
                     window_samples: int | None = None) -> np.ndarray | None:
    """Up to `count` windows of a dataset's held-out split (what the export's parity is measured on), or None;
    `window_samples` as for `calibration_windows`."""
    return _sample_windows(data_dir, "validation", count, seed, window_samples)


def _sample_windows(data_dir: str, split: str, count: int, seed: int,
                    window_samples: int | None = None) -> np.ndarray | None:
    try:
        description = catalog.read_description(data_dir)
    except AudioNetError:
        return None
    shards = description.shards_for(split) or (description.shards if split == "train" else [])
    rng = np.random.default_rng(seed)
    long = window_samples is not None and window_samples != description.spec.window_samples
    if long:
        count = sample_count(window_samples, count)
    parts, held = [], 0
    # Shards hold clips in the order they were labelled: the first few alone would calibrate on a few clips.
    for index in rng.permutation(len(shards)):
        path = storage.join(data_dir, shards[index].file)
        if storage.exists(path):
            parts.append(records.read_examples(path, description.spec))
            held += len(parts[-1]["audio"])
            if held >= 4 * count:
                break
    if not parts:
        return None
    if long:  # each frame's long window, rebuilt from the frames read (zeros where a clip's frames were not read)
        from audionet_tf.dataset import context

        arrays = {k: np.concatenate([p[k] for p in parts]) for k in ("audio", "logits", "clip_id", "time")}
        order = np.lexsort((arrays["time"], arrays["clip_id"].astype(str)))
        rebuilt = context.context_windows({k: v[order] for k, v in arrays.items()}, description.spec,
                                          window_samples, data_dir)
        return rebuilt[np.sort(rng.permutation(len(rebuilt))[:count])]
    windows = [p["audio"] for p in parts]
    windows = np.concatenate(windows)
    return windows[rng.permutation(len(windows))[:count]]


def export_run(run_dir: str, out_dir: str, options: ExportConfig | None = None) -> dict[str, Any]:
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
    if finetune.is_finetune_run(config):  # a classifier of a user's classes: calibrated on its own windows
        calibration, check = finetune.calibration(run_dir)
        heard = config["student"]
        return export_model(
            model, out_dir, class_names=class_names, sample_rate=int(dataset["sample_rate"]),
            window_samples=int(heard["window_samples"]), hop_samples=int(heard["hop_samples"]),
            calibration=calibration, check=check, options=options, classifier=True,
            metadata=without_machine_paths({"class_names": class_names, "classifier": config["classifier"],
                                            "run": storage.basename(storage.abspath(run_dir)),
                                            "training_config": config, "final_metrics": metrics}))
    # What the student hears (SoundNet: its long window); runs from before the `student` entry: the dataset's.
    heard = config.get("student") or {}
    window = int(heard.get("window_samples") or dataset.get("window_samples", 640))
    return export_model(
        model, out_dir, class_names=class_names, sample_rate=int(dataset.get("sample_rate", 16000)),
        window_samples=window, hop_samples=int(dataset.get("hop_samples", 640)),
        calibration=calibration_windows(dataset.get("data_dir", ""), window_samples=window), options=options,
        check=held_out_windows(dataset.get("data_dir", ""), window_samples=window),
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
