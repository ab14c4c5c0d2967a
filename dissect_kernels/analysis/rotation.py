"""The axis-alignment test, repeated (Network Dissection section 3.2 and its critique): dissect
each layer unrotated, under n random rotations of its units (mean +- std of detectors and unique
concepts) and under partial rotations R^alpha from the identity (alpha = 0) to one random
rotation R (alpha = 1). One run of the pass engine: every rotation is a view of the captured
layer (dissect_kernels.rotation.Rotation) with its own quantiles and tally."""
from __future__ import annotations

import statistics

from dissect_kernels.analysis.common import (data_key, dissection_plan, header, run_analysis, unit_record,
                                             with_views)
from dissect_kernels.dissect import build_result
from dissect_kernels.engine import DatasetSource, LayerView
from dissect_kernels.engine.layers import as_specs
from dissect_kernels.rotation import Rotation

NAME = "rotation"
HELP = ("the axis-alignment test: detectors and unique concepts unrotated, under n random rotations of the "
        "units (mean +- std) and under partial rotations alpha in [0, 1] from the identity to a random one")
DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def rotation(model, layers, dataset, *, rotations: int = 5, alphas=DEFAULT_ALPHAS, seed: int = 0,
             convention="exact", quantile=None, batch_size: int = 32, device=None, out_dir=None,
             progress: bool = True, backend: str = "auto", num_workers=None, checkpoint_interval: float = 120.0,
             resume: bool = True, strict: bool = False, report: bool = True) -> dict:
    """Dissect `layers` unrotated, under random_rotation(U, seed + i) for i < rotations, and under
    proper_rotation(U, seed)^alpha for each alpha. Returns the rotation.json record; with out_dir,
    writes it and a page on the run's report site."""
    alphas = sorted({float(a) for a in alphas})
    if rotations < 0 or any(not 0 <= a <= 1 for a in alphas):
        raise ValueError(f"need rotations >= 0 and every alpha in [0, 1]; got {rotations}, {alphas}")
    plan = dissection_plan(model, layers, dataset, convention=convention, quantile=quantile, backend=backend,
                           device=device, batch_size=batch_size)
    views = []
    for s in as_specs(model, layers):
        views.append(LayerView.of(s))
        views += [LayerView.of(s, f"{s.key}@rot{seed + i}", Rotation(seed + i)) for i in range(rotations)]
        views += [LayerView.of(s, f"{s.key}@alpha{a:g}", Rotation(seed, alpha=a)) for a in alphas]
    vplan = with_views(plan, views)
    source = DatasetSource(dataset, batch_size=batch_size, num_workers=num_workers, strict=strict,
                           drop_categories=plan.conv.excluded_categories)
    key = dict(vplan.key(), rotations=rotations, alphas=alphas, seed=seed, dataset=data_key(dataset), batch_size=batch_size)
    output = run_analysis(model.to(plan.device).eval(), source, vplan.passes(), views=views, name=NAME,
                          out_dir=out_dir, key=key, device=plan.device, progress=progress,
                          interval=checkpoint_interval, resume=resume)
    result = build_result(vplan, output)
    rec = header(NAME, model, dataset, dict(rotations=rotations, alphas=alphas, seed=seed,
                                            convention=plan.conv.name, quantile=plan.q))
    rec["layers"] = {v.name: _layer(result, v.name, seed, rotations, alphas) for v in plan.views}
    if out_dir is not None:
        from dissect_kernels.analysis.common import write_analysis
        from dissect_kernels.report.analyses import rotation_page
        write_analysis(out_dir, NAME, rec, "Rotation (axis alignment)", *rotation_page(rec))
    return rec


def counts(lr) -> dict:
    """Detectors and unique concepts of one dissected view."""
    return {"detectors": lr.num_detectors, "unique_concepts": len(lr.unique_concepts())}


def _spread(rows: list[dict], key: str) -> dict:
    values = [r[key] for r in rows]
    return {"mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else 0.0 if values else None}


def _layer(result, layer: str, seed: int, n: int, alphas: list[float]) -> dict:
    """One layer: unrotated counts, each random rotation's, their mean/std, the partial curve, units."""
    base = result.layers[layer]
    rotated = [dict(seed=seed + i, **counts(result.layers[f"{layer}@rot{seed + i}"])) for i in range(n)]
    partial = {a: result.layers[f"{layer}@alpha{a:g}"] for a in alphas}
    units = [unit_record(layer, u, label=base.unit_label(u), category=base.unit_category(u),
                         iou=float(base.best_iou[u]), detector=bool(base.detector[u]),
                         partial={f"{a:g}": {"label": lr.unit_label(u), "iou": float(lr.best_iou[u]),
                                             "detector": bool(lr.detector[u])} for a, lr in partial.items()})
             for u in range(base.num_units)]
    return {"units_total": base.num_units, "unrotated": counts(base), "rotations": rotated,
            "random": {k: _spread(rotated, k) for k in ("detectors", "unique_concepts")},
            "partial": [dict(alpha=a, **counts(lr)) for a, lr in partial.items()], "units": units}


def add_arguments(p) -> None:
    """The shared options plus --rotations, --alphas, --rotation-seed."""
    from dissect_kernels.cli.analyze import add_model_args
    add_model_args(p)
    p.add_argument("--rotations", type=int, default=5, help="random rotations to average over (default 5)")
    p.add_argument("--alphas", default=",".join(f"{a:g}" for a in DEFAULT_ALPHAS),
                   help="partial rotations, comma-separated in [0, 1] (default: 0,0.25,0.5,0.75,1)")
    p.add_argument("--rotation-seed", type=int, default=0, help="seed of the first random rotation (default 0)")


def run_cli(args) -> int:
    """`dissect-kernels analyze rotation`: print the table, write rotation.json + page."""
    from dissect_kernels.cli.analyze import common_kwargs, prepare
    from dissect_kernels.io.lock import locked
    try:
        alphas = [float(a) for a in args.alphas.split(",") if a.strip()]
    except ValueError:
        raise SystemExit(f"--alphas: expected numbers in [0, 1] separated by commas, got {args.alphas!r}") from None
    if args.rotations < 0 or any(not 0 <= a <= 1 for a in alphas):
        raise SystemExit(f"--rotations must be >= 0 and --alphas in [0, 1]; got {args.rotations}, {args.alphas}")
    model, layers, dataset, out = prepare(args)
    with locked(out):
        rec = rotation(model, layers, dataset, rotations=args.rotations, alphas=alphas, seed=args.rotation_seed,
                       num_workers=args.num_workers, strict=args.strict, out_dir=out, **common_kwargs(args))
    for layer, lr in rec["layers"].items():
        r = lr["random"]
        print(f"\n{layer}: unrotated {lr['unrotated']['detectors']} detectors, {lr['unrotated']['unique_concepts']} "
              f"concepts; {len(lr['rotations'])} random rotations: {_pm(r['detectors'])} detectors, "
              f"{_pm(r['unique_concepts'])} concepts")
        print("  alpha: " + ", ".join(f"{p['alpha']:g} -> {p['detectors']}/{p['unique_concepts']}"
                                      for p in lr["partial"]) + "  (detectors/concepts)")
    print(f"\nresults: {out / 'rotation.json'}\nreport:  {(out / 'rotation.html').resolve()}")
    return 0


def _pm(s: dict) -> str:
    return "-" if s["mean"] is None else f"{s['mean']:.1f} +- {s['std']:.1f}"
