"""File-level features for transfer evaluation: the student's (pooled, conv statistics) and log-mel/MFCC baselines."""
from __future__ import annotations

import numpy as np

from audionet_tf.serving.inference import conv_statistics, frame_audio, keras_runner


def student_features(model, wave: np.ndarray, window: int, hop: int, where: str) -> np.ndarray:
    """Per-file student features: the pooled 16 averaged over windows, and mean/std/max over time of the
    conv maps averaged over windows (16 + 48 values)."""
    windows, _ = frame_audio(wave, window, hop, where)
    maps = keras_runner(model, "conv")(windows)  # one trace for every file length
    pooled = maps.mean(axis=1)
    stats = np.concatenate([maps.mean(axis=1), maps.std(axis=1), maps.max(axis=1)], axis=1)
    return np.concatenate([pooled.mean(axis=0), stats.mean(axis=0)]).astype(np.float32)


def layer_features(model, wave: np.ndarray, window: int, hop: int, layer: str | None, where: str) -> np.ndarray:
    """Per-file features of a named layer averaged over the file's windows. audionet: None gives
    `student_features`, `pooled` the 16 pooled, `conv` the 48 conv statistics; SoundNet: the layer
    (None: its default) averaged over time within each window."""
    from audionet_tf.model.soundnet import DEFAULT_EMBEDDING, architecture_of

    architecture = architecture_of(model)
    if architecture != "audionet":
        layer = layer or DEFAULT_EMBEDDING[architecture]
    else:
        if layer is None:
            return student_features(model, wave, window, hop, where)
        if layer not in ("pooled", "conv"):
            raise ValueError(f"layer must be pooled or conv for audionet, got {layer!r}")
    windows, _ = frame_audio(wave, window, hop, where)
    if layer == "conv":
        values = conv_statistics(model, windows)
    else:
        values = np.concatenate([keras_runner(model, layer)(windows[i:i + 16]) for i in range(0, len(windows), 16)])
    return values.mean(axis=0).astype(np.float32)


def log_mel_features(wave: np.ndarray, sample_rate: int = 16000, n_mels: int = 40, n_mfcc: int = 13) -> np.ndarray:
    """Mean and std over time of log-mel energies and MFCCs (a classic baseline, 2·(40 + 13) values)."""
    import tensorflow as tf

    frame, step = 400, 160  # 25 ms windows every 10 ms
    if len(wave) < frame:
        wave = np.pad(wave, (0, frame - len(wave)))
    stft = tf.signal.stft(tf.constant(wave, tf.float32), frame, step, fft_length=512)
    power = tf.abs(stft) ** 2
    mel = tf.signal.linear_to_mel_weight_matrix(n_mels, 257, sample_rate, 60.0, 7800.0)
    log_mel = tf.math.log(tf.tensordot(power, mel, 1) + 1e-6)
    mfcc = tf.signal.mfccs_from_log_mel_spectrograms(log_mel)[:, :n_mfcc]
    parts = [tf.reduce_mean(log_mel, 0), tf.math.reduce_std(log_mel, 0), tf.reduce_mean(mfcc, 0),
             tf.math.reduce_std(mfcc, 0)]
    return np.concatenate([p.numpy() for p in parts]).astype(np.float32)
