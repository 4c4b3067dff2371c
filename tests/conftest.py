"""Shared test settings: quiet TensorFlow, the `slow` marker, and small helpers every test file may use."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds (still part of the CI run)")


@pytest.fixture
def ffmpeg_exe() -> str:
    """The ffmpeg binary the project uses (the imageio-ffmpeg wheel's)."""
    from audionet_tf.preparation.media import ffmpeg_exe

    return ffmpeg_exe()
