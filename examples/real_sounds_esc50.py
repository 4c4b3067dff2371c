"""Make an ESC-50-style labelled set from the real recordings in ../shared/real: each recording is a class,
cut into five consecutive segments, segment i in fold i (so a fold holds one part of every recording).

    python examples/real_sounds_esc50.py ../shared/real real-esc50
    python -m audionet_tf.evaluate transfer --model runs/NAME --dataset real-esc50

Writes real-esc50/meta/esc50.csv (filename,fold,target,category) and real-esc50/audio/*.wav, each segment at
its recording's own sample rate and channels (cut by ffmpeg, not resampled).
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys

from audionet_tf.preparation.media import read_audio

FOLDS = 5


def main(argv: list[str]) -> int:
    """Command-line entry point: the real folder and the output folder."""
    import imageio_ffmpeg

    real, out = argv[1], argv[2]
    sources = sorted(os.path.join(real, sub, name) for sub in ("instruments", "sounds")
                     for name in os.listdir(os.path.join(real, sub)) if name.endswith(".ogg"))
    os.makedirs(os.path.join(out, "audio"), exist_ok=True)
    os.makedirs(os.path.join(out, "meta"), exist_ok=True)
    rows = []
    for target, path in enumerate(sources):
        category = os.path.splitext(os.path.basename(path))[0]
        seconds = len(read_audio(path, 16000)) / 16000
        part = seconds / FOLDS
        for fold in range(1, FOLDS + 1):
            name = f"{fold}-{category}.wav"
            subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", path, "-ss",
                            f"{(fold - 1) * part:.3f}", "-t", f"{part:.3f}", os.path.join(out, "audio", name)],
                           check=True)
            rows.append({"filename": name, "fold": fold, "target": target, "category": category})
    tmp = os.path.join(out, "meta", "esc50.csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["filename", "fold", "target", "category"])
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, os.path.join(out, "meta", "esc50.csv"))
    print(f"{len(rows)} clips of {len(sources)} recordings in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
