"""Use an exported AudioNet with TensorFlow alone: python savedmodel_app.py saved_models/demo sound.wav"""
import sys
import wave

import numpy as np
import tensorflow as tf

export_dir, wav_path = sys.argv[1], sys.argv[2]
with wave.open(wav_path) as f:  # 16 kHz mono 16-bit PCM
    audio = np.frombuffer(f.readframes(f.getnframes()), np.int16).astype(np.float32) / 32768.0
labels = open(f"{export_dir}/labels.txt").read().splitlines()

model = tf.saved_model.load(export_dir)
timeline = model.signatures["timeline"](waveform=tf.constant(audio))
for t, logits in zip(timeline["times"].numpy(), timeline["logits"].numpy()):
    print(f"{t:6.2f} s  {labels[int(np.argmax(logits))]}")
embedding = model.signatures["embed"](windows=tf.constant(audio[None, :640]))["embedding"]
print("embedding of the first window:", embedding.shape)
