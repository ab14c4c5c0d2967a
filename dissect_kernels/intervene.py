"""Batched intervention: evaluate S unit sets (ablation or insertion, optionally at chosen
positions) on one batch in one forward pass, and the classifier ablation experiment on top."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from typing import Callable, Sequence

import torch
from torch import nn

from dissect_kernels import distributed as ddp
from dissect_kernels import hooks
from dissect_kernels.ops.edit import edit, edit_

__all__ = ["intervene", "unit_masks", "classifier_ablation", "AblationResult", "plot_ablation"]


def unit_masks(unit_sets, num_units: int, device=None) -> torch.Tensor:
    """Unit sets -> float32 alpha [S, U]. Accepts a list of sets (each an int, a sequence or
    1-D int tensor of unit ids; ragged is fine), an int tensor [S] (one unit each) or [S, k],
    or a bool/float tensor [S, U] used as the mask (soft alpha; gradients flow through it)."""
    if isinstance(unit_sets, torch.Tensor):
        t = unit_sets.to(device) if device is not None else unit_sets
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            if t.dim() != 2 or t.shape[1] != num_units:
                raise ValueError(f"unit_sets as a mask must have shape [S, {num_units}] (the layer's "
                                 f"units), got {tuple(t.shape)}")
            return t.float()
        if t.dim() not in (1, 2):
            raise ValueError(f"unit_sets as unit ids must be [S] or [S, k], got shape {tuple(t.shape)}")
        ids = t.long().reshape(t.shape[0], -1)
        _check_ids(ids, num_units)
        return torch.zeros(ids.shape[0], num_units, device=ids.device).scatter_(1, ids, 1.0)
    if not isinstance(unit_sets, (list, tuple)):
        raise TypeError(f"unit_sets must be a list of unit-id sets or a tensor, got {type(unit_sets).__name__}")
    rows, cols = [], []
    for s, units in enumerate(unit_sets):
        if isinstance(units, torch.Tensor):
            units = units.reshape(-1).tolist()
        ids = torch.as_tensor([units] if isinstance(units, numbers.Integral) else list(units), dtype=torch.int64)
        rows.append(torch.full_like(ids, s))
        cols.append(ids)
    cols = torch.cat(cols) if cols else torch.zeros(0, dtype=torch.int64)
    _check_ids(cols, num_units)
    mask = torch.zeros(len(unit_sets), num_units)
    if cols.numel():
        mask[torch.cat(rows), cols] = 1.0
    return mask.to(device) if device is not None else mask


def _check_ids(ids: torch.Tensor, num_units: int) -> None:
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_units):
        raise ValueError(f"unit_sets holds unit ids in [{int(ids.min())}, {int(ids.max())}] but the "
                         f"layer has {num_units} units (ids must lie in [0, {num_units}))")


def _batch_size(inputs) -> int:
    first = inputs
    if isinstance(inputs, (tuple, list)):
        first = next((t for t in inputs if isinstance(t, torch.Tensor)), None)
    elif isinstance(inputs, dict):
        first = next((t for t in inputs.values() if isinstance(t, torch.Tensor)), None)
    if not isinstance(first, torch.Tensor) or first.dim() == 0:
        raise TypeError("inputs must be a batched tensor, or a tuple/dict holding one")
    return first.shape[0]


def _repeat_inputs(inputs, c: int, B: int):
    rep = lambda t: t.repeat(c, *[1] * (t.dim() - 1)) if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == B else t  # noqa: E731
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(rep(t) for t in inputs)
    if isinstance(inputs, dict):
        return {k: rep(t) for k, t in inputs.items()}
    return rep(inputs)


class _Plan:
    """Per-chunk alpha and value for the layer's output, built once its shape is known."""

    def __init__(self, unit_sets, values, positions, layer: str):
        self.unit_sets, self.values, self.positions, self.layer = unit_sets, values, positions, layer
        self.alpha_units = None

    def prepare(self, out: torch.Tensor, B: int) -> None:
        if self.alpha_units is not None:
            return
        if out.dim() < 2:
            raise ValueError(f"layer {self.layer!r} outputs shape {tuple(out.shape)}; intervene needs [B, U, ...]")
        U, spatial = out.shape[1], tuple(out.shape[2:])
        try:
            self.alpha_units = unit_masks(self.unit_sets, U, out.device)
        except ValueError as err:
            raise ValueError(f"layer {self.layer!r}: {err}") from err
        S = self.alpha_units.shape[0]
        p = self.positions
        if p is not None:
            p = p.to(out.device)
            k = len(spatial)
            ok = k > 0 and p.dim() in (k + 1, k + 2) and tuple(p.shape[-k:]) == spatial and (
                p.shape[-k - 1] in (1, B)) and (p.dim() == k + 1 or p.shape[0] in (1, S))
            if not ok:
                raise ValueError(f"positions must have shape [B, *spatial] = {[B, *spatial]} or "
                                 f"[S, B, *spatial] = {[S, B, *spatial]} for layer {self.layer!r} "
                                 f"(output {tuple(out.shape)}), got {tuple(p.shape)}")
            p = p.float().reshape((-1, p.shape[-k - 1], 1) + spatial)  # [S|1, B|1, 1, *spatial]
        self.pos = p
        v = self.values
        if isinstance(v, torch.Tensor):
            v = v.to(out.device)
            if v.dim() == out.dim() and v.shape[0] not in (1,):
                if v.shape[0] != B:
                    raise ValueError(f"values of shape {tuple(v.shape)} must have batch size 1 or {B}")
                self.value_per_sample = True
            else:
                self.value_per_sample = False
        else:
            self.value_per_sample = False
        self.v = v

    def chunk(self, s0: int, s1: int, out: torch.Tensor, B: int):
        """alpha, value for sets s0..s1 on the replicated output [(s1-s0)*B, U, ...]."""
        c, rest = s1 - s0, out.shape[2:]
        a = self.alpha_units[s0:s1].reshape((c, 1, -1) + (1,) * len(rest))  # [c, 1, U, 1..]
        if self.pos is not None:
            pos = self.pos if self.pos.shape[0] == 1 else self.pos[s0:s1]
            a = a * pos
        a = a.expand((c, B) + tuple(a.shape[2:])).reshape((c * B,) + tuple(a.shape[2:]))
        v = self.v
        if self.value_per_sample:
            v = v.unsqueeze(0).expand((c,) + tuple(v.shape)).reshape((c * B,) + tuple(v.shape[1:]))
        return a, v


def intervene(model: nn.Module, layer: str, unit_sets, inputs, *, mode: str = "ablate",
              values=None, positions: torch.Tensor | None = None,
              measure: Callable | None = None, chunk_size: int | None = None,
              replicate: str = "output") -> torch.Tensor:
    """Evaluate S unit sets on one batch: returns measure(output) as [S, B, ...].

    The model runs up to `layer` once per chunk of sets, the layer's output is replicated for
    the chunk's sets (batch c*B, set-major), each copy is edited with dk.edit (alpha = unit set
    x positions; value 0 for mode="ablate", `values` for "insert": a number, [U], or a tensor
    broadcastable to one sample's output, optionally with batch B) and the rest of the network
    runs on the replicated batch. Equals a loop of Trace(edit=Edit(alpha_s, value)) runs, one
    set at a time, exactly when the model is in eval mode and per-sample (no cross-sample ops).
    unit_sets: see unit_masks. positions: [B, *spatial] or [S, B, *spatial] (bool/float).
    measure(output) -> per-sample tensor with leading dim c*B (default: the output itself).
    chunk_size bounds the sets per forward pass. replicate="input" repeats the inputs instead
    (for networks whose later layers reuse activations from before `layer`, e.g. skips).
    It works on exactly the inputs it is given (no sharding, no collectives, even under
    torch.distributed); the drivers built on it (ace, rank_units_by_ace, classifier_ablation) shard.
    """
    module = hooks.get_module(model, layer)
    if mode not in ("ablate", "insert"):
        raise ValueError(f"mode must be 'ablate' or 'insert', got {mode!r}")
    if replicate not in ("output", "input"):
        raise ValueError(f"replicate must be 'output' or 'input', got {replicate!r}")
    if values is None:
        if mode == "insert":
            raise ValueError("mode='insert' needs values (a number, a [U] tensor, or a tensor "
                             "broadcastable to the layer's output)")
        values = 0.0
    if positions is not None and not isinstance(positions, torch.Tensor):
        raise TypeError(f"positions must be a tensor or None, got {type(positions).__name__}")
    if not isinstance(unit_sets, (list, tuple, torch.Tensor)):
        raise TypeError(f"unit_sets must be a list of unit-id sets or a tensor, got {type(unit_sets).__name__}")
    S = len(unit_sets)
    if S == 0:
        raise ValueError("unit_sets is empty")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    c_max = S if chunk_size is None else min(chunk_size, S)
    B = _batch_size(inputs)
    measure = measure or (lambda out: out)
    plan = _Plan(unit_sets, values, positions, layer)
    results = []
    for s0 in range(0, S, c_max):
        s1 = min(S, s0 + c_max)
        c = s1 - s0
        calls = [0]

        def hook(mod, args, kwargs, out, s0=s0, s1=s1, c=c):
            calls[0] += 1
            if calls[0] > 1:
                raise RuntimeError(f"layer {layer!r} ran more than once in one forward pass; "
                                   "intervene needs a layer that runs once")
            if not isinstance(out, torch.Tensor) or not out.dtype.is_floating_point:
                raise TypeError(f"layer {layer!r} must output a float tensor, got {type(out).__name__}")
            expect = B if replicate == "output" else c * B
            if out.shape[0] != expect:
                raise ValueError(f"layer {layer!r} output has batch {out.shape[0]}, expected {expect}")
            plan.prepare(out, B)
            a, v = plan.chunk(s0, s1, out, B)
            grad = torch.is_grad_enabled() and (out.requires_grad or a.requires_grad or
                                                (isinstance(v, torch.Tensor) and v.requires_grad))
            if replicate == "input" or grad:
                x = out if replicate == "input" else out.repeat((c,) + (1,) * (out.dim() - 1))
                return edit(x, a, v)
            return edit_(out.repeat((c,) + (1,) * (out.dim() - 1)), a, v)

        handle = module.register_forward_hook(hook, with_kwargs=True)
        try:
            run_inputs = inputs if replicate == "output" else _repeat_inputs(inputs, c, B)
            try:
                output = hooks.call_model(model, run_inputs)
            except RuntimeError as e:
                if replicate == "output" and "size of tensor" in str(e):
                    raise RuntimeError(f"{e}\n(intervene: layers after {layer!r} seem to combine its "
                                       "replicated output with activations from before it, e.g. a skip "
                                       "connection; pass replicate='input')") from e
                raise
        finally:
            handle.remove()
        if calls[0] == 0:
            raise RuntimeError(f"layer {layer!r} did not run during the forward pass")
        m = measure(output)
        if not isinstance(m, torch.Tensor) or m.dim() == 0 or m.shape[0] != c * B:
            shape = tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
            raise ValueError(f"measure must return a tensor with one row per sample ({c * B} rows "
                             f"for {c} sets x batch {B}), got {shape}")
        results.append(m.reshape((c, B) + tuple(m.shape[1:])))
    return torch.cat(results) if len(results) > 1 else results[0]


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
