"""A long run's resources stay flat: threads, open files and memory do not grow with epochs."""
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
    # Checkpoints, backups and validation every 10 epochs; filter images, timelines and histograms every 25.
    # The last epoch (training's end: the final checkpoint, waiting for the drawings) is left out.
    config = cfg.PipelineConfig(train=cfg.TrainConfig(
        data=str(data), epochs=EPOCHS, batch_size=64, learning_rate=0.01, runs_dir=str(tmp_path / "runs"),
        name="long", export=False, report=False, quiet=True, histogram_every=25))
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
