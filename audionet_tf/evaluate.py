"""Does the student hear what the teacher sees, and do its features transfer?

    python -m audionet_tf.evaluate distill --run runs/NAME --data DIR [--folds K --epochs E]
    python -m audionet_tf.evaluate transfer --model runs/NAME --dataset ESC-50-master [--folds 5]

`distill` compares the student with the teacher on the held-out clips only (whole clips the
student never trained on, as the dataset description records): KL, top-1 and top-5
agreement per clip and overall, next to a prior baseline that always predicts the
teacher's mean distribution over the training clips. `--folds K` also trains K fresh
students, each without one fold of clips, and scores each on its fold (K = number of clips
is leave-one-clip-out).

`transfer` classifies a labelled sound dataset with a linear classifier (standardisation +
logistic regression) on file-level features, cross-validated on the dataset's own folds
(ESC-50's `meta/esc50.csv`) or stratified k-fold (one folder per class), for: the trained
student, the same network with random weights, and log-mel/MFCC statistics.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
from typing import Any, Sequence

import numpy as np

from audionet_tf import console, data, records
from audionet_tf.errors import AudioNetError
from audionet_tf.inference import softmax

log = logging.getLogger("audionet_tf.evaluate")

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".mp4", ".webm")


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


def distill(run_dir: str, data_dir: str, folds: int = 0, epochs: int | None = None) -> dict[str, Any]:
    """Student vs teacher on the held-out clips (and optional K-fold over clips); writes report/distill.json."""
    from audionet_tf.model import load_model

    description = records.read_description(data_dir)
    held_out = [c["id"] for c in description.clips if c.get("split") == "validation" and c.get("status") == "ok"]
    if not held_out:
        raise AudioNetError(f"dataset {data_dir} holds no clips out; prepare it with --holdout to evaluate "
                            f"on unseen clips")
    model_path = os.path.join(run_dir, "model.keras")
    if not os.path.isfile(model_path):
        raise AudioNetError(f"{run_dir} holds no model.keras: not a finished training run")
    model = load_model(model_path)
    val = data.load_arrays(data_dir, "validation")
    train_arrays = data.load_arrays(data_dir, "train")
    student = model.predict(val["audio"][..., None], verbose=0, batch_size=512)
    prior = prior_logits(train_arrays["logits"], len(val["audio"]))
    result: dict[str, Any] = {
        "run": run_dir, "data": data_dir, "held_out_clips": sorted(held_out),
        "student": agreement(val["logits"], student), "prior": agreement(val["logits"], prior),
        "per_clip": {cid: {"student": s, "prior": agreement(val["logits"][val["clip_id"] == cid],
                                                           prior[val["clip_id"] == cid])}
                     for cid, s in per_clip(val, student).items()},
    }
    if folds:
        result["folds"] = cross_validate_clips(run_dir, data_dir, folds, epochs)
    out = os.path.join(run_dir, "report", "distill.json")
    records.atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    return result


def cross_validate_clips(run_dir: str, data_dir: str, folds: int, epochs: int | None) -> dict[str, Any]:
    """Train a fresh student without each fold of clips (the run's settings) and score it on that fold."""
    import keras

    from audionet_tf import config as cfg
    from audionet_tf.model import build_audionet
    from audionet_tf.train import compile_student

    with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as handle:
        doc = json.load(handle)
    train_cfg = cfg.build_section(cfg.TrainConfig, {k: v for k, v in doc["train"].items() if v is not None},
                                  "run config")
    model_cfg = cfg.build_section(cfg.ModelConfig, doc.get("model", {}), "run config")
    arrays = data.load_arrays(data_dir, "all")
    clips = sorted(set(arrays["clip_id"]))
    if not 2 <= folds <= len(clips):
        raise AudioNetError(f"--folds must be between 2 and the number of clips ({len(clips)}), got {folds}")
    scores = []
    for fold in range(folds):
        test_ids = clips[fold::folds]
        test = np.isin(arrays["clip_id"], test_ids)
        keras.utils.set_random_seed(train_cfg.seed + fold)
        student = build_audionet(None, arrays["logits"].shape[1], input_scale=model_cfg.input_scale)
        compile_student(student, train_cfg)
        student.fit(arrays["audio"][~test][..., None], arrays["logits"][~test], batch_size=train_cfg.batch_size,
                    epochs=epochs or train_cfg.epochs, verbose=0, shuffle=True)
        predicted = student.predict(arrays["audio"][test][..., None], verbose=0, batch_size=512)
        score = agreement(arrays["logits"][test], predicted)
        score["prior"] = agreement(arrays["logits"][test], prior_logits(arrays["logits"][~test], int(test.sum())))
        score["clips"] = list(test_ids)
        scores.append(score)
        log.info("fold %d/%d (%s): top-1 %.3f", fold + 1, folds, ", ".join(test_ids), score["top1_agreement"])
    summary = {m: {"mean": float(np.mean([s[m] for s in scores])), "std": float(np.std([s[m] for s in scores]))}
               for m in ("kl", "top1_agreement", "top5_agreement")}
    return {"folds": folds, "epochs": epochs or train_cfg.epochs, "per_fold": scores, "summary": summary}


def read_sound_dataset(root: str) -> tuple[list[str], list[str], list[int] | None]:
    """Files, their class names, and their folds (ESC-50's) or None (one folder per class)."""
    meta = os.path.join(root, "meta", "esc50.csv")
    if os.path.isfile(meta):
        files, labels, folds = [], [], []
        with open(meta, newline="", encoding="utf-8") as handle:
            for number, row in enumerate(csv.DictReader(handle), start=2):
                try:
                    files.append(os.path.join(root, "audio", row["filename"]))
                    labels.append(row["category"])
                    folds.append(int(row["fold"]))
                except (KeyError, ValueError):
                    raise AudioNetError(f"{meta} row {number}: needs filename, fold (a number) and category") \
                        from None
        return files, labels, folds
    if not os.path.isdir(root):
        raise AudioNetError(f"sound dataset {root} does not exist")
    files, labels = [], []
    for label in sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))):
        for name in sorted(os.listdir(os.path.join(root, label))):
            if name.lower().endswith(AUDIO_SUFFIXES):
                files.append(os.path.join(root, label, name))
                labels.append(label)
    if not files:
        raise AudioNetError(f"{root}: no meta/esc50.csv and no class folders with audio files")
    return files, labels, None


def _student_model(path: str):
    from audionet_tf.model import load_model

    if os.path.isdir(path):
        for candidate in (os.path.join(path, "model.keras"),):
            if os.path.isfile(candidate):
                return load_model(candidate)
        meta = os.path.join(path, "metadata.json")
        if os.path.isfile(meta):
            run = json.load(open(meta, encoding="utf-8")).get("run")
            if run and os.path.isfile(os.path.join(run, "model.keras")):
                return load_model(os.path.join(run, "model.keras"))
        raise AudioNetError(f"{path}: no model.keras here or in the run its metadata.json names; "
                            f"give a run directory or a .keras file")
    if path.endswith(".keras") and os.path.isfile(path):
        return load_model(path)
    raise AudioNetError(f"{path}: expected a run directory, an export directory or a .keras file")


def transfer(model_path: str, dataset: str, folds: int = 5, seed: int = 0, window: int = 640,
             hop: int = 640) -> dict[str, Any]:
    """Linear-classifier accuracy (mean ± std over folds) of student, random-network and log-mel features."""
    import keras
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from audionet_tf.features import log_mel_features, student_features
    from audionet_tf.media import read_audio
    from audionet_tf.model import build_audionet

    files, labels, given_folds = read_sound_dataset(dataset)
    student = _student_model(model_path)
    keras.utils.set_random_seed(seed)
    random_net = build_audionet(None, int(student.output.shape[-1]),
                                input_scale=float(getattr(student.get_layer("input_scale"), "scale", 1.0))
                                if "input_scale" in [layer.name for layer in student.layers] else 1.0)
    feats: dict[str, list[np.ndarray]] = {"student": [], "random network": [], "log-mel/MFCC": []}
    kept, kept_labels, kept_folds, skipped = [], [], [], {}
    for index, path in enumerate(files):
        try:
            wave = read_audio(path, 16000)
            student_vec = student_features(student, wave, window, hop, path)
        except AudioNetError as exc:
            skipped[path] = str(exc)
            log.warning("skipped %s", exc)
            continue
        feats["student"].append(student_vec)
        feats["random network"].append(student_features(random_net, wave, window, hop, path))
        feats["log-mel/MFCC"].append(log_mel_features(wave))
        kept.append(path)
        kept_labels.append(labels[index])
        if given_folds is not None:
            kept_folds.append(given_folds[index])
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
            clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, random_state=seed))
            clf.fit(x[train_idx], y[train_idx])
            accuracies.append(float(clf.score(x[test_idx], y[test_idx])))
        table[name] = {"mean": float(np.mean(accuracies)), "std": float(np.std(accuracies)),
                       "folds": accuracies, "dimensions": int(x.shape[1])}
    return {"model": model_path, "dataset": dataset, "files": len(kept), "classes": classes, "cv": source,
            "skipped": skipped, "accuracy": table, "chance": 1.0 / len(classes), "seed": seed}


def print_table(title: str, rows: dict[str, dict[str, float]], columns: Sequence[str]) -> None:
    """A small text table."""
    print(title)
    print(f"  {'':22s}" + "".join(f"{c:>16s}" for c in columns))
    for name, values in rows.items():
        print(f"  {name:22s}" + "".join(f"{values[c]:16.4f}" for c in columns))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The evaluate command's flags."""
    p = argparse.ArgumentParser(prog="python -m audionet_tf.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("distill", help="student vs teacher on held-out clips")
    d.add_argument("--run", required=True)
    d.add_argument("--data", help="dataset directory (default: the run's)")
    d.add_argument("--folds", type=int, default=0, help="also train K students, each without one fold of clips")
    d.add_argument("--epochs", type=int, help="epochs for each fold's student (default: the run's)")
    t = sub.add_parser("transfer", help="linear classifier on student features vs baselines")
    t.add_argument("--model", required=True, help="run directory, export directory or .keras")
    t.add_argument("--dataset", required=True, help="ESC-50 layout, or one folder per class")
    t.add_argument("--folds", type=int, default=5)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", help="JSON output (default: <model>/report/transfer.json for a run directory)")
    p.add_argument("--verbose", action="store_true", help="show TensorFlow's own C++ log lines")
    p.add_argument("--quiet", action="store_true", help="log lines instead of a progress bar")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    args = parse_args(argv)
    console.setup(args.verbose, getattr(args, "quiet", False))
    try:
        if args.command == "distill":
            data_dir = args.data
            if data_dir is None:
                with open(os.path.join(args.run, "config.json"), encoding="utf-8") as handle:
                    data_dir = json.load(handle)["dataset"]["data_dir"]
            result = distill(args.run, data_dir, args.folds, args.epochs)
            print_table(f"held-out clips of {data_dir} ({len(result['held_out_clips'])} clips)",
                        {"student": result["student"], "prior baseline": result["prior"]},
                        ("kl", "top1_agreement", "top5_agreement"))
            print_table("per clip (student)", {k: v["student"] for k, v in result["per_clip"].items()},
                        ("kl", "top1_agreement", "top5_agreement"))
            if "folds" in result:
                summary = result["folds"]["summary"]
                print(f"{result['folds']['folds']} folds over clips: top-1 agreement "
                      f"{summary['top1_agreement']['mean']:.3f} ± {summary['top1_agreement']['std']:.3f}")
        else:
            if args.folds < 2:
                raise AudioNetError(f"--folds must be at least 2, got {args.folds}")
            result = transfer(args.model, args.dataset, args.folds, args.seed)
            out = args.out or (os.path.join(args.model, "report", "transfer.json") if os.path.isdir(args.model)
                               else os.path.splitext(args.model)[0] + "-transfer.json")
            records.atomic_write_text(out, json.dumps(result, indent=2) + "\n")
            print_table(f"{result['dataset']}: {result['files']} files, {len(result['classes'])} classes, "
                        f"{result['cv']} (chance {result['chance']:.3f})", result["accuracy"], ("mean", "std"))
            for path, why in result["skipped"].items():
                print(f"  skipped {path}: {why}")
            print(f"written to {out}")
    except AudioNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from audionet_tf.console import run_command

    raise SystemExit(run_command(main))
