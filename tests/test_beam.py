"""Data preparation on Apache Beam's DirectRunner with two worker processes, against the single-process path."""
import os
import subprocess
import sys

import numpy as np
import pytest

from audionet_tf import config as cfg
from audionet_tf import prepare, records
from loopback import Server, make_clip

beam = pytest.importorskip("apache_beam", reason="the beam extra is part of the test install")


def example_set(directory):
    description = records.read_description(directory)
    found = set()
    for shard in description.shards:
        ex = records.read_examples(os.path.join(directory, shard.file), description.spec)
        for audio, logits, clip_id, time in zip(ex["audio"], ex["logits"], ex["clip_id"], ex["time"]):
            found.add((shard.split, clip_id, round(float(time), 4), audio.tobytes(), logits.tobytes()))
    return found


@pytest.mark.slow
def test_direct_runner_with_two_workers_writes_the_same_examples(tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    make_clip(str(www / "red.mp4"), 3.0, video="color=c=red:size=32x24:rate=25")
    make_clip(str(www / "blue.mp4"), 3.0, video="color=c=blue:size=32x24:rate=30",
              audio="sine=frequency=900:sample_rate=44100")
    local = make_clip(str(tmp_path / "green.mp4"), 2.0, video="color=c=green:size=32x24:rate=25")
    server = Server(str(www))
    try:
        clips = ({"url": f"{server.url}/red.mp4", "start": 0.5, "duration": 2, "label": "red"},
                 {"url": f"{server.url}/blue.mp4", "start": 0, "duration": 2.5, "label": "blue"},
                 {"url": local, "start": 0, "duration": 2, "label": "green"},
                 {"url": f"{server.url}/gone.mp4", "start": 0, "duration": 2, "label": "gone"})

        def config(out, runner=None):
            return cfg.PipelineConfig(prepare=cfg.PrepareConfig(
                out=str(tmp_path / out), cache_dir=str(tmp_path / f"cache-{out}"), teacher="demo-colour",
                clips=clips, holdout="0.3", retries=0, shard_size=50, runner=runner))

        from audionet_tf.beam_prepare import run_beam

        with_beam = run_beam(config("beam", "DirectRunner"),
                             ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"])
        single = prepare.prepare(config("single"))
    finally:
        server.stop()
    assert sorted(with_beam.written) == sorted(single.written) and len(with_beam.written) == 3
    assert list(with_beam.failed) == list(single.failed) and "404" in next(iter(with_beam.failed.values()))
    beam_examples, single_examples = example_set(str(tmp_path / "beam")), example_set(str(tmp_path / "single"))
    assert len(beam_examples) == 50 + 62 + 50 and beam_examples == single_examples
    description = records.read_description(str(tmp_path / "beam"))
    records.verify_shards(str(tmp_path / "beam"), description)
    assert {c["status"] for c in description.clips} == {"ok", "failed"}
    assert not [f for f in os.listdir(tmp_path / "beam") if f.startswith(".beam")]


def test_the_single_process_path_never_imports_beam(tmp_path):
    local = make_clip(str(tmp_path / "green.mp4"), 1.0, video="color=c=green:size=32x24:rate=25")
    script = ("import sys\nfrom audionet_tf import prepare\n"
              f"code = prepare.main(['--manifest', {str(tmp_path / 'clips.csv')!r}, '--teacher', 'demo-colour', "
              f"'--out', {str(tmp_path / 'out')!r}, '--cache-dir', {str(tmp_path / 'cache')!r}])\n"
              "print(code, 'apache_beam' in sys.modules)\n")
    (tmp_path / "clips.csv").write_text(f"url,start,duration,label\n{local},0,1,green\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.stdout.split()[-2:] == ["0", "False"], result.stderr[-2000:]
    assert np.isclose(records.read_description(str(tmp_path / "out")).examples(), 25)
