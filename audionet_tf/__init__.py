"""AudioNet in Keras 3 / TensorFlow: a small 1-D conv student that learns to hear what an ImageNet teacher sees.

The Python API (importing the package loads no TensorFlow; each entry point loads what it needs on first use):

    import audionet_tf as an

    student = an.load_student("saved_models/demo")          # an export directory, a .keras, .tflite or .onnx
    heard = an.predict(student, audio, sample_rate=44100)    # {"scores", "logits", "times", ...}; or a file path
    vectors = an.embed(student, audio, sample_rate=44100)

    config = an.load_pipeline("demo")                        # a built-in recipe by name, or a TOML file
    config = an.override(config, "train", {"epochs": 10})
    an.prepare(config)                                       # clips → a dataset in config.data_dir
    run_dir = an.train(config)                               # train (then export and report, as the pipeline says)
    an.export(run_dir, "saved_models/mine")
    an.finetune(an.override(config, "finetune", {"run": run_dir, "data": "labelled.csv"}))  # your own classes
    print(an.evaluate(run_dir, config.data_dir)["student"])
    an.report(run_dir)
    model = an.build_student()                               # the slides' network as a Keras model

`SAMPLE_RATE` (16 kHz) is the rate every student hears; arrays at other rates are resampled, never assumed.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Any

from audionet_tf.core.errors import AudioNetError
from audionet_tf.core.version import __version__

SAMPLE_RATE = 16000  # the students' rate (the slides'); an export's metadata.json records its own

# name → "module:attribute", imported on first use so that `import audionet_tf` stays light
_ENTRY_POINTS = {
    "load_student": "audionet_tf.serving.inference:load_student",
    "predict": "audionet_tf.serving.inference:predict",
    "embed": "audionet_tf.serving.inference:embed",
    "build_student": "audionet_tf.model.student:build_student",
    "load_pipeline": "audionet_tf.core.config:load_pipeline",
    "PipelineConfig": "audionet_tf.core.config:PipelineConfig",
    "override": "audionet_tf.core.config:override",
    "prepare": "audionet_tf.preparation.runner:prepare",
    "train": "audionet_tf.commands.train:train",
    "export": "audionet_tf.serving.export:export_run",
    "finetune": "audionet_tf.commands.finetune:finetune",
    "evaluate": "audionet_tf.evaluation.evaluate:distill",
    "transfer": "audionet_tf.evaluation.evaluate:transfer",
    "report": "audionet_tf.evaluation.report:make_report",
    "read_dataset": "audionet_tf.dataset.catalog:read_description",
}

__all__ = ["AudioNetError", "SAMPLE_RATE", "__version__", *_ENTRY_POINTS]


def _entry_point(name: str) -> Any:
    module, attribute = _ENTRY_POINTS[name].split(":")
    return getattr(importlib.import_module(module), attribute)


def __getattr__(name: str) -> Any:
    if name not in _ENTRY_POINTS:
        raise AttributeError(f"module 'audionet_tf' has no attribute {name!r}")
    value = _entry_point(name)
    globals()[name] = value  # later uses skip this function
    return value


class _CommandModule(types.ModuleType):
    """A command's `python -m audionet_tf.<name>` module, callable as the entry point of the same name.

    Importing a submodule makes it the package's attribute (Python's import system does so after the
    module runs), so `import audionet_tf.train` anywhere in a process would otherwise turn
    `audionet_tf.train(config)` into "'module' object is not callable"."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _entry_point(self.__name__.rpartition(".")[2])(*args, **kwargs)


def _command_module(name: str) -> None:
    """Make the command module `name` (a shim's `__name__`) callable as its entry point."""
    if name != "__main__":
        sys.modules[name].__class__ = _CommandModule


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_ENTRY_POINTS))
