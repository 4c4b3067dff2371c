"""The distillation objective and the agreement metrics against an independent NumPy computation."""
import numpy as np
import pytest

from audionet_tf.model import losses


def np_log_softmax(x):
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def np_kl(teacher, student, temperature):
    """KL(softmax(t/T) || softmax(s/T)) per row, in float64."""
    log_p = np_log_softmax(teacher.astype(np.float64) / temperature)
    log_q = np_log_softmax(student.astype(np.float64) / temperature)
    return (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)


def np_top_k_agreement(teacher, student, k):
    """1 where the teacher's argmax is among the student's k largest logits (ties are absent in random logits)."""
    top = np.argsort(-student, axis=-1)[:, :k]
    return (top == teacher.argmax(axis=-1)[:, None]).any(axis=-1).astype(np.float64)


@pytest.fixture(scope="module")
def logits():
    rng = np.random.default_rng(13)
    teacher = (4.0 * rng.standard_normal((64, 37))).astype(np.float32)
    # Students near and far from the teacher, so agreement is neither 0 nor 1.
    student = (teacher + 3.0 * rng.standard_normal(teacher.shape)).astype(np.float32)
    return teacher, student


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 4.0, 10.0])
def test_distillation_loss_is_kl_at_temperature_times_t_squared(logits, temperature):
    teacher, student = logits
    per_example = np.asarray(losses.DistillationLoss(temperature, reduction=None)(teacher, student))
    expected = np_kl(teacher, student, temperature) * temperature ** 2
    np.testing.assert_allclose(per_example, expected, rtol=1e-4, atol=1e-5)
    # The default reduction is the batch mean.
    mean = float(losses.DistillationLoss(temperature)(teacher, student))
    assert mean == pytest.approx(expected.mean(), rel=1e-4)


def test_kl_metric_is_at_temperature_one_and_zero_for_identical_logits(logits):
    teacher, student = logits
    np.testing.assert_allclose(np.asarray(losses.kl(teacher, student)), np_kl(teacher, student, 1.0),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(losses.kl(teacher, teacher)), 0.0, atol=1e-5)
    # KL is not symmetric: swapping teacher and student changes the figure.
    assert not np.allclose(np_kl(student, teacher, 1.0), np_kl(teacher, student, 1.0))


def test_saved_and_restored_loss_keeps_its_temperature(logits):
    teacher, student = logits
    loss = losses.DistillationLoss(3.0)
    again = losses.DistillationLoss.from_config(loss.get_config())
    assert float(again(teacher, student)) == pytest.approx(float(loss(teacher, student)), rel=1e-6)


@pytest.mark.parametrize("k,fn", [(1, losses.top1_agreement), (5, losses.top5_agreement)])
def test_top_k_agreement_matches_numpy(logits, k, fn):
    teacher, student = logits
    got = np.asarray(fn(teacher, student))
    expected = np_top_k_agreement(teacher, student, k)
    np.testing.assert_array_equal(got, expected)
    assert 0 < expected.mean() < 1  # the data exercise both outcomes


def test_metrics_average_over_batches_like_numpy(logits):
    teacher, student = logits
    metrics = {m.name: m for m in losses.distillation_metrics()}
    assert set(metrics) == {"kl", "top1_agreement", "top5_agreement"}
    for start in range(0, len(teacher), 16):  # four equal batches
        for metric in metrics.values():
            metric.update_state(teacher[start:start + 16], student[start:start + 16])
    assert float(metrics["kl"].result()) == pytest.approx(np_kl(teacher, student, 1.0).mean(), rel=1e-4)
    for k in (1, 5):
        assert float(metrics[f"top{k}_agreement"].result()) == pytest.approx(
            np_top_k_agreement(teacher, student, k).mean(), abs=1e-6)
