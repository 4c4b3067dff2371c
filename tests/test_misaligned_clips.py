"""Real files that do not line up to the frame, made with ffmpeg: audio that ends before the video or the
section asked, video that ends before the audio, a file shorter than asked, 44.1 kHz stereo, 48 kHz, a
variable frame rate. Each is labelled as far as it goes and kept; one under `prepare.min_clip_seconds` is
refused with its reason. What a file really holds is read from the file here, independently of the code
under test: its whole audio decoded (no seek, no length), its video packets' timestamps (ffmpeg's framecrc)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audionet_tf.core import config as cfg
from audionet_tf.core.config import AudioConfig
from audionet_tf.dataset import catalog, reader, split
from audionet_tf.preparation import runner
from audionet_tf.preparation.labelling import NothingPrepared
from audionet_tf.preparation.manifest import make_clip as clip_entry
from audionet_tf.preparation.media import decode_clip, ffmpeg_exe, read_audio, stream_clip

AUDIO = AudioConfig()  # 16 kHz, a frame every 40 ms, 640-sample windows
PERIOD = AUDIO.frame_period_ms / 1000.0
SLACK = int(round(cfg.PrepareConfig().end_slack_ms * AUDIO.sample_rate / 1000))
REAL = Path(__file__).resolve().parents[1].parent / "shared" / "real" / "instruments"
# Variable frame rate: frames come in threes, 15 ms and 32 ms apart, then 105 ms to the next three (~19.7 fps);
# no frame starts within 1 ms of a 40 ms frame's middle, where the picture shown would be a tie.
VFR_PTS = "(floor(N/3)*0.152+eq(mod(N,3),1)*0.015+eq(mod(N,3),2)*0.047)/TB"


def encode(path: Path, video_s: float, audio_s: float, *, rate: int = 25, sample_rate: int = 16000,
           channels: int = 1, vfr: bool = False) -> str:
    """An MP4 (H.264 lossless, AAC) whose video and audio last as long as asked, each on its own: frame N of the
    source is grey level 16 + 2 (N mod 100) (so a picture tells which source frame it is), the audio noise
    (left) and a tone (right, for stereo), so that a window taken from the wrong place cannot match."""
    channel = ["0.5*(random(0)-0.5)", "0.3*sin(2*PI*1000*t)+0.1*(random(1)-0.5)"][:channels]
    video = "format=gray,geq=lum='16+2*mod(N,100)',format=yuv420p"
    extra = []
    if vfr:
        video += f",settb=1/1000,setpts='{VFR_PTS}'"
        extra = ["-fps_mode", "vfr", "-enc_time_base", "1/1000", "-video_track_timescale", "1000"]
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error",
                    "-f", "lavfi", "-i", f"color=c=black:s=32x24:r={rate}:d={video_s}",
                    "-f", "lavfi", "-i", f"aevalsrc=exprs='{'|'.join(channel)}':s={sample_rate}:d={audio_s}",
                    "-vf", video, *extra, "-c:v", "libx264", "-qp", "0", "-c:a", "aac", "-ac", str(channels),
                    "-movflags", "+faststart", str(path)], check=True, capture_output=True)
    return str(path)


def video_packets(path: str) -> np.ndarray:
    """Each video packet's (start, end) in seconds, in presentation order, as the container holds them (no
    decoding: ffmpeg copies the stream into its framecrc listing)."""
    out = subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", path, "-map", "0:v:0", "-c", "copy",
                          "-f", "framecrc", "-"], check=True, capture_output=True, text=True).stdout
    num, den = map(int, re.search(r"^#tb 0: (\d+)/(\d+)", out, re.M).groups())
    rows = [line.split(",") for line in out.splitlines() if line and not line.startswith("#")]
    pts = np.array(sorted((int(r[2]), int(r[3])) for r in rows), float) * num / den
    return np.stack([pts[:, 0], pts[:, 0] + pts[:, 1]], axis=1)


def truth(path: str, duration: float, audio: AudioConfig = AUDIO) -> dict:
    """What the file holds for the section [0, duration), from the file itself: its audio (the whole stream
    decoded at 16 kHz mono), where its video ends, and the frames that have both a picture (the video reaches
    the middle of the frame's period) and their whole window (at most the slack missing at its end)."""
    wave = read_audio(path, AUDIO.sample_rate)[: int(round(duration * AUDIO.sample_rate))]
    video_end = float(video_packets(path)[:, 1].max())
    asked = int(round(duration / PERIOD))
    pictures = sum(1 for k in range(asked) if (k + 0.5) * PERIOD <= video_end + 1e-9)
    section = int(round(duration * AUDIO.sample_rate))
    ends = split.window_starts(asked, audio) + audio.window_samples  # a window past the section holds zeros there
    whole = sum(1 for k in range(asked) if min(ends[k], section) <= len(wave) + SLACK)
    return {"wave": wave, "video_end": video_end, "pictures": pictures, "windows": whole, "asked": asked,
            "frames": min(pictures, whole)}


CASES = {  # name: (video seconds, audio seconds, asked seconds, encode options)
    "audio-0.14-s-early": (10.0, 9.86, 10.0, {}),  # the reported case: "audio is 9.86 s … shorter than 10.00 s"
    "audio-3-s-early": (10.0, 7.0, 10.0, {}),
    "video-early": (7.3, 10.0, 10.0, {"rate": 30}),
    "shorter-than-asked": (4.0, 4.0, 6.0, {}),
    "44.1-khz-stereo": (10.0, 9.93, 10.0, {"sample_rate": 44100, "channels": 2}),
    "48-khz": (10.0, 8.77, 10.0, {"sample_rate": 48000}),
    "variable-frame-rate": (5.0, 5.3, 6.0, {"sample_rate": 48000, "vfr": True, "rate": 20}),  # 100 source frames
    "lined-up": (6.0, 6.0, 6.0, {}),
}


def pipeline(root: Path, clips, out: str = "data", **values) -> cfg.PipelineConfig:
    return cfg.PipelineConfig(audio=AudioConfig(window_ms=values.pop("window_ms", 40.0)),
                              prepare=cfg.PrepareConfig(out=str(root / out), cache_dir=str(root / "cache"),
                                                        teacher="demo-colour", clips=tuple(clips), holdout="0",
                                                        retries=0, margin_s=0.0, audio_format="float32", **values))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Every case as one clip of one dataset, prepared once."""
    root = tmp_path_factory.mktemp("misaligned")
    clips = []
    for name, (video_s, audio_s, asked, options) in CASES.items():
        path = encode(root / f"{name}.mp4", video_s, audio_s, **options)
        clips.append({"url": path, "start": 0, "duration": asked, "label": name})
    config = pipeline(root, clips)
    summary = runner.prepare(config)
    ids = {c["label"]: clip_entry(c["url"], 0, c["duration"], c["label"], "test").id for c in clips}
    return root, config, summary, ids, {c["label"]: c for c in clips}


def check_clip(root: Path, record, entry: dict, out: str = "data", window_ms: float = 40.0,
               arrays: dict | None = None) -> dict:
    """A kept clip's examples (`arrays`: the dataset's, else read here) against the file: as many frames as it
    holds, each at k × 40 ms, each window the file's own samples (zeros only within the slack past its audio)."""
    audio = AudioConfig(window_ms=window_ms)
    held = truth(entry["url"], entry["duration"], audio)
    assert record.ok, record.error
    assert record.frames == held["frames"] and record.usable_s == pytest.approx(held["frames"] * PERIOD)
    arrays = arrays or reader.load_arrays(str(root / out))
    mine = arrays["clip_id"] == record.id
    arrays = {key: value[mine] for key, value in arrays.items()}
    order = np.argsort(arrays["time"])
    times = arrays["time"][order]
    frames = np.round(times / PERIOD).astype(int)
    np.testing.assert_allclose(times, frames * PERIOD, atol=1e-5)
    width = audio.window_samples
    starts = split.window_starts(held["frames"], audio)
    padded = np.pad(held["wave"], (width, 2 * width))  # the section's samples, zeros outside it
    for k, index in zip(frames, order):
        want = padded[int(starts[k]) + width: int(starts[k]) + 2 * width]
        np.testing.assert_allclose(arrays["audio"][index], want, atol=1e-6, err_msg=f"{record.id} frame {k}")
    return {"frames": frames, "held": held}


@pytest.mark.parametrize("name", ["audio-0.14-s-early", "audio-3-s-early", "video-early", "shorter-than-asked",
                                  "44.1-khz-stereo", "48-khz", "variable-frame-rate"])
def test_a_clip_that_does_not_line_up_is_labelled_as_far_as_it_goes_and_kept(prepared, name):
    root, _, summary, ids, entries = prepared
    record = {c.id: c for c in catalog.read_description(str(root / "data")).clips}[ids[name]]
    found = check_clip(root, record, entries[name])
    held = found["held"]
    assert held["frames"] < held["asked"]  # the case really is short
    # Every frame the file holds is there, once: no frame dropped before the end, none invented after it.
    assert list(found["frames"]) == list(range(held["frames"]))
    assert record.examples == held["frames"] and record.shortened
    assert ids[name] in summary.written and ids[name] in summary.shortened and not summary.failed
    # The reason names what ends first (when both end on the same frame, either).
    video_s, audio_s, asked, _ = CASES[name]
    reasons = {"audio": f"audio ends {audio_s:.2f} s into the {asked:.2f} s asked",
               "video": f"video has pictures for {held['pictures']} of the {held['asked']} frames asked"}
    first = [what for what, count in (("audio", held["windows"]), ("video", held["pictures"]))
             if count == held["frames"]]
    assert any(reasons[what] in record.shortened for what in first), (record.shortened, first)


def test_a_clip_that_lines_up_keeps_every_frame_and_says_nothing(prepared):
    root, _, summary, ids, entries = prepared
    record = {c.id: c for c in catalog.read_description(str(root / "data")).clips}[ids["lined-up"]]
    found = check_clip(root, record, entries["lined-up"])
    assert len(found["frames"]) == 150 == found["held"]["asked"] and record.shortened is None
    assert ids["lined-up"] not in summary.shortened


def test_a_shortened_clip_is_done_for_the_next_run(prepared):
    root, config, summary, ids, _ = prepared
    again = runner.prepare(config)
    assert sorted(again.skipped) == sorted(ids.values()) and not again.written and not again.failed
    assert catalog.read_description(str(root / "data")).examples() == sum(summary.examples.values())


def test_each_frame_shows_the_picture_on_screen_at_the_middle_of_its_period_at_a_variable_frame_rate(prepared):
    """Source frames 15, 32 and 105 ms apart: frame k is the source frame on screen at (k + 1/2) × 40 ms, read
    whole and in chunks alike; the last frame is the last whose middle the video reaches."""
    _, _, _, _, entries = prepared
    path, duration = entries["variable-frame-rate"]["url"], entries["variable-frame-rate"]["duration"]
    packets = video_packets(path)
    gaps = np.diff(packets[:, 0])
    assert len(set(np.round(gaps, 3))) >= 3  # really variable
    middles = (np.arange(int(round(duration / PERIOD))) + 0.5) * PERIOD
    assert np.abs(middles[:, None] - packets[None, :, 0]).min() > 1e-3  # no middle on a source frame's start
    held = truth(path, duration)
    whole = decode_clip(path, 0.0, duration, AUDIO, (24, 32), "squash")
    chunks = list(stream_clip(path, 0.0, duration, AUDIO, (24, 32), "squash", chunk_frames=16))
    assert len(whole.frames) == held["frames"] == sum(len(c.frames) for c in chunks)
    np.testing.assert_array_equal(np.concatenate([c.frames for c in chunks]), whole.frames)
    # The source frames' own pictures, decoded here one by one at their own times (no frame-rate filter).
    raw = subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", path, "-map", "0:v:0", "-fps_mode",
                          "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], check=True,
                         capture_output=True).stdout
    source = np.frombuffer(raw, np.uint8).reshape(-1, 24, 32, 3).reshape(-1, 24 * 32 * 3).mean(axis=1)
    assert len(source) == len(packets) and len(np.unique(np.round(source))) == len(source)
    for k, frame in enumerate(whole.frames):
        shown = int(np.flatnonzero(packets[:, 0] < middles[k]).max())
        assert abs(frame.mean() - source[shown]) < 0.6, f"frame {k}: {frame.mean():.1f}, source {shown}"
    assert np.allclose(whole.times, np.arange(held["frames"]) * PERIOD)


def test_a_held_out_time_part_of_a_shortened_clip_is_its_own_end_and_shares_no_sample(tmp_path):
    """The last quarter of what a clip really holds is held out (not of what was asked), with 80 ms windows and
    the guard, for a clip of one chunk and for one streamed in chunks (its length measured first)."""
    path = encode(tmp_path / "short.mp4", 4.0, 3.0)
    entry = {"url": path, "start": 0, "duration": 4.0, "label": "short"}
    clip_id = clip_entry(path, 0, 4.0, "short", "test").id
    for out, chunk_frames in (("whole", 256), ("streamed", 16)):
        config = pipeline(tmp_path, [entry], out, window_ms=80.0, holdout_part="0.25", chunk_frames=chunk_frames)
        runner.prepare(config)
        record = catalog.read_description(str(tmp_path / out)).clips[0]
        found = check_clip(tmp_path, record, entry, out, window_ms=80.0)
        frames = found["held"]["frames"]
        assert frames == 74  # audio to 3.00 s: the 75th window (to 3.02 s) would run past it
        part = record.held_out_part
        first = int(np.ceil(frames * 0.75 - 1e-6))
        assert (part["start_s"], part["end_s"], part["frames"]) == pytest.approx(
            (first * PERIOD, frames * PERIOD, frames - first)), (out, part)
        ranges = {}
        for name in ("train", "validation"):
            arrays = reader.load_arrays(str(tmp_path / out), name, clip_ids=[clip_id])
            k = np.round(arrays["time"] / PERIOD).astype(int)
            starts = split.window_starts(frames, AudioConfig(window_ms=80.0))[k]
            ranges[name] = (starts, starts + 1280)
        assert len(ranges["validation"][0]) == part["frames"]
        assert ranges["train"][1].max() <= ranges["validation"][0].min()  # no sample on both sides
        assert len(ranges["train"][0]) == first - part["guard_frames"]


@pytest.mark.slow
def test_a_clip_under_the_minimum_is_refused_with_its_reason_and_the_run_goes_on(tmp_path):
    """`prepare` as a user runs it: a clip left with 0.6 s of the 10 s asked is under the 1 s minimum: one
    console line and its record say why, the other clip is written, exit 0; alone, nothing is prepared; with a
    lower `--min-clip-seconds` it is kept."""
    short = encode(tmp_path / "short.mp4", 10.0, 0.6)
    good = encode(tmp_path / "good.mp4", 2.0, 2.0)
    short_id = clip_entry(short, 0, 10.0, "short", "test").id
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}

    def run(clips, out, *flags):
        manifest = tmp_path / f"{out}.csv"
        manifest.write_text("url,start,duration,label\n" + "".join(f"{p},0,{d},{label}\n" for p, d, label in clips))
        return subprocess.run([sys.executable, "-m", "audionet_tf.prepare", "--manifest", str(manifest),
                               "--out", str(tmp_path / out), "--cache-dir", str(tmp_path / "cache"),
                               "--teacher", "demo-colour", "--holdout", "0", "--retries", "0", "--quiet", *flags],
                              env=env, capture_output=True, text=True, timeout=300)

    result = run([(short, 10, "short"), (good, 2, "good")], "both")
    assert result.returncode == 0, result.stderr[-3000:]
    reason = "audio ends 0.60 s into the 10.00 s asked: 15 frames (0.60 s) can be labelled, under the minimum of 1 s"
    lines = [line for line in result.stderr.splitlines() if short_id in line and "failed" in line]
    assert len(lines) == 1 and reason in lines[0], result.stderr[-3000:]
    assert f"failed {short_id}: " in result.stdout and reason in result.stdout
    records = {c.label: c for c in catalog.read_description(str(tmp_path / "both")).clips}
    assert records["short"].status == "failed" and reason in records["short"].error
    assert records["good"].ok and records["good"].frames == 50
    # Alone, nothing can be prepared: the command's error (exit 2, as for any AudioNetError) lists the reason.
    with pytest.raises(NothingPrepared, match=re.escape(reason)):
        runner.prepare(pipeline(tmp_path, [{"url": short, "start": 0, "duration": 10, "label": "short"}], "alone"))
    kept = run([(short, 10, "short")], "kept", "--min-clip-seconds", "0.5")
    assert kept.returncode == 0, kept.stderr[-3000:]
    assert f"kept shorter {short_id}: 0.60 of the 10.00 s asked (15 frames)" in kept.stdout
    assert catalog.read_description(str(tmp_path / "kept")).clips[0].frames == 15


@pytest.mark.slow
@pytest.mark.skipif(not REAL.is_dir(), reason=f"the real recordings are not here ({REAL})")
def test_real_recordings_paired_with_a_video_are_all_kept_as_far_as_they_go(tmp_path):
    """Every real instrument recording (vorbis, 44.1 kHz, mono or stereo, lengths that are no multiple of 40 ms)
    as the sound of a video that outlasts it (half of them) or ends with it, asked for longer than either:
    every clip is kept with exactly the frames the file holds, each window the recording's own samples."""
    recordings = sorted(REAL.glob("*.ogg"))
    assert recordings
    clips = []
    for index, recording in enumerate(recordings):
        path = tmp_path / f"{recording.stem}.mkv"
        video = "color=c=red:s=32x24:r=25:d=13"
        subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i", video, "-i", str(recording),
                        "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-c:a", "copy",
                        *(["-shortest"] if index % 2 else []), str(path)], check=True, capture_output=True)
        clips.append({"url": str(path), "start": 0, "duration": 12.5, "label": recording.stem})
    summary = runner.prepare(pipeline(tmp_path, clips))
    assert not summary.failed and len(summary.written) == len(recordings)
    records = {c.label: c for c in catalog.read_description(str(tmp_path / "data")).clips}
    arrays = reader.load_arrays(str(tmp_path / "data"))
    for entry in clips:
        found = check_clip(tmp_path, records[entry["label"]], entry, arrays=arrays)
        assert list(found["frames"]) == list(range(found["held"]["frames"]))
        assert records[entry["label"]].shortened  # no recording lasts 12.5 s


@pytest.mark.slow
def test_beam_keeps_a_shortened_clip_as_the_single_process_run_does(prepared, tmp_path):
    """The Beam runner shares the labelling core: the same shortened clip gives the same examples, byte for byte,
    the same record, and its summary lists it as kept shorter."""
    pytest.importorskip("apache_beam", reason="the beam extra is part of the test install")
    from committed import example_multiset

    from audionet_tf.preparation.beam import run_beam

    root, _, _, ids, entries = prepared
    clips = [entries["audio-0.14-s-early"], entries["lined-up"]]
    single = pipeline(tmp_path, clips, "single")
    runner.prepare(single)
    beam = pipeline(tmp_path, clips, "beam", runner="DirectRunner")
    summary = run_beam(beam, [])
    short = ids["audio-0.14-s-early"]
    assert sorted(summary.written) == sorted([short, ids["lined-up"]]) and list(summary.shortened) == [short]
    assert "246 frames" in summary.shortened[short] and "audio ends 9.86 s" in summary.shortened[short]
    assert example_multiset(tmp_path / "beam") == example_multiset(tmp_path / "single")
    by_id = {out: {c.id: c for c in catalog.read_description(str(tmp_path / out)).clips} for out in ("single", "beam")}
    for clip_id in (short, ids["lined-up"]):
        a, b = by_id["single"][clip_id], by_id["beam"][clip_id]
        assert (a.frames, a.usable_s, a.shortened, a.examples) == (b.frames, b.usable_s, b.shortened, b.examples)
