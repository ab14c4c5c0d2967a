"""Subprocess for the kill/resume test: runs one driver slowly (a sleep before every forward
pass of the model), checkpointing after every batch into argv[2], writes its result tensors to
argv[2]/result.safetensors and prints how many forward passes the model actually ran (with the
activation cache off, so that every pass runs the model and the counts show what resumed).

    python resume_job.py DRIVER OUT DELAY [VARIANT]

VARIANT changes one input (the checkpoint must then not be reused)."""
import sys
import time

import torch
from safetensors.torch import save_file

import dissect_kernels as dk
from dissect_kernels.models.tiny_gan import default_segmenter, load_default_generator
from planted import Planted, PlantedDataset
from test_ablation import Planted as PlantedClassifier, planted_data

CALLS = [0]


def slow(model, delay: float):
    """The model, with a sleep and a count before each forward pass (a pre-hook: names unchanged)."""
    def pre(module, args):
        CALLS[0] += 1
        time.sleep(delay)
    model.register_forward_pre_hook(pre)
    return model


def tensors(obj) -> dict:
    """Every tensor field of a result object (dataclass or DissectionResult files)."""
    return {k: v.contiguous() for k, v in vars(obj).items() if isinstance(v, torch.Tensor)}


def dissect(out, delay, variant):
    torch.manual_seed(0)  # the model weights are part of the checkpoint key
    q = 0.95 if variant else 0.9375
    dk.dissect(slow(Planted(), delay), "units", PlantedDataset(n_images=64), quantile=q, batch_size=8,
               out_dir=out, progress=False, checkpoint_interval=0, rotation=1, cache_bytes=0)
    return None                                     # results.safetensors is the result


def gan(out, delay, variant):
    dk.dissect_generator(slow(load_default_generator(), delay), "layer3", default_segmenter(),
                         num_samples=24 + variant, batch_size=4, out_dir=out, progress=False,
                         checkpoint_interval=0, top_k=3, cache_bytes=0)
    return None


def ace(out, delay, variant):
    r = dk.rank_units_by_ace(slow(load_default_generator(), delay), "layer3", default_segmenter(),
                             "tree", num_samples=16 + variant, batch_size=4, checkpoint_dir=out,
                             checkpoint_interval=0)
    return tensors(r)


def ablation(out, delay, variant):
    torch.manual_seed(0)
    model = slow(PlantedClassifier().eval(), delay)
    batches = planted_data(n=90 + 16 * variant)[0]
    r = dk.classifier_ablation(model, "feat", batches, num_classes=3, top_n=(1, 2), progress=False,
                               checkpoint_dir=out, checkpoint_interval=0)
    return r.state_dict()


DRIVERS = {"dissect": dissect, "gan": gan, "ace-ranking": ace, "ablation": ablation}


if __name__ == "__main__":
    driver, out, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
    variant = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    result = DRIVERS[driver](out, delay, variant)
    if result is not None:
        save_file(result, f"{out}/result.safetensors")
    print(f"forward-calls {CALLS[0]}", flush=True)
