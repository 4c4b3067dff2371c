"""Labelled sound sets in ESC-50's layout: a CSV `filename,fold,target,category` and an audio folder.

ESC-50 (github.com/karolpiczak/ESC-50) ships `meta/esc50.csv` and `audio/`; any set in that layout
works (any sample rate, mono or stereo; ffmpeg decodes it). The audio folder is `audio/` beside the
CSV (or beside the CSV's `meta/` folder, as ESC-50 has it) unless another is given. `target` is the
class number and `category` its name: one name per number and one number per name. Rows are
numbered as a text editor shows them (the header is line 1).

`read_labelled` checks a set for training (`audionet finetune`): every problem is one message naming
the CSV line or the value, before anything is decoded or trained. `read_sound_dataset` is the looser
reader of `evaluate transfer` (also class folders, no targets).
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass

import numpy as np

from audionet_tf.core.errors import DatasetError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".mp4", ".webm")
COLUMNS = ("filename", "fold", "target", "category")


class LabelledDataError(DatasetError):
    """A labelled sound set that cannot be trained on: the message names the CSV line or the value."""


@dataclass(frozen=True)
class Clip:
    """One row of the CSV: the audio file, its fold, its class index (into `LabelledSet.class_names`) and line."""

    path: str
    fold: int
    label: int
    line: int


@dataclass(frozen=True)
class LabelledSet:
    """A checked labelled set: its clips, class names in target order and folds."""

    csv_path: str
    audio_dir: str
    clips: tuple[Clip, ...]
    class_names: tuple[str, ...]
    targets: tuple[int, ...]  # the CSV's target number of each class, in the same order

    @property
    def folds(self) -> list[int]:
        """The fold numbers present, in order."""
        return sorted({c.fold for c in self.clips})

    def split(self, holdout_fold: int | None) -> tuple[list[Clip], list[Clip]]:
        """Training clips and held-out clips (those of `holdout_fold`; none when it is None)."""
        train = [c for c in self.clips if c.fold != holdout_fold]
        return train, [c for c in self.clips if c.fold == holdout_fold]


def audio_folder(csv_path: str, audio_dir: str | None = None) -> str:
    """Where a CSV's audio is: `audio_dir`, else `audio/` beside the CSV's `meta/` folder (ESC-50), else beside it."""
    if audio_dir:
        return audio_dir
    folder = os.path.dirname(os.path.abspath(csv_path))
    if os.path.basename(folder) == "meta" and os.path.isdir(os.path.join(os.path.dirname(folder), "audio")):
        return os.path.join(os.path.dirname(folder), "audio")
    return os.path.join(folder, "audio")


def _rows(csv_path: str) -> list[tuple[int, dict[str, str]]]:
    """The CSV's rows with their line numbers, after checking the header."""
    if not os.path.isfile(csv_path):
        raise LabelledDataError(f"{csv_path}: no such file")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise LabelledDataError(f"{csv_path} line 1: the header needs the columns {','.join(COLUMNS)} "
                                        f"(missing: {', '.join(missing)})")
            rows = []
            for row in reader:
                rows.append((reader.line_num, row))
    except UnicodeDecodeError as exc:
        raise LabelledDataError(f"{csv_path}: not UTF-8 text ({exc.reason})") from None
    except csv.Error as exc:
        raise LabelledDataError(f"{csv_path}: not a readable CSV ({exc})") from None
    return rows


def _whole(text: str | None, column: str, where: str) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise LabelledDataError(f"{where}: {column} must be a whole number, got {text!r}") from None
    if value < 0:
        raise LabelledDataError(f"{where}: {column} must be 0 or more, got {value}")
    return value


def read_labelled(csv_path: str, audio_dir: str | None = None, holdout_fold: int | None = None) -> LabelledSet:
    """Read and check a labelled set: every file present, one name per target and one target per name, two
    classes at least, no fold without examples (fold numbers run without gaps), `holdout_fold` present and
    every class in the training folds. The first problem found is raised, naming its line or value."""
    audio = audio_folder(csv_path, audio_dir)
    if not os.path.isdir(audio):
        raise LabelledDataError(f"{csv_path}: its audio folder {audio} does not exist (give --audio-dir)")
    rows = _rows(csv_path)
    if not rows:
        raise LabelledDataError(f"{csv_path}: no rows after the header")
    name_of: dict[int, tuple[str, int]] = {}  # target → (category, line that set it)
    target_of: dict[str, tuple[int, int]] = {}
    parsed = []
    for line, row in rows:
        where = f"{csv_path} line {line}"
        if None in row or any(row.get(c) is None for c in COLUMNS):
            raise LabelledDataError(f"{where}: expected {len(row) - (None in row)} values "
                                    f"({','.join(COLUMNS)}), the row has a different number")
        filename, category = row["filename"].strip(), row["category"].strip()
        if not filename:
            raise LabelledDataError(f"{where}: filename is empty")
        if not category:
            raise LabelledDataError(f"{where}: category is empty")
        fold, target = _whole(row["fold"], "fold", where), _whole(row["target"], "target", where)
        if target in name_of and name_of[target][0] != category:
            raise LabelledDataError(f"{where}: target {target} is {category!r} here but {name_of[target][0]!r} "
                                    f"on line {name_of[target][1]} (one category per target)")
        if category in target_of and target_of[category][0] != target:
            raise LabelledDataError(f"{where}: category {category!r} has target {target} here but "
                                    f"{target_of[category][0]} on line {target_of[category][1]} (one target per "
                                    f"category)")
        name_of.setdefault(target, (category, line))
        target_of.setdefault(category, (target, line))
        path = os.path.join(audio, filename)
        if not os.path.isfile(path):
            raise LabelledDataError(f"{where}: audio file {path} does not exist")
        parsed.append((path, fold, target, line))
    targets = sorted(name_of)
    if len(targets) < 2:
        raise LabelledDataError(f"{csv_path}: every row is of one class ({name_of[targets[0]][0]!r}); "
                                f"a classifier needs two at least")
    folds = sorted({fold for _, fold, _, _ in parsed})
    gaps = sorted(set(range(folds[0], folds[-1] + 1)) - set(folds))
    if gaps:
        raise LabelledDataError(f"{csv_path}: fold {gaps[0]} has no examples (folds {folds[0]} to {folds[-1]} "
                                f"are numbered, {', '.join(map(str, folds))} have rows)")
    if holdout_fold is not None:
        if holdout_fold not in folds:
            raise LabelledDataError(f"--holdout-fold {holdout_fold}: no row of {csv_path} is in that fold "
                                    f"(folds: {', '.join(map(str, folds))})")
        trained = {target for _, fold, target, _ in parsed if fold != holdout_fold}
        untrained = [t for t in targets if t not in trained]
        if untrained:
            raise LabelledDataError(f"{csv_path}: class {name_of[untrained[0]][0]!r} (target {untrained[0]}) has "
                                    f"examples only in the held-out fold {holdout_fold}: nothing to learn it from")
        if len(trained) < 2:
            raise LabelledDataError(f"{csv_path}: the folds other than {holdout_fold} hold one class only")
    index = {t: i for i, t in enumerate(targets)}
    clips = tuple(Clip(path, fold, index[target], line) for path, fold, target, line in parsed)
    return LabelledSet(csv_path, audio, clips, tuple(name_of[t][0] for t in targets), tuple(targets))


def clip_windows(wave: np.ndarray, window: int, hop: int) -> np.ndarray:
    """A clip's windows `[M, window]` as predict frames a recording: a window longer than the hop (SoundNet's)
    is centred on each hop with zeros past the ends; a clip shorter than one window is padded with zeros."""
    if window > hop:
        left = (window - hop) // 2
        wave = np.pad(wave, (left, window - hop - left))
    if len(wave) < window:
        wave = np.pad(wave, (0, window - len(wave)))
    count = 1 + (len(wave) - window) // hop
    return np.stack([wave[k * hop:k * hop + window] for k in range(count)]).astype(np.float32)


def read_sound_dataset(root: str, audio_dir: str | None = None) -> tuple[list[str], list[str], list[int] | None]:
    """Files, their class names, and their folds (ESC-50's) or None (one folder per class).

    `root` is ESC-50's folder (`meta/esc50.csv`, `audio/`), a CSV in its layout (`filename,fold,target,category`;
    the audio in `audio_dir`, else `audio/` beside the CSV's `meta/` folder or beside the CSV), or class folders.
    """
    meta = os.path.join(root, "meta", "esc50.csv")
    audio = os.path.join(root, "audio")
    if os.path.isfile(root) and root.lower().endswith(".csv"):
        meta, folder = root, os.path.dirname(os.path.abspath(root))
        audio = os.path.join(os.path.dirname(folder), "audio") if os.path.basename(folder) == "meta" else \
            os.path.join(folder, "audio")
    audio = audio_dir or audio
    if os.path.isfile(meta):
        files, labels, folds = [], [], []
        with open(meta, newline="", encoding="utf-8") as handle:
            for number, row in enumerate(csv.DictReader(handle), start=2):
                try:
                    files.append(os.path.join(audio, row["filename"]))
                    labels.append(row["category"])
                    folds.append(int(row["fold"]))
                except (KeyError, TypeError, ValueError):
                    raise DatasetError(f"{meta} row {number}: needs filename, fold (a number) and category") \
                        from None
        if not files:
            raise DatasetError(f"{meta}: no rows")
        return files, labels, folds
    if not os.path.isdir(root):
        raise DatasetError(f"sound dataset {root} does not exist")
    files, labels = [], []
    for label in sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))):
        for name in sorted(os.listdir(os.path.join(root, label))):
            if name.lower().endswith(AUDIO_SUFFIXES):
                files.append(os.path.join(root, label, name))
                labels.append(label)
    if not files:
        raise DatasetError(f"{root}: no meta/esc50.csv and no class folders with audio files")
    return files, labels, None
