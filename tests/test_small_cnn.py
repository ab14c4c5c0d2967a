"""The shipped default model: loads offline from safetensors, runs, and its conv4 units really
detect synthetic concepts on images it was not trained on (fresh seed)."""
import json

import numpy as np
import pytest
import torch

import dissect_kernels as dk
from dissect_kernels.data import BrodenDataset, make_synthetic_broden
from dissect_kernels.models import DEFAULT_CONFIG, DEFAULT_WEIGHTS, SmallCNN, default_model_info, load_default_model


def test_loads_and_runs():
    model = load_default_model()
    info = default_model_info()
    assert not model.training
    assert DEFAULT_WEIGHTS.stat().st_size < 2 * 2 ** 20
    n = sum(p.numel() for p in model.parameters())
    assert 100_000 <= n <= 300_000 and n == info["parameters"]
    for name in ("conv1", "conv2", "conv3", "conv4"):
        assert isinstance(getattr(model, name), torch.nn.Module)
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    out = model(x)
    assert out.shape == (2, len(info["targets"])) and torch.isfinite(out).all()
    assert not torch.equal(out[0], out[1])


def test_untrained_model_shapes():
    m = SmallCNN(5, (4, 8, 8, 16))
    feats = {}

    def keep(name):
        def hook(mod, inp, out):
            feats[name] = tuple(out.shape)
        return hook
    for name in ("conv1", "conv2", "conv3", "conv4"):
        getattr(m, name).register_forward_hook(keep(name))
    m(torch.randn(1, 3, 112, 112))
    assert feats == {"conv1": (1, 4, 112, 112), "conv2": (1, 8, 56, 56), "conv3": (1, 8, 28, 28),
                     "conv4": (1, 16, 14, 14)}


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """Images the model never saw: another seed."""
    return BrodenDataset(make_synthetic_broden(tmp_path_factory.mktemp("fresh"), n_images=120, seed=12345))


def test_predicts_concepts_on_fresh_images(fresh):
    model, info = load_default_model(), default_model_info()
    targets = [fresh.concept_names.index(t) for t in info["targets"]]
    items = [fresh[i] for i in range(len(fresh))]
    with torch.no_grad():
        pred = model(torch.stack([it["image"] for it in items])) > 0
    truth = torch.zeros_like(pred)
    for b, it in enumerate(items):
        present = set(it["labels"].unique().tolist()) | set(it["image_labels"].tolist())
        truth[b] = torch.tensor([c in present for c in targets])
    acc = (pred == truth).float().mean().item()
    base = max(truth.float().mean().item(), 1 - truth.float().mean().item())
    assert acc > 0.9 and acc > base + 0.05, (acc, base)


def test_conv4_units_detect_concepts(fresh):
    """Dissect conv4 with dk.tally (cpu): several units reach IoU > 0.2 with their concept."""
    model = load_default_model()
    items = [fresh[i] for i in range(len(fresh))]
    x = torch.stack([it["image"] for it in items])
    labels = torch.stack([it["labels"] for it in items])
    image_labels = torch.stack([it["image_labels"] for it in items])
    acts = {}
    model.conv4.register_forward_hook(lambda m, i, o: acts.update(a=o))
    with torch.no_grad():
        model(x)
    a = acts["a"]
    U = a.shape[1]
    thr = torch.quantile(a.permute(1, 0, 2, 3).reshape(U, -1), 0.995, dim=1)
    C = fresh.num_concepts
    r = dk.tally(a, thr, labels, num_concepts=C, image_labels=image_labels, backend="cpu")
    # own check of the tally for the most active unit's best pixel concept
    up = torch.nn.functional.interpolate(a, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    mask = up > thr.view(1, -1, 1, 1)
    truth = torch.zeros(C, dtype=torch.int64)
    area = torch.zeros(U, C, dtype=torch.int64)
    for b in range(len(items)):
        present = torch.zeros(C, dtype=torch.bool)
        for c in labels[b].unique().tolist():
            truth[c] += int((labels[b] == c).any(0).sum())
            present[c] = True
        for c in image_labels[b].tolist():
            truth[c] += labels.shape[-1] * labels.shape[-2]
            present[c] = True
        present[0] = False
        cats = torch.zeros(fresh.num_categories, dtype=torch.bool)
        cats[fresh.category_of[present]] = True
        area += r.active[b][:, None] * cats[fresh.category_of][None, :].long()
    iou = r.intersection.double() / (area + truth - r.intersection).clamp(min=1).double()
    iou[:, 0] = 0
    best, label = iou.max(1)
    u = int(best.argmax())
    c = int(label[u])
    if c not in image_labels.unique().tolist():
        own = int((mask[:, u] & (labels == c).any(1)).sum())
        assert own == int(r.intersection[u, c])
    strong = {(k, fresh.concept_names[int(label[k])]) for k in range(U) if best[k] > 0.2}
    assert len(strong) >= 5, sorted(strong)
    assert len({name for _, name in strong}) >= 3, sorted(strong)


def test_config_records_training():
    info = json.loads(DEFAULT_CONFIG.read_text())
    assert info["dataset"]["generator"].endswith("make_synthetic_broden")
    assert {"seed", "n_images", "image_size"} <= set(info["dataset"])
    assert info["layers"] == ["conv1", "conv2", "conv3", "conv4"]
