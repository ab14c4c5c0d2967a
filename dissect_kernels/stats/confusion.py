"""Per-class confusion counts of S classifiers at once (e.g. a model unablated and with S-1
unit sets ablated): true positives, predictions and positives per class, int64, mergeable;
precision, recall and balanced accuracy ((recall + TNR) / 2) from them."""
from __future__ import annotations

import torch


def add_confusion(counts: dict[str, torch.Tensor], pred: torch.Tensor, y: torch.Tensor,
                  multilabel: bool) -> None:
    """Add a batch to counts {"tp", "pred" [S, C], "true" [C], "n" [1]} in place: pred [S, B]
    class ids and y [B] (single-label), or pred [S, B, C] and y [B, C] bool (multi-label:
    every class an independent binary decision)."""
    if multilabel:
        counts["pred"] += pred.sum(1)
        counts["tp"] += (pred & y[None]).sum(1)
        counts["true"] += y.sum(0)
    else:
        S, C = counts["tp"].shape
        flat = (pred + C * torch.arange(S, device=pred.device)[:, None]).reshape(-1)
        counts["pred"] += torch.bincount(flat, minlength=S * C).view(S, C)
        hit = (pred == y[None]).reshape(-1).long()
        counts["tp"] += torch.zeros(S * C, dtype=torch.int64, device=pred.device).scatter_add_(
            0, flat, hit).view(S, C)
        counts["true"] += torch.bincount(y, minlength=C)
    counts["n"] += y.shape[0]


def empty_confusion(rows: int, num_classes: int, device=None) -> dict[str, torch.Tensor]:
    z = lambda *s: torch.zeros(*s, dtype=torch.int64, device=device)  # noqa: E731
    return {"tp": z(rows, num_classes), "pred": z(rows, num_classes), "true": z(num_classes), "n": z(1)}


def confusion_metrics(c: dict[str, torch.Tensor]):
    """(precision, recall, balanced accuracy), each float64 [S, C]; a 0/0 ratio is 0."""
    tp, pred, true = c["tp"].double(), c["pred"].double(), c["true"].double()[None]
    fp, fn = pred - tp, true - tp
    tn = int(c["n"][0]) - tp - fp - fn
    ratio = lambda a, b: torch.where(b > 0, a / b.clamp(min=1), torch.zeros_like(a))  # noqa: E731
    recall = ratio(tp, tp + fn)
    return ratio(tp, tp + fp), recall, (recall + ratio(tn, tn + fp)) / 2
