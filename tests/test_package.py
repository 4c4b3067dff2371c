"""The package as people meet it: `import audionet_tf` (light, with its entry points), one installed
`audionet` command that behaves like `python -m audionet_tf.<command>`, recipes found by name."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from wheel import install_wheel

import audionet_tf

CPP_LINE = re.compile(r"^[IWE]\d{4} \d\d:\d\d:|absl::InitializeLog|cuInit")


def test_import_loads_no_tensorflow_and_is_quick():
    code = ("import json, sys, time; t = time.perf_counter(); import audionet_tf; t = time.perf_counter() - t; "
            "print(json.dumps({'seconds': t, 'heavy': sorted(m for m in ('tensorflow', 'keras', 'numpy') "
            "if m in sys.modules), 'names': dir(audionet_tf)}))")
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                    timeout=120).stdout)
    assert out["heavy"] == []
    assert out["seconds"] < 0.5  # TensorFlow alone takes seconds to import
    assert {"load_student", "predict", "embed", "build_student", "load_pipeline", "prepare", "train", "export",
            "evaluate", "report", "read_dataset", "SAMPLE_RATE"} <= set(out["names"])


def test_every_entry_point_is_there_and_callable():
    for name in audionet_tf._ENTRY_POINTS:
        assert callable(getattr(audionet_tf, name)), name
    assert audionet_tf.SAMPLE_RATE == 16000
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        audionet_tf.nothing


def test_entry_points_stay_callable_after_their_command_modules_are_imported():
    # `import audionet_tf.train` makes the module the package's attribute; the call must still reach train().
    names = ["train", "prepare", "export", "predict", "embed", "evaluate", "report", "finetune"]
    code = ("import importlib, inspect, json; import audionet_tf as an\n"
            f"names = {names!r}\n"
            "before = {n: getattr(an, n) for n in names}\n"
            "out = {}\n"
            "for n in names:\n"
            "    module = importlib.import_module('audionet_tf.' + n)\n"
            "    try:\n"
            "        getattr(an, n)()\n"
            "    except TypeError as exc:\n"
            "        out[n] = [str(exc), list(inspect.signature(before[n]).parameters)[0], callable(module.main)]\n"
            "print(json.dumps(out))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert sorted(out) == sorted(names)
    for name, (error, first_parameter, has_main) in out.items():
        assert re.search(rf"missing \d required positional arguments?: '{first_parameter}'", error), (name, error)
        assert has_main, name


def test_pipelines_load_by_name_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    demo = audionet_tf.load_pipeline("demo")
    assert demo.prepare.demo and demo.train.name == "demo"
    assert audionet_tf.load_pipeline("pipelines/seed.toml").prepare.clips  # the README's older spelling
    with pytest.raises(audionet_tf.AudioNetError, match="nothere.toml does not exist.*demo, seed"):
        audionet_tf.load_pipeline("nothere.toml")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    return install_wheel(tmp_path_factory.mktemp("wheel"))


def run(argv, cwd, **kwargs):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONPATH")}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **kwargs)


def named(text: str, prog: str) -> str:
    """A help text or usage error with its command's name `prog` replaced by PROG and its usage lines joined (argparse
    wraps them after the name), so that two forms of one command compare equal."""
    lines, out = text.split("\n"), []
    i = 0
    while i < len(lines):
        if lines[i].startswith(f"usage: {prog}"):
            usage = [lines[i]]
            while i + 1 < len(lines) and lines[i + 1].startswith(" ") and lines[i + 1].strip():
                i += 1
                usage.append(lines[i])
            out.append(" ".join(" ".join(usage).split()).replace(prog, "PROG", 1))
        else:
            out.append(lines[i].replace(f"{prog}: error:", "PROG: error:", 1))
        i += 1
    return "\n".join(out)


@pytest.mark.slow
def test_the_installed_command_is_python_m(installed, tmp_path):
    where = run([str(installed / "python"), "-c", "import audionet_tf, audionet_tf.core.config as c; "
                 "print(audionet_tf.__file__); print(c.recipe_path('demo'))"], tmp_path)
    package, recipe = where.stdout.split()
    assert package.startswith(str(installed.parent)) and recipe.startswith(str(installed.parent))
    # Help, a bad flag value, a missing file before and after TensorFlow loads (its C++ start-up lines).
    for argv in (["train", "--help"], ["train", "--epochs", "0"], ["prepare", "--pipeline", "nowhere.toml"],
                 ["export", str(tmp_path / "missing-run")], ["train", "--data", str(tmp_path / "missing-data")]):
        ours = run([str(installed / "audionet"), *argv], tmp_path)
        theirs = run([str(installed / "python"), "-m", f"audionet_tf.{argv[0]}", *argv[1:]], tmp_path)
        # The same but for the name each form gives itself in a usage line (what the user typed).
        mine, python_m = f"audionet {argv[0]}", f"python -m audionet_tf.{argv[0]}"
        assert (ours.returncode, named(ours.stdout, mine), named(ours.stderr, mine)) == \
            (theirs.returncode, named(theirs.stdout, python_m), named(theirs.stderr, python_m)), argv
        assert not [line for line in ours.stderr.splitlines() if CPP_LINE.search(line)], argv
    assert run([str(installed / "audionet"), "prepare", "--pipeline", "nowhere.toml"], tmp_path).returncode == 2
    unknown = run([str(installed / "audionet"), "prepair"], tmp_path)
    assert unknown.returncode == 2 and "unknown command 'prepair'" in unknown.stderr
    assert run([str(installed / "audionet"), "--version"], tmp_path).stdout.strip() == \
        f"audionet_tf {audionet_tf.__version__}"


@pytest.mark.slow
def test_the_readme_python_api_runs_as_written(tmp_path):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.+?)\n```", section, flags=re.S)
    assert len(blocks) == 2
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-c", "\n".join(blocks)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    agreement = re.search(r"held-out top-1 agreement (\d+)%, prior (\d+)%", result.stdout)
    assert agreement and int(agreement.group(1)) > int(agreement.group(2)), result.stdout
    # What the comments promise: one second at 44.1 kHz is 25 windows of 16 kHz audio, 6 demo classes.
    assert "(25, 6) [0.   0.04 0.08]" in result.stdout, result.stdout
    assert (tmp_path / "saved_models" / "demo" / "saved_model.pb").is_file()
