"""Compositional formulas over concepts (Mu & Andreas 2020) for the compose analysis: their
encoding, evaluation on label signatures, IoU scoring of every one-step extension of a beam from
counts, the beam update, and a straightforward search that materialises every formula mask (the
oracle of the tests and the baseline of benchmarks/bench_compose.py).

A formula of length <= 3 is five ints (c1, op1, c2, op2, c3), read left to right:
((c1 op1 c2) op2 c3); op 0 = none, 1 = AND, 2 = OR, 3 = AND NOT; concept 0 pads."""
from __future__ import annotations

import torch

AND, OR, AND_NOT = 1, 2, 3
OPS = {AND: "AND", OR: "OR", AND_NOT: "AND NOT"}
MAX_LENGTH = 3
EMPTY = (0, 0, 0, 0, 0)


def length(f) -> int:
    """Number of concepts in formula f (0 for the padding formula)."""
    return 0 if f[0] == 0 else 1 + (f[1] > 0) + (f[3] > 0)


def name(f, names) -> str:
    """'(red AND square) OR blue'; concept names from `names` (index = concept id)."""
    f = [int(x) for x in f]
    text = names[f[0]]
    for op, c in ((f[1], f[2]), (f[3], f[4])):
        if op:
            text = f"{_wrap(text)} {OPS[op]} {names[c]}"
    return text


def _wrap(text: str) -> str:
    return f"({text})" if any(f" {o} " in f" {text} " for o in ("AND", "OR")) else text


def canonical(f) -> tuple:
    """A key equal for formulas that are the same by commutativity (a AND b == b AND a; a OR b
    OR c in any order), so a beam never holds one formula twice."""
    c1, o1, c2, o2, c3 = (int(x) for x in f)
    if o1 in (AND, OR):
        c1, c2 = min(c1, c2), max(c1, c2)
        if o2 == o1:
            c1, c2, c3 = sorted((c1, c2, c3))
    return (c1, o1, c2, o2, c3)


def evaluate(formulas: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
    """Formulas [F, 5] on label signatures: member [T, C] bool (signature t holds concept c) ->
    bool [F, T]. Any mask whose pixels are described by signatures is indexed by them."""
    zt = member.t()
    f = zt[formulas[:, 0]]
    for op, c in ((formulas[:, 1:2], formulas[:, 2]), (formulas[:, 3:4], formulas[:, 4])):
        x = zt[c]
        f = torch.where(op == AND, f & x, torch.where(op == OR, f | x, torch.where(op == AND_NOT, f & ~x, f)))
    return f


def iou(inter, area_unit, area_formula):
    """I / (A + F - I), 0 where the union is empty (float64)."""
    union = area_unit + area_formula - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-300), torch.zeros_like(union))


def extension_scores(beams: torch.Tensor, counts: dict, singles: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU of every one-step extension of every beam formula: [U, b, 3, C] (op AND, OR, AND NOT
    with concept c; -inf where invalid), and of the beam formulas themselves [U, b].
    counts (one round): inter [U, b, C] = |M_u & f & c|, unit_formula [U, b] = |M_u & f|,
    formula_concept [U, b, C] = |f & c|, formula [U, b] = |f|. singles: unit_concept [U, C] =
    |M_u & c|, unit [U] = |M_u|, concept [C] = |c|."""
    d = {k: v.double() for k, v in counts.items()}
    s = {k: v.double() for k, v in singles.items()}
    I, imf, af, fa = d["inter"], d["unit_formula"][..., None], d["formula_concept"], d["formula"][..., None]
    mc, ca, ma = s["unit_concept"][:, None, :], s["concept"][None, None, :], s["unit"][:, None, None]
    scores = torch.stack([iou(I, ma, af), iou(imf + mc - I, ma, fa + ca - af), iou(imf - I, ma, fa - af)], 2)
    U, b, C = I.shape
    lengths = torch.tensor([[length(f) for f in row] for row in beams.tolist()]).reshape(U, b)
    used = torch.zeros(U, b, C, dtype=torch.bool)
    for j in (0, 2, 4):
        used.scatter_(2, beams[..., j:j + 1], True)
    bad = used | ((lengths == 0) | (lengths >= MAX_LENGTH))[..., None]
    bad[..., 0] = True
    scores = scores.masked_fill(bad[:, :, None, :], float("-inf"))
    own = iou(imf[..., 0], ma[..., 0], fa[..., 0]).masked_fill(lengths == 0, float("-inf"))
    return scores, own


def extend(beams: torch.Tensor, scores: torch.Tensor, own: torch.Tensor, width: int):
    """The next beam [U, width, 5] and its IoUs [U, width]: per unit the best `width` distinct
    formulas (in canonical form) among the current beam and all its extensions (ties: the
    earlier candidate)."""
    U, b, _, C = scores.shape
    flat = torch.cat([own, scores.reshape(U, -1)], 1)
    k = min(flat.shape[1], 6 * width + b)
    top_v, top_i = flat.topk(k, dim=1)
    out = torch.zeros(U, width, 5, dtype=torch.int64)
    vals = torch.full((U, width), float("-inf"), dtype=torch.float64)
    for u in range(U):
        order = sorted(zip((-top_v[u]).tolist(), top_i[u].tolist()))
        seen, n = set(), 0
        for negv, i in order:
            if n == width or negv == float("inf"):
                break
            f = _candidate(beams[u], i, b, C)
            key = canonical(f)
            if key not in seen:
                seen.add(key)
                out[u, n], vals[u, n] = torch.tensor(key), -negv
                n += 1
    return out, vals


def _candidate(beam: torch.Tensor, i: int, b: int, C: int) -> list[int]:
    """Flat candidate index i (own beam entries first, then [b, 3, C] extensions) -> formula."""
    if i < b:
        return beam[i].tolist()
    k, rest = divmod(i - b, 3 * C)
    op, c = divmod(rest, C)
    f = beam[k].tolist()
    slot = 1 if f[1] == 0 else 3
    f[slot], f[slot + 1] = op + 1, c
    return f


def first_beam(unit_concept_iou: torch.Tensor, width: int):
    """The beam of single concepts: per unit the `width` best concepts (id > 0; ties: the lower
    id) as formulas [U, width, 5], and their IoUs [U, width]."""
    s = unit_concept_iou.double().clone()
    s[:, 0] = float("-inf")
    U, C = s.shape
    k = min(width, C - 1)
    order = torch.sort(-s, dim=1, stable=True).indices[:, :k]
    vals = torch.full((U, width), float("-inf"), dtype=torch.float64)
    vals[:, :k] = s.gather(1, order)
    out = torch.zeros(U, width, 5, dtype=torch.int64)
    out[:, :k, 0] = torch.where(vals[:, :k] > float("-inf"), order, torch.zeros_like(order))
    return out, vals


def naive_search(unit_masks: torch.Tensor, concept_masks: torch.Tensor, width: int = 5,
                 max_length: int = MAX_LENGTH):
    """The same beam search, straightforwardly: every candidate formula's mask over the whole
    dataset is materialised and intersected with the unit's mask. unit_masks [U, P] bool,
    concept_masks [C, P] bool (row 0 = unlabelled, never used). Returns beams [U, width, 5] and
    their IoUs (the best formula first)."""
    M, L = unit_masks, concept_masks
    Lf = L.double()
    ma = M.sum(1).double()
    singles = {"unit_concept": M.double() @ Lf.t(), "unit": ma, "concept": Lf.sum(1)}
    beams, vals = first_beam(iou(singles["unit_concept"], ma[:, None], singles["concept"][None]), width)
    for _ in range(max_length - 1):
        scores = torch.full((M.shape[0], width, 3, L.shape[0]), float("-inf"), dtype=torch.float64)
        own = torch.full((M.shape[0], width), float("-inf"), dtype=torch.float64)
        for u in range(M.shape[0]):
            s, o = _naive_unit(M[u], L, beams[u])
            scores[u], own[u] = s, o
        counts_ok = extension_scores(beams, _zero_counts(beams, L.shape[0]), singles)  # the validity mask
        scores = scores.masked_fill(counts_ok[0] == float("-inf"), float("-inf"))
        own = own.masked_fill(counts_ok[1] == float("-inf"), float("-inf"))
        beams, vals = extend(beams, scores, own, width)
    return beams, vals


def _naive_unit(m: torch.Tensor, L: torch.Tensor, beam: torch.Tensor):
    """One unit: every extension's mask [b, 3, C, P] built and scored by IoU with m."""
    ma = m.sum().double()
    f = _masks(beam, L)                                                                   # [b, P]
    cand = torch.stack([f[:, None] & L[None], f[:, None] | L[None], f[:, None] & ~L[None]], 1)   # [b, 3, C, P]
    inter = (cand & m).sum(-1).double()
    area = cand.sum(-1).double()
    own_i, own_a = (f & m).sum(-1).double(), f.sum(-1).double()
    return iou(inter, ma, area), iou(own_i, ma, own_a)


def _masks(formulas: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """Formulas [F, 5] as pixel masks [F, P] from concept masks L [C, P]."""
    f = L[formulas[:, 0]]
    for op, c in ((formulas[:, 1:2], formulas[:, 2]), (formulas[:, 3:4], formulas[:, 4])):
        x = L[c]
        f = torch.where(op == AND, f & x, torch.where(op == OR, f | x, torch.where(op == AND_NOT, f & ~x, f)))
    return f


def _zero_counts(beams: torch.Tensor, C: int) -> dict:
    U, b = beams.shape[:2]
    z = torch.zeros(U, b, C)
    return {"inter": z, "unit_formula": z[..., 0], "formula_concept": z, "formula": z[..., 0]}
