"""The export inside another Keras model: python tfsmlayer_app.py saved_models/demo sound.wav"""
import sys
import wave

import keras
import numpy as np

export_dir, wav_path = sys.argv[1], sys.argv[2]
with wave.open(wav_path) as f:  # 16 kHz mono 16-bit PCM
    audio = np.frombuffer(f.readframes(f.getnframes()), np.int16).astype(np.float32) / 32768.0
windows = audio[: len(audio) // 640 * 640].reshape(-1, 640)

features = keras.layers.TFSMLayer(export_dir, call_endpoint="embed")  # frozen AudioNet features
inputs = keras.Input((640,))
hidden = features(inputs)["embedding"]
outputs = keras.layers.Dense(2, activation="softmax")(hidden)  # your own classifier on top
model = keras.Model(inputs, outputs)
print(model.predict(windows, verbose=0).shape)
