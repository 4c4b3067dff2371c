"""Fine-tuning a trained student to a user's own classes: a new head on one of its layers, trained on a labelled
sound set in ESC-50's layout (`dataset/labelled.py`), the student frozen first, then optionally all of it.

Every clip is decoded at the student's sample rate (mono) and cut into the student's own windows at its hop
(`labelled.clip_windows`, as predict frames a recording); each window carries its clip's label. A clip's
score is the mean of its windows' probabilities, so clip accuracy is what predict's per-recording answer gives.

The run directory is built beside its destination and renamed into place when training has finished:

| file | what |
|---|---|
| `config.json` | the resolved settings, the student it came from, the sample rate, window and hop, the classes |
| `history.csv` | one row per epoch: loss, window accuracy, held-out window and clip accuracy (with a held-out fold) |
| `labels.txt` | the class names, in the order of the head's outputs (the CSV's targets, ascending) |
| `model.keras` | the classifier (loads with `student.load_model`; its `features` layer names its student and layer) |
| `checkpoints/` | `frozen.weights.h5` after the head's epochs, `final.weights.h5` at the end |
| `metrics.json` | the final figures (training and held-out, clip and window accuracy, the class prior) |
| `calibration.npz` | training windows (and held-out ones) the export calibrates its int8 file on and checks parity on |
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from audionet_tf.core import config as cfg, storage
from audionet_tf.core.errors import AudioNetError, ConfigError
from audionet_tf.dataset import labelled

log = logging.getLogger("audionet_tf.finetune")

CALIBRATION_FILE = "calibration.npz"
# Windows kept for the export's int8 calibration and parity: about 2^21 samples in all, as the student's export
# takes (1024 of audionet's 640-sample windows; 8 or more of SoundNet's long ones).
CALIBRATION_SAMPLES = 1 << 21


@dataclass(frozen=True)
class StudentFacts:
    """What a trained student hears: its `.keras`, sample rate, window and hop, and the run it came from."""

    model_path: str
    sample_rate: int
    window_samples: int | None  # None: read from the model (audionet takes any length: the run's window)
    hop_samples: int
    run: str


def student_facts(source: str) -> StudentFacts:
    """A run directory's (or a `.keras` file's) model and framing: its config.json, else 16 kHz, 640 samples."""
    if os.path.isdir(source):
        model_path = os.path.join(source, "model.keras")
        if not os.path.isfile(model_path):
            raise ConfigError(f"--from {source}: no model.keras there (not a finished training run)")
        doc_path = os.path.join(source, "config.json")
        doc = json.loads(storage.read_text(doc_path)) if os.path.isfile(doc_path) else {}
    elif source.endswith(".keras") and os.path.isfile(source):
        model_path, doc = source, {}
    else:
        raise ConfigError(f"--from {source}: expected a training run directory or a .keras file")
    dataset, heard = doc.get("dataset") or {}, doc.get("student") or {}
    window = heard.get("window_samples") or dataset.get("window_samples")
    return StudentFacts(model_path, int(dataset.get("sample_rate", 16000)), int(window) if window else None,
                        int(heard.get("hop_samples") or dataset.get("hop_samples") or 640),
                        os.path.basename(os.path.normpath(source)))


@dataclass
class Windows:
    """Every window of a set of clips: audio `[N, L]`, label `[N]` and clip index `[N]` into `clips`."""

    audio: np.ndarray
    label: np.ndarray
    clip: np.ndarray
    clips: list[labelled.Clip]


def decode_clips(clips: list[labelled.Clip], sample_rate: int, window: int, hop: int, csv_path: str) -> Windows:
    """Each clip decoded (mono, `sample_rate`) and cut into windows; an unreadable file names its CSV line."""
    from audionet_tf.preparation.media import read_audio

    audio, label, clip = [], [], []
    for index, item in enumerate(clips):
        try:
            wave = read_audio(item.path, sample_rate)
        except AudioNetError as exc:
            raise labelled.LabelledDataError(f"{csv_path} line {item.line}: {exc}") from None
        if not len(wave):
            raise labelled.LabelledDataError(f"{csv_path} line {item.line}: {item.path} holds no audio")
        windows = labelled.clip_windows(wave, window, hop)
        audio.append(windows)
        label.append(np.full(len(windows), item.label, np.int32))
        clip.append(np.full(len(windows), index, np.int32))
    if not audio:
        return Windows(np.zeros((0, window), np.float32), np.zeros(0, np.int32), np.zeros(0, np.int32), clips)
    return Windows(np.concatenate(audio), np.concatenate(label), np.concatenate(clip), clips)


def class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """Keras's `class_weight`: each class's windows weighted by (windows / classes) / its own windows."""
    counts = np.bincount(labels, minlength=num_classes)
    return {c: float(len(labels) / (num_classes * counts[c])) if counts[c] else 0.0 for c in range(num_classes)}


def clip_scores(probabilities: np.ndarray, windows: Windows) -> np.ndarray:
    """Each clip's class scores: the mean of its windows' probabilities `[clips, C]`."""
    out = np.zeros((len(windows.clips), probabilities.shape[1]))
    np.add.at(out, windows.clip, probabilities)
    return out / np.maximum(np.bincount(windows.clip, minlength=len(windows.clips)), 1)[:, None]


def accuracies(model, windows: Windows) -> dict[str, float]:
    """Window accuracy, and clip accuracy (the mean of window scores), of `model` on `windows`."""
    import keras

    logits = model.predict(windows.audio[..., None], batch_size=256, verbose=0)
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=-1))
    truth = np.array([c.label for c in windows.clips])
    return {"window_accuracy": float(np.mean(probabilities.argmax(1) == windows.label)),
            "clip_accuracy": float(np.mean(clip_scores(probabilities, windows).argmax(1) == truth))}


def _held_out_callback(held_out: Windows | None, rows: list[dict[str, Any]], quiet: bool):
    """A callback that scores the held-out clips after every epoch and keeps each epoch's row for history.csv."""
    import keras

    class HeldOut(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
            if held_out is not None:
                scores = accuracies(self.model, held_out)
                row["heldout_window_accuracy"] = scores["window_accuracy"]
                row["heldout_clip_accuracy"] = scores["clip_accuracy"]
            rows.append(row)
            if not quiet:
                part = (f", held-out clips {row['heldout_clip_accuracy']:.3f} (windows "
                        f"{row['heldout_window_accuracy']:.3f})" if held_out is not None else "")
                log.info("epoch %d: loss %.4f, window accuracy %.3f%s", epoch + 1, row.get("loss", float("nan")),
                         row.get("accuracy", float("nan")), part)

    return HeldOut()


def _compile(model, learning_rate: float) -> None:
    import keras

    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])


def _run_dir(fc: cfg.FinetuneConfig, name: str) -> str:
    """A new run directory under runs_dir: `name`, else `name-2`, `name-3`, … (a finished run is never replaced)."""
    base = os.path.join(fc.runs_dir, name)
    candidate, index = base, 1
    while os.path.exists(candidate):
        index += 1
        candidate = f"{base}-{index}"
    return candidate


def _history_csv(rows: list[dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _sample(windows: np.ndarray, seed: int) -> np.ndarray:
    count = max(8, min(1024, CALIBRATION_SAMPLES // max(1, windows.shape[1])))
    return windows[np.sort(np.random.default_rng(seed).permutation(len(windows))[:count])]


def finetune(config: cfg.PipelineConfig) -> str:
    """Train a classifier of the labelled set's classes on the student `config.finetune.run`; returns the run
    directory. Bad settings and bad labelled data are refused before anything is decoded or written."""
    import keras

    from audionet_tf.model import classifier as classifier_lib, soundnet
    from audionet_tf.model.student import load_model, model_window

    fc = config.finetune
    t0 = time.time()
    if not fc.run:
        raise ConfigError("finetune needs --from RUN (a training run directory or a .keras file)")
    if not fc.data:
        raise ConfigError("finetune needs --data labelled.csv (filename,fold,target,category, ESC-50's layout)")
    facts = student_facts(fc.run)
    data = labelled.read_labelled(fc.data, fc.audio_dir, fc.holdout_fold)
    student = load_model(facts.model_path)
    architecture = soundnet.architecture_of(student)
    layer = fc.layer or classifier_lib.default_layer(architecture)
    if layer not in classifier_lib.layer_choices(architecture):
        raise ConfigError(f"--layer {layer}: a {architecture} student's layers are "
                          f"{', '.join(classifier_lib.layer_choices(architecture))}")
    window = model_window(student) or facts.window_samples or 640
    hop = max(1, int(round(fc.hop_s * facts.sample_rate))) if fc.hop_s else facts.hop_samples
    train_clips, held_clips = data.split(fc.holdout_fold)
    train = decode_clips(train_clips, facts.sample_rate, window, hop, fc.data)
    held_out = decode_clips(held_clips, facts.sample_rate, window, hop, fc.data) if held_clips else None
    names = list(data.class_names)
    log.info("%d training clips (%d windows of %d samples every %d), %d held out; classes: %s", len(train_clips),
             len(train.audio), window, hop, len(held_clips), ", ".join(names))

    keras.utils.set_random_seed(fc.seed)
    model = classifier_lib.build_classifier(student, len(names), layer)
    for part in classifier_lib.student_layers(model):
        part.trainable = False
    weights = class_weights(train.label, len(names)) if fc.class_weights else None
    rows: list[dict[str, Any]] = []
    callbacks = [_held_out_callback(held_out, rows, fc.quiet)]
    x = train.audio[..., None]
    name = fc.name or f"{facts.run}-{os.path.splitext(os.path.basename(fc.data))[0]}"
    run_dir = _run_dir(fc, name)
    os.makedirs(fc.runs_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(run_dir)}.", dir=fc.runs_dir)
    try:
        _compile(model, fc.learning_rate)
        model.fit(x, train.label, batch_size=fc.batch_size, epochs=fc.epochs, class_weight=weights, shuffle=True,
                  callbacks=callbacks, verbose=0)
        os.makedirs(os.path.join(staging, "checkpoints"))
        model.save_weights(os.path.join(staging, "checkpoints", "frozen.weights.h5"))
        if fc.unfreeze_epochs:
            for part in classifier_lib.student_layers(model):
                part.trainable = True
            _compile(model, fc.unfreeze_learning_rate)  # a new optimizer: the student's weights get their own moments
            model.fit(x, train.label, batch_size=fc.batch_size, epochs=fc.epochs + fc.unfreeze_epochs,
                      initial_epoch=fc.epochs, class_weight=weights, shuffle=True, callbacks=callbacks, verbose=0)
        model.save_weights(os.path.join(staging, "checkpoints", "final.weights.h5"))
        model.save(os.path.join(staging, "model.keras"))
        final = {"train": accuracies(model, train), "epochs": fc.epochs + fc.unfreeze_epochs,
                 "seconds": round(time.time() - t0, 1)}
        if held_out is not None:
            final["validation"] = accuracies(model, held_out)
            trained = np.bincount([c.label for c in train_clips], minlength=len(names))
            # The class prior: always answering the most frequent training class.
            final["validation"]["prior_clip_accuracy"] = float(np.mean(
                [c.label == int(trained.argmax()) for c in held_clips]))
            final["validation"]["clips"] = len(held_clips)
        doc = config.to_dict()
        doc = {"finetune": doc["finetune"], "export": doc["export"], "source": config.source}
        doc["classifier"] = {"architecture": architecture, "layer": layer, "classes": names,
                             "targets": list(data.targets), "class_weights": weights,
                             "train_clips": len(train_clips), "train_windows": int(len(train.audio)),
                             "heldout_clips": len(held_clips), "csv": os.path.abspath(fc.data),
                             "audio_dir": os.path.abspath(data.audio_dir)}
        doc["dataset"] = {"sample_rate": facts.sample_rate, "window_samples": window, "hop_samples": hop}
        doc["student"] = {"architecture": architecture, "window_samples": window, "hop_samples": hop,
                          "run": facts.run, "model": os.path.abspath(facts.model_path)}
        storage.atomic_write_text(os.path.join(staging, "config.json"), json.dumps(doc, indent=2, default=str) + "\n")
        storage.atomic_write_text(os.path.join(staging, "history.csv"), _history_csv(rows))
        storage.atomic_write_text(os.path.join(staging, "labels.txt"), "\n".join(names) + "\n")
        storage.atomic_write_text(os.path.join(staging, "metrics.json"), json.dumps(final, indent=2) + "\n")
        arrays = {"train": _sample(train.audio, fc.seed)}
        if held_out is not None:
            arrays["heldout"] = _sample(held_out.audio, fc.seed)
        np.savez(os.path.join(staging, CALIBRATION_FILE), **arrays)
        os.chmod(staging, 0o755)  # mkdtemp's 0700 would keep other users out of the run
        os.replace(staging, run_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return run_dir


def calibration(run_dir: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """A fine-tuning run's training windows (int8 calibration) and held-out windows (parity), or None."""
    path = os.path.join(run_dir, CALIBRATION_FILE)
    if not os.path.isfile(path):
        return None, None
    with np.load(path) as arrays:
        return arrays["train"], arrays["heldout"] if "heldout" in arrays else None


def is_finetune_run(doc: dict[str, Any]) -> bool:
    """Whether a run's config.json is a fine-tuning run's."""
    return "classifier" in doc

