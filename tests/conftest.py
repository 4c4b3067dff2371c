"""Shared test settings: quiet TensorFlow, the `slow` marker, and small helpers every test file may use."""
import os
import socket
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402


def pytest_xdist_auto_num_workers(config) -> int:
    """Two workers at most (one where one core is all there is): most tests wait on the subprocesses they start,
    so two files at a time keep two cores busy, and the timing and memory bounds the tests hold stay those
    measured with two. A whole file goes to one worker (`--dist loadfile`), so its module fixtures are made once."""
    return max(1, min(2, len(os.sched_getaffinity(0))))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds (still part of the CI run)")


@pytest.fixture
def ffmpeg_exe() -> str:
    """The ffmpeg binary the project uses (the imageio-ffmpeg wheel's)."""
    from audionet_tf.preparation.media import ffmpeg_exe

    return ffmpeg_exe()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gcs_emulator(monkeypatch):
    """A GCS JSON API server (gcp-storage-emulator) on 127.0.0.1 with one bucket, `gs://audionet`.

    Beam's and Google's Python clients reach it through `STORAGE_EMULATOR_HOST`; TensorFlow's own
    client through the proxy of `gcs_proxy.py`.
    """
    pytest.importorskip("gcp_storage_emulator", reason="part of the test extra")
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    from audionet_tf.core import storage

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
                                "--port", str(port), "--in-memory"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    try:
        # No Google credentials exist here: tell Beam's credential cache so, instead of letting it
        # retry the lookup with back-off for half a minute (its client then connects anonymously).
        from apache_beam.internal.gcp import auth
    except ImportError:
        auth = None
    if auth is not None:
        monkeypatch.setattr(auth._Credentials, "_credentials_init", True)
        monkeypatch.setattr(auth._Credentials, "_credentials", None)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        gcs.Client(project="test", credentials=AnonymousCredentials()).create_bucket("audionet")
        yield "gs://audionet"
    finally:
        process.kill()
        process.wait()
        storage.use_tf_filesystems()  # later tests in this process use tf.io.gfile again
