"""Subprocess for the kill/resume test: dissects the planted model slowly into argv[1] and
prints how many batches the model actually ran."""
import sys
import time

import torch

import dissect_kernels as dk
from planted import Planted, PlantedDataset


class Slow(Planted):
    calls = 0

    def forward(self, x):
        Slow.calls += 1
        time.sleep(float(sys.argv[3]))
        return super().forward(x)


if __name__ == "__main__":
    torch.manual_seed(0)  # the model weights are part of the checkpoint key
    data = PlantedDataset(n_images=64)
    q = float(sys.argv[2])
    dk.dissect(Slow(), "units", data, quantile=q, batch_size=8, out_dir=sys.argv[1],
               progress=False, checkpoint_interval=0, rotation=1)
    print(f"forward-calls {Slow.calls}", flush=True)
