"""`dissect-kernels ablate`: classifier unit ablation (davidbau/dissect's per-class experiment).
Units of one layer are ranked per class by the balanced-accuracy drop when each is zeroed alone
on the rank split (train); then each class's top-N units, and all but its top N, are zeroed on
the eval split (val). With no arguments: the embedded SmallCNN (36 multi-label concept-presence
outputs) on a fresh synthetic dataset, layer conv4. Writes ablation.safetensors / .csv / .json
and the report site: index.html and ablation.html (dissect_kernels.report.ablation)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from dissect_kernels.cli.common import (add_input_args, add_run_args, check_device, load_model, load_weights,
                                       one_line, open_dataset, prepare_out)
from dissect_kernels.engine import dataset_identity
from dissect_kernels.io.lock import locked

DEFAULT_OUT = "ablation_results"
DEFAULT_DATASET = "synthetic:300"
DEFAULT_TOP_N = (1, 2, 3, 4, 5, 20, 64, 128, 256)
CHUNK_BYTES = 448 << 20   # bound on one replicated layer output (edited copies of a batch)
CACHE_BYTES = 1 << 30     # a split's decoded batches up to this size are kept for later passes


def parse_top_n(text: str) -> tuple[int, ...]:
    """'1,2,5' -> (1, 2, 5): distinct positive ints, ascending (argparse type)."""
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers like "
                                         f"'1,5,20', got {text!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers like "
                                         f"'1,5,20', got {text!r}")
    return tuple(sorted(set(vals)))


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the `ablate` subcommand to an argparse subparsers object."""
    p = sub.add_parser("ablate", help="per-class accuracy of a classifier with units ablated",
                       description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--model", help="'module.path:factory' returning a multi-label classifier "
                                   "(nn.Module, one logit per target; default: the embedded SmallCNN)")
    p.add_argument("--weights", help="state dict (.safetensors or a torch file) for --model, or for "
                                     "the embedded SmallCNN's architecture without --model")
    p.add_argument("--targets", help="comma-separated concept names of the model's outputs, in order: "
                                     "output k predicts 'concept k is present in the image' (default "
                                     "for the embedded model: its 36 training targets)")
    p.add_argument("--layer", help="module whose units are ablated (zeroed everywhere), e.g. conv4 "
                                   "(default for the embedded model: conv4; required with --model)")
    p.add_argument("--dataset", default=DEFAULT_DATASET,
                   help="'broden:PATH' (or PATH) of a Broden-format copy, or 'synthetic[:N]' to write "
                        f"N synthetic images under --out (default: {DEFAULT_DATASET})")
    add_input_args(p)
    add_run_args(p)
    p.add_argument("--seed", type=int, default=1,
                   help="seed of the synthetic dataset (default 1: images the default model never "
                        "saw in training, which used seed 0)")
    p.add_argument("--max-images", type=int, help="use only the first N images of the dataset")
    p.add_argument("--rank-split", default="train",
                   help="dataset split on which units are ranked by single-unit ablation (default train)")
    p.add_argument("--eval-split", default="val",
                   help="dataset split on which top-N / all-but-top-N are evaluated (default val)")
    p.add_argument("--top-n", type=parse_top_n, default=DEFAULT_TOP_N, metavar="N,N,...",
                   help="numbers of top units to ablate, comma-separated (default "
                        f"{','.join(map(str, DEFAULT_TOP_N))}; N beyond the layer's units means all)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run_ablate)
    return p


class _Targets(torch.utils.data.Dataset):
    """(image, multi-hot presence of the target concepts) for some rows of a BrodenDataset."""

    def __init__(self, ds, rows: list[int], concept_ids: list[int]):
        self.ds, self.rows = ds, rows
        self.pos = {c: k for k, c in enumerate(concept_ids)}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        item = self.ds[self.rows[i]]
        y = torch.zeros(len(self.pos), dtype=torch.int64)
        for c in set(item["labels"].unique().tolist()) | set(item["image_labels"].tolist()):
            if c in self.pos:
                y[self.pos[c]] = 1
        return item["image"], y


class _Replay:
    """Iterates a DataLoader; the first complete pass is kept in memory (if its tensors fit in
    max_bytes) and replayed, so later passes over a small split skip decoding."""

    def __init__(self, loader, max_bytes: int = CACHE_BYTES):
        self.loader, self.max_bytes, self.batches = loader, max_bytes, None

    def __iter__(self):
        if self.batches is not None:
            yield from self.batches
            return
        kept, size = [], 0
        for x, y in self.loader:
            size += x.numel() * x.element_size() + y.numel() * y.element_size()
            if kept is not None:
                kept = kept + [(x, y)] if size <= self.max_bytes else None
            yield x, y
        self.batches = kept


def _model(args):
    """(model, layer, target names) from the flags, checked before any data is written."""
    from dissect_kernels import hooks
    from dissect_kernels.models import default_model_info, load_default_model

    if args.model:
        model = load_model(args.model, args.weights)
        if not args.layer:
            raise SystemExit("--layer is required with --model (e.g. --layer layer4)")
        if not args.targets:
            raise SystemExit("--targets is required with --model (the concept names of its outputs)")
    else:
        model = load_default_model()
        if args.weights:
            load_weights(model, args.weights, "the embedded", "SmallCNN")
    targets = ([t.strip() for t in args.targets.split(",") if t.strip()] if args.targets
               else list(default_model_info()["targets"]))
    layer = args.layer or "conv4"
    try:
        hooks.get_module(model, layer)
    except LookupError as err:
        raise SystemExit(f"--layer: {one_line(err)}") from None
    model.eval()
    if args.device:
        check_device(args.device)
        model = model.to(torch.device(args.device))
    elif torch.cuda.is_available():
        model = model.cuda()
    return model, layer, targets


def _loaders(args, ds, targets):
    """(rank dataset, eval dataset, their loaders) for the two splits."""
    names = list(ds.concept_names)
    missing = [t for t in targets if t not in names]
    if missing:
        raise SystemExit(f"--targets {missing} are not concepts of the dataset (it has "
                         f"{', '.join(n for n in names[1:][:40])}{' ...' if len(names) > 41 else ''})")
    ids = [names.index(t) for t in targets]
    out = []
    for flag, split in (("--rank-split", args.rank_split), ("--eval-split", args.eval_split)):
        rows = [i for i, s in enumerate(ds.splits) if s == split]
        if not rows:
            raise SystemExit(f"{flag} {split!r}: the dataset has no images in that split "
                             f"(its splits: {sorted(set(ds.splits))})")
        data = _Targets(ds, rows, ids)
        out.append((data, _Replay(torch.utils.data.DataLoader(data, batch_size=args.batch_size))))
    return out


def _chunk_size(model, layer, x, batch_size: int) -> int:
    """Unit sets per forward pass so that one replicated layer output stays near CHUNK_BYTES
    (intervene reruns the layers before `layer` once per chunk: bigger chunks, fewer reruns)."""
    from dissect_kernels import hooks
    with torch.no_grad():
        per_sample = hooks.run_layers(model, x, [layer])[layer][0].numel() * 4
    return max(1, CHUNK_BYTES // max(1, per_sample * batch_size))


def print_table(res, names, rows, n_show: int = 12) -> None:
    """The classes whose balanced accuracy drops most with their top units ablated."""
    ns = res.top_n.tolist()
    cols = ns[:3]
    key = f"top{cols[-1]}_balanced"
    order = sorted(range(len(names)), key=lambda c: rows[c][key] - rows[c]["baseline_balanced"])[:n_show]
    head = "".join(f"{'top' + str(n):>8}" for n in cols) + "".join(f"{'allbut' + str(n):>9}" for n in cols)
    print(f"\nbalanced accuracy (eval split), {len(order)} of {len(names)} classes with the largest "
          f"drop at N={cols[-1]}:\n  {'class':<16}{'pos':>5}{'base':>7}{head}  top units")
    for c in order:
        r = rows[c]
        vals = "".join(f"{r[f'top{n}_balanced']:8.3f}" for n in cols)
        vals += "".join(f"{r[f'allbut{n}_balanced']:9.3f}" for n in cols)
        print(f"  {names[c][:16]:<16}{r['positives']:>5}{r['baseline_balanced']:7.3f}{vals}  "
              f"{' '.join(r['top_units'].split()[:3])}")


def run_ablate(args) -> int:
    """Rank units on the rank split, evaluate top-N / all-but-top-N on the eval split, write files."""
    from dissect_kernels.ablation import classifier_ablation
    from dissect_kernels.report.ablation import build_tables, write_ablation

    t0 = time.perf_counter()
    if args.batch_size < 1:
        raise SystemExit(f"--batch-size must be a positive integer, got {args.batch_size}")
    model, layer, names = _model(args)
    if not args.model:
        print("ablating units of the embedded default model (a small CNN predicting which of "
              f"{len(names)} concepts an image contains); see --help to use your own")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    out = prepare_out(Path(args.out), Path(DEFAULT_OUT))
    try:
        ds = open_dataset(args.dataset, out, args.seed, args.max_images, image_size=args.image_size,
                          normalize=args.normalize, strict=args.strict)
    except ValueError as err:
        raise SystemExit(f"--dataset {args.dataset!r}: {err}") from None
    (rank_data, rank_loader), (eval_data, eval_loader) = _loaders(args, ds, names)
    x = rank_data[0][0][None].to(device)
    with torch.no_grad():
        probe = model(x)
    if probe.dim() != 2 or probe.shape[1] != len(names):
        raise SystemExit(f"the model outputs shape {tuple(probe.shape)} but {len(names)} targets were "
                         "given: it must output one logit per target, [B, len(targets)]")
    common = dict(num_classes=len(names), progress=not args.quiet, multilabel=True,
                  chunk_size=_chunk_size(model, layer, x, args.batch_size), checkpoint_dir=out,
                  resume=not args.fresh)
    data = {"dataset": dataset_identity(ds), "targets": names, "batch_size": args.batch_size}
    t1 = time.perf_counter()
    with locked(out):
        # Rank on the rank split (its own top-N pass is kept to N=1: the eval split is what counts).
        rank = classifier_ablation(model, layer, rank_loader, top_n=(1,), checkpoint_name="ablate-rank",
                                   checkpoint_key={**data, "split": args.rank_split}, **common)
        res = classifier_ablation(model, layer, eval_loader, top_n=args.top_n, ranking=rank.ranking,
                                  checkpoint_name="ablate-eval",
                                  checkpoint_key={**data, "split": args.eval_split}, **common)
        t2 = time.perf_counter()
        meta = {"model": args.model or "embedded SmallCNN (dissect_kernels.models.load_default_model)",
                "layer": layer, "units": int(rank.units.numel()), "dataset": args.dataset,
                "dataset_root": str(ds.root), "rank_split": args.rank_split, "eval_split": args.eval_split,
                "rank_images": rank.num_samples, "eval_images": res.num_samples,
                "top_n": res.top_n.tolist(), "decision": "multi-label: logit > 0",
                "seconds": {"ablation": round(t2 - t1, 2)}}
        paths = write_ablation(out, res, rank, names, res.positives, meta)
    print_table(res, names, build_tables(res, rank, names, res.positives)[0])
    print(f"\nresults: {', '.join(str(p) for p in paths[:3])}")
    print(f"report:  {(out / 'index.html').resolve()}  ({time.perf_counter() - t0:.1f} s)")
    return 0
