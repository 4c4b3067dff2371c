"""Run the exported .tflite with LiteRT (no TensorFlow): python litert_app.py saved_models/demo sound.wav"""
import sys
import wave

import numpy as np
from ai_edge_litert.interpreter import Interpreter

export_dir, wav_path = sys.argv[1], sys.argv[2]
with wave.open(wav_path) as f:  # 16 kHz mono 16-bit PCM
    audio = np.frombuffer(f.readframes(f.getnframes()), np.int16).astype(np.float32) / 32768.0
labels = open(f"{export_dir}/labels.txt").read().splitlines()
windows = audio[: len(audio) // 640 * 640].reshape(-1, 640)  # one window per 40 ms

for name in ("model.tflite", "model_int8.tflite"):
    interpreter = Interpreter(model_path=f"{export_dir}/{name}")
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, list(windows.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, windows)
    interpreter.invoke()
    logits = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    print(name, [labels[i] for i in logits.argmax(axis=1)[:5]])
