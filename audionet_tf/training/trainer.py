"""Training the student: the strategy, the run directory and its owner, the input, `fit` with its callbacks,
backups and faults turned into one message each.

The run goes to `runs/<name>/` (config, TensorBoard logs, checkpoints, backups, history, final model).
Training the same run again after a crash continues from its last backup; after the run finished,
a new run `<name>-2` starts. SIGTERM or Ctrl-C saves a backup where training is (exit status 75).
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
import hashlib
import json
import logging
import math
import os
import time
import warnings
from typing import TYPE_CHECKING, Any, Callable, Sequence

from audionet_tf.core import config as cfg, console, storage
from audionet_tf.core.config import PipelineConfig
from audionet_tf.core.errors import AudioNetError, ConfigError
from audionet_tf.core.lock import DirectoryLock, ReadLease
from audionet_tf.dataset import catalog, records

if TYPE_CHECKING:
    from audionet_tf.training.backup import Backup, StopRequest

log = logging.getLogger("audionet_tf.train")


# Settings that may differ when the same run is started again (everything else must match).
RESUMABLE_CHANGES = {"collective_timeout_s", "epochs", "quiet", "export", "report", "histogram_every",
                     "figures_before_thinning",
                     "checkpoint_every", "devices", "backup_every_steps", "backup_every_minutes", "keep_backups",
                     "dataset_wait_s", "validate_every"}


class TrainingDiverged(AudioNetError):
    """The loss became NaN or infinite."""


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
    base = storage.join(config.train.runs_dir, name)
    candidate, index = base, 1
    while True:
        config_path = storage.join(candidate, "config.json")
        if not storage.exists(candidate):
            return candidate
        if storage.isfile(storage.join(candidate, "metrics.json")):
            index += 1
            candidate = f"{base}-{index}"
            continue
        if not chief:
            return candidate
        if not storage.isfile(config_path):
            # Hidden entries: another worker's scratch directory, a file being written.
            if not [n for n in storage.listdir(candidate) if not n.startswith(".")]:
                return candidate
            raise ConfigError(f"{candidate} exists and is not a run directory; choose another --name or --runs-dir")
        previous = json.loads(storage.read_text(config_path))
        if _comparable(previous) != _comparable(config.to_dict()):
            before, now = _comparable(previous), _comparable(config.to_dict())
            diffs = [f"{section}.{k}: {before[section].get(k)!r} then, {now[section].get(k)!r} now"
                     for section in now if isinstance(now[section], dict)
                     for k in now[section] if (before.get(section) or {}).get(k) != now[section].get(k)]
            raise ConfigError(f"run {candidate} is unfinished and was started with other settings "
                              f"({'; '.join(diffs[:4])}); run the same command to resume it, or pick another --name")
        return candidate


def _finished_description(data_dir: str) -> records.Description | None:
    """The dataset's description when its preparation has finished (every clip committed or failed)."""
    try:
        description = catalog.read_description(data_dir)
    except AudioNetError:
        return None
    return description if description.finished is not None else None


def ensure_dataset(config: PipelineConfig, prepare: Callable[[PipelineConfig], None] | None,
                   chief: bool = True) -> records.Description:
    """The dataset's description, after preparing it when it is missing or unfinished and the pipeline
    lists clips (train --pipeline FILE): a prepare killed part-way goes on, labelling only what is not committed.

    In a cluster only the chief prepares; the other workers wait (at most `train.dataset_wait_s`)
    until the dataset reads back finished.
    """
    data_dir = config.data_dir
    has_list = bool(config.prepare.clips or config.prepare.manifest or config.prepare.demo or config.prepare.pictures)
    ours = prepare is not None and has_list and config.train.data in (None, config.prepare.out)
    exists = storage.exists(storage.join(data_dir, records.DESCRIPTION_FILE))
    if not ours:
        return catalog.read_description(data_dir)  # as committed, with a warning; or the "how to make one" message
    if exists:
        description = _finished_description(data_dir)
        if description is not None:
            return description
    if not chief:
        wait = config.train.dataset_wait_s
        log.info("dataset %s is %s: waiting up to %g s for the chief to prepare it", data_dir,
                 "unfinished" if exists else "missing", wait)
        deadline = time.monotonic() + wait
        while (description := _finished_description(data_dir)) is None:
            if time.monotonic() > deadline:
                raise AudioNetError(f"dataset {data_dir} was not ready after {wait:g} s (train.dataset_wait_s); "
                                    f"the chief prepares it: see its log, or run "
                                    f"`python -m audionet_tf.prepare` first and start the cluster again")
            time.sleep(2.0)
        return description
    log.info("dataset %s is %s: preparing it from %s", data_dir, "unfinished" if exists else "missing",
             config.source or "the clip list")
    prepare(config)
    return catalog.read_description(data_dir)


def make_strategy(devices: int | None, kind: str = "mirrored", collective_timeout_s: float = 60.0):
    """MirroredStrategy over the visible GPUs (or `devices` of them); on a CPU-only host, one replica,
    or `devices` logical CPU devices (which share the same cores: for testing distribution);
    MultiWorkerMirroredStrategy from TF_CONFIG for `kind="multiworker"`, where a worker that stops
    sending heartbeats for `collective_timeout_s` seconds fails every other worker's pending step."""
    import tensorflow as tf

    if kind == "multiworker":
        # A dead peer is noticed by the coordination service's heartbeats, which cost the same
        # whatever the number of collectives. A timeout on each collective instead
        # (CommunicationOptions(timeout_seconds=...)) leaves one thread per collective waiting
        # it out: ~20 threads a step here, and the process aborts near 16,000 threads.
        _configure_heartbeats(collective_timeout_s)
        return tf.distribute.MultiWorkerMirroredStrategy()
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


def _configure_heartbeats(timeout_s: float) -> None:
    """Start TensorFlow's coordination service as MultiWorkerMirroredStrategy would, with our heartbeat timeout."""
    from tensorflow.python.distribute import collective_all_reduce_strategy, multi_worker_util
    from tensorflow.python.distribute.cluster_resolver import TFConfigClusterResolver
    from tensorflow.python.eager import context

    spec = multi_worker_util.normalize_cluster_spec(TFConfigClusterResolver().cluster_spec())
    if not spec.jobs:
        return  # no TF_CONFIG: the strategy runs one local worker
    # The strategy configures the service itself only when nothing has: the same jobs as it would.
    jobs = [collective_all_reduce_strategy.coordination_config_pb2.CoordinatedJob(name=job,
                                                                                 num_tasks=spec.num_tasks(job))
            for job in ("chief", "worker") if job in spec.jobs]
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=multi_worker_util.coordination_leader(spec),
        coordinated_jobs=jobs, heartbeat_timeout_in_ms=int(timeout_s * 1000))


def compile_student(model, train: cfg.TrainConfig, steps_per_execution: int = 1) -> None:
    """Compile the student with Adam, the distillation loss and the agreement metrics."""
    import keras

    from audionet_tf.model import losses

    model.compile(optimizer=keras.optimizers.Adam(learning_rate=train.learning_rate),
                  loss=losses.DistillationLoss(train.temperature), metrics=losses.distillation_metrics(),
                  steps_per_execution=max(1, steps_per_execution), jit_compile=False)


def validation_epochs(train: cfg.TrainConfig, initial_epoch: int = 0) -> list[int]:
    """The 1-based epochs after which the held-out clips are evaluated (Keras's `validation_freq`)."""
    return [e for e in range(initial_epoch + 1, train.epochs + 1)
            if e % train.validate_every == 0 or e % train.checkpoint_every == 0 or e == train.epochs]


def _write_json(path: str, doc: dict[str, Any]) -> None:
    storage.atomic_write_text(path, json.dumps(doc, indent=2, default=str) + "\n")


def train(config: PipelineConfig, *, prepare: Callable[[PipelineConfig], None] | None = None,
          finish: Callable[[str], None] | None = None, extra_callbacks: Sequence[Any] = ()) -> str:
    """Train per `config`; returns the run directory.

    `prepare` makes a missing or unfinished dataset from the pipeline's clip list (the chief only);
    `finish(run_dir)` runs on the chief after the final model is saved, with the run still owned.
    """
    t0 = time.time()
    tc = config.train
    # A repeated dataset with steps_per_epoch is deliberate (one tf.function call per epoch);
    # Keras's advice about these does not apply here.
    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")
    warnings.filterwarnings("ignore", message=".*Your input ran out of data.*")
    # First: the strategy must exist before anything initialises the TF runtime's devices.
    strategy = make_strategy(tc.devices, tc.strategy, tc.collective_timeout_s)
    chief = _is_chief(strategy)
    description = ensure_dataset(config, prepare, chief)
    # Taken after the chief's own prepare (which may withdraw shards). A prepare that withdrew
    # shards since `description` was read is caught by the shard check before the first step.
    lease = _read_lease(config.data_dir)
    try:
        return _own_run(config, strategy, chief, description, extra_callbacks, t0, finish)
    finally:
        if lease is not None:
            lease.release()


def _read_lease(data_dir: str) -> "ReadLease | None":
    """Register this training as a reader of a local dataset: a prepare that would withdraw its shards
    (--overwrite, changed settings) is refused while it runs. Object stores have no locks."""
    if storage.is_remote(data_dir):
        return None
    try:
        return ReadLease(data_dir, what="trained on").acquire()  # LockHeld: a prepare is withdrawing shards
    except OSError as exc:
        log.warning("cannot register as a reader of %s (%s): a prepare --overwrite there would not see this "
                    "training", data_dir, exc.strerror or exc)
        return None


def _own_run(config: PipelineConfig, strategy, chief: bool, description, extra_callbacks: Sequence[Any],
             t0: float, finish: Callable[[str], None] | None) -> str:
    """The run directory chosen and owned, signals caught, around the training proper."""
    from audionet_tf.dataset import reader
    from audionet_tf.training.backup import StopRequest

    tc = config.train
    data_dir = config.data_dir
    reader.check_description(data_dir, description, expect_window=config.audio.window_samples,
                           expect_sample_rate=config.audio.sample_rate)
    name = run_name(config)
    run_dir = choose_run_dir(config, name, chief)
    # One owner per run: a second command on a run being trained is refused before it reads anything.
    # An object store has no lock to take (nor a rename): say so once, where the run starts.
    run_lock = DirectoryLock(run_dir, what="trained") if chief and not storage.is_remote(run_dir) else None
    if chief and storage.is_remote(run_dir):
        log.warning("run %s is in an object store: no lock there, so a second training of the same run is not "
                    "refused (start one only); files are written under their final names (an object appears "
                    "whole or not at all), and a resume reads the backup its state.json names", run_dir)
    if run_lock is not None:
        run_lock.acquire()
    stop = (_cluster_stop(strategy, tc.collective_timeout_s) if tc.strategy == "multiworker"
            else StopRequest()).install()
    try:
        return _train(config, strategy, chief, description, run_dir, stop, extra_callbacks, t0, run_lock, finish)
    finally:
        stop.restore()
        if run_lock is not None:
            run_lock.release()


def _run_document(config: PipelineConfig, description, run_dir: str, strategy) -> dict[str, Any]:
    """The run's resolved settings with its dataset and replicas, as config.json and TensorBoard hold them."""
    doc = config.to_dict()
    doc["dataset"] = {"data_dir": storage.abspath(config.data_dir), **dataclasses.asdict(description.spec),
                      "hop_samples": config.audio.hop_samples, "train_examples": description.examples("train"),
                      "validation_examples": description.examples("validation")}
    doc["run"] = {"name": storage.basename(run_dir), "replicas": strategy.num_replicas_in_sync}
    # What the student hears: export, predict and evaluation window audio the same way.
    window = _student_window(config, description.spec)
    doc["student"] = {"architecture": config.model.architecture,
                      "window_samples": window or description.spec.window_samples,
                      "hop_samples": config.audio.hop_samples}
    return doc


def _student_window(config: PipelineConfig, spec) -> int | None:
    """The student's window in samples at the dataset's rate (None: audionet, the dataset's own windows)."""
    from audionet_tf.model.student import student_window

    try:
        return student_window(config.model.architecture, config.model.window_s, spec.sample_rate)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _steps_per_execution(tc: cfg.TrainConfig, steps_per_epoch: int) -> int:
    """Steps in one call of the training function: the setting, or an epoch capped at AUTO_STEPS_PER_EXECUTION."""
    spe = tc.steps_per_execution or min(steps_per_epoch, cfg.AUTO_STEPS_PER_EXECUTION)
    if tc.strategy == "multiworker" and spe > 1:
        # A cluster's stop is agreed on the step after the signal (ClusterStopRequest): every step
        # must be a boundary where the workers can check it.
        log.info("steps_per_execution %d -> 1 under MultiWorkerMirroredStrategy", spe)
        spe = 1
    return spe


@dataclass
class _Inputs:
    """The run's input pipelines: the training stream (restartable at any step) and one held-out pass."""

    train_data: Callable[[int], Any]  # global steps already trained -> the stream from there
    train_ds: Any
    val_ds: Any | None
    val_steps: int


def _inputs(config: PipelineConfig, description, strategy) -> _Inputs:
    """Training and held-out pipelines, built per input pipeline under several replicas or workers."""
    from audionet_tf.dataset import reader

    tc, data_dir = config.train, config.data_dir
    replicas = strategy.num_replicas_in_sync
    distributed = replicas > 1 or tc.strategy == "multiworker"
    val_count = description.examples("validation")
    # Shards were verified once before; every pipeline built here reads the same description.
    window = _student_window(config, description.spec)
    train_options = reader.ReadOptions(shuffle=True, seed=tc.seed, cache=tc.cache, deterministic=tc.deterministic,
                                       repeat=True, shuffle_buffer=tc.shuffle_buffer, cache_limit_mb=tc.cache_limit_mb,
                                       verify=False, window_samples=window)
    val_options = reader.ReadOptions(shuffle=False, cache=tc.cache, deterministic=True,
                                     cache_limit_mb=tc.cache_limit_mb, verify=False, window_samples=window)

    def train_input(context=None, skip: int = 0):
        # `skip`: the global steps already trained. The example order is a function of the seed
        # alone, so the stream starts again where it stopped (reading at most one pass).
        return reader.make_dataset(data_dir, "train", tc.batch_size, train_options, description=description,
                                   input_context=context, skip_steps=skip)

    def train_data(skip: int = 0):
        # Several replicas or workers: built per input pipeline from the same seed (see val_ds below).
        if distributed:
            return strategy.distribute_datasets_from_function(lambda context: train_input(context, skip))
        return train_input(None, skip)

    train_ds = train_data()
    val_batch = validation_batch(val_count, replicas, tc.batch_size) if tc.strategy != "multiworker" else \
        tc.batch_size

    def val_input(context=None):
        return reader.make_dataset(data_dir, "validation", val_batch, val_options, description=description,
                                   input_context=context).repeat()

    if not val_count:
        val_ds = None
    elif distributed:
        # Each input pipeline is built per replica group from the same seed, so the example
        # order is the one a single replica sees (a rewritten global dataset reseeds its shuffle).
        val_ds = strategy.distribute_datasets_from_function(val_input)
    else:
        val_ds = val_input()
    # Each evaluation takes one pass (val_steps global batches) from one iterator kept for the whole run.
    return _Inputs(train_data, train_ds, val_ds, math.ceil(val_count / val_batch))


def _train(config: PipelineConfig, strategy, chief: bool, description, run_dir: str, stop: "StopRequest",
           extra_callbacks: Sequence[Any], t0: float, run_lock: "DirectoryLock | None",
           finish: Callable[[str], None] | None) -> str:
    """The training proper, with the run directory locked."""
    import keras
    import tensorflow as tf

    from audionet_tf.dataset import reader
    from audionet_tf.model import student as model_lib
    from audionet_tf.training import callbacks as cb, timeline
    from audionet_tf.training.backup import Backup, RunDirGuard
    from audionet_tf.training.loop import FitLoop

    tc = config.train
    data_dir = config.data_dir
    spec = description.spec
    catalog.verify_shards(data_dir, description, checksums=sum(s.bytes for s in description.shards)
                          <= reader.CHECKSUM_LIMIT_BYTES)
    train_count = description.examples("train")
    val_count = description.examples("validation")
    if train_count == 0:
        raise AudioNetError(f"dataset {data_dir} has no training examples (all clips failed or are held out)")

    write_dir = run_dir if chief else storage.join(run_dir, f".worker-{_task_id(strategy)}")
    for folder in ("", "backup", "checkpoints", "logs"):
        # Local folders; in ram:// a folder must be made to be listed; no-op on gs:// (no folders).
        storage.makedirs(storage.join(write_dir, folder) if folder else run_dir)
    doc = _run_document(config, description, run_dir, strategy)
    if chief:
        _write_json(storage.join(run_dir, "config.json"), doc)
        class_names = catalog.read_class_names(data_dir, description)
        storage.atomic_write_text(storage.join(run_dir, "labels.txt"), "\n".join(class_names) + "\n")

    steps_per_epoch = max(1, math.ceil(train_count / tc.batch_size))
    spe = _steps_per_execution(tc, steps_per_epoch)
    keras.utils.set_random_seed(tc.seed)
    if tc.deterministic:
        tf.config.experimental.enable_op_determinism()
    replicas = strategy.num_replicas_in_sync
    if tc.batch_size % replicas:
        raise ConfigError(f"batch size {tc.batch_size} does not split evenly across {replicas} replicas")

    inputs = _inputs(config, description, strategy)
    train_ds, val_ds = inputs.train_ds, inputs.val_ds

    window = _student_window(config, spec)

    def make_student():
        model = model_lib.build_student(config.model.architecture, window, spec.num_classes,
                                        input_scale=config.model.input_scale, conv_filters=config.model.conv_filters)
        compile_student(model, tc, spe)
        return model

    with strategy.scope():
        student = make_student()
    backup = Backup(storage.join(write_dir, "backup"), every_epochs=tc.checkpoint_every,
                    every_steps=tc.backup_every_steps, every_minutes=tc.backup_every_minutes,
                    keep=tc.keep_backups, restore_dir=storage.join(run_dir, "backup"),
                    checkpoint_dir=storage.join(run_dir, "checkpoints"), stop=stop, steps_per_epoch=steps_per_epoch,
                    make_copy=make_student)
    history = cb.History(storage.join(write_dir, "history.csv"))
    nan_guard = cb.StopOnNaN()
    with strategy.scope():  # the optimizer's slots are distributed variables
        initial_epoch, initial_step = backup.restore(student)
    history.resume_at(initial_epoch)
    if initial_epoch >= tc.epochs:
        log.info("run %s already has %d of %d epochs", run_dir, initial_epoch, tc.epochs)

    def resumed_input():
        # The stream goes on past every step trained (the optimizer counts them), exactly where it stopped.
        steps_done = int(student.optimizer.iterations.numpy())
        return inputs.train_data(steps_done) if steps_done else train_ds

    monitor = "val_kl" if val_ds is not None else "kl"
    callbacks = [
        RunDirGuard(run_dir, run_lock),
        cb.LearningRateLog(),
        nan_guard,
        history,
        cb.Checkpoints(storage.join(write_dir, "checkpoints"), monitor=monitor, every=tc.checkpoint_every,
                       make_copy=make_student),
        cb.TensorBoardLogs(storage.join(write_dir, "logs"), tc.histogram_every,
                           validation=val_ds is not None, thin_after=tc.figures_before_thinning),
        cb.FilterImages(storage.join(write_dir, "logs", "filters"), spec.sample_rate, every=tc.histogram_every,
                        thin_after=tc.figures_before_thinning, layer="conv" if window is None else "conv1_conv"),
        *timeline.timeline_callbacks(data_dir, description, storage.join(write_dir, "logs"), tc.histogram_every,
                                        config.audio.hop_samples, write=chief, thin_after=tc.figures_before_thinning,
                                        window_samples=window),
        backup,  # after the others: a stop request ends `fit` here, once they have seen the epoch
        *extra_callbacks,
    ]
    if chief:
        _log_config_text(storage.join(run_dir, "logs", "config"), doc)
    log.info("training %s: %d train / %d held-out windows, %d replica(s), batch %d, %d steps per epoch",
             run_dir, train_count, val_count, strategy.num_replicas_in_sync, tc.batch_size, steps_per_epoch)
    loop = FitLoop(student, strategy, spe, (tf.zeros([1, window or spec.window_samples, 1]),
                                            tf.zeros([1, spec.num_classes])))
    validation = (iter(val_ds), inputs.val_steps) if val_ds is not None else None
    verbose = console.keras_verbosity(tc.quiet)
    with _faults_as_messages(run_dir, backup, tc.strategy == "multiworker"):
        iterator = iter(resumed_input())
        if initial_step and initial_epoch < tc.epochs:
            # The rest of an interrupted epoch, on the stream past the steps trained.
            log.info("continuing epoch %d at step %d of %d", initial_epoch + 1, initial_step, steps_per_epoch)
            backup.begin(steps_per_epoch - initial_step, offset=initial_step)
            loop.fit(iterator, epochs=initial_epoch + 1, initial_epoch=initial_epoch,
                     steps_per_epoch=steps_per_epoch - initial_step, callbacks=callbacks, verbose=verbose,
                     validation=validation, validation_epochs=validation_epochs(tc, initial_epoch))
            initial_epoch += 1
        if initial_epoch < tc.epochs and nan_guard.nan_epoch is None:
            backup.begin(steps_per_epoch)
            loop.fit(iterator, epochs=tc.epochs, initial_epoch=initial_epoch, steps_per_epoch=steps_per_epoch,
                     callbacks=callbacks, verbose=verbose, validation=validation,
                     validation_epochs=validation_epochs(tc, initial_epoch))
    stop.restore()  # from here on (evaluation, export) a signal ends the process as usual
    if nan_guard.nan_epoch is not None:
        raise TrainingDiverged(
            f"the loss became NaN or infinite at epoch {nan_guard.nan_epoch} of run {run_dir}; stopped. "
            f"The last good state is in {storage.join(run_dir, 'backup')} and checkpoints/; "
            f"try a lower --learning-rate or --input-scale")

    _conclude(config, strategy, chief, run_dir, write_dir, student, loop, train_ds, validation, steps_per_epoch,
              backup, t0, finish)
    return run_dir


def _conclude(config: PipelineConfig, strategy, chief: bool, run_dir: str, write_dir: str, student, loop,
              train_ds, validation, steps_per_epoch: int, backup: "Backup", t0: float,
              finish: Callable[[str], None] | None) -> None:
    """After the last epoch: the final figures, and on the chief the model, metrics.json and `finish`."""
    import numpy as np

    from audionet_tf.training import callbacks as cb

    tc = config.train
    # Every worker logs a digest of its final weights, so a cluster's agreement is easy to check.
    digest = hashlib.sha256(b"".join(np.asarray(w, np.float32).tobytes() for w in student.get_weights()))
    log.info("final weights sha256 %s (task %s)", digest.hexdigest(), _task_id(strategy))
    with _faults_as_messages(run_dir, backup, tc.strategy == "multiworker"):
        final = _final_metrics(loop, train_ds, validation, steps_per_epoch)
    final["epochs"] = tc.epochs
    final["seconds"] = round(time.time() - t0, 1)
    if chief:
        with _faults_as_messages(run_dir, backup, False):
            cb.save_model_atomically(student, storage.join(run_dir, "model.keras"))
            _write_json(storage.join(run_dir, "metrics.json"), final)
        _print_summary(run_dir, final)
        if finish is not None:
            finish(run_dir)
    else:
        storage.remove_tree(write_dir)


class PeerLost(AudioNetError):
    """Another worker of the cluster stopped answering."""


def _write_failure(exc: OSError, run_dir: str, backup: "Backup") -> AudioNetError:
    """One message for a run directory that cannot be written: the path, the reason, what was kept."""
    from audionet_tf.training.backup import BackupWriteError

    saved = backup.last_saved
    kept = (f"the last backup {storage.join(run_dir, 'backup', saved['weights'])} (epoch {saved['epoch']}, "
            f"step {saved.get('step', 0)}) is kept" if saved else "no backup of this session was written")
    return BackupWriteError(f"cannot write {exc.filename or run_dir}: {exc.strerror or exc}; {kept}; "
                            f"fix the storage, then run the same command to continue")


@contextlib.contextmanager
def _faults_as_messages(run_dir: str, backup: "Backup", multiworker: bool):
    """Turn a storage fault or a lost peer worker into one message naming the path or the peer."""
    import tensorflow as tf

    try:
        yield
    except OSError as exc:
        raise _write_failure(exc, run_dir, backup) from None
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError) as exc:
        if not multiworker:
            raise
        # TF's message is mostly a stack; keep the line that says what happened, if any.
        said = [line.strip() for line in str(exc).splitlines()
                if any(w in line.lower() for w in ("connect", "timed out", "timeout", "deadline", "peer", "socket"))]
        why = f": {said[0][:200]}" if said else ""
        raise PeerLost(f"lost contact with another worker ({type(exc).__name__}{why}); "
                       f"the chief's last backup is in {storage.join(run_dir, 'backup')}: start the same command "
                       f"on every host to continue") from None
    except tf.errors.OpError as exc:
        # TensorBoard's writers report a full or vanished disk as an op error naming the file.
        text, names = str(exc), (run_dir, storage.abspath(run_dir))
        if not any(name in text for name in names):
            raise
        path = next((w.rstrip(";:,") for w in text.split() if any(name in w for name in names)), run_dir)
        reason = text.split(";")[-1].strip().splitlines()[0] if ";" in text else type(exc).__name__
        raise _write_failure(OSError(0, reason, path), run_dir, backup) from None


def validation_batch(count: int, replicas: int, wanted: int) -> int:
    """A global validation batch near `wanted` that leaves no replica without data at the last step.

    With one input pipeline feeding R replicas, consecutive per-replica batches go to the
    replicas in turn; when their count is not a multiple of R, the last step hands some
    replicas an empty batch, which the model cannot take. Held-out examples are not dropped
    to avoid it: the per-replica batch is chosen so that the count of batches is a multiple of R.
    """
    if replicas <= 1 or count <= 0:
        return wanted
    target = max(1, wanted // replicas)
    fits = [b for b in range(1, count + 1) if -(-count // b) % replicas == 0]
    if not fits:  # fewer held-out examples than replicas
        return wanted
    return replicas * min(fits, key=lambda b: (abs(b - target), b))


def _cluster_stop(strategy, timeout_s: float) -> "StopRequest":
    """A stop request shared by every worker of the strategy's cluster."""
    from audionet_tf.training.backup import ClusterStopRequest, StopRequest

    resolver = strategy.cluster_resolver
    spec = resolver.cluster_spec().as_dict()
    tasks = [f"{job} {index}" for job in ("chief", "worker") for index in range(len(spec.get(job, [])))]
    if len(tasks) < 2 or not resolver.task_type:
        return StopRequest()  # one worker (no TF_CONFIG): nobody to agree with
    # Waiting for the others' acknowledgements: a live peer answers within milliseconds, a dead
    # one is reported by the heartbeats after `timeout_s`; the bound only guards against a hang.
    return ClusterStopRequest(f"{resolver.task_type} {resolver.task_id}", tasks, wait_s=2 * timeout_s + 30)


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


def _final_metrics(loop, train_ds, validation, steps_per_epoch: int) -> dict[str, Any]:
    """Metrics of the final weights: one epoch of the training stream from its start, one pass of the held-out set."""
    result = {"train": loop.evaluate(iter(train_ds), steps_per_epoch)}
    if validation is not None:
        result["validation"] = loop.evaluate(*validation)
    return result


def _print_summary(run_dir: str, final: dict[str, Any]) -> None:
    part = final.get("validation") or final["train"]
    which = "held-out clips" if "validation" in final else "training clips (no clips held out)"
    print(f"\nrun {run_dir}: on {which}: KL {part['kl']:.4f}, top-1 agreement {part['top1_agreement']:.1%}, "
          f"top-5 agreement {part['top5_agreement']:.1%}")
