"""This engine against a reference implementation, in one process, on the same activations and
labels: agreement (IoU per unit and concept, best labels, thresholds) and the speed ratio.

The reference is your own checkout; nothing is vendored or downloaded:
    python benchmarks/vs_reference.py --netdissect PATH     # davidbau/dissect (or $DK_NETDISSECT_DIR)
    python benchmarks/vs_reference.py --ndl PATH            # NetDissect-Lite (or $DK_NDL_DIR)

For each case (a synthetic Broden-format dataset per seed, a model, a layer) it collects the
layer's activations once, then
- davidbau/dissect: runs its upsampler, tally_quantile (RunningQuantile over the upsampled
  maps), tally_conditional_mean and iou_from_conditional_indicator_mean as its dissection
  experiment does (labels as the segmentation, image-level labels as whole-image planes);
  then this engine's "dissect" convention with the reference's thresholds fed in, and with its
  own exact thresholds;
- NetDissect-Lite: runs its FeatureOperator.quantile_threshold (its QuantileVector sketch) and
  FeatureOperator.tally (imresize per unit and image, its labels read by its own loader) on
  the dataset's files; then this engine's "netdissect-lite" convention (and the same with the
  stale-category-flag option) with NDL's thresholds fed in, and with its own thresholds. One
  dataset per seed has images without any label PNG (where NDL's stale flag matters).
NetDissect-Lite is Python-2-era code: a few shims make it run on Python 3 / NumPy 2 / recent
SciPy without changing what it computes (scipy.misc.imresize and imread rebuilt on Pillow as
SciPy had them; NumPy's removed NaN alias; a list index rewritten as a tuple; its multiprocess
prefetcher, whose generator cannot end under Python 3, replaced by a sequential loop over its
own per-image reader). davidbau/dissect needs stand-ins only for modules it imports but this
path does not use (torchvision.transforms, statsmodels).

Prints one block per case and a summary; --json writes everything.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import importlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dissect_kernels as dk  # noqa: E402
from dissect_kernels.conventions import get_convention  # noqa: E402
from dissect_kernels.data import BrodenDataset, make_synthetic_broden  # noqa: E402


# ------------------------------------------------------------------------------- cases
def models() -> list[tuple[str, torch.nn.Module, list[str]]]:
    """The shipped SmallCNN (trained) and a randomly initialised ResNet-18, with their layers."""
    from dissect_kernels.models import load_default_model
    from dissect_kernels.models.resnet import resnet18
    torch.manual_seed(0)
    return [("small_cnn", load_default_model().eval(), ["conv3", "conv4"]),
            ("resnet18 (random)", resnet18(num_classes=10).eval(), ["layer3"])]


def make_dataset(folder: Path, seed: int, images: int, unlabelled: float) -> Path:
    """A synthetic Broden-format dataset; with unlabelled > 0, that share of images (never the
    first) loses every label PNG and keeps only its image-level labels."""
    root = make_synthetic_broden(folder / f"broden-{seed}-{unlabelled}", n_images=images, seed=seed)
    if unlabelled:
        rng = np.random.default_rng(seed)
        path = root / "index.csv"
        rows = list(csv.DictReader(path.open()))
        for row in rows[1:]:
            if rng.random() < unlabelled:
                for key in ("color", "object", "material", "part"):
                    row[key] = ""
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return root


def activations(model, layer: str, dataset, batch: int = 16) -> torch.Tensor:
    """[N, U, h, w] float32 maps of `layer` over the dataset, in dataset order."""
    from dissect_kernels.hooks import get_module
    out = []
    handle = get_module(model, layer).register_forward_hook(lambda m, i, o: out.append(o.detach().float()))
    with torch.no_grad():
        for s in range(0, len(dataset), batch):
            model(torch.stack([dataset[i]["image"] for i in range(s, min(len(dataset), s + batch))]))
    handle.remove()
    return torch.cat(out)


def labels_of(dataset, keep: torch.Tensor | None = None):
    """(labels [N, L, H, W] int32, image_labels [N, M] int32) as this engine reads them, with
    concepts outside `keep` (an excluded category's) zeroed."""
    items = [dataset.item(i, fields=("labels",)) for i in range(len(dataset))]
    labels = torch.stack([torch.as_tensor(it["labels"]) for it in items]).int()
    image = torch.stack([torch.as_tensor(it["image_labels"]) for it in items]).int()
    if keep is not None:
        labels = torch.where(keep[labels.long()], labels, 0)
        image = torch.where(keep[image.long()], image, 0)
    return labels, image


# ------------------------------------------------------------------------------- this engine
def engine_tally(acts, labels, image, dataset, convention, thresholds=None, batch: int = 16):
    """(IoUTally, thresholds, seconds): exact quantiles read the convention's way (unless
    thresholds are given), then the fused tally, over the same activations and labels."""
    conv = get_convention(convention)
    t0 = time.perf_counter()
    if thresholds is None:
        thresholds = engine_thresholds(acts, labels.shape[-2:], conv, batch)
    tally = dk.IoUTally(acts.shape[1], int(dataset.num_concepts), torch.as_tensor(dataset.category_of),
                        num_categories=int(dataset.num_categories), convention=conv)
    for s in range(0, acts.shape[0], batch):
        tally.update(acts[s:s + batch], thresholds, labels[s:s + batch], image[s:s + batch])
    return tally, thresholds, time.perf_counter() - t0


def engine_thresholds(acts, size, conv, batch: int) -> torch.Tensor:
    upsampled = conv.quantile_population == "upsampled"
    per = int(size[0] * size[1]) if upsampled else acts.shape[2] * acts.shape[3]
    sketch = dk.QuantileSketch(acts.shape[1], mode="exact", expected_count=acts.shape[0] * per,
                               min_quantile=min(conv.quantile, 0.99))
    for s in range(0, acts.shape[0], batch):
        a = acts[s:s + batch]
        sketch.update(dk.upsample(a, tuple(size), convention=conv) if upsampled else a)
    t = sketch.quantile(conv.readout_probability(conv.quantile, sketch.count))
    return t.double() if conv.threshold_dtype == "float64" else t.float()


def engine_labels(tally, dataset) -> tuple[list, np.ndarray]:
    label, best = tally.best()
    names = [dataset.concept_names[c] if c >= 0 else None for c in label.tolist()]
    return names, best.numpy()


# ------------------------------------------------------------------------------- davidbau/dissect
def load_netdissect(path: Path):
    """netdissect's modules from a checkout, with stand-ins for imports this path never uses
    (removed again once its modules are loaded, so nothing else sees them)."""
    stand_ins: dict = {}
    if importlib.util.find_spec("torchvision") is None:
        tv = types.ModuleType("torchvision")
        tv.transforms = types.SimpleNamespace(Resize=type("Resize", (), {}), RandomCrop=type("RandomCrop", (), {}),
                                              RandomResizedCrop=type("RandomResizedCrop", (), {}),
                                              CenterCrop=type("CenterCrop", (), {}))
        stand_ins.update({"torchvision": tv, "torchvision.transforms": tv.transforms})
    if importlib.util.find_spec("statsmodels") is None:
        tools = types.ModuleType("statsmodels.stats.correlation_tools")
        tools.cov_nearest = tools.corr_nearest = None
        stand_ins.update({name: types.ModuleType(name) for name in ("statsmodels", "statsmodels.stats")})
        stand_ins["statsmodels.stats.correlation_tools"] = tools
    sys.modules.update(stand_ins)
    sys.path.insert(0, str(path))
    try:
        nd = types.SimpleNamespace(**{m: importlib.import_module(f"netdissect.{m}")
                                      for m in ("upsample", "tally", "runningstats", "pbar")})
    finally:
        for name in stand_ins:
            sys.modules.pop(name, None)
    nd.pbar.verbose(False) if hasattr(nd.pbar, "verbose") else None
    return nd


def run_netdissect(nd, acts, labels, image, q: float = 0.99):
    """Its dissection experiment's statistics: (thresholds [U], IoU [conditions, U], seconds)."""
    N, U, h, w = acts.shape
    H, W = labels.shape[-2:]
    seg = torch.cat([labels, image[:, :, None, None].expand(N, image.shape[1], H, W)], 1).long()
    data = torch.utils.data.TensorDataset(acts, seg)
    upfn = nd.upsample.upsampler((H, W), data_shape=(h, w))

    def samples(a, s):
        return upfn(a).permute(0, 2, 3, 1).reshape(-1, U)

    t0 = time.perf_counter()
    rq = nd.tally.tally_quantile(samples, data, sample_size=N, batch_size=10, r=8192)
    level = rq.quantiles(q)

    def indicator(a, s):
        return nd.tally.conditional_samples((upfn(a) > level[None, :, None, None]).float(), s)

    cond = nd.tally.tally_conditional_mean(indicator, data, sample_size=N)
    iou = nd.tally.iou_from_conditional_indicator_mean(cond)
    return level, iou, time.perf_counter() - t0, rq


def case_netdissect(nd, name, acts, dataset, out: dict) -> None:
    labels, image = labels_of(dataset)
    level, iou, t_ref, rq = run_netdissect(nd, acts, labels, image)
    given, _, t_given = engine_tally(acts, labels, image, dataset, "dissect", thresholds=level)
    own, own_t, t_own = engine_tally(acts, labels, image, dataset, "dissect")
    ours = given.iou()[:, :iou.shape[0]]
    theirs = iou.t().double()
    ref_best, ref_label = iou.max(0)
    ref_names = [None if math.isnan(float(v)) else dataset.concept_names[int(c)]
                 for v, c in zip(ref_best.tolist(), ref_label.tolist())]
    out[name] = dict(
        units=acts.shape[1], conditions=iou.shape[0],
        iou_max_abs_diff_given=_max_diff(ours, theirs), nan_same=bool(torch.equal(ours.isnan(), theirs.isnan())),
        **_labels(ref_names, engine_labels(given, dataset)[0], "given"),
        **_labels(ref_names, engine_labels(own, dataset)[0], "own"),
        own_threshold_rel_diff=float(((own_t - level).abs() / level.abs().clamp(min=1e-12)).max()),
        sketch_reader_equal=bool(_sketch_reader_equal(rq)),
        seconds_reference=t_ref, seconds_engine_given=t_given, seconds_engine_own=t_own)


def _sketch_reader_equal(rq) -> bool:
    """This engine's reader of a saved rq.npz against the sketch's own quantiles()."""
    from dissect_kernels.io.references import sketch_quantiles
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "rq.npz", **rq.state_dict())
        mine = sketch_quantiles(Path(tmp) / "rq.npz", 0.99)
    return np.array_equal(mine, rq.quantiles(0.99).numpy())


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    both = ~a.isnan() & ~b.isnan()
    return float((a[both] - b[both]).abs().max()) if both.any() else 0.0


def _labels(ref: list, mine: list, tag: str) -> dict:
    same = sum(a == b for a, b in zip(ref, mine))
    diff = [dict(unit=u, reference=a, engine=b) for u, (a, b) in enumerate(zip(ref, mine)) if a != b]
    return {f"same_label_{tag}": same, f"same_label_{tag}_share": same / len(ref), f"label_diffs_{tag}": diff[:20]}


# ------------------------------------------------------------------------------- NetDissect-Lite
def load_ndl(path: Path, data_dir: Path, categories: list[str], top: float = 0.005):
    """NetDissect-Lite's modules from a checkout, on Python 3 / NumPy 2 / recent SciPy: imresize and
    imread rebuilt on Pillow as SciPy had them (mode 'F' bilinear; label PNGs read as int32, the
    values NumPy 1's casting gave its arithmetic), NumPy's NaN alias, its onehot's list index as a tuple, a settings
    module for this dataset, and a sequential stand-in for its multiprocess prefetcher that calls
    its own per-image reader."""
    import scipy.misc
    from PIL import Image
    if not hasattr(np, "NaN"):
        np.NaN = np.nan

    def imresize(arr, size, mode=None):
        assert mode == "F", "only mode 'F' is used by the tally"
        return np.array(Image.fromarray(np.asarray(arr, dtype=np.float32), mode="F")
                        .resize((size[1], size[0]), Image.BILINEAR))

    scipy.misc.imresize = imresize
    # int32: NumPy 1 widened its `green * 256` on uint8 PNGs to uint16; NumPy 2 would overflow
    scipy.misc.imread = lambda fn, *a, **k: np.array(Image.open(fn)).astype(np.int32)
    settings = types.ModuleType("settings")
    settings.__dict__.update(INDEX_FILE="index.csv", DATA_DIRECTORY=str(data_dir), CATAGORIES=categories,
                             QUANTILE=top, IMG_SIZE=224, TALLY_BATCH_SIZE=16, TALLY_AHEAD=4,
                             PARALLEL=1, OUTPUT_FOLDER=str(data_dir / "ndl_out"))
    sys.modules["settings"] = settings
    sys.path.insert(0, str(path))
    for name in [m for m in sys.modules if m.split(".")[0] in ("loader", "feature_operation", "util")]:
        del sys.modules[name]
    fo = importlib.import_module("feature_operation")
    dl = importlib.import_module("loader.data_loader")

    class SequentialPrefetcher(dl.SegmentationPrefetcher):
        """Its prefetcher without the process pool: the same jobs through its prefetch_worker."""

        def __init__(self, segmentation, categories=None, once=True, start=None, end=None,
                     batch_size=4, **_):
            self.segmentation, self.categories, self.batch_size = segmentation, categories, batch_size
            self.indexes = range(start or 0, segmentation.size() if end is None else end)
            self.segmentation_shape = None

        def batches(self):
            jobs = [(j, self.segmentation.__class__, self.segmentation.metadata(j),
                     self.segmentation.filename(j), self.categories, None) for j in self.indexes]
            for s in range(0, len(jobs), self.batch_size):
                yield [dl.prefetch_worker(job) for job in jobs[s:s + self.batch_size]]

    def onehot(self, arr, minlength=None):
        """Its onehot with the index list as a tuple (old NumPy read a list of index arrays as a
        tuple; NumPy 2 reads it as one fancy index on the first axis)."""
        result = np.zeros(arr.shape + (max(minlength or 0, int(np.amax(arr)) + 1),))
        result[tuple(np.indices(arr.shape)) + (arr,)] = 1
        return result

    dl.SegmentationData.onehot = onehot
    fo.SegmentationPrefetcher = SequentialPrefetcher
    return types.SimpleNamespace(fo=fo, dl=dl, settings=settings)


def run_ndl(ndl, acts: np.ndarray, data_dir: Path, categories: list[str]):
    """Its quantile_threshold, its tally loop (tally_job) and its IoU formula:
    (thresholds [U], IoU [U, concepts], best labels [U] names or None, seconds)."""
    t0 = time.perf_counter()
    op = ndl.fo.FeatureOperator.__new__(ndl.fo.FeatureOperator)       # skip its folder/model set-up
    op.data = ndl.dl.SegmentationData(str(data_dir), categories=categories)
    threshold = op.quantile_threshold(acts)
    U, labels, data = acts.shape[1], len(op.data.label), op.data
    both, units = np.zeros((U, labels)), np.zeros(U)
    units_cat, label_counts = np.zeros((U, len(data.category_names()))), np.zeros(labels)
    with contextlib.redirect_stdout(io.StringIO()):
        ndl.fo.FeatureOperator.tally_job((acts, data, threshold, label_counts, units, units_cat, both, 0, data.size()))
    units_cat = np.dot(units_cat, data.labelcat.T)
    iou = both / (units_cat + label_counts[None, :] - both + 1e-10)
    seconds = time.perf_counter() - t0
    primary = data.primary_categories_per_index()
    per_cat = np.array([iou * (primary[np.arange(iou.shape[1])] == c)[None, :] for c in range(len(categories))])
    label = per_cat.argmax(2)
    score = np.take_along_axis(per_cat, label[:, :, None], 2)[:, :, 0]
    best_cat = score.argsort(0)[::-1][0]
    names = [data.name(None, int(label[best_cat[u], u])) or None for u in range(U)]   # "" : label 0, none
    return threshold, iou, names, seconds


def case_ndl(ndl_path: Path, name: str, acts, dataset, root: Path, out: dict) -> None:
    conv = get_convention("netdissect-lite")
    categories = [c for c in dataset.category_names if c not in conv.excluded_categories]
    ndl = load_ndl(ndl_path, root, categories)      # its settings.QUANTILE: the top 0.5 %
    with contextlib.redirect_stdout(io.StringIO()):
        threshold, iou, ref_names, t_ref = run_ndl(ndl, acts.numpy(), root, categories)
    keep = torch.tensor([c in categories for c in dataset.category_names])[torch.as_tensor(dataset.category_of)]
    labels, image = labels_of(dataset, keep)
    given = torch.as_tensor(threshold)
    row = dict(units=acts.shape[1], seconds_reference=t_ref)
    for tag, option in (("given", "netdissect-lite"), ("given_stale_flag", "netdissect-lite[stale_category_flag=true]")):
        tally, _, t = engine_tally(acts, labels, image, dataset, option, thresholds=given)
        ours = tally.iou()[:, :iou.shape[1]].double()
        theirs = torch.as_tensor(iou)
        row[f"iou_max_abs_diff_{tag}"] = _max_diff(ours[:, 1:], theirs[:, 1:])      # concept 0 is "-"
        row[f"seconds_engine_{tag}"] = t
        row.update(_labels(ref_names, engine_labels(tally, dataset)[0], tag))
    own, own_t, t_own = engine_tally(acts, labels, image, dataset, "netdissect-lite")
    row.update(_labels(ref_names, engine_labels(own, dataset)[0], "own"), seconds_engine_own=t_own,
               own_threshold_rel_diff=float(((own_t.double() - given).abs() / given.abs().clamp(min=1e-12)).max()))
    out[name] = row


# ------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--netdissect", default=os.environ.get("DK_NETDISSECT_DIR"),
                    help="a checkout of davidbau/dissect (or $DK_NETDISSECT_DIR)")
    ap.add_argument("--ndl", default=os.environ.get("DK_NDL_DIR"),
                    help="a checkout of CSAILVision/NetDissect-Lite (or $DK_NDL_DIR)")
    ap.add_argument("--seeds", type=int, default=3, help="synthetic datasets, one per seed (default 3)")
    ap.add_argument("--images", type=int, default=48, help="images per dataset (default 48)")
    ap.add_argument("--json", help="write every number to this file")
    args = ap.parse_args(argv)
    if not args.netdissect and not args.ndl:
        ap.error("give --netdissect PATH and/or --ndl PATH (your own checkouts; nothing is downloaded)")
    out: dict = {"netdissect": {}, "netdissect-lite": {}}
    nd = load_netdissect(Path(args.netdissect)) if args.netdissect else None
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            root = make_dataset(Path(tmp), seed, args.images, unlabelled=0.25 if seed % 2 else 0.0)
            dataset = BrodenDataset(root)
            for model_name, model, layers in models():
                for layer in layers:
                    acts = activations(model, layer, dataset)
                    name = f"seed {seed} {model_name} {layer}"
                    if nd is not None:
                        case_netdissect(nd, name, acts, dataset, out["netdissect"])
                    if args.ndl:
                        case_ndl(Path(args.ndl), name, acts, dataset, root, out["netdissect-lite"])
    print(summary(out))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=float))
    return 0


def summary(out: dict) -> str:
    """One line per case and a total per reference."""
    lines = []
    for ref, cases in out.items():
        if not cases:
            continue
        lines.append(f"## {ref}")
        for name, r in cases.items():
            diffs = {k[len("iou_max_abs_diff"):].strip("_") or "given": v for k, v in r.items()
                     if k.startswith("iou_max_abs_diff")}
            shares = {k[len("same_label_"):-len("_share")]: v for k, v in r.items()
                      if k.startswith("same_label_") and k.endswith("_share")}
            engine = r["seconds_engine_own"]          # its own quantiles + tally, like the reference's
            lines.append(f"{name}: {r['units']} units; max |dIoU| " +
                         ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()) + "; same label " +
                         ", ".join(f"{k} {v:.1%}" for k, v in shares.items()) +
                         f"; quantiles + tally: reference {r['seconds_reference']:.2f} s, engine {engine:.3f} s "
                         f"({r['seconds_reference'] / max(engine, 1e-9):.0f}x)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
