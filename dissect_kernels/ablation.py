"""Classifier unit ablation (davidbau/dissect's per-class experiment) as two passes of the pass
engine: per-class precision, recall and balanced accuracy with each single unit ablated (pass 1,
which ranks the units per class), then each class's top-N units and all but its top N
(pass 2); every ablation of a batch runs through one batched dk.intervene."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import torch
from torch import nn

from dissect_kernels.engine import CheckpointSpec, LoaderSource, Pass, run_passes
from dissect_kernels.engine.layers import LayerSpec, as_specs
from dissect_kernels.intervene import check_unit_ids, intervene
from dissect_kernels.stats.confusion import add_confusion, confusion_metrics, empty_confusion

__all__ = ["classifier_ablation", "AblationResult"]


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
    positives: torch.Tensor | None = None     # [C] positives of each class in the evaluated data

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain tensors (safetensors-compatible); None fields are left out."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["num_samples"] = torch.tensor(self.num_samples)
        return {k: v.contiguous() for k, v in out.items() if v is not None}


class AblationConfusion:
    """Per-class true-positive / predicted / true counts (int64) of the unablated model (row 0)
    and with each unit set ablated (rows 1..S); sets = sets_of(U, units) once U is known."""

    needs_output = True

    def __init__(self, spec: LayerSpec, sets_of, *, num_classes: int, multilabel: bool, units, chunk_size,
                 device):
        self.spec, self.layers = spec, (spec.key,)
        self.sets_of, self.C, self.multilabel = sets_of, num_classes, multilabel
        self.units_arg, self.chunk_size, self.device = units, chunk_size, device
        self.state: dict[str, torch.Tensor] = {}
        self.sets = None

    def decide(self, out: torch.Tensor) -> torch.Tensor:
        """The model output -> class ids [B], or per-class decisions [B, C] (logit > 0)."""
        if not self.multilabel:
            return out.argmax(dim=1)
        if out.dim() != 2 or out.shape[1] != self.C:
            raise ValueError(f"multilabel model output must be [B, num_classes] = [B, {self.C}], "
                             f"got shape {tuple(out.shape)}")
        return out > 0

    def _start(self, U: int) -> None:
        units = torch.arange(U) if self.units_arg is None else \
            torch.as_tensor(self.units_arg, dtype=torch.int64).reshape(-1)
        check_unit_ids(units, U)
        if units.numel() == 0 or units.unique().numel() != units.numel():
            raise ValueError(f"units must be distinct unit ids, got {units.tolist()}")
        self.sets = self.sets_of(U, units).to(self.device)
        self.state = {**empty_confusion(1 + self.sets.shape[0], self.C, self.device),
                      "units": units.clone(), "U": torch.tensor([U])}

    def update(self, step) -> None:
        x, y = step.inputs, step.targets
        if not self.state:
            self._start(step.acts[self.layers[0]].shape[1])
        chunk = self.chunk_size or max(1, 4096 // max(1, x.shape[0]))
        ablated = intervene(step.model, self.spec, self.sets, x, measure=self.decide, chunk_size=chunk)
        pred = torch.cat([self.decide(step.output)[None], ablated])
        add_confusion(self.state, pred, y, self.multilabel)

    def merge(self, other: "AblationConfusion") -> None:
        if not other.state:
            return
        if not self.state:
            self.state = {k: v.clone() for k, v in other.state.items()}
            return
        for k in ("tp", "pred", "true", "n"):
            self.state[k] += other.state[k].to(self.state[k].device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.state.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.state = {k: v.to(self.device if k not in ("units", "U") else "cpu", torch.int64).clone()
                      for k, v in state.items()}
        self.sets = self.sets_of(int(self.state["U"][0]), self.state["units"]).to(self.device)

    def finalize(self) -> dict[str, torch.Tensor]:
        if not self.state:
            raise ValueError("loader yielded no batches")
        return {k: v.cpu() for k, v in self.state.items()}


def topn_sets(ranking: torch.Tensor, units: torch.Tensor, top_n: torch.Tensor, U: int) -> torch.Tensor:
    """Masks [C*2*T, U]: for class c and N in top_n, its top-N units, then all but them."""
    C, n = ranking.shape
    T = top_n.numel()
    rank_pos = torch.full((C, U), -1, dtype=torch.int64)
    rank_pos.scatter_(1, ranking.cpu(), torch.arange(n).expand(C, n).contiguous())
    N = top_n.clamp(max=n)
    in_units = rank_pos >= 0
    top = in_units[:, None] & (rank_pos[:, None] < N[None, :, None])  # [C, T, U]
    rest = in_units[:, None] & ~top
    return torch.stack([top, rest], dim=1).reshape(C * 2 * T, U).float()


def classifier_ablation(model: nn.Module, layer: "str | LayerSpec", loader, *, num_classes: int,
                        units: Sequence[int] | torch.Tensor | None = None,
                        top_n: Sequence[int] = (1, 2, 3, 4, 5, 20), device=None,
                        progress: bool = True, ranking: torch.Tensor | None = None,
                        chunk_size: int | None = None, multilabel: bool = False,
                        checkpoint_dir=None, checkpoint_name: str = "ablation",
                        checkpoint_key: dict | None = None, checkpoint_interval: float = 120.0,
                        resume: bool = True) -> AblationResult:
    """The classifier ablation experiment (davidbau/dissect): per-class precision, recall and
    balanced accuracy unablated and with each single unit of `layer` ablated (zeroed
    everywhere; batched with intervene), units ranked per class by the balanced-accuracy drop,
    then each class's top-N units ablated, and separately all but its top N. loader yields
    (images, labels) or dicts with "image"/"label"; inputs go to `device` (default: the
    model's); the model is not moved and should be in eval mode. Pass `ranking` [C, n] (e.g.
    from a train-set run) to skip the single-unit pass and evaluate that ranking here.
    multilabel=True: every output is an independent binary classifier (predicted present when
    its logit > 0) and labels are multi-hot [B, num_classes].
    checkpoint_dir: checkpoint there under `checkpoint_name` (a rerun with the same model,
    arguments and `checkpoint_key`, which should identify the loader's data, resumes; the
    loader must yield the same batches every time).

    Under torch.distributed each rank iterates its own loader, which the caller shards by rank
    (e.g. a DataLoader over dk.distributed.shard_dataset(ds)), and the integer confusion counts
    are summed across ranks before the metrics: every rank returns the single-process result."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    top_n = torch.as_tensor(list(top_n), dtype=torch.int64)
    if top_n.dim() != 1 or top_n.numel() == 0 or int(top_n.min()) < 1:
        raise ValueError(f"top_n must be a non-empty list of positive ints, got {top_n.tolist()}")
    spec = as_specs(model, layer)[0]
    device = torch.device(device) if device is not None else \
        next((p.device for p in model.parameters()), torch.device("cpu"))
    conf = dict(num_classes=num_classes, multilabel=multilabel, units=units, chunk_size=chunk_size,
                device=device)
    passes = []
    if ranking is None:
        passes.append(Pass("single", lambda r: {"confusion": AblationConfusion(
            spec, lambda U, ids: ids[:, None], **conf)}))

    def plan(results):
        rank = _ranking(results["single"]["confusion"]) if ranking is None else \
            torch.as_tensor(ranking).long().cpu()
        return {"confusion": AblationConfusion(spec, lambda U, ids: _plan(rank, ids, top_n, U, num_classes),
                                               **conf)}

    passes.append(Pass("top-n", plan))
    ckpt = None if checkpoint_dir is None else CheckpointSpec(checkpoint_dir, checkpoint_name, dict(
        layer=repr(spec), num_classes=num_classes, units=None if units is None else torch.as_tensor(units).tolist(),
        top_n=top_n.tolist(), multilabel=multilabel, chunk_size=chunk_size,
        ranking=None if ranking is None else torch.as_tensor(ranking).tolist(),
        data=checkpoint_key or {}), checkpoint_interval, resume)
    source = LoaderSource(loader, lambda item: _convert(item, num_classes, multilabel))
    out = run_passes(model, source, passes, layers=[spec], device=device, progress=progress,
                     checkpoint=ckpt, check_finite=False, desc="ablation")
    return _result(out.results, top_n, ranking)


def _ranking(single: dict) -> torch.Tensor:
    """[C, n] unit ids per class by the balanced-accuracy drop of their single-unit ablation."""
    b = confusion_metrics(single)[2]
    order = torch.sort(-(b[0:1] - b[1:]).t(), dim=1, stable=True).indices
    return single["units"][order]


def _plan(ranking, units, top_n, U, C) -> torch.Tensor:
    if tuple(ranking.shape) != (C, len(units)):
        raise ValueError(f"ranking must have shape [num_classes, len(units)] = {[C, len(units)]}, "
                         f"got {tuple(ranking.shape)}")
    return topn_sets(ranking, units, top_n, U)


def _result(results, top_n, ranking) -> AblationResult:
    evals = results["top-n"]["confusion"]
    ep, er, eb = confusion_metrics(evals)
    rank = _ranking(results["single"]["confusion"]) if ranking is None else torch.as_tensor(ranking).long()
    C, T = ep.shape[1], top_n.numel()
    cls = torch.arange(C)

    def per_class(m, offset):  # rows 1 + (c*2 + offset)*T + t, column c
        return m[1 + (cls[:, None] * 2 + offset) * T + torch.arange(T)[None], cls[:, None]]

    out = AblationResult(
        units=evals["units"], top_n=top_n, num_samples=int(evals["n"][0]),
        baseline_precision=ep[0], baseline_recall=er[0], baseline_balanced=eb[0], ranking=rank,
        topn_precision=per_class(ep, 0), topn_recall=per_class(er, 0), topn_balanced=per_class(eb, 0),
        allbut_precision=per_class(ep, 1), allbut_recall=per_class(er, 1), allbut_balanced=per_class(eb, 1),
        positives=evals["true"])
    if ranking is None:
        p, r, b = confusion_metrics(results["single"]["confusion"])
        out.single_precision, out.single_recall, out.single_balanced = p[1:], r[1:], b[1:]
        out.drop = b[0:1] - b[1:]
    return out


def _convert(batch, num_classes: int, multilabel: bool):
    """A loader item -> (inputs, {"targets": ...}), checked."""
    if isinstance(batch, dict):
        x, y = batch.get("image", batch.get("input")), batch.get("label", batch.get("target"))
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
        return x, {"targets": y.bool()}
    y = y.long().reshape(-1)
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels hold classes in [{int(y.min())}, {int(y.max())}] but num_classes={num_classes}")
    return x, {"targets": y}
