"""A quiet first hour: the commands drop TensorFlow's C++ log lines unless asked, and show progress."""
import io
import logging
import os
import re
import site
import subprocess
import sys
import sysconfig
import textwrap
import time
from pathlib import Path

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


# What TensorFlow's and LiteRT's C++ side prints at start-up, on conversion and on loading a .tflite.
TENSORFLOW_LINE = re.compile(r"^[IWE]\d{4} \d\d:\d\d:|absl::InitializeLog|cuda drivers|cuInit|fully_quantize"
                             r"|To enable the following instructions|TensorFlow Lite|XNNPACK")


@pytest.mark.slow
def test_every_command_starts_and_works_as_quietly_as_the_demo(tmp_path, ffmpeg_exe):
    """Each command's real work once, as `audionet COMMAND` runs it (`python -m audionet_tf COMMAND`), with no
    TF_CPP_MIN_LOG_LEVEL of the user's: no line of TensorFlow's C++ side on stderr or stdout. (`audionet demo`
    itself is run and held to the same in tests/test_readme.py.)"""
    import wave

    import numpy as np
    from loopback import make_clip

    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    rows = ["url,start,duration,label"]
    for colour, hz in (("red", 440), ("blue", 1200), ("green", 700)):
        rows.append(f"{make_clip(str(tmp_path / f'{colour}.mp4'), 2.0, video=f'color=c={colour}:s=32x24:rate=25', audio=f'sine=frequency={hz}:sample_rate=16000')},0,2,{colour}")
    (tmp_path / "clips.csv").write_text("\n".join(rows) + "\n")
    for kind, hz in (("low", 300), ("high", 2000)):
        (tmp_path / "sounds" / kind).mkdir(parents=True)
        for i in range(2):
            t = np.arange(16000) / 16000
            with wave.open(str(tmp_path / "sounds" / kind / f"{i}.wav"), "wb") as handle:
                handle.setnchannels(1)
                handle.setsampwidth(2)
                handle.setframerate(16000)
                handle.writeframes((0.4 * np.sin(2 * np.pi * (hz + 50 * i) * t) * 32767).astype(np.int16).tobytes())
    commands = [
        ["prepare", "--manifest", "clips.csv", "--teacher", "demo-colour", "--out", "data", "--cache-dir", "cache",
         "--holdout", "0.3", "--quiet"],
        ["train", "--data", "data", "--epochs", "1", "--batch-size", "32", "--name", "q", "--quiet", "--no-export",
         "--no-report"],
        ["export", "runs/q", "--out", "exported"],
        ["predict", "sounds/low/0.wav", "--model", "exported/model.tflite"],
        ["embed", "sounds/low/0.wav", "--out", "embeddings", "--model", "exported"],
        ["evaluate", "distill", "--run", "runs/q", "--data", "data"],
        ["evaluate", "transfer", "--model", "runs/q", "--dataset", "sounds", "--folds", "2"],
        ["report", "runs/q"],
    ]
    for command in commands:
        done = subprocess.run([sys.executable, "-m", "audionet_tf", *command], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (command, done.stderr[-3000:])
        noise = [line for line in (done.stderr + done.stdout).splitlines() if TENSORFLOW_LINE.search(line)]
        assert noise == [], (command, noise[:5])
    # The work was done: each command's output is there.
    for made in ("data/dataset.json", "runs/q/model.keras", "exported/model_int8.tflite", "embeddings/0.npz",
                 "runs/q/report/distill.json", "runs/q/report/transfer.json", "runs/q/report/index.html"):
        assert (tmp_path / made).is_file(), made


def installed_script(name: str) -> Path | None:
    """The console script `name` that pip installed for the running interpreter: in its environment's scripts
    directory (a venv's bin, which for a system Python can be /usr/local/bin rather than the interpreter's own
    folder), or the user's (pip install --user), not whichever one PATH finds first."""
    folders = [sysconfig.get_path("scripts"), os.path.dirname(sys.executable)]
    if site.ENABLE_USER_SITE:
        folders.append(sysconfig.get_path("scripts", sysconfig.get_preferred_scheme("user")))
    return next((Path(f, name) for f in folders if Path(f, name).is_file()), None)


HELP_FORMS = [("prepare", "prepare"), ("train", "train"), ("demo", None), ("export", "export"),
              ("predict", "predict"), ("embed", "embed"), ("evaluate", "evaluate"), ("evaluate distill", "evaluate"),
              ("evaluate transfer", "evaluate"), ("report", "report")]


@pytest.mark.parametrize("command,module", HELP_FORMS, ids=[c for c, _ in HELP_FORMS])
def test_help_names_the_command_as_it_was_typed(command, module):
    """`audionet prepare --help` says `audionet prepare`, `python -m audionet_tf.prepare --help` says that (and
    `python -m audionet_tf prepare` for `prepare`); a usage error names it too."""
    script = installed_script("audionet")
    if script is None:
        pytest.skip(f"no `audionet` script installed for {sys.executable} (pip install -e . makes it)")
    words = command.split()
    forms = [([str(script), *words], f"audionet {command}")]
    if module:
        forms.append(([sys.executable, "-m", f"audionet_tf.{module}", *words[1:]],
                      " ".join([f"python -m audionet_tf.{module}", *words[1:]])))
    if command == "prepare":
        forms.append(([sys.executable, "-m", "audionet_tf", *words], f"python -m audionet_tf {command}"))
    for argv, typed in forms:
        shown = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=120)
        assert shown.returncode == 0, shown.stderr[-2000:]
        assert re.match(rf"usage: {re.escape(typed)}(\s|$)", shown.stdout), (typed, shown.stdout[:200])
    refused = subprocess.run([*forms[0][0], "--no-such-flag"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and f"audionet {command}: error:" in refused.stderr, refused.stderr[-500:]


def test_no_command_module_loads_tensorflow_before_its_console_is_set_up():
    """`python -m audionet_tf.X` imports its module before `run_command` quiets TensorFlow: a module that loaded
    TensorFlow on import would print its C++ start-up lines first."""
    code = ("import json, sys\nfirst = None\n"
            "for name in ('prepare', 'train', 'export', 'predict', 'embed', 'evaluate', 'report', '__main__'):\n"
            "    __import__('audionet_tf.' + name)\n"
            "    if first is None and 'tensorflow' in sys.modules:\n"
            "        first = name\n"
            "print(json.dumps(first))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "null", done.stdout


def test_a_command_ends_without_walking_its_objects_once_more():
    """A command's process ends right after its work: TensorFlow and Keras leave millions of objects that the
    interpreter's last garbage collection would walk (seconds after a long train). Measured against the same
    walk timed in the same process (a `gc.collect()` over as many live objects, made here)."""
    code = textwrap.dedent("""
        import gc, sys, time
        from audionet_tf.core.console import run_command

        def main():
            global kept
            kept = [[[i], {"n": i}] for i in range(1_500_000)]  # live objects the collector tracks
            start = time.perf_counter()
            gc.collect()
            print(f"walk {time.perf_counter() - start:.3f}", flush=True)
            return 3

        sys.exit(run_command(main))
        """)
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    line = process.stdout.readline()
    returned = time.perf_counter()
    assert process.wait(timeout=120) == 3  # the command's own status
    ended = time.perf_counter() - returned
    walk = float(line.split()[1])
    assert walk > 0.2, line  # the objects made are enough to measure
    assert ended < 0.5 * walk, (ended, walk)
