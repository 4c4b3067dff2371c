"""predict and embed with SoundNet-8 on long recordings: peak memory against recording length, and time.

    python benchmarks/soundnet_memory.py [--minutes 10 60] [--hop-ms 1000]

Exports a 1000-class SoundNet-8 with random weights (memory and time do not depend on them), makes
a 16 kHz mono WAV of pink noise of each length with ffmpeg's lavfi source, then runs each command
in a fresh process as a user would: `predict FILE --hop-ms H --quiet --json out.json` (every
window's top 5 written) and `embed FILE --hop-ms H --out DIR` (pool5, 256 numbers a window). Each
window is 209,374 samples (13.09 s) centred on its frame; `--hop-ms 1000` gives one a second (the
default 40 ms hop would be 90,000 windows of 0.29 G multiply-adds for an hour). Peak memory is the
process's high-water mark (VmHWM, read at its exit, `long_recording.py`'s way); time is the whole
command's wall time, TensorFlow's start-up included. The load is printed beside each row.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine  # noqa: E402
from long_recording import ENV, run  # noqa: E402


def main() -> None:
    """Print one table row per command and length."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[10, 60])
    parser.add_argument("--hop-ms", type=float, default=1000.0)
    args = parser.parse_args()
    print(f"CPU: {machine.cpu_description()}; {machine.load()}")
    with tempfile.TemporaryDirectory() as work:
        build = ("import keras\n"
                 "from audionet_tf.model.student import build_student\n"
                 "from audionet_tf.serving.export import export_model\n"
                 "keras.utils.set_random_seed(0)\n"
                 "model = build_student('soundnet8', 209374, 1000)\n"
                 "export_model(model, 'export', class_names=[f'class_{i}' for i in range(1000)], "
                 "window_samples=209374)\n")
        subprocess.run([sys.executable, "-c", build], cwd=work, env=ENV, check=True, capture_output=True)
        import imageio_ffmpeg

        print(f"| command (SoundNet-8, 1000 classes, hop {args.hop_ms:g} ms) | recording | windows | wall time "
              f"| × real time | peak memory | load before |")
        print("|---|---|---|---|---|---|---|")
        for minutes in args.minutes:
            wav = os.path.join(work, f"noise{minutes:g}.wav")
            subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i",
                            "anoisesrc=color=pink:amplitude=0.3:sample_rate=16000:seed=1", "-t", str(60 * minutes),
                            "-ac", "1", "-c:a", "pcm_s16le", wav], check=True)
            hop = ["--hop-ms", f"{args.hop_ms:g}"]
            commands = {
                "predict --quiet --json": ["audionet_tf.predict", wav, "--model", "export", *hop, "--quiet",
                                           "--json", "out.json", "--overwrite"],
                "embed": ["audionet_tf.embed", wav, "--model", "export", *hop, "--out", "emb", "--overwrite"],
            }
            windows = int(60 * minutes * 1000 / args.hop_ms)
            for name, command in commands.items():
                load = machine.load()
                seconds, peak = run(command, work, ENV)
                print(f"| {name} | {minutes:g} min | {windows:,} | {seconds:.1f} s | {60 * minutes / seconds:.0f}× "
                      f"| {peak:,.0f} MB | {load} |", flush=True)
            os.remove(wav)


if __name__ == "__main__":
    main()
