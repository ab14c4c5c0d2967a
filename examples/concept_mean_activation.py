"""A custom accumulator on the pass engine: each unit's mean activation inside each concept.

Runs on the shipped default model and a small synthetic Broden-format dataset:
    python examples/concept_mean_activation.py [OUT_DIR]"""
import sys
import tempfile

import torch

import dissect_kernels as dk
from dissect_kernels.data import BrodenDataset, make_synthetic_broden
from dissect_kernels.engine import DatasetSource, Pass, run_passes
from dissect_kernels.models import load_default_model


class ConceptMeanActivation:
    """Per unit and concept: the sum of the unit's upsampled map over the concept's pixels, and
    the concept's pixel count (float64 sums: merged across ranks by adding)."""

    def __init__(self, layer: str, num_concepts: int):
        self.layers, self.C = (layer,), num_concepts
        self.sums = self.pixels = None

    def update(self, step):
        labels = step.labels[:, 0]                                # first label layer [B, H, W]
        up = dk.upsample(step.acts[self.layers[0]], tuple(labels.shape[-2:]))   # [B, U, H, W]
        flat = up.transpose(0, 1).reshape(up.shape[1], -1).double()            # [U, B*H*W]
        ids = labels.reshape(-1).long()
        sums = torch.zeros(up.shape[1], self.C, dtype=torch.float64).index_add_(1, ids, flat)
        self.merge(self._of(sums, torch.bincount(ids, minlength=self.C).double()))

    def _of(self, sums, pixels):
        other = ConceptMeanActivation(self.layers[0], self.C)
        other.sums, other.pixels = sums, pixels
        return other

    def merge(self, other):
        if self.sums is None:
            self.sums, self.pixels = other.sums.clone(), other.pixels.clone()
        else:
            self.sums, self.pixels = self.sums + other.sums, self.pixels + other.pixels

    def state_dict(self):
        return {} if self.sums is None else {"sums": self.sums, "pixels": self.pixels}

    def load_state_dict(self, state):
        self.sums, self.pixels = state["sums"], state["pixels"]

    def finalize(self):
        return self.sums / self.pixels.clamp(min=1)               # [U, C] mean activation


if __name__ == "__main__":
    root = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()
    data = BrodenDataset(make_synthetic_broden(f"{root}/broden", n_images=60, seed=1))
    out = run_passes(load_default_model(), DatasetSource(data, batch_size=16), layers=["conv4"],
                     passes=[Pass("means", lambda results: {"conv4": ConceptMeanActivation("conv4", data.num_concepts)})])
    means = out.results["means"]["conv4"]                         # [U, C]
    for u in range(4):
        c = int(means[u, 1:].argmax()) + 1
        print(f"unit {u}: highest mean activation inside {data.concept_names[c]!r} ({float(means[u, c]):.3f})")
