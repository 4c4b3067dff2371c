"""A teacher's folded graph kept between runs: the same logits from it, rebuilt when the teacher's bytes change or
the kept file is damaged, never kept for random weights; and a second prepare run that starts from it writes the
same examples as the first."""
import json
import logging
import os

import numpy as np
from committed import example_multiset
from loopback import make_clip

from audionet_tf.core import config as cfg
from audionet_tf.preparation import runner, teacher_graphs

FRAMES = (np.random.default_rng(3).integers(0, 256, (5, 24, 24, 3)) *
          np.linspace(0.2, 1.0, 5)[:, None, None, None]).astype(np.uint8)


def save_teacher(path, seed):
    """A small teacher with batch normalisation (what folding changes most), random weights from `seed`."""
    import keras

    inputs = keras.Input((24, 24, 3))
    x = keras.layers.Conv2D(8, 3)(keras.layers.Rescaling(1 / 255)(inputs))
    x = keras.layers.Activation("swish")(keras.layers.BatchNormalization()(x))
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(x)))
    rng = np.random.default_rng(seed)
    # Positive variances for batch normalisation; every other weight anything.
    model.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(np.float32) if i in (4, 5) else
                       rng.normal(0, 0.5, w.shape).astype(np.float32) for i, w in enumerate(model.get_weights())])
    model.save(str(path))
    return model


def kept_files(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def test_a_kept_graph_gives_the_same_logits_and_is_rebuilt_when_the_teacher_or_the_file_changes(tmp_path, caplog):
    path, kept = tmp_path / "t.keras", str(tmp_path / "teachers")
    model = save_teacher(path, 0)
    first = teacher_graphs.load_teacher(str(path), None, None, 2, True, kept)
    assert first.folded and not first.from_cache
    logits = first.logits(FRAMES)
    assert [n.rsplit(".", 1)[1] for n in kept_files(kept)] == ["json", "pb"]
    tolerance = 1e-4 * float(np.abs(logits).max())
    np.testing.assert_allclose(logits, model(FRAMES.astype(np.float32)).numpy(), rtol=1e-4, atol=tolerance)

    again = teacher_graphs.load_teacher(str(path), None, None, 2, True, kept)
    assert again.from_cache and again.folded and again.input_size == (24, 24) and again.num_classes == 4
    np.testing.assert_array_equal(again.logits(FRAMES), logits)
    # The model's eager call is still there (loaded when asked for).
    np.testing.assert_allclose(again.call(FRAMES.astype(np.float32)).numpy(), logits, rtol=1e-4, atol=tolerance)

    # The same file name with other weights: another key, so the teacher is loaded and its own graph kept.
    other = save_teacher(path, 1)
    changed = teacher_graphs.load_teacher(str(path), None, None, 2, True, kept)
    assert not changed.from_cache and len(kept_files(kept)) == 4
    new_logits = changed.logits(FRAMES)
    np.testing.assert_allclose(new_logits, other(FRAMES.astype(np.float32)).numpy(), rtol=1e-4, atol=tolerance)
    assert np.abs(new_logits - logits).max() > 100 * tolerance

    # A kept graph cut short: named in a warning, the teacher loaded again, and the graph kept anew.
    key = teacher_graphs.source_key(str(path), None, 2)
    graph = os.path.join(kept, key + ".pb")
    with open(graph, "r+b") as handle:
        handle.truncate(1000)
    with caplog.at_level(logging.WARNING):
        damaged = teacher_graphs.load_teacher(str(path), None, None, 2, True, kept)
    assert not damaged.from_cache and graph in caplog.text
    np.testing.assert_array_equal(damaged.logits(FRAMES), new_logits)
    assert teacher_graphs.load_teacher(str(path), None, None, 2, True, kept).from_cache
    # Another batch size is another graph (the batch shape is part of it).
    assert not teacher_graphs.load_teacher(str(path), None, None, 3, True, kept).from_cache


def test_graphs_are_kept_only_for_weights_fixed_by_name_or_bytes(tmp_path):
    path, kept = tmp_path / "t.keras", str(tmp_path / "teachers")
    save_teacher(path, 0)
    # Random weights (weights=None) and the demo teacher: nothing says two runs have the same weights.
    assert teacher_graphs.source_key("ResNet50", None, 32) is None
    assert teacher_graphs.source_key("demo-colour", None, 32) is None
    assert teacher_graphs.source_key("ResNet50", "imagenet", 32) != teacher_graphs.source_key("VGG16", "imagenet", 32)
    demo = teacher_graphs.load_teacher("demo-colour", None, None, 2, True, kept)
    assert demo.folded and not kept_files(kept)
    # Not folded (or no folder): nothing kept, nothing read.
    unfolded = teacher_graphs.load_teacher(str(path), None, None, 2, False, kept)
    assert not unfolded.folded and not kept_files(kept)
    assert not teacher_graphs.load_teacher(str(path), None, None, 2, True, None).from_cache
    assert not kept_files(kept)


def test_a_second_prepare_starts_from_the_kept_graph_and_writes_the_same_examples(tmp_path, caplog):
    save_teacher(tmp_path / "t.keras", 0)
    clips = []
    for i in range(3):
        make_clip(str(tmp_path / f"c{i}.mp4"), 1.0, video="testsrc=size=48x32:rate=25",
                  audio=f"sine=frequency={300 + 100 * i}:sample_rate=16000")
        clips.append({"url": str(tmp_path / f"c{i}.mp4"), "start": 0, "duration": 1.0, "label": "x"})

    def prepare(out, **settings):
        config = cfg.PipelineConfig(prepare=cfg.PrepareConfig(
            out=str(tmp_path / out), cache_dir=str(tmp_path / "cache"), teacher=str(tmp_path / "t.keras"),
            clips=tuple(clips), holdout="0", teacher_batch=8, logits_format="float32", **settings))
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="audionet_tf.prepare"):
            runner.prepare(config)
        return "its folded graph kept in" in caplog.text

    assert not prepare("first")
    kept = str(tmp_path / "cache" / "teachers")
    assert len(kept_files(kept)) == 2
    assert json.loads(open(os.path.join(kept, [n for n in kept_files(kept) if n.endswith(".json")][0])).read())[
        "batch_size"] == 8
    assert prepare("second")
    assert example_multiset(tmp_path / "second") == example_multiset(tmp_path / "first")
    # `teacher_cache = false` neither reads nor keeps one.
    assert not prepare("third", teacher_cache=False)
    assert example_multiset(tmp_path / "third") == example_multiset(tmp_path / "first")
