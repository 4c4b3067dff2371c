"""The README's two commands are the ones the project runs."""
import re
from pathlib import Path

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
