"""`dissect-kernels gan context | artifacts | real`: GAN dissection's further analyses, each alone
(its JSON, figure and page join the report site in --out), and the same three inside the
default `dissect-kernels gan` run. With the shipped tiny generator each has a default: the
concept's planted units for context, the grey-haze artifact score, the shipped real images."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from dissect_kernels.cli.gan_common import DEFAULT_OUT, add_model_args, load_gan

EXAMPLES = 6


def add_subcommands(gan_parser) -> None:
    """`gan context`, `gan artifacts`, `gan real` under the gan parser (options follow the name)."""
    sub = gan_parser.add_subparsers(dest="gan_analysis", metavar="{context,artifacts,real}",
                                    help="run one analysis alone (default: the whole GAN dissection)")
    c = sub.add_parser("context", help="where inserting units makes their concept appear (context.json)")
    add_model_args(c)
    c.add_argument("--concept", default=None, help="concept (default: the first non-background class)")
    c.add_argument("--units", default=None, help="comma-separated unit ids to insert (default with the "
                                                 "shipped generator: the concept's planted units)")
    c.add_argument("--grid", type=int, default=8, help="insertion locations per side (default 8)")
    c.add_argument("--value", default="mean", help="inserted value: mean (the concept-conditioned mean, "
                                                   "default), quantile (0.99 quantile) or a number")
    c.add_argument("--min-coverage", type=float, default=0.5,
                   help="an insertion succeeds when the concept covers this share of its location (default 0.5)")
    c.add_argument("--num-samples", type=int, default=64, help="samples (default 64)")
    c.set_defaults(run=run_context)
    a = sub.add_parser("artifacts", help="units that cause an artifact score, ablated (artifacts.json)")
    add_model_args(a)
    a.add_argument("--score", help="'module.path:callable' images -> [B] artifact score (default with the "
                                   "shipped generator: its grey-haze score)")
    a.add_argument("--annotations", type=Path, help="CSV 'sample,score' of the generated samples (ranks by "
                                                    "correlation; the score after ablation needs --score)")
    a.add_argument("--ablate", type=int, default=3, help="top units to ablate together (default 3)")
    a.add_argument("--num-samples", type=int, default=64, help="samples (default 64)")
    a.set_defaults(run=run_artifacts)
    r = sub.add_parser("real", help="class frequencies, generated vs real images (generated_vs_real.json)")
    add_model_args(r)
    r.add_argument("--real", type=Path, help="folder of real images (default with the shipped generator: "
                                             "its shipped real images)")
    r.add_argument("--num-samples", type=int, default=64, help="generated samples (default 64)")
    r.add_argument("--factor", type=float, default=2.0, help="under-produced: generated share < real / "
                                                             "factor (default 2)")
    r.add_argument("--min-fraction", type=float, default=0.01, help="classes rarer in real images are not "
                                                                    "judged (default 0.01)")
    r.set_defaults(run=run_real)


def _setup(args):
    """(generator, layer spec, segmenter, device) from the shared flags, the output folder made."""
    from dissect_kernels.cli.common import check_device, prepare_out
    check_device(args.device)
    gen, spec, seg = load_gan(args)
    device = torch.device(args.device) if args.device else None
    prepare_out(args.out, DEFAULT_OUT)
    return (gen.to(device) if device is not None else gen), spec, seg, device


def _concept(args, seg) -> str:
    from dissect_kernels.generated import segmenter_info
    names = segmenter_info(seg)[1]
    concept = args.concept if args.concept is not None else names[1]
    if concept not in names:
        raise SystemExit(f"--concept {concept!r} is not one of the segmenter's classes {names}")
    return concept


def _value(text: str):
    if text in ("mean", "quantile"):
        return text
    try:
        return float(text)
    except ValueError:
        raise SystemExit(f"--value must be mean, quantile or a number, got {text!r}") from None


def context_analysis(gen, spec, seg, concept, units, *, value, num_samples, grid=8, min_coverage=0.5,
                     seed=0, batch_size=8, device=None, progress=False):
    """(context.json dict, example strips) of inserting `units`."""
    from dissect_kernels.context import context_examples, insertion_context
    from dissect_kernels.generated import make_z_sampler
    res = insertion_context(gen, spec, units, seg, concept, num_samples=num_samples, grid=grid, value=value,
                            min_coverage=min_coverage, seed=seed, batch_size=batch_size, device=device,
                            progress=progress)
    gh, gw = res.grid
    z = make_z_sampler(gen, seed, None, None, device or next(gen.parameters()).device)(
        torch.arange(min(EXAMPLES, num_samples)))
    locs = sorted({0, gw - 1, (gh // 2) * gw + gw // 2, gh * gw - gw, gh * gw - 1})
    imgs = context_examples(gen, spec, units, res.value, z, res.grid, locs)
    with torch.no_grad():
        strips = {"original": gen(z), **{f"location_{s}": imgs[i] for i, s in enumerate(locs)}}
    return res.to_json(), strips


def artifacts_analysis(gen, spec, score, *, num_samples, ablate=3, seed=0, batch_size=16, device=None,
                       progress=False):
    """(artifacts.json dict, strips of the worst samples before / after the ablation)."""
    from dissect_kernels.artifacts import ablation_examples, artifact_units
    from dissect_kernels.generated import make_z_sampler
    res = artifact_units(gen, spec, score, num_samples=num_samples, ablate=ablate, seed=seed,
                         batch_size=batch_size, device=device, progress=progress)
    worst = res.scores.argsort(descending=True, stable=True)[:EXAMPLES]
    z = make_z_sampler(gen, seed, None, None, device or next(gen.parameters()).device)(worst)
    before, after = ablation_examples(gen, spec, res.ablated, z)
    return res.to_json(), {"worst_original": before, "worst_ablated": after}


def real_analysis(gen, seg, real, *, num_samples, factor=2.0, min_fraction=0.01, seed=0, batch_size=16,
                  device=None, progress=False):
    """(generated_vs_real.json dict, strips of a few generated and real images)."""
    from dissect_kernels.data.image_folder import ImageFolder
    from dissect_kernels.gan_real import generated_vs_real
    from dissect_kernels.generated import make_z_sampler
    res = generated_vs_real(gen, seg, real, num_samples=num_samples, seed=seed, batch_size=batch_size,
                            factor=factor, min_fraction=min_fraction, device=device, progress=progress)
    with torch.no_grad():
        fake = gen(make_z_sampler(gen, seed, None, None, device or next(gen.parameters()).device)(
            torch.arange(min(EXAMPLES, num_samples))))
    folder = ImageFolder(real, tuple(fake.shape[-2:]), max_images=EXAMPLES)
    return res.to_json(), {"generated": fake, "real": folder.batch(torch.arange(len(folder)))}


def _units(args, gen_is_default: bool, concept: str) -> list[int]:
    if args.units:
        try:
            return [int(u) for u in args.units.split(",") if u.strip()]
        except ValueError:
            raise SystemExit(f"--units must be comma-separated unit ids, got {args.units!r}") from None
    if gen_is_default:
        from dissect_kernels.models.tiny_gan import tiny_gan_info
        planted = tiny_gan_info()["planted"].get(concept)
        if planted:
            return planted
        raise SystemExit(f"--units is required for {concept!r} (no planted units)")
    raise SystemExit("--units is required with --generator")


def _finish(args, kind: str, data: dict, strips: dict, t0: float) -> int:
    from dissect_kernels.io.lock import locked
    from dissect_kernels.report.gan_analyses import summary, write_analysis
    with locked(args.out):
        path = write_analysis(args.out, kind, data, strips)
    print(summary(kind, data))
    print(f"report:  {path.resolve()} in {time.perf_counter() - t0:.1f} s")
    return 0


def run_context(args) -> int:
    """`gan context`: the insertion context map of a unit set."""
    t0 = time.perf_counter()
    gen, spec, seg, device = _setup(args)
    concept = _concept(args, seg)
    data, strips = context_analysis(gen, spec, seg, concept, _units(args, not args.generator, concept),
                                    value=_value(args.value), num_samples=args.num_samples, grid=args.grid,
                                    min_coverage=args.min_coverage, seed=args.seed,
                                    batch_size=args.batch_size, device=device, progress=not args.quiet)
    return _finish(args, "context", data, strips, t0)


def run_artifacts(args) -> int:
    """`gan artifacts`: rank units by an artifact score, ablate the top ones."""
    t0 = time.perf_counter()
    gen, spec, seg, device = _setup(args)
    if args.score and args.annotations:
        raise SystemExit("give --score or --annotations, not both")
    if args.score:
        score = _import(args.score, "--score")
    elif args.annotations:
        score = args.annotations
    elif not args.generator:
        from dissect_kernels.models.tiny_gan_data import haze_score
        score = haze_score
    else:
        raise SystemExit("--score or --annotations is required with --generator")
    data, strips = artifacts_analysis(gen, spec, score, num_samples=args.num_samples, ablate=args.ablate,
                                      seed=args.seed, batch_size=args.batch_size, device=device,
                                      progress=not args.quiet)
    return _finish(args, "artifacts", data, strips, t0)


def _import(spec: str, flag: str):
    """`module.path:name` -> the object (not called)."""
    import importlib
    if ":" not in spec:
        raise SystemExit(f"{flag} must look like 'module.path:name', got {spec!r}")
    mod, attr = spec.split(":", 1)
    try:
        return getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as err:
        raise SystemExit(f"{flag} {spec!r}: cannot import it ({err})") from err


def run_real(args) -> int:
    """`gan real`: class frequencies of generated vs real images."""
    t0 = time.perf_counter()
    gen, spec, seg, device = _setup(args)
    real = args.real
    if real is None:
        if args.generator:
            raise SystemExit("--real is required with --generator")
        from dissect_kernels.models.tiny_gan_data import REAL_IMAGES
        real = REAL_IMAGES
    data, strips = real_analysis(gen, seg, real, num_samples=args.num_samples, factor=args.factor,
                                 min_fraction=args.min_fraction, seed=args.seed, batch_size=args.batch_size,
                                 device=device, progress=not args.quiet)
    return _finish(args, "real", data, strips, t0)


def default_analyses(args, gen, spec, seg, concept: str, ranking, device) -> dict:
    """The three analyses of the default `gan` run: the context of the top 3 ACE units, the
    artifact units of the score (shipped or --artifact-score / --annotations) and generated vs
    real (shipped or --real); with a user's generator, those without a score or real images are
    skipped with a note. Returns {kind: (json dict, strips)}."""
    from dissect_kernels.models.tiny_gan_data import REAL_IMAGES, haze_score
    own = not args.generator
    n, progress = args.analysis_samples, not args.quiet
    units = ranking.order[:3].tolist()
    out = {"context": context_analysis(gen, spec, seg, concept, units, value="mean", num_samples=n,
                                       seed=args.seed, device=device, progress=progress)}
    score = _import(args.artifact_score, "--artifact-score") if args.artifact_score else \
        args.annotations or (haze_score if own else None)
    if score is not None:
        out["artifacts"] = artifacts_analysis(gen, spec, score, num_samples=max(n, 2), seed=args.seed,
                                              device=device, progress=progress)
    real = args.real or (REAL_IMAGES if own else None)
    if real is not None:
        out["real"] = real_analysis(gen, seg, real, num_samples=args.num_samples, seed=args.seed,
                                    batch_size=args.batch_size, device=device, progress=progress)
    from dissect_kernels.report.gan_analyses import PAGES
    needs = {"artifacts": "--artifact-score or --annotations", "real": "--real"}
    for kind in (k for k in needs if k not in out):
        print(f"note: no {PAGES[kind][2]} page (give {needs[kind]})")
    return out
