"""Build the embedded default generator's weights (dissect_kernels/assets/tiny_gan.safetensors)
and its planted truth (tiny_gan.json), deterministically from a seed: no training involved.

    python scripts/build_tiny_gan.py [--out-dir DIR] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from safetensors.torch import save_file

from dissect_kernels.models.tiny_gan import (ASSETS, CLASS_NAMES, FIELD_DIMS, NUM_FIELDS, NUM_UNITS,
                                             Z_DIM, TinyGenerator)

CONCEPT_FIELD = {1: 0, 2: 1, 3: 2, 4: 3}        # concept id -> field; fields 4, 5 are noise
PLANTED_GAINS = ((1.0, 0.9), (1.4, 1.0), (1.8, 1.1))   # (gain, field level) per planted unit
MIXED = ((1, 2), (3, 4), (1, 4), (2, 3))          # concept pairs of the mixed units
NOISE = (((4,), 1.0, 0.8), ((5,), 1.2, 1.0), ((4, 5), 0.8, 1.2), ((4,), 1.6, 1.3),
         ((5,), 0.9, 0.6), ((4, 5), 1.1, 0.9), ((4,), 0.7, 0.5), ((5,), 1.5, 1.4))
MIXED_WEIGHT, NOISE_TO_BACKGROUND, CONCEPT_BIAS = 0.25, 0.3, -0.05


def build(seed: int = 0) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, planted-truth info) of the tiny generator for `seed`."""
    rng = np.random.RandomState(seed)
    torch.manual_seed(seed)
    g = TinyGenerator()
    sd = {k: torch.zeros_like(v) for k, v in g.state_dict().items()}
    # layer1: field f = sum_j z[f*J + j] * phi_{f,j}, phi smooth random patterns, unit variance per cell.
    phi = gaussian_filter(rng.randn(NUM_FIELDS, FIELD_DIMS, 8, 8), sigma=(0, 0, 1.5, 1.5), mode="wrap")
    phi /= np.sqrt((phi ** 2).sum(1, keepdims=True))
    w1 = torch.zeros(NUM_FIELDS * 64, Z_DIM)
    for f in range(NUM_FIELDS):
        w1[f * 64:(f + 1) * 64, f * FIELD_DIMS:(f + 1) * FIELD_DIMS] = torch.from_numpy(
            phi[f].reshape(FIELD_DIMS, 64).T.astype(np.float32))
    sd["layer1.0.weight"] = w1
    smooth = torch.tensor([[1., 2., 1.], [2., 4., 2.], [1., 2., 1.]]) / 16
    sd["layer2.1.weight"] = smooth.expand(NUM_FIELDS, 1, 3, 3).clone()
    # Rescale each field to unit standard deviation after the smoothing (measured on 4096 z).
    g.load_state_dict(sd)
    with torch.no_grad():
        std = g.layer2(g.layer1(torch.randn(4096, Z_DIM))).std(dim=(0, 2, 3))
    for f in range(NUM_FIELDS):
        sd["layer1.0.weight"][f * 64:(f + 1) * 64] /= float(std[f])
    # layer3: planted, mixed and noise units (in a shuffled order), layer4: their effect.
    roles = []
    for c, f in CONCEPT_FIELD.items():
        roles += [("planted", (c,), (f,), gain, level) for gain, level in PLANTED_GAINS]
    roles += [("mixed", pair, tuple(CONCEPT_FIELD[c] for c in pair), 0.7, 1.4) for pair in MIXED]
    roles += [("noise", (), fields, gain, level) for fields, gain, level in NOISE]
    assert len(roles) == NUM_UNITS
    order = rng.permutation(NUM_UNITS)                # role i -> unit order[i]
    w3, b3 = torch.zeros(NUM_UNITS, NUM_FIELDS, 1, 1), torch.zeros(NUM_UNITS)
    w4, b4 = torch.zeros(len(CLASS_NAMES), NUM_UNITS, 1, 1), torch.zeros(len(CLASS_NAMES))
    b4[1:] = CONCEPT_BIAS
    info = {"layer": "layer3", "num_units": NUM_UNITS, "seed": seed, "concepts": CLASS_NAMES,
            "planted": {}, "mixed": {}, "noise": []}
    for (role, concepts, fields, gain, level), u in zip(roles, order.tolist()):
        for f in fields:
            w3[u, f] = gain
        b3[u] = -gain * level
        if role == "planted":
            w4[concepts[0], u] = 1.0
            info["planted"].setdefault(CLASS_NAMES[concepts[0]], []).append(u)
        elif role == "mixed":
            for c in concepts:
                w4[c, u] = MIXED_WEIGHT
            info["mixed"][str(u)] = [CLASS_NAMES[c] for c in concepts]
        else:
            w4[0, u] = NOISE_TO_BACKGROUND
            info["noise"].append(u)
    info["planted"] = {k: sorted(v) for k, v in info["planted"].items()}
    info["noise"] = sorted(info["noise"])
    sd.update({"layer3.0.weight": w3, "layer3.0.bias": b3, "layer4.0.weight": w4, "layer4.0.bias": b4})
    return {k: v.contiguous() for k, v in sd.items()}, info


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=ASSETS)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    sd, info = build(args.seed)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(args.out_dir / "tiny_gan.safetensors"), metadata={"seed": str(args.seed)})
    (args.out_dir / "tiny_gan.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"wrote {args.out_dir / 'tiny_gan.safetensors'} and tiny_gan.json")


if __name__ == "__main__":
    main()
