"""The PyTorch eager baseline of `train_soundnet.py`: SoundNet-8's layers, loss, optimizer and data.

    benchmarks/.venv-torch/bin/python benchmarks/torch_soundnet.py ARRAYS.npz --epochs 3 --warmup 1

Runs in the benchmark's own virtual environment (torch is never a dependency of audionet_tf).
Reads the windows, the teacher's logits and the Keras student's initial weights from the `.npz`
written by `train_soundnet.py`, checks that this network gives the Keras student's logits on
those weights (training mode: BatchNorm on the batch's statistics), then trains as a PyTorch user
would (a permutation per epoch, Adam with Keras's epsilon, KL to the teacher's softmax) and
prints one JSON line: the mean wall time per timed epoch.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from torch_baseline import kl_loss  # the same loss as audionet's PyTorch baseline (this folder)


class SoundNet8(torch.nn.Module):
    """SoundNet-8 on [N, 1, L] from model/soundnet.py's table rows (sent in the arrays file): Conv1d + BatchNorm1d
    + ReLU per conv but the last, MaxPool1d, mean over time."""

    def __init__(self, table: list, classes: int, input_scale: float):
        super().__init__()
        self.input_scale = input_scale
        layers, channels = [], 1
        self.convs, self.norms = [], []
        convs = [row for row in table if row[0] == "conv"]
        for row in table:
            if row[0] == "pool":
                layers.append(torch.nn.MaxPool1d(row[2], stride=row[3]))
                continue
            _, _, filters, kernel, stride, pad = row
            filters = classes if filters is None else filters
            conv = torch.nn.Conv1d(channels, filters, kernel, stride=stride, padding=pad)
            layers.append(conv)
            self.convs.append(conv)
            if row is not convs[-1]:  # every conv but the last: BatchNorm + ReLU
                norm = torch.nn.BatchNorm1d(filters, eps=1e-5, momentum=0.1)  # Keras's momentum 0.9
                layers += [norm, torch.nn.ReLU()]
                self.norms.append(norm)
            channels = filters
        self.body = torch.nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Windows [N, 1, L] → logits [N, classes] (the last conv's steps averaged)."""
        return self.body(x * self.input_scale).mean(dim=-1)

    @torch.no_grad()
    def load_keras(self, arrays) -> None:
        """Copy the Keras student's weights (conv kernels [taps, in, out]; BatchNorm gamma, beta) in."""
        for i, conv in enumerate(self.convs):
            conv.weight.copy_(torch.from_numpy(arrays[f"kernel{i}"].transpose(2, 1, 0).copy()))
            conv.bias.copy_(torch.from_numpy(arrays[f"bias{i}"]))
        for i, norm in enumerate(self.norms):
            norm.weight.copy_(torch.from_numpy(arrays[f"gamma{i}"]))
            norm.bias.copy_(torch.from_numpy(arrays[f"beta{i}"]))


def main() -> None:
    """Check the network against Keras's logits, train, print {"epoch_s": ...} as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arrays")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    arrays = np.load(args.arrays)
    x = torch.from_numpy(arrays["audio"][:, None, :])
    y = torch.from_numpy(arrays["logits"])
    model = SoundNet8(json.loads(str(arrays["table"])), y.shape[1], float(arrays["input_scale"]))
    model.load_keras(arrays)
    model.train()
    probe = arrays["keras_logits"]
    with torch.no_grad():
        got = model(x[: len(probe)]).numpy()
    # Training mode on both sides; the probe's BatchNorm statistics moved the running means, so reset them.
    for norm in model.norms:
        norm.reset_running_stats()
    difference = float(np.abs(got - probe).max() / max(np.abs(probe).max(), 1e-12))
    if difference > 1e-3:
        raise SystemExit(f"the torch network is not the Keras student: relative difference {difference:.2e}")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-7)
    generator = torch.Generator().manual_seed(0)
    times = []
    for epoch in range(args.warmup + args.epochs):
        start = time.perf_counter()
        order = torch.randperm(len(x), generator=generator)
        for first in range(0, len(x), args.batch):
            index = order[first: first + args.batch]
            optimizer.zero_grad(set_to_none=True)
            loss = kl_loss(y[index], model(x[index]))
            loss.backward()
            optimizer.step()
        if epoch >= args.warmup:
            times.append(time.perf_counter() - start)
    print(json.dumps({"epoch_s": float(np.mean(times)), "epochs": times, "threads": torch.get_num_threads(),
                      "torch": torch.__version__, "check_relative_difference": difference}))


if __name__ == "__main__":
    main()
