"""The labelling core under load: downloads that start together, a clip that breaks in an unexpected way,
batches that run across clips, long clips in chunks, and the compiled teacher against its eager call."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from audionet_tf.core import config as cfg
from audionet_tf.core.config import AudioConfig
from audionet_tf.dataset import catalog, records
from audionet_tf.preparation import runner
from audionet_tf.preparation.manifest import make_clip as clip_entry
from audionet_tf.preparation.media import decode_clip, frame_windows, stream_clip
from audionet_tf.preparation.teacher import demo_teacher
from loopback import Server, make_clip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Valid DASH XML whose numbers are not numbers: yt-dlp's generic extractor raises a bare ValueError on it.
BROKEN_MPD = """<?xml version="1.0"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT10S">
<Period><AdaptationSet mimeType="video/mp4"><Representation id="1" bandwidth="1000">
<SegmentTemplate media="$Number$.m4s" startNumber="q" timescale="1" duration="1"/>
</Representation></AdaptationSet></Period></MPD>
"""


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
            "TF_CPP_MIN_LOG_LEVEL": "2"}


def test_downloads_starting_together_in_a_fresh_process_all_start(tmp_path):
    """What every download needs from the process (the deno runtime, ffmpeg) is found before threads start:
    eight downloads starting at once in a fresh interpreter never see a half-made `sysconfig` (the race this
    guards against failed about one run in three with four threads)."""
    script = textwrap.dedent("""
        import sys, threading
        from audionet_tf.preparation.download import Downloader
        from audionet_tf.preparation.manifest import make_clip
        downloader = Downloader(sys.argv[1])
        gate, errors = threading.Barrier(8), []
        def start(i):
            gate.wait()
            try:
                downloader.options(make_clip(f"http://127.0.0.1:9/{i}.mp4", 0, 1, "x", "test"), sys.argv[1])
            except Exception as exc:
                errors.append(repr(exc))
        threads = [threading.Thread(target=start, args=(i,)) for i in range(8)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        print(errors[0] if errors else "ok")
    """)
    runs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / f"cache{i}")], env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(16)]
    outcomes = [run.communicate(timeout=120) for run in runs]
    assert [out.strip() for out, _ in outcomes] == ["ok"] * 16, outcomes


@pytest.mark.slow
def test_prepare_over_loopback_downloads_together_and_a_clip_that_breaks_yt_dlp_fails_alone(tmp_path):
    """The command in a fresh process, empty cache, downloads two at a time: the clip whose page makes yt-dlp's
    extractor raise a bare ValueError is that clip's failure (summary and commit record); the others are
    written, exit status 0 as for any failed clip, no traceback."""
    www = tmp_path / "www"
    www.mkdir()
    colours = ["red", "green", "blue", "yellow"]
    for colour in colours:
        make_clip(str(www / f"{colour}.mp4"), 2.0, video=f"color=c={colour}:size=32x24:rate=25")
    (www / "broken.mpd").write_text(BROKEN_MPD)
    server = Server(str(www))
    try:
        rows = [f"{server.url}/{c}.mp4,0.2,1.5,{c}" for c in colours[:2]] + [f"{server.url}/broken.mpd,0,1.5,x"] + \
            [f"{server.url}/{c}.mp4,0.2,1.5,{c}" for c in colours[2:]]
        (tmp_path / "clips.csv").write_text("url,start,duration,label\n" + "\n".join(rows) + "\n")
        result = subprocess.run([sys.executable, "-m", "audionet_tf.prepare", "--manifest", "clips.csv",
                                 "--teacher", "demo-colour", "--out", "data", "--cache-dir", "cache", "--retries", "0",
                                 "--margin-s", "0.2", "--holdout", "0", "--quiet"], cwd=tmp_path, env=_env(),
                                capture_output=True, text=True, timeout=300)
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    broken = clip_entry(f"{server.url}/broken.mpd", 0, 1.5, "x", "test").id
    assert f"failed {broken}: unexpected ValueError" in result.stdout
    assert "written now: 4 clips" in result.stdout
    description = catalog.read_description(str(tmp_path / "data"))
    status = {c.label: c for c in description.clips}
    assert status["x"].status == "failed" and "ValueError" in status["x"].error
    assert all(status[c].status == "ok" and status[c].examples == 38 for c in colours)
    names = catalog.read_class_names(str(tmp_path / "data"))
    assert {c: names[status[c].teacher_top["train"]] for c in colours} == {c: c for c in colours}


def test_streamed_chunks_are_the_whole_clip_decode(tmp_path):
    """Decoding in chunks gives exactly `decode_clip`'s frames and `frame_windows`' windows, for windows wider
    and narrower than a frame period and sections that start inside the file."""
    path = make_clip(str(tmp_path / "clip.mp4"), 4.3, video="testsrc=size=64x48:rate=30")
    for audio in (AudioConfig(), AudioConfig(window_ms=100), AudioConfig(window_ms=20)):
        for start, duration in ((0.0, 4.0), (0.5, 3.8)):
            whole = decode_clip(path, start, duration, audio, (24, 32))
            windows = frame_windows(whole.audio, len(whole.frames), audio)
            chunks = list(stream_clip(path, start, duration, audio, (24, 32), chunk_frames=7))
            assert [c.first for c in chunks] == list(range(0, len(whole.frames), 7))
            np.testing.assert_array_equal(np.concatenate([c.frames for c in chunks]), whole.frames)
            np.testing.assert_array_equal(np.concatenate([c.windows for c in chunks]), windows)


def ffmpeg_children_niceness() -> list[int]:
    """The scheduling niceness of each ffmpeg process this process has started and not yet reaped."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/comm") as handle:
                name = handle.read().strip()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and "ffmpeg" in name:
            found.append(int(fields[16]))  # stat's 19th field: nice
    return found


@pytest.mark.parametrize("niceness", [0, 10])
def test_decoding_runs_below_the_teachers_priority_and_gives_the_same_frames(tmp_path, niceness):
    """The two ffmpeg processes of a clip run `prepare.decode_niceness` below this process (so they fill the
    teacher's idle moments instead of pausing its threads), and what they decode is the same."""
    path = make_clip(str(tmp_path / "clip.mp4"), 3.0, video="testsrc=size=64x48:rate=25")
    audio = AudioConfig()
    chunks = stream_clip(path, 0.0, 3.0, audio, (24, 32), chunk_frames=10, niceness=niceness)
    first = next(chunks)
    seen = ffmpeg_children_niceness()
    rest = list(chunks)
    own = os.getpriority(os.PRIO_PROCESS, 0)
    assert seen == [min(19, own + niceness)] * 2
    whole = decode_clip(path, 0.0, 3.0, audio, (24, 32))
    np.testing.assert_array_equal(np.concatenate([first.frames, *[c.frames for c in rest]]), whole.frames)
    assert cfg.PrepareConfig().decode_niceness == 10


@pytest.mark.slow
def test_batches_across_clips_and_chunks_keep_each_clip_whole_and_a_failure_mid_clip_alone(tmp_path):
    """Teacher batches of 7 frames run across clip boundaries and 16-frame chunks: every clip's examples are
    its own frames' logits and windows (as labelled one clip at a time), and a clip that turns out under the
    minimum length after some of its chunks were written leaves nothing behind but its failure (the clips that
    hold all they are asked are never refused for their length, however short)."""
    clips = []
    for name, colour, seconds, asked in (("a", "red", 1.0, 1.0), ("b", "green", 2.0, 2.0),
                                         ("short", "blue", 1.5, 2.5), ("c", "cyan", 0.4, 0.4)):
        path = make_clip(str(tmp_path / f"{name}.mp4"), seconds, video="testsrc=size=48x32:rate=25")
        clips.append({"url": path, "start": 0, "duration": asked, "label": colour})
    config = cfg.PipelineConfig(prepare=cfg.PrepareConfig(
        out=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), teacher="demo-colour", clips=tuple(clips),
        holdout="0", teacher_batch=7, chunk_frames=16, shard_clips=2, logits_format="float32",
        audio_format="float32", min_clip_seconds=1.6))
    summary = runner.prepare(config)
    short_id = clip_entry(clips[2]["url"], 0, 2.5, "blue", "test").id
    assert list(summary.failed) == [short_id] and "under the minimum of 1.6 s" in summary.failed[short_id]
    description = catalog.read_description(str(tmp_path / "data"))
    found = {}
    for shard in description.shards:
        ex = records.read_examples(str(tmp_path / "data" / shard.file), description.spec)
        for clip_id, t, audio, logits in zip(ex["clip_id"], ex["time"], ex["audio"], ex["logits"]):
            found.setdefault(clip_id, []).append((float(t), audio, logits))
    assert short_id not in found
    teacher = demo_teacher()
    for entry in clips[:2] + clips[3:]:
        clip_id = clip_entry(entry["url"], 0, entry["duration"], entry["label"], "test").id
        whole = decode_clip(entry["url"], 0, entry["duration"], AudioConfig(), (32, 32))
        expected = teacher.call(whole.frames.astype(np.float32)).numpy()  # eager, one clip at a time
        got = sorted(found[clip_id], key=lambda row: row[0])
        assert [t for t, _, _ in got] == pytest.approx(list(whole.times))
        np.testing.assert_allclose(np.stack([l for _, _, l in got]), expected, rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(np.stack([a for _, a, _ in got]),
                                      frame_windows(whole.audio, len(whole.frames), AudioConfig()))
    by_id = {c.id: c for c in description.clips}
    assert by_id[short_id].status == "failed"
    # The failed clip's written parts are gone from disk too, not only unnamed.
    named = {s.file for s in description.shards}
    assert sorted(f for f in os.listdir(tmp_path / "data") if f.endswith(records.SHARD_SUFFIX)) == sorted(named)


@pytest.mark.parametrize("kind,fold", [pytest.param("registry", True, marks=pytest.mark.slow), ("keras", True),
                                       ("keras", False), ("savedmodel", True)])
def test_compiled_teacher_gives_the_eager_call_logits(tmp_path, kind, fold):
    """The teacher runs as one compiled function with a fixed batch (the last batch padded), its weights folded
    into it as constants (unless told not to); its logits are the model's eager call's, for registry, `.keras`
    and SavedModel teachers."""
    import keras
    import tensorflow as tf

    from audionet_tf.preparation.teacher import load_teacher

    size = 224 if kind == "registry" else 64
    rng = np.random.default_rng(1)  # frames of different brightness, so that each frame's logits differ
    frames = (rng.integers(0, 256, (5, size, size, 3)) * np.linspace(0.2, 1.0, 5)[:, None, None, None])
    frames = frames.astype(np.uint8)
    if kind == "registry":
        teacher = load_teacher("EfficientNetV2B0", weights=None, batch_size=2, fold=fold)
    else:
        inputs = keras.Input((64, 64, 3))
        x = keras.layers.Conv2D(8, 3, activation="relu")(keras.layers.Rescaling(1 / 255)(inputs))
        model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x)))
        if kind == "keras":
            model.save(str(tmp_path / "t.keras"))
            teacher = load_teacher(str(tmp_path / "t.keras"), batch_size=2, fold=fold)
        else:
            model.export(str(tmp_path / "sm"), format="tf_saved_model", verbose=False)
            teacher = load_teacher(str(tmp_path / "sm"), batch_size=2, fold=fold)
    eager = teacher.call(tf.constant(frames, tf.float32)).numpy()
    compiled = teacher.logits(frames)
    assert compiled.shape == eager.shape and teacher._compiled is not None
    # Folded, the compiled call reads no variable: every weight is a constant of its graph.
    assert teacher.folded == fold and (len(teacher._compiled.captured_inputs) == 0) == fold
    tolerance = 1e-4 * float(np.abs(eager).max())
    # The frames' logits differ from each other far beyond the tolerance, so a frame's logits in another's
    # place would show.
    assert np.abs(eager[1:] - eager[0]).max(axis=1).min() > 20 * tolerance
    np.testing.assert_allclose(compiled, eager, rtol=1e-4, atol=tolerance)


PEAK_SCRIPT = """
import resource, sys
from audionet_tf.core import config as cfg
from audionet_tf.preparation import runner
root, seconds = sys.argv[1], float(sys.argv[2])
clip = {"url": f"{root}/clip{seconds:g}.mp4", "start": 0, "duration": seconds, "label": "x"}
summary = runner.prepare(cfg.PipelineConfig(prepare=cfg.PrepareConfig(
    out=f"{root}/data{seconds:g}", cache_dir=f"{root}/cache", teacher=f"{root}/teacher.keras", clips=(clip,),
    holdout="0", chunk_frames=int(sys.argv[3]))))
print(summary.examples["train"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_clip_length(tmp_path):
    """A 60 s and a 300 s clip (1,500 and 7,500 frames of 224×224, 150 KB each) prepared each in a fresh process:
    their peaks (the process's high-water mark) are within 1.2× of each other."""
    import keras

    inputs = keras.Input((224, 224, 3))
    outputs = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs)))
    keras.Model(inputs, outputs).save(str(tmp_path / "teacher.keras"))
    peaks = {}
    for seconds in (60, 300):
        make_clip(str(tmp_path / f"clip{seconds}.mp4"), seconds, video="testsrc=size=64x48:rate=25")
        result = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(tmp_path), str(seconds),
                                 str(cfg.PrepareConfig.chunk_frames)], env=_env(), capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        examples, peak_kb = map(int, result.stdout.split()[-2:])
        assert examples == seconds * 25
        peaks[seconds] = peak_kb
    assert peaks[300] < 1.2 * peaks[60], peaks


def test_a_run_whose_clips_fail_while_the_teacher_loads_leaves_no_loading_thread(tmp_path):
    """The teacher starts loading when the first clip is fetched; when every clip then fails (here: a file
    that is not media), the run returns only once the load has ended: no thread of it builds a model later."""
    import threading

    from audionet_tf.core.errors import AudioNetError

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video" * 1000)
    config = cfg.PipelineConfig(prepare=cfg.PrepareConfig(
        out=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), teacher="ResNet50",
        clips=({"url": str(broken), "start": 0, "duration": 1, "label": "x"},), holdout="0"))
    with pytest.raises(AudioNetError, match="no clip"):
        runner.prepare(config, weights=None)
    assert [t.name for t in threading.enumerate() if t.name == "audionet-teacher"] == []


def test_a_teacher_that_cannot_load_stops_the_run_with_one_message(tmp_path):
    """A fault of the run, not of a clip: the teacher file is not a model. The run stops with the teacher's
    message (raised from the thread that loads it to the caller), and no clip is recorded as failed for it."""
    from audionet_tf.core.errors import AudioNetError

    clips = [{"url": make_clip(str(tmp_path / f"{c}.mp4"), 1.0, video=f"color=c={c}:size=32x24:rate=25"),
              "start": 0, "duration": 1, "label": c} for c in ("red", "green")]
    (tmp_path / "teacher.keras").write_bytes(b"not a model")
    config = cfg.PipelineConfig(prepare=cfg.PrepareConfig(
        out=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), teacher=str(tmp_path / "teacher.keras"),
        clips=tuple(clips), holdout="0"))
    with pytest.raises(AudioNetError, match="teacher model .*teacher.keras: cannot load it"):
        runner.prepare(config)
    assert not os.path.isdir(tmp_path / "data" / "commits") or not os.listdir(tmp_path / "data" / "commits")


def test_the_teacher_is_folded_unless_the_pipeline_file_or_a_flag_says_not(tmp_path):
    """`prepare.teacher_fold` (default on) reaches the labeller's teacher from a pipeline file and from
    `--no-teacher-fold`."""
    import keras

    from audionet_tf.commands import prepare as prepare_cmd
    from audionet_tf.preparation.labelling import Labeller

    inputs = keras.Input((16, 16, 3))
    keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs))).save(str(tmp_path / "t.keras"))
    (tmp_path / "unfolded.toml").write_text("[prepare]\nteacher_fold = false\n")
    base = ["--teacher", str(tmp_path / "t.keras"), "--out", str(tmp_path / "data"),
            "--cache-dir", str(tmp_path / "cache")]
    for extra, folded in (([], True), (["--no-teacher-fold"], False),
                          (["--pipeline", str(tmp_path / "unfolded.toml")], False)):
        config = prepare_cmd.resolve_config(prepare_cmd.build_parser().parse_args([*base, *extra]))
        assert config.prepare.teacher_fold is folded, extra
        assert Labeller(config, set(), {}).teacher.folded is folded, extra
