"""The package as a user installs it: a wheel built from this checkout, installed (not editable) into a fresh
virtual environment that reuses the third-party packages of the environment running the tests (a venv, conda,
the base interpreter: whichever), used from a directory of its own."""
import importlib.util
import json
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Written into the new environment's site-packages and imported by a .pth file there at every start-up: the
# running environment's site directories go after the new environment's own (so the wheel is what `import
# audionet_tf` finds) and their .pth files run as site.py runs them (namespace packages, other editable
# installs), all but those that would put this project's checkout on the path.
PARENT_MODULE = '''"""The site directories of the environment that ran the tests (written by tests/wheel.py)."""
import os
import site
import sys

DIRS = {dirs!r}
SKIP_FILES = {skip_files!r}
SKIP_DIRS = {skip_dirs!r}

known = {{os.path.normcase(os.path.abspath(p)) for p in sys.path}} | {{os.path.normcase(d) for d in SKIP_DIRS}}
for folder in DIRS:
    if os.path.normcase(folder) not in known:
        sys.path.append(folder)
        known.add(os.path.normcase(folder))
    for name in sorted(os.listdir(folder)):
        if name.endswith(".pth") and os.path.join(folder, name) not in SKIP_FILES:
            site.addpackage(folder, name, known)
'''


def running_site_dirs() -> list[str]:
    """The site directories of the interpreter running the tests, in the order site.py puts them on sys.path."""
    dirs = []
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    dirs += site.getsitepackages() + [sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]
    unique = []
    for folder in dirs:
        folder = os.path.abspath(folder)
        if os.path.isdir(folder) and folder not in unique:
            unique.append(folder)
    return unique


def checkout_hooks(dirs: list[str]) -> tuple[list[str], list[str]]:
    """What in those directories installs a checkout of audionet_tf (an editable install): the .pth files that
    run its import hook (PEP 660's finder) and the directories that .pth path lines add (setup.py develop)."""
    skip_files, skip_dirs = [], []
    for folder in dirs:
        for name in sorted(os.listdir(folder)):
            if not name.endswith(".pth"):
                continue
            path = os.path.join(folder, name)
            if re.search(r"audionet[-_]tf", name, re.I):
                skip_files.append(path)
                continue
            with open(path, encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    line = line.strip()
                    if line and not line.startswith(("#", "import ", "import\t")):
                        target = os.path.abspath(os.path.join(folder, line))
                        if os.path.isfile(os.path.join(target, "audionet_tf", "__init__.py")):
                            skip_dirs.append(target)
    return skip_files, skip_dirs


WHERE = ("import importlib.util, json, os, sys; spec = importlib.util.find_spec('audionet_tf'); "
         "others = [p for p in sys.path if os.path.isfile(os.path.join(p, 'audionet_tf', '__init__.py'))]; "
         "keras = getattr(importlib.util.find_spec('keras'), 'origin', None); "
         "print(json.dumps({'package': spec.origin, 'others': others, 'keras': keras, "
         "'hooks': sorted(m for m in sys.modules if 'editable' in m and 'audionet_tf' in m)}))")


def where_audionet_tf(bin_dir: Path) -> dict:
    """What the environment's python imports as audionet_tf: its file, the other copies on sys.path, which Keras
    it would import and which editable-install hooks ran, as the installed command sees them (no PYTHONPATH)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(bin_dir / "python"), "-c", WHERE], cwd=bin_dir, env=env, capture_output=True,
                          text=True, check=True, timeout=120)
    return json.loads(done.stdout)


def install_wheel(work: Path) -> Path:
    """Build the wheel, install it into `work/venv`; returns the environment's bin directory."""
    source = work / "source"
    for part in ("audionet_tf", "pipelines"):
        shutil.copytree(ROOT / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("setup.py", "README.md"):
        shutil.copy(ROOT / part, source / part)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(work / "dist"), str(source)], check=True, capture_output=True, timeout=300)
    wheel, = (work / "dist").glob("audionet_tf-*.whl")
    # A plain venv: --system-site-packages would give it the base interpreter's packages, which are not those of
    # a venv or conda environment running the tests.
    subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True, timeout=300)
    bin_dir = work / "venv" / "bin"
    python = str(bin_dir / "python")
    # Installed before the running environment's packages are visible, so that pip finds no other audionet_tf.
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True,
                   capture_output=True, timeout=300)
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], check=True,
                             capture_output=True, text=True, timeout=120).stdout.strip()
    dirs = running_site_dirs()
    skip_files, skip_dirs = checkout_hooks(dirs)
    Path(purelib, "_audionet_tests_parent.py").write_text(
        PARENT_MODULE.format(dirs=dirs, skip_files=skip_files, skip_dirs=skip_dirs), encoding="utf-8")
    Path(purelib, "_audionet_tests_parent.pth").write_text("import _audionet_tests_parent\n", encoding="utf-8")
    where = where_audionet_tf(bin_dir)
    venv = str(work / "venv")
    others = [p for p in where["others"] if not p.startswith(venv)]
    assert where["package"].startswith(venv) and not others and not where["hooks"], where
    # The same Keras as the tests' own: the running environment's packages, not the base interpreter's.
    ours = importlib.util.find_spec("keras").origin
    assert where["keras"] == ours, f"{work / 'venv'} imports Keras from {where['keras']}, the tests from {ours}"
    return bin_dir
