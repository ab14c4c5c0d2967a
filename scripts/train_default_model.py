"""Train the embedded default model: SmallCNN on a seeded synthetic Broden dataset, predicting
which objects, parts, colours, materials and textures an image contains (multi-label), so
that localised concept detectors emerge in conv1..conv4. Writes dissect_kernels/assets/
default_cnn.safetensors + default_cnn.json, then reports which conv4 units detect what.

The shipped weights came from two stages (both recorded in default_cnn.json):
    python scripts/train_default_model.py --out-dir /tmp/stage1            # 10 epochs, lr 3e-3
    python scripts/train_default_model.py --init /tmp/stage1/default_cnn.safetensors \
        --epochs 8 --lr 2e-3                                               # writes the assets
"""
from __future__ import annotations

import argparse
import json
import sys
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import dissect_kernels as dk
from dissect_kernels.data import BrodenDataset, make_synthetic_broden, synthetic_concepts
from dissect_kernels.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from dissect_kernels.models import SmallCNN

TARGET_CATEGORIES = ("object", "part", "color", "material", "texture")
ROOT = Path(__file__).resolve().parent.parent


def load_arrays(ds: BrodenDataset, targets: list[int]):
    """All images (uint8 [N,3,S,S]), multi-hot targets [N,T], label layers, image labels."""
    pos = {c: t for t, c in enumerate(targets)}
    imgs, ys, labs, ilabs = [], [], [], []
    for i in range(len(ds)):
        item = ds[i]
        imgs.append(torch.from_numpy(ds.load_image_uint8(i)).permute(2, 0, 1))
        y = torch.zeros(len(targets))
        for c in set(item["labels"].unique().tolist()) | set(item["image_labels"].tolist()):
            if c in pos:
                y[pos[c]] = 1
        ys.append(y)
        labs.append(item["labels"])
        ilabs.append(item["image_labels"])
    return torch.stack(imgs), torch.stack(ys), torch.stack(labs), torch.stack(ilabs)


def normalise(x_uint8: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x_uint8.float() / 255 - mean) / std


def conv_features(model: SmallCNN, x: torch.Tensor, layer: str) -> torch.Tensor:
    out = {}
    h = getattr(model, layer).register_forward_hook(lambda m, i, o: out.update(a=o))
    with torch.no_grad():
        model(x)
    h.remove()
    return out["a"]


def unit_ious(model, ds, imgs, labs, ilabs, layer="conv4", q=0.995, batch=100):
    """IoU [U, C] of every unit of `layer` (threshold = q-quantile of its raw featuremap values;
    union restricted to images annotating the concept's category), counted by dk.tally (cpu)."""
    feats = torch.cat([conv_features(model, normalise(imgs[i:i + batch]), layer)
                       for i in range(0, len(imgs), batch)])
    U = feats.shape[1]
    flat = feats.permute(1, 0, 2, 3).reshape(U, -1)
    thr = torch.quantile(flat, q, dim=1) if flat.shape[1] <= 2 ** 24 else flat.kthvalue(int(q * flat.shape[1]), 1).values
    C, K = ds.num_concepts, ds.num_categories
    cat = ds.category_of
    inter = torch.zeros(U, C, dtype=torch.int64)
    act_cat = torch.zeros(U, K, dtype=torch.int64)
    truth = torch.zeros(C, dtype=torch.int64)
    HW = labs.shape[-1] * labs.shape[-2]
    for i in range(0, len(imgs), batch):
        L, IL = labs[i:i + batch], ilabs[i:i + batch]
        r = dk.tally(feats[i:i + batch], thr, L, num_concepts=C, image_labels=IL, backend="cpu")
        inter += r.intersection
        for b in range(L.shape[0]):
            anyl = torch.zeros(C, dtype=torch.int64)
            for c in L[b].unique().tolist():
                anyl[c] = int((L[b] == c).any(0).sum())
            for c in IL[b].tolist():
                anyl[c] = HW
            anyl[0] = 0
            truth += anyl
            present = torch.zeros(K, dtype=torch.bool)
            present[cat[anyl > 0]] = True
            act_cat += r.active[b][:, None] * present[None, :].long()
    union = act_cat[:, cat] + truth[None, :] - inter
    iou = inter.double() / union.clamp(min=1).double()
    iou[:, 0] = 0
    return iou, thr, feats


def check_against_numpy(feats, thr, labs, unit, concept, tally_inter):
    """Own intersection count for one (unit, concept): bilinear half-pixel upsample + strict >."""
    up = F.interpolate(feats[:, unit:unit + 1], size=labs.shape[-2:], mode="bilinear", align_corners=False)
    mask = up[:, 0] > thr[unit]
    own = int((mask & (labs == concept).any(1)).sum())
    return own, int(tally_inter)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n-images", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--init", type=Path, default=None,
                   help="continue from these safetensors weights (a second training stage)")
    p.add_argument("--data-dir", type=Path, default=None, help="default: a temporary directory")
    p.add_argument("--out-dir", type=Path, default=ROOT / "dissect_kernels" / "assets")
    args = p.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stdout.reconfigure(line_buffering=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tmp = None
    if args.data_dir is None:
        tmp = tempfile.TemporaryDirectory()
        args.data_dir = Path(tmp.name)
    t0 = time.time()
    make_synthetic_broden(args.data_dir, n_images=args.n_images, seed=args.seed, image_size=args.image_size)
    ds = BrodenDataset(args.data_dir)
    targets = [c for c, _, cat in synthetic_concepts() if cat in TARGET_CATEGORIES]
    imgs, ys, labs, ilabs = load_arrays(ds, targets)
    is_train = torch.tensor([s == "train" for s in ds.splits])
    t_data = time.time() - t0
    print(f"data: {len(ds)} images ({int(is_train.sum())} train) in {t_data:.1f}s; {len(targets)} targets")

    model = SmallCNN(len(targets))
    history = []
    if args.init is not None:
        from safetensors.torch import load_file
        model.load_state_dict(load_file(str(args.init)))
        prev = args.init.with_suffix(".json")
        if prev.is_file():
            old = json.loads(prev.read_text())["training"]
            history = old.pop("history", []) + [old]
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    tr = torch.nonzero(is_train).flatten()
    va = torch.nonzero(~is_train).flatten()
    steps = args.epochs * ((len(tr) + args.batch_size - 1) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    gen = torch.Generator().manual_seed(args.seed)
    t1 = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = tr[torch.randperm(len(tr), generator=gen)]
        total = 0.0
        for s in range(0, len(perm), args.batch_size):
            idx = perm[s:s + args.batch_size]
            x = normalise(imgs[idx])
            if torch.rand(1, generator=gen).item() < 0.5:
                x = x.flip(3)
            loss = F.binary_cross_entropy_with_logits(model(x), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        acc = evaluate(model, imgs[va], ys[va])
        print(f"epoch {epoch + 1}: train loss {total / len(tr):.4f}  val exact-label acc {acc['accuracy']:.4f}"
              f"  val mean AP-ish (per-target acc) {acc['mean_target_accuracy']:.4f}  {time.time() - t1:.0f}s")
    t_train = time.time() - t1
    model.eval()
    acc = evaluate(model, imgs[va], ys[va])
    per_target = {ds.concept_names[c]: round(a, 4) for c, a in zip(targets, acc["per_target"])}

    from safetensors.torch import save_file
    args.out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(args.out_dir / "default_cnn.safetensors"), metadata={"format": "pt"})
    iou, thr, feats = unit_ious(model, ds, imgs[va], labs[va], ilabs[va])
    best = iou.max(1)
    detectors = []
    for u in torch.argsort(best.values, descending=True).tolist():
        c = int(best.indices[u])
        detectors.append(dict(unit=u, concept=ds.concept_names[c],
                              category=ds.category_names[int(ds.category_of[c])], iou=round(float(best.values[u]), 4)))
    u0 = detectors[0]["unit"]
    c0 = int(best.indices[u0])
    inter_tally = dk.tally(feats, thr, labs[va], num_concepts=ds.num_concepts, backend="cpu").intersection[u0, c0]
    own, tal = check_against_numpy(feats, thr, labs[va], u0, c0, inter_tally)
    info = dict(
        model="dissect_kernels.models.small_cnn:SmallCNN", widths=list(model.widths),
        layers=["conv1", "conv2", "conv3", "conv4"], input_size=args.image_size,
        normalization="imagenet", targets=[ds.concept_names[c] for c in targets],
        target_categories=list(TARGET_CATEGORIES),
        dataset=dict(generator="dissect_kernels.data.make_synthetic_broden", n_images=args.n_images,
                     seed=args.seed, image_size=args.image_size),
        training=dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer="AdamW+OneCycle",
                      loss="multi-label BCE", threads=args.threads, seconds=round(t_train, 1),
                      train_images=len(tr), val_images=len(va),
                      init=None if args.init is None else str(args.init.name), history=history),
        val=dict(exact_label_set_accuracy=round(acc["accuracy"], 4),
                 mean_target_accuracy=round(acc["mean_target_accuracy"], 4), per_target=per_target),
        conv4_units=dict(quantile=0.995, union="category", split="val",
                         detectors_iou_ge_0_04=int((best.values >= 0.04).sum()),
                         detectors_iou_gt_0_2=int((best.values > 0.2).sum()),
                         top=detectors[:40]),
        parameters=sum(p.numel() for p in model.parameters()),
        torch=torch.__version__,
    )
    (args.out_dir / "default_cnn.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"trained in {t_train:.0f}s; val per-target accuracy {acc['mean_target_accuracy']:.4f}, "
          f"exact label set {acc['accuracy']:.4f}")
    print(f"conv4: {info['conv4_units']['detectors_iou_ge_0_04']} units with IoU >= 0.04, "
          f"{info['conv4_units']['detectors_iou_gt_0_2']} with IoU > 0.2")
    for d in detectors[:25]:
        print(f"  unit {d['unit']:3d}  {d['concept']:>16s} ({d['category']})  IoU {d['iou']:.3f}")
    print(f"check: unit {u0} x {ds.concept_names[c0]}: dk.tally intersection {tal}, own (F.interpolate) {own}")
    if tmp is not None:
        tmp.cleanup()


def evaluate(model, imgs, ys, batch=200) -> dict:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(normalise(imgs[i:i + batch])) for i in range(0, len(imgs), batch)]) > 0
    right = pred == ys.bool()
    return dict(accuracy=float(right.all(1).float().mean()), mean_target_accuracy=float(right.float().mean()),
                per_target=right.float().mean(0).tolist())


if __name__ == "__main__":
    main()
