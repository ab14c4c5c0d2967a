"""`dissect-kernels gan`: GAN dissection + ACE ranking of one layer, then the insertion context of
the top ACE units, the artifact units and the generated-vs-real class statistics. With no
arguments it runs on the shipped tiny generator and its exact palette segmenter (with its
artifact score and real images) and writes results and the report site: index.html, a page per
layer, ace.html, context.html, artifacts.html and generated_vs_real.html with their JSON files
(written once, all or nothing). `gan context|artifacts|real [options]` runs one analysis alone."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


DEFAULT_OUT = Path("results/gan")


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the `gan` subcommand to an argparse subparsers object."""
    p = sub.add_parser("gan", help="dissect a generator and rank its units by causal effect",
                       description=" ".join(__doc__.split()))
    from dissect_kernels.cli.gan_common import add_generator_args
    add_generator_args(p)
    p.add_argument("--concept", default=None, help="concept for the ACE ranking (default: the first "
                                                   "non-background class)")
    p.add_argument("--num-samples", type=int, default=160, help="generated samples to dissect (default 160)")
    p.add_argument("--ace-samples", type=int, default=32, help="samples for the ACE ranking (default 32)")
    p.add_argument("--batch-size", type=int, default=32, help="samples per batch (default 32)")
    p.add_argument("--seed", type=int, default=0, help="z of sample i depends only on (seed, i) (default 0)")
    p.add_argument("--convention", default="exact", choices=["exact", "gandissect"],
                   help="exact (default: exact quantiles) or gandissect (GAN Dissection's sketch and "
                        "detector rule)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: the generator's device)")
    p.add_argument("--backend", default="auto", choices=["auto", "cpu", "cuda", "triton", "reference"],
                   help="tally kernel backend (default: auto)")
    p.add_argument("--top-k", type=int, default=None, help="exemplars per unit (default: the convention's)")
    p.add_argument("--quantile-mode", default=None, choices=["auto", "exact", "sketch"],
                   help="pass-1 quantiles; 'sketch' keeps memory flat in --num-samples "
                        "(default: auto for --convention exact, sketch for gandissect)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--analysis-samples", type=int, default=16,
                   help="samples for the context map and the artifact units (default 16)")
    p.add_argument("--artifact-score", help="'module.path:callable' images -> [B] artifact score (default "
                                            "with the shipped generator: its grey-haze score)")
    p.add_argument("--annotations", type=Path, help="per-sample artifact scores, CSV 'sample,score'")
    p.add_argument("--real", type=Path, help="folder of real images for the generated-vs-real statistics "
                                             "(default with the shipped generator: its real images)")
    p.add_argument("--skip-analyses", action="store_true",
                   help="only the dissection and ACE: no context, artifact or generated-vs-real pages")
    from dissect_kernels.cli.common import add_run_args
    from dissect_kernels.cli.gan_analyses import add_subcommands
    add_run_args(p, data=False)
    p.set_defaults(run=run_gan)
    add_subcommands(p)
    return p


def _load(args):
    """(generator, layer, segmenter) from the flags, checked before any sample is drawn."""
    from dissect_kernels.cli.gan_common import load_gan
    return load_gan(args)


def _ace_images(gen, layer, units: int, value, z) -> dict:
    """Generated images of a few samples: unedited, and with each unit ablated / inserted."""
    from dissect_kernels.intervene import intervene
    sets = torch.arange(units)[:, None]
    with torch.no_grad():
        return {"original": gen(z),
                "ablated": intervene(gen, layer, sets, z, mode="ablate", chunk_size=8),
                "inserted": intervene(gen, layer, sets, z, mode="insert", values=value.to(z.device),
                                      chunk_size=8)}


def run_gan(args) -> int:
    """Dissect, rank units by ACE for one concept, write results + the report site (with ace.html) once."""
    from dissect_kernels.cli.common import check_device, prepare_out
    from dissect_kernels.generated import segmenter_info
    from dissect_kernels.io.lock import locked
    from dissect_kernels.report.ace_page import ACE_FILE
    from dissect_kernels.report.site import INDEX_FILE

    t0 = time.perf_counter()
    check_device(args.device)
    gen, spec, seg = _load(args)
    names = segmenter_info(seg)[1]
    concept = args.concept if args.concept is not None else names[1]
    if concept not in names:
        raise SystemExit(f"--concept {concept!r} is not one of the segmenter's classes {names}")
    prepare_out(args.out, DEFAULT_OUT)
    device = torch.device(args.device) if args.device else None
    gen = gen.to(device) if device is not None else gen
    with locked(args.out):
        result, ranking = _dissect_and_rank(args, gen, spec, seg, concept, device)
        analyses = _write(args, gen, spec, seg, concept, device, result, ranking)
    lr, top = result.layers[spec.key], ranking.order[:5].tolist()
    print(f"{spec.key}: {lr.num_detectors}/{lr.num_units} units are detectors; top units by ACE on {concept}: "
          f"{top} (ACE {[round(float(ranking.ace[u]), 3) for u in top]})")
    from dissect_kernels.report.gan_analyses import PAGES, summary
    for kind, (data, _) in analyses.items():
        print(f"{PAGES[kind][2]}: {summary(kind, data)}")
    pages = ", ".join([ACE_FILE] + [PAGES[k][0] for k in analyses])
    print(f"report:  {(args.out / INDEX_FILE).resolve()} (with {pages}) in {time.perf_counter() - t0:.1f} s")
    return 0


def _dissect_and_rank(args, gen, spec, seg, concept, device):
    """The GAN dissection of the layer and the single-unit ACE ranking (both checkpointed)."""
    from dissect_kernels.ace import rank_units_by_ace
    from dissect_kernels.generator import dissect_generator
    progress = not args.quiet
    result = dissect_generator(gen, spec, seg, num_samples=args.num_samples, seed=args.seed,
                               convention=args.convention, batch_size=args.batch_size, device=device,
                               checkpoint_dir=args.out, progress=progress, backend=args.backend,
                               top_k=args.top_k, quantile_mode=args.quantile_mode, resume=not args.fresh)
    t1 = time.perf_counter()
    ranking = rank_units_by_ace(gen, spec, seg, concept, num_samples=args.ace_samples, seed=args.seed,
                                batch_size=min(args.batch_size, 16), device=device, progress=progress,
                                checkpoint_dir=args.out, resume=not args.fresh)
    result.timing["ace"] = time.perf_counter() - t1
    return result, ranking


def _write(args, gen, spec, seg, concept, device, result, ranking) -> dict:
    """Results, the report site, the ACE page and its before/after strips and the further
    analyses' JSON, pages and strips, all at once; returns the analyses (kind -> (JSON, strips))."""
    from dissect_kernels.generated import make_z_sampler
    from dissect_kernels.generator import generated_exemplars
    from dissect_kernels.report.ace_page import ACE_FILE, ace_page, ace_summary, save_image_strip
    from dissect_kernels.cli.gan_analyses import default_analyses
    from dissect_kernels.report.gan import write_gan
    from dissect_kernels.report.gan_analyses import register_analyses, stage_analyses
    lr = result.layers[spec.key]
    z_of = make_z_sampler(gen, args.seed, None, None, device or next(gen.parameters()).device)
    images = _ace_images(gen, spec, lr.num_units, ranking.value, z_of(torch.arange(min(6, args.ace_samples))))
    top = ranking.order[:5].tolist()
    lr.extra["ace"] = {"concept": concept, "page": ACE_FILE, "samples": ranking.num_samples,
                       "top_units": top, "top_ace": [round(float(ranking.ace[u]), 4) for u in top]}
    strips: dict[int, dict[str, str]] = {}

    def ace_strips(stage) -> None:
        original = save_image_strip(stage, "images/ace/original.png", images["original"])
        for u in range(lr.num_units):
            strips[u] = {"original": original}
            for kind in ("ablated", "inserted"):
                strips[u][kind] = save_image_strip(stage, f"images/ace/{concept}_unit_{u:04d}_{kind}.png",
                                                   images[kind][u])

    exemplars = generated_exemplars(gen, seg, result, z_of, args.batch_size, [spec])
    page = lambda stage: ace_page(stage, lr, ranking, concept, unit_base=result.unit_base, strips=strips)  # noqa: E731
    t1 = time.perf_counter()
    analyses = {} if args.skip_analyses else default_analyses(args, gen, spec, seg, concept, ranking, device)
    result.timing["analyses"] = time.perf_counter() - t1

    def register(site) -> None:
        site.add(ACE_FILE, f"ACE on {concept}", page, section="Causal effects",
                 summary=ace_summary(ranking, concept, result.unit_base))
        register_analyses(site, analyses)

    def all_strips(stage) -> None:
        ace_strips(stage)
        stage_analyses(stage, analyses)
    write_gan(args.out, result, exemplars, strips=all_strips, register=register)
    return analyses
