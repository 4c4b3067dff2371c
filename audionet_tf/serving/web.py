"""A static page that runs the student in a browser: the page (`resources/web/`), `student.onnx` and
onnxruntime-web's WebAssembly runtime, every file served from the page's own origin.

The page decodes a file a person drops on it (Web Audio, resampled to the student's rate), runs
the student over windows every hop as `predict` does, and plots the top classes per second; its
Content-Security-Policy lets it load its own files only, so nothing it reads is sent anywhere.

The runtime is npm's `onnxruntime-web` (`export.web_runtime_version`). It comes from a directory
given as `export.web_runtime` (the npm package, its `dist/`, or an npm prefix holding
`node_modules/onnxruntime-web`) or else from `export.web_cache`, where npm installs it once on the
first `--web`. Only `--web` needs npm: nothing else in the package runs it.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
from importlib import resources
from typing import Sequence

from audionet_tf.core.config import ExportConfig
from audionet_tf.core.errors import AudioNetError

log = logging.getLogger(__name__)

PACKAGE = "onnxruntime-web"
# The single-threaded WebAssembly build: the script that defines `ort`, the module it imports and the binary.
RUNTIME_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
PAGE_FILES = ("index.html", "app.js", "page.css")
STUDENT_PLACEHOLDER = "{{STUDENT_JSON}}"
NPM_TIMEOUT_S = 900.0


def find_runtime(directory: str) -> str | None:
    """The folder under `directory` that holds every runtime file (itself, `dist/`, or an npm prefix's), or None."""
    for candidate in (directory, os.path.join(directory, "dist"),
                      os.path.join(directory, "node_modules", PACKAGE, "dist")):
        if all(os.path.isfile(os.path.join(candidate, name)) for name in RUNTIME_FILES):
            return candidate
    return None


def runtime_version(dist: str) -> str | None:
    """The onnxruntime-web version of a runtime folder, from its package's package.json (None if not found)."""
    path = os.path.join(os.path.dirname(os.path.abspath(dist)), "package.json")
    try:
        with open(path, encoding="utf-8") as handle:
            doc = json.load(handle)
    except (OSError, ValueError):
        return None
    return doc.get("version") if doc.get("name") == PACKAGE else None


def install_runtime(version: str, cache: str) -> str:
    """onnxruntime-web `version` installed by npm under `cache` (once: a finished install is reused)."""
    prefix = os.path.join(os.path.abspath(cache), f"{PACKAGE}-{version}")
    found = find_runtime(prefix)
    if found:
        return found
    npm = shutil.which("npm")
    if npm is None:
        raise AudioNetError(
            f"--web needs {PACKAGE} {version} (the page's JavaScript runtime) and npm is not installed to fetch it: "
            f"install Node.js and npm, or give --web-runtime DIR with the files of `npm pack {PACKAGE}@{version}` "
            f"unpacked ({', '.join(RUNTIME_FILES)} in DIR or DIR/dist)")
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    # Installed beside its final place and renamed: an interrupted install is never taken for a finished one.
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(prefix)}.", dir=os.path.dirname(prefix))
    command = [npm, "install", "--prefix", staging, "--no-save", "--no-package-lock", "--ignore-scripts",
               "--no-audit", "--no-fund", "--loglevel=error", f"{PACKAGE}@{version}"]
    log.info("installing %s %s with npm into %s", PACKAGE, version, prefix)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=NPM_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
        if done.returncode != 0 or not find_runtime(staging):
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise AudioNetError(f"npm could not install {PACKAGE}@{version} ({' / '.join(tail) or 'no output'}); "
                                f"give --web-runtime DIR with its files instead")
        if os.path.exists(prefix):  # a broken earlier install: replaced
            shutil.rmtree(prefix)
        os.replace(staging, prefix)
    except subprocess.TimeoutExpired:
        raise AudioNetError(f"npm did not install {PACKAGE}@{version} within {NPM_TIMEOUT_S:.0f} s; "
                            f"give --web-runtime DIR with its files instead") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return find_runtime(prefix)


def runtime_dir(options: ExportConfig) -> str:
    """The folder of runtime files the page copies: `options.web_runtime`'s, else the npm cache's."""
    if options.web_runtime:
        found = find_runtime(options.web_runtime)
        if not found:
            raise AudioNetError(f"--web-runtime {options.web_runtime}: no {PACKAGE} files there (looked for "
                                f"{', '.join(RUNTIME_FILES)} in it, in dist/ and in node_modules/{PACKAGE}/dist/)")
        version = runtime_version(found)
        if version and version != options.web_runtime_version:
            log.warning("--web-runtime holds %s %s; the page is tested with %s", PACKAGE, version,
                        options.web_runtime_version)
        return found
    return install_runtime(options.web_runtime_version, options.web_cache)


def write_page(directory: str, onnx_path: str, runtime: str, *, class_names: Sequence[str], sample_rate: int,
               window_samples: int, hop_samples: int) -> None:
    """Fill `directory` with the page, `student.onnx` and the runtime files of the folder `runtime`."""
    source = resources.files("audionet_tf").joinpath("resources", "web")
    student = {"model": "student.onnx", "class_names": list(class_names), "sample_rate": int(sample_rate),
               "window_samples": int(window_samples), "hop_samples": int(hop_samples),
               "runtime": f"{PACKAGE} {runtime_version(runtime) or 'unknown version'}"}
    for name in PAGE_FILES:
        text = source.joinpath(name).read_text(encoding="utf-8")
        if name == "index.html":
            # Inside a <script> element: "</" would end it early.
            text = text.replace(STUDENT_PLACEHOLDER, json.dumps(student).replace("</", "<\\/"))
        with open(os.path.join(directory, name), "w", encoding="utf-8") as handle:
            handle.write(text)
    shutil.copyfile(onnx_path, os.path.join(directory, "student.onnx"))
    for name in RUNTIME_FILES:
        shutil.copyfile(os.path.join(runtime, name), os.path.join(directory, name))
