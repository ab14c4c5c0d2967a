"""`dissect-kernels paint --run DIR`: serve the interactive painting page (GANPaint) for a
finished `dissect-kernels gan` run: pick a concept, paint a region of a generated sample, add
or remove the concept there and see it regenerated. Local only (127.0.0.1) unless --host."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

DEFAULT_PORT = 8765


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the `paint` subcommand to an argparse subparsers object."""
    p = sub.add_parser("paint", help="serve the interactive painting page for a GAN dissection run",
                       description=" ".join(__doc__.split()))
    p.add_argument("--run", dest="run_dir", metavar="DIR", type=Path, required=True, help="folder written by `dissect-kernels gan --out`")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: a free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--generator", help="'module.path:factory' of the run's generator (default: the shipped tiny GAN)")
    p.add_argument("--weights", help="state dict for --generator (or for the shipped tiny GAN's architecture)")
    p.add_argument("--layer", default=None, help="the dissected layer to paint (default: the run's first)")
    p.add_argument("--value-samples", type=int, default=64,
                   help="samples for each unit's insertion value k, its 0.99 quantile (default 64)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: the generator's device)")
    p.add_argument("--verbose", action="store_true", help="log every request")
    p.set_defaults(run=run_paint)
    return p


def _generator(args):
    """The generator named by the flags (None: load_painter's shipped default)."""
    from dissect_kernels.cli.common import load_model, load_weights
    if args.generator:
        return load_model(args.generator, args.weights, "--generator").eval()
    if args.weights:
        from dissect_kernels.models.tiny_gan import load_default_generator
        gen = load_default_generator()
        load_weights(gen, args.weights, "the shipped", "tiny GAN")
        return gen
    return None


def run_paint(args) -> int:
    """Load the run and its generator, time one edit, serve until interrupted."""
    from dissect_kernels.cli.common import check_device
    from dissect_kernels.engine.layers import parse_layer
    from dissect_kernels.paint.edit import PaintEdit
    from dissect_kernels.paint.server import make_server
    from dissect_kernels.paint.session import load_painter

    if not 0 <= args.port <= 65535:
        raise SystemExit(f"--port must lie in [0, 65535], got {args.port}")
    if args.value_samples < 1:
        raise SystemExit(f"--value-samples must be at least 1, got {args.value_samples}")
    check_device(args.device)
    gen = _generator(args)
    if gen is not None and args.device:
        gen = gen.to(args.device)
    layer = parse_layer(args.layer) if args.layer else None
    painter = load_painter(args.run_dir, gen, layer, value_samples=args.value_samples, device=args.device)
    import torch
    first = next(iter(painter.concepts.values()), None)
    t0 = time.perf_counter()
    painter.render(0, [PaintEdit(first.units if first else [0], torch.ones(painter.grid), "add")])
    ms = (time.perf_counter() - t0) * 1000
    try:
        server = make_server(painter, args.host, args.port, quiet=not args.verbose)
    except OSError as err:
        raise SystemExit(f"--host {args.host} --port {args.port}: cannot listen there ({err.strerror or err}); "
                         "--port 0 picks a free port") from None
    host, port = server.server_address[:2]
    print(f"painting {painter.spec.key} ({painter.num_units} units, {len(painter.concepts)} concepts: "
          f"{', '.join(painter.concepts)}); one edit regenerates in {ms:.0f} ms")
    if host not in ("127.0.0.1", "localhost"):
        print(f"warning: bound to {host}: anyone who can reach this address can use the page")
    print(f"open http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}/  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
