"""The distillation objective and the agreement metrics (y_true: teacher logits, y_pred: student logits)."""
from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops


def kl_divergence(teacher_logits, student_logits, temperature: float = 1.0):
    """Per-example KL(softmax(teacher / T) || softmax(student / T)), in nats."""
    # The dataset's logits are float32 whatever the student computes in (float64 in the replica tests).
    teacher_logits = ops.cast(teacher_logits, student_logits.dtype)
    teacher_log_p = ops.log_softmax(teacher_logits / temperature, axis=-1)
    student_log_p = ops.log_softmax(student_logits / temperature, axis=-1)
    return ops.sum(ops.exp(teacher_log_p) * (teacher_log_p - student_log_p), axis=-1)


@keras.saving.register_keras_serializable(package="audionet_tf")
class DistillationLoss(keras.losses.Loss):
    """KL(softmax(t/T) || softmax(s/T)) * T^2: SoundNet's objective; T^2 keeps gradients comparable across T."""

    def __init__(self, temperature: float = 1.0, name: str = "distillation", **kwargs):
        super().__init__(name=name, **kwargs)
        self.temperature = float(temperature)

    def call(self, y_true, y_pred):
        return kl_divergence(y_true, y_pred, self.temperature) * (self.temperature ** 2)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


def kl(y_true, y_pred):
    """KL divergence at T = 1 (comparable across runs whatever the training temperature)."""
    return kl_divergence(y_true, y_pred, 1.0)


def _top_class(logits):
    """The index of the largest logit of each row."""
    # TensorFlow's own argmax: Keras's ops.argmax adds four passes over the logits to rank -0.0 below
    # 0.0, which no agreement depends on; in a training step of the slides' student they cost more
    # than the dense layer and its gradients.
    return tf.math.argmax(logits, axis=-1, output_type=tf.int32)


def top_k_agreement(y_true, y_pred, k: int):
    """1 where the teacher's top class is among the student's top k classes, else 0."""
    teacher_top = _top_class(y_true)
    if k == 1:
        return ops.cast(ops.equal(_top_class(y_pred), teacher_top), "float32")
    # in_top_k takes float32 only (a float64 student's logits are cast; the ranking is the same but for ties).
    return ops.cast(ops.in_top_k(teacher_top, ops.cast(y_pred, "float32"), k), "float32")


def top1_agreement(y_true, y_pred):
    """Student argmax equals teacher argmax."""
    return top_k_agreement(y_true, y_pred, 1)


def top5_agreement(y_true, y_pred):
    """Teacher argmax is among the student's top 5."""
    return top_k_agreement(y_true, y_pred, 5)


def distillation_metrics() -> list[keras.metrics.Metric]:
    """The metrics every run reports: KL, top-1 and top-5 agreement."""
    return [
        keras.metrics.MeanMetricWrapper(kl, name="kl"),
        keras.metrics.MeanMetricWrapper(top1_agreement, name="top1_agreement"),
        keras.metrics.MeanMetricWrapper(top5_agreement, name="top5_agreement"),
    ]
