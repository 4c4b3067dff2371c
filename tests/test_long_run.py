"""A long run's resources stay flat: threads, open files and memory do not grow with epochs, and the
figures it adds to the run directory thin out instead of growing with every `--histogram-every` epochs."""
import os

import keras
import pytest

from audionet_tf.commands import train
from audionet_tf.core import config as cfg
from audionet_tf.dataset.synthetic import write_synthetic_dataset

EPOCHS = 160
SETTLED = 50  # by then every periodic task (validation, checkpoints, backups, figures, histograms) has run twice
WINDOW = 20  # epochs compared at each end: the least value of each, so that files open for a moment
# (a checkpoint being written in the background) count less, and a leak, which raises the floor, does
# On a loaded machine the background writers (checkpoint, backup, filter image, timelines, histograms)
# can all be in flight for twenty epochs: up to three more files open then than in a quiet stretch.
THREADS_BOUND = 2
OPEN_FILES_BOUND = 3
# The allocator settles over the first hundreds of epochs (the 5,000-epoch record in docs/speed.md);
# a leaked figure or writer per drawing, or a copy of the weights per epoch, exceeds this.
RSS_BOUND_MB = 60.0
HISTOGRAM_EVERY = 10
BEFORE_THINNING = 2  # figures at every HISTOGRAM_EVERY epochs for the first two, then thinned


def resources() -> dict:
    """This process's threads, open file descriptors and resident memory (MB), from /proc/self."""
    values = {"open_files": len(os.listdir("/proc/self/fd"))}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key == "VmRSS":
                values["rss_mb"] = int(value.split()[0]) / 1024
            elif key == "Threads":
                values["threads"] = int(value)
    return values


class Resources(keras.callbacks.Callback):
    """The process's resources at the end of every epoch."""

    def __init__(self):
        super().__init__()
        self.rows = []

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append(resources())


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to count threads and files")
def test_hundreds_of_epochs_leave_threads_files_and_memory_flat(tmp_path):
    data = tmp_path / "tones"
    write_synthetic_dataset(str(data), clips=4, seconds=2.0, num_classes=12, kinds=3, holdout=1, shard_size=40)
    record = Resources()
    # Checkpoints, backups and validation every 10 epochs; filter images, timelines and histograms every 10,
    # thinned after the first two. The last epoch (training's end: the final checkpoint, waiting for the
    # drawings) is left out of the resources compared.
    config = cfg.PipelineConfig(train=cfg.TrainConfig(
        data=str(data), epochs=EPOCHS, batch_size=64, learning_rate=0.01, runs_dir=str(tmp_path / "runs"),
        name="long", export=False, report=False, quiet=True, histogram_every=HISTOGRAM_EVERY,
        figures_before_thinning=BEFORE_THINNING))
    train.train(config, extra_callbacks=[record])
    assert len(record.rows) == EPOCHS
    settled = {key: min(row[key] for row in record.rows[SETTLED - WINDOW: SETTLED]) for key in record.rows[0]}
    end = {key: min(row[key] for row in record.rows[-WINDOW - 1: -1]) for key in record.rows[0]}
    assert end["threads"] <= settled["threads"] + THREADS_BOUND, (settled, end)
    assert end["open_files"] <= settled["open_files"] + OPEN_FILES_BOUND, (settled, end)
    assert end["rss_mb"] - settled["rss_mb"] <= RSS_BOUND_MB, (settled, end)
    history = (tmp_path / "runs" / "long" / "history.csv").read_text().splitlines()
    assert len(history) == EPOCHS + 1  # one row per epoch, none repeated
    backups = [name for name in os.listdir(tmp_path / "runs" / "long" / "backup") if name.endswith(".weights.h5")]
    checkpoints = os.listdir(tmp_path / "runs" / "long" / "checkpoints")
    assert len(backups) <= 2 and sorted(checkpoints) == ["best.json", "best.keras", "last.json", "last.keras"]
    logs = tmp_path / "runs" / "long" / "logs"
    for directory, tag in (("filters", "conv_filters"), ("timelines", "timeline/")):
        steps = [step for step in image_steps(logs / directory, tag) if step > 1]  # timelines: epoch 1 too
        first_ones = [HISTOGRAM_EVERY * (i + 1) for i in range(BEFORE_THINNING)]
        assert steps[:BEFORE_THINNING] == first_ones, (directory, steps)
        assert steps[-1] == EPOCHS, (directory, steps)  # the trained filters are always drawn
        # Thinned: the second half of the run adds fewer images than the first, and far fewer than one
        # every HISTOGRAM_EVERY epochs would.
        first = [s for s in steps if s <= EPOCHS // 2]
        second = [s for s in steps if s > EPOCHS // 2]
        assert len(second) < len(first) and len(second) <= EPOCHS // 2 // HISTOGRAM_EVERY // 4, (directory, steps)


def image_steps(directory, tag: str) -> list[int]:
    """The epochs (steps) of the images TensorBoard reads back from `directory`, of its first tag starting `tag`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory), size_guidance={"tensors": 0}).Reload()
    tags = sorted(t for t in events.Tags()["tensors"] if t.startswith(tag))
    assert tags, f"no images in {directory}"
    return sorted({e.step for e in events.Tensors(tags[0])})


SAVES_SETTLING = 15
SAVES_MEASURED = 60
# Each save of the student (checkpoint .keras or weights backup) cost ~70 KB of resident memory never
# given back while Keras rebuilt its saving skip-sets (a new Layer, Optimizer, Metric...) on every call:
# 8 MB over these saves (a checkpoint and a backup each). Fixed, the same saves add well under 1 MB.
SAVES_RSS_BOUND_MB = 2.0


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to read resident memory")
def test_checkpoints_and_backups_do_not_grow_memory_per_save(tmp_path):
    from audionet_tf.model import student as model_lib
    from audionet_tf.training import callbacks as cb
    from audionet_tf.training.backup import Backup
    from audionet_tf.training.trainer import compile_student

    train_config = cfg.TrainConfig(batch_size=8)

    def make_student():
        model = model_lib.build_audionet(None, 1000)
        compile_student(model, train_config, 1)
        return model

    student = make_student()
    student.optimizer.build(student.trainable_variables)
    # The train command's writers: each on its own background thread, from a copy of the model.
    checkpoints = cb.Checkpoints(str(tmp_path / "checkpoints"), monitor="kl", every=1, make_copy=make_student)
    backup = Backup(str(tmp_path / "backup"), every_epochs=1, make_copy=make_student)
    for callback in (checkpoints, backup):
        callback.set_model(student)
        callback.set_params({"epochs": 10 ** 6, "steps": 1})
    rss = []
    for epoch in range(SAVES_SETTLING + SAVES_MEASURED):
        for callback in (checkpoints, backup):
            callback.on_epoch_end(epoch, {"kl": 1.0 / (epoch + 1), "loss": 1.0})
        checkpoints._writer.wait()
        backup._writer.wait()
        rss.append(resources()["rss_mb"])
    checkpoints.on_train_end()
    backup.on_train_end()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["best.json", "best.keras", "last.json", "last.keras"]
    assert len([n for n in os.listdir(tmp_path / "backup") if n.endswith(".weights.h5")]) == 2
    grown = min(rss[-10:]) - min(rss[SAVES_SETTLING - 10: SAVES_SETTLING])
    assert grown <= SAVES_RSS_BOUND_MB, (f"{grown:.2f} MB more after {SAVES_MEASURED} checkpoints and backups",
                                         rss[SAVES_SETTLING - 1], rss[-1])
