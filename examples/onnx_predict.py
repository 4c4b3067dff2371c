"""Run the exported student.onnx with onnxruntime and numpy alone (no TensorFlow); from the project root:
    python examples/onnx_predict.py saved_models/demo/student.onnx sound.wav [seconds.json]
"""
import json
import sys
import wave

import numpy as np
import onnxruntime


def read_wav(path: str, rate: int) -> np.ndarray:
    """A mono 16-bit PCM WAV at `rate` as float32 in [-1, 1]; any other file is refused."""
    try:
        with wave.open(path) as f:
            found, channels, width = f.getframerate(), f.getnchannels(), f.getsampwidth()
            frames = f.readframes(f.getnframes())
    except (wave.Error, EOFError, OSError) as exc:
        sys.exit(f"{path}: cannot read it as a PCM WAV file ({exc}); expected {rate} Hz mono 16-bit PCM")
    if (found, channels, width) != (rate, 1, 2):
        sys.exit(f"{path}: {found} Hz, {channels} channel(s), {8 * width}-bit; expected {rate} Hz mono 16-bit PCM "
                 f"(convert it: ffmpeg -i {path} -ar {rate} -ac 1 -c:a pcm_s16le out.wav)")
    return np.frombuffer(frames, np.int16).astype(np.float32) / 32768.0


model_path, wav_path = sys.argv[1], sys.argv[2]
session = onnxruntime.InferenceSession(model_path, providers=["CPUExecutionProvider"])
meta = session.get_modelmeta().custom_metadata_map  # what the export wrote into the model
labels = json.loads(meta["class_names"])
rate, window, hop = int(meta["sample_rate"]), int(meta["window_samples"]), int(meta["hop_samples"])

audio = read_wav(wav_path, rate)
starts = np.arange(0, len(audio) - window + 1, hop)  # window k covers samples [k hop, k hop + window)
windows = np.stack([audio[s:s + window] for s in starts])
logits, embedding = session.run(["logits", "embedding"], {"windows": windows})
scores = np.exp(logits - logits.max(axis=1, keepdims=True))
scores /= scores.sum(axis=1, keepdims=True)  # softmax: each window's probabilities

seconds = []
for second in np.unique(starts // rate):  # each second: its windows' probabilities averaged, as predict does
    mean = scores[starts // rate == second].mean(axis=0)
    top = np.argsort(-mean)[:5]
    seconds.append({"second": int(second),
                    "top": [{"class": labels[i], "index": int(i), "probability": float(mean[i])} for i in top]})
    print(f"{second:4d} s  " + ", ".join(f"{labels[i]} {mean[i]:.2f}" for i in top))
print("embeddings:", embedding.shape)
if len(sys.argv) > 3:
    with open(sys.argv[3], "w") as handle:
        json.dump(seconds, handle, indent=1)
