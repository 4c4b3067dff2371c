"""Frames reach the teacher as ImageNet classifiers are evaluated: aspect kept, centre cut out."""
import subprocess

import pytest

from audionet_tf.core.config import AudioConfig
from audionet_tf.preparation.media import decode_clip, ffmpeg_exe
from audionet_tf.preparation.teacher import demo_teacher


@pytest.fixture(scope="module")
def wide_clip(tmp_path_factory):
    """A 16:9 clip, green in its centre square, blue in the strips either side of it."""
    path = tmp_path_factory.mktemp("wide") / "wide.mp4"
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                    "color=c=0x00cc00:s=320x180:r=25:d=1,drawbox=x=0:y=0:w=70:h=180:color=0x0000ff:t=fill,"
                    "drawbox=x=250:y=0:w=70:h=180:color=0x0000ff:t=fill",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000:duration=1",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(path)], check=True)
    return str(path)


def test_crop_shows_the_teacher_the_centre_squash_and_letterbox_the_sides(wide_clip):
    frames = {fit: decode_clip(wide_clip, 0.0, 1.0, AudioConfig(), (32, 32), fit).frames
              for fit in ("crop", "squash", "letterbox")}
    assert all(f.shape == (25, 32, 32, 3) for f in frames.values())
    crop, squash, letterbox = (frames[k][0].astype(float) for k in ("crop", "squash", "letterbox"))
    # crop: the central 180x180 of the frame scaled to 32x32; the blue strips are cut away
    # (a pixel or two of blend at the edges from scaling).
    assert crop[:, 2:-2, 2].max() < 40 and crop[:, 2:-2, 1].min() > 150
    # squash: the whole width, squeezed: blue strips at both sides.
    assert squash[:, :5, 2].mean() > 200 and squash[:, -5:, 2].mean() > 200
    # letterbox: the whole frame, aspect kept, on black bars above and below.
    assert letterbox[:6].max() < 30 and letterbox[-6:].max() < 30
    assert letterbox[16, :3, 2].mean() > 200 and letterbox[16, 16, 1] > 150
    # What the teacher saw: green from the centre crop; with squash the blue sides pull it off green.
    teacher = demo_teacher()
    assert teacher.class_names[int(teacher.logits(frames["crop"][:1]).argmax())] == "green"
    squash_logits = teacher.logits(frames["squash"][:1])[0]
    crop_logits = teacher.logits(frames["crop"][:1])[0]
    blue = teacher.class_names.index("blue")
    assert squash_logits[blue] - squash_logits.max() > crop_logits[blue] - crop_logits.max()


def test_the_fit_is_a_checked_setting_defaulting_to_crop():
    from audionet_tf.core import config as cfg

    assert cfg.PrepareConfig().frame_fit == "crop"
    with pytest.raises(Exception, match="frame_fit"):
        cfg.PrepareConfig(frame_fit="stretch")
