"""`audionet finetune`: a classifier of a user's own labelled sounds on a trained student, exported like one.

A student is distilled by the train command's own code (a few epochs on the synthetic set); the labelled set
is made of real instrument recordings grouped by family, written as an ESC-50 CSV with three folds; the
classifier is trained with fold 3 held out, exported, and used by plain TensorFlow, LiteRT and `predict`.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audionet_tf.commands import finetune as finetune_cmd, train
from audionet_tf.core import config as cfg
from audionet_tf.dataset.synthetic import write_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "real" / "instruments"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
# Three families of real instruments, two recordings of each in every fold (fold = position % 3 + 1).
FAMILIES = {"percussion": ["bongo", "drum_kit", "snare_drum", "timpani", "tambourine", "castanets"],
            "strings": ["violin", "cello", "guitar", "harp", "banjo", "electric_guitar"],
            "winds": ["trumpet", "trombone", "tuba", "horn", "saxophone", "clarinet"]}
CLASSES = sorted(FAMILIES)
EPOCHS, UNFREEZE = 20, 3


def instruments() -> Path:
    """The real recordings' folder, or a skip naming what is missing."""
    missing = [n for names in FAMILIES.values() for n in names if not (REAL / f"{n}.ogg").is_file()]
    if missing:
        pytest.skip(f"real recordings absent ({REAL / missing[0]}.ogg, ...): they come with the team's shared/real "
                    f"folder")
    return REAL


def write_set(folder: Path, rows: list[tuple[str, int, int, str]], source: Path | None = None) -> Path:
    """An ESC-50-layout set: `folder/labels.csv` and `folder/audio/` (each row's file copied from `source`)."""
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    lines = ["filename,fold,target,category"]
    for filename, fold, target, category in rows:
        if source is not None and (source / filename).is_file():
            shutil.copy(source / filename, folder / "audio" / filename)
        lines.append(f"{filename},{fold},{target},{category}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder / "labels.csv"


def family_rows() -> list[tuple[str, int, int, str]]:
    return [(f"{name}.ogg", i % 3 + 1, target, family) for target, family in enumerate(CLASSES)
            for i, name in enumerate(FAMILIES[family])]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A distilled student, fine-tuned to the three families with fold 3 held out, and exported."""
    source = instruments()
    work = tmp_path_factory.mktemp("finetune")
    write_synthetic_dataset(str(work / "data"), clips=4, seconds=2.0, num_classes=8, kinds=2, holdout=1)
    run = train.train(cfg.PipelineConfig(train=cfg.TrainConfig(
        data=str(work / "data"), epochs=2, batch_size=64, learning_rate=3e-3, name="tones",
        runs_dir=str(work / "runs"), export=False, report=False, quiet=True)))
    labels = write_set(work / "set", family_rows(), source)
    code = finetune_cmd.main(["--from", run, "--data", str(labels), "--holdout-fold", "3", "--epochs", str(EPOCHS),
                              "--unfreeze-epochs", str(UNFREEZE), "--runs-dir", str(work / "runs"),
                              "--export-dir", str(work / "saved_models"),
                              "--no-onnx", "--quiet"])
    assert code == 0
    tuned_run = work / "runs" / "tones-labels"
    return {"work": work, "student": Path(run), "run": tuned_run, "export": work / "saved_models" / "tones-labels",
            "labels": labels, "source": source}


@pytest.mark.slow
def test_held_out_clips_are_classified_better_than_the_class_prior(tuned):
    metrics = json.loads((tuned["run"] / "metrics.json").read_text())
    held = metrics["validation"]
    assert held["clips"] == 6 and held["prior_clip_accuracy"] == pytest.approx(1 / 3)
    assert held["clip_accuracy"] > held["prior_clip_accuracy"], held
    assert held["window_accuracy"] > 1 / 3, held
    # Every epoch of both phases reports the held-out figures.
    history = (tuned["run"] / "history.csv").read_text().splitlines()
    header = history[0].split(",")
    assert "heldout_clip_accuracy" in header and len(history) == 1 + EPOCHS + UNFREEZE
    assert (tuned["run"] / "labels.txt").read_text().split() == CLASSES
    doc = json.loads((tuned["run"] / "config.json").read_text())
    assert doc["classifier"]["layer"] == "pooled" and doc["finetune"]["holdout_fold"] == 3


@pytest.mark.slow
def test_the_student_is_frozen_first_then_trained_at_the_lower_rate(tuned):
    from audionet_tf.model.classifier import build_classifier
    from audionet_tf.model.student import load_model

    student = load_model(str(tuned["student"] / "model.keras"))
    distilled = student.get_layer("conv").get_weights()[0]
    frozen = build_classifier(load_model(str(tuned["student"] / "model.keras")), len(CLASSES))
    frozen.load_weights(str(tuned["run"] / "checkpoints" / "frozen.weights.h5"))
    np.testing.assert_array_equal(frozen.get_layer("conv").get_weights()[0], distilled)
    final = load_model(str(tuned["run"] / "model.keras"))
    assert not np.allclose(final.get_layer("conv").get_weights()[0], distilled)
    assert not np.allclose(final.get_layer("class_logits").get_weights()[0],
                           frozen.get_layer("class_logits").get_weights()[0])


def test_class_weights_balance_an_unbalanced_set():
    from audionet_tf.training.finetune import class_weights

    labels = np.array([0] * 90 + [1] * 10 + [2] * 30)
    weights = class_weights(labels, 3)
    weighted = [weights[c] * np.sum(labels == c) for c in range(3)]
    np.testing.assert_allclose(weighted, weighted[0])
    assert sum(weighted) == pytest.approx(len(labels))


def test_class_weights_are_on_by_default_and_a_flag_turns_them_off():
    on = finetune_cmd.resolve_config(finetune_cmd.build_parser().parse_args([]))
    off = finetune_cmd.resolve_config(finetune_cmd.build_parser().parse_args(["--no-class-weights"]))
    assert on.finetune.class_weights and not off.finetune.class_weights


TF_ONLY = """
import json, sys
import numpy as np
import tensorflow as tf
assert not any(m.startswith("audionet_tf") for m in sys.modules)
model = tf.saved_model.load(sys.argv[1])
windows = tf.constant(np.load(sys.argv[2])["heldout"][:64])
out = model.signatures["serve"](windows=windows)
names = [n.decode() for n in model.signatures["class_names"]()["class_names"].numpy()]
print(json.dumps({"names": [n.decode() for n in out["class_names"].numpy()], "listed": names,
                  "scores": out["scores"].numpy().tolist(), "logits": out["logits"].numpy().tolist(),
                  "called": model(windows).numpy().tolist()}))
"""


@pytest.mark.slow
def test_the_export_gives_scores_and_class_names_to_plain_tensorflow(tuned):
    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}  # TensorFlow alone: audionet_tf not importable
    done = subprocess.run([sys.executable, "-c", TF_ONLY, str(tuned["export"]), str(tuned["run"] / "calibration.npz")],
                          env=env, capture_output=True, text=True, timeout=300, cwd=tuned["work"])
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["names"] == CLASSES and got["listed"] == CLASSES
    scores = np.array(got["scores"])
    assert scores.shape == (64, len(CLASSES))
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(got["logits"], got["called"], rtol=1e-5, atol=1e-5)
    meta = json.loads((tuned["export"] / "metadata.json").read_text())
    assert meta["class_names"] == CLASSES and meta["num_classes"] == len(CLASSES)


@pytest.mark.slow
def test_litert_float_and_int8_agree_with_keras(tuned):
    from ai_edge_litert.interpreter import Interpreter

    from audionet_tf.model.student import load_model

    windows = np.load(tuned["run"] / "calibration.npz")["heldout"]
    keras_logits = load_model(str(tuned["run"] / "model.keras")).predict(windows[..., None], verbose=0)

    def run(path):
        interpreter = Interpreter(model_path=str(path))
        detail = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(detail["index"], list(windows.shape))
        interpreter.allocate_tensors()
        interpreter.set_tensor(detail["index"], windows)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])

    scale = max(1.0, float(np.abs(keras_logits).max()))
    assert np.abs(run(tuned["export"] / "model.tflite") - keras_logits).max() / scale < 1e-5
    int8 = run(tuned["export"] / "model_int8.tflite")
    assert np.mean(int8.argmax(1) == keras_logits.argmax(1)) >= 0.9


@pytest.mark.slow
@pytest.mark.parametrize("model", ["export", "model.keras"])
def test_predict_prints_the_users_class_names(tuned, model):
    if model == "export":  # labels.txt removed: the names must come from the SavedModel itself
        export = tuned["work"] / "alone"
        shutil.copytree(tuned["export"], export, dirs_exist_ok=True)
        (export / "labels.txt").unlink(missing_ok=True)
    else:  # the run's classifier, loaded by a process that has imported nothing else of the package
        export = tuned["run"] / "model.keras"
    recording = tuned["source"] / "bongo.ogg"  # a held-out clip (fold 3)
    done = subprocess.run([sys.executable, "-m", "audionet_tf.predict", str(recording), "--model", str(export),
                           "--top-k", "3"], env=ENV, capture_output=True, text=True, timeout=300, cwd=tuned["work"])
    assert done.returncode == 0, done.stderr[-3000:]
    seconds = [line.split("s  ", 1)[1] for line in done.stdout.splitlines() if line.startswith("  ") and "s  " in line]
    assert len(seconds) >= 5
    for line in seconds:
        named = [part.rsplit(" ", 1)[0] for part in line.split(", ")]
        assert sorted(named) == CLASSES, line


@pytest.mark.slow
def test_predict_on_the_int8_tflite_names_the_classes_from_the_exports_metadata(tuned, capsys):
    from audionet_tf.commands import predict as predict_cmd

    export = tuned["work"] / "tflite-alone"
    shutil.copytree(tuned["export"], export, dirs_exist_ok=True)
    (export / "labels.txt").unlink(missing_ok=True)
    code = predict_cmd.main([str(tuned["source"] / "violin.ogg"), "--model", str(export / "model_int8.tflite"),
                             "--top-k", "1"])
    out = capsys.readouterr().out
    assert code == 0
    tops = [line.split("s  ", 1)[1].rsplit(" ", 1)[0] for line in out.splitlines() if line.startswith("  ")]
    assert tops and set(tops) <= set(CLASSES), out


def test_settings_come_from_the_pipelines_finetune_table_then_flags(tmp_path):
    pipeline = tmp_path / "mine.toml"
    pipeline.write_text('[finetune]\nrun = "runs/x"\ndata = "a.csv"\nepochs = 7\nunfreeze_epochs = 2\n'
                        'holdout_fold = 5\n')
    parse = finetune_cmd.build_parser().parse_args
    config = finetune_cmd.resolve_config(parse(["--pipeline", str(pipeline), "--epochs", "9"]))
    fc = config.finetune
    assert (fc.run, fc.data, fc.epochs, fc.unfreeze_epochs, fc.holdout_fold) == ("runs/x", "a.csv", 9, 2, 5)
    pipeline.write_text("[finetune]\nepochs = 0\n")
    with pytest.raises(cfg.ConfigError, match="finetune.epochs"):
        finetune_cmd.resolve_config(parse(["--pipeline", str(pipeline)]))


# Each bad set: its rows (filename, fold, target, category), extra flags, and what the message must name.
BAD = {
    "missing file": ([("a.wav", 1, 0, "dog"), ("gone.wav", 2, 1, "cat")], [], ["line 3", "gone.wav", "does not exist"]),
    "target with two categories": ([("a.wav", 1, 0, "dog"), ("b.wav", 2, 1, "cat"), ("c.wav", 2, 0, "cow")], [],
                                   ["line 4", "target 0", "'cow'", "'dog'"]),
    "category with two targets": ([("a.wav", 1, 0, "dog"), ("b.wav", 2, 1, "cat"), ("c.wav", 1, 2, "dog")], [],
                                  ["line 4", "'dog'", "target 2"]),
    "fold not a number": ([("a.wav", 1, 0, "dog"), ("b.wav", "two", 1, "cat")], [], ["line 3", "fold", "'two'"]),
    "one class only": ([("a.wav", 1, 0, "dog"), ("b.wav", 2, 0, "dog")], [], ["one class", "'dog'"]),
    "a fold with no examples": ([("a.wav", 1, 0, "dog"), ("b.wav", 3, 1, "cat")], [], ["fold 2 has no examples"]),
    "held-out fold absent": ([("a.wav", 1, 0, "dog"), ("b.wav", 2, 1, "cat")], ["--holdout-fold", "4"],
                             ["--holdout-fold 4", "folds: 1, 2"]),
    "class only in the held-out fold": ([("a.wav", 1, 0, "dog"), ("b.wav", 1, 1, "cat"), ("c.wav", 2, 2, "cow")],
                                        ["--holdout-fold", "2"], ["'cow'", "held-out fold 2"]),
    "unreadable audio": ([("a.wav", 1, 0, "dog"), ("broken.wav", 2, 1, "cat")], [], ["line 3", "broken.wav"]),
}


@pytest.fixture(scope="module")
def plain_student(tmp_path_factory):
    """An undistilled audionet student as a .keras file: every refusal comes before any training."""
    from audionet_tf.model.student import build_audionet

    path = tmp_path_factory.mktemp("student") / "student.keras"
    build_audionet(None, 8).save(path)
    return path


def _tone(path: Path) -> None:
    import wave

    t = np.arange(16000) / 16000
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes((0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16).tobytes())


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_labelled_data_gets_one_message_naming_the_row(case, plain_student, tmp_path, capsys):
    rows, flags, named = BAD[case]
    (tmp_path / "set" / "audio").mkdir(parents=True)
    for filename, *_ in rows:
        if filename == "broken.wav":
            (tmp_path / "set" / "audio" / filename).write_bytes(b"RIFF not really a wave file" * 10)
        elif filename != "gone.wav":
            _tone(tmp_path / "set" / "audio" / filename)
    labels = write_set(tmp_path / "set", rows)
    code = finetune_cmd.main(["--from", str(plain_student), "--data", str(labels), "--epochs", "1",
                              "--runs-dir", str(tmp_path / "runs"), "--export-dir", str(tmp_path / "saved_models"),
                              "--quiet", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: "), err
    for part in named:
        assert part in err[0], (part, err[0])
    assert not (tmp_path / "saved_models").exists()
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())  # nothing half-written


@pytest.mark.slow
def test_a_bad_set_exits_non_zero_from_the_installed_command(plain_student, tmp_path):
    (tmp_path / "audio").mkdir()
    labels = write_set(tmp_path, [("a.wav", 1, 0, "dog"), ("b.wav", 1, 1, "cat")])
    done = subprocess.run([sys.executable, "-m", "audionet_tf", "finetune", "--from", str(plain_student),
                           "--data", str(labels)], env=ENV, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 2
    assert "line 2" in done.stderr and "a.wav" in done.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_an_interrupted_fine_tuning_leaves_no_run_behind(plain_student, tmp_path):
    rows = [(f"{kind}{i}.wav", i % 2 + 1, target, kind) for target, kind in enumerate(["low", "high"]) for i in range(2)]
    (tmp_path / "set" / "audio").mkdir(parents=True)
    for filename, *_ in rows:
        _tone(tmp_path / "set" / "audio" / filename)
    labels = write_set(tmp_path / "set", rows)
    process = subprocess.Popen([sys.executable, "-m", "audionet_tf", "finetune", "--from", str(plain_student),
                                "--data", str(labels), "--epochs", "100000", "--runs-dir", str(tmp_path / "runs")],
                               env=ENV, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                               # Ctrl-C as in a terminal: a test runner's worker may ignore SIGINT, and the child
                               # would inherit that (Python then raises no KeyboardInterrupt).
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    for line in process.stderr:  # the first epoch's line: training is under way, inside the staging directory
        seen.append(line)
        if "epoch 1:" in line:
            break
    process.send_signal(signal.SIGINT)
    rest = process.communicate(timeout=120)[1]
    assert process.returncode == 130, "".join(seen) + rest
    assert "nothing was written" in rest
    assert list((tmp_path / "runs").iterdir()) == []  # neither the run nor its hidden staging directory
    assert not (tmp_path / "saved_models").exists()
