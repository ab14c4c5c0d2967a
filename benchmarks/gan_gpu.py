"""GAN dissection + ACE on a GPU (not yet run: no GPU was lent to this task; `--device cpu`
smoke-tests it): checks that CUDA and CPU runs agree on the tiny generator
(labels, thresholds, IoU) and times dissect_generator and rank_units_by_ace at larger sizes.
`PYTHONPATH=. python benchmarks/gan_gpu.py [--samples 10000] [--ace-samples 1000]`"""
from __future__ import annotations

import argparse
import json
import time

import torch

from dissect_kernels.ace import rank_units_by_ace
from dissect_kernels.generator import dissect_generator
from dissect_kernels.models.tiny_gan import default_segmenter, load_default_generator, tiny_gan_info


def timed(fn, device):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=10000)
    ap.add_argument("--ace-samples", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu for a smoke test")
    args = ap.parse_args()
    dev = torch.device(args.device)
    s, info = default_segmenter(), tiny_gan_info()
    report = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"}
    # Agreement with the CPU on a small run.
    cpu = dissect_generator(load_default_generator(), "layer3", s, num_samples=64, batch_size=32,
                            progress=False).layers["layer3"]
    gpu = dissect_generator(load_default_generator(dev), "layer3", s, num_samples=64, batch_size=32,
                            progress=False).layers["layer3"]
    report["labels_equal"] = bool(torch.equal(cpu.best_label, gpu.best_label))
    report["max_threshold_diff"] = float((cpu.thresholds - gpu.thresholds).abs().max())
    report["max_iou_diff"] = float((cpu.iou - gpu.iou).abs().max())
    report["max_count_diff"] = int((cpu.counts["intersection"] - gpu.counts["intersection"]).abs().max())
    # Timing at scale.
    g = load_default_generator(dev)
    dissect_generator(g, "layer3", s, num_samples=args.batch, batch_size=args.batch, progress=False)  # warm-up
    res, t = timed(lambda: dissect_generator(g, "layer3", s, num_samples=args.samples,
                                             batch_size=args.batch, progress=False), dev)
    report["dissect"] = {"samples": args.samples, "seconds": round(t, 3), "timing": res.timing,
                         "samples_per_s": round(args.samples / t, 1)}
    lr = res.layers["layer3"]
    report["planted_labelled"] = all(lr.unit_label(u) == c for c, us in info["planted"].items() for u in us)
    rank, t = timed(lambda: rank_units_by_ace(g, "layer3", s, "tree", num_samples=args.ace_samples,
                                              batch_size=100, value=2.0), dev)
    report["ace_rank"] = {"samples": args.ace_samples, "seconds": round(t, 3),
                          "edited_images_per_s": round(2 * 24 * args.ace_samples / t, 1),
                          "top3": rank.order[:3].tolist(), "planted": info["planted"]["tree"]}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
