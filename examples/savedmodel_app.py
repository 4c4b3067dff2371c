"""Use an exported AudioNet with TensorFlow alone; from the project root:
    python examples/savedmodel_app.py saved_models/demo sound.wav
"""
import sys
import wave

import numpy as np
import tensorflow as tf


def read_wav(path: str) -> np.ndarray:
    """A 16 kHz mono 16-bit PCM WAV as float32 in [-1, 1]; any other file is refused."""
    try:
        with wave.open(path) as f:
            rate, channels, width = f.getframerate(), f.getnchannels(), f.getsampwidth()
            frames = f.readframes(f.getnframes())
    except (wave.Error, EOFError, OSError) as exc:
        sys.exit(f"{path}: cannot read it as a PCM WAV file ({exc}); expected 16000 Hz mono 16-bit PCM")
    if (rate, channels, width) != (16000, 1, 2):
        sys.exit(f"{path}: {rate} Hz, {channels} channel(s), {8 * width}-bit; expected 16000 Hz mono 16-bit PCM "
                 f"(convert it: ffmpeg -i {path} -ar 16000 -ac 1 -c:a pcm_s16le out.wav)")
    return np.frombuffer(frames, np.int16).astype(np.float32) / 32768.0


export_dir, wav_path = sys.argv[1], sys.argv[2]
audio = read_wav(wav_path)
labels = open(f"{export_dir}/labels.txt").read().splitlines()

model = tf.saved_model.load(export_dir)
timeline = model.signatures["timeline"](waveform=tf.constant(audio))  # a waveform in, per-window answers out
for t, scores in zip(timeline["times"].numpy(), timeline["scores"].numpy()):
    print(f"{t:6.2f} s  {labels[int(np.argmax(scores))]}")
print("embeddings:", timeline["embeddings"].shape)
print("logits of two windows:", model(audio[:1280].reshape(2, 640)).shape)  # the model called on windows
