"""Run the exported .tflite with LiteRT, no TensorFlow needed; from the project root:
    python examples/litert_app.py saved_models/demo sound.wav
"""
import sys
import wave

import numpy as np
from ai_edge_litert.interpreter import Interpreter


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
