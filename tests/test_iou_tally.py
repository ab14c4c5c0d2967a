"""IoUTally: sharded + merged == one pass == the per-image oracle (reference/iou.py) for every
convention; union / epsilon / labelling / detector rules; state round trip; clear errors."""
import pytest
import torch
from safetensors.torch import load_file, save_file

import dissect_kernels as dk
from dissect_kernels.conventions import CONVENTIONS, get_convention
from dissect_kernels.ops.label_stats import LabelStats
from dissect_kernels.ops.tally import TallyResult
from dissect_kernels.reference.iou import _best, reference_counts, reference_scores

C, K, U = 10, 3, 5
CATEGORY_OF = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 2, 2])  # 8, 9: scene-like, mostly image-level
GEOMETRY = {"netdissect": "half-pixel"}                      # ND needs an explicit geometry


def make_batch(seed, B=4, h=4, w=4, H=8, W=8, L=3):
    """Random activations and labels; each image annotates a random subset of categories, and
    layers repeat ids so per-layer and any-layer counts differ."""
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(B, U, h, w, generator=g)
    labels = torch.randint(1, 8, (B, L, H, W), generator=g)
    labels[:, 1:][torch.rand(B, L - 1, H, W, generator=g) < 0.5] = 0
    dup = torch.rand(B, H, W, generator=g) < 0.3
    labels[:, 2][dup] = labels[:, 0][dup]
    labels[:, 0][torch.rand(B, H, W, generator=g) < 0.2] = 0
    for b in range(B):                       # drop a category from some images
        k = int(torch.randint(0, 3, (1,), generator=g))
        if k < 2:
            labels[b][CATEGORY_OF[labels[b].long()] == k] = 0
    labels[::2, 1, :2, :2] = 8               # a scene concept also as pixels (dedup with image-level)
    image = torch.randint(8, 10, (B, 2), generator=g)
    image[torch.rand(B, 2, generator=g) < 0.4] = 0
    image[:2] = 0                            # images without image-level labels; image 1 has
                                             # no category-2 label at all
    acts[:, 0] += 3.0 * torch.nn.functional.avg_pool2d((labels[:, :1] == 1).float(), 2)[:, 0]
    return acts, labels.to(torch.int32), image


BATCHES = [make_batch(s) for s in range(3)]
ALL_ACTS = torch.cat([b[0] for b in BATCHES])
THRESHOLDS = torch.quantile(ALL_ACTS.transpose(0, 1).reshape(U, -1), 0.75, dim=1)


def new_tally(convention, **kw):
    return dk.IoUTally(U, C, CATEGORY_OF, num_categories=K, convention=convention, **kw)


def run(tally, batches):
    for acts, labels, image in batches:
        tally.update(acts, THRESHOLDS, labels, image, geometry=GEOMETRY.get(tally.convention.name))
    return tally


def counts_of(t):
    return {k: v for k, v in t.state_dict().items()}


@pytest.mark.parametrize("convention", sorted(CONVENTIONS))
def test_shards_merge_equal_one_pass_and_oracle(convention):
    one = run(new_tally(convention), BATCHES)
    shard_a = run(new_tally(convention), BATCHES[:2])
    shard_b = run(new_tally(convention), BATCHES[2:])
    merged = shard_a.merge(shard_b)
    for key, value in counts_of(one).items():
        assert torch.equal(value, counts_of(merged)[key]), key

    geometry = GEOMETRY.get(convention, get_convention(convention).geometry)
    ref = reference_counts(BATCHES, THRESHOLDS, num_concepts=C, category_of=CATEGORY_OF,
                           num_categories=K, convention=convention, geometry=geometry)
    assert one.intersection.tolist() == ref["I"]
    assert one.truth.tolist() == ref["G"]
    assert one.activation.tolist() == ref["A"]
    assert one.active_total.tolist() == ref["Atot"]
    assert one.category_pixels.tolist() == ref["tot"]
    assert int(one.total_pixels) == ref["N"] and int(one.images) == 12
    assert all(0 < t < ref["N"] for t in ref["tot"])        # every category absent somewhere
    assert int(one.intersection.sum()) > 0 and 0 < int(one.active_total.sum()) < ref["N"] * U

    want = reference_scores(ref, category_of=CATEGORY_OF, num_categories=K, convention=convention)
    iou = one.iou()
    assert iou.dtype == torch.float64 and iou.shape == (U, C)
    torch.testing.assert_close(iou, want["iou"], rtol=1e-13, atol=0)
    torch.testing.assert_close(one.iqr(), want["iqr"], rtol=1e-12, atol=1e-15)
    label, best = one.best()
    assert torch.equal(label, want["label"])
    torch.testing.assert_close(best, want["best"], rtol=1e-13, atol=0)
    assert torch.equal(one.detectors(), want["detectors"])
    assert float(one.iqr().max()) > 0 and float(iou.max()) > 0.1


def test_per_layer_and_truth_rules_differ():
    nd, ex, gd = (run(new_tally(c), BATCHES) for c in ("netdissect", "exact", "gandissect"))
    assert bool((nd.intersection >= ex.intersection).all())
    assert bool((nd.intersection > ex.intersection).any())
    assert bool((nd.truth > ex.truth).any())
    # gandissect: any-layer intersection, per-layer truth
    assert torch.equal(gd.intersection, ex.intersection) and torch.equal(gd.truth, nd.truth)
    assert torch.equal(gd.activation, ex.activation)
    assert not torch.equal(gd.iou(), ex.iou())


def test_touched_union_is_smaller_than_category_union():
    nd, ndl = (run(new_tally(c), BATCHES) for c in ("netdissect", "netdissect-lite"))
    assert torch.equal(nd.intersection, ndl.intersection)
    assert bool((ndl.activation <= nd.activation).all())
    assert bool((ndl.activation < nd.activation).any())
    assert bool((ndl.iou() >= nd.iou() - 1e-9).all())          # up to the 1e-10 epsilon
    assert bool((ndl.iou() > nd.iou() + 1e-9).any())


def test_image_level_labels_fill_the_image():
    acts, labels, image = BATCHES[2]
    ex = new_tally("exact")
    ex.update(acts, THRESHOLDS, labels, image)
    without = new_tally("exact")
    without.update(acts, THRESHOLDS, labels, None)
    hw = labels.shape[2] * labels.shape[3]
    for c in (8, 9):
        listed = (image == c).any(1)
        pixel_only = (labels == c).any(1).flatten(1).sum(1)
        assert int(ex.truth[c]) == int(torch.where(listed, hw, pixel_only).sum())
        assert int(without.truth[c]) == int(pixel_only.sum())
    assert bool((image != 0).any())
    assert bool((ex.intersection[:, 8:] > without.intersection[:, 8:]).any())


def test_dissect_background_condition_can_win():
    acts, labels, image = BATCHES[0]
    thresholds = THRESHOLDS.clone()
    thresholds[1] = acts[:, 1].min() - 1          # unit 1 fires everywhere: P(A) = 1
    db, ex = new_tally("dissect"), new_tally("exact")
    for t in (db, ex):
        t.update(acts, thresholds, labels, image)
    label, best = db.best()
    assert int(label[1]) == 0 and float(best[1]) == 1.0
    iou = db.iou()
    assert torch.equal(iou[:, 0], db.active_total.double() / float(db.total_pixels))
    assert bool((label[[0, 2, 3, 4]] > 0).any())  # elsewhere a concept beats P(A)
    other = ex.best()[0]                          # other conventions never label a unit 0, and a
    assert int(other[1]) == -1 and bool((other[[0, 2, 3, 4]] > 0).all())   # unit on every pixel: none


def _single_unit_tally(convention, I, A, G, N, present=True):
    """One unit, concepts {0, 1}, one category, counts set directly through update_counts."""
    t = dk.IoUTally(1, 2, torch.tensor([0, 0]), convention=convention)
    result = TallyResult(torch.tensor([[0, I]]), torch.tensor([[A]]), torch.zeros(1, 1),
                         torch.tensor([[[1]]], dtype=torch.uint8))
    t.update_counts(result, LabelStats(torch.tensor([[0, G]]), torch.tensor([[present]]), N))
    return t


def test_detector_comparison_ge_vs_gt():
    # IoU exactly 0.04 = 1 / 25: ND and exact (>=) call it a detector, DB (>) does not
    for convention, expect in [("netdissect", True), ("exact", True), ("dissect", False)]:
        t = _single_unit_tally(convention, I=1, A=13, G=13, N=1000)
        assert float(t.best()[1][0]) == 0.04, convention
        assert bool(t.detectors()[0]) is expect, convention
    assert bool(_single_unit_tally("dissect", I=2, A=13, G=13, N=1000).detectors()[0])
    # NDL's epsilon 1e-10 pulls 1/25 just below 0.04, so NDL does not count it
    ndl = _single_unit_tally("netdissect-lite", I=1, A=13, G=13, N=1000)
    assert 0.04 - 1e-9 < float(ndl.best()[1][0]) < 0.04 and not bool(ndl.detectors()[0])
    assert bool(_single_unit_tally("netdissect-lite", I=2, A=26, G=26, N=1000).detectors()[0]) is False
    assert bool(_single_unit_tally("netdissect-lite", I=3, A=37, G=37, N=1000).detectors()[0])


def test_gandissect_detector_needs_iqr():
    strong = _single_unit_tally("gandissect", I=40, A=50, G=50, N=1000)   # iou 2/3, high IQR
    assert float(strong.iqr()[0, 1]) > 0.01 and bool(strong.detectors()[0])
    # iou 0.0526 > 0.05, but activation and concept are independent: no information
    weak = _single_unit_tally("gandissect", I=10, A=100, G=100, N=1000)
    assert float(weak.iou()[0, 1]) > 0.05 and float(weak.iqr()[0, 1]) <= 0.01
    assert not bool(weak.detectors()[0])
    assert bool(get_convention("exact").is_detector(weak.iou()[:, 1]))


def test_per_category_rule_breaks_ties_by_category():
    # concepts 1 (category 1) and 2 (category 0) tie: global picks concept 1 (lowest id); the
    # per-category rule picks a category: ND/NDL the last (1, so concept 1), "first" category 0
    cat = torch.tensor([0, 1, 0])
    labels = []
    for convention in ("exact", "netdissect", "netdissect[category_ties=first]"):
        t = dk.IoUTally(1, 3, cat, convention=convention)
        result = TallyResult(torch.tensor([[0, 5, 5]]), torch.tensor([[10]]), torch.zeros(1, 1))
        stats = LabelStats(torch.tensor([[0, 10, 10]]), torch.tensor([[True, True]]), 64)
        t.update_counts(result, stats)
        label, best = t.best()
        assert _best(t.iou()[0].tolist(), cat.tolist(), 2, t.convention) == (int(label[0]), float(best[0]))
        labels.append(int(label[0]))
    assert labels == [1, 1, 2]


def test_iqr_matches_definition():
    t = _single_unit_tally("gandissect", I=30, A=50, G=40, N=400)
    p = torch.tensor([[30, 20], [10, 340]], dtype=torch.float64) / 400
    pr, pc = p.sum(1, keepdim=True), p.sum(0, keepdim=True)
    mi = (p * (p / (pr * pc)).log()).sum()
    je = -(p * p.log()).sum()
    torch.testing.assert_close(t.iqr()[0, 1], mi / je, rtol=1e-12, atol=0)
    assert float(t.iqr()[0, 0]) == 0.0


def test_exact_has_no_epsilon_and_zero_over_zero_is_zero():
    t = _single_unit_tally("exact", I=0, A=0, G=0, N=64)
    assert float(t.iou()[0, 1]) == 0.0 and float(t.iqr()[0, 1]) == 0.0
    tiny = _single_unit_tally("exact", I=1, A=1, G=1, N=64)
    assert float(tiny.iou()[0, 1]) == 1.0
    assert float(_single_unit_tally("netdissect-lite", I=1, A=1, G=1, N=64).iou()[0, 1]) < 1.0


def test_state_dict_round_trip_through_safetensors(tmp_path):
    t = run(new_tally("netdissect-lite"), BATCHES[:2])
    save_file(t.state_dict(), tmp_path / "iou.safetensors")
    fresh = new_tally("netdissect-lite")
    fresh.load_state_dict(load_file(tmp_path / "iou.safetensors"))
    for key, value in counts_of(t).items():
        assert torch.equal(value, counts_of(fresh)[key]), key
    torch.testing.assert_close(fresh.iou(), t.iou(), rtol=0, atol=0)
    run(fresh, BATCHES[2:])                                    # resume == one pass
    assert torch.equal(fresh.intersection, run(new_tally("netdissect-lite"), BATCHES).intersection)
    with pytest.raises(ValueError, match="convention differs"):
        new_tally("netdissect").load_state_dict(t.state_dict())
    other = dk.IoUTally(U, C, CATEGORY_OF.flip(0), num_categories=K, convention="netdissect-lite")
    with pytest.raises(ValueError, match="category_of differs"):
        other.load_state_dict(t.state_dict())
    with pytest.raises(ValueError, match="num_units differs"):
        dk.IoUTally(U + 1, C, CATEGORY_OF, num_categories=K,
                    convention="netdissect-lite").load_state_dict(t.state_dict())
    with pytest.raises(ValueError, match="missing"):
        fresh.load_state_dict({"intersection": t.intersection})


def test_merge_mismatch_is_an_error():
    a = new_tally("exact")
    with pytest.raises(ValueError, match="convention differs"):
        a.merge(new_tally("gandissect"))
    with pytest.raises(ValueError, match="num_categories differs"):
        a.merge(dk.IoUTally(U, C, CATEGORY_OF, num_categories=K + 1))
    with pytest.raises(TypeError, match="another IoUTally"):
        a.merge({"intersection": a.intersection})


def test_bad_inputs():
    acts, labels, image = BATCHES[0]
    with pytest.raises(ValueError, match="category_of has 9 entries, expected num_concepts=10"):
        dk.IoUTally(U, C, CATEGORY_OF[:9])
    with pytest.raises(ValueError, match="category_of holds ids.*num_categories=2"):
        dk.IoUTally(U, C, CATEGORY_OF, num_categories=2)
    with pytest.raises(ValueError, match="num_units must be a positive int"):
        dk.IoUTally(0, C, CATEGORY_OF)
    t = new_tally("exact")
    with pytest.raises(ValueError, match=r"acts must have shape \[B, 5, h, w\]"):
        t.update(acts[:, :4], THRESHOLDS[:4], labels, image)
    with pytest.raises(ValueError, match="labels holds ids"):
        t.update(acts, THRESHOLDS, labels + 5, image)
    with pytest.raises(ValueError, match="labels has batch size 3 but acts has 4"):
        t.update(acts, THRESHOLDS, labels[:3], image)
    with pytest.raises(ValueError, match="receptive field"):
        new_tally("netdissect").update(acts, THRESHOLDS, labels, image)
    with pytest.raises(ValueError, match="stats.pixels has shape"):
        t.update_counts(TallyResult.empty(4, U, C, None, "cpu"),
                        LabelStats(torch.zeros(4, C - 1, dtype=torch.int64),
                                   torch.zeros(4, K, dtype=torch.bool), 64))
    with pytest.raises(ValueError, match="result.touched is missing"):
        new_tally("netdissect-lite").update_counts(
            TallyResult.empty(4, U, C, None, "cpu"),
            LabelStats(torch.zeros(4, C, dtype=torch.int64), torch.zeros(4, K, dtype=torch.bool), 64))
    assert int(t.images) == 0                               # failed updates added nothing


def test_receptive_field_geometry_runs():
    acts, labels, image = BATCHES[0]
    nd = new_tally("netdissect")
    nd.update(acts, THRESHOLDS, labels, image, geometry=dk.Geometry.receptive_field(0, 3, 2))
    assert int(nd.active_total.sum()) > 0 and int(nd.images) == 4


@pytest.mark.gpu
def test_counts_on_cuda_equal_cpu():
    cpu = run(new_tally("netdissect-lite"), BATCHES)
    gpu = new_tally("netdissect-lite", device="cuda")
    for acts, labels, image in BATCHES:
        gpu.update(acts.cuda(), THRESHOLDS.cuda(), labels.cuda(), image.cuda(),
                   geometry="half-pixel", backend="reference")
    assert gpu.intersection.is_cuda
    for key, value in counts_of(cpu).items():
        assert torch.equal(value, counts_of(gpu)[key].cpu()), key
    torch.testing.assert_close(gpu.iou().cpu(), cpu.iou(), rtol=1e-13, atol=0)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("convention", sorted(CONVENTIONS))
def test_random_configurations_match_oracle(seed, convention):
    """Random sizes (single layer, no image labels, half-precision activations, odd maps)."""
    g = torch.Generator().manual_seed(100 + seed)
    rint = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))  # noqa: E731
    u, c, k = rint(1, 4), rint(2, 8), rint(1, 3)
    cat = torch.randint(0, k, (c,), generator=g)
    dtype = [torch.float32, torch.float16, torch.bfloat16][seed]
    batches = []
    for _ in range(2):
        b, L, H, W, h, w = rint(1, 3), rint(1, 3), rint(3, 7), rint(3, 7), rint(2, 4), rint(2, 4)
        acts = torch.randn(b, u, h, w, generator=g).to(dtype)
        labels = torch.randint(0, c, (b, L, H, W), generator=g)
        image = torch.randint(0, c, (b, rint(1, 2)), generator=g) if seed != 1 else None
        batches.append((acts, labels, image))
    thresholds = torch.cat([a.float().flatten(2).transpose(0, 1).reshape(u, -1)
                            for a, _, _ in batches], 1).quantile(0.6, dim=1)
    geometry = GEOMETRY.get(convention, get_convention(convention).geometry)
    t = dk.IoUTally(u, c, cat, num_categories=k, convention=convention)
    for acts, labels, image in batches:
        t.update(acts, thresholds, labels, image, geometry=geometry)
    ref = reference_counts(batches, thresholds, num_concepts=c, category_of=cat,
                           num_categories=k, convention=convention, geometry=geometry)
    assert 0 < int(t.active_total.sum()) < ref["N"] * u
    assert t.intersection.tolist() == ref["I"] and t.truth.tolist() == ref["G"]
    assert t.activation.tolist() == ref["A"] and t.category_pixels.tolist() == ref["tot"]
    want = reference_scores(ref, category_of=cat, num_categories=k, convention=convention)
    torch.testing.assert_close(t.iou(), want["iou"], rtol=1e-13, atol=0)
    torch.testing.assert_close(t.iqr(), want["iqr"], rtol=1e-12, atol=1e-15)
    assert torch.equal(t.best()[0], want["label"]) and torch.equal(t.detectors(), want["detectors"])
