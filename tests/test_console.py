"""A quiet first hour: the commands drop TensorFlow's C++ log lines unless asked, and show progress."""
import io
import logging
import os
import re
import subprocess
import sys

import pytest

from audionet_tf.core import console
from audionet_tf.dataset.synthetic import write_synthetic_dataset

CPP_LINE = re.compile(r"^[IWE]\d{4} \d\d:\d\d:")


def run_train(tmp_path, data, *extra, env_level=None):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    if env_level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = env_level
    result = subprocess.run([sys.executable, "-m", "audionet_tf.train", "--data", str(data), "--epochs", "1",
                             "--batch-size", "32", "--no-export", "--no-report", "--quiet", *extra],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return [line for line in result.stderr.splitlines() if CPP_LINE.match(line)], result


@pytest.mark.slow
def test_tensorflow_lines_are_dropped_by_default_and_back_with_verbose_or_the_users_level(tmp_path):
    data = tmp_path / "data"
    write_synthetic_dataset(str(data), clips=2, seconds=1.0, num_classes=4, kinds=2)
    quiet, result = run_train(tmp_path, data, "--name", "quiet")
    assert quiet == [] and "absl::InitializeLog" not in result.stderr
    assert "INFO audionet_tf.train: training" in result.stderr  # the project's own lines stay
    verbose, _ = run_train(tmp_path, data, "--name", "verbose", "--verbose")
    assert verbose, "TensorFlow logs C++ lines at start-up on this machine; --verbose should show them"
    users, _ = run_train(tmp_path, data, "--name", "users", env_level="0")
    assert users


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_otherwise(caplog):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    console.setup(quiet=False)
    screen = Terminal()
    bar = console.Progress(4, "prepare", stream=screen)
    bar.update(1, "clips")
    bar.update(4, "clips")
    bar.close()
    assert "\r" in screen.getvalue() and "4/4" in screen.getvalue() and "ETA" in screen.getvalue()
    with caplog.at_level(logging.INFO):
        plain = console.Progress(2, "prepare", logging.getLogger("audionet_tf.test"), stream=io.StringIO())
        plain.update(1, "clips; a: 10 frames")
    assert "prepare 1/2 clips; a: 10 frames" in caplog.text
    console.setup(quiet=True)
    try:
        assert not console.Progress(2, "x", stream=Terminal()).bar  # --quiet: plain lines on a terminal too
    finally:
        console.setup(quiet=False)


def test_filter_keeps_everything_but_cpp_log_lines():
    kept = [line for line in (b"I0000 00:00:1795618698.817400   30117 port.cc:153] oneDNN custom operations",
                              b"E0000 00:00:1795618303.315567   10362 cuda_platform.cc:52] failed call to cuInit",
                              b"WARNING: All log messages before absl::InitializeLog() is called are written",
                              b"fully_quantize: 0, inference_type: 6",
                              b"error: dataset data/x does not exist",
                              b"Traceback (most recent call last):")
            if not console.CPP_LOG_LINE.match(line)]
    assert kept == [b"error: dataset data/x does not exist", b"Traceback (most recent call last):"]
