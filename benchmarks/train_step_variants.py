"""Where the student's training step goes, op by op, and formulations of the step timed against the project's.

    python benchmarks/train_step_variants.py [--repeats 8]
    ONEDNN_MAX_CPU_ISA=AVX2 XLA_FLAGS=--xla_cpu_max_isa=AVX2 python benchmarks/train_step_variants.py

One step = the distillation loss and its gradients with respect to every weight, batch 512
of 640-sample windows, 1000 classes, input scale 256. Two tables, each timing compiled
functions in interleaved repeats (the machine's load hits all of them alike):

- the profile: each part of a step on its own (convolution forward, forward and weight
  gradient, the max pool and its gradient, the mean over time, the dense layer, the KL and its
  gradient, Adam's update), given the upstream gradient a step would give it; a share is of the
  project's step, printed for the parts it runs (the pairs conv with its compiled bias sum, the
  pool and the mean whose gradient reaches the pool as one row);
- the variants: the whole step with one part formulated differently, against TensorFlow's
  own convolution and max pool (what the project ran before the pool's training pass): the
  project's step (the student's own training pass, `build_audionet(...)(x, training=True)`), the
  stride-2 conv with the pool's offsets (`EdgeMaxPooling1D` in training: one XLA-compiled pass
  keeping each window's winning offset, and a gradient routed by them) and the mean's tiled
  gradient, the convolution as
  blocks of the framed input times a banded matrix (`blocks of S`: S outputs per row, one
  matrix product forward and one for the weight gradient), the pool's gradient as one
  XLA-compiled function (each window's gradient to its first maximum, by shifted slices),
  the KL as one log-sum-exp (`fused KL`), the whole step under XLA (`jit_compile`), the
  convolution as a stride-1 one over sample pairs (`[N, L/2, 2]` against a `[32, 2, 16]` kernel: the
  same products), the max pool and the mean fused (the forward pass keeps each conv output's share
  of the windows it wins; the gradient is that share times the features' gradient), and the KL
  alone under XLA.

Every variant is checked to give the project's loss and gradients before it is timed. Each
row prints the median wall time and the median CPU time (user + system, all threads) per
call: on a shared machine the CPU time is the steadier measure of the work, the wall time
what a user waits. Set `ONEDNN_MAX_CPU_ISA` and `XLA_FLAGS=--xla_cpu_max_isa=` to see the
kernels an older CPU gets.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from audionet_tf.model import losses  # noqa: E402
from audionet_tf.model.student import CONV, POOL, EdgeMaxPooling1D, TimeMean, build_audionet  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine  # noqa: E402

SCALE = 256.0
BATCH, LENGTH, CLASSES, FILTERS = 512, 640, 1000, 16


def conv_tf(padded, kernel, bias):
    """TensorFlow's convolution, as Conv1D runs it (oneDNN on x86)."""
    return tf.nn.conv1d(padded, kernel, CONV[3], "VALID") + bias


def block_indices(outputs: int, taps: int, stride: int) -> tuple[int, np.ndarray]:
    """Rows of adjacent input blocks per output block, and the banded matrix's gather indices (taps: zero)."""
    block = stride * outputs
    rows = -(-(block + taps - stride) // block)
    index = np.full((block * rows, outputs), taps, np.int32)
    for j in range(block * rows):
        for u in range(outputs):
            if 0 <= j - stride * u < taps:
                index[j, u] = j - stride * u
    return rows, index


def conv_blocks(outputs: int):
    """The convolution as [N x blocks, rows x block] @ [rows x block, outputs x filters]: S outputs per row."""
    _, taps, _, stride = CONV
    rows, index = block_indices(outputs, taps, stride)
    block = stride * outputs

    def conv(padded, kernel, bias):
        n, length = tf.shape(padded)[0], tf.shape(padded)[1]
        out_length = (length - taps) // stride + 1
        blocks = (out_length + outputs - 1) // outputs
        need = block * (blocks + rows - 1)
        flat = tf.pad(padded[..., 0], [[0, 0], [0, tf.maximum(need - length, 0)]])[:, :need]
        pieces = tf.reshape(flat, [n, blocks + rows - 1, block])
        framed = tf.concat([pieces[:, j: j + blocks, :] for j in range(rows)], axis=2)
        taps_zero = tf.concat([kernel[:, 0, :], tf.zeros([1, tf.shape(kernel)[2]])], axis=0)
        banded = tf.reshape(tf.gather(taps_zero, index), [block * rows, -1])
        out = tf.matmul(tf.reshape(framed, [-1, block * rows]), banded)
        return tf.reshape(out, [n, blocks * outputs, -1])[:, :out_length] + bias
    return conv


def conv_pairs(padded, kernel, bias):
    """The stride-2 convolution as a stride-1 one over sample pairs: [N, L/2, 2] input, [32, 2, F] kernel."""
    n, taps = tf.shape(padded)[0], CONV[1]
    pairs = tf.reshape(padded, [n, -1, 2])
    return tf.nn.conv1d(pairs, tf.reshape(kernel, [taps // 2, 2, -1]), 1, "VALID") + bias


@tf.function(jit_compile=True, autograph=False)
def _offsets_and_mean(c):
    """The pool's maxima averaged over time, and each window's winning offset (one compiled pass)."""
    _, size, pad, _ = POOL
    n = tf.shape(c)[1] + 2 * pad - size + 1
    edge = tf.fill(tf.stack([tf.shape(c)[0], pad, tf.shape(c)[2]]), tf.constant(-np.inf, c.dtype))
    padded = tf.concat([edge, c, edge], axis=1)
    best, offset = padded[:, :n], tf.zeros(tf.stack([tf.shape(c)[0], n, tf.shape(c)[2]]), tf.int32)
    for d in range(1, size):
        window = padded[:, d: d + n]
        wins = window > best
        best, offset = tf.where(wins, window, best), tf.where(wins, tf.constant(d, tf.int32), offset)
    return tf.reduce_mean(best, axis=1), offset


@tf.function(jit_compile=True, autograph=False)
def _win_shares(offset, length):
    """Per conv output, the windows it wins over the number of windows: d(mean of the maxima)/d(conv output)."""
    _, size, pad, _ = POOL
    total = None
    for d in range(size):
        part = tf.pad(tf.cast(tf.equal(offset, d), tf.float32), [[0, 0], [d, size - 1 - d], [0, 0]])
        total = part if total is None else total + part
    return total[:, pad: pad + length] / tf.cast(tf.shape(offset)[1], tf.float32)


def pool_mean_fused(c):
    """Max pool and mean over time in one: the forward pass keeps each conv output's share of the wins, so
    the gradient is that share times the features' gradient (the mean's gradient is the same at every time)."""
    @tf.custom_gradient
    def forward(x):
        features, offset = _offsets_and_mean(x)
        shares = _win_shares(offset, tf.shape(x)[1])
        return features, lambda g: shares * g[:, None, :]
    return forward(c)


def pool_gradient(x, y, dy):
    """Gradient of the -inf-padded stride-1 max pool: each window's gradient to its first maximum."""
    _, size, pad, _ = POOL
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


def pool_xla_gradient(layer):
    """The project's pool forward, its gradient one XLA-compiled function."""
    compiled = tf.function(pool_gradient, jit_compile=True, autograph=False)

    def pool(inputs):
        @tf.custom_gradient
        def forward(x):
            y = layer(x)
            return y, lambda dy: compiled(x, y, dy)
        return forward(inputs)
    return pool


def kl_fused(teacher_logits, student_logits):
    """KL(softmax(t) || softmax(s)) as sum p (log p - s) + logsumexp(s): one softmax of the student fewer."""
    teacher_log_p = tf.nn.log_softmax(teacher_logits)
    teacher_p = tf.exp(teacher_log_p)
    return (tf.reduce_sum(teacher_p * (teacher_log_p - student_logits), axis=-1)
            + tf.reduce_logsumexp(student_logits, axis=-1))


def timed(functions: dict, repeats: int, calls: int) -> dict[str, tuple[float, float]]:
    """Median wall and CPU milliseconds per call of each function, in interleaved repeats."""
    for function in functions.values():
        tf.nest.map_structure(np.asarray, function())
    wall = {name: [] for name in functions}
    cpu = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(calls):
                result = function()
            tf.nest.map_structure(np.asarray, result)
            wall[name].append((time.perf_counter() - start) / calls * 1000)
            cpu[name].append((time.process_time() - start_cpu) / calls * 1000)
    return {name: (float(np.median(wall[name])), float(np.median(cpu[name]))) for name in functions}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--calls", type=int, default=3, help="calls per timing")
    parser.add_argument("--no-profile", action="store_true", help="only the whole-step variants")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    _, taps, pad, _ = CONV
    x = tf.constant(rng.uniform(-1, 1, (BATCH, LENGTH, 1)).astype(np.float32))
    padded = tf.pad(x * SCALE, [[0, 0], [pad, pad], [0, 0]])
    teacher = tf.constant(rng.normal(size=(BATCH, CLASSES)).astype(np.float32))
    kernel = tf.Variable(rng.normal(size=(taps, 1, FILTERS)).astype(np.float32) * 0.1 / SCALE)
    bias = tf.Variable(np.zeros(FILTERS, np.float32))
    dense = tf.Variable(rng.normal(size=(FILTERS, CLASSES)).astype(np.float32) * 0.1)
    dense_bias = tf.Variable(np.zeros(CLASSES, np.float32))
    weights = [kernel, bias, dense, dense_bias]
    layer = EdgeMaxPooling1D(POOL[1], POOL[2])
    print(f"CPU: {machine.cpu_description()}; ISA caps: {machine.isa_caps()}; at start: {machine.load()}", flush=True)

    def step_of(conv=conv_tf, pool=layer, kl=losses.kl_divergence, pool_mean=None):
        def step():
            with tf.GradientTape() as tape:
                conv_out = conv(padded, kernel, bias)
                features = pool_mean(conv_out) if pool_mean else tf.reduce_mean(pool(conv_out), axis=1)
                loss = tf.reduce_mean(kl(teacher, features @ dense + dense_bias))
            return loss, tape.gradient(loss, weights)
        return step

    def training_pool(inputs):
        return layer(inputs, training=True)

    # The project's step: the student's own training pass (pairs conv with its compiled bias sum, the pool's
    # offsets, the mean's gradient read as one row), the same weights.
    student = build_audionet(LENGTH, CLASSES, input_scale=SCALE)
    student.get_layer("conv").set_weights([kernel.numpy(), bias.numpy()])
    student.get_layer("logits").set_weights([dense.numpy(), dense_bias.numpy()])

    def student_step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(losses.kl_divergence(teacher, student(x, training=True)))
        return loss, tape.gradient(loss, student.trainable_weights)

    reference = "TF conv and pool (oneDNN), no XLA"
    project = "the project's step (the student's training pass)"
    variants = {
        reference: (step_of(), False),
        project: (student_step, False),
        "stride-2 conv, pool offsets, tiled mean gradient": (step_of(pool=training_pool), False),
        "pool with offsets and fused KL": (step_of(pool=training_pool, kl=kl_fused), False),
        "whole step under XLA": (step_of(), True),
        "conv as blocks of 8 (matmul)": (step_of(conv=conv_blocks(8)), False),
        "conv as blocks of 8, whole step under XLA": (step_of(conv=conv_blocks(8)), True),
        "conv as blocks of 32 (matmul)": (step_of(conv=conv_blocks(32)), False),
        "pool gradient one XLA function": (step_of(pool=pool_xla_gradient(layer)), False),
        "fused KL": (step_of(kl=kl_fused), False),
        "conv over sample pairs (stride 1), pool offsets": (step_of(conv=conv_pairs, pool=training_pool), False),
        "pool and mean fused (win shares)": (step_of(pool_mean=pool_mean_fused), False),
        "pairs conv, fused pool and mean": (step_of(conv=conv_pairs, pool_mean=pool_mean_fused), False),
        "pool offsets, KL under XLA": (step_of(pool=training_pool, kl=tf.function(
            losses.kl_divergence, jit_compile=True, autograph=False)), False),
    }
    steps = {name: tf.function(step, jit_compile=jit, autograph=False) for name, (step, jit) in variants.items()}
    ref_loss, ref_grads = steps[reference]()
    for name, step in steps.items():
        value, grads = step()
        if abs(float(value) - float(ref_loss)) > 1e-4 * max(1.0, abs(float(ref_loss))):
            raise SystemExit(f"{name}: loss {float(value)} differs from {float(ref_loss)}")
        for got, want in zip(grads, ref_grads):
            if np.abs(got.numpy() - want.numpy()).max() > 1e-3 * max(1e-6, np.abs(want.numpy()).max()):
                raise SystemExit(f"{name}: gradients differ from the project's step")

    parts = {}
    if not args.no_profile:
        conv_out = tf.constant(conv_tf(padded, kernel, bias).numpy())
        pooled = tf.constant(layer(conv_out).numpy())
        features = tf.constant(tf.reduce_mean(pooled, axis=1).numpy())
        logits = tf.constant((features @ dense + dense_bias).numpy())
        upstream = {shape: tf.constant(rng.normal(size=shape).astype(np.float32) * 1e-4)
                    for shape in (tuple(conv_out.shape), tuple(pooled.shape), tuple(features.shape),
                                  tuple(logits.shape))}

        def grad_of(fn, wrt, out_shape):
            def run():
                with tf.GradientTape() as tape:
                    tape.watch(wrt)
                    out = fn()
                return tape.gradient(out, wrt, output_gradients=upstream[out_shape])
            return run

        def loss_grad(kl):
            def run():
                with tf.GradientTape() as tape:
                    tape.watch(logits)
                    loss = tf.reduce_mean(kl(teacher, logits))
                return tape.gradient(loss, logits)
            return run

        student_conv, time_mean = student.get_layer("conv"), TimeMean()
        optimizer = keras.optimizers.Adam(1e-4)
        optimizer.build(weights)
        gradients = [tf.constant(np.full(w.shape, 1e-3, np.float32)) for w in weights]
        part_functions = {
            "conv forward": lambda: conv_tf(padded, kernel, bias),
            "conv forward + weight gradient": grad_of(lambda: conv_tf(padded, kernel, bias), [kernel, bias],
                                                      tuple(conv_out.shape)),
            "pairs conv + weight gradient (project's)": grad_of(
                lambda: student_conv(padded, training=True), [student_conv.kernel.value, student_conv.bias.value],
                tuple(conv_out.shape)),
            "max pool forward": lambda: layer(conv_out),
            "max pool forward + gradient (oneDNN)": grad_of(lambda: layer(conv_out), conv_out, tuple(pooled.shape)),
            "max pool forward + gradient (offsets)": grad_of(lambda: layer(conv_out, training=True), conv_out,
                                                             tuple(pooled.shape)),
            "pool and mean forward + gradient (row)": grad_of(
                lambda: time_mean(layer(conv_out, training=True), training=True), conv_out, tuple(features.shape)),
            "mean over time forward + gradient": grad_of(lambda: tf.reduce_mean(pooled, axis=1), pooled,
                                                         tuple(features.shape)),
            "dense forward + gradients": grad_of(lambda: features @ dense + dense_bias, [features, dense, dense_bias],
                                                 tuple(logits.shape)),
            "softmax/KL forward + gradient": loss_grad(losses.kl_divergence),
            "fused KL forward + gradient": loss_grad(kl_fused),
            "Adam update (4 weights)": lambda: optimizer.apply(gradients, weights),
        }
        parts = {name: tf.function(fn, autograph=False) for name, fn in part_functions.items()}
    times = timed({**parts, **steps}, args.repeats, args.calls)
    print(f"batch {BATCH} x {LENGTH} samples, {CLASSES} classes; medians of {args.repeats} interleaved repeats of "
          f"{args.calls} calls; at end: {machine.load()}")
    if parts:
        step_wall, step_cpu = times[project]
        print(f"\n{'part of the project step':40s} {'wall ms':>8s} {'CPU ms':>8s} {'CPU share':>10s}")
        for name in parts:
            wall, cpu = times[name]
            share = "" if name in ("conv forward", "max pool forward", "fused KL forward + gradient",
                                   "max pool forward + gradient (oneDNN)", "conv forward + weight gradient",
                                   "max pool forward + gradient (offsets)", "mean over time forward + gradient",
                                   ) else f"{cpu / step_cpu:9.0%}"
            print(f"{name:40s} {wall:8.2f} {cpu:8.2f} {share:>10s}")
        label = "whole step (the project's)"
        print(f"{label:40s} {step_wall:8.2f} {step_cpu:8.2f}")
    base_wall, base_cpu = times[reference]
    print(f"\n{'variant (whole step)':48s} {'wall ms':>8s} {'vs row 1':>10s} {'CPU ms':>8s} {'vs row 1':>10s}")
    for name in steps:
        wall, cpu = times[name]
        print(f"{name:48s} {wall:8.1f} {wall / base_wall:9.2f}x {cpu:8.1f} {cpu / base_cpu:9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
