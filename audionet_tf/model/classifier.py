"""A classifier of a user's own classes on a trained student: the student up to a named layer, that layer's
features over time, and a new Dense head (`audionet finetune`, docs/finetune.md).

    waveform (L, 1) → the student's layers up to `layer` → Features → Dense(classes, "class_logits")

`Features` records which student and layer it reads (its config), so a saved classifier says what it is:
`classifier_facts(model)` gives (architecture, layer), which export, embed and predict read back.
"""
from __future__ import annotations

import keras
from keras import ops

HEAD = "class_logits"
FEATURES = "features"


@keras.saving.register_keras_serializable(package="audionet_tf")
class Features(keras.layers.Layer):
    """One feature vector per window from a layer's output: `mean` over time, `stats` (mean, std and max over
    time, concatenated), or `none` (the layer is already one vector per window, as audionet's `pooled`)."""

    def __init__(self, architecture: str = "audionet", layer: str = "pooled", mode: str = "none", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("none", "mean", "stats"):
            raise ValueError(f"mode must be none, mean or stats, got {mode!r}")
        self.architecture, self.layer, self.mode = str(architecture), str(layer), mode

    @property
    def student_facts(self) -> tuple[str, str]:
        """The architecture of the student this classifier was made from, and the layer it reads."""
        return self.architecture, self.layer

    def call(self, inputs):
        if self.mode == "none":
            return inputs
        mean = ops.mean(inputs, axis=1)
        if self.mode == "mean":
            return mean
        std = ops.sqrt(ops.maximum(ops.mean(ops.square(inputs - ops.expand_dims(mean, 1)), axis=1), 0.0))
        return ops.concatenate([mean, std, ops.max(inputs, axis=1)], axis=-1)

    def compute_output_shape(self, input_shape):
        if self.mode == "none":
            return input_shape
        channels = input_shape[-1]
        return (input_shape[0], channels * 3 if self.mode == "stats" and channels is not None else channels)

    def get_config(self):
        return {**super().get_config(), "architecture": self.architecture, "layer": self.layer, "mode": self.mode}


def layer_choices(architecture: str) -> tuple[str, ...]:
    """The layers a classifier may be put on: audionet's `pooled` (16) and `conv` (48 statistics); SoundNet's table."""
    from audionet_tf.model import soundnet

    if architecture == "audionet":
        return ("pooled", "conv")
    return soundnet.embedding_layers(architecture)


def default_layer(architecture: str) -> str:
    """The student's embedding: audionet's `pooled`, SoundNet-8's `pool5`, SoundNet-5's `conv4`."""
    from audionet_tf.model import soundnet

    return soundnet.DEFAULT_EMBEDDING.get(architecture, "pooled")


def build_classifier(student: keras.Model, num_classes: int, layer: str | None = None) -> keras.Model:
    """`student` (its weights shared) up to `layer`, its features per window, and a new head of `num_classes` logits."""
    from audionet_tf.model import soundnet

    architecture = soundnet.architecture_of(student)
    layer = layer or default_layer(architecture)
    if layer not in layer_choices(architecture):
        raise ValueError(f"layer must be one of {', '.join(layer_choices(architecture))} for {architecture}, "
                         f"got {layer!r}")
    if architecture == "audionet":
        source, mode = ("pooled", "none") if layer == "pooled" else ("maxpool", "stats")
    else:
        source, mode = layer, "mean"
    features = Features(architecture, layer, mode, name=FEATURES)(student.get_layer(source).output)
    logits = keras.layers.Dense(num_classes, name=HEAD)(features)
    return keras.Model(student.input, logits, name=f"{student.name}_classifier")


def classifier_facts(model: keras.Model) -> tuple[str, str] | None:
    """(architecture, layer) of a classifier made by `build_classifier`; None for a student."""
    for layer in model.layers:
        if isinstance(layer, Features):
            return layer.student_facts
    return None


def features_model(model: keras.Model) -> keras.Model | None:
    """A classifier's features per window (sharing its weights); None for a student."""
    if classifier_facts(model) is None:
        return None
    return keras.Model(model.input, model.get_layer(FEATURES).output, name=f"{model.name}_features")


def student_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers a classifier took from its student (everything but the features and the head)."""
    return [layer for layer in model.layers if layer.name not in (FEATURES, HEAD) and layer.weights]
