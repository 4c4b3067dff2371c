"""Two replicas against one for SoundNet-5: how far their weights part, and why (a numerical experiment).

One batch of random windows, the same starting weights, N training steps (Keras's own `train_step`
under `strategy.run`) on one replica and on MirroredStrategy over two logical CPUs; per weight array,
how far one replica moved it and how far the other run ended from it (largest element, and L2 norm
relative to the move). Comparisons (`--compare`):

  replicas  two replicas against one (synchronised BatchNorms, as the model builds them)
  nosync    the same with each replica normalising by its own half of the batch
  reorder   one replica against one replica fed the batch's examples in another order: the same
            mathematics, sums in another order (what rounding alone does)

`--float64` runs it all in float64 (rounding too small for Adam to amplify). docs/training.md,
"SoundNet's students", gives the figures. Run from the repository root:

  python benchmarks/soundnet_replicas.py --steps 10 --compare replicas
"""
from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    """Print, per weight array, the two runs' difference against how far training moved it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    parser.add_argument("--compare", choices=["replicas", "nosync", "reorder"], default="replicas")
    parser.add_argument("--float64", action="store_true")
    args = parser.parse_args()

    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras

    from audionet_tf.model import losses
    from audionet_tf.model.student import build_student

    if args.float64:
        keras.config.set_floatx("float64")
        keras.config.set_dtype_policy("float64")
    length, classes = 56798, 4
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.3, 0.3, (args.batch, length, 1)).astype(keras.config.floatx())
    y = (3 * rng.standard_normal((args.batch, classes))).astype("float32")
    keras.utils.set_random_seed(3)
    start = build_student("soundnet5", length, classes).get_weights()

    def run(strategy, order, synchronized=True):
        with strategy.scope():
            model = build_student("soundnet5", length, classes)
            for layer in model.layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.synchronized = synchronized
            model.set_weights(start)
            optimizer = keras.optimizers.Adam(1e-3) if args.optimizer == "adam" else keras.optimizers.SGD(1e-3)
            model.compile(optimizer=optimizer, loss=losses.DistillationLoss(1.0), jit_compile=False)
            model.optimizer.build(model.trainable_variables)
        data = tf.data.Dataset.from_tensor_slices((x[order], y[order])).batch(args.batch).repeat()
        iterator = iter(strategy.experimental_distribute_dataset(data))

        @tf.function
        def step(batch):
            strategy.run(model.train_step, args=(batch,))

        for _ in range(args.steps):
            step(next(iterator))
        return [w.numpy() for w in model.weights], [w.path for w in model.weights]

    one_device = tf.distribute.OneDeviceStrategy("/cpu:0")
    in_order = np.arange(args.batch)
    reference, names = run(one_device, in_order)
    if args.compare == "reorder":
        other, _ = run(one_device, np.roll(in_order, 3))
    else:
        other, _ = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), in_order,
                       synchronized=args.compare == "replicas")
    print(f"soundnet5, batch {args.batch}, {args.steps} {args.optimizer} steps, {keras.config.floatx()}, "
          f"compare: {args.compare}")
    print(f"{'weights':28s} {'moved':>9s} {'diff':>9s} {'diff/moved':>10s} {'L2 ratio':>9s}")
    for name, a, b, s in zip(names, reference, other, start):
        moved = float(np.abs(a - s).max())
        diff = float(np.abs(a - b).max())
        l2 = float(np.linalg.norm(a - b) / max(np.linalg.norm(a - s), 1e-300))
        print(f"{name:28s} {moved:9.2e} {diff:9.2e} {diff / max(moved, 1e-300):10.2e} {l2:9.2e}")


if __name__ == "__main__":
    main()
