"""Oracle for IoUTally: materialise each image's upsampled masks and per-concept label planes,
count per image with loops, and score every convention with plain Python floats."""
from __future__ import annotations

import math

import torch

from dissect_kernels.conventions import get_convention
from dissect_kernels.geometry import Geometry
from dissect_kernels.reference.tally import upsample


def reference_counts(batches, thresholds, *, num_concepts, category_of, num_categories,
                     convention, geometry) -> dict:
    """batches: iterable of (acts [B,U,h,w], labels [B,L,H,W] or [B,H,W], image_labels [B,M] or
    None). Returns python-int counts I[u][c], G[c], A[u][k] (the convention's union term),
    Atot[u], tot[k], N."""
    conv = get_convention(convention)
    cat = [int(v) for v in category_of]
    C, K = num_concepts, num_categories
    counts = None
    for acts, labels, image_labels in batches:
        if labels.dim() == 3:
            labels = labels[:, None]
        B, U = acts.shape[:2]
        H, W = labels.shape[2:]
        if counts is None:
            counts = dict(I=[[0] * C for _ in range(U)], G=[0] * C, A=[[0] * K for _ in range(U)],
                          Atot=[0] * U, tot=[0] * K, N=0)
        ytab, xtab = Geometry.named(geometry).tables(tuple(acts.shape[2:]), (H, W))
        for b in range(B):
            mask = _compare(upsample(acts[b:b + 1], ytab, xtab)[0], thresholds, conv)  # [U,H,W]
            fired = _compare(acts[b].float().amax(dim=(1, 2)), thresholds, conv)
            planes = [labels[b, i].long() for i in range(labels.shape[1])]
            if image_labels is not None:
                planes += [torch.full((H, W), int(m)) for m in image_labels[b] if int(m) != 0]
            present = [False] * K
            touched = [[False] * K for _ in range(U)]
            for c in range(1, C):
                layer_count = sum((p == c).long() for p in planes)        # [H, W]
                anywhere = layer_count > 0
                if not bool(anywhere.any()):
                    continue
                present[cat[c]] = True
                isect_plane = layer_count if conv.per_layer else anywhere.long()
                truth_plane = layer_count if conv.truth_layers else anywhere.long()
                counts["G"][c] += int(truth_plane.sum())
                for u in range(U):
                    counts["I"][u][c] += int((mask[u].long() * isect_plane).sum())
                    if bool((mask[u] & anywhere).any()):
                        touched[u][cat[c]] = True
            if conv.stale_category_flag:
                _stale(touched, fired, labels[b], image_labels, b, cat, counts)
            for u in range(U):
                area = int(mask[u].sum())
                counts["Atot"][u] += area
                for k in range(K):
                    use = {"category": present[k], "touched": touched[u][k], "all": True}[conv.union]
                    counts["A"][u][k] += area if use else 0
            for k in range(K):
                counts["tot"][k] += H * W if present[k] else 0
            counts["N"] += H * W
    return counts


def _compare(values: torch.Tensor, thresholds: torch.Tensor, conv) -> torch.Tensor:
    """values [U, ...] against thresholds [U] in float64 with the convention's comparison."""
    t = thresholds.double().reshape(-1, *([1] * (values.dim() - 1)))
    return values.double() > t if conv.threshold_compare == ">" else values.double() >= t


def _stale(touched, fired, labels_b, image_labels, b: int, cat: list[int], counts: dict) -> None:
    """NetDissect-Lite's loop over this image's units with its leftover category vector
    (counts["stale"]): images with pixel labels make a fresh vector per firing unit (the pixel
    categories plus the image-level ones); images without reuse and extend the leftover."""
    K = len(touched[0])
    scalars = [] if image_labels is None else [int(m) for m in image_labels[b] if int(m) != 0]
    has_pixels = bool((labels_b > 0).any())
    state = counts.setdefault("stale", [False] * K)
    for u in range(len(touched)):
        if not bool(fired[u]):
            continue
        if has_pixels:
            state = [touched[u][k] or any(cat[m] == k for m in scalars) for k in range(K)]
        else:
            state = [state[k] or any(cat[m] == k for m in scalars) for k in range(K)]
            touched[u] = list(state)
    counts["stale"] = state


def reference_scores(counts: dict, *, category_of, num_categories, convention) -> dict:
    """IoU [U,C], IQR [U,C] (float64 tensors), best label / IoU [U] and detector flags [U]."""
    conv = get_convention(convention)
    cat = [int(v) for v in category_of]
    I, G, A, Atot, tot, N = (counts[k] for k in ("I", "G", "A", "Atot", "tot", "N"))
    U, C = len(I), len(G)
    iou = [[0.0] * C for _ in range(U)]
    iqr = [[0.0] * C for _ in range(U)]
    for u in range(U):
        for c in range(C):
            zero_by_zero = math.nan if conv.dead_units == "nan" else 0.0
            if conv.union == "all":
                pa, pc, pac = Atot[u] / N, G[c] / N, I[u][c] / N
                d = pa + pc - pac
                iou[u][c] = pa if c == 0 else (pac / d if d != 0 else zero_by_zero)
                cc, t = Atot[u], N
            else:
                cc, t = A[u][cat[c]], tot[cat[c]]
                d = cc + G[c] - I[u][c]
                if conv.epsilon:
                    iou[u][c] = I[u][c] / (d + conv.epsilon)
                else:
                    iou[u][c] = I[u][c] / d if d != 0 else zero_by_zero
            if c > 0:
                iqr[u][c] = _iqr(I[u][c], cc, G[c], t)
    labels, bests = [], []
    end = max([c + 1 for c in range(C) if G[c] > 0], default=C) if conv.dead_units == "nan" else C
    for u in range(U):
        label, best = _best(iou[u][:end], cat, num_categories, conv)
        if Atot[u] == N and N > 0 and not conv.background_competes:   # on every pixel: no region
            label, best = -1, best if conv.dead_units == "nan" and math.isnan(best) else 0.0
        labels.append(label)
        bests.append(best)
    detect = []
    for u in range(U):
        v = bests[u]
        hit = v > conv.detector_iou if conv.detector_strict else v >= conv.detector_iou
        if conv.detector_iqr is not None:
            hit = hit and iqr[u][max(labels[u], 0)] > conv.detector_iqr
        detect.append(bool(hit) and labels[u] >= 0)
    f64 = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    return dict(iou=f64(iou), iqr=f64(iqr), label=torch.tensor(labels, dtype=torch.int64),
                best=f64(bests), detectors=torch.tensor(detect, dtype=torch.bool))


def _iqr(i: int, cc: int, g: int, tot: int) -> float:
    """GD's information-quality ratio of the 2x2 table [[I, cc-I], [G-I, tot-union]] / tot."""
    if tot == 0:
        return 0.0
    union = cc + g - i
    p = [[i / tot, (cc - i) / tot], [(g - i) / tot, (tot - union) / tot]]
    mi = je = 0.0
    for j in range(2):
        for k in range(2):
            joint = p[j][k]
            ind = (p[j][0] + p[j][1]) * (p[0][k] + p[1][k])
            mi += _x_log(joint, _div(joint, ind))
            je += _x_log(joint, joint)
    mi, je = max(mi, 0.0), max(-je, 0.0)
    if je == 0.0:
        return 0.0 if mi == 0.0 else math.inf
    return mi / je


def _div(a: float, b: float) -> float:
    if b == 0.0:
        return math.nan if a == 0.0 else math.copysign(math.inf, a)
    return a / b


def _x_log(x: float, r: float) -> float:
    """x * log(r) with IEEE semantics, where a NaN result counts 0 (GD zeroes NaN terms)."""
    if math.isnan(r) or r < 0:
        return 0.0
    if r == 0.0:
        return 0.0 if x == 0.0 else -math.copysign(math.inf, x)
    if math.isinf(r):
        return 0.0 if x == 0.0 else math.copysign(math.inf, x)
    return x * math.log(r)


def _best(row: list[float], cat: list[int], K: int, conv) -> tuple[int, float]:
    """The convention's labelling rule: the best concept inside each group (lowest id among
    equals), then the best group (first or last among equals: Convention.category_ties). A NaN
    in the row (dead_units="nan") makes the best NaN; a best that is not > 0 means no label."""
    C = len(row)
    if conv.background_competes:
        candidates = [list(range(C))]
    elif conv.label_rule == "per-category":
        candidates = [[c for c in range(1, C) if cat[c] == k] for k in range(K)]
    else:
        candidates = [list(range(1, C))]
    if any(math.isnan(row[c]) for group in candidates for c in group):
        return -1, math.nan
    last_wins = conv.label_rule == "per-category" and conv.category_ties == "last"
    label, best = -1, None
    for group in candidates:           # best inside each group, then the best group
        g_label, g_best = None, None
        for c in group:
            if g_best is None or row[c] > g_best:
                g_label, g_best = c, row[c]
        if g_best is not None and (best is None or g_best > best or (last_wins and g_best == best)):
            label, best = g_label, g_best
    if best is None or not best > 0:
        return -1, 0.0
    return label, best
