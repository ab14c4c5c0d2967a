"""Is a concept carried by one unit or by a combination (the critique of the axis-alignment
test)? Per layer and concept: the SVD of the layer's standardised activations restricted to the
pixels labelled with the concept (labels sampled at the layer's resolution), i.e. the eigenvectors
of their second moment; the top components' loadings on units, the largest loading share
(v1[u]^2: 1 = one unit, 1/U = spread evenly) and the effective number of units 1 / sum v1^4.

Two passes: per unit mean and std over all positions plus each concept's pixel count; then, for
the max_concepts most frequent concepts (or those named), the U x U Gram matrix of standardised
activations over the concept's pixels."""
from __future__ import annotations

import torch

from dissect_kernels.analysis.common import concept_ids, data_key, header, jsonable, run_analysis, unit_record
from dissect_kernels.engine import DatasetSource, LayerView, Pass
from dissect_kernels.engine.layers import as_specs

NAME = "pca"
HELP = ("per concept, the SVD of standardised activations on the concept's pixels: loadings of the top "
        "components on units, and whether one unit (largest loading share) or several carry the concept")


def labels_at(step, h: int, w: int) -> torch.Tensor:
    """[B*h*w, L'] concept ids at the layer's positions: label layers sampled at the cell centres
    (nearest), then image-level labels covering every position."""
    lab = step.labels
    B, L, H, W = lab.shape
    ys = ((torch.arange(h, device=lab.device) + 0.5) * H / h).long().clamp_(max=H - 1)
    xs = ((torch.arange(w, device=lab.device) + 0.5) * W / w).long().clamp_(max=W - 1)
    cols = [lab[:, :, ys][:, :, :, xs].reshape(B, L, h * w)]
    image = step.data.get("image_labels")
    if image is not None:
        cols.append(image.reshape(B, -1, 1).to(lab.dtype).expand(B, image.reshape(B, -1).shape[1], h * w))
    return torch.cat(cols, 1).permute(0, 2, 1).reshape(B * h * w, -1)


class _Sums:
    """Mergeable named float64/int64 sums (the state of both passes' accumulators)."""

    def merge(self, other) -> None:
        if other.s:
            self.s = dict(other.s) if not self.s else {k: self.s[k] + other.s[k] for k in self.s}

    def add(self, new: dict) -> None:
        self.s = {k: v.cpu() for k, v in new.items()} if not self.s else \
            {k: self.s[k] + new[k].cpu() for k in self.s}

    def state_dict(self) -> dict:
        return dict(self.s)

    def load_state_dict(self, state: dict) -> None:
        self.s = {k: v.cpu() for k, v in state.items()}

    def finalize(self) -> dict:
        return dict(self.s)


class Moments(_Sums):
    """Per unit: count, sum and sum of squares over every position; per concept: its positions."""

    def __init__(self, layer: str, num_concepts: int):
        self.layers, self.C, self.s = (layer,), int(num_concepts), {}

    def update(self, step) -> None:
        a = step.acts[self.layers[0]].double()
        lab = labels_at(step, *a.shape[2:]).long()
        present = torch.zeros(lab.shape[0], self.C, dtype=torch.bool, device=lab.device)
        present.scatter_(1, lab.clamp(0, self.C - 1), True)
        present[:, 0] = False
        self.add({"n": torch.tensor([a.numel() // a.shape[1]], dtype=torch.float64), "sum": a.sum((0, 2, 3)),
                  "sq": (a * a).sum((0, 2, 3)), "pixels": present.sum(0)})


class ConceptGram(_Sums):
    """Per chosen concept: the Gram matrix of standardised activations over its positions, their
    sum and count."""

    def __init__(self, layer: str, mean, std, concepts):
        self.layers, self.mean, self.std, self.s = (layer,), mean.double(), std.double(), {}
        self.concepts = [int(c) for c in concepts]

    def update(self, step) -> None:
        a = step.acts[self.layers[0]].double()
        B, U, h, w = a.shape
        z = ((a - self.mean.to(a.device).view(1, U, 1, 1)) / self.std.to(a.device).view(1, U, 1, 1))
        z = z.permute(0, 2, 3, 1).reshape(-1, U)
        lab = labels_at(step, h, w)
        grams, sums, counts = [], [], []
        for c in self.concepts:
            x = z[(lab == c).any(1)]
            grams.append(x.T @ x)
            sums.append(x.sum(0))
            counts.append(x.shape[0])
        if self.concepts:
            self.add({"gram": torch.stack(grams), "sum": torch.stack(sums),
                      "count": torch.tensor(counts, dtype=torch.int64)})

    def finalize(self) -> dict:
        return dict(self.s, concept_ids=torch.tensor(self.concepts, dtype=torch.int64))


def pca(model, layers, dataset, *, concepts=None, max_concepts: int = 40, components: int = 3,
        one_unit_share: float = 0.5, batch_size: int = 32, device=None, out_dir=None, progress: bool = True,
        num_workers=None, checkpoint_interval: float = 120.0, resume: bool = True, strict: bool = False,
        report: bool = True) -> dict:
    """Per layer and concept (the named `concepts`, else the max_concepts with the most pixels),
    the top `components` of the SVD of standardised activations on its pixels; a concept is
    'one unit' when its first component's largest loading share is >= one_unit_share. Returns
    the pca.json record; with out_dir, writes it and a page on the run's report site."""
    specs = as_specs(model, layers)
    views = [LayerView.of(s) for s in specs]
    C = int(dataset.num_concepts)
    chosen = None if concepts is None else concept_ids(dataset, list(concepts))
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def second(results):
        out = {}
        for v in views:
            m = results["moments"][v.name]
            mean, var = m["sum"] / m["n"], m["sq"] / m["n"] - (m["sum"] / m["n"]) ** 2
            ids = chosen or [c for c in m["pixels"].argsort(descending=True).tolist() if m["pixels"][c] > 0][:max_concepts]
            out[v.name] = ConceptGram(v.name, mean, var.clamp_min(0).sqrt().clamp_min(1e-12), ids)
        return out
    passes = [Pass("moments", lambda r: {v.name: Moments(v.name, C) for v in views}), Pass("gram", second)]
    source = DatasetSource(dataset, batch_size=batch_size, num_workers=num_workers, strict=strict)
    key = dict(layers=[repr(s) for s in specs], concepts=chosen, max_concepts=max_concepts, dataset=data_key(dataset))
    out = run_analysis(model.to(dev).eval(), source, passes, views=views, name=NAME, out_dir=out_dir, key=key,
                       device=dev, progress=progress, interval=checkpoint_interval, resume=resume)
    rec = header(NAME, model, dataset, dict(concepts=concepts, max_concepts=max_concepts, components=components,
                                            one_unit_share=one_unit_share))
    rec["layers"] = {v.name: _layer(v.name, out.results, dataset, components, one_unit_share) for v in views}
    if out_dir is not None:
        from dissect_kernels.analysis.common import write_analysis
        from dissect_kernels.report.analyses import pca_page
        write_analysis(out_dir, NAME, rec, "PCA of concepts", *pca_page(rec))
    return rec


def decompose(gram: torch.Tensor, count: int, k: int):
    """(explained fractions [k], loadings [k, U]) of the second moment gram / count, each
    component signed so that its largest loading is positive."""
    vals, vecs = torch.linalg.eigh(gram / max(count, 1))
    vals, vecs = vals.flip(0).clamp_min(0), vecs.flip(1).T[:k]
    signs = torch.sign(vecs.gather(1, vecs.abs().argmax(1, keepdim=True)))
    return vals[:k] / vals.sum().clamp_min(1e-300), vecs * signs


def _layer(layer: str, results, dataset, k: int, one_share: float) -> dict:
    """One layer's records: one per concept, one per unit (the concepts it carries most)."""
    g, names = results["gram"][layer], list(dataset.concept_names)
    cats = [dataset.category_names[int(c)] for c in torch.as_tensor(dataset.category_of).tolist()]
    concepts, per_unit = [], {}
    for j, c in enumerate(g["concept_ids"].tolist() if "gram" in g else []):
        n = int(g["count"][j])
        if n == 0:
            continue
        explained, load = decompose(g["gram"][j], n, k)
        share = load[0] ** 2
        top = int(share.argmax())
        concepts.append({"layer": layer, "concept": names[c], "category": cats[c], "pixels": n,
                         "top_unit": top, "top_share": float(share[top]),
                         "effective_units": float(1.0 / (share ** 2).sum()),
                         "carried_by": "one unit" if float(share[top]) >= one_share else "spread",
                         "mean_activation": g["sum"][j] / n,
                         "components": [{"explained": float(explained[i]), "loadings": load[i]}
                                        for i in range(load.shape[0])]})
        for u, s in enumerate(share.tolist()):
            per_unit.setdefault(u, []).append((s, names[c]))
    units = [unit_record(layer, u, concepts=[{"concept": n, "share": s} for s, n in sorted(v, reverse=True)[:3]])
             for u, v in sorted(per_unit.items())]
    return {"concepts": jsonable(concepts), "units": units}



def add_arguments(p) -> None:
    """The shared options plus --concepts, --max-concepts, --components, --one-unit-share."""
    from dissect_kernels.cli.analyze import add_model_args
    add_model_args(p, thresholds=False)
    p.add_argument("--concepts", help="comma-separated concept names (default: the most frequent ones)")
    p.add_argument("--max-concepts", type=int, default=40, help="without --concepts: how many (default 40)")
    p.add_argument("--components", type=int, default=3, help="top components kept per concept (default 3)")
    p.add_argument("--one-unit-share", type=float, default=0.5,
                   help="a concept is carried by one unit when that unit's share of the first component "
                        "(its squared loading) is at least this (default 0.5)")


def run_cli(args) -> int:
    """`dissect-kernels analyze pca`: print each layer's concepts, write pca.json + page."""
    from dissect_kernels.cli.analyze import prepare
    from dissect_kernels.io.lock import locked
    if args.max_concepts < 1 or args.components < 1 or not 0 < args.one_unit_share <= 1:
        raise SystemExit("--max-concepts and --components must be >= 1 and --one-unit-share in (0, 1]")
    model, layers, dataset, out = prepare(args)
    with locked(out):
        rec = pca(model, layers, dataset, concepts=args.concepts.split(",") if args.concepts else None,
                  max_concepts=args.max_concepts, components=args.components, one_unit_share=args.one_unit_share,
                  num_workers=args.num_workers, strict=args.strict, out_dir=out, batch_size=args.batch_size,
                  device=args.device, progress=not args.quiet, resume=not args.fresh)
    for layer, lr in rec["layers"].items():
        one = sum(c["carried_by"] == "one unit" for c in lr["concepts"])
        print(f"\n{layer}: {one}/{len(lr['concepts'])} concepts carried by one unit")
        for c in lr["concepts"][:10]:
            print(f"  {c['concept']:<20} top unit {c['top_unit']:>4} share {c['top_share']:.2f}  "
                  f"effective units {c['effective_units']:5.1f}  PC1 explains {c['components'][0]['explained']:.2f}")
    print(f"\nresults: {out / 'pca.json'}\nreport:  {(out / 'pca.html').resolve()}")
    return 0
