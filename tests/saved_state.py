"""A trained model's whole state as saved on disk, for tests comparing two runs array by array."""
import io
import zipfile

import h5py
import numpy as np


def saved_state(source):
    """Every array of a saved model's state (weights and optimizer variables), by path inside the file.

    `source`: a `.keras` file's path or bytes, or a `.weights.h5` file's path."""
    if isinstance(source, bytes) or str(source).endswith(".keras"):
        with zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source) as archive:
            handle = h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r")
    else:
        handle = h5py.File(source, "r")
    arrays = {}
    handle.visititems(lambda name, item: arrays.__setitem__(name, np.array(item))
                      if isinstance(item, h5py.Dataset) else None)
    handle.close()
    return arrays
