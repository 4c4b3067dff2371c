"""The PyTorch eager baseline of `train_throughput.py`: the same student, loss, optimizer and data.

    benchmarks/.venv-torch/bin/python benchmarks/torch_baseline.py ARRAYS.npz --epochs 40 --warmup 10

Runs in its own virtual environment (torch is never a dependency of audionet_tf): needs only
numpy and torch. Reads the train split and the Keras student's initial weights from the
`.npz` written by `train_throughput.py`, checks that this network gives the Keras student's
logits on those weights, then trains as a PyTorch user would (data in memory, a permutation
per epoch, batch 512, Adam 1e-4, KL to the teacher's softmax) and prints one JSON line:
mean wall time per epoch over the timed epochs and the part spent in the steps.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


class AudioNet(torch.nn.Module):
    """The slides' layer table: conv 16x64 stride 2 pad 32, max pool 8 stride 1 pad 4 (-inf), mean, dense."""

    def __init__(self, classes: int, input_scale: float, layout: str = "ncl"):
        super().__init__()
        self.input_scale = input_scale
        self.layout = layout
        if layout == "ncl":
            self.conv = torch.nn.Conv1d(1, 16, 64, stride=2, padding=32)
            self.pool = torch.nn.MaxPool1d(8, stride=1, padding=4)  # pads with -inf: padding never wins
        else:  # the same layers in 2-D, on channels-last tensors [N, 1, 1, L] (another set of kernels)
            self.conv = torch.nn.Conv2d(1, 16, (1, 64), stride=(1, 2), padding=(0, 32))
            self.pool = torch.nn.MaxPool2d((1, 8), stride=1, padding=(0, 4))
            self.conv = self.conv.to(memory_format=torch.channels_last)
        self.dense = torch.nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Windows [N, 1, L] → logits [N, classes]."""
        if self.layout == "ncl":
            return self.dense(self.pool(self.conv(x * self.input_scale)).mean(dim=-1))
        x = (x * self.input_scale)[:, :, None, :].contiguous(memory_format=torch.channels_last)
        return self.dense(self.pool(self.conv(x)).mean(dim=(-2, -1)))

    def load_keras(self, kernel, bias, dense_kernel, dense_bias) -> None:
        """Copy the Keras student's weights ([taps, 1, filters], [filters, classes]) into this network."""
        weight = torch.from_numpy(kernel.transpose(2, 1, 0).copy())
        self.conv.weight.copy_(weight if self.layout == "ncl" else weight[:, :, None, :])
        self.conv.bias.copy_(torch.from_numpy(bias))
        self.dense.weight.copy_(torch.from_numpy(dense_kernel.T.copy()))
        self.dense.bias.copy_(torch.from_numpy(dense_bias))


def kl_loss(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Batch mean of KL(softmax(teacher) || softmax(student)), as the Keras loss at T = 1."""
    return torch.nn.functional.kl_div(torch.log_softmax(student, -1), torch.log_softmax(teacher, -1),
                                      log_target=True, reduction="batchmean")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arrays")
    parser.add_argument("--epochs", type=int, default=40, help="timed epochs")
    parser.add_argument("--warmup", type=int, default=10, help="untimed epochs first")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads; 0: torch's default (the cores)")
    parser.add_argument("--layout", choices=("ncl", "nhwc"), default="ncl",
                        help="ncl: Conv1d on [N, 1, L]; nhwc: Conv2d on channels-last [N, 1, 1, L]")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    arrays = np.load(args.arrays)
    torch.manual_seed(0)
    x = torch.from_numpy(arrays["audio"][:, None, :].astype(np.float32))
    y = torch.from_numpy(arrays["logits"].astype(np.float32))
    net = AudioNet(y.shape[1], float(arrays["input_scale"]), args.layout)
    with torch.no_grad():
        net.load_keras(arrays["conv_kernel"], arrays["conv_bias"], arrays["dense_kernel"], arrays["dense_bias"])
        probe = net(x[: len(arrays["keras_logits"])]).numpy()
    difference = float(np.abs(probe - arrays["keras_logits"]).max() / max(1.0, np.abs(arrays["keras_logits"]).max()))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    count, batch = len(x), args.batch_size
    epoch_times, step_times = [], []
    for epoch in range(args.warmup + args.epochs):
        start = time.perf_counter()
        steps = 0.0
        order = torch.randperm(count)
        for first in range(0, count, batch):
            index = order[first: first + batch]
            xb, yb = x[index], y[index]
            step_start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = kl_loss(yb, net(xb))
            loss.backward()
            optimizer.step()
            steps += time.perf_counter() - step_start
        if not torch.isfinite(loss):
            raise SystemExit(f"loss is {float(loss)} at epoch {epoch + 1}")
        if epoch >= args.warmup:
            epoch_times.append(time.perf_counter() - start)
            step_times.append(steps)
    print(json.dumps({"epoch_s": float(np.mean(epoch_times)), "steps_s": float(np.mean(step_times)),
                      "relative_logits_difference": difference, "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "layout": args.layout,
                      "final_loss": float(loss)}))


if __name__ == "__main__":
    main()
