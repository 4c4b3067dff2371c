"""predict and embed on long recordings: whole-command time, real-time factor and peak memory.

    python benchmarks/long_recording.py [--minutes 10 60] [--repeats 3] [--python-path DIR]

Builds a 1000-class student with random weights (time and memory do not depend on them) and
exports it with `python -m audionet_tf.export`, makes a 16 kHz mono WAV of pink noise of each
length with ffmpeg's lavfi source, then runs each command in a fresh process, as a user
would: `predict FILE --quiet --json out.json` (every window's top 5 written) and
`embed FILE --out DIR`. Peak memory is the process's high-water mark (VmHWM, from wait4);
time is the whole command's wall time, TensorFlow's start-up included. `--python-path` runs
the commands from another checkout of the package (to compare versions in one run).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def run(args: list[str], cwd: str, env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak resident MB of `python -m <args>` in a fresh process."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{stderr.decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


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
