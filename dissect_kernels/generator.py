"""GAN dissection driver: sample z per sample index, run the generator with layers retained,
segment its images, and label every unit by GAN Dissection's IQR threshold search.

Three streaming passes over the same z (memory independent of num_samples, except for exact
quantiles, which keep the values they need):
 1. quantiles of each unit's *upsampled* map (to the segmentation's resolution): the candidate
    levels t_j = Q_u(1 - f_j), f in logspace(-3, 0, 100), and the convention's quantile;
 2. exact counts above every candidate level, conditioned on every label and category
    (stats.LevelCounts: GD's conditional sketches, counted exactly at the levels), plus an
    IoUTally at the convention's fixed quantile (reported as counts["quantile_iou"]);
 3. after the search (per (unit, concept): GD's agreement > 0.8 and t > 0 rules, argmax IQR;
    label = argmax IQR; one threshold per unit t_u = t_{u,label}) an IoUTally at t_u gives the
    reported IoU and IQR, with per-sample maxima for the exemplars (top-k samples per unit).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from dissect_kernels import distributed as ddp
from dissect_kernels import hooks
from dissect_kernels.checkpoint import Checkpointer, content_hash
from dissect_kernels.conventions import get_convention
from dissect_kernels.geometry import Geometry
from dissect_kernels.reference.tally import upsample
from dissect_kernels.results import DissectionResult, LayerResult
from dissect_kernels.stats.iou_tally import IoUTally, iqr_from_table
from dissect_kernels.stats.level_counts import LevelCounts
from dissect_kernels.stats.quantile import QuantileSketch
from dissect_kernels.stats.topk import TopK

NUM_LEVELS = 100
AGREEMENT = 0.8          # GD keeps a candidate level only if P(A and C) + P(not A and not C) > 0.8
MIN_LABEL_FRACTION = 1e-3  # GD zeroes the MI of labels rarer than this


def level_fractions(num_levels: int = NUM_LEVELS) -> np.ndarray:
    """GD's candidate fractions f = logspace(-3, 0, num_levels): levels are Q(1 - f)."""
    return np.logspace(-3, 0, num_levels)


# ---------------------------------------------------------------- sampling and segmenting


def sample_z(indices: torch.Tensor, z_dim: int, seed: int = 0, device=None) -> torch.Tensor:
    """Standard normal z [B, z_dim], row i drawn from a generator seeded by (seed, indices[i]),
    so a sample's z depends only on its index: shards, resumes and batch sizes agree."""
    rows = []
    for i in indices.tolist():
        state = np.random.SeedSequence(entropy=int(seed), spawn_key=(int(i),)).generate_state(2, np.uint64)
        g = torch.Generator().manual_seed(int(state[0] & np.uint64(0x7FFFFFFFFFFFFFFF)))
        rows.append(torch.randn(z_dim, generator=g))
    z = torch.stack(rows) if rows else torch.zeros(0, z_dim)
    return z.to(device) if device is not None else z


def make_z_sampler(generator: nn.Module, seed: int, z_dim: int | None, z_sampler, device):
    """indices -> z on device: the caller's z_sampler, or sample_z with the generator's z_dim."""
    if z_sampler is not None:
        if not callable(z_sampler):
            raise TypeError(f"z_sampler must be a callable indices -> z, got {type(z_sampler).__name__}")
        return lambda idx: z_sampler(idx).to(device)
    z_dim = z_dim if z_dim is not None else getattr(generator, "z_dim", None)
    if not isinstance(z_dim, int) or z_dim < 1:
        raise ValueError("pass z_dim=... or z_sampler=... (the generator has no integer z_dim attribute)")
    return lambda idx: sample_z(idx, z_dim, seed, device)


def segmenter_info(segmenter) -> tuple[int, list[str], list[str], torch.Tensor]:
    """(num_classes, concept_names, category_names, category_of) of a segmenter; names and
    categories default to class_<i> and one category "concept"."""
    C = getattr(segmenter, "num_classes", None)
    if not isinstance(C, int) or C < 2:
        raise ValueError(f"segmenter must have an integer num_classes >= 2 (class 0 = background), got {C!r}")
    names = list(getattr(segmenter, "concept_names", None) or [f"class_{i}" for i in range(C)])
    cats = list(getattr(segmenter, "category_names", None) or ["concept"])
    cat_of = getattr(segmenter, "category_of", None)
    cat_of = torch.zeros(C, dtype=torch.int64) if cat_of is None else torch.as_tensor(cat_of, dtype=torch.int64)
    if len(names) != C or cat_of.shape != (C,):
        raise ValueError(f"segmenter has {C} classes but {len(names)} concept_names and category_of "
                         f"of shape {tuple(cat_of.shape)}")
    if int(cat_of.min()) < 0 or int(cat_of.max()) >= len(cats):
        raise ValueError(f"segmenter.category_of holds ids outside [0, {len(cats)})")
    return C, names, cats, cat_of


def segment(segmenter, images: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Run the segmenter and check its output: int64 [B, L, H, W] ids in [0, num_classes)."""
    with torch.no_grad():
        seg = segmenter(images)
    B = images.shape[0]
    if not isinstance(seg, torch.Tensor) or seg.dim() not in (3, 4) or seg.shape[0] != B:
        shape = tuple(seg.shape) if isinstance(seg, torch.Tensor) else type(seg).__name__
        raise ValueError(f"segmenter must return class ids of shape [B, H, W] or [B, L, H, W] with "
                         f"B={B}, got {shape}")
    if seg.dtype.is_floating_point or seg.dtype == torch.bool:
        raise TypeError(f"segmenter must return integer class ids, got {seg.dtype}")
    seg = seg[:, None] if seg.dim() == 3 else seg
    lo, hi = int(seg.min()), int(seg.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"segmenter returned class ids in [{lo}, {hi}] but num_classes={num_classes} "
                         f"(ids must lie in [0, {num_classes}))")
    return seg.long()


@dataclass
class _Run:
    """One generator configuration: how to get z, images, retained layers and labels."""

    generator: nn.Module
    layers: list[str]
    segmenter: object
    num_classes: int
    z_of: Callable
    device: torch.device

    def batch(self, indices: torch.Tensor):
        """(acts {layer: [B, U, h, w]}, images, labels [B, L, H, W]) for sample indices."""
        z = self.z_of(indices)
        with torch.no_grad(), hooks.TraceDict(self.generator, self.layers) as traces:
            images = self.generator(z)
        acts = {}
        for name in self.layers:
            out = traces[name].output
            if not isinstance(out, torch.Tensor) or out.dim() != 4:
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(f"layer {name!r} must output [B, U, h, w] feature maps, got {shape}")
            acts[name] = out
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise ValueError("the generator must return images [B, 3, H, W]")
        return acts, images, segment(self.segmenter, images, self.num_classes)


def _batches(samples, batch_size: int, progress: bool, desc: str):
    """Index tensors of at most batch_size over range(samples) (an int), a range (built per
    batch: O(batch) memory for any N) or a list of indices; the progress bar counts samples, so
    it shows samples/s and the ETA."""
    from tqdm.auto import tqdm
    samples = range(samples) if isinstance(samples, int) else samples
    if not (isinstance(samples, range) and samples.step == 1):
        samples = torch.as_tensor(list(samples), dtype=torch.int64)
    with tqdm(total=len(samples), desc=desc, disable=not progress, leave=False, unit="sample",
              unit_scale=True, smoothing=0.05) as bar:
        for s in range(0, len(samples), batch_size):
            part = samples[s:s + batch_size]
            idx = torch.arange(part.start, part.stop) if isinstance(part, range) else part
            yield idx
            bar.update(len(idx))


# ---------------------------------------------------------------- quantiles


QUANTILE_MODES = ("auto", "exact", "sketch")


def _quantile_sketch(U: int, expected: int, mode: str, device, min_quantile: float = 0.0) -> QuantileSketch:
    """A QuantileSketch for quantiles >= min_quantile in `mode`: "exact" (state grows with the
    sample count; refused over the sketch's memory budget), "sketch" (bounded memory: GD's
    sketched levels) or "auto" (exact while it fits the budget, else the sketch)."""
    return QuantileSketch(U, mode=mode, min_quantile=min_quantile, expected_count=expected, device=device)


# ---------------------------------------------------------------- IQR search


def iqr_search(counts: LevelCounts, levels: torch.Tensor):
    """GD's per-(unit, concept) search over the candidate levels (counts in level order).
    Returns (max_iqr [U, C] float64, best level index [U, C] int64); column 0 is 0."""
    U, NL, C = counts.above_label.shape
    cat = counts.category_of
    tot = counts.category_pixels[cat].double()                           # [C]
    safe = tot.clamp(min=1)
    truth = (counts.truth.double() / safe)[None, None, :].expand(U, NL, C)
    pred = counts.above_cat[:, :, cat].double() / safe                   # [U, NL, C]
    isect = counts.above_label.double() / safe
    table = torch.stack([torch.stack([isect, pred - isect]),
                         torch.stack([truth - isect, 1 - pred - truth + isect])]).clamp(0, 1)
    iqr = iqr_from_table(table)                                          # [U, NL, C]
    frac = counts.truth.double() / max(1, int(counts.total_pixels))
    iqr[:, NL - 1, :] = 0                                                # GD: last bucket
    iqr[:, :, (frac < MIN_LABEL_FRACTION) | (tot == 0)] = 0
    keep = (table[0, 0] + table[1, 1] > AGREEMENT) & (levels[:, :, None] > 0)
    iqr = torch.where(keep, iqr, torch.zeros_like(iqr))
    iqr[:, :, 0] = 0
    best, idx = iqr.max(dim=1)                                           # first max: highest level
    return best, idx


# ---------------------------------------------------------------- the driver


def dissect_generator(generator: nn.Module, layers: "str | Sequence[str]", segmenter, *,
                      num_samples: int, seed: int = 0, z_sampler: Callable | None = None,
                      z_dim: int | None = None, convention: str = "exact", batch_size: int = 32,
                      device=None, out_dir=None, progress: bool = True, backend: str = "auto",
                      top_k: int | None = None, resume: bool = True,
                      checkpoint_interval: float = 120.0,
                      quantile_mode: str | None = None) -> DissectionResult:
    """GAN dissection of `layers` of `generator` on num_samples z (z_i depends only on (seed, i),
    or z_sampler(indices) -> z). segmenter(images) -> class ids [B, (L,) H, W] with attribute
    num_classes (optional concept_names, category_names, category_of); class 0 = background.
    convention "exact" (exact quantiles) or "gandissect" (quantile sketch, GD's detector rule).
    Returns a DissectionResult (thresholds [U] = each unit's IQR-chosen threshold; iou/iqr at it;
    counts: intersection, truth, activation, search_iqr, search_threshold, quantile_iou); with
    out_dir also saves results, exemplar strips and report.html there. Under torch.distributed
    each rank takes a contiguous shard of the sample indices and the accumulators merge across
    ranks after every pass (every rank returns the merged result; rank 0 writes). With out_dir,
    accumulators are checkpointed every checkpoint_interval seconds and at pass boundaries; a
    rerun with identical inputs resumes (resume=False starts over); a changed input starts over.
    quantile_mode (pass 1's levels): None = the convention's ("auto" for "exact": exact while
    the kept values fit 2 GiB, so memory grows with num_samples up to that budget; "sketch" for
    "gandissect"); "sketch" = bounded memory (peak memory independent of num_samples: use it
    for large runs); "exact" = exact quantiles or a clear error when over the budget."""
    conv = get_convention(convention)
    if quantile_mode is None:
        quantile_mode = "auto" if conv.name == "exact" else "sketch"
    if quantile_mode not in QUANTILE_MODES:
        raise ValueError(f"quantile_mode must be None or one of {QUANTILE_MODES}, got {quantile_mode!r}")
    if conv.geometry == "receptive-field":
        raise ValueError(f"convention {conv.name!r} needs receptive-field geometry, which GAN "
                         "dissection does not use; choose 'exact' or 'gandissect'")
    if not isinstance(generator, nn.Module):
        raise TypeError(f"generator must be an nn.Module, got {type(generator).__name__}")
    layers = [layers] if isinstance(layers, str) else list(layers)
    if not layers:
        raise ValueError("layers is empty")
    for name in layers:
        hooks.get_module(generator, name)
    for name, v in (("num_samples", num_samples), ("batch_size", batch_size)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if ddp.world_size() > num_samples:
        raise ValueError(f"num_samples={num_samples} is smaller than the {ddp.world_size()} ranks")
    shard = ddp.shard_range(num_samples)              # this rank's samples (all without torchrun)
    progress = progress and ddp.rank() == 0
    C, names, cat_names, cat_of = segmenter_info(segmenter)
    K = len(cat_names)
    if device is None:
        device = next((p.device for p in generator.parameters()), torch.device("cpu"))
    device = torch.device(device)
    run = _Run(generator, layers, segmenter, C, make_z_sampler(generator, seed, z_dim, z_sampler, device),
               device)
    geometry = Geometry.named(conv.geometry)
    top_k = conv.top_images if top_k is None else int(top_k)
    timing: dict[str, float] = {}

    def up(acts, labels):
        ytab, xtab = (t.to(acts.device) for t in geometry.tables(tuple(acts.shape[2:]), tuple(labels.shape[2:])))
        return upsample(acts, ytab, xtab)

    # Checkpoints: every accumulator under out_dir/.checkpoint/gan-rank<r>, keyed by a hash of
    # every input; a rerun with the same inputs resumes at the last saved batch.
    ck = None
    if out_dir is not None:
        key = content_hash(generator, layers=layers, num_samples=num_samples, seed=seed,
                           z_sampler=None if z_sampler is None else getattr(z_sampler, "__qualname__", repr(z_sampler)),
                           z_dim=z_dim, convention=conv.name, batch_size=batch_size, top_k=top_k,
                           quantile_mode=quantile_mode,
                           segmenter=[type(segmenter).__qualname__, C, names, cat_names, cat_of.tolist()],
                           rank=ddp.rank(), world=ddp.world_size())
        ck = Checkpointer(Path(out_dir) / ".checkpoint" / f"gan-rank{ddp.rank()}", key, checkpoint_interval)
        if not resume:
            ck.clear()
    acc: dict[str, dict] = {k: {} for k in ("sketch", "lc", "qtally", "tally", "top")}
    shapes: dict[str, list[int]] = {}
    levels, qthr = {}, {}

    def new_sketch(name, U, H, W):
        shapes[name] = [U, H, W]
        acc["sketch"][name] = _quantile_sketch(U, num_samples * H * W, quantile_mode, device)

    def new_pass2():
        for n in layers:
            acc["lc"][n] = LevelCounts(levels[n], C, cat_of, num_categories=K, device=device)
            acc["qtally"][n] = IoUTally(shapes[n][0], C, cat_of, num_categories=K, convention=conv, device=device)

    def new_pass3():
        for n in layers:
            acc["tally"][n] = IoUTally(shapes[n][0], C, cat_of, num_categories=K, convention=conv, device=device)
            acc["top"][n] = TopK(shapes[n][0], top_k, device=device)

    def tensors():
        out = {f"{n}/levels": v for n, v in levels.items()}
        out.update({f"{n}/qthr": v for n, v in qthr.items()})
        for kind, objs in acc.items():
            for n, obj in objs.items():
                out.update({f"{n}/{kind}/{k}": v for k, v in obj.state_dict().items()})
        return out

    def save(phase, batches, now=False):
        if ck is not None:
            prog = {"phase": phase, "batches": batches, "shapes": shapes}
            ck.save(prog, tensors()) if now else ck.maybe_save(prog, tensors)

    phase, done = 1, 0
    loaded = ck.load() if ck is not None else None
    if loaded is not None:
        prog, saved = loaded
        phase, done = int(prog["phase"]), int(prog["batches"])
        for n, (U, H, W) in prog["shapes"].items():
            new_sketch(n, U, H, W)
        for n in layers:
            if f"{n}/levels" in saved:
                levels[n], qthr[n] = saved[f"{n}/levels"].to(device), saved[f"{n}/qthr"].to(device)
        if phase >= 2:
            new_pass2()
        if phase >= 3:
            new_pass3()
        for kind, objs in acc.items():
            for n, obj in objs.items():
                part = {k[len(f"{n}/{kind}/"):]: v.to(device) for k, v in saved.items()
                        if k.startswith(f"{n}/{kind}/")}
                if part:
                    obj.load_state_dict(part)
        if progress:
            print(f"resuming GAN dissection from its checkpoint: pass {phase}/3, batch {done}")

    def stream(p, desc, step):
        skip = done if phase == p else 0
        for i, idx in enumerate(_batches(shard[skip * batch_size:], batch_size, progress, desc), start=skip):
            acts, _, labels = run.batch(idx)
            step(idx, acts, labels)
            save(p, i + 1)

    # Pass 1: quantiles of the upsampled maps.
    t0 = time.perf_counter()
    if phase == 1:
        def step1(idx, acts, labels):
            for name, a in acts.items():
                if name not in acc["sketch"]:
                    new_sketch(name, a.shape[1], labels.shape[2], labels.shape[3])
                acc["sketch"][name].update(up(a, labels))
        stream(1, "gan pass 1: quantiles", step1)
        qs = [1.0 - float(f) for f in level_fractions()] + [float(conv.quantile)]
        for name, sk in acc["sketch"].items():
            ddp.merge_across_ranks(sk)
            values = sk.quantile(qs).to(device).float()                # [U, NL + 1]
            levels[name], qthr[name] = values[:, :NUM_LEVELS].contiguous(), values[:, NUM_LEVELS].contiguous()
        acc["sketch"].clear()
        new_pass2()
        save(2, 0, now=True)
    acc["sketch"].clear()
    timing["quantiles"] = time.perf_counter() - t0

    # Pass 2: exact counts above the levels; IoU at the fixed quantile.
    t0 = time.perf_counter()
    lc, qtally = acc["lc"], acc["qtally"]
    if phase <= 2:
        def step2(idx, acts, labels):
            for name, a in acts.items():
                lc[name].update(up(a, labels), labels)
                qtally[name].update(a, qthr[name], labels, backend=backend)
        stream(2, "gan pass 2: level counts", step2)
        for name in layers:
            ddp.merge_across_ranks(lc[name])
            ddp.merge_across_ranks(qtally[name])
        new_pass3()
        save(3, 0, now=True)
    timing["level_counts"] = time.perf_counter() - t0

    # IQR search, labels and per-unit thresholds.
    search = {}
    for name in layers:
        max_iqr, at = iqr_search(lc[name], levels[name])
        pair_thr = levels[name].gather(1, at)                         # [U, C]
        label = max_iqr[:, 1:].argmax(1) + 1 if C > 1 else torch.full((max_iqr.shape[0],), -1)
        search[name] = (max_iqr, pair_thr, label, pair_thr.gather(1, label[:, None])[:, 0].contiguous())

    # Pass 3: exact counts at each unit's threshold; top-k samples by per-sample max.
    t0 = time.perf_counter()
    tallies, top = acc["tally"], acc["top"]

    def step3(idx, acts, labels):
        for name, a in acts.items():
            res = tallies[name].update(a, search[name][3], labels, backend=backend)
            top[name].update(res.max, idx.to(res.max.device))
    stream(3, "gan pass 3: tally at thresholds", step3)
    for name in layers:
        ddp.merge_across_ranks(tallies[name])
        ddp.merge_across_ranks(top[name])
    timing["tally"] = time.perf_counter() - t0

    results = {}
    for name in layers:
        t = tallies[name]
        max_iqr, pair_thr, label, unit_thr = search[name]
        iou, iqr = t.iou(), t.iqr()
        best_iou = iou.gather(1, label.clamp(min=0)[:, None])[:, 0]
        tv, ti = (x.cpu() for x in top[name].result())
        results[name] = LayerResult.build(
            name, iou, unit_thr, label, best_iou, concept_names=names, category_names=cat_names,
            category_of=cat_of, convention=conv, iqr=iqr, topk_indices=ti, topk_values=tv,
            counts={"intersection": t.intersection, "truth": t.truth, "activation": t.activation,
                    "search_iqr": max_iqr, "search_threshold": pair_thr,
                    "quantile_iou": qtally[name].iou(), "quantile_threshold": qthr[name]},
            extra={"mode": "gan", "levels": f"Q(1-f), f = logspace(-3, 0, {NUM_LEVELS})",
                   "label_rule": "argmax over concepts of the max IQR; threshold at the label"})
    result = DissectionResult(
        results, convention=conv.name,
        model={"name": type(generator).__name__},
        dataset={"kind": "generated", "num_samples": num_samples, "seed": seed,
                 "segmenter": type(segmenter).__name__},
        parameters={"batch_size": batch_size, "layers": layers, "quantile": conv.quantile,
                    "levels": NUM_LEVELS, "agreement": AGREEMENT, "top_k": top_k,
                    "quantile_mode": quantile_mode},
        timing=timing)
    if out_dir is not None and ddp.rank() == 0:        # rank 0 writes; z is a function of the index
        from dissect_kernels.report import write_report
        from dissect_kernels.results import save_results
        t0 = time.perf_counter()
        save_exemplars(out_dir, run, result, up, batch_size)
        result.timing["exemplars"] = time.perf_counter() - t0
        save_results(out_dir, result)
        write_report(out_dir, result, title="GAN dissection report")
    if ck is not None:
        ck.clear()
    ddp.barrier()
    return result


def save_exemplars(out_dir, run: _Run, result: DissectionResult, up, batch_size: int) -> None:
    """Regenerate every unit's top samples (z is a function of the index) and save strips of
    them with the unit's mask (upsampled activation > its threshold) outlined."""
    from dissect_kernels.report import save_strip

    for name, lr in result.layers.items():
        if lr.topk_indices is None:
            continue
        wanted = torch.unique(lr.topk_indices[lr.topk_indices >= 0])   # -1: fewer samples than k
        images, masks = {}, {}
        for s in range(0, len(wanted), batch_size):
            idx = wanted[s:s + batch_size]
            acts, imgs, labels = run.batch(idx)
            m = up(acts[name], labels) > lr.thresholds.to(acts[name].device)[None, :, None, None]
            pix = ((imgs.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
            for j, i in enumerate(idx.tolist()):
                images[i], masks[i] = pix[j], m[j].cpu()
        for u in range(lr.num_units):
            ids = [i for i in lr.topk_indices[u].tolist() if i >= 0]
            if not ids:
                continue
            lr.exemplar_strips[u] = save_strip(out_dir, name, u, torch.stack([images[i] for i in ids]),
                                               torch.stack([masks[i][u] for i in ids]), size=64)
