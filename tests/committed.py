"""What a dataset directory holds as readers see it, for tests comparing two preparations."""
import collections
import os

import numpy as np

from audionet_tf.dataset import catalog, records


def example_multiset(directory) -> collections.Counter:
    """Every committed example as (split, clip, time, audio bytes, logits bytes), counted: a duplicate counts 2."""
    description = catalog.read_description(str(directory))
    found = collections.Counter()
    for shard in description.shards:
        ex = records.read_examples(os.path.join(directory, shard.file), description.spec)
        for audio, logits, clip_id, time_s in zip(ex["audio"], ex["logits"], ex["clip_id"], ex["time"]):
            found[(shard.split, clip_id, round(float(time_s), 4), audio.tobytes(), logits.tobytes())] += 1
    return found


def by_frame(directory) -> dict:
    """Every committed example: (split, clip, time) → (audio bytes, logits as float32), for preparations whose
    logits may differ in the last bits (another teacher runtime)."""
    description = catalog.read_description(str(directory))
    found = {}
    for shard in description.shards:
        ex = records.read_examples(os.path.join(directory, shard.file), description.spec)
        for audio, logits, clip_id, time_s in zip(ex["audio"], ex["logits"], ex["clip_id"], ex["time"]):
            found[(shard.split, clip_id, round(float(time_s), 4))] = (audio.tobytes(),
                                                                      np.asarray(logits, np.float32))
    return found
