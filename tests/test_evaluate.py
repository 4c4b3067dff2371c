"""Evaluation and report on data the tests make: a distillation dataset, tiny ESC-50-shaped sound sets."""
import csv
import html
import os
import re
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

from audionet_tf.commands import evaluate as evaluate_cmd, report as report_cmd, train
from audionet_tf.core import config as cfg
from audionet_tf.core.errors import AudioNetError
from audionet_tf.dataset import reader
from audionet_tf.dataset.synthetic import write_synthetic_dataset
from audionet_tf.evaluation import evaluate, report
from audionet_tf.model.student import load_model


def write_wav(path, samples, rate=16000, channels=1):
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(channels)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(np.repeat(pcm[:, None], channels, axis=1).tobytes())


def sound(kind, index, rate=16000, seconds=1.0):
    rng = np.random.default_rng(index)
    t = np.arange(int(seconds * rate)) / rate
    if kind == "tone":
        return 0.5 * np.sin(2 * np.pi * (400 + 40 * index) * t)
    if kind == "noise":
        return 0.3 * rng.standard_normal(len(t))
    return 0.5 * np.sin(2 * np.pi * (300 + 2500 * t) * t)  # chirp


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work = tmp_path_factory.mktemp("eval")
    write_synthetic_dataset(str(work / "data"), clips=6, seconds=2.0, num_classes=8, kinds=2, holdout=2)
    config = cfg.PipelineConfig(train=cfg.TrainConfig(
        data=str(work / "data"), epochs=15, batch_size=64, learning_rate=3e-3, name="ev", runs_dir=str(work / "runs"),
        export=False, report=True, quiet=True))
    return work, Path(train.train(config))


@pytest.fixture(scope="module")
def esc50(tmp_path_factory):
    """3 classes x 8 files in ESC-50's layout, some at 44.1 kHz stereo, one unreadable."""
    root = tmp_path_factory.mktemp("esc") / "ESC-50"
    (root / "audio").mkdir(parents=True)
    (root / "meta").mkdir()
    rows = []
    for target, kind in enumerate(("tone", "noise", "chirp")):
        for i in range(8):
            name = f"{i % 4 + 1}-{kind}-{i}.wav"
            rate = 44100 if i % 3 == 0 else 16000
            write_wav(root / "audio" / name, sound(kind, i, rate), rate, channels=2 if i % 3 == 0 else 1)
            rows.append({"filename": name, "fold": i % 4 + 1, "target": target, "category": kind})
    (root / "audio" / "broken.wav").write_bytes(b"RIFF....not audio")
    rows.append({"filename": "broken.wav", "fold": 1, "target": 0, "category": "tone"})
    with open(root / "meta" / "esc50.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["filename", "fold", "target", "category"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_distill_scores_only_held_out_clips_against_a_prior_baseline(run):
    work, run_dir = run
    result = evaluate.distill(str(run_dir), str(work / "data"))
    assert sorted(result["per_clip"]) == ["synthetic_0004", "synthetic_0005"] == result["held_out_clips"]
    held = reader.load_arrays(str(work / "data"), "validation")
    train_logits = reader.load_arrays(str(work / "data"), "train")["logits"]
    # The prior always answers the teacher's most probable class on average over training windows.
    mean_prob = np.exp(train_logits - train_logits.max(1, keepdims=True))
    mean_prob = (mean_prob / mean_prob.sum(1, keepdims=True)).mean(0)
    expected = float(np.mean(held["logits"].argmax(1) == mean_prob.argmax()))
    assert result["prior"]["top1_agreement"] == pytest.approx(expected)
    assert result["student"]["top1_agreement"] > result["prior"]["top1_agreement"]
    assert (run_dir / "report" / "distill.json").is_file()


def test_distill_folds_train_without_each_fold(run, tmp_path):
    work, run_dir = run
    result = evaluate.distill(str(run_dir), str(work / "data"), folds=3, epochs=2)
    per_fold = result["folds"]["per_fold"]
    assert len(per_fold) == 3
    assert sorted(c for f in per_fold for c in f["clips"]) == [f"synthetic_{i:04d}" for i in range(6)]
    assert 0 <= result["folds"]["summary"]["top1_agreement"]["mean"] <= 1
    # Each clip its own tone and its own teacher class: a student that never saw its fold's clips never saw
    # their classes either, so it cannot follow the teacher there (the teacher gives that class about e^8 times
    # another's weight): KL far above that of a student that trained on those clips (under 1 after 3 epochs).
    own = tmp_path / "own"
    write_synthetic_dataset(str(own), clips=6, seconds=2.0, num_classes=8, kinds=6)
    folds = evaluate.cross_validate(str(run_dir), str(own), 3, 3)["per_fold"]
    assert [f["clips"] for f in folds] == [["synthetic_0000", "synthetic_0003"], ["synthetic_0001", "synthetic_0004"],
                                           ["synthetic_0002", "synthetic_0005"]]
    assert all(f["kl"] > 5 for f in folds), [f["kl"] for f in folds]
    assert np.mean([f["top1_agreement"] for f in folds]) < 0.5


def fold_accuracies(network, esc50, seed: int) -> tuple[list[float], dict[str, np.ndarray]]:
    """Linear-classifier accuracy on each ESC-50 fold of features computed here: per file, the 16 pooled
    features and the mean, std and max over time of the 16 max-pooled conv maps, averaged over 640-sample windows."""
    import keras
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from audionet_tf.preparation.media import read_audio

    maps_of = keras.Model(network.inputs, network.get_layer("maxpool").output)
    rows = [r for r in csv.DictReader(open(esc50 / "meta" / "esc50.csv")) if r["filename"] != "broken.wav"]
    features, labels, folds = [], [], []
    for row in rows:
        wave = read_audio(str(esc50 / "audio" / row["filename"]), 16000)
        windows = wave[: len(wave) // 640 * 640].reshape(-1, 640)
        maps = maps_of.predict(windows[..., None], verbose=0).astype(np.float64)
        stats = np.concatenate([maps.mean(axis=1), maps.std(axis=1), maps.max(axis=1)], axis=1)
        features.append(np.concatenate([maps.mean(axis=1).mean(axis=0), stats.mean(axis=0)]))
        labels.append(int(row["target"]))
        folds.append(int(row["fold"]))
    x, y, folds = np.stack(features), np.array(labels), np.array(folds)
    accuracies = []
    for fold in sorted(set(folds)):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, random_state=seed))
        clf.fit(x[folds != fold], y[folds != fold])
        accuracies.append(float(clf.score(x[folds == fold], y[folds == fold])))
    return accuracies, {row["filename"]: vector for row, vector in zip(rows, features)}


def test_transfer_table_is_repeatable_and_lists_unreadable_files(run, esc50):
    _, run_dir = run
    # The protocol these figures are recomputed with below: logistic regression on the clips as they are.
    first = evaluate.transfer(str(run_dir), str(esc50), seed=3, classifier="logistic", seconds=0)
    second = evaluate.transfer(str(run_dir), str(esc50), seed=3, classifier="logistic", seconds=0)
    assert first["accuracy"] == second["accuracy"]
    assert set(first["accuracy"]) == {"student", "random network", "log-mel/MFCC"}
    assert first["files"] == 24 and list(first["skipped"]) == [str(esc50 / "audio" / "broken.wav")]
    assert first["cv"] == "the dataset's folds" and len(first["accuracy"]["student"]["folds"]) == 4
    assert first["accuracy"]["log-mel/MFCC"]["mean"] > 0.8  # tones, noise and chirps are easy for log-mel
    # Every row: 64 student-shaped features for both networks, fold accuracies that are whole counts of the
    # fold's files, their mean; and the random network is a different network from the trained student.
    sizes = [6, 6, 6, 6]  # 24 readable files over ESC-50's folds 1-4
    for name in ("student", "random network"):
        row = first["accuracy"][name]
        assert row["dimensions"] == 64
        assert all(abs(a * n - round(a * n)) < 1e-9 for a, n in zip(row["folds"], sizes))
        assert row["mean"] == pytest.approx(np.mean(row["folds"]))
    # The student's and the random network's rows, recomputed here from the networks' pooled maps and the
    # README's definition of the features, with the same classifier on ESC-50's folds.
    import keras

    from audionet_tf.model.student import build_audionet

    trained = load_model(str(run_dir / "model.keras"))
    keras.utils.set_random_seed(3)
    random_net = build_audionet(None, int(trained.output.shape[-1]),
                                input_scale=float(trained.get_layer("input_scale").scale))
    from audionet_tf.evaluation.features import student_features
    from audionet_tf.preparation.media import read_audio

    for name, network in (("student", trained), ("random network", random_net)):
        accuracies, features = fold_accuracies(network, esc50, seed=3)
        assert first["accuracy"][name]["folds"] == pytest.approx(accuracies, abs=1e-12)
        for filename in ("1-tone-0.wav", "2-noise-1.wav", "3-chirp-6.wav"):
            wave = read_audio(str(esc50 / "audio" / filename), 16000)
            np.testing.assert_allclose(student_features(network, wave, 640, 640, filename), features[filename],
                                       rtol=1e-4, atol=1e-5 * np.abs(features[filename]).max(), err_msg=filename)


def test_transfer_on_class_folders_and_its_refusals(run, tmp_path, capsys):
    _, run_dir = run
    for kind in ("tone", "noise"):
        (tmp_path / "sets" / kind).mkdir(parents=True)
        for i in range(5):
            write_wav(tmp_path / "sets" / kind / f"{i}.wav", sound(kind, i))
    result = evaluate.transfer(str(run_dir), str(tmp_path / "sets"), folds=5)
    assert result["cv"] == "stratified 5-fold" and result["files"] == 10
    with pytest.raises(AudioNetError, match="fewer files than --folds 6"):
        evaluate.transfer(str(run_dir), str(tmp_path / "sets"), folds=6)
    (tmp_path / "one" / "tone").mkdir(parents=True)
    write_wav(tmp_path / "one" / "tone" / "a.wav", sound("tone", 0))
    assert evaluate_cmd.main(["transfer", "--model", str(run_dir), "--dataset", str(tmp_path / "one")]) == 2
    assert "a classifier needs two" in capsys.readouterr().err


def table_rows(page: str, title: str) -> dict[str, dict[str, str]]:
    """The rows of the page's table under the heading starting with `title`: first cell → {column: cell}."""
    table = page[page.index(f"<h2>{title}"):]
    table = table[:table.index("</table>")]
    header = re.findall(r"<th>(.*?)</th>", table)
    cells = [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(<td>.*?)</tr>", table)]
    return {row[0]: dict(zip(header, row)) for row in cells}


def test_report_page_shows_valid_pngs_per_clip_and_fold_tables_and_no_machine_paths(run, tmp_path):
    work, trained = run
    # A copy of the run: this test depends on no file another test writes into it.
    run_dir = tmp_path / "copy" / "ev"
    shutil.copytree(trained, run_dir)
    shutil.rmtree(run_dir / "report", ignore_errors=True)
    index = Path(report.make_report(str(run_dir), str(work / "data")))
    page = index.read_text()
    images = [part.split("'")[0] for part in page.split("<img src='")[1:]]
    assert "curves.png" in images and "filters.png" in images
    assert images.index("timeline-synthetic_0004.png") < images.index("timeline-synthetic_0000.png")
    for name in images:
        assert (run_dir / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The per-clip table: each held-out clip's row holds its agreement and its prior's, computed here independently.
    model = load_model(str(run_dir / "model.keras"))
    held = reader.load_arrays(str(work / "data"), "validation")
    train_logits = reader.load_arrays(str(work / "data"), "train")["logits"]
    train_probs = np.exp(train_logits - train_logits.max(1, keepdims=True))
    prior_class = (train_probs / train_probs.sum(1, keepdims=True)).mean(0).argmax()
    rows = table_rows(page, "Per clip")
    assert sorted(rows) == ["synthetic_0004", "synthetic_0005"]
    for clip_id in ("synthetic_0004", "synthetic_0005"):
        mine = held["clip_id"] == clip_id
        teacher_top = held["logits"][mine].argmax(1)
        agree = np.mean(model.predict(held["audio"][mine][..., None], verbose=0).argmax(1) == teacher_top)
        assert rows[clip_id]["top-1 agreement"] == f"{agree:.1%}"
        assert rows[clip_id]["prior baseline"] == f"{np.mean(teacher_top == prior_class):.1%}"
        assert rows[clip_id]["windows"] == str(int(mine.sum()))
    assert "Per clip" in page and "folds over" not in page
    # With a K-fold result written by evaluate, the fold table appears too.
    evaluate.distill(str(run_dir), str(work / "data"), folds=2, epochs=1)
    page = Path(report.make_report(str(run_dir), str(work / "data"))).read_text()
    assert "2 folds over clips" in page and page.count("<td>1</td>") >= 1 and "<td>2</td>" in page
    # Names, never the paths of the machine that made the run and the report.
    for written in (run_dir / "report").iterdir():
        if written.suffix in (".html", ".json"):
            text = written.read_text()
            for path in (str(tmp_path), str(work), os.path.abspath(str(work / "data"))):
                assert path not in text, (written.name, path)


def test_report_clips_draws_that_many_timelines_held_out_clips_first(run, tmp_path, capsys):
    work, trained = run
    run_dir = tmp_path / "copy" / "ev"
    shutil.copytree(trained, run_dir)
    assert report_cmd.main([str(run_dir), "--data", str(work / "data"), "--clips", "3"]) == 0
    index = capsys.readouterr().out.strip().splitlines()[-1]
    assert index == str(run_dir / "report" / "index.html")
    page = Path(index).read_text()
    timelines = [part.split("'")[0] for part in page.split("<img src='")[1:] if part.startswith("timeline-")]
    assert timelines == ["timeline-synthetic_0004.png", "timeline-synthetic_0005.png", "timeline-synthetic_0000.png"]



def half_misheard_dataset(path):
    """Two training tones, each its own teacher class; the held-out clip plays the first tone for 13 windows and the
    second for 12 while the teacher sees the second class throughout: the student follows the sound, so it
    agrees with the teacher on about half of that clip and its top classes there are not the teacher's."""
    from audionet_tf.dataset.records import DatasetSpec
    from audionet_tf.dataset.writer import DatasetWriter

    spec = DatasetSpec(sample_rate=16000, window_samples=640, frame_period_ms=40.0, num_classes=3, teacher="test")
    writer = DatasetWriter(str(path), spec, shard_size=50)
    rng = np.random.default_rng(0)
    starts = np.arange(25) * 640
    t = np.arange(25 * 640) / 16000
    clips = []
    for c, (tones, cls, split) in enumerate([((300, 300), 0, "train"), ((300, 300), 0, "train"),
                                              ((1400, 1400), 1, "train"), ((1400, 1400), 1, "train"),
                                              ((300, 1400), 1, "validation")]):
        hz = np.where(t < 13 * 0.04, tones[0], tones[1])
        audio = (0.5 * np.sin(2 * np.pi * hz * t) + 0.02 * rng.standard_normal(t.shape)).astype(np.float32)
        logits = rng.normal(size=(25, 3)).astype(np.float32)
        logits[:, cls] += 8.0
        writer.add(split, np.stack([audio[s:s + 640] for s in starts]), logits, f"clip{c}", starts / 16000)
        clips.append({"id": f"clip{c}", "url": None, "start": 0.0, "duration": 1.0, "label": "", "split": split,
                      "status": "ok", "error": None, "examples": 25, "key": f"clip{c}"})
    writer.finish(clips=clips, class_names=["low tone", "high tone", "unused"])


def shares(top: np.ndarray, names) -> dict[str, str]:
    """Each class's share of these windows' top classes, as the report prints it ("52%")."""
    classes, counts = np.unique(top, return_counts=True)
    return {names[c]: f"{n / len(top):.0%}" for c, n in zip(classes, counts)}


def test_report_per_clip_table_shows_the_students_own_top_classes_and_the_teachers(tmp_path):
    data = tmp_path / "data"
    half_misheard_dataset(data)
    config = cfg.PipelineConfig(train=cfg.TrainConfig(
        data=str(data), epochs=25, batch_size=32, learning_rate=0.01, name="half", runs_dir=str(tmp_path / "runs"),
        export=False, report=False, quiet=True))
    run_dir = train.train(config)
    page = Path(report.make_report(run_dir, str(data))).read_text()
    row = {html.unescape(k): html.unescape(v) for k, v in table_rows(page, "Per clip")["clip4"].items()}
    held = reader.load_arrays(str(data), "validation")
    student_top = load_model(str(Path(run_dir) / "model.keras")).predict(held["audio"][..., None], verbose=0).argmax(1)
    teacher_top = held["logits"].argmax(1)
    names = ["low tone", "high tone", "unused"]
    # The case the cells tell apart: the student disagrees with the teacher on part of the clip.
    assert 0 < np.mean(student_top == teacher_top) < 1, student_top
    assert len(set(student_top.tolist())) == 2
    for column, top in (("student's top classes", student_top), ("teacher's top classes", teacher_top)):
        cell = dict(part.rsplit(" ", 1) for part in row[column].split(", "))
        assert cell == shares(top, names), (column, row[column])
    assert row["top-1 agreement"] == f"{np.mean(student_top == teacher_top):.1%}"
