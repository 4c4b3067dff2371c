"""Formulations of the student's training step, timed against the one the project uses.

    python benchmarks/train_step_variants.py [--repeats 6]

One step = the distillation loss and its gradients with respect to every weight, batch 512
of 640-sample windows, 1000 classes, input scale 256. Variants:

- convolution: TensorFlow's (what `keras.layers.Conv1D` runs) or frames times a matrix
  (the input needs no gradient, only the filter does);
- max pool: the project's `EdgeMaxPooling1D` with TensorFlow's gradient, or the same forward
  pass with a custom gradient that compares shifted slices of the input with the forward
  maxima (each window's gradient goes to its first maximum, as TensorFlow's does);
- with and without XLA (`jit_compile`).

All variants are checked to give the project's loss and gradients before timing. Repeats are interleaved; the
median per variant is printed as milliseconds and as a ratio to the project's step.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from audionet_tf.model import losses  # noqa: E402
from audionet_tf.model.student import CONV, POOL, EdgeMaxPooling1D  # noqa: E402

SCALE = 256.0


def conv_tf(x, kernel, bias):
    """TensorFlow's convolution, as Conv1D runs it."""
    _, taps, pad, stride = CONV
    padded = tf.pad(x * SCALE, [[0, 0], [pad, pad], [0, 0]])
    return tf.nn.conv1d(padded, kernel, stride, "VALID") + bias


def conv_frames(x, kernel, bias):
    """Frames of the padded input times the filter matrix (taps = 32 pairs of samples)."""
    _, taps, pad, stride = CONV
    padded = tf.pad(x[..., 0] * SCALE, [[0, 0], [pad, pad]])
    pairs = tf.reshape(padded, [tf.shape(padded)[0], -1, stride])
    length = tf.shape(pairs)[1] - (taps // stride - 1)
    frames = tf.concat([pairs[:, j: j + length, :] for j in range(taps // stride)], axis=2)
    return tf.matmul(frames, kernel[:, 0, :]) + bias


def pool_grad(x, y, dy, size: int, pad: int):
    """Gradient of a stride-1 max pool: each window's gradient to its first maximum, by shifted slices."""
    length, out_length = tf.shape(x)[1], tf.shape(y)[1]
    edge = tf.fill(tf.stack([tf.shape(x)[0], pad, tf.shape(x)[2]]), tf.constant(-np.inf, x.dtype))
    xpad = tf.concat([edge, x, edge], axis=1)
    found = grad = None
    for d in range(size):
        equal = tf.equal(xpad[:, d: d + out_length, :], y)
        take = equal if found is None else tf.logical_and(equal, tf.logical_not(found))
        found = equal if found is None else tf.logical_or(found, equal)
        part = tf.pad(tf.where(take, dy, tf.zeros_like(dy)), [[0, 0], [d, size - 1 - d], [0, 0]])
        grad = part if grad is None else grad + part
    return grad[:, pad: pad + length, :]


def pool_custom(layer):
    """The project's pool forward with the shifted-slice gradient."""
    _, size, pad, _ = POOL

    def pool(inputs):
        @tf.custom_gradient
        def forward(x):
            y = layer(x)

            def grad(dy):
                return pool_grad(x, y, dy, size, pad)
            return y, grad
        return forward(inputs)
    return pool


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--calls", type=int, default=3, help="steps per timing")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(-1, 1, (512, 640, 1)).astype(np.float32))
    teacher = tf.constant(rng.normal(size=(512, 1000)).astype(np.float32))
    kernel = tf.Variable(rng.normal(size=(64, 1, 16)).astype(np.float32) * 0.1 / SCALE)
    bias = tf.Variable(np.zeros(16, np.float32))
    dense = tf.Variable(rng.normal(size=(16, 1000)).astype(np.float32) * 0.1)
    dense_bias = tf.Variable(np.zeros(1000, np.float32))
    weights = [kernel, bias, dense, dense_bias]
    layer = EdgeMaxPooling1D(POOL[1], POOL[2])
    pools = {"TF pool": layer, "custom-gradient pool": pool_custom(layer)}
    convs = {"TF conv": conv_tf, "frames x matrix": conv_frames}
    steps, losses_seen = {}, {}
    for conv_name, conv in convs.items():
        for pool_name, pool in pools.items():
            for jit in (False, True):
                def step(conv=conv, pool=pool):
                    with tf.GradientTape() as tape:
                        features = tf.reduce_mean(pool(conv(x, kernel, bias)), axis=1)
                        loss = tf.reduce_mean(losses.kl_divergence(teacher, features @ dense + dense_bias))
                    return loss, tape.gradient(loss, weights)
                name = f"{conv_name}, {pool_name}, {'XLA' if jit else 'no XLA'}"
                steps[name] = tf.function(step, jit_compile=jit, autograph=False)
                loss, grads = steps[name]()
                losses_seen[name] = (float(loss), [g.numpy() for g in grads])
    reference = "TF conv, TF pool, no XLA"
    ref_loss, ref_grads = losses_seen[reference]
    for name, (value, grads) in losses_seen.items():
        if abs(value - ref_loss) > 1e-4 * max(1.0, abs(ref_loss)):
            raise SystemExit(f"{name}: loss {value} differs from {ref_loss}")
        for got, want in zip(grads, ref_grads):
            if np.abs(got - want).max() > 1e-3 * max(1e-6, np.abs(want).max()):
                raise SystemExit(f"{name}: gradients differ from the project's step")
    times = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(args.calls):
                step()[1][0].numpy()
            times[name].append((time.perf_counter() - start) / args.calls * 1000)
    base = float(np.median(times[reference]))
    print(f"loss and gradients, batch 512 x 640 samples, 1000 classes; median of {args.repeats} interleaved repeats")
    print(f"{'variant':48s} {'ms/step':>8s} {'time vs the project':>20s}")
    for name, values in times.items():
        med = float(np.median(values))
        print(f"{name:48s} {med:8.1f} {med / base:19.2f}x{'  (the project)' if name == reference else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
