"""Running a trained student on recordings: load an export, a `.keras`, a `.tflite` or an `.onnx`, window audio,
batch."""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from audionet_tf.core.errors import AudioNetError
from audionet_tf.serving import audio

BATCH = 256
# A multiple of BATCH: a streamed recording's batches are then exactly those of the whole recording,
# so its values are the whole-file computation's to the bit. 2048 windows of 1000 classes: 8 MB of logits.
CHUNK_WINDOWS = 8 * BATCH
# Samples in one batch at most (2^21): all of BATCH for 640-sample windows; for SoundNet's long windows
# as many as fit, at least one (10 of SoundNet-8's 209,374 samples, whose batch of 256 would hold 1.7 GB
# of conv1 outputs and whose chunk of 2048 windows 1.7 GB of audio: memory bounded by the window count,
# not its size).
BATCH_SAMPLES = 1 << 21


def batch_windows(window: int) -> int:
    """Windows per model call for windows of `window` samples: BATCH, fewer for long windows."""
    return max(1, min(BATCH, BATCH_SAMPLES // max(int(window), 1)))
RUNNER_CACHE = 8  # Keras models (or sub-models) whose traced function is kept for reuse


@dataclass
class Student:
    """A loaded student: windows `[N, L]` → logits `[N, C]`, with the facts needed to window audio."""

    logits: Callable[[np.ndarray], np.ndarray]
    class_names: list[str]
    sample_rate: int
    window_samples: int
    hop_samples: int
    source: str
    keras_model: object | None = None
    embed: Callable[[np.ndarray], np.ndarray] | None = None
    embedding_layer: str = "pooled"  # the layer `embed` gives (SoundNet: pool5 or conv4)

    @property
    def padding(self) -> tuple[int, int]:
        """Zeros before and after a recording: a window longer than the hop (SoundNet) is centred on each frame."""
        from audionet_tf.serving.export import context_padding

        return context_padding(self.window_samples, self.hop_samples)


class KerasRunner:
    """Windows `[N, L]` → a Keras model's outputs, through one function traced once for every N and L.

    `model.predict` traces anew for each new model object and each new batch shape, so running files
    of many lengths (or building a sub-model per file) retraced on every file; this function's input
    signature has both dimensions unknown.
    """

    def __init__(self, model, layer: str | None = None):
        import tensorflow as tf

        from audionet_tf.model.student import embedding_model

        self.model = model
        net = embedding_model(model, layer) if layer else model
        self.function = tf.function(lambda windows: net(tf.expand_dims(windows, -1), training=False),
                                    input_signature=[tf.TensorSpec([None, None], tf.float32)])

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        """Outputs for `windows`, in batches of `batch_windows` (BATCH for 640-sample windows)."""
        windows = np.asarray(windows, np.float32)
        step = batch_windows(windows.shape[-1]) if windows.ndim == 2 else BATCH
        return np.concatenate([self.function(windows[i:i + step]).numpy()
                               for i in range(0, max(len(windows), 1), step)])

    @property
    def traces(self) -> int:
        """How many times the function has been traced (1 after any number of calls)."""
        return self.function.experimental_get_tracing_count()


_runners: OrderedDict[tuple[int, str | None], KerasRunner] = OrderedDict()


def keras_runner(model, layer: str | None = None) -> KerasRunner:
    """The runner of `model` (its logits, or the `pooled`/`conv` features), reused across calls."""
    # Keyed by id(): the cache holds the model, so its id cannot be reused while the entry lives.
    key = (id(model), layer)
    if key not in _runners:
        _runners[key] = KerasRunner(model, layer)
        while len(_runners) > RUNNER_CACHE:
            _runners.popitem(last=False)
    _runners.move_to_end(key)
    return _runners[key]


def _labels(path: str, count: int, own: Sequence[str] | None = None) -> list[str]:
    """The class names for a model of `count` classes: its folder's labels.txt (the file a user may edit),
    else the names the model file carries itself (`own`), else class_0, class_1, ..."""
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            names = [line.rstrip("\n") for line in handle if line.strip()]
        if len(names) == count:
            return names
    if own and len(own) == count:
        return list(own)
    return [f"class_{i}" for i in range(count)]


def _saved_names(loaded, path: str, meta: dict[str, Any]) -> list[str]:
    """The class names of an export directory: labels.txt, else its SavedModel's own (`class_names` signature)."""
    own = None
    if "class_names" in loaded.signatures:
        own = [n.decode("utf-8") for n in loaded.signatures["class_names"]()["class_names"].numpy().tolist()]
    return _labels(os.path.join(path, "labels.txt"), meta["num_classes"], own)


def newest_export(root: str = "saved_models") -> str:
    """The most recently written export under `root`."""
    candidates = [os.path.join(root, d) for d in os.listdir(root)] if os.path.isdir(root) else []
    candidates = [d for d in candidates if os.path.isfile(os.path.join(d, "metadata.json"))]
    if not candidates:
        raise AudioNetError(f"no exported model under {root}/: train one (python -m audionet_tf.train) or give --model")
    return max(candidates, key=os.path.getmtime)


def load_student(path: str) -> Student:
    """A student from an export directory (SavedModel), a `.keras`, a `.tflite` or an `.onnx` file."""
    if os.path.isdir(path):
        meta_path = os.path.join(path, "metadata.json")
        if not os.path.isfile(meta_path) or not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise AudioNetError(f"{path} is not an export directory (no metadata.json and saved_model.pb); "
                                f"make one with python -m audionet_tf.export")
        import tensorflow as tf

        with open(meta_path, encoding="utf-8") as handle:
            meta = json.load(handle)
        loaded = tf.saved_model.load(path)
        serve, embed = loaded.signatures["serving_default"], loaded.signatures["embed"]
        return Student(lambda w: serve(windows=tf.constant(w, tf.float32))["logits"].numpy(),
                       _saved_names(loaded, path, meta), meta["sample_rate"],
                       meta["window_samples"], meta["hop_samples"], path,
                       embed=lambda w: embed(windows=tf.constant(w, tf.float32))["embedding"].numpy(),
                       embedding_layer=meta.get("embedding_layer", "pooled"))
    if not os.path.isfile(path):
        raise AudioNetError(f"{path}: no such model file or export directory")
    folder = os.path.dirname(os.path.abspath(path))
    meta = {}
    if os.path.isfile(os.path.join(folder, "metadata.json")):
        with open(os.path.join(folder, "metadata.json"), encoding="utf-8") as handle:
            meta = json.load(handle)
    elif os.path.isfile(os.path.join(folder, "config.json")):
        # A run directory's model.keras: its config.json says what the student heard (the dataset's
        # rate, the frame hop), which need not be the 16 kHz and 40 ms defaults.
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as handle:
            run = json.load(handle)
        heard = {**(run.get("dataset") or {}), **(run.get("student") or {})}
        meta = {key: heard[key] for key in ("sample_rate", "window_samples", "hop_samples") if key in heard}
    rate, window, hop = meta.get("sample_rate", 16000), meta.get("window_samples", 640), meta.get("hop_samples", 640)
    built_for = None
    if path.endswith(".tflite"):
        from audionet_tf.serving.export import tflite_runner

        run = tflite_runner(path)
        try:
            count = run(np.zeros((1, window), np.float32)).shape[-1]
        except (ValueError, RuntimeError) as exc:
            raise AudioNetError(f"{path}: cannot run this TFLite model ({exc})") from None
        return Student(run, _labels(os.path.join(folder, "labels.txt"), count, meta.get("class_names")), rate,
                       window, hop, path)
    if path.endswith(".keras"):
        from audionet_tf.model.student import load_model

        try:
            model = load_model(path)
        except Exception as exc:  # Keras raises several types for a file it cannot read
            raise AudioNetError(f"{path}: cannot load it as a .keras model ({exc})") from None
        count = int(model.output.shape[-1])
        from audionet_tf.model.student import model_window
        from audionet_tf.serving.onnx_model import student_facts

        built_for = model_window(model)  # a SoundNet student knows its own window
        _, layer = student_facts(model)  # a fine-tuned classifier: the layer its head reads
        return Student(keras_runner(model), _labels(os.path.join(folder, "labels.txt"), count), rate,
                       built_for or window, hop, path, keras_model=model, embed=keras_runner(model, layer),
                       embedding_layer=layer)
    if path.endswith(".onnx"):
        from audionet_tf.serving.onnx_model import open_onnx

        onnx = open_onnx(path)
        # The file's own metadata first (it travels alone), then its export directory's.
        own = {**meta, **onnx.metadata}
        rate, window, hop = (own.get(key, default) for key, default in
                             (("sample_rate", 16000), ("window_samples", 640), ("hop_samples", 640)))
        try:
            count = onnx.logits(np.zeros((1, window), np.float32)).shape[-1]
        except Exception as exc:  # onnxruntime raises its own types for inputs the graph refuses
            raise AudioNetError(f"{path}: cannot run this ONNX model on a window of {window} samples ({exc})") \
                from None
        names = _labels(os.path.join(folder, "labels.txt"), count, own.get("class_names"))
        return Student(onnx.logits, names, rate, window, hop, path, embed=onnx.embed,
                       embedding_layer=own.get("embedding_layer", "pooled"))
    raise AudioNetError(f"{path}: expected an export directory, a .keras, a .tflite or an .onnx file")


def frame_audio(wave: np.ndarray, window: int, hop: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Windows `[M, window]` every `hop` samples (window k covers [k hop, k hop + window)) and their start indices."""
    if len(wave) < window:
        raise AudioNetError(f"{where}: {len(wave)} samples of audio, shorter than one window ({window})")
    count = 1 + (len(wave) - window) // hop
    starts = np.arange(count) * hop
    return np.stack([wave[s:s + window] for s in starts]).astype(np.float32), starts


def batched(fn: Callable[[np.ndarray], np.ndarray], windows: np.ndarray) -> np.ndarray:
    """`fn` over `windows` in batches of `batch_windows`."""
    step = batch_windows(windows.shape[-1]) if np.ndim(windows) == 2 else BATCH
    return np.concatenate([np.asarray(fn(windows[i:i + step])) for i in range(0, len(windows), step)])


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities from logits, row by row."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def window_chunks(source: audio.ArrayAudio | audio.FileAudio, window: int, hop: int,
                  where: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The windows of `source` and their start samples, CHUNK_WINDOWS at a time for 640-sample windows,
    8 batches of `batch_windows` for longer ones (see `audio.window_chunks`)."""
    per_call = batch_windows(window)
    chunk = CHUNK_WINDOWS if per_call == BATCH else CHUNK_WINDOWS // BATCH * per_call
    return audio.window_chunks(source, window, hop, chunk, where)


def open_audio(path: str, sample_rate: int) -> audio.FileAudio:
    """A file's audio at `sample_rate`, streamed from ffmpeg (a context manager)."""
    return audio.FileAudio(path, sample_rate)


def array_audio(samples: np.ndarray, sample_rate: int, student: Student) -> audio.ArrayAudio:
    """An array at its own sample rate, brought to the student's (mono float32, resampled)."""
    if sample_rate is None:
        raise AudioNetError("an array needs its sample rate: nothing is assumed (the student takes "
                            f"{student.sample_rate} Hz and resamples anything else)")
    return audio.ArrayAudio(audio.resample(audio.as_mono(samples), sample_rate, student.sample_rate))


def hop_for(student: Student, hop_seconds: float | None) -> int:
    """Samples between window starts: `hop_seconds` at the student's rate, by default the training hop."""
    if hop_seconds is None:
        return student.hop_samples
    if not hop_seconds > 0:
        raise AudioNetError(f"hop must be positive, got {hop_seconds} s")
    return max(1, int(round(hop_seconds * student.sample_rate)))


def _scores(student: Student, source, hop: int, where: str) -> dict[str, Any]:
    logits, starts = [], []
    for windows, chunk_starts in window_chunks(heard_audio(student, source), student.window_samples, hop, where):
        logits.append(batched(student.logits, windows))
        starts.append(chunk_starts)
    logits = np.concatenate(logits)
    return {"scores": softmax(logits), "logits": logits,
            "times": np.concatenate(starts) / student.sample_rate, "class_names": list(student.class_names)}


def predict_array(student: Student, samples: np.ndarray, sample_rate: int, *,
                  hop_seconds: float | None = None) -> dict[str, Any]:
    """Class scores of each window of an array at `sample_rate` (resampled to the student's rate):
    `scores` (softmax probabilities) and `logits` `[M, C]`, `times` `[M]` (window starts, s), `class_names`."""
    return _scores(student, array_audio(samples, sample_rate, student), hop_for(student, hop_seconds), "audio")


def predict_path(student: Student, path: str, *, hop_seconds: float | None = None) -> dict[str, Any]:
    """`predict_array`'s answer for any file ffmpeg reads, decoded and classified chunk by chunk."""
    with open_audio(path, student.sample_rate) as source:
        return _scores(student, source, hop_for(student, hop_seconds), path)


def conv_statistics(model, windows: np.ndarray) -> np.ndarray:
    """Mean, std and max over time of the max-pooled conv maps: `[N, 48]`."""
    maps = keras_runner(model, "conv")(windows)
    return np.concatenate([maps.mean(axis=1), maps.std(axis=1), maps.max(axis=1)], axis=1)


def embedder(student: Student, layer: str | None = "pooled") -> Callable[[np.ndarray], np.ndarray]:
    """Windows → embeddings: `pooled` (16 features, any student but a .tflite) or `conv` (48, a .keras);
    SoundNet: its default layer (any student but a .tflite) or any layer of its table, averaged over time (a .keras)."""
    if student.embedding_layer != "pooled":  # SoundNet
        if layer in (None, "pooled", student.embedding_layer):
            if student.embed is None:
                raise AudioNetError(f"{student.source} has no embedding signature")
            return lambda windows: batched(student.embed, windows)
        if student.keras_model is None:
            raise AudioNetError(f"--layer {layer} needs a .keras model (the run's model.keras), not {student.source}; "
                                f"an export gives its default layer {student.embedding_layer}")
        try:
            runner = keras_runner(student.keras_model, layer)
        except ValueError as exc:
            raise AudioNetError(str(exc)) from None
        return lambda windows: runner(windows)
    layer = layer or "pooled"
    if layer == "conv":
        if student.keras_model is None:
            raise AudioNetError(f"--layer conv needs a .keras model, not {student.source}")
        return lambda windows: conv_statistics(student.keras_model, windows)
    if layer != "pooled":
        raise AudioNetError(f"layer must be pooled or conv, got {layer!r}")
    if student.embed is None:
        raise AudioNetError(f"{student.source} has no embedding signature")
    return lambda windows: batched(student.embed, windows)


class PaddedAudio:
    """A source with `left` zeros before its samples and `right` after (SoundNet's windows centred on frames)."""

    def __init__(self, source, left: int, right: int):
        self.source, self.left, self.right = source, left, right
        self.samples = 0
        self._ended = False  # the source gave fewer samples than asked: it has no more
        self._tail = 0  # trailing zeros handed out

    def read(self, count: int) -> np.ndarray:
        """Up to `count` samples: the leading zeros, the source's, then the trailing zeros."""
        parts, need = [], count
        if self.samples < self.left:
            take = min(need, self.left - self.samples)
            parts.append(np.zeros(take, np.float32))
            need -= take
        if need and not self._ended:
            got = np.asarray(self.source.read(need), np.float32)
            parts.append(got)
            need -= len(got)
            self._ended = need > 0
        if need and self._ended:
            take = min(need, self.right - self._tail)
            parts.append(np.zeros(take, np.float32))
            self._tail += take
        block = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        self.samples += len(block)
        return block


def heard_audio(student: Student, source):
    """`source` as the student hears it: with SoundNet's zeros around it (`Student.padding`), else as it is."""
    left, right = student.padding
    return PaddedAudio(source, left, right) if left or right else source


def embed_source(student: Student, source: audio.ArrayAudio | audio.FileAudio, hop: int, layer: str,
                 where: str) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings `[M, D]` float32 and window starts `[M]` (s, float32) of `source`, chunk by chunk."""
    embed_windows = embedder(student, layer)
    values, starts = [], []
    for windows, chunk_starts in window_chunks(heard_audio(student, source), student.window_samples, hop, where):
        values.append(embed_windows(windows).astype(np.float32))
        starts.append(chunk_starts)
    return np.concatenate(values), (np.concatenate(starts) / student.sample_rate).astype(np.float32)


def embed_array(student: Student, samples: np.ndarray, sample_rate: int, *,
                hop_seconds: float | None = None, layer: str = "pooled") -> dict[str, Any]:
    """Embeddings of each window of an array at `sample_rate` (resampled to the student's rate):
    `embeddings` `[M, D]` (D = 16 pooled, 48 conv statistics) and `times` `[M]` (window starts, s)."""
    source = array_audio(samples, sample_rate, student)
    values, times = embed_source(student, source, hop_for(student, hop_seconds), layer, "audio")
    return {"embeddings": values, "times": times}


def embed_path(student: Student, path: str, *, hop_seconds: float | None = None,
               layer: str = "pooled") -> dict[str, Any]:
    """`embed_array`'s answer for any file ffmpeg reads, decoded and embedded chunk by chunk."""
    with open_audio(path, student.sample_rate) as source:
        values, times = embed_source(student, source, hop_for(student, hop_seconds), layer, path)
    return {"embeddings": values, "times": times}


def _is_path(audio_or_path: Any) -> bool:
    return isinstance(audio_or_path, (str, os.PathLike))


def predict(student: Student, audio_or_path: np.ndarray | str | os.PathLike, sample_rate: int | None = None, *,
            hop_seconds: float | None = None) -> dict[str, Any]:
    """`predict_array` for an array with its `sample_rate`, `predict_path` for a file path (no rate)."""
    if _is_path(audio_or_path):
        if sample_rate is not None:
            raise AudioNetError(f"{audio_or_path}: a file's sample rate is read from the file; give no sample_rate")
        return predict_path(student, os.fspath(audio_or_path), hop_seconds=hop_seconds)
    return predict_array(student, audio_or_path, sample_rate, hop_seconds=hop_seconds)


def embed(student: Student, audio_or_path: np.ndarray | str | os.PathLike, sample_rate: int | None = None, *,
          hop_seconds: float | None = None, layer: str = "pooled") -> dict[str, Any]:
    """`embed_array` for an array with its `sample_rate`, `embed_path` for a file path (no rate)."""
    if _is_path(audio_or_path):
        if sample_rate is not None:
            raise AudioNetError(f"{audio_or_path}: a file's sample rate is read from the file; give no sample_rate")
        return embed_path(student, os.fspath(audio_or_path), hop_seconds=hop_seconds, layer=layer)
    return embed_array(student, audio_or_path, sample_rate, hop_seconds=hop_seconds, layer=layer)
