"""Robustness (Network Dissection, section 3.3): dissect the same layers on perturbed images
(noise, rotation, shuffled patches; labels transformed consistently) and report, per
perturbation, detectors, unique concepts, per-unit label retention and (for classifiers) accuracy.

One run of the pass engine: PerturbedSource stacks every perturbation of a batch, a Derived view
per (perturbation, layer) hands the dissection's own accumulators (quantiles, then the fused
tally) that perturbation's rows, and thresholds are recomputed per perturbation."""
from __future__ import annotations

import torch

from dissect_kernels.analysis.common import (concept_ids, data_key, derived_step, dissection_plan, header,
                                             presence, run_analysis, unit_record, with_views, wrap_pass)
from dissect_kernels.analysis.perturb import DEFAULT_PERTURBATIONS, PerturbedSource, parse_perturbations
from dissect_kernels.dissect import build_result
from dissect_kernels.engine import DatasetSource, LayerView, Pass
from dissect_kernels.stats.confusion import confusion_metrics

NAME = "robustness"
HELP = ("dissect the layers again on perturbed images (noise k*U[0,1], rotations, shuffled patches; labels "
        "transformed alike): detectors, unique concepts, per-unit label retention and accuracy per perturbation")


class PerturbationAccuracy:
    """Per perturbation, per target class: confusion counts of a multi-label classifier (output k
    = 'concept ids[k] is present', logit > 0) against the perturbed labels."""

    needs_output = True

    def __init__(self, ids: list[int], P: int):
        self.ids, self.P, self.counts = torch.tensor(ids), P, {}

    def update(self, step) -> None:
        out, P = step.output, self.P
        if out.dim() != 2 or out.shape[1] != len(self.ids):
            raise ValueError(f"the model outputs shape {tuple(out.shape[1:])} per image but {len(self.ids)} "
                             "targets were given: it must output one logit per target")
        y = presence(step.labels, step.data.get("image_labels"), self.ids).view(P, -1, len(self.ids))
        pred = (out > 0).view(P, -1, len(self.ids))
        add = {"tp": (pred & y).sum(1), "pred": pred.sum(1), "true": y.sum(1),
               "n": torch.full((P,), y.shape[1], dtype=torch.int64, device=y.device)}
        self.merge_counts({k: v.long().cpu() for k, v in add.items()})

    def merge_counts(self, add: dict) -> None:
        self.counts = add if not self.counts else {k: self.counts[k] + add[k] for k in add}

    def merge(self, other: "PerturbationAccuracy") -> None:
        if other.counts:
            self.merge_counts(other.counts)

    def state_dict(self) -> dict:
        return dict(self.counts)

    def load_state_dict(self, state: dict) -> None:
        self.counts = {k: v.cpu().long() for k, v in state.items()}

    def finalize(self) -> dict:
        return dict(self.counts)


def accuracy_of(counts: dict, p: int) -> dict:
    """Mean balanced accuracy over the classes with positives and negatives, and the fraction of
    correct (image, class) decisions, of perturbation p."""
    c = {"tp": counts["tp"][p:p + 1], "pred": counts["pred"][p:p + 1], "true": counts["true"][p],
         "n": counts["n"][p:p + 1]}
    balanced = confusion_metrics(c)[2][0]
    n, true, tp, pred = int(c["n"][0]), c["true"], c["tp"][0], c["pred"][0]
    both = (true > 0) & (true < n)
    correct = tp + (n - true - (pred - tp))
    return {"balanced_accuracy": float(balanced[both].mean()) if bool(both.any()) else float("nan"),
            "accuracy": float(correct.sum()) / max(1, n * true.numel())}


def robustness(model, layers, dataset, *, perturbations=DEFAULT_PERTURBATIONS, targets=None, seed: int = 0,
               convention="exact", quantile=None, batch_size: int = 16, device=None, out_dir=None,
               progress: bool = True, backend: str = "auto", num_workers=None, checkpoint_interval: float = 120.0,
               resume: bool = True, strict: bool = False, report: bool = True) -> dict:
    """Dissect `layers` on clean and perturbed images (perturbations: names such as noise-100,
    rotate-45, shuffle-8; see analysis.perturb). targets: the concept names of a multi-label
    classifier's outputs (accuracy per perturbation). Returns the robustness.json record; with
    out_dir, writes it and a page on the run's report site."""
    perts = parse_perturbations(perturbations)
    plan = dissection_plan(model, layers, dataset, convention=convention, quantile=quantile, backend=backend,
                           device=device, batch_size=batch_size)
    base, P = list(plan.views), len(perts)
    views, derivations = [], {}
    for i, p in enumerate(perts):
        names = {f"{v.name}|{p.name}": v.name for v in base}
        derive = _slicer(i, P, names)
        for name, v in zip(names, base):
            views.append(LayerView(name, v.module))
            derivations[name] = (f"perturbation-{i}", tuple(v.name for v in base), derive)
    vplan = with_views(plan, views)
    ids = None if targets is None else concept_ids(dataset, list(targets))
    passes = [wrap_pass(p, derivations) for p in vplan.passes()]
    if ids is not None:
        passes[0] = _with_accuracy(passes[0], ids, P)
    source = PerturbedSource(DatasetSource(dataset, batch_size=batch_size, num_workers=num_workers, strict=strict,
                                           drop_categories=plan.conv.excluded_categories), perts, seed=seed)
    key = dict(vplan.key(), perturbations=[p.name for p in perts], seed=seed, targets=targets,
               dataset=data_key(dataset), batch_size=batch_size)
    output = run_analysis(model.to(plan.device).eval(), source, passes, views=base, name=NAME, out_dir=out_dir,
                          key=key, device=plan.device, progress=progress, interval=checkpoint_interval,
                          resume=resume)
    record = _record(model, dataset, vplan, build_result(vplan, output), output, perts, base, ids, targets,
                     dict(perturbations=[p.name for p in perts], seed=seed, convention=plan.conv.name,
                          quantile=plan.q, targets=targets))
    if out_dir is not None:
        from dissect_kernels.analysis.common import write_analysis
        from dissect_kernels.report.analyses import robustness_page
        write_analysis(out_dir, NAME, record, "Robustness", *robustness_page(record))
    return record


def _slicer(i: int, P: int, names: dict[str, str]):
    """derive(step): the rows of perturbation i, its views named per `names` (new -> captured)."""
    def derive(step):
        B = step.indices.shape[0] // P
        rows = slice(i * B, (i + 1) * B)
        return derived_step(step, {new: step.acts[old][rows] for new, old in names.items()}, rows=rows)
    return derive


def _with_accuracy(p: Pass, ids: list[int], P: int) -> Pass:
    return Pass(p.name, lambda results: {**p.build(results), "accuracy": PerturbationAccuracy(ids, P)}, p.source)


def _record(model, dataset, plan, result, output, perts, base, ids, targets, parameters) -> dict:
    """robustness.json: per layer, a summary per perturbation and one record per unit."""
    rec = header(NAME, model, dataset, parameters)
    rec["perturbations"] = [{"name": p.name, "kind": p.kind, "amount": p.amount} for p in perts]
    counts = output.results["quantiles"].get("accuracy")
    rec["accuracy"] = None if counts is None else {p.name: accuracy_of(counts, i) for i, p in enumerate(perts)}
    rec["targets"] = targets
    rec["layers"] = {v.name: _layer(result, v.name, perts) for v in base}
    return rec


def _layer(result, layer: str, perts) -> dict:
    """One layer's summary per perturbation and its units, each compared with the clean run."""
    clean = result.layers[f"{layer}|none"]
    det0, lab0 = clean.detector, clean.best_label
    summary, per_unit = {}, {}
    for p in perts:
        lr = result.layers[f"{layer}|{p.name}"]
        kept = det0 & lr.detector & (lr.best_label == lab0)
        summary[p.name] = {"detectors": lr.num_detectors, "unique_concepts": len(lr.unique_concepts()),
                           "retained": int(kept.sum()),
                           "retention": float(kept.sum()) / max(1, int(det0.sum()))}
        per_unit[p.name] = (lr, kept)
    units = []
    for u in range(clean.num_units):
        units.append(unit_record(layer, u, label=clean.unit_label(u), category=clean.unit_category(u),
                                 iou=float(clean.best_iou[u]), detector=bool(det0[u]),
                                 perturbed={name: {"label": lr.unit_label(u), "iou": float(lr.best_iou[u]),
                                                   "detector": bool(lr.detector[u]), "retained": bool(kept[u])}
                                            for name, (lr, kept) in per_unit.items() if name != "none"}))
    return {"units_total": clean.num_units, "summary": summary, "units": units}


def add_arguments(p) -> None:
    """The CLI options: the shared ones plus --perturbations, --targets, --perturb-seed."""
    from dissect_kernels.cli.analyze import add_model_args
    add_model_args(p, max_images=300)       # every perturbation is one more dissection's forward passes
    p.add_argument("--perturbations", default=",".join(DEFAULT_PERTURBATIONS),
                   help="comma-separated: noise-K (K*U[0,1] pixel units), rotate-DEGREES, shuffle-N (N x N "
                        f"patches) (default: {','.join(DEFAULT_PERTURBATIONS)})")
    p.add_argument("--targets", help="comma-separated concept names of a multi-label classifier's outputs, for "
                                     "accuracy per perturbation (default: the embedded model's own targets)")
    p.add_argument("--perturb-seed", type=int, default=0, help="seed of the noise and patch orders (default 0)")


def run_cli(args) -> int:
    """`dissect-kernels analyze robustness`: print the summary table, write robustness.json + page."""
    from dissect_kernels.cli.analyze import common_kwargs, prepare
    from dissect_kernels.io.lock import locked
    try:
        perts = parse_perturbations([t for t in args.perturbations.split(",") if t.strip()])
    except ValueError as err:
        raise SystemExit(f"--perturbations: {err}") from None
    targets = args.targets.split(",") if args.targets else None
    if targets is None and not args.model:
        from dissect_kernels.models import default_model_info
        targets = default_model_info()["targets"]
    model, layers, dataset, out = prepare(args)
    with locked(out):
        rec = robustness(model, layers, dataset, perturbations=perts[1:], targets=targets, seed=args.perturb_seed,
                         num_workers=args.num_workers, strict=args.strict, out_dir=out, **common_kwargs(args))
    for layer, lr in rec["layers"].items():
        print(f"\n{layer}: {'perturbation':<12} {'detectors':>9} {'unique':>6} {'retained':>8}")
        for name, s in lr["summary"].items():
            print(f"  {name:<22} {s['detectors']:>9} {s['unique_concepts']:>6} {s['retention']:>8.0%}")
    if rec["accuracy"]:
        print("\naccuracy: " + ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in rec["accuracy"].items()))
    print(f"\nresults: {out / 'robustness.json'}\nreport:  {(out / 'robustness.html').resolve()}")
    return 0
