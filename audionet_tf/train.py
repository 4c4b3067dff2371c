"""Train the AudioNet student on a prepared dataset.

    python -m audionet_tf.train --data data/demo --epochs 50 --name demo
    python -m audionet_tf.train --pipeline pipelines/demo.toml     # prepares what is missing, then trains
    python -m audionet_tf.train                                     # the slides' seed experiment

Defaults are the slides' recipe (batch 512, Adam 1e-4, 5000 epochs, KL to the teacher's
softmax). The run goes to `runs/<name>/` (config, TensorBoard logs, checkpoints, backup,
history, final model) and is exported to `saved_models/<name>/`. Running the same command
again after a crash continues the run from its last backup; running it after the run
finished starts a new run `<name>-2`. Watch with `tensorboard --logdir runs`.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
import warnings
from typing import Any, Sequence

from audionet_tf import config as cfg
from audionet_tf import records
from audionet_tf.config import PipelineConfig
from audionet_tf.errors import AudioNetError, ConfigError

log = logging.getLogger("audionet_tf.train")

SEED_PIPELINE = "pipelines/seed.toml"
DEMO_PIPELINE = "pipelines/demo.toml"


def default_pipeline(name: str) -> str:
    """A shipped pipeline: relative to the working directory, else beside the package (a source checkout)."""
    if os.path.isfile(name):
        return name
    beside = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), name)
    return beside if os.path.isfile(beside) else name
# Settings that may differ when the same run is started again (everything else must match).
RESUMABLE_CHANGES = {"collective_timeout_s", "epochs", "quiet", "export", "report", "histogram_every", "checkpoint_every", "devices",
                     "validate_every"}


class TrainingDiverged(AudioNetError):
    """The loss became NaN or infinite."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The train command's flags (each overrides the pipeline file's value)."""
    p = argparse.ArgumentParser(prog="python -m audionet_tf.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", help="pipeline TOML file (default: pipelines/seed.toml when --data is not given)")
    p.add_argument("--data", help="prepared dataset directory (default: the pipeline's prepare.out)")
    p.add_argument("--epochs", type=_positive_int)
    p.add_argument("--batch-size", type=_positive_int, help="global batch, split across replicas")
    p.add_argument("--learning-rate", type=_positive_float)
    p.add_argument("--temperature", type=_positive_float, help="distillation temperature T (loss scaled by T^2)")
    p.add_argument("--devices", type=_positive_int, help="number of replicas (GPUs; logical CPUs when none)")
    p.add_argument("--strategy", choices=["mirrored", "multiworker"])
    p.add_argument("--collective-timeout-s", type=_positive_float,
                   help="multiworker: seconds before workers give up on a dead peer")
    p.add_argument("--name", help="run name (default: the pipeline's, or the dataset directory's name)")
    p.add_argument("--runs-dir")
    p.add_argument("--export-dir")
    p.add_argument("--seed", type=int)
    p.add_argument("--quiet", action="store_true", default=None, help="log lines instead of progress bars")
    p.add_argument("--deterministic", action="store_true", default=None, help="reproducible data order and ops")
    p.add_argument("--cache", choices=["auto", "memory", "none"])
    p.add_argument("--steps-per-execution", type=_nonnegative_int, help="0: a whole epoch per call")
    p.add_argument("--checkpoint-every", type=_positive_int)
    p.add_argument("--histogram-every", type=_positive_int)
    p.add_argument("--validate-every", type=_positive_int,
                   help="epochs between evaluations of the held-out clips (checkpoint and last epochs always)")
    p.add_argument("--input-scale", type=_positive_float, help="waveform gain inside the model")
    p.add_argument("--no-export", dest="export", action="store_false", default=None)
    p.add_argument("--no-report", dest="report", action="store_false", default=None)
    p.add_argument("--no-prepare", dest="prepare", action="store_false", default=True,
                   help="do not prepare a missing dataset from the pipeline's clip list")
    return p


def resolve_config(args: argparse.Namespace) -> PipelineConfig:
    """Defaults ← pipeline file ← flags."""
    pipeline = args.pipeline
    if pipeline is None and args.data is None:
        pipeline = default_pipeline(SEED_PIPELINE)
    config = cfg.load_pipeline(pipeline)
    train_keys = {f.name for f in dataclasses.fields(cfg.TrainConfig)}
    config = cfg.override(config, "train", {k: v for k, v in vars(args).items() if k in train_keys})
    config = cfg.override(config, "model", {"input_scale": args.input_scale})
    return config


def run_name(config: PipelineConfig) -> str:
    """The run's name: train.name, else the pipeline file's or the dataset directory's name."""
    if config.train.name:
        return config.train.name
    if config.source:
        return os.path.splitext(os.path.basename(config.source))[0]
    return os.path.basename(os.path.normpath(config.data_dir)) or "run"


def _comparable(doc: dict[str, Any]) -> dict[str, Any]:
    train = {k: v for k, v in doc.get("train", {}).items() if k not in RESUMABLE_CHANGES}
    return {"train": train, "model": doc.get("model"), "audio": doc.get("audio")}


def choose_run_dir(config: PipelineConfig, name: str, chief: bool = True) -> str:
    """The run directory: the same one to resume an unfinished run, a new one otherwise; never one to overwrite.

    Only the chief checks an unfinished directory's contents: the other workers of a cluster
    start while the chief is writing into it, and follow the same choice.
    """
    base = os.path.join(config.train.runs_dir, name)
    candidate, index = base, 1
    while True:
        config_path = os.path.join(candidate, "config.json")
        if not os.path.exists(candidate):
            return candidate
        if os.path.isfile(os.path.join(candidate, "metrics.json")):
            index += 1
            candidate = f"{base}-{index}"
            continue
        if not chief:
            return candidate
        if not os.path.isfile(config_path):
            # Hidden entries: another worker's scratch directory, a file being written.
            if not [n for n in os.listdir(candidate) if not n.startswith(".")]:
                return candidate
            raise ConfigError(f"{candidate} exists and is not a run directory; choose another --name or --runs-dir")
        with open(config_path, encoding="utf-8") as handle:
            previous = json.load(handle)
        if _comparable(previous) != _comparable(config.to_dict()):
            before, now = _comparable(previous), _comparable(config.to_dict())
            diffs = [f"{section}.{k}: {before[section].get(k)!r} then, {now[section].get(k)!r} now"
                     for section in now if isinstance(now[section], dict)
                     for k in now[section] if (before.get(section) or {}).get(k) != now[section].get(k)]
            raise ConfigError(f"run {candidate} is unfinished and was started with other settings "
                              f"({'; '.join(diffs[:4])}); run the same command to resume it, or pick another --name")
        return candidate


def ensure_dataset(config: PipelineConfig, prepare_missing: bool) -> None:
    """Prepare the pipeline's dataset when it is missing and the pipeline lists clips (train --pipeline FILE)."""
    data_dir = config.data_dir
    if os.path.isfile(os.path.join(data_dir, records.DESCRIPTION_FILE)):
        return
    has_list = bool(config.prepare.clips or config.prepare.manifest or config.prepare.demo)
    if not (prepare_missing and has_list and config.train.data in (None, config.prepare.out)):
        records.read_description(data_dir)  # raises the "how to make one" message
    try:
        from audionet_tf import prepare
    except ImportError as exc:  # pragma: no cover - the prepare module ships with the package
        raise AudioNetError(f"cannot prepare {data_dir}: {exc}") from None
    log.info("dataset %s is missing: preparing it from %s", data_dir, config.source or "the clip list")
    prepare.print_summary(prepare.prepare(config))
    records.read_description(data_dir)


def make_strategy(devices: int | None, kind: str = "mirrored", collective_timeout_s: float = 60.0):
    """MirroredStrategy over the visible GPUs (or `devices` of them); on a CPU-only host, one replica,
    or `devices` logical CPU devices (which share the same cores: for testing distribution)."""
    import tensorflow as tf

    if kind == "multiworker":
        # Without a timeout, the workers left behind when one dies wait forever in the next
        # all-reduce; with it they fail, and the whole cluster restarted with the same
        # commands resumes from the chief's last backup.
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=collective_timeout_s)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = [d.name for d in tf.config.list_logical_devices("GPU")]
        if devices is not None:
            if devices > len(names):
                raise ConfigError(f"--devices {devices}: only {len(names)} GPU(s) visible")
            names = names[:devices]
        return tf.distribute.MirroredStrategy(devices=names)
    wanted = devices or 1
    if wanted > 1:
        cpus = tf.config.list_physical_devices("CPU")
        try:
            if len(tf.config.get_logical_device_configuration(cpus[0]) or []) < wanted:
                tf.config.set_logical_device_configuration(
                    cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(wanted)])
        except RuntimeError:
            pass  # the runtime is initialised already; use the logical devices it has
        names = [d.name for d in tf.config.list_logical_devices("CPU")]
        if len(names) < wanted:
            raise ConfigError(f"--devices {wanted}: no GPU, and only {len(names)} logical CPU device(s) "
                              f"(TensorFlow was initialised before they could be made)")
        log.warning("no GPU: %d replicas on logical CPU devices sharing the same cores", wanted)
        return tf.distribute.MirroredStrategy(devices=names[:wanted])
    return tf.distribute.get_strategy()


def compile_student(model, train: cfg.TrainConfig, steps_per_execution: int = 1) -> None:
    """Compile the student with Adam, the distillation loss and the agreement metrics."""
    import keras

    from audionet_tf import losses

    model.compile(optimizer=keras.optimizers.Adam(learning_rate=train.learning_rate),
                  loss=losses.DistillationLoss(train.temperature), metrics=losses.distillation_metrics(),
                  steps_per_execution=max(1, steps_per_execution), jit_compile=False)


def replica_batches(count: int, batch_size: int, replicas: int) -> list[int]:
    """Per-replica batch sizes for one pass over `count` examples: as few global steps as
    `batch_size` allows, each replica's share as even as possible (no replica left empty
    while another has examples, when `count` allows)."""
    parts = max(1, math.ceil(count / batch_size)) * replicas
    return [count // parts + (1 if i < count % parts else 0) for i in range(parts)]


def validation_epochs(train: cfg.TrainConfig, initial_epoch: int = 0) -> list[int]:
    """The 1-based epochs after which the held-out clips are evaluated (Keras's `validation_freq`)."""
    return [e for e in range(initial_epoch + 1, train.epochs + 1)
            if e % train.validate_every == 0 or e % train.checkpoint_every == 0 or e == train.epochs]


def _write_json(path: str, doc: dict[str, Any]) -> None:
    records.atomic_write_text(path, json.dumps(doc, indent=2, default=str) + "\n")


def train(config: PipelineConfig, *, prepare_missing: bool = True, extra_callbacks: Sequence[Any] = ()) -> str:
    """Train per `config`; returns the run directory."""
    import keras
    import numpy as np
    import tensorflow as tf

    from audionet_tf import callbacks as cb
    from audionet_tf import data, model as model_lib

    t0 = time.time()
    tc = config.train
    # A repeated dataset with steps_per_epoch is deliberate (one tf.function call per epoch);
    # Keras's advice about these does not apply here.
    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")
    warnings.filterwarnings("ignore", message=".*Your input ran out of data.*")
    # First: the strategy must exist before anything initialises the TF runtime's devices.
    strategy = make_strategy(tc.devices, tc.strategy, tc.collective_timeout_s)
    ensure_dataset(config, prepare_missing)
    data_dir = config.data_dir
    description = records.read_description(data_dir)
    spec = description.spec
    data.check_description(data_dir, description, expect_window=config.audio.window_samples,
                           expect_sample_rate=config.audio.sample_rate)
    records.verify_shards(data_dir, description, checksums=sum(s.bytes for s in description.shards)
                          <= data.CHECKSUM_LIMIT_BYTES)
    train_count = description.examples("train")
    val_count = description.examples("validation")
    if train_count == 0:
        raise AudioNetError(f"dataset {data_dir} has no training examples (all clips failed or are held out)")

    name = run_name(config)
    chief = _is_chief(strategy)
    run_dir = choose_run_dir(config, name, chief)
    os.makedirs(run_dir, exist_ok=True)
    write_dir = run_dir if chief else os.path.join(run_dir, f".worker-{_task_id(strategy)}")
    doc = config.to_dict()
    doc["dataset"] = {"data_dir": os.path.abspath(data_dir), **dataclasses.asdict(spec),
                      "hop_samples": config.audio.hop_samples, "train_examples": train_count,
                      "validation_examples": val_count}
    doc["run"] = {"name": os.path.basename(run_dir), "replicas": strategy.num_replicas_in_sync}
    if chief:
        _write_json(os.path.join(run_dir, "config.json"), doc)
        class_names = records.read_class_names(data_dir, description)
        records.atomic_write_text(os.path.join(run_dir, "labels.txt"), "\n".join(class_names) + "\n")

    steps_per_epoch = max(1, math.ceil(train_count / tc.batch_size))
    spe = tc.steps_per_execution or steps_per_epoch
    if strategy.num_replicas_in_sync > 1 and spe > 1:
        # Keras 3.15's multi-step loop fails under MirroredStrategy ("must feed a value for
        # placeholder tensor"), so replicas run one step per call.
        log.info("steps_per_execution %d -> 1 under %d replicas", spe, strategy.num_replicas_in_sync)
        spe = 1
    keras.utils.set_random_seed(tc.seed)
    if tc.deterministic:
        tf.config.experimental.enable_op_determinism()
    replicas = strategy.num_replicas_in_sync
    if tc.batch_size % replicas:
        raise ConfigError(f"batch size {tc.batch_size} does not split evenly across {replicas} replicas")

    def train_input(context=None):
        return data.make_dataset(data_dir, "train", tc.batch_size, shuffle=True, seed=tc.seed, cache=tc.cache,
                                 deterministic=tc.deterministic, repeat=True, shuffle_buffer=tc.shuffle_buffer,
                                 cache_limit_mb=tc.cache_limit_mb, verify=False, input_context=context)

    def val_input(context=None):
        ds = data.make_dataset(data_dir, "validation", tc.batch_size, shuffle=False, cache=tc.cache,
                               deterministic=True, cache_limit_mb=tc.cache_limit_mb, verify=False,
                               input_context=context)
        sizes = replica_batches(val_count, tc.batch_size, replicas)
        if context is not None and context.num_input_pipelines == 1 and replicas > 1 and min(sizes) > 0:
            # A last partial batch would leave some replicas an empty batch, which TensorFlow's
            # CPU convolution returns with its input's shape ([0, L, 1]) and the model then
            # fails on; spread the held-out windows so that every replica gets some each step.
            ds = ds.rebatch(sizes).prefetch(tf.data.AUTOTUNE)
        return ds

    if replicas > 1 or tc.strategy == "multiworker":
        # Each input pipeline is built per replica group from the same seed, so the example
        # order is the one a single replica sees (a rewritten global dataset reseeds its shuffle).
        train_ds = strategy.distribute_datasets_from_function(train_input)
        val_ds = strategy.distribute_datasets_from_function(val_input) if val_count else None
    else:
        train_ds = train_input()
        val_ds = val_input() if val_count else None

    with strategy.scope():
        student = model_lib.build_audionet(None, spec.num_classes, input_scale=config.model.input_scale,
                                           conv_filters=config.model.conv_filters)
        compile_student(student, tc, spe)
    backup = cb.Backup(os.path.join(write_dir, "backup"), every=tc.checkpoint_every,
                       restore_dir=os.path.join(run_dir, "backup"))
    history = cb.History(os.path.join(write_dir, "history.csv"))
    nan_guard = cb.StopOnNaN()
    with strategy.scope():  # the optimizer's slots are distributed variables
        initial_epoch = backup.restore(student)
    history.resume_at(initial_epoch)
    if initial_epoch >= tc.epochs:
        log.info("run %s already has %d of %d epochs", run_dir, initial_epoch, tc.epochs)
    monitor = "val_kl" if val_ds is not None else "kl"
    if tc.strategy == "multiworker":
        _prepare_for_multiworker(student, strategy, spec)
    callbacks = [
        cb.LearningRateLog(),
        nan_guard,
        history,
        cb.Checkpoints(os.path.join(write_dir, "checkpoints"), monitor=monitor, every=tc.checkpoint_every),
        backup,
        keras.callbacks.TensorBoard(os.path.join(write_dir, "logs"), histogram_freq=tc.histogram_every,
                                    write_graph=False, update_freq="epoch"),
        cb.FilterImages(os.path.join(write_dir, "logs", "filters"), spec.sample_rate, every=tc.histogram_every),
        *extra_callbacks,
    ]
    if chief:
        _log_config_text(os.path.join(run_dir, "logs", "config"), doc)
    log.info("training %s: %d train / %d held-out windows, %d replica(s), batch %d, %d steps per epoch",
             run_dir, train_count, val_count, strategy.num_replicas_in_sync, tc.batch_size, steps_per_epoch)
    if initial_epoch < tc.epochs:
        student.fit(train_ds, epochs=tc.epochs, initial_epoch=initial_epoch, steps_per_epoch=steps_per_epoch,
                    validation_data=val_ds, validation_freq=validation_epochs(tc, initial_epoch),
                    callbacks=callbacks, verbose=2 if tc.quiet else 1)
    if nan_guard.nan_epoch is not None:
        raise TrainingDiverged(
            f"the loss became NaN or infinite at epoch {nan_guard.nan_epoch} of run {run_dir}; stopped. "
            f"The last good state is in {os.path.join(run_dir, 'backup')} and checkpoints/; "
            f"try a lower --learning-rate or --input-scale")

    # Every worker logs a digest of its final weights, so a cluster's agreement is easy to check.
    digest = hashlib.sha256(b"".join(np.asarray(w, np.float32).tobytes() for w in student.get_weights()))
    log.info("final weights sha256 %s (task %s)", digest.hexdigest(), _task_id(strategy))
    final = _final_metrics(student, train_ds, val_ds, steps_per_epoch)
    final["epochs"] = tc.epochs
    final["seconds"] = round(time.time() - t0, 1)
    if chief:
        cb.save_model_atomically(student, os.path.join(run_dir, "model.keras"))
        _write_json(os.path.join(run_dir, "metrics.json"), final)
        _print_summary(run_dir, final)
        _finish(config, run_dir)
    else:
        shutil.rmtree(write_dir, ignore_errors=True)
    return run_dir


def _prepare_for_multiworker(student, strategy, spec) -> None:
    """Work around two Keras 3.15 failures of `fit` under MultiWorkerMirroredStrategy with 2+ workers.

    `fit` builds the model from a first batch that it reduces eagerly across workers (which
    fails), so build it here from a zero batch; and it reduces scalar per-step logs with
    `axis=0` (which fails for scalars), so hand it logs of shape [1]. LearningRateLog turns
    them back into floats for the callbacks.
    """
    import tensorflow as tf

    with strategy.scope():
        student._symbolic_build(data_batch=(tf.zeros([1, spec.window_samples, 1]),
                                            tf.zeros([1, spec.num_classes])))
    student._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    metrics_result = student.get_metrics_result
    student.get_metrics_result = lambda: {k: tf.reshape(v, [1]) for k, v in metrics_result().items()}


def _is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0
                                             and "chief" not in resolver.cluster_spec().as_dict())


def _task_id(strategy) -> int:
    resolver = getattr(strategy, "cluster_resolver", None)
    return int(getattr(resolver, "task_id", 0) or 0)


def _log_config_text(log_dir: str, doc: dict[str, Any]) -> None:
    import tensorflow as tf

    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default():
        tf.summary.text("config", "```\n" + json.dumps(doc, indent=2, default=str) + "\n```", step=0)
    writer.close()


def _final_metrics(student, train_ds, val_ds, steps_per_epoch: int) -> dict[str, Any]:
    import numpy as np

    result = {"train": student.evaluate(train_ds, steps=steps_per_epoch, verbose=0, return_dict=True)}
    if val_ds is not None:
        result["validation"] = student.evaluate(val_ds, verbose=0, return_dict=True)
    return {k: {m: float(np.asarray(v).reshape(-1)[0]) for m, v in d.items()} for k, d in result.items()}


def _print_summary(run_dir: str, final: dict[str, Any]) -> None:
    part = final.get("validation") or final["train"]
    which = "held-out clips" if "validation" in final else "training clips (no clips held out)"
    print(f"\nrun {run_dir}: on {which}: KL {part['kl']:.4f}, top-1 agreement {part['top1_agreement']:.1%}, "
          f"top-5 agreement {part['top5_agreement']:.1%}")


def _finish(config: PipelineConfig, run_dir: str) -> None:
    """Export and report at the end of a run, when those modules are present."""
    tc = config.train
    if tc.export:
        try:
            from audionet_tf import export
        except ImportError:
            export = None
        if export is not None:
            out = os.path.join(tc.export_dir, os.path.basename(run_dir))
            export.export_run(run_dir, out)
            print(f"exported to {out}")
    if tc.report:
        try:
            from audionet_tf import report
        except ImportError:
            report = None
        if report is not None:
            index = report.make_report(run_dir)
            print(f"report: {index}")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = resolve_config(args)
        if args.pipeline is None and args.data is None:
            print(f"no --data or --pipeline: running the slides' seed experiment ({SEED_PIPELINE}); "
                  f"for the offline demo: python -m audionet_tf.train --pipeline {DEMO_PIPELINE}", file=sys.stderr)
        train(config, prepare_missing=args.prepare)
    except AudioNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to continue from the last backup", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
