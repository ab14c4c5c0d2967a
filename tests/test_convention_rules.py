"""The rules a preset can change one at a time (Convention options): NetDissect-Lite's stale
category flag against the per-image oracle's literal loop, dead and constant units (never a
made-up label; NaN under davidbau/dissect's rule), `>=` and float64 thresholds, the quantile
readout, and the option syntax with its errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import dissect_kernels as dk
from dissect_kernels.conventions import CONVENTIONS, get_convention
from dissect_kernels.reference.iou import reference_counts, reference_scores

C, K, U = 10, 3, 4
CATEGORY_OF = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 2, 2])


def batches_with_unlabelled_images(seed: int, n: int = 3, B: int = 5):
    """Batches where some images have no pixel label at all, only image-level ones (the
    images NDL's stale flag misreads), and units that fire on some images and not others."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        acts = torch.randn(B, U, 3, 3, generator=g)
        acts[:, 1] -= 1.5 * torch.rand(B, 1, 1, generator=g)            # unit 1 fires on some images only
        labels = torch.randint(1, 8, (B, 2, 6, 6), generator=g, dtype=torch.int32)
        labels[torch.rand(B, 2, 6, 6, generator=g) < 0.4] = 0
        blank = torch.rand(B, generator=g) < 0.4
        labels[blank] = 0
        image = torch.randint(8, 10, (B, 1), generator=g, dtype=torch.int32)
        image[torch.rand(B, 1, generator=g) < 0.3] = 0
        out.append((acts, labels, image))
    return out


def tally_of(convention, batches, thresholds):
    t = dk.IoUTally(U, C, CATEGORY_OF, num_categories=K, convention=convention)
    for acts, labels, image in batches:
        t.update(acts, thresholds, labels, image)
    return t


@pytest.mark.parametrize("seed", range(4))
def test_stale_category_flag_equals_the_oracle_loop(seed):
    batches = batches_with_unlabelled_images(seed)
    thr = torch.tensor([0.5, 0.3, 1.0, 0.0])
    conv = "netdissect-lite[stale_category_flag=true]"
    got = tally_of(conv, batches, thr)
    ref = reference_counts(batches, thr, num_concepts=C, category_of=CATEGORY_OF, num_categories=K,
                           convention=conv, geometry="pillow")
    assert got.activation.tolist() == ref["A"] and got.intersection.tolist() == ref["I"]
    plain = tally_of("netdissect-lite", batches, thr)
    assert bool((got.activation >= plain.activation).all())            # stale flags only add
    assert torch.equal(got.intersection, plain.intersection)
    want = reference_scores(ref, category_of=CATEGORY_OF, num_categories=K, convention=conv)
    torch.testing.assert_close(got.iou(), want["iou"], rtol=1e-13, atol=0)


def test_stale_flag_changes_something_and_carries_across_batches():
    batches = batches_with_unlabelled_images(11)
    thr = torch.tensor([0.5, 0.3, 1.0, 0.0])
    conv = "netdissect-lite[stale_category_flag=true]"
    stale, plain = tally_of(conv, batches, thr), tally_of("netdissect-lite", batches, thr)
    assert bool((stale.activation > plain.activation).any())
    one_batch = [(torch.cat([b[i] for b in batches])) for i in range(3)]
    assert torch.equal(tally_of(conv, [tuple(one_batch)], thr).activation, stale.activation)
    with pytest.raises(ValueError, match="stale.*one process"):
        tally_of(conv, batches[:1], thr).merge(tally_of(conv, batches[1:], thr))


@pytest.mark.parametrize("convention", sorted(CONVENTIONS))
def test_dead_and_constant_units_get_no_label(convention):
    conv = get_convention(convention)
    acts, labels, image = batches_with_unlabelled_images(5, n=1)[0]
    acts[:, 2] = 0.25                                  # a constant unit
    labels[labels == 3] = 4                            # concept 3 never shows
    thr = torch.tensor([100.0, 0.3, 0.25, -100.0])     # unit 0 dead, unit 2 never above its value
    geometry = "half-pixel" if conv.geometry == "receptive-field" else None
    t = dk.IoUTally(U, C, CATEGORY_OF, num_categories=K, convention=convention)
    t.update(acts, thr, labels, image, geometry=geometry)
    label, best = t.best()
    assert label[0] == -1 and label[2] == -1 and label[1] >= 0
    assert label[3] == (0 if conv.background_competes else -1)   # on every pixel: "all pixels" or none
    assert not t.detectors()[0] and not t.detectors()[2]
    if conv.dead_units == "nan":
        # davidbau/dissect: 0/0 for concepts the data never shows, so the best is NaN
        absent = t.truth == 0
        assert absent[1:].any() and t.iou()[0, 1:][absent[1:]].isnan().all()
        assert math.isnan(float(best[0])) and math.isnan(float(best[2]))
    else:
        assert float(best[0]) == 0.0 and not t.iou().isnan().any()
    ref = reference_scores(reference_counts([(acts, labels, image)], thr, num_concepts=C,
                                            category_of=CATEGORY_OF, num_categories=K, convention=convention,
                                            geometry=geometry or conv.geometry),
                           category_of=CATEGORY_OF, num_categories=K, convention=convention)
    assert torch.equal(label, ref["label"])
    torch.testing.assert_close(best, ref["best"], rtol=1e-13, atol=0, equal_nan=True)


def test_greater_or_equal_and_float64_thresholds():
    acts, labels, image = batches_with_unlabelled_images(2, n=1)[0]
    up = dk.upsample(acts, labels.shape[-2:])
    tie = up[0, :, 1, 1].clone()                       # thresholds equal to an upsampled value
    gt = tally_of("exact", [(acts, labels, image)], tie)
    ge = tally_of("exact[threshold_compare=>=]", [(acts, labels, image)], tie)
    assert torch.equal(gt.active_total, (up > tie[None, :, None, None]).sum((0, 2, 3)))
    assert torch.equal(ge.active_total, (up >= tie[None, :, None, None]).sum((0, 2, 3)))
    assert bool((ge.active_total > gt.active_total).all())
    t64 = tie.double() - 1e-12                          # rounds to the tie in fp32, but lies below it
    exact64 = tally_of("exact", [(acts, labels, image)], t64)
    assert torch.equal(exact64.active_total, ge.active_total)


def test_midpoint_readout_is_numpys_hazen_quantile():
    conv = get_convention("dissect")
    values = np.random.default_rng(0).standard_normal(1001)
    for q in (0.99, 0.5, 994 / 999, 0.0001, 0.9999):
        p = conv.readout_probability(q, values.size)
        assert np.quantile(values, p) == pytest.approx(np.quantile(values, q, method="hazen"), abs=1e-12)
    assert get_convention("exact").readout_probability(0.99, 1001) == 0.99


def test_option_syntax_and_errors():
    c = get_convention("netdissect-lite[stale_category_flag=true, category_ties=first]")
    assert c.stale_category_flag and c.category_ties == "first"
    assert c.name == "netdissect-lite[category_ties=first,stale_category_flag=true]"
    assert get_convention(c.name) == c and c.base == "netdissect-lite"
    assert get_convention("dissect").with_options(union="category").name == "dissect[union=category]"
    assert get_convention("exact[detector_iou=0.05]").detector_iou == 0.05
    assert get_convention("netdissect-lite[excluded_categories=material+color]").excluded_categories == (
        "material", "color")
    for bad, words in (("exact[nope=1]", "bad option"), ("exact[union=some]", "union must be one of"),
                       ("exact[stale_category_flag=maybe]", "true or false"), ("exact[union=all",
                                                                                "brackets"),
                       ("nd", "unknown convention")):
        with pytest.raises(ValueError, match=words):
            get_convention(bad)
