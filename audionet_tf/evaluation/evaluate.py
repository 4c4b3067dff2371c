"""Does the student hear what the teacher sees (`distill`, with K folds), and do its features transfer (`transfer`)?"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np

from audionet_tf.core import storage
from audionet_tf.core.errors import AudioNetError
from audionet_tf.dataset import catalog, reader, records
from audionet_tf.dataset.labelled import AUDIO_SUFFIXES, read_sound_dataset  # noqa: F401  (the transfer reader)
from audionet_tf.serving.inference import softmax

log = logging.getLogger("audionet_tf.evaluate")


def agreement(teacher_logits: np.ndarray, student_logits: np.ndarray) -> dict[str, float]:
    """KL(teacher ‖ student) at T = 1, top-1 and top-5 agreement, averaged over windows."""
    p = softmax(teacher_logits.astype(np.float64))
    log_q = np.log(softmax(student_logits.astype(np.float64)) + 1e-12)
    kl = np.sum(p * (np.log(p + 1e-12) - log_q), axis=1)
    top = teacher_logits.argmax(axis=1)
    k = min(5, student_logits.shape[1])
    top5 = np.argsort(-student_logits, axis=1)[:, :k]
    return {"kl": float(kl.mean()), "top1_agreement": float(np.mean(student_logits.argmax(1) == top)),
            "top5_agreement": float(np.mean((top5 == top[:, None]).any(axis=1))), "windows": int(len(top))}


def per_clip(arrays: dict[str, np.ndarray], student_logits: np.ndarray) -> dict[str, dict[str, float]]:
    """Agreement figures for each clip."""
    return {str(cid): agreement(arrays["logits"][arrays["clip_id"] == cid], student_logits[arrays["clip_id"] == cid])
            for cid in np.unique(arrays["clip_id"])}


def prior_logits(train_logits: np.ndarray, count: int) -> np.ndarray:
    """The chance baseline: log of the teacher's mean distribution, for every window."""
    mean = softmax(train_logits.astype(np.float64)).mean(axis=0)
    return np.repeat(np.log(mean + 1e-12)[None, :], count, axis=0)


def unseen_classes(train_logits: np.ndarray, val: dict[str, np.ndarray]) -> dict[str, int]:
    """Held-out clips whose most frequent teacher class is the top class of no training window."""
    trained = set(train_logits.argmax(axis=1).tolist())
    out = {}
    for cid in np.unique(val["clip_id"]):
        top = int(np.bincount(val["logits"][val["clip_id"] == cid].argmax(axis=1)).argmax())
        if top not in trained:
            out[str(cid)] = top
    return out


def distill(run_dir: str, data_dir: str, folds: int = 0, epochs: int | None = None) -> dict[str, Any]:
    """Student vs teacher on the held-out data (whole clips, or each clip's held-out part), with an optional
    K-fold; writes report/distill.json."""
    from audionet_tf.model.student import load_model, model_window

    description = catalog.read_description(data_dir)
    held_out = description.held_out_clip_ids()
    if not held_out or not description.examples("validation"):
        raise AudioNetError(f"dataset {data_dir} holds nothing out; prepare it with --holdout (whole clips) or "
                            f"--holdout-part (a part of every clip) to evaluate on unseen audio")
    model_path = storage.join(run_dir, "model.keras")
    if not storage.isfile(model_path):
        raise AudioNetError(f"{run_dir} holds no model.keras: not a finished training run")
    model = load_model(model_path)
    val = reader.load_arrays(data_dir, "validation")
    train_arrays = reader.load_arrays(data_dir, "train")
    window = model_window(model)
    if window is not None and window != description.spec.window_samples:
        # SoundNet: its long window on each held-out frame, rebuilt from held-out frames only.
        heard = reader.load_arrays(data_dir, "validation", window_samples=window, description=description)["audio"]
        student = np.concatenate([model.predict(heard[i:i + 32][..., None], verbose=0)
                                  for i in range(0, len(heard), 32)])
    else:
        student = model.predict(val["audio"][..., None], verbose=0, batch_size=512)
    prior = prior_logits(train_arrays["logits"], len(val["audio"]))
    names = catalog.read_class_names(data_dir, description)
    unseen = unseen_classes(train_arrays["logits"], val)
    for cid, top in unseen.items():
        log.warning("held-out clip %s: the teacher's most frequent class on it (%s) is the top class of no "
                    "training window, so no student can agree with it there; hold out a part of every clip "
                    "instead (--holdout-part 0.2 --holdout 0)", cid, names[top])
    splits = {c.id: c.split for c in description.clips}
    result: dict[str, Any] = {
        # Names, not machine paths: the report is shared.
        "run": storage.basename(run_dir), "data": os.path.basename(os.path.normpath(data_dir)),
        "held_out_clips": sorted(held_out), "split": sorted({splits[c] for c in held_out}),
        "student": agreement(val["logits"], student), "prior": agreement(val["logits"], prior),
        "per_clip": {cid: {"student": s, "prior": agreement(val["logits"][val["clip_id"] == cid],
                                                           prior[val["clip_id"] == cid])}
                     for cid, s in per_clip(val, student).items()},
        "unseen_class_clips": sorted(unseen),
    }
    if folds:
        result["folds"] = cross_validate(run_dir, data_dir, folds, epochs)
    out = storage.join(run_dir, "report", "distill.json")
    storage.atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    return result


def fold_masks(arrays: dict[str, np.ndarray], description: records.Description, folds: int) -> tuple[str, list]:
    """Test and train masks of each fold: over clips, or over time segments of every clip (each clip
    its own class, or fewer clips than folds), with training windows that share samples with the
    fold's test windows left out."""
    from audionet_tf.core.config import AudioConfig
    from audionet_tf.dataset import split as split_lib

    clips = sorted(set(arrays["clip_id"]))
    time_split = any(c.split == "time" for c in description.clips) or len(clips) < folds
    if not time_split:
        masks = []
        for fold in range(folds):
            test = np.isin(arrays["clip_id"], clips[fold::folds])
            masks.append((test, ~test))
        return "clips", masks
    spec = description.spec
    audio = AudioConfig(sample_rate=spec.sample_rate, frame_period_ms=spec.frame_period_ms,
                        window_ms=1000.0 * spec.window_samples / spec.sample_rate)
    frame = np.round(arrays["time"] / (spec.frame_period_ms / 1000.0)).astype(int)
    masks = []
    for fold in range(folds):
        test, train_mask = np.zeros(len(frame), bool), np.zeros(len(frame), bool)
        for cid in clips:
            mine = np.where(arrays["clip_id"] == cid)[0]
            labels = split_lib.segment_splits(int(frame[mine].max()) + 1, audio, folds, fold)
            test[mine] = [labels[k] == "validation" for k in frame[mine]]
            train_mask[mine] = [labels[k] == "train" for k in frame[mine]]
        masks.append((test, train_mask))
    return "time segments", masks


def cross_validate(run_dir: str, data_dir: str, folds: int, epochs: int | None) -> dict[str, Any]:
    """Train a fresh student without each fold (the run's settings) and score it on that fold."""
    import keras

    from audionet_tf.core import config as cfg
    from audionet_tf.core.console import Progress
    from audionet_tf.model.student import build_audionet
    from audionet_tf.training.trainer import compile_student

    doc = json.loads(storage.read_text(storage.join(run_dir, "config.json")))
    train_cfg = cfg.build_section(cfg.TrainConfig, {k: v for k, v in doc["train"].items() if v is not None},
                                  "run config")
    model_cfg = cfg.build_section(cfg.ModelConfig, doc.get("model", {}), "run config")
    if model_cfg.architecture != "audionet":
        raise AudioNetError(f"--folds trains fresh audionet students; run {run_dir} is a {model_cfg.architecture}: "
                            f"evaluate it on its held-out clips without --folds")
    description = catalog.read_description(data_dir)
    arrays = reader.load_arrays(data_dir, "all")
    clips = sorted(set(arrays["clip_id"]))
    if folds < 2:
        raise AudioNetError(f"--folds must be at least 2, got {folds}")
    by, masks = fold_masks(arrays, description, folds)
    scores = []
    progress = Progress(folds, "folds", log)
    for fold, (test, train_mask) in enumerate(masks):
        keras.utils.set_random_seed(train_cfg.seed + fold)
        student = build_audionet(None, arrays["logits"].shape[1], input_scale=model_cfg.input_scale)
        compile_student(student, train_cfg)
        student.fit(arrays["audio"][train_mask][..., None], arrays["logits"][train_mask],
                    batch_size=train_cfg.batch_size, epochs=epochs or train_cfg.epochs, verbose=0, shuffle=True)
        predicted = student.predict(arrays["audio"][test][..., None], verbose=0, batch_size=512)
        score = agreement(arrays["logits"][test], predicted)
        score["prior"] = agreement(arrays["logits"][test],
                                   prior_logits(arrays["logits"][train_mask], int(test.sum())))
        score["clips"] = sorted(set(arrays["clip_id"][test].tolist())) if by == "clips" else clips
        scores.append(score)
        progress.update(fold + 1, f"(over {by}): top-1 {score['top1_agreement']:.3f}, "
                                  f"prior {score['prior']['top1_agreement']:.3f}")
    progress.close()
    summary = {m: {"mean": float(np.mean([s[m] for s in scores])), "std": float(np.std([s[m] for s in scores]))}
               for m in ("kl", "top1_agreement", "top5_agreement")}
    summary["prior_top1_agreement"] = {"mean": float(np.mean([s["prior"]["top1_agreement"] for s in scores])),
                                       "std": float(np.std([s["prior"]["top1_agreement"] for s in scores]))}
    return {"folds": folds, "by": by, "epochs": epochs or train_cfg.epochs, "per_fold": scores, "summary": summary}


cross_validate_clips = cross_validate  # the earlier name


def _student_model(path: str):
    from audionet_tf.model.student import load_model

    if os.path.isdir(path):
        for candidate in (os.path.join(path, "model.keras"),):
            if os.path.isfile(candidate):
                return load_model(candidate)
        meta = os.path.join(path, "metadata.json")
        if os.path.isfile(meta):
            run = json.load(open(meta, encoding="utf-8")).get("run")
            # An export names its run (a path, or only its name: then look in ./runs/).
            for candidate in ([run, os.path.join("runs", os.path.basename(os.path.normpath(run)))] if run else []):
                if os.path.isfile(os.path.join(candidate, "model.keras")):
                    return load_model(os.path.join(candidate, "model.keras"))
        raise AudioNetError(f"{path}: no model.keras here or in the run its metadata.json names; "
                            f"give a run directory or a .keras file")
    if path.endswith(".keras") and os.path.isfile(path):
        return load_model(path)
    raise AudioNetError(f"{path}: expected a run directory, an export directory or a .keras file")


CLASSIFIERS = ("svm", "logistic")


def _student_rate(path: str) -> int:
    """The sample rate a student was trained at: its run's dataset, its export's metadata, else 16 kHz."""
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    for name, key in (("config.json", "dataset"), ("metadata.json", None)):
        doc_path = os.path.join(folder, name)
        if os.path.isfile(doc_path):
            with open(doc_path, encoding="utf-8") as handle:
                doc = json.load(handle)
            rate = (doc.get(key) or {}).get("sample_rate") if key else doc.get("sample_rate")
            if rate:
                return int(rate)
    return 16000


def repeat_to(wave: np.ndarray, samples: int) -> np.ndarray:
    """`wave` repeated end to end and cut to exactly `samples` (SoundNet's fixed-length clips)."""
    if not len(wave):
        raise AudioNetError("no audio to repeat")
    return np.tile(wave, -(-samples // len(wave)))[:samples]


def transfer(model_path: str, dataset: str, folds: int = 5, seed: int = 0, window: int | None = None,
             hop: int | None = None, *, layer: str | None = None, classifier: str = "svm", c: float = 0.01,
             seconds: float | None = None, audio_dir: str | None = None) -> dict[str, Any]:
    """SoundNet's transfer protocol: accuracy per fold (and mean ± std) of a linear classifier on the features
    of a named layer, for the student, the same network with random weights, and log-mel/MFCC statistics.

    Each clip is repeated to `seconds` (None: the longest clip, and at least one student window; 0: as it
    is), cut into windows of the student's length every `hop` samples (default: the window), and the
    layer's features (averaged over time within a window) are averaged over its windows. `classifier`:
    `svm` (standardisation + linear SVM with `c`, SoundNet's C = 0.01) or `logistic` (standardisation +
    logistic regression). `layer` None: audionet's 16 pooled features and 48 conv statistics, SoundNet's
    pool5 (SoundNet-8) or conv4 (SoundNet-5).
    """
    import keras
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    from audionet_tf.evaluation.features import layer_features, log_mel_features
    from audionet_tf.model import soundnet
    from audionet_tf.model.student import build_student, model_window
    from audionet_tf.preparation.media import read_audio

    if classifier not in CLASSIFIERS:
        raise AudioNetError(f"classifier must be one of {', '.join(CLASSIFIERS)}, got {classifier!r}")
    if not c > 0:
        raise AudioNetError(f"C must be positive, got {c}")
    files, labels, given_folds = read_sound_dataset(dataset, audio_dir)
    student = _student_model(model_path)
    architecture = soundnet.architecture_of(student)
    rate = _student_rate(model_path)
    window = window or model_window(student) or 640
    hop = hop or window
    keras.utils.set_random_seed(seed)
    scale = float(student.get_layer("input_scale").scale) if "input_scale" in [x.name for x in student.layers] else 1.0
    random_net = build_student(architecture, model_window(student), int(student.output.shape[-1]), input_scale=scale)
    try:
        for network in (student, random_net):
            layer_features(network, np.zeros(window, np.float32), window, hop, layer, "a check of --layer")
    except ValueError as exc:
        raise AudioNetError(str(exc)) from None
    waves, kept, kept_labels, kept_folds, skipped = [], [], [], [], {}
    for index, path in enumerate(files):
        try:
            waves.append(read_audio(path, rate))
        except AudioNetError as exc:
            skipped[path] = str(exc)
            log.warning("skipped %s", exc)
            continue
        kept.append(path)
        kept_labels.append(labels[index])
        if given_folds is not None:
            kept_folds.append(given_folds[index])
    if seconds is None:
        length = max([window] + [len(w) for w in waves])
    else:
        length = max(window, int(round(seconds * rate))) if seconds > 0 else 0
    feats: dict[str, list[np.ndarray]] = {"student": [], "random network": [], "log-mel/MFCC": []}
    for path, wave in zip(kept, waves):
        clip = repeat_to(wave, length) if length else wave
        feats["student"].append(layer_features(student, clip, window, hop, layer, path))
        feats["random network"].append(layer_features(random_net, clip, window, hop, layer, path))
        feats["log-mel/MFCC"].append(log_mel_features(clip if rate == 16000 else
                                                      (repeat_to(read_audio(path, 16000), int(length * 16000 / rate))
                                                       if length else read_audio(path, 16000))))
    classes = sorted(set(kept_labels))
    if len(classes) < 2:
        raise AudioNetError(f"{dataset}: {len(classes)} class(es) with readable files; a classifier needs two")
    y = np.array([classes.index(label) for label in kept_labels])
    if given_folds is not None:
        fold_ids = np.array(kept_folds)
        splits = [(np.where(fold_ids != f)[0], np.where(fold_ids == f)[0]) for f in sorted(set(kept_folds))]
        source = "the dataset's folds"
    else:
        counts = {c: int(np.sum(y == i)) for i, c in enumerate(classes)}
        thin = {c: n for c, n in counts.items() if n < folds}
        if thin:
            raise AudioNetError(f"{dataset}: class(es) {', '.join(f'{c} ({n} files)' for c, n in thin.items())} "
                                f"have fewer files than --folds {folds}: some fold would have no example of them")
        splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
        source = f"stratified {folds}-fold"
    for number, (train_idx, _) in enumerate(splits, start=1):
        if len(set(y[train_idx])) < 2:
            raise AudioNetError(f"{dataset}: fold {number}'s training part has examples of only one class")
    table = {}
    for name, rows in feats.items():
        x = np.stack(rows)
        accuracies = []
        for train_idx, test_idx in splits:
            model = LinearSVC(C=c, max_iter=20000, random_state=seed) if classifier == "svm" else \
                LogisticRegression(max_iter=3000, random_state=seed)
            clf = make_pipeline(StandardScaler(), model)
            clf.fit(x[train_idx], y[train_idx])
            accuracies.append(float(clf.score(x[test_idx], y[test_idx])))
        table[name] = {"mean": float(np.mean(accuracies)), "std": float(np.std(accuracies)),
                       "folds": accuracies, "dimensions": int(x.shape[1])}
    return {"model": model_path, "dataset": dataset, "files": len(kept), "classes": classes, "cv": source,
            "skipped": skipped, "accuracy": table, "chance": 1.0 / len(classes), "seed": seed,
            "protocol": {"architecture": architecture, "layer": layer or soundnet.DEFAULT_EMBEDDING.get(
                architecture, "pooled+conv"), "classifier": classifier, "C": c if classifier == "svm" else None,
                "clip_seconds": length / rate if length else None, "window_samples": window, "hop_samples": hop,
                "sample_rate": rate}}
