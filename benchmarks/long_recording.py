"""predict and embed on long recordings: whole-command time, real-time factor and peak memory.

    python benchmarks/long_recording.py [--minutes 10 60] [--repeats 3] [--python-path DIR]

Builds a 1000-class student with random weights (time and memory do not depend on them) and
exports it with `python -m audionet_tf.export`, makes a 16 kHz mono WAV of pink noise of each
length with ffmpeg's lavfi source, then runs each command in a fresh process, as a user
would: `predict FILE --quiet --json out.json` (every window's top 5 written) and
`embed FILE --out DIR`. Peak memory is the process's high-water mark (VmHWM, read at its exit);
time is the whole command's wall time, TensorFlow's start-up included. `--python-path` runs
the commands from another checkout of the package (to compare versions in one run).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


# The command runs as `python -m` runs it and reports its own VmHWM at exit (a child's ru_maxrss from
# wait4 would include its parent's high-water mark, which Linux carries across fork and exec).
PEAK = """
import re, runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
finally:
    status = open("/proc/self/status").read()
    sys.stderr.write("\\nVmHWM " + re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1) + "\\n")
"""


def run(args: list[str], cwd: str, env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak resident MB (VmHWM) of `python -m <args>` in a fresh process."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", PEAK, *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stderr[-2000:]}")
    return seconds, int(re.findall(r"^VmHWM (\d+)$", result.stderr, flags=re.M)[-1]) / 1024


def main() -> None:
    """Print one table row per command and length."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[10, 60])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--python-path", help="run the commands from this checkout (default: this one)")
    args = parser.parse_args()
    env = dict(ENV)
    if args.python_path:
        env["PYTHONPATH"] = os.path.abspath(args.python_path)
    with tempfile.TemporaryDirectory() as work:
        build = ("import keras\n"
                 "try:\n    from audionet_tf.model.student import build_audionet\n"
                 "except ImportError:\n    from audionet_tf.model import build_audionet\n"
                 "keras.utils.set_random_seed(0)\n"
                 "build_audionet(None, 1000, input_scale=256.0).save('student.keras')\n")
        subprocess.run([sys.executable, "-c", build], cwd=work, env=env, check=True, capture_output=True)
        run(["audionet_tf.export", "student.keras", "--out", "export"], work, env)
        import imageio_ffmpeg

        print("| command (1000 classes) | recording | wall time, median of runs | × real time | peak memory |")
        print("|---|---|---|---|---|")
        for minutes in args.minutes:
            wav = os.path.join(work, f"noise{minutes:g}.wav")
            subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i",
                            "anoisesrc=color=pink:amplitude=0.3:sample_rate=16000:seed=1", "-t", str(60 * minutes),
                            "-ac", "1", "-c:a", "pcm_s16le", wav], check=True)
            commands = {
                "predict --quiet --json": ["audionet_tf.predict", wav, "--model", "export", "--quiet", "--json",
                                           "out.json", "--overwrite"],
                "embed": ["audionet_tf.embed", wav, "--model", "export", "--out", "emb", "--overwrite"],
            }
            for name, command in commands.items():
                runs = [run(command, work, env) for _ in range(args.repeats)]
                seconds = statistics.median(r[0] for r in runs)
                spread = f"{min(r[0] for r in runs):.1f}–{max(r[0] for r in runs):.1f} s"
                print(f"| {name} | {minutes:g} min | {seconds:.1f} s ({spread}) | {60 * minutes / seconds:.0f}× "
                      f"| {max(r[1] for r in runs):,.0f} MB |", flush=True)
            os.remove(wav)


if __name__ == "__main__":
    main()
