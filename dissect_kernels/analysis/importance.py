"""Unit importance ("Revisiting the importance of individual units in CNNs via ablation", Zhou
et al. 2018; class selectivity after Morcos et al. 2018): per unit, its class selectivity,
incoming weight L1 norm, best concept IoU (a dissection) and mean activation, against the
per-class balanced-accuracy drop when the unit alone is ablated (zeroed everywhere); Spearman
rank correlations overall (against the mean drop over classes) and per class, scatter plots.

The classifier is multi-label: output k predicts 'concept targets[k] is present in the image'
(logit > 0), as for the shipped default model. One run of the pass engine, two passes: (1) the
dissection's quantiles, the activation statistics and every single-unit ablation of the batch
(ablation.AblationConfusion: batched through dk.intervene, several units per forward pass);
(2) the dissection's tally."""
from __future__ import annotations

import warnings

import torch
from torch import nn

from dissect_kernels.ablation import AblationConfusion
from dissect_kernels.analysis.common import (concept_ids, data_key, dissection_plan, header, presence,
                                             run_analysis, unit_record)
from dissect_kernels.dissect import build_result
from dissect_kernels.engine import DatasetSource, Pass
from dissect_kernels.stats.confusion import confusion_metrics

NAME = "importance"
HELP = ("unit importance: per-class accuracy drop from ablating each unit alone, against class selectivity, "
        "weight L1 norm, best concept IoU and mean activation (Spearman correlations, scatter plots)")
DEFAULT_LAYER = "conv4"         # the embedded model's layer without --layers
ATTRIBUTES = ("selectivity", "weight_l1", "best_iou", "mean_activation")


class ActivationStats:
    """Per unit: the sum over images of its spatially averaged activation, overall and over the
    images where each target class is present (class-conditional means -> selectivity)."""

    needs_labels = True

    def __init__(self, layer: str, ids: list[int]):
        self.layers, self.ids, self.state = (layer,), torch.tensor(ids), {}

    def update(self, step) -> None:
        a = step.acts[self.layers[0]].float().mean(dim=(2, 3))                     # [B, U]
        y = step.targets.to(a.device).double()                                    # [B, K]
        add = {"sum": a.double().sum(0), "class_sum": y.t() @ a.double(), "positives": y.sum(0),
               "n": torch.tensor([float(a.shape[0])], dtype=torch.float64)}
        self._add({k: v.cpu() for k, v in add.items()})

    def _add(self, add: dict) -> None:
        self.state = add if not self.state else {k: self.state[k] + add[k] for k in add}

    def merge(self, other: "ActivationStats") -> None:
        if other.state:
            self._add(other.state)

    def state_dict(self) -> dict:
        return dict(self.state)

    def load_state_dict(self, state: dict) -> None:
        self.state = {k: v.double().cpu() for k, v in state.items()}

    def finalize(self) -> dict:
        return dict(self.state)


def selectivity(class_means: torch.Tensor) -> torch.Tensor:
    """Class selectivity [U] from class-conditional mean activations [U, K] (classes with
    positives only): (mu_max - mu_rest) / (mu_max + mu_rest), mu_rest the mean over the other
    classes; 0 where both are 0."""
    top = class_means.max(1).values
    rest = (class_means.sum(1) - top) / max(1, class_means.shape[1] - 1)
    den = top + rest
    return torch.where(den.abs() > 0, (top - rest) / den.where(den.abs() > 0, torch.ones_like(den)),
                       torch.zeros_like(den))


def weight_l1(model: nn.Module, module: str, units: int) -> torch.Tensor | None:
    """L1 norm of each unit's incoming weights: the last conv / linear inside `module` with
    `units` outputs, scaled by |gamma| / sqrt(var + eps) of a batch norm that follows it (the
    weights the unit effectively applies in eval mode); None when there is none."""
    from dissect_kernels import hooks
    mods = list(hooks.get_module(model, module).modules())
    idx = [i for i, m in enumerate(mods) if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.shape[0] == units]
    if not idx:
        return None
    w = mods[idx[-1]].weight.detach().float().abs().reshape(units, -1).sum(1).cpu()
    bn = next((m for m in mods[idx[-1] + 1:] if isinstance(m, nn.BatchNorm2d) and m.num_features == units), None)
    if bn is not None and bn.running_var is not None:
        scale = (bn.weight.detach().abs() if bn.weight is not None else 1.0) / (bn.running_var + bn.eps).sqrt()
        w = w * scale.float().cpu()
    return w


def spearman(x, y) -> float | None:
    """Spearman rank correlation of two [U] vectors (None where undefined: a constant one)."""
    from scipy.stats import spearmanr
    x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    ok = torch.isfinite(x) & torch.isfinite(y)
    if int(ok.sum()) < 3 or float(x[ok].std()) == 0 or float(y[ok].std()) == 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = float(spearmanr(x[ok].numpy(), y[ok].numpy()).statistic)
    return r if r == r else None


def importance(model, layers, dataset, targets, *, convention="exact", quantile=None, batch_size: int = 32,
               device=None, out_dir=None, progress: bool = True, backend: str = "auto", num_workers=None,
               chunk_size: int | None = None, checkpoint_interval: float = 120.0, resume: bool = True,
               strict: bool = False) -> dict:
    """Per-class accuracy drops from single-unit ablation of each layer in `layers` against
    the units' attributes. targets: the concept names of the model's outputs, in order (output k
    predicts 'targets[k] is present'). Returns the importance.json record; with out_dir, writes
    it and a page (scatter plots, correlation tables) on the run's report site."""
    ids = concept_ids(dataset, list(targets))
    plan = dissection_plan(model, layers, dataset, convention=convention, quantile=quantile, backend=backend,
                           device=device, batch_size=batch_size)
    K = len(ids)

    def first(results):
        accs = plan.quantile_pass(results)
        for spec in plan.specs:
            accs[f"{spec.key}/stats"] = ActivationStats(spec.key, ids)
            accs[f"{spec.key}/ablation"] = AblationConfusion(
                spec, lambda U, units: units[:, None], num_classes=K, multilabel=True, units=None,
                chunk_size=chunk_size, device=plan.device)
        return accs

    def annotate(step):
        step.data["targets"] = presence(step.labels, step.data.get("image_labels"), torch.tensor(ids))

    source = DatasetSource(dataset, batch_size=batch_size, num_workers=num_workers, strict=strict,
                           drop_categories=plan.conv.excluded_categories)
    key = dict(plan.key(), targets=list(targets), dataset=data_key(dataset), batch_size=batch_size)
    output = run_analysis(model.to(plan.device).eval(), source, [Pass("quantiles", first),
                                                                  Pass("tally", plan.tally_pass)],
                          views=plan.views, name=NAME, out_dir=out_dir, key=key, device=plan.device,
                          progress=progress, interval=checkpoint_interval, resume=resume, annotate=annotate)
    result = build_result(plan, output)
    rec = header(NAME, model, dataset, dict(targets=list(targets), convention=plan.conv.name, quantile=plan.q))
    rec["targets"] = list(targets)
    rec["layers"] = {s.key: _layer(model, s, output.results["quantiles"], result.layers[s.key], list(targets))
                     for s in plan.specs}
    if out_dir is not None:
        from dissect_kernels.analysis.common import write_analysis
        from dissect_kernels.report.importance_page import importance_page
        write_analysis(out_dir, NAME, rec, "Unit importance", *importance_page(rec))
    return rec


def _attributes(model, spec, stats: dict, lr) -> dict[str, torch.Tensor]:
    """Each unit's attributes [U] (weight_l1 NaN where the layer has no incoming weights)."""
    U = lr.num_units
    has = stats["positives"] > 0
    means = stats["class_sum"].t()[:, has] / stats["positives"][has]            # [U, K'] class means
    w = weight_l1(model, spec.module, U)
    return {"selectivity": selectivity(means) if bool(has.any()) else torch.zeros(U, dtype=torch.float64),
            "weight_l1": w.double() if w is not None else torch.full((U,), float("nan"), dtype=torch.float64),
            "best_iou": lr.best_iou.double(), "mean_activation": stats["sum"] / stats["n"]}


def _layer(model, spec, results: dict, lr, targets: list[str]) -> dict:
    """One layer: per unit its attributes and drops, correlations overall and per class."""
    conf = results[f"{spec.key}/ablation"]
    balanced = confusion_metrics(conf)[2]                                        # [1 + U, K]
    drop = (balanced[0:1] - balanced[1:]).double()                               # [U, K]
    attrs = _attributes(model, spec, results[f"{spec.key}/stats"], lr)
    overall = drop.mean(1)
    K = drop.shape[1]
    units = [unit_record(spec.key, u, label=lr.unit_label(u), **{a: float(v[u]) for a, v in attrs.items()},
                         mean_drop=float(overall[u]), max_drop=float(drop[u].max()),
                         drops={t: float(drop[u, k]) for k, t in enumerate(targets)})
             for u in range(drop.shape[0])]
    positive = drop.clamp(min=0)
    per_class = {t: {"baseline_balanced_accuracy": float(balanced[0, k]), "top_unit": int(drop[:, k].argmax()),
                     "top_drop": float(drop[:, k].max()),
                     "top_share": float(positive[:, k].max() / positive[:, k].sum()) if float(positive[:, k].sum()) > 0
                     else None,
                     "spearman": {a: spearman(v, drop[:, k]) for a, v in attrs.items()}}
                 for k, t in enumerate(targets)}
    return {"units_total": drop.shape[0], "units": units,
            "spearman": {a: spearman(v, overall) for a, v in attrs.items()},
            "spearman_max_drop": {a: spearman(v, drop.max(1).values) for a, v in attrs.items()},
            "classes": per_class,
            "summary": {"mean_top_drop": float(drop.max(0).values.mean()) if K else None,
                        "units_with_drop_over_0.05": int((drop.max(1).values > 0.05).sum())}}


def add_arguments(p) -> None:
    """The shared options plus --targets and --chunk-size."""
    from dissect_kernels.cli.analyze import add_model_args
    add_model_args(p, layers_help="comma-separated layers whose units are ablated (default for the embedded "
                                  f"model: {DEFAULT_LAYER})")
    p.add_argument("--targets", help="comma-separated concept names of the model's outputs, in order (output k "
                                     "predicts 'concept k is present'; default: the embedded model's targets)")
    p.add_argument("--chunk-size", type=int, help="ablated units per forward pass (default: by batch size)")
    p.add_argument("--rotate", type=int, metavar="SEED",
                   help="analyse the model with each layer's basis randomly rotated (same function; the units "
                        "become the layer's rotated directions, named LAYER.rot)")


def run_cli(args) -> int:
    """`dissect-kernels analyze importance`: print the correlations, write importance.json + page."""
    from dissect_kernels.cli.analyze import common_kwargs, prepare
    from dissect_kernels.io.lock import locked
    targets = [t.strip() for t in args.targets.split(",") if t.strip()] if args.targets else None
    if targets is None:
        if args.model:
            raise SystemExit("--targets is required with --model (the concept names of its outputs)")
        from dissect_kernels.models import default_model_info
        targets = default_model_info()["targets"]
    if not args.model and not args.layers:
        args.layers = DEFAULT_LAYER               # as `ablate`: ablating conv3 reruns conv4 per unit
    if args.chunk_size is not None and args.chunk_size < 1:
        raise SystemExit(f"--chunk-size must be a positive integer, got {args.chunk_size}")
    model, layers, dataset, out = prepare(args)
    if args.rotate is not None:
        model, layers = rotated(model, layers, args.rotate)
    with locked(out):
        try:
            rec = importance(model, layers, dataset, targets, num_workers=args.num_workers, strict=args.strict,
                             chunk_size=args.chunk_size, out_dir=out, **common_kwargs(args))
        except ValueError as err:
            raise SystemExit(f"importance: {err}") from None
    for layer, lr in rec["layers"].items():
        corr = ", ".join(f"{a} {_r(r)}" for a, r in lr["spearman"].items())
        print(f"\n{layer}: Spearman with the mean accuracy drop: {corr}")
        top = sorted(lr["classes"].items(), key=lambda kv: -kv[1]["top_drop"])[:5]
        print("  largest drops: " + ", ".join(f"{t} unit {c['top_unit']} ({c['top_drop']:.3f})" for t, c in top))
    print(f"\nresults: {out / 'importance.json'}\nreport:  {(out / 'importance.html').resolve()}")
    return 0


def rotated(model, specs, seed: int):
    """(a copy of model with each layer wrapped in RotatedBasis, the rotated layers' names)."""
    from dissect_kernels.models.tiny_classifier import rotate_basis
    names = []
    for s in specs:
        if s.layout != "nchw" or s.select is not None or s.capture != "output":
            raise SystemExit(f"--rotate: layer {s.key!r} is not a plain [B, U, h, w] module output")
        try:
            model = rotate_basis(model, s.module, seed)
        except ValueError as err:
            raise SystemExit(f"--rotate: {err}") from None
        names.append(f"{s.module}.rot")
    return model, names


def _r(r) -> str:
    return "-" if r is None else f"{r:+.2f}"
