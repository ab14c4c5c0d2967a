"""The engine's activation cache and field selection: pass 2 of a dissection reads pass 1's
captures instead of decoding images and running the model, pass 1 decodes no label files when
nothing in it reads labels, images decode as uint8 and are normalised on the model's device;
results are bit-identical to the plain path in every case."""
import pytest
import torch

import dissect_kernels as dk
from dissect_kernels.data import BrodenDataset, make_synthetic_broden
from dissect_kernels.data.transforms import imagenet_transform
from dissect_kernels.models import load_default_model
from planted import Planted, PlantedDataset

LAYERS = ["conv3", "conv4"]


@pytest.fixture(scope="module")
def broden(tmp_path_factory):
    return make_synthetic_broden(tmp_path_factory.mktemp("cache") / "b", n_images=40, seed=3)


def counted(model):
    calls = [0]
    model.register_forward_pre_hook(lambda m, a: calls.__setitem__(0, calls[0] + 1))
    return model, calls


def same(a, b):
    for name, la in a.layers.items():
        lb = b.layers[name]
        for field in ("iou", "thresholds", "best_label", "topk_indices", "topk_values"):
            assert torch.equal(getattr(la, field), getattr(lb, field)), (name, field)
        for key, t in la.counts.items():
            assert torch.equal(t, lb.counts[key]), (name, key)


def test_pass_2_reads_the_cache_and_changes_nothing():
    data = PlantedDataset()
    kw = dict(batch_size=16, progress=False, rotation=4, quantile=0.95)
    (plain, plain_calls), (cached, cached_calls) = counted(Planted()), counted(Planted())
    a = dk.dissect(plain, "units", data, cache_bytes=0, **kw)
    b = dk.dissect(cached, "units", data, **kw)
    same(a, b)
    batches = -(-len(data) // 16)                  # + 1: the probe that learns the layers' shapes
    assert (plain_calls[0], cached_calls[0]) == (2 * batches + 1, batches + 1)
    small, small_calls = counted(Planted())
    same(a, dk.dissect(small, "units", data, cache_bytes=10_000, **kw))     # over budget: dropped
    assert small_calls[0] == 2 * batches + 1


def test_each_pass_decodes_only_what_it_reads(broden, monkeypatch):
    opened = {"image": 0, "labels": 0}
    real_pil, real_labels = BrodenDataset._load_pil, BrodenDataset._labels

    def pil(self, i):
        opened["image"] += 1
        return real_pil(self, i)

    def labels(self, i):
        opened["labels"] += 1
        return real_labels(self, i)

    monkeypatch.setattr(BrodenDataset, "_load_pil", pil)
    monkeypatch.setattr(BrodenDataset, "_labels", labels)
    data = BrodenDataset(broden)
    kw = dict(batch_size=16, progress=False, num_workers=0)          # count in this process
    dk.dissect(load_default_model(), LAYERS, data, **kw)
    probe = 1                                                        # one image to learn the shapes
    assert opened == {"image": len(data) + probe, "labels": len(data)}   # images in pass 1, labels in pass 2
    opened.update(image=0, labels=0)
    dk.dissect(load_default_model(), LAYERS, data, cache_bytes=0, **kw)
    assert opened == {"image": 2 * len(data) + probe, "labels": len(data)}
    opened.update(image=0, labels=0)
    dk.dissect(load_default_model(), LAYERS, data, convention="netdissect-lite", **kw)
    assert opened == {"image": len(data) + probe, "labels": 2 * len(data)}   # its filter reads labels


def test_uint8_images_normalised_on_the_device_give_the_same_bits(broden):
    kw = dict(batch_size=16, progress=False, cache_bytes=0)
    fast = dk.dissect(load_default_model(), LAYERS, BrodenDataset(broden), **kw)
    slow = dk.dissect(load_default_model(), LAYERS, BrodenDataset(broden, transform=imagenet_transform()), **kw)
    same(fast, slow)
    ndl = BrodenDataset(broden, normalize="ndl", image_size=64)
    batch = next(dk.engine.DatasetSource(ndl, batch_size=4).batches(0))
    assert batch.inputs.dtype == torch.uint8 and batch.prepare is not None
    assert torch.equal(batch.prepare(batch.inputs), torch.stack([ndl[i]["image"] for i in range(4)]))
