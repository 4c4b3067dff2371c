"""Windows are where their frame is: signals whose every sample tells its position, so a window that is
shifted by one sample, reversed or taken from the wrong frame fails."""
import subprocess

import numpy as np
import pytest

from audionet_tf.core import config as cfg
from audionet_tf.core.config import AudioConfig
from audionet_tf.dataset import reader
from audionet_tf.preparation import runner
from audionet_tf.preparation.media import ffmpeg_exe, frame_windows, read_audio

PERIOD = 997  # a sawtooth of prime period: no window length or hop is a multiple of it


def expected_window(signal: np.ndarray, frame: int, audio: AudioConfig) -> np.ndarray:
    """The README's rule: frame k's window of W samples is centred on the middle of [k P, (k + 1) P),
    samples outside the clip are zeros; computed sample by sample."""
    width = audio.window_samples
    centre = int(np.floor((frame + 0.5) * audio.frame_period_ms * audio.sample_rate / 1000 + 0.5))
    out = np.zeros(width, np.float32)
    for j in range(width):
        i = centre - width // 2 + j
        if 0 <= i < len(signal):
            out[j] = signal[i]
    return out


@pytest.mark.parametrize("window_ms", [40.0, 80.0, 20.0, 30.0, 25.0, 120.0])
def test_frame_windows_take_the_samples_of_their_frame(window_ms):
    audio = AudioConfig(window_ms=window_ms)
    ramp = np.arange(1, 16000 * 2 + 1, dtype=np.float32)  # sample i holds i + 1; 0 marks padding
    frames = 50
    windows = frame_windows(ramp, frames, audio)
    assert windows.shape == (frames, audio.window_samples)
    for k in range(frames):
        np.testing.assert_array_equal(windows[k], expected_window(ramp, k, audio), err_msg=f"frame {k}")
    if window_ms == 40.0:  # the default: window k is exactly [640 k, 640 k + 640)
        assert windows[3, 0] == 640 * 3 + 1 and windows[3, -1] == 640 * 4
    if window_ms == 80.0:  # 20 ms of the frames either side; zeros before the clip's start
        assert windows[0, 319] == 0 and windows[0, 320] == 1 and windows[5, 0] == 640 * 5 - 320 + 1


def test_frame_windows_of_a_short_clip_are_zero_padded_at_the_end():
    audio = AudioConfig(window_ms=80.0)
    ramp = np.arange(1, 1000 + 1, dtype=np.float32)
    windows = frame_windows(ramp, 2, audio)
    for k in range(2):
        np.testing.assert_array_equal(windows[k], expected_window(ramp, k, audio))
    assert frame_windows(ramp, 0, audio).shape == (0, audio.window_samples)


def sawtooth(samples: int) -> np.ndarray:
    """The clip's audio as written: 0.9 * (n mod 997) / 997 - 0.45, quantised to 16 bits."""
    n = np.arange(samples)
    return np.round((0.9 * (n % PERIOD) / PERIOD - 0.45) * 32767).astype(np.float32) / 32768


@pytest.fixture(scope="module")
def sawtooth_clip(tmp_path_factory):
    """A 2 s clip (red video, sawtooth PCM audio: lossless, so every sample is known)."""
    path = tmp_path_factory.mktemp("alignment") / "saw.mkv"
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error",
                    "-f", "lavfi", "-i", "color=c=red:size=32x24:rate=25:duration=2",
                    "-f", "lavfi", "-i", f"aevalsrc=0.9*mod(n\\,{PERIOD})/{PERIOD}-0.45:s=16000:d=2",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "pcm_s16le", "-t", "2", str(path)],
                   check=True, capture_output=True)
    decoded = read_audio(str(path), 16000)
    assert len(decoded) == 32000
    np.testing.assert_allclose(decoded, sawtooth(32000), atol=1.5 / 32768)  # the decoder itself is exact
    return str(path)


@pytest.mark.parametrize("window_ms", [40.0, 80.0])
def test_written_dataset_holds_each_frames_window(sawtooth_clip, tmp_path, window_ms):
    """prepare → TFRecords → read back: every example's audio is its frame's window of the clip."""
    audio = AudioConfig(window_ms=window_ms)
    config = cfg.PipelineConfig(audio=audio, prepare=cfg.PrepareConfig(
        out=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), teacher="demo-colour", holdout="0.0",
        clips=({"url": sawtooth_clip, "start": 0.5, "duration": 1.2, "label": "saw"},), retries=0, margin_s=0.2))
    assert len(runner.prepare(config).written) == 1
    arrays = reader.load_arrays(str(tmp_path / "data"))
    assert len(arrays["audio"]) == 30 and arrays["audio"].shape[1] == audio.window_samples
    # The section starts 0.5 s (8000 samples) into the clip and lasts 1.2 s.
    section = sawtooth(32000)[8000:8000 + 19200]
    order = np.argsort(arrays["time"])
    times = arrays["time"][order]
    np.testing.assert_allclose(times, np.arange(30) * 0.04, atol=1e-6)
    for k, index in enumerate(order):
        np.testing.assert_allclose(arrays["audio"][index], expected_window(section, k, audio), atol=1.5 / 32768,
                                   err_msg=f"example at {times[k]:.2f} s")
