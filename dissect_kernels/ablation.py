"""Classifier unit ablation (davidbau/dissect's per-class experiment): per-class precision,
recall and balanced accuracy after ablating each single unit, then the top-N units of each
class and all but the top-N, batched through dk.intervene; plots of the accuracy drop."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Sequence

import torch
from torch import nn

from dissect_kernels import distributed as ddp
from dissect_kernels import hooks
from dissect_kernels.intervene import _check_ids, intervene

__all__ = ["classifier_ablation", "AblationResult", "plot_ablation"]


@dataclass
class AblationResult:
    """Per-class precision / recall / balanced accuracy ((recall + TNR)/2) of a classifier,
    unablated and with units ablated. Shapes: n = len(units), C classes, T = len(top_n).
    single_* [n, C] (None when a ranking was passed in); drop [n, C] = baseline - single
    balanced accuracy; ranking [C, n] unit ids per class, largest drop first (ties: lower id);
    topn_* / allbut_* [C, T]: class c's metric with its top-N units ablated / with every unit
    in `units` except its top N ablated (N clipped to n). A 0/0 metric is reported as 0."""

    units: torch.Tensor
    top_n: torch.Tensor
    num_samples: int
    baseline_precision: torch.Tensor
    baseline_recall: torch.Tensor
    baseline_balanced: torch.Tensor
    ranking: torch.Tensor
    topn_precision: torch.Tensor
    topn_recall: torch.Tensor
    topn_balanced: torch.Tensor
    allbut_precision: torch.Tensor
    allbut_recall: torch.Tensor
    allbut_balanced: torch.Tensor
    single_precision: torch.Tensor | None = None
    single_recall: torch.Tensor | None = None
    single_balanced: torch.Tensor | None = None
    drop: torch.Tensor | None = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain tensors (safetensors-compatible); None fields are left out."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["num_samples"] = torch.tensor(self.num_samples)
        return {k: v.contiguous() for k, v in out.items() if v is not None}


class _Confusion:
    """Running per-condition, per-class TP / predicted / true counts (int64)."""

    def __init__(self, conditions: int, num_classes: int, device):
        self.C = num_classes
        self.tp = torch.zeros(conditions, num_classes, dtype=torch.int64, device=device)
        self.pred = torch.zeros_like(self.tp)
        self.true = torch.zeros(num_classes, dtype=torch.int64, device=device)
        self.n = 0

    def update(self, pred: torch.Tensor, y: torch.Tensor) -> None:
        """pred [S, B] class ids, y [B]."""
        S = pred.shape[0]
        flat = (pred + self.C * torch.arange(S, device=pred.device)[:, None]).reshape(-1)
        self.pred += torch.bincount(flat, minlength=S * self.C).view(S, self.C)
        hit = (pred == y[None]).reshape(-1).long()
        self.tp += torch.zeros(S * self.C, dtype=torch.int64, device=pred.device).scatter_add_(
            0, flat, hit).view(S, self.C)
        self.true += torch.bincount(y, minlength=self.C)
        self.n += y.shape[0]

    def update_multilabel(self, pred: torch.Tensor, y: torch.Tensor) -> None:
        """pred [S, B, C] bool (class predicted present), y [B, C] bool (multi-hot truth)."""
        self.pred += pred.sum(1)
        self.tp += (pred & y[None]).sum(1)
        self.true += y.sum(0)
        self.n += y.shape[0]

    def merge_across_ranks(self) -> None:
        """Sum the counts of every rank (integers: exact) in place."""
        counts = ddp.sum_across_ranks(torch.cat([self.tp.reshape(-1), self.pred.reshape(-1), self.true,
                                                 torch.tensor([self.n], device=self.true.device)]))
        k = self.tp.numel()
        self.tp.copy_(counts[:k].view_as(self.tp))
        self.pred.copy_(counts[k:2 * k].view_as(self.pred))
        self.true.copy_(counts[2 * k:2 * k + self.C])
        self.n = int(counts[-1])

    def metrics(self):
        """(precision, recall, balanced accuracy), each float64 [S, C]."""
        tp, pred, true = self.tp.double(), self.pred.double(), self.true.double()[None]
        fp, fn = pred - tp, true - tp
        tn = self.n - tp - fp - fn
        ratio = lambda a, b: torch.where(b > 0, a / b.clamp(min=1), torch.zeros_like(a))  # noqa: E731
        recall = ratio(tp, tp + fn)
        return ratio(tp, tp + fp), recall, (recall + ratio(tn, tn + fp)) / 2


def _batches(loader, device, num_classes, multilabel=False):
    for batch in loader:
        if isinstance(batch, dict):
            x = batch.get("image", batch.get("input"))
            y = batch.get("label", batch.get("target"))
        else:
            x, y = batch[0], batch[1]
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise TypeError("loader must yield (images, labels) tensors or dicts with 'image' and 'label'")
        if multilabel:
            if y.dim() != 2 or y.shape[1] != num_classes:
                raise ValueError(f"multilabel targets must be multi-hot [B, num_classes] = [B, {num_classes}], "
                                 f"got shape {tuple(y.shape)}")
            if y.numel() and not bool(((y == 0) | (y == 1)).all()):
                raise ValueError("multilabel targets must hold only 0 and 1 (multi-hot)")
            yield x.to(device), y.to(device).bool()
            continue
        y = y.to(device).long().reshape(-1)
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(f"labels hold classes in [{int(y.min())}, {int(y.max())}] but num_classes={num_classes}")
        yield x.to(device), y


def classifier_ablation(model: nn.Module, layer: str, loader, *, num_classes: int,
                        units: Sequence[int] | torch.Tensor | None = None,
                        top_n: Sequence[int] = (1, 2, 3, 4, 5, 20), device=None,
                        progress: bool = True, ranking: torch.Tensor | None = None,
                        chunk_size: int | None = None, multilabel: bool = False) -> AblationResult:
    """The classifier ablation experiment (davidbau/dissect): per-class precision, recall and
    balanced accuracy unablated and with each single unit of `layer` ablated (zeroed
    everywhere; batched with intervene), units ranked per class by the balanced-accuracy drop,
    then each class's top-N units ablated, and separately all but its top N. loader yields
    (images, labels) or dicts with "image"/"label"; inputs go to `device` (default: the
    model's); the model is not moved and should be in eval mode. Pass `ranking` [C, n] (e.g.
    from a train-set run) to skip the single-unit pass and evaluate that ranking here.
    multilabel=True: every output is an independent binary classifier (predicted present when
    its logit > 0) and labels are multi-hot [B, num_classes]; the per-class confusion counts
    and hence precision / recall / balanced accuracy are of those binary decisions.

    Under torch.distributed each rank iterates its own loader, which the caller shards by rank
    (e.g. a DataLoader over dk.distributed.shard_dataset(ds); DistributedSampler pads with
    repeated samples unless drop_last or the size divides), and the integer confusion counts
    are summed across ranks before the metrics: every rank returns the single-process result."""
    from tqdm.auto import tqdm

    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    top_n = torch.as_tensor(list(top_n), dtype=torch.int64)
    if top_n.dim() != 1 or top_n.numel() == 0 or int(top_n.min()) < 1:
        raise ValueError(f"top_n must be a non-empty list of positive ints, got {top_n.tolist()}")
    hooks.get_module(model, layer)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    progress = progress and ddp.rank() == 0
    if multilabel:
        def argmax(out):  # the measure: per-class binary decisions [rows, C]
            if out.dim() != 2 or out.shape[1] != num_classes:
                raise ValueError(f"multilabel model output must be [B, num_classes] = [B, {num_classes}], "
                                 f"got shape {tuple(out.shape)}")
            return out > 0
    else:
        argmax = lambda out: out.argmax(dim=1)  # noqa: E731
    U = None
    C = num_classes
    with torch.no_grad():
        # Pass 1: baseline and every single unit ablated.
        single = None
        if ranking is None:
            for x, y in tqdm(_batches(loader, device, C, multilabel), desc="single-unit ablation", disable=not progress):
                if U is None:
                    U, units = _layer_units(model, layer, x, units)
                    single = _Confusion(1 + len(units), C, device)
                base = argmax(hooks.call_model(model, x))[None]
                sets = units[:, None]
                step = chunk_size or max(1, 4096 // max(1, x.shape[0]))
                ablated = intervene(model, layer, sets, x, measure=argmax, chunk_size=step)
                (single.update_multilabel if multilabel else single.update)(torch.cat([base, ablated]), y)
            single, units = _merged(single, units, C, device)
            if single is None:
                raise ValueError("loader yielded no batches")
            p, r, b = single.metrics()
            drop = b[0:1] - b[1:]
            order = torch.sort(-drop.t(), dim=1, stable=True).indices  # [C, n]
            ranking = units.to(device)[order]
        # Pass 2: top-N and all-but-top-N of every class.
        ranking = torch.as_tensor(ranking, device=device).long()
        plan = None
        for x, y in tqdm(_batches(loader, device, C, multilabel), desc="top-N ablation", disable=not progress):
            if plan is None:
                U, units = _layer_units(model, layer, x, units)
                if ranking.shape != (C, len(units)):
                    raise ValueError(f"ranking must have shape [num_classes, len(units)] = {[C, len(units)]}, "
                                     f"got {tuple(ranking.shape)}")
                plan = _topn_sets(ranking, units, top_n, U)
                evals = _Confusion(1 + plan.shape[0], C, device)
            base = argmax(hooks.call_model(model, x))[None]
            step = chunk_size or max(1, 4096 // max(1, x.shape[0]))
            ablated = intervene(model, layer, plan, x, measure=argmax, chunk_size=step)
            (evals.update_multilabel if multilabel else evals.update)(torch.cat([base, ablated]), y)
        evals, units = _merged(evals if plan is not None else None, units, C, device)
        if evals is None:
            raise ValueError("loader yielded no batches")
    ep, er, eb = evals.metrics()
    T = top_n.numel()
    cls = torch.arange(C, device=device)

    def per_class(m, offset):  # rows 1 + (c*2 + offset)*T + t, column c
        idx = 1 + (cls[:, None] * 2 + offset) * T + torch.arange(T, device=device)[None]
        return m[idx, cls[:, None]]

    out = AblationResult(
        units=units.cpu(), top_n=top_n, num_samples=evals.n,
        baseline_precision=ep[0].cpu(), baseline_recall=er[0].cpu(), baseline_balanced=eb[0].cpu(),
        ranking=ranking.cpu(),
        topn_precision=per_class(ep, 0).cpu(), topn_recall=per_class(er, 0).cpu(),
        topn_balanced=per_class(eb, 0).cpu(),
        allbut_precision=per_class(ep, 1).cpu(), allbut_recall=per_class(er, 1).cpu(),
        allbut_balanced=per_class(eb, 1).cpu())
    if single is not None:
        out.single_precision, out.single_recall = p[1:].cpu(), r[1:].cpu()
        out.single_balanced, out.drop = b[1:].cpu(), drop.cpu()
    return out


def _merged(conf: "_Confusion | None", units, C: int, device):
    """Sum a confusion across ranks (a rank whose loader was empty joins with zeros; the
    evaluated units come from a rank that saw data). Returns (confusion or None, units)."""
    if not ddp.is_distributed() or ddp.world_size() == 1:
        return conf, units
    import torch.distributed as dist
    mine = None if conf is None else (conf.tp.shape[0], units.cpu())
    peers: list = [None] * ddp.world_size()
    dist.all_gather_object(peers, mine)
    seen = [p for p in peers if p is not None]
    if not seen:
        return None, units
    if conf is None:
        conf, units = _Confusion(seen[0][0], C, device), seen[0][1].to(device)
    conf.merge_across_ranks()
    return conf, units


def _layer_units(model, layer, x, units):
    """(number of units of the layer, the evaluated unit ids as an int64 tensor)."""
    U = hooks.run_layers(model, x[:1], [layer])[layer].shape[1]
    units = torch.arange(U) if units is None else torch.as_tensor(units, dtype=torch.int64).reshape(-1)
    _check_ids(units, U)
    if units.numel() == 0 or units.unique().numel() != units.numel():
        raise ValueError(f"units must be distinct unit ids, got {units.tolist()}")
    return U, units.to(x.device)


def _topn_sets(ranking, units, top_n, U) -> torch.Tensor:
    """Masks [C*2*T, U]: for class c and N in top_n, its top-N units, then all but them."""
    C, n = ranking.shape
    T = top_n.numel()
    rank_pos = torch.full((C, U), -1, dtype=torch.int64, device=ranking.device)
    rank_pos.scatter_(1, ranking, torch.arange(n, device=ranking.device).expand(C, n).contiguous())
    N = top_n.clamp(max=n).to(ranking.device)
    in_units = rank_pos >= 0
    top = in_units[:, None] & (rank_pos[:, None] < N[None, :, None])  # [C, T, U]
    rest = in_units[:, None] & ~top
    return torch.stack([top, rest], dim=1).reshape(C * 2 * T, U).float()


def plot_ablation(result: AblationResult, out_path, *, classes: Sequence[int] | None = None,
                  class_names: Sequence[str] | None = None) -> str:
    """One panel per class (a grid in one image): balanced accuracy vs N with the top-N units
    ablated and with all but the top N ablated, the unablated level dashed. Returns the path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    C = result.baseline_balanced.shape[0]
    classes = list(range(C)) if classes is None else list(classes)
    ncol = max(1, math.ceil(math.sqrt(len(classes))))
    nrow = math.ceil(len(classes) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3 * ncol, 2.4 * nrow), squeeze=False)
    n = result.top_n.numpy()
    for ax in axes.flat[len(classes):]:
        ax.axis("off")
    for ax, c in zip(axes.flat, classes):
        ax.plot(n, result.topn_balanced[c].numpy(), "o-", label="top-N ablated")
        ax.plot(n, result.allbut_balanced[c].numpy(), "s-", label="all but top-N ablated")
        ax.axhline(float(result.baseline_balanced[c]), ls="--", color="gray", label="unablated")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(n, [str(v) for v in n], fontsize=7)
        ax.set_ylim(0.0, 1.02)
        ax.set_title(class_names[c] if class_names is not None else f"class {c}", fontsize=9)
        ax.set_xlabel("N", fontsize=8)
        ax.set_ylabel("balanced acc.", fontsize=8)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return str(out_path)
