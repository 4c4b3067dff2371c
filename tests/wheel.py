"""The package as a user installs it: a wheel built from this checkout, installed (not editable) into a fresh
virtual environment that reuses this interpreter's third-party packages, used from a directory of its own."""
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(work / "venv")], check=True,
                   timeout=300)
    bin_dir = work / "venv" / "bin"
    subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True,
                   capture_output=True, timeout=300)
    return bin_dir
