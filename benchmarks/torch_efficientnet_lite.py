"""EfficientNet-Lite in plain PyTorch, for the reference logits and the eager labelling baseline.

    benchmarks/.venv-torch/bin/python benchmarks/torch_efficientnet_lite.py logits FRAMES.npz WEIGHTS.pth
    benchmarks/.venv-torch/bin/python benchmarks/torch_efficientnet_lite.py speed FRAMES.npz WEIGHTS.pth \
        --batch 32 --count 640
    benchmarks/.venv-torch/bin/python benchmarks/torch_efficientnet_lite.py files FOLDER

Runs in the benchmarks' own virtual environment (torch is never a dependency of audionet_tf): needs
only numpy and torch, no torchvision. The network is the one `efficientnet_pytorch` builds for
`efficientnet-lite0/1/2` (the code the weights files' names come from), written out here with its
own padding: each convolution pads its input as `Conv2dStaticSamePadding` does (`F.pad` of
(total // 2, total − total // 2) on each axis), batch norm in eval mode, ReLU6, no squeeze-excite.
The weights are loaded with `torch.load` and `load_state_dict(strict=True)`, so a missing or extra
tensor stops it. Frames come from the `.npz` (`frames`: uint8 [N, H, W, 3] RGB, as the Keras side
decoded them) and are normalised as the model was trained, `(x − 127) / 128`.

`logits` prints one JSON line: every frame's 1000 logits, torch's version and its thread count.
`files` writes two small state dicts with torch.save (legacy and zip layout: views, offsets, half,
bfloat16, int and bool tensors) into FOLDER, and prints what they hold, for the weights reader's tests.
`speed` labels `--count` frames in batches of `--batch` as a PyTorch user would (the model in eval
mode, under `torch.no_grad()`, uint8 frames converted and normalised per batch, channels first) and
prints one JSON line with the frames/s after a warm-up batch.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# (width, depth, input size) by variant, and Lite0's stages: (repeats, kernel, stride, expansion, in, out).
VARIANTS = {"lite0": (1.0, 1.0, 224), "lite1": (1.0, 1.1, 240), "lite2": (1.1, 1.2, 260)}
STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]


def round_filters(filters: int, width: float) -> int:
    """efficientnet_pytorch's rounding: to a multiple of 8, never more than 10 % down."""
    scaled = filters * width
    new = max(8, int(scaled + 4) // 8 * 8)
    return int(new + 8 if new < 0.9 * scaled else new)


class SameConv(nn.Conv2d):
    """A convolution padded for a fixed input size as TensorFlow's SAME (Conv2dStaticSamePadding)."""

    def __init__(self, cin, cout, kernel, stride, image, groups=1, bias=False):
        super().__init__(cin, cout, kernel, stride, 0, groups=groups, bias=bias)
        out = math.ceil(image / stride)
        total = max((out - 1) * stride + kernel - image, 0)
        self.pads = (total // 2, total - total // 2, total // 2, total - total // 2)

    def forward(self, x):
        return super().forward(F.pad(x, self.pads) if any(self.pads) else x)


class Block(nn.Module):
    """MBConv without squeeze-excite: expand 1×1, depthwise, project 1×1, skip when shapes allow."""

    def __init__(self, kernel, stride, expand, cin, cout, image):
        super().__init__()
        mid = cin * expand
        self.expand = expand
        if expand != 1:
            self._expand_conv = SameConv(cin, mid, 1, 1, image)
            self._bn0 = nn.BatchNorm2d(mid, momentum=0.01, eps=1e-3)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride, image, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, momentum=0.01, eps=1e-3)
        self._project_conv = SameConv(mid, cout, 1, 1, math.ceil(image / stride))
        self._bn2 = nn.BatchNorm2d(cout, momentum=0.01, eps=1e-3)
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand != 1 else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite: fixed 32-channel stem and 1280-channel head, ReLU6; logits over 1000 classes."""

    def __init__(self, variant: str):
        super().__init__()
        width, depth, size = VARIANTS[variant]
        self.size = size
        self._conv_stem = SameConv(3, 32, 3, 2, size)
        self._bn0 = nn.BatchNorm2d(32, momentum=0.01, eps=1e-3)
        image = math.ceil(size / 2)
        blocks = []
        for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(STAGES):
            fixed = i in (0, len(STAGES) - 1)
            repeats = repeats if fixed else int(math.ceil(depth * repeats))
            cin = 32 if i == 0 else round_filters(cin, width)
            cout = round_filters(cout, width)
            for r in range(repeats):
                blocks.append(Block(kernel, stride if r == 0 else 1, expand, cin if r == 0 else cout, cout, image))
                if r == 0:
                    image = math.ceil(image / stride)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(cout, 1280, 1, 1, image)
        self._bn1 = nn.BatchNorm2d(1280, momentum=0.01, eps=1e-3)
        self._fc = nn.Linear(1280, 1000)

    def forward(self, x):
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))


def load(variant: str, weights: str) -> EfficientNetLite:
    """The network in eval mode with the weights file's tensors (all of them, no more)."""
    net = EfficientNetLite(variant)
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    return net.eval()


def preprocess(frames: np.ndarray) -> torch.Tensor:
    """uint8 RGB [N, H, W, 3] → float [N, 3, H, W], (x − 127) / 128."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    return (x - 127.0) / 128.0


def write_sample_files(folder: str) -> dict:
    """Two small state dicts saved by torch itself, legacy and zip layout, and what they hold (as lists)."""
    import os

    torch.manual_seed(0)
    base = torch.randn(4, 6)
    state = {
        "dense.weight": base.t(),  # a transposed view: strides (1, 6)
        "dense.bias": base[1, 2:5],  # a slice at an offset into the same storage
        "half": torch.randn(3, 2).half(),
        "bfloat16": torch.randn(5).bfloat16(),
        "steps": torch.tensor(7, dtype=torch.int64),  # a 0-d tensor, as num_batches_tracked
        "mask": torch.tensor([True, False, True]),
        "codes": torch.arange(-3, 3, dtype=torch.int8).reshape(2, 3),
        "empty": torch.zeros(0, 4),
    }
    torch.save(state, os.path.join(folder, "torch_sample_legacy.pth"), _use_new_zipfile_serialization=False)
    torch.save(state, os.path.join(folder, "torch_sample_zip.pth"))
    return {name: {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape),
                   "values": t.float().tolist() if t.dtype == torch.bfloat16 else t.tolist()}
            for name, t in state.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["logits", "speed", "files"])
    parser.add_argument("frames", help="the frames .npz (files: the folder to write the sample files in)")
    parser.add_argument("weights", nargs="?")
    parser.add_argument("--variant", default="lite0", choices=sorted(VARIANTS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--count", type=int, default=640, help="speed: how many frames to label (the npz's, cycled)")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads; 0: torch's default (the cores)")
    args = parser.parse_args()
    if args.mode == "files":
        print(json.dumps({"torch": torch.__version__, "tensors": write_sample_files(args.frames)}))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    frames = np.load(args.frames)["frames"]
    net = load(args.variant, args.weights)
    if frames.shape[1:] != (net.size, net.size, 3):
        raise SystemExit(f"frames of shape {frames.shape[1:]}; {args.variant} takes {net.size}x{net.size}")
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "variant": args.variant}
    if args.mode == "logits":
        with torch.no_grad():
            logits = net(preprocess(frames)).numpy()
        print(json.dumps({**info, "logits": logits.astype(np.float32).tolist()}))
        return
    batches = [frames[np.arange(i, i + args.batch) % len(frames)] for i in range(0, args.count, args.batch)]
    with torch.no_grad():
        net(preprocess(batches[0]))  # warm-up: first-call allocations
        start = time.perf_counter()
        for batch in batches:
            net(preprocess(batch))
        seconds = time.perf_counter() - start
    print(json.dumps({**info, "batch": args.batch, "frames": len(batches) * args.batch, "seconds": seconds,
                      "frames_per_s": len(batches) * args.batch / seconds}))


if __name__ == "__main__":
    main()
