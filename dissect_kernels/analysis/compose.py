"""Compositional explanations (Mu & Andreas 2020): per unit, a beam search over formulas of up
to three concepts joined by AND, OR and AND NOT, each scored by the IoU of its mask with the
unit's thresholded, upsampled mask over the whole dataset; reported next to the unit's best
single concept.

Formula masks are never built, not even per batch: a formula's value at a pixel depends only
on the set of concepts labelled there (its label signature), and a batch has few distinct
signatures (T). Per batch the unit masks (dk.upsample + the strict threshold, in unit chunks)
are counted per signature (m [U, T]); every count the search needs is then a small product:
|M_u & f & c| = (m_u * f)[T] @ member[T, C] for every beam formula f of every unit at once.
Rounds run through the pass engine: quantiles, then one pass per formula length, each pass's
accumulators built from the earlier passes' counts (the beam), later passes served by the
engine's activation cache."""
from __future__ import annotations

import torch

from dissect_kernels.analysis import formulas as fm
from dissect_kernels.analysis.common import data_key, dissection_plan, header, run_analysis, unit_record
from dissect_kernels.engine import DatasetSource, Pass
from dissect_kernels.ops.tally import strict_thresholds
from dissect_kernels.ops.upsample import upsample

NAME = "compose"
HELP = ("compositional labels (Mu & Andreas 2020): per unit the best formula of up to 3 concepts joined by "
        "AND / OR / AND NOT (beam search, IoU with the unit's mask), next to its best single concept")
UNIT_CHUNK = 64


def signatures(labels: torch.Tensor, image_labels, num_concepts: int):
    """A batch's label signatures: sig [P] (pixel -> signature id, pixels in (b, y, x) order),
    member bool [T, C] (signature t holds concept c; image-level labels cover their image; 0 =
    unlabelled is never a member), count [T] (pixels per signature)."""
    B, L, H, W = labels.shape
    lab = labels.permute(0, 2, 3, 1).reshape(-1, L).long()
    if image_labels is not None and image_labels.numel():
        il = image_labels.long().reshape(B, -1)
        lab = torch.cat([lab, il[:, None, None, :].expand(B, H, W, il.shape[1]).reshape(-1, il.shape[1])], 1)
    if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= num_concepts):
        raise ValueError(f"labels hold concept ids in [{int(lab.min())}, {int(lab.max())}] but the dataset has "
                         f"{num_concepts} concepts")
    if num_concepts ** lab.shape[1] < 2 ** 62:       # one int64 key per pixel: a fast 1-D unique
        key = (lab * (num_concepts ** torch.arange(lab.shape[1], device=lab.device))).sum(1)
        _, first, sig = _unique_first(key)
        rows = lab[first]
    else:
        rows, sig = torch.unique(lab, dim=0, return_inverse=True)
    member = torch.zeros(rows.shape[0], num_concepts, dtype=torch.bool, device=lab.device)
    member.scatter_(1, rows, True)
    member[:, 0] = False
    return sig, member, torch.bincount(sig, minlength=rows.shape[0])


def _unique_first(key: torch.Tensor):
    """unique values, the index of one occurrence of each, and the inverse map."""
    values, inverse = torch.unique(key, return_inverse=True)
    first = torch.empty(values.shape[0], dtype=torch.int64, device=key.device)
    first.scatter_(0, inverse, torch.arange(key.shape[0], device=key.device))
    return values, first, inverse


def unit_signature_counts(acts: torch.Tensor, thresholds: torch.Tensor, geometry, size, sig: torch.Tensor,
                          T: int) -> torch.Tensor:
    """m [U, T] float32: per unit, its active pixels (upsampled map > threshold) per signature;
    upsampled in chunks of units, so a batch never holds every unit's full-size map."""
    B, U = acts.shape[:2]
    out = torch.zeros(T, U, dtype=torch.float32, device=acts.device)
    for u0 in range(0, U, UNIT_CHUNK):
        u1 = min(U, u0 + UNIT_CHUNK)
        up = upsample(acts[:, u0:u1], size, geometry=geometry)
        mask = (up > thresholds[u0:u1].to(up.device)[None, :, None, None]).permute(0, 2, 3, 1)
        out[:, u0:u1].index_add_(0, sig, mask.reshape(-1, u1 - u0).float())
    return out.t()


class FormulaCounts:
    """One round of the search for one layer, accumulated over the data: with beams None the
    single-concept counts (|M_u & c|, |M_u|, |c|); with beams [U, b, 5] the counts that score
    every one-step extension of every beam formula (formulas.extension_scores). int64, exact."""

    def __init__(self, layer: str, thresholds: torch.Tensor, geometry_for, num_concepts: int, beams=None):
        self.layers, self.thresholds, self.geometry_for = (layer,), thresholds, geometry_for
        self.C, self.beams = int(num_concepts), beams
        if beams is not None:
            self.unique, self.inverse = torch.unique(beams.reshape(-1, 5), dim=0, return_inverse=True)
            self.inverse = self.inverse.reshape(beams.shape[:2])
        self.state: dict[str, torch.Tensor] = {}

    def update(self, step) -> None:
        labels, a = step.labels, step.acts[self.layers[0]]
        sig, member, count = step.shared("compose/signatures",
                                         lambda: signatures(labels, step.data.get("image_labels"), self.C))
        size = tuple(labels.shape[-2:])
        if sig.numel() >= 1 << 24:
            raise ValueError(f"a batch of {sig.numel()} labelled pixels is over 2^24: lower the batch size")
        geometry = self.geometry_for(tuple(a.shape[2:]), size)
        m = unit_signature_counts(a, self.thresholds, geometry, size, sig, member.shape[0])
        # float64 products: exact counts even where TF32 matmuls are switched on
        self._add(self._counts(m.double(), member.double(), count.double()))

    def _counts(self, m, Z, n) -> dict:
        if self.beams is None:
            return {"unit_concept": m @ Z, "unit": m.sum(1), "concept": n @ Z}
        f = fm.evaluate(self.unique.to(Z.device), Z > 0).double()                 # [F, T]
        out = {"formula_concept": (f * n) @ Z, "formula": f @ n}
        inv = self.inverse.to(Z.device)
        parts = [(m[u0:u0 + UNIT_CHUNK, None, :] * f[inv[u0:u0 + UNIT_CHUNK]]) for u0 in range(0, m.shape[0], UNIT_CHUNK)]
        out["inter"] = torch.cat([p @ Z for p in parts])                           # [U, b, C]
        out["unit_formula"] = torch.cat([p.sum(-1) for p in parts])                # [U, b]
        return out

    def _add(self, counts: dict) -> None:
        counts = {k: v.round().long().cpu() for k, v in counts.items()}
        self.state = counts if not self.state else {k: self.state[k] + counts[k] for k in counts}

    def merge(self, other: "FormulaCounts") -> None:
        if other.state:
            self._add(other.state)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.state = {k: v.long().cpu() for k, v in state.items()}

    def finalize(self) -> dict[str, torch.Tensor]:
        if not self.state:
            raise ValueError(f"layer {self.layers[0]!r}: no samples reached the compose counts")
        out = dict(self.state)
        if self.beams is not None:          # per unit and beam entry
            out["formula_concept"], out["formula"] = out["formula_concept"][self.inverse], out["formula"][self.inverse]
        return out


def beam_search(results: dict, layer: str, width: int, rounds: int):
    """The beam after `rounds` rounds (1 = single concepts) from the passes' counts; returns
    (beams [U, width, 5], IoUs [U, width], single-concept IoU [U, C])."""
    s = results["length1"][layer]
    singles = {"unit_concept": s["unit_concept"], "unit": s["unit"], "concept": s["concept"]}
    single_iou = fm.iou(s["unit_concept"].double(), s["unit"].double()[:, None], s["concept"].double()[None])
    beams, vals = fm.first_beam(single_iou, width)
    for r in range(2, rounds + 1):
        scores, own = fm.extension_scores(beams, results[f"length{r}"][layer], singles)
        beams, vals = fm.extend(beams, scores, own, width)
    return beams, vals, single_iou


def compose(model, layers, dataset, *, beam: int = 5, max_length: int = fm.MAX_LENGTH, thresholds=None,
            convention="exact", quantile=None, batch_size: int = 32, device=None, out_dir=None,
            progress: bool = True, backend: str = "auto", num_workers=None, checkpoint_interval: float = 120.0,
            resume: bool = True, strict: bool = False) -> dict:
    """Label every unit of `layers` by its best formula of up to `max_length` concepts (beam
    search of width `beam`; thresholds from the convention's quantile pass unless given as
    {layer: [U]}). Returns the compose.json record; with out_dir, writes it and a report page."""
    if not 1 <= max_length <= fm.MAX_LENGTH or beam < 1:
        raise ValueError(f"need 1 <= max_length <= {fm.MAX_LENGTH} and beam >= 1; got {max_length}, {beam}")
    plan = dissection_plan(model, layers, dataset, convention=convention, quantile=quantile, backend=backend,
                           device=device, batch_size=batch_size, thresholds=thresholds)
    C = int(dataset.num_concepts)

    def thr(name, results):
        return strict_thresholds(plan.thresholds(name, results), plan.conv.threshold_compare)

    def round_pass(r: int) -> Pass:
        def build(results):
            return {v.name: FormulaCounts(v.name, thr(v.name, results), plan.geometry_for(v.module), C,
                                          None if r == 1 else beam_search(results, v.name, beam, r - 1)[0])
                    for v in plan.views}
        return Pass(f"length{r}", build)

    passes = ([] if plan.given is not None else [Pass("quantiles", plan.quantile_pass)]) + \
        [round_pass(r) for r in range(1, max_length + 1)]
    source = DatasetSource(dataset, batch_size=batch_size, num_workers=num_workers, strict=strict,
                           drop_categories=plan.conv.excluded_categories)
    key = dict(plan.key(), beam=beam, max_length=max_length, dataset=data_key(dataset), batch_size=batch_size)
    output = run_analysis(model.to(plan.device).eval(), source, passes, views=plan.views, name=NAME,
                          out_dir=out_dir, key=key, device=plan.device, progress=progress,
                          interval=checkpoint_interval, resume=resume)
    rec = header(NAME, model, dataset, dict(beam=beam, max_length=max_length, convention=plan.conv.name,
                                            quantile=plan.q, thresholds=plan.threshold_source))
    names = list(dataset.concept_names)
    rec["layers"] = {v.name: _layer(v.name, *beam_search(output.results, v.name, beam, max_length), names)
                     for v in plan.views}
    if out_dir is not None:
        from dissect_kernels.analysis.common import write_analysis
        from dissect_kernels.report.compose_page import compose_page
        write_analysis(out_dir, NAME, rec, "Compositional labels", *compose_page(rec))
    return rec


def _layer(layer: str, beams, vals, single_iou, names) -> dict:
    """One layer's units: best single concept, best formula, the final beam; and a summary."""
    best_c = single_iou[:, 1:].argmax(1) + 1 if single_iou.shape[1] > 1 else torch.zeros(single_iou.shape[0], dtype=torch.int64)
    units = []
    for u in range(beams.shape[0]):
        entries = [{"formula": fm.name(f, names), "iou": float(v), "length": fm.length(f)}
                   for f, v in zip(beams[u].tolist(), vals[u].tolist()) if v > float("-inf")]
        top = entries[0] if entries else {"formula": None, "iou": 0.0, "length": 0}
        units.append(unit_record(layer, u, label=names[int(best_c[u])], iou=float(single_iou[u, best_c[u]]),
                                 formula=top["formula"], formula_iou=top["iou"], length=top["length"],
                                 beam=entries))
    gains = [x["formula_iou"] - x["iou"] for x in units]
    return {"units_total": len(units), "units": units,
            "summary": {"compositional": sum(x["length"] > 1 for x in units),
                        "mean_iou_single": sum(x["iou"] for x in units) / max(1, len(units)),
                        "mean_iou_formula": sum(x["formula_iou"] for x in units) / max(1, len(units)),
                        "mean_gain": sum(gains) / max(1, len(gains))}}


def add_arguments(p) -> None:
    """The shared options plus --beam and --max-length."""
    from dissect_kernels.cli.analyze import add_model_args
    add_model_args(p)
    p.add_argument("--beam", type=int, default=5, help="beam width (default 5)")
    p.add_argument("--max-length", type=int, default=fm.MAX_LENGTH,
                   help=f"most concepts in a formula, 1..{fm.MAX_LENGTH} (default {fm.MAX_LENGTH})")


def run_cli(args) -> int:
    """`dissect-kernels analyze compose`: print each layer's most improved units, write compose.json + page."""
    from dissect_kernels.cli.analyze import common_kwargs, prepare
    from dissect_kernels.io.lock import locked
    if args.beam < 1 or not 1 <= args.max_length <= fm.MAX_LENGTH:
        raise SystemExit(f"--beam must be >= 1 and --max-length in 1..{fm.MAX_LENGTH}; got {args.beam}, "
                         f"{args.max_length}")
    model, layers, dataset, out = prepare(args)
    with locked(out):
        rec = compose(model, layers, dataset, beam=args.beam, max_length=args.max_length,
                      num_workers=args.num_workers, strict=args.strict, out_dir=out, **common_kwargs(args))
    for layer, lr in rec["layers"].items():
        s = lr["summary"]
        print(f"\n{layer}: {s['compositional']}/{lr['units_total']} units best labelled by a formula; mean IoU "
              f"{s['mean_iou_single']:.3f} (single concept) -> {s['mean_iou_formula']:.3f} (formula)")
        for x in sorted(lr["units"], key=lambda x: -x["formula_iou"])[:5]:
            print(f"  unit {x['unit']:>4}: {x['formula']} ({x['formula_iou']:.3f}) vs {x['label']} ({x['iou']:.3f})")
    print(f"\nresults: {out / 'compose.json'}\nreport:  {(out / 'compose.html').resolve()}")
    return 0
