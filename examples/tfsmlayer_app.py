"""The export inside another Keras model; from the project root:
    python examples/tfsmlayer_app.py saved_models/demo sound.wav
"""
import sys
import wave

import keras
import numpy as np


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
windows = audio[: len(audio) // 640 * 640].reshape(-1, 640)

audionet = keras.layers.TFSMLayer(export_dir)  # windows [N, L] -> logits [N, C]
print(audionet(windows[:3]).shape)
features = keras.layers.TFSMLayer(export_dir, call_endpoint="embed")  # frozen AudioNet features
inputs = keras.Input((640,))
hidden = features(inputs)["embedding"]
outputs = keras.layers.Dense(2, activation="softmax")(hidden)  # your own classifier on top
model = keras.Model(inputs, outputs)
print(model.predict(windows, verbose=0).shape)
