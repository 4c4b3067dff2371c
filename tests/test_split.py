"""Held-out data: the time split and its guard, read back from real datasets made with ffmpeg, and the
seed-shaped case (each clip its own class) where only a time split can measure anything."""
import json
import os
import re
import subprocess

import numpy as np
import pytest

from audionet_tf.commands import train
from audionet_tf.core import config as cfg
from audionet_tf.core.config import AudioConfig
from audionet_tf.core.errors import AudioNetError
from audionet_tf.dataset import catalog, reader, split
from audionet_tf.evaluation import evaluate, report
from audionet_tf.preparation import runner
from audionet_tf.preparation.manifest import make_clip
from audionet_tf.preparation.media import ffmpeg_exe, read_audio
from audionet_tf.preparation.teacher import DEMO_COLOURS

TONES = (220.0, 440.0, 880.0, 1760.0, 330.0, 3000.0)


def write_clip(path, colour, frequency, seconds, seed):
    """A clip with one colour on screen and a tone over white noise (the noise makes every window unique)."""
    rgb = "".join(f"{int(round(255 * c)):02x}" for c in colour)
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error",
                    "-f", "lavfi", "-i", f"color=c=0x{rgb}:s=64x48:r=25:d={seconds}",
                    "-f", "lavfi", "-i", f"sine=frequency={frequency}:sample_rate=16000:duration={seconds}",
                    "-f", "lavfi", "-i", f"anoisesrc=color=white:amplitude=0.2:sample_rate=16000:"
                                         f"duration={seconds}:seed={seed}",
                    "-filter_complex", "[1:a]volume=0.4[t];[t][2:a]amix=inputs=2:normalize=0[a]",
                    "-map", "0:v", "-map", "[a]", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
                    "-b:a", "128k", "-shortest", str(path)], check=True)


@pytest.fixture(scope="module")
def seed_shaped(tmp_path_factory):
    """Six clips of 4 s, each its own class (a demo-teacher colour and its own tone): the slides' shape."""
    root = tmp_path_factory.mktemp("seedlike")
    entries = []
    for index, (kind, colour) in enumerate(DEMO_COLOURS.items()):
        path = root / f"{kind}.mp4"
        write_clip(path, colour, TONES[index], 4.0, seed=index + 1)
        entries.append({"url": str(path), "start": 0, "duration": 4, "label": kind})
    return root, tuple(entries)


def pipeline(root, clips, out, **values):
    return cfg.PipelineConfig(audio=AudioConfig(window_ms=values.pop("window_ms", 40.0)),
                              prepare=cfg.PrepareConfig(out=str(root / out), cache_dir=str(root / "cache"),
                                                        teacher="demo-colour", clips=clips, retries=0,
                                                        margin_s=0.0, shard_size=64, **values))


def sample_ranges(windows, wave, width):
    """Where each window lies in the clip's audio, found by matching its samples (not from its time field)."""
    padded = np.pad(wave.astype(np.float64), (width, width))
    size = 1 << int(np.ceil(np.log2(len(padded) + width)))
    spectrum = np.fft.rfft(padded, size)
    energy = np.concatenate([[0.0], np.cumsum(padded ** 2)])
    sliding = energy[width:] - energy[:-width]  # ||segment||^2 at each start
    starts = []
    for window in windows:
        # ||segment - window||^2 = ||segment||^2 - 2 segment.window + ||window||^2, for every start at once.
        dot = np.fft.irfft(spectrum * np.conj(np.fft.rfft(window.astype(np.float64), size)), size)
        errors = sliding - 2 * dot[:len(sliding)] + float(window @ window)
        best = int(errors.argmin())
        assert errors[best] / width < 1e-6  # an exact match (int16 rounding only)
        starts.append(best - width)
    starts = np.array(starts)
    return np.stack([starts, starts + width], axis=1)


def test_frame_splits_keep_train_and_held_out_windows_apart_for_wide_windows():
    for window_ms in (40.0, 80.0, 200.0):
        audio = AudioConfig(window_ms=window_ms)
        for at in split.PLACES:
            labels, record = split.frame_splits(100, audio, split.TimeSplit(0.2, False, at), False)
            starts = split.window_starts(100, audio)
            used = {part: set() for part in ("train", "validation")}
            for k, label in enumerate(labels):
                if label is not None:
                    used[label].update(range(starts[k], starts[k] + audio.window_samples))
            assert used["train"] and used["validation"]
            assert not used["train"] & used["validation"], (window_ms, at)
            assert labels.count("validation") == record["frames"] == 20
            # Only the frames whose window reaches into the held-out part are dropped.
            reach = int(np.ceil((audio.window_samples - audio.hop_samples) / audio.hop_samples))
            sides = 1 if at in ("start", "end") else 2
            assert record["guard_frames"] == labels.count(None) == sides * reach


def test_time_split_parsing_and_refusals():
    assert split.parse_time_split("", "end") is None and split.parse_time_split("0") is None
    assert split.parse_time_split("0.2", "start") == split.TimeSplit(0.2, False, "start")
    assert split.parse_time_split("2s") == split.TimeSplit(2.0, True, "end")
    for bad in ("1.5", "abc", "-2s"):
        with pytest.raises(AudioNetError, match="holdout_part"):
            split.parse_time_split(bad)
    with pytest.raises(AudioNetError, match="no frame to train on"):
        split.frame_splits(25, AudioConfig(), split.TimeSplit(5.0, True), False, "short-clip")


def test_holdout_names_clip_ids_or_plain_video_ids_and_lists_the_valid_ones(seed_shaped):
    _, entries = seed_shaped
    clips = [make_clip(e["url"], e["start"], e["duration"], e["label"], "test") for e in entries]
    assert split.holdout_ids(clips, clips[1].video_id) == {clips[1].id}
    assert split.holdout_ids(clips, f"{clips[0].id}, {clips[2].video_id}") == {clips[0].id, clips[2].id}
    with pytest.raises(AudioNetError) as info:
        split.holdout_ids(clips, "67GZuUxV27w")
    assert "67GZuUxV27w" in str(info.value) and "<video id>_<start ms>_<duration ms>" in str(info.value)
    assert all(c.id in str(info.value) for c in clips)


@pytest.mark.slow
def test_no_audio_sample_of_a_held_out_window_reaches_training_with_80_ms_windows(seed_shaped):
    root, entries = seed_shaped
    config = pipeline(root, entries[:2], "wide", window_ms=80.0, holdout="0", holdout_part="0.25")
    runner.prepare(config, weights=None)
    description = catalog.read_description(str(root / "wide"))
    assert description.spec.window_samples == 1280
    settings = description.extra["settings"]
    assert (settings["holdout_part"], settings["holdout_at"], settings["frame_fit"]) == ("0.25", "end", "crop")
    for clip in description.clips:
        assert clip.split == "time"
        part = clip.held_out_part
        assert (part["start_s"], part["end_s"], part["frames"]) == (3.0, 4.0, 25)
        assert part["guard_frames"] == 1  # an 80 ms window reaches one 40 ms frame further
        assert clip.examples == 100 - 1
        wave = read_audio(clip.url, 16000, 0.0, 4.0)
        ranges = {}
        for name in ("train", "validation"):
            arrays = reader.load_arrays(str(root / "wide"), name, clip_ids=[clip.id])
            ranges[name] = sample_ranges(arrays["audio"], wave, 1280)
            if name == "validation":  # the held-out windows are the last second's frames
                assert np.allclose(arrays["time"], np.arange(75, 100) * 0.04, atol=1e-4)
        assert len(ranges["train"]) == 74 and len(ranges["validation"]) == 25
        first_held = ranges["validation"][:, 0].min()
        assert ranges["train"][:, 1].max() <= first_held  # every training sample comes before it


@pytest.mark.slow
def test_each_clip_its_own_class_time_split_beats_the_prior_and_a_clip_holdout_says_it_cannot(seed_shaped,
                                                                                              tmp_path):
    root, entries = seed_shaped
    # Whole clips held out: their classes are never trained on, and prepare says so.
    clip_split = runner.prepare(pipeline(tmp_path, entries, "clips", holdout="0.3"), weights=None)
    assert clip_split.warnings and all("top class of no training frame" in w for w in clip_split.warnings)
    # The time split: the last 20 % of every clip held out.
    runner.prepare(pipeline(tmp_path, entries, "time", holdout="0", holdout_part="0.2"), weights=None)
    config = cfg.PipelineConfig(train=cfg.TrainConfig(
        data=str(tmp_path / "time"), epochs=25, batch_size=64, learning_rate=3e-3, name="seedlike",
        runs_dir=str(tmp_path / "runs"), export=False, report=False, quiet=True))
    run_dir = train.train(config)
    result = evaluate.distill(run_dir, str(tmp_path / "time"))
    assert len(result["held_out_clips"]) == 6 and result["unseen_class_clips"] == []
    held = reader.load_arrays(str(tmp_path / "time"), "validation")
    assert set(held["clip_id"]) == set(result["held_out_clips"])
    assert result["prior"]["top1_agreement"] <= 0.2 + 1e-6  # one class in six
    assert result["student"]["top1_agreement"] >= 0.8
    for clip_id, scores in result["per_clip"].items():
        assert scores["student"]["windows"] == 20, clip_id
    metrics = json.loads((tmp_path / "runs" / "seedlike" / "metrics.json").read_text())
    assert metrics["validation"]["top1_agreement"] == pytest.approx(result["student"]["top1_agreement"], abs=1e-6)
    # The report answers the slides' question per clip: teacher's and student's classes on its held-out part.
    page = open(report.make_report(run_dir, str(tmp_path / "time"))).read()
    assert "Per clip, on each clip&#x27;s held-out part" in page
    for clip in catalog.read_description(str(tmp_path / "time")).clips:
        assert f"timeline-{clip.id}.png" in page
        teacher_class = clip.label  # each clip shows its colour: the demo teacher's class of that name
        assert re.search(rf"<td>{clip.id}</td><td>{teacher_class}</td><td>{teacher_class} 100%</td>", page)
    # TensorBoard: the timeline of the first two held-out clips as images, and their audio.
    tags = timeline_tags(tmp_path / "runs" / "seedlike" / "logs" / "timelines")
    first_two = [c.id for c in catalog.read_description(str(tmp_path / "time")).clips][:2]
    assert {f"timeline/{c}" for c in first_two} <= tags and {f"clip/{c}" for c in first_two} <= tags


def timeline_tags(directory):
    import tensorflow as tf

    tags = set()
    for name in os.listdir(directory):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(directory, name)):
            tags.update(value.tag for value in event.summary.value)
    return tags


@pytest.mark.slow
def test_k_fold_over_time_segments_keeps_each_folds_test_windows_out_of_its_training(seed_shaped, tmp_path):
    root, entries = seed_shaped
    runner.prepare(pipeline(tmp_path, entries[:3], "time", window_ms=80.0, holdout="0", holdout_part="0.2"),
                    weights=None)
    description = catalog.read_description(str(tmp_path / "time"))
    arrays = reader.load_arrays(str(tmp_path / "time"), "all")
    by, masks = evaluate.fold_masks(arrays, description, 3)
    assert by == "time segments" and len(masks) == 3
    starts = np.round(arrays["time"] / 0.04).astype(int) * 640 + 320 - 640  # 80 ms windows centred on frames
    covered = np.zeros(len(arrays["time"]), int)
    for test, train_mask in masks:
        covered += test
        assert not (test & train_mask).any()
        for clip_id in set(arrays["clip_id"]):
            mine = arrays["clip_id"] == clip_id
            test_samples = set()
            for s in starts[mine & test]:
                test_samples.update(range(s, s + 1280))
            assert not any(set(range(s, s + 1280)) & test_samples for s in starts[mine & train_mask])
    assert (covered == 1).all()  # every window is tested in exactly one fold


def test_validation_batches_leave_no_replica_empty():
    from audionet_tf.training.trainer import validation_batch

    for count in (50, 99, 100, 101, 450, 1013):
        for replicas in (2, 3, 4):
            batch = validation_batch(count, replicas, 64)
            per_replica = batch // replicas
            assert batch % replicas == 0 and per_replica >= 1
            assert -(-count // per_replica) % replicas == 0, (count, replicas, batch)
    assert validation_batch(100, 1, 64) == 64
