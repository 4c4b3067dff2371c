"""The README's two commands are the ones the project runs."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```bash\n(.+?)\n```", text, flags=re.S)[:2]


def test_ci_runs_the_readme_test_command():
    demo, tests = readme_commands()
    assert "pytest" in tests and "audionet_tf.train" in demo
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert tests in ci


def test_demo_command_names_a_pipeline_that_exists():
    demo, _ = readme_commands()
    pipeline = re.search(r"--pipeline (\S+)", demo).group(1)
    assert (ROOT / pipeline).is_file()


@pytest.mark.slow
def test_the_offline_demo_runs_and_the_student_hears_far_above_chance(tmp_path):
    demo, _ = readme_commands()
    pipeline = ROOT / re.search(r"--pipeline (\S+)", demo).group(1)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-m", "audionet_tf.train", "--pipeline", str(pipeline), "--quiet"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "runs" / "demo" / "metrics.json").read_text())
    chance = 1 / 6  # the demo teacher's classes
    assert metrics["validation"]["top1_agreement"] > 3 * chance
    assert (tmp_path / "saved_models" / "demo" / "model_int8.tflite").is_file()
    assert (tmp_path / "runs" / "demo" / "report" / "index.html").is_file()
    for stage in ("dataset data/demo", "on held-out clips", "exported to", "report:"):
        assert stage in result.stdout, stage
