"""The README's two commands are the ones the project runs."""
import csv
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from wheel import install_wheel

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```bash\n(.+?)\n```", text, flags=re.S)[:2]


def test_ci_runs_the_readme_test_command_in_a_venv_of_its_own():
    demo, tests = readme_commands()
    assert "pytest" in tests and demo == "pip install . && audionet demo"
    # One interpreter installs and tests, in a venv or outside one (outside, a bare `pip` can be another Python's).
    assert tests.startswith("python -m pip install ") and "&& python -m pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert tests in ci
    # Inside a virtual environment it makes first, put first on PATH, without the base interpreter's packages
    # (so that a dependency only the machine's interpreter has fails in CI as it would in a user's venv).
    made = [i for i, line in enumerate(ci) if re.match(r"python3? -m venv ", line)]
    assert made and made[0] < ci.index(tests) and "--system-site-packages" not in ci[made[0]], ci
    folder = ci[made[0]].split()[-1]
    assert any(f'PATH="$PWD/{folder}/bin:$PATH"' in line for line in ci[made[0]:ci.index(tests)]), ci


def test_demo_command_runs_the_demo_recipe_of_the_repository():
    from audionet_tf.commands.main import COMMANDS
    from audionet_tf.core.config import recipe_path

    assert "train --pipeline demo" in COMMANDS["demo"]
    assert Path(recipe_path("demo")).read_bytes() == (ROOT / "pipelines" / "demo.toml").read_bytes()


def in_band_energy(kernel, sample_rate=16000):
    """Mean over the conv filters of the share of their response energy within the demo sounds' bands."""
    from audionet_tf.preparation.demo_clips import DEMO_SOUNDS

    spectrum = np.abs(np.fft.rfft(kernel[:, 0, :], 1024, axis=0)) ** 2
    freqs = np.fft.rfftfreq(1024, 1.0 / sample_rate)
    band = np.zeros(len(freqs), bool)
    for shape, centre in DEMO_SOUNDS.values():
        for harmonic in ((1, 2, 3, 4) if shape == "harmonic" else (1,)):
            width = (400 if centre > 3000 else 200) if shape == "band" else 60
            band |= np.abs(freqs - harmonic * centre) <= width
    return float((spectrum[band].sum(axis=0) / spectrum.sum(axis=0)).mean())


def readme_demo_figures() -> dict:
    """The figures the README's demo section states."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## The offline demo", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"held-out\s+top-1\s+agreement\s+\*\*(\d+(?:\.\d+)?) %\*\*", section)
    return {"top1": float(match.group(1)) / 100}


@pytest.mark.slow
def test_the_offline_demo_meets_the_readme_targets_quietly(tmp_path):
    import keras

    from audionet_tf.model.student import build_audionet, load_model

    demo, _ = readme_commands()
    assert demo.endswith("&& audionet demo")
    # As a user runs it: the wheel installed (not editable), from an empty directory.
    bin_dir = install_wheel(tmp_path / "install")
    # No TF_CPP_MIN_LOG_LEVEL of the user's: the command's own quiet default applies.
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONPATH")}
    env["CUDA_VISIBLE_DEVICES"] = ""
    tmp_path = tmp_path / "work"
    tmp_path.mkdir()
    result = subprocess.run([str(bin_dir / "audionet"), "demo"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    # A quiet first hour: none of TensorFlow's C++ start-up or converter lines, the project's own INFO lines.
    cpp = [line for line in result.stderr.splitlines() if re.match(r"[IWE]\d{4} \d\d:\d\d:", line)
           or "absl::InitializeLog" in line or "cuInit" in line or "fully_quantize" in line
           or "TensorFlow Lite" in line or "XNNPACK" in line]
    assert not cpp, cpp[:5]
    assert "INFO audionet_tf.prepare" in result.stderr and "INFO audionet_tf.train" in result.stderr
    for stage in ("dataset data/demo", "on held-out clips", "exported to", "report:"):
        assert stage in result.stdout, stage
    run = tmp_path / "runs" / "demo"
    metrics = json.loads((run / "metrics.json").read_text())
    held_out = metrics["validation"]["top1_agreement"]
    assert held_out >= 0.9 and held_out >= readme_demo_figures()["top1"] - 0.03  # the README's level
    # The curves rise over the epochs: far from their end at epoch 2.
    rows = list(csv.DictReader(open(run / "history.csv")))
    val = [float(r["val_top1_agreement"]) for r in rows]
    assert val[1] < 0.75 <= max(val) and val[-1] >= 0.9
    # The filters tuned to the sounds: compared with the same network's seeded initial filters.
    keras.utils.set_random_seed(0)
    initial = build_audionet(None, 6, input_scale=256.0).get_layer("conv").kernel.numpy()
    trained = load_model(str(run / "model.keras")).get_layer("conv").kernel.numpy()
    assert in_band_energy(trained) >= in_band_energy(initial) + 0.05
    # The teacher switches within each held-out clip and the student follows (report's per-clip table).
    distill = json.loads((run / "report" / "distill.json").read_text())
    from audionet_tf.dataset import reader

    arrays = reader.load_arrays(str(tmp_path / "data" / "demo"), "validation")
    for clip_id, scores in distill["per_clip"].items():
        top = arrays["logits"][arrays["clip_id"] == clip_id].argmax(1)
        assert int(np.sum(top[1:] != top[:-1])) >= 4, clip_id
        assert scores["student"]["top1_agreement"] >= 0.85, clip_id
    assert (tmp_path / "saved_models" / "demo" / "model_int8.tflite").is_file()
    page = (run / "report" / "index.html").read_text()
    assert "timeline-demo-09.png" in page and "Per clip" in page
