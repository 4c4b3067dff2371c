"""Data preparation with real ffmpeg, real yt-dlp over loopback, and offline teachers."""
import dataclasses
import functools
import http.server
import os
import shutil
import socket
import threading
import time

import numpy as np
import pytest
from loopback import Server, flash_and_click, make_clip

from audionet_tf.core import config as cfg
from audionet_tf.core.config import AudioConfig
from audionet_tf.core.errors import AudioNetError
from audionet_tf.dataset import catalog, records
from audionet_tf.preparation import runner
from audionet_tf.preparation.download import Downloader, DownloadError
from audionet_tf.preparation.manifest import make_clip as clip_entry, read_manifest
from audionet_tf.preparation.media import MediaError, decode_clip, frame_windows


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A loopback server with a flash-and-click clip and a plain clip."""
    root = tmp_path_factory.mktemp("www")
    flash_and_click(str(root / "flash.mp4"), 2.0, at=1.0)
    make_clip(str(root / "tone.mp4"), 3.0, video="color=c=red:size=32x24:rate=25")
    server = Server(str(root))
    yield server, root
    server.stop()


def brightest_frame_and_loudest_window(path, start, duration):
    decoded = decode_clip(path, start, duration, AudioConfig(), (24, 32))
    windows = frame_windows(decoded.audio, len(decoded.frames), AudioConfig())
    brightness = decoded.frames.reshape(len(decoded.frames), -1).mean(axis=1)
    energy = (windows ** 2).sum(axis=1)
    return int(brightness.argmax()), int(energy.argmax()), decoded


def test_flash_frame_is_paired_with_the_window_that_holds_the_click(served):
    _, root = served
    frame, window, decoded = brightest_frame_and_loudest_window(str(root / "flash.mp4"), 0.0, 2.0)
    # A 30 fps source sampled every 40 ms: frame k is the picture on screen at k * 40 ms.
    assert frame == 25 and window == 25
    assert len(decoded.frames) == 50 and len(decoded.audio) == 32000
    # From a section start 0.6 s in, the same instant is frame 10.
    frame, window, _ = brightest_frame_and_loudest_window(str(root / "flash.mp4"), 0.6, 1.2)
    assert frame == window == 10


def test_downloaded_section_is_cut_exactly_and_cached(served, tmp_path):
    server, _ = served
    clip = clip_entry(f"{server.url}/flash.mp4", 0.6, 1.2, "flash", "test")
    downloader = Downloader(str(tmp_path / "cache"), retries=0, margin_s=0.3)
    got = downloader.fetch(clip)
    assert not got.cached and got.path.startswith(str(tmp_path / "cache"))
    frame, window, decoded = brightest_frame_and_loudest_window(got.path, got.offset, clip.duration)
    assert frame == window == 10 and len(decoded.frames) == 30
    before = len(server.requests)
    again = downloader.fetch(clip)
    assert again.cached and again.path == got.path and len(server.requests) == before


def test_a_missing_video_fails_with_its_reason(served, tmp_path):
    server, _ = served
    clip = clip_entry(f"{server.url}/removed.mp4", 0, 1, "", "test")
    before = len(server.requests)
    with pytest.raises(DownloadError, match="404"):
        Downloader(str(tmp_path / "cache"), retries=2, backoff_s=0.01).fetch(clip)
    assert server.requests[before:] == ["/removed.mp4"]  # asked once: a 404 is not retried


class FlakyServer:
    """A file server on 127.0.0.1 whose first requests fail as listed: "429" (Too Many Requests) or "drop" (the
    connection closed without an answer); every request is logged with its time and fault."""

    def __init__(self, directory: str, faults: list[str]):
        self.faults, self.log = list(faults), []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                fault = outer.faults.pop(0) if outer.faults else None
                outer.log.append((time.monotonic(), self.path, fault))
                if fault == "429":
                    self.send_response(429)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                else:
                    super().do_GET()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                     functools.partial(Handler, directory=directory))
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_network_errors_and_http_429_are_retried_with_back_off(served, tmp_path):
    _, root = served
    server = FlakyServer(str(root), ["429", "drop", "429"])
    try:
        clip = clip_entry(f"{server.url}/tone.mp4", 0.5, 1.0, "red", "test")
        got = Downloader(str(tmp_path / "cache"), retries=3, backoff_s=0.25, margin_s=0.2).fetch(clip)
        assert os.path.isfile(got.path) and not got.cached
        assert len(decode_clip(got.path, got.offset, 1.0, AudioConfig(), (24, 32)).frames) == 25
        faulted = [t for t, _, fault in server.log if fault]
        first_good = next(t for t, _, fault in server.log if not fault)
        assert len(faulted) == 3 and all(path == "/tone.mp4" for _, path, _ in server.log)
        # Waits of 0.25, 0.5 and 1 s: the back-off doubles after each failed attempt.
        gaps = np.diff(faulted + [first_good])
        assert all(gap >= wait - 0.05 for gap, wait in zip(gaps, (0.25, 0.5, 1.0))), gaps

        # Retries run out: the clip fails with the last reason, after 1 + retries attempts.
        server.faults, server.log = ["429"] * 5, []
        other = clip_entry(f"{server.url}/tone.mp4", 1.0, 1.0, "red", "test")
        with pytest.raises(DownloadError, match="429"):
            Downloader(str(tmp_path / "cache"), retries=2, backoff_s=0.01, margin_s=0.2).fetch(other)
        assert [fault for _, _, fault in server.log] == ["429"] * 3
    finally:
        server.stop()


@pytest.mark.parametrize("make,start,seconds,message", [
    (lambda p: make_clip(p, 1.0, audio=None), 0.0, 1.0, "no audio stream"),
    (lambda p: make_clip(p, 1.0, video=None), 0.0, 1.0, "no video stream"),
    (lambda p: open(p, "wb").write(b"not a video at all" * 100), 0.0, 1.0, "cannot decode"),
    (lambda p: make_clip(p, 1.0), 2.0, 1.0, r"no video frames in \[2\.00 s, 3\.00 s\)"),
])
def test_bad_clips_are_named(tmp_path, make, start, seconds, message):
    """A file that cannot give a single frame is named with the reason. (A file that ends inside the section is
    labelled as far as it goes: tests/test_misaligned_clips.py; the last case here starts after the file's end.)"""
    path = str(tmp_path / "clip.mp4")
    make(path)
    with pytest.raises(MediaError, match=message) as info:
        decode_clip(path, start, seconds, AudioConfig(), (24, 32))
    assert path in str(info.value)


@pytest.mark.parametrize("text,message", [
    ("url,start,duration,label\nabcdefghijk,,10,x\n", "row 2: missing start"),
    ("url,start,duration,label\nabcdefghijk,5,0,x\n", "row 2: duration must be positive"),
    ("url,start,duration,label\nabcdefghijk,5,10,x\nabcdefghijk,1:75,10,x\n", "row 3: bad time"),
    ("url,begin,duration,label\nabcdefghijk,5,10,x\n", "unknown header"),
    ("url,start,duration,label\n--help,5,10,x\n", "row 2: '--help' is not"),
    ("url,start,duration,label\nftp://x/y.mp4,5,10,x\n", "row 2"),
])
def test_bad_rows_are_refused_with_their_number(tmp_path, text, message):
    path = tmp_path / "clips.csv"
    path.write_text(text)
    with pytest.raises(AudioNetError, match=message) as info:
        read_manifest(str(path))
    assert str(path) in str(info.value)


@pytest.mark.parametrize("head,bad", [
    ("url,start,duration,label\nabcdefghijk,5,10,x\n", "abcdefghijk,5,ten,x"),  # the project's layout
    ("# YTID, start_seconds, end_seconds, positive_labels\n--PJHxphWEs, 30.000, 40.000, a\n",
     "-0RWZT-miFs, 4x0, 430.000, b"),  # AudioSet's
    ("---g-f_I2yQ,1,people marching,test\n", "--0PQM4-hqg,30,waterfall burbling"),  # VGGSound's
])
def test_a_bad_row_is_named_by_its_line_in_the_file_after_blank_and_comment_lines(tmp_path, head, bad):
    path = tmp_path / "clips.csv"
    text = head + "\n# a comment line\n   \n" + bad + "\n"
    path.write_text(text)
    line = text.splitlines().index(bad) + 1  # what an editor shows
    with pytest.raises(AudioNetError) as info:
        read_manifest(str(path))
    assert f"{path} row {line}:" in str(info.value), (line, str(info.value))


HOLDOUT_IN_A_PROCESS = """
import json
from audionet_tf.dataset.split import holdout_ids
from audionet_tf.preparation.manifest import Clip
clips = [Clip(id=f"video{i:03d}_0_10000", url=f"/x/{i}", start=0, duration=10) for i in range(200)]
print(json.dumps(sorted(holdout_ids(clips, "0.25"))))
"""


def test_the_holdout_fraction_chooses_the_same_clips_in_every_process(tmp_path):
    """Prepare may run again in another process (a resumed run, a Beam worker): Python's own string hash differs
    from process to process (PYTHONHASHSEED), the held-out clips must not."""
    import json
    import subprocess
    import sys

    chosen = []
    for seed in ("1", "2", "random"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", HOLDOUT_IN_A_PROCESS], env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        chosen.append(json.loads(done.stdout))
    assert 20 < len(chosen[0]) < 80
    assert chosen[0] == chosen[1] == chosen[2]


def test_audioset_and_vggsound_lists(tmp_path):
    audioset = tmp_path / "segments.csv"
    audioset.write_text('# Segments csv created Sun Mar  5 10:54:31 2017\n# num_ytids=2, num_segs=2\n'
                        '# YTID, start_seconds, end_seconds, positive_labels\n'
                        '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"\n'
                        '-0RWZT-miFs, 420.000, 430.000, "/m/03v3yw"\n')
    clips = read_manifest(str(audioset))
    assert [(c.video_id, c.start, c.duration) for c in clips] == [("--PJHxphWEs", 30.0, 10.0),
                                                                  ("-0RWZT-miFs", 420.0, 10.0)]
    assert clips[0].url == "https://www.youtube.com/watch?v=--PJHxphWEs" and clips[0].label == "/m/09x0r,/t/dd00088"
    vgg = tmp_path / "vggsound.csv"
    vgg.write_text("---g-f_I2yQ,1,people marching,test\n--0PQM4-hqg,30,waterfall burbling,train\n")
    clips = read_manifest(str(vgg))
    assert [(c.video_id, c.start, c.duration, c.label) for c in clips] == [
        ("---g-f_I2yQ", 1.0, 10.0, "people marching"), ("--0PQM4-hqg", 30.0, 10.0, "waterfall burbling")]


def pipeline(tmp_path, clips, holdout="0.0", **prepare_values):
    return cfg.PipelineConfig(prepare=cfg.PrepareConfig(
        out=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), teacher="demo-colour", clips=tuple(clips),
        holdout=holdout, retries=0, margin_s=0.2, shard_size=40, **prepare_values))


@pytest.mark.slow
def test_prepare_end_to_end_with_a_failure_a_rerun_and_overwrite(served, tmp_path):
    server, root = served
    local = make_clip(str(tmp_path / "green.mp4"), 2.0, video="color=c=green:size=32x24:rate=25")
    clips = [{"url": f"{server.url}/tone.mp4", "start": 0.5, "duration": 2, "label": "red"},
             {"url": local, "start": 0, "duration": 2, "label": "green"},
             {"url": f"{server.url}/gone.mp4", "start": 0, "duration": 2, "label": "gone"}]
    green_id = clip_entry(local, 0, 2, "green", "test").id
    config = pipeline(tmp_path, clips, holdout=green_id)
    summary = runner.prepare(config)
    assert len(summary.written) == 2 and list(summary.failed) and "404" in next(iter(summary.failed.values()))
    description = catalog.read_description(str(tmp_path / "data"))
    assert description.examples() == 100 and description.spec.num_classes == 6
    status = {c.label: c for c in description.clips}
    assert status["gone"].status == "failed" and "404" in status["gone"].error
    splits = {c.id: c.split for c in description.clips if c.status == "ok"}
    assert splits[green_id] == "validation" and sorted(splits.values()) == ["train", "validation"]
    arrays = records.read_examples
    for shard in description.shards:
        ids = set(arrays(str(tmp_path / "data" / shard.file), description.spec)["clip_id"])
        assert all(splits[i] == shard.split for i in ids)
    # The teacher saw red on the first clip, green on the second.
    names = catalog.read_class_names(str(tmp_path / "data"))
    for shard in description.shards:
        ex = arrays(str(tmp_path / "data" / shard.file), description.spec)
        for cid, row in zip(ex["clip_id"], ex["logits"]):
            assert names[int(row.argmax())] == ("red" if "tone" in cid else "green")

    requests = len(server.requests)
    again = runner.prepare(config)
    assert sorted(again.skipped) == sorted(summary.written) and not again.written
    assert len(server.requests) == requests + 1  # only the missing video is tried again
    shards_before = {s.file for s in catalog.read_description(str(tmp_path / "data")).shards}

    redo = runner.prepare(pipeline(tmp_path, clips, holdout=green_id, overwrite=True))
    assert sorted(redo.written) == sorted(summary.written)
    after = catalog.read_description(str(tmp_path / "data"))
    assert after.examples() == 100 and not ({s.file for s in after.shards} & shards_before)
    assert sorted(f for f in os.listdir(tmp_path / "data") if f.endswith(".tfrecord")) == \
        sorted(s.file for s in after.shards)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Two one-second local clips (green, red) prepared with the demo teacher, one clip per commit."""
    root = tmp_path_factory.mktemp("prepared")
    clips = [{"url": make_clip(str(root / f"{c}.mp4"), 1.0, video=f"color=c={c}:size=32x24:rate=25"), "start": 0,
              "duration": 1, "label": c} for c in ("green", "red")]
    summary = runner.prepare(pipeline(root, clips, shard_clips=1))
    assert len(summary.written) == 2
    return root, clips


def _teacher_file(path):
    """A user's .keras teacher of the demo's classes (the mean colour against six prototypes, scaled differently)."""
    import keras

    from audionet_tf.preparation.teacher import DEMO_COLOURS

    inputs = keras.Input((16, 16, 3))
    dense = keras.layers.Dense(len(DEMO_COLOURS))
    outputs = dense(keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs)))
    model = keras.Model(inputs, outputs)
    prototypes = np.array(list(DEMO_COLOURS.values()), np.float32)
    dense.set_weights([10 * prototypes.T, -5 * np.sum(prototypes ** 2, axis=1)])
    model.save(str(path))
    (path.parent / "colours.txt").write_text("\n".join(DEMO_COLOURS) + "\n")
    return {"teacher": str(path), "labels": str(path.parent / "colours.txt")}


@pytest.mark.parametrize("change", ["window", "teacher", "formats", "held out", "nothing that shapes examples"])
def test_a_rerun_with_a_changed_setting_relabels_the_committed_clips(prepared, tmp_path, change):
    root, clips = prepared
    shutil.copytree(root / "data", tmp_path / "data")
    green, red = (clip_entry(c["url"], 0, 1, c["label"], "test").id for c in clips)
    audio = AudioConfig()
    values = {"shard_clips": 1}
    if change == "window":
        audio = AudioConfig(window_ms=80.0)
    elif change == "teacher":
        values.update(_teacher_file(tmp_path / "teacher.keras"))
    elif change == "formats":
        values.update(audio_format="float32", logits_format="float32")
    elif change == "held out":
        values.update(holdout=red)
    else:
        values.update(teacher_batch=7)  # how frames are batched, not what they become
    config = cfg.PipelineConfig(audio=audio, prepare=dataclasses.replace(pipeline(tmp_path, clips).prepare, **values))
    summary = runner.prepare(config)
    relabelled = {"held out": [red], "nothing that shapes examples": []}.get(change, [green, red])
    assert sorted(summary.written) == sorted(relabelled) and sorted(summary.skipped) == sorted({green, red} -
                                                                                              set(relabelled))
    description = catalog.read_description(str(tmp_path / "data"))
    spec = description.spec
    examples = {}
    for shard in description.shards:
        found = records.read_examples(str(tmp_path / "data" / shard.file), spec)
        for clip_id, window, row in zip(found["clip_id"], found["audio"], found["logits"]):
            examples.setdefault(clip_id, []).append((shard.split, window.shape, row.dtype))
    assert sorted(examples) == sorted([green, red]) and all(len(v) == 25 for v in examples.values())
    if change == "window":
        assert spec.window_samples == 1280 and {e[1] for v in examples.values() for e in v} == {(1280,)}
    if change == "teacher":
        assert spec.teacher == "teacher.keras"
    if change == "formats":
        assert (spec.audio_format, spec.logits_format) == ("float32", "float32")
        assert {e[2] for v in examples.values() for e in v} == {np.dtype(np.float32)}
    splits = {cid: {e[0] for e in v} for cid, v in examples.items()}
    assert splits == {green: {"train"}, red: {"validation" if change == "held out" else "train"}}
    # Once relabelled, the same command finds everything done.
    assert sorted(runner.prepare(config).skipped) == sorted([green, red])


def test_strict_makes_a_failure_fatal_and_writes_nothing(served, tmp_path):
    server, _ = served
    clips = [{"url": f"{server.url}/gone.mp4", "start": 0, "duration": 2, "label": "gone"}]
    with pytest.raises(AudioNetError, match="404"):
        runner.prepare(pipeline(tmp_path, clips, strict=True))
    assert not os.path.exists(tmp_path / "data" / records.DESCRIPTION_FILE)


def test_offline_seed_pipeline_lists_every_clip_and_never_loads_the_teacher(tmp_path):
    """The shipped seed list with its hosts unreachable: every clip's reason, exit 2, no weights download."""
    import re
    import subprocess
    import sys

    seed = open(os.path.join(os.path.dirname(__file__), "..", "pipelines", "seed.toml")).read()
    with __import__("socket").socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    text = re.sub(r'url = "([^"]+)"', lambda m: f'url = "http://127.0.0.1:{port}/{m.group(1)}.mp4"', seed)
    text = text.replace('[prepare]\n', '[prepare]\nretries = 0\n', 1)
    (tmp_path / "seed.toml").write_text(text)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_HOME": str(tmp_path / "keras")}
    result = subprocess.run([sys.executable, "-m", "audionet_tf.train", "--pipeline", "seed.toml"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    clips = runner.list_clips(cfg.load_pipeline(str(tmp_path / "seed.toml")))
    assert len(clips) == 10
    for clip in clips:
        assert re.search(rf"failed {re.escape(clip.id)}: .*127\.0\.0\.1", result.stderr), result.stderr[-3000:]
    assert "try the offline demo: audionet demo" in result.stderr and "Traceback" not in result.stderr
    assert "Downloading data" not in result.stdout + result.stderr and not (tmp_path / "keras" / "models").exists()


def test_a_dataset_on_an_in_memory_file_system_prepares_and_trains(tmp_path):
    """A URL output (TensorFlow's ram://) goes through the storage layer end to end: prepare, resume, read."""
    from audionet_tf.dataset import reader

    local = make_clip(str(tmp_path / "green.mp4"), 1.0, video="color=c=green:size=32x24:rate=25")
    red = make_clip(str(tmp_path / "red.mp4"), 1.0, video="color=c=red:size=32x24:rate=25")
    clips = [{"url": local, "start": 0, "duration": 1, "label": "green"},
             {"url": red, "start": 0, "duration": 1, "label": "red"}]
    out = f"ram://{tmp_path.name}/data"
    config = cfg.PipelineConfig(prepare=cfg.PrepareConfig(out=out, cache_dir=str(tmp_path / "cache"),
                                                          teacher="demo-colour", clips=tuple(clips), holdout="0.5"))
    summary = runner.prepare(config)
    assert len(summary.written) == 2 and summary.examples == {"train": 25, "validation": 25}
    assert not os.path.exists("ram:") and not os.path.exists(tmp_path / "ram:")
    assert len(runner.prepare(config).skipped) == 2
    description = catalog.read_description(out)
    catalog.verify_shards(out, description)
    batches = list(reader.make_dataset(out, "all", 10, reader.ReadOptions(shuffle=False)))
    assert sum(int(x.shape[0]) for x, _ in batches) == 50
    names = catalog.read_class_names(out)
    argmax = np.concatenate([y.numpy().argmax(axis=1) for _, y in batches])
    assert sorted({names[i] for i in argmax}) == ["green", "red"]


def test_user_teachers_keras_and_savedmodel(tmp_path):
    import keras

    from audionet_tf.preparation.teacher import load_teacher

    inputs = keras.Input((16, 16, 3))
    outputs = keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs)))
    model = keras.Model(inputs, outputs)
    model.save(str(tmp_path / "teacher.keras"))
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"thing {i}" for i in range(5)) + "\n")
    frames = np.random.default_rng(0).integers(0, 255, (3, 16, 16, 3), dtype=np.uint8)
    expected = model.predict(frames.astype(np.float32), verbose=0)
    keras_teacher = load_teacher(str(tmp_path / "teacher.keras"), str(labels))
    assert keras_teacher.input_size == (16, 16) and keras_teacher.class_names[4] == "thing 4"
    np.testing.assert_allclose(keras_teacher.logits(frames), expected, atol=1e-5)
    model.export(str(tmp_path / "teacher_sm"), format="tf_saved_model", verbose=False)
    saved = load_teacher(str(tmp_path / "teacher_sm"))
    assert saved.num_classes == 5 and saved.input_size == (16, 16)
    np.testing.assert_allclose(saved.logits(frames), expected, atol=1e-5)
    with pytest.raises(AudioNetError, match="unknown teacher"):
        load_teacher("NotANet")
    with pytest.raises(AudioNetError, match="has 3 names, but .* gives 5 logits"):
        load_teacher(str(tmp_path / "teacher.keras"), _write(tmp_path / "three.txt", "a\nb\nc\n"))


def test_a_keras_teacher_with_a_lambda_layer_is_refused(tmp_path):
    """A user's .keras teacher is loaded with safe_mode=True: a Lambda layer (Python bytecode in the file) is
    refused with one message naming the file, before anything could run it."""
    import keras

    from audionet_tf.preparation.teacher import load_teacher

    inputs = keras.Input((16, 16, 3))
    outputs = keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(keras.layers.Lambda(lambda x: x / 255)(inputs)))
    keras.Model(inputs, outputs).save(str(tmp_path / "lambda.keras"))
    with pytest.raises(AudioNetError, match="Lambda") as info:
        load_teacher(str(tmp_path / "lambda.keras"))
    assert f"teacher model {tmp_path / 'lambda.keras'}: cannot load it" in str(info.value)
    assert "safe_mode" in str(info.value)


def _write(path, text):
    path.write_text(text)
    return str(path)


# One teacher whose preprocessing is inside the model (as EfficientNetV2B0's), one with Keras's caffe-style
# function (as VGG16's).
@pytest.mark.parametrize("name,module", [("MobileNetV3Large", "mobilenet_v3"), ("ResNet50", "resnet50")])
def test_registry_teacher_builds_offline_with_its_preprocessing(name, module):
    """Each registry teacher's logits are its Keras application's own on frames through that family's
    `preprocess_input` (the same seed gives both networks the same random weights)."""
    import keras

    from audionet_tf.preparation.teacher import load_teacher

    frames = np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    keras.utils.set_random_seed(5)
    teacher = load_teacher(name, weights=None, batch_size=2)
    logits = teacher.logits(frames)
    assert logits.shape == (3, 1000) and np.isfinite(logits).all()
    assert teacher.class_names[0] == "tench" and len(teacher.class_names) == 1000
    keras.utils.set_random_seed(5)
    reference = getattr(keras.applications, name)(weights=None, classifier_activation=None, input_shape=(224, 224, 3))
    preprocess = getattr(keras.applications, module).preprocess_input
    expected = reference(preprocess(frames.astype(np.float32)), training=False).numpy()
    # Relative to the logits' scale: random MobileNetV3 weights give logits near 1e-11.
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.slow
def test_seed_list_first_stage_against_loopback(tmp_path):
    """The seed pipeline's own ten clips, rewritten to local URLs, download and decode to 2,475 frames."""
    www = tmp_path / "www"
    www.mkdir()
    make_clip(str(www / "long.mp4"), 162.0, video="color=c=gray:size=16x16:rate=25",
              audio="sine=frequency=300:sample_rate=16000")
    config = cfg.load_pipeline(os.path.join(os.path.dirname(__file__), "..", "pipelines", "seed.toml"))
    seed_clips = runner.list_clips(config)
    assert len(seed_clips) == 10
    server = Server(str(www))
    try:
        for clip in seed_clips:
            shutil.copy(www / "long.mp4", www / f"{clip.video_id}.mp4")
        local = [clip_entry(f"{server.url}/{c.video_id}.mp4", c.start, c.duration, c.label, "seed") for c in seed_clips]
        downloader = Downloader(str(tmp_path / "cache"), retries=0, margin_s=0.5)
        frames = 0
        for clip in local:
            got = downloader.fetch(clip)
            decoded = decode_clip(got.path, got.offset, clip.duration, config.audio, (16, 16))
            frames += len(decoded.frames)
            assert len(frame_windows(decoded.audio, len(decoded.frames), config.audio)) == len(decoded.frames)
        assert frames == 2475
    finally:
        server.stop()


def test_holdout_fraction_is_deterministic_and_keeps_both_sides():
    from audionet_tf.preparation.manifest import Clip

    clips = [Clip(id=f"clip-{i}", url=f"/x/{i}", start=0, duration=1) for i in range(20)]
    chosen = runner.holdout_ids(clips, "0.25")
    assert chosen == runner.holdout_ids(list(reversed(clips)), "0.25")
    assert 0 < len(chosen) < 20
    assert len(runner.holdout_ids(clips[:2], "0.01")) == 1  # at least one held out
    assert len(runner.holdout_ids(clips[:2], "0.99")) == 1  # never all
    assert runner.holdout_ids(clips, "clip-3,clip-7") == {"clip-3", "clip-7"}
    # The list grows (or is cut back): every clip keeps its side, so no held-out clip ever moves into training.
    grown = clips + [Clip(id=f"clip-{i}", url=f"/x/{i}", start=0, duration=1) for i in range(20, 400)]
    held = runner.holdout_ids(grown, "0.25")
    assert held & {c.id for c in clips} == chosen
    assert runner.holdout_ids(grown[:150], "0.25") == held & {c.id for c in grown[:150]}
    assert 0.15 < len(held) / len(grown) < 0.35
    with pytest.raises(AudioNetError, match="not in the list"):
        runner.holdout_ids(clips, "clip-3,nope")
