"""GAN dissection: the planted tiny generator, exact level counts vs a brute-force oracle, the
IQR search vs a per-candidate loop, dissect_generator's labels, batch-size invariance, outputs
and bad input."""
import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dissect_kernels.generated import sample_z
from dissect_kernels.generator import dissect_generator, iqr_search, level_fractions
from dissect_kernels.models.tiny_gan import (TINY_GAN_INFO, TINY_GAN_WEIGHTS, default_segmenter,
                                             palette_tensor)
from dissect_kernels.io import load_results
from dissect_kernels.stats.iou_tally import iqr_from_table
from dissect_kernels.stats.level_counts import LevelCounts

ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dissected(gan):
    g, s, _ = gan
    return dissect_generator(g, "layer3", s, num_samples=48, batch_size=16, progress=False)


def test_tiny_gan_is_painted_from_the_palette_and_segmented_exactly(gan):
    g, s, _ = gan
    with torch.no_grad():
        images = g(sample_z(torch.arange(12), g.z_dim, seed=3))
    labels = s(images)
    assert labels.shape == (12, 1, 64, 64) and labels.dtype == torch.int64
    repainted = palette_tensor()[labels[:, 0]].permute(0, 3, 1, 2)
    assert torch.equal(repainted, images)
    present = torch.bincount(labels.flatten(), minlength=5)
    assert bool((present > 0).all())                       # every class appears somewhere


def test_build_script_reproduces_the_shipped_weights(tmp_path):
    mod = runpy.run_path(str(ROOT / "scripts" / "build_tiny_gan.py"))
    mod["main"](["--out-dir", str(tmp_path)])
    built, shipped = load_file(str(tmp_path / "tiny_gan.safetensors")), load_file(str(TINY_GAN_WEIGHTS))
    assert built.keys() == shipped.keys()
    assert all(torch.equal(built[k], shipped[k]) for k in built)
    assert json.loads((tmp_path / "tiny_gan.json").read_text()) == json.loads(TINY_GAN_INFO.read_text())
    assert TINY_GAN_WEIGHTS.stat().st_size < 1 << 20


def test_sample_z_depends_only_on_seed_and_index():
    a = sample_z(torch.tensor([0, 1, 2, 3, 4]), 7, seed=5)
    b = sample_z(torch.tensor([3, 1]), 7, seed=5)
    assert torch.equal(a[[3, 1]], b)
    assert not torch.equal(sample_z(torch.tensor([3]), 7, seed=6), b[:1])


def _brute_level_counts(up, labels, levels, C, category_of, K):
    """Obvious loops: counts above each level overall, per present category, per label."""
    B, U, H, W = up.shape
    NL = levels.shape[1]
    planes = torch.zeros(B, C, H, W, dtype=torch.bool)
    for layer in range(labels.shape[1]):
        for c in range(1, C):
            planes[:, c] |= labels[:, layer] == c
    present = torch.zeros(B, K, dtype=torch.bool)
    for c in range(1, C):
        present[:, category_of[c]] |= planes[:, c].flatten(1).any(1)
    above_all = torch.zeros(U, NL, dtype=torch.int64)
    above_cat = torch.zeros(U, NL, K, dtype=torch.int64)
    above_label = torch.zeros(U, NL, C, dtype=torch.int64)
    for u in range(U):
        for j in range(NL):
            m = up[:, u] > levels[u, j]
            above_all[u, j] = m.sum()
            for k in range(K):
                above_cat[u, j, k] = m[present[:, k]].sum()
            for c in range(1, C):
                above_label[u, j, c] = (m & planes[:, c]).sum()
    return above_all, above_cat, above_label, planes.sum((0, 2, 3))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_level_counts_match_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    B, U, H, W, C, K, L, NL = 3, 4, 5, 6, 6, 3, 2, 7
    up = torch.randn(B, U, H, W, generator=g).round(decimals=1)        # ties with the levels
    labels = torch.randint(0, C, (B, L, H, W), generator=g)
    labels[:, 1][torch.rand(B, H, W, generator=g) < 0.5] = 0
    labels[0, 1] = labels[0, 0]                                        # repeats count once
    levels = torch.randn(U, NL, generator=g).round(decimals=1)         # unsorted, with ties
    category_of = torch.tensor([0, 0, 1, 1, 2, 2])
    lc = LevelCounts(levels, C, category_of, num_categories=K, max_chunk=2 * H * W * B)
    lc.update(up[:2], labels[:2])
    other = LevelCounts(levels, C, category_of, num_categories=K)
    other.update(up[2:], labels[2:])
    lc.merge(other)
    a_all, a_cat, a_lab, truth = _brute_level_counts(up, labels, levels, C, category_of, K)
    assert torch.equal(lc.above_all, a_all)
    assert torch.equal(lc.above_cat, a_cat)
    assert torch.equal(lc.above_label, a_lab)
    assert torch.equal(lc.truth, truth)
    assert int(lc.total_pixels) == B * H * W


def test_iqr_search_matches_a_per_candidate_loop():
    g = torch.Generator().manual_seed(7)
    B, U, H, W, C = 4, 3, 8, 8, 4
    labels = torch.randint(0, C, (B, 1, H, W), generator=g)
    up = torch.rand(B, U, H, W, generator=g) + 0.6 * (labels == 1).float() - 0.05
    levels = torch.quantile(up.transpose(0, 1).reshape(U, -1),
                            torch.tensor(1 - level_fractions(), dtype=torch.float32), dim=1).t().contiguous()
    cat = torch.tensor([0, 0, 0, 1])
    lc = LevelCounts(levels, C, cat, num_categories=2)
    lc.update(up, labels)
    best, at = iqr_search(lc, levels)
    for u in range(U):
        for c in range(1, C):
            k = int(cat[c])
            tot = float(lc.category_pixels[k])
            frac = float(lc.truth[c]) / float(lc.total_pixels)
            scores = []
            for j in range(levels.shape[1]):
                truth, pred = float(lc.truth[c]) / tot, float(lc.above_cat[u, j, k]) / tot
                isect = float(lc.above_label[u, j, c]) / tot
                p = torch.tensor([[isect, pred - isect], [truth - isect, 1 - pred - truth + isect]],
                                 dtype=torch.float64).clamp(0, 1)
                ok = p[0, 0] + p[1, 1] > 0.8 and levels[u, j] > 0 and j < levels.shape[1] - 1 and frac >= 1e-3
                scores.append(float(iqr_from_table(p[:, :, None])[0]) if ok else 0.0)
            assert float(best[u, c]) == pytest.approx(max(scores), abs=1e-12)
            assert int(at[u, c]) == int(np.argmax(scores))
    assert float(best[0, 1]) > 0.1                                      # unit correlated with label 1


def test_planted_units_get_their_concept_and_rank_first_by_iqr_and_iou(dissected, gan):
    _, _, info = gan
    lr = dissected.layers["layer3"]
    assert lr.thresholds.shape == (24,)
    names = lr.concept_names
    for concept, units in info["planted"].items():
        c = names.index(concept)
        assert [lr.unit_label(u) for u in units] == [concept] * 3
        assert bool(lr.detector[units].all())
        by_iqr = torch.sort(-lr.counts["search_iqr"][:, c], stable=True).indices[:3].tolist()
        assert sorted(by_iqr) == units
        iou_c = torch.where(lr.best_label == c, lr.best_iou, torch.zeros_like(lr.best_iou))
        assert sorted(torch.sort(-iou_c, stable=True).indices[:3].tolist()) == units
        assert float(lr.best_iou[units].min()) > 0.5
    assert not bool(lr.detector[info["noise"]].any())
    # The exact IQR at each unit's threshold is the searched maximum (counts are exact).
    label = lr.best_label[:, None]
    assert torch.allclose(lr.iqr.gather(1, label), lr.counts["search_iqr"].gather(1, label), atol=1e-12)


def test_results_identical_for_two_batch_sizes(gan):
    g, s, _ = gan
    a = dissect_generator(g, "layer3", s, num_samples=12, batch_size=12, progress=False)
    b = dissect_generator(g, "layer3", s, num_samples=12, batch_size=5, progress=False)
    la, lb = a.layers["layer3"], b.layers["layer3"]
    for name in ("iou", "iqr", "thresholds", "best_label", "best_iou", "topk_indices", "topk_values"):
        assert torch.equal(getattr(la, name), getattr(lb, name)), name
    for key, t in la.counts.items():
        assert torch.equal(t, lb.counts[key]), key


def test_out_dir_writes_results_report_and_strips(gan, tmp_path):
    g, s, _ = gan
    res = dissect_generator(g, ["layer2", "layer3"], s, num_samples=8, batch_size=8, progress=False,
                            out_dir=tmp_path, convention="gandissect", top_k=3)
    back = load_results(tmp_path)
    assert list(back.layers) == ["layer2", "layer3"] and back.convention == "gandissect"
    lr = back.layers["layer3"]
    assert torch.equal(lr.iou, res.layers["layer3"].iou)
    assert lr.topk_indices.shape == (24, 3)
    assert all((tmp_path / p).is_file() for p in lr.exemplar_strips.values())
    assert "GAN dissection" in (tmp_path / "index.html").read_text()


def test_fewer_samples_than_exemplars(gan, tmp_path):
    g, s, _ = gan
    lr = dissect_generator(g, "layer3", s, num_samples=3, batch_size=2, progress=False,
                           out_dir=tmp_path).layers["layer3"]                # exact: top 10
    assert lr.topk_indices.shape == (24, 10)
    assert sorted(lr.topk_indices[0, :3].tolist()) == [0, 1, 2]
    assert bool((lr.topk_indices[:, 3:] == -1).all())
    assert all((tmp_path / p).is_file() for p in lr.exemplar_strips.values())


class _BadSegmenter:
    num_classes = 5

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, images):
        return self.fn(images)


@pytest.mark.parametrize("fn, match", [
    (lambda im: torch.zeros(im.shape[0] + 1, 64, 64, dtype=torch.int64), "shape"),
    (lambda im: torch.zeros(im.shape[0], 64, dtype=torch.int64), "shape"),
    (lambda im: torch.full((im.shape[0], 1, 64, 64), 5, dtype=torch.int64), r"\[5, 5\].*num_classes=5"),
    (lambda im: torch.full((im.shape[0], 64, 64), -1, dtype=torch.int64), "num_classes"),
    (lambda im: torch.zeros(im.shape[0], 64, 64), "integer"),
])
def test_bad_segmenter_output_is_a_clear_error(gan, fn, match):
    g, _, _ = gan
    with pytest.raises((ValueError, TypeError), match=match):
        dissect_generator(g, "layer3", _BadSegmenter(fn), num_samples=2, batch_size=2, progress=False)


def test_bad_arguments_are_clear_errors(gan):
    g, s, _ = gan
    with pytest.raises(LookupError, match="layer9"):
        dissect_generator(g, "layer9", s, num_samples=2, progress=False)
    with pytest.raises(ValueError, match="num_samples"):
        dissect_generator(g, "layer3", s, num_samples=0, progress=False)
    with pytest.raises(ValueError, match="z_dim"):
        dissect_generator(torch.nn.Sequential(torch.nn.Linear(2, 2)), "0", s, num_samples=2, progress=False)
    with pytest.raises(ValueError, match="num_classes"):
        dissect_generator(g, "layer3", object(), num_samples=2, progress=False)
    with pytest.raises(ValueError, match="receptive-field"):
        dissect_generator(g, "layer3", s, num_samples=2, convention="netdissect", progress=False)


def test_level_counts_agree_with_dk_tally_at_every_level():
    """Counting the upsampled maps above the levels equals dk.tally of the raw maps at those
    thresholds (the same upsampling, bit for bit), for every level of every unit."""
    from dissect_kernels import tally
    from dissect_kernels.geometry import Geometry
    from dissect_kernels.reference.tally import upsample

    g = torch.Generator().manual_seed(11)
    B, U, h, w, H, W, C, NL = 3, 5, 4, 6, 13, 10, 5, 9
    acts = torch.randn(B, U, h, w, generator=g)
    labels = torch.randint(0, C, (B, 2, H, W), generator=g)
    ytab, xtab = Geometry.named("half-pixel").tables((h, w), (H, W))
    up = upsample(acts, ytab, xtab)
    # Levels: a few exact upsampled values (ties with the strict `>`) and random ones.
    levels = torch.cat([up.transpose(0, 1).reshape(U, -1)[:, :4], torch.randn(U, NL - 4, generator=g)], 1)
    category_of = torch.tensor([0, 0, 1, 1, 1])
    lc = LevelCounts(levels, C, category_of)
    lc.update(up, labels)
    res = tally(acts.repeat_interleave(NL, 1), levels.reshape(-1), labels, num_concepts=C)
    assert torch.equal(lc.above_label.reshape(U * NL, C)[:, 1:], res.intersection[:, 1:])
    assert torch.equal(lc.above_all.reshape(-1), res.active.sum(0))


def test_pipeline_matches_a_brute_force_oracle(gan):
    """Whole-pipeline oracle on 6 samples: levels = numpy quantiles of all upsampled values,
    GD's search by loops over candidates, and counts at the chosen thresholds by brute force."""
    from dissect_kernels.geometry import Geometry
    from dissect_kernels.hooks import TraceDict
    from dissect_kernels.reference.tally import upsample

    g, s, _ = gan
    N = 6
    res = dissect_generator(g, "layer3", s, num_samples=N, batch_size=4, progress=False).layers["layer3"]
    with torch.no_grad(), TraceDict(g, ["layer3"]) as tr:
        images = g(sample_z(torch.arange(N), g.z_dim, seed=0))
    labels = s(images)[:, 0]
    up = upsample(tr["layer3"].output, *Geometry.named("half-pixel").tables((16, 16), (64, 64)))
    U, C = up.shape[1], 5
    cat = torch.tensor([0, 0, 0, 0, 1])
    present = torch.stack([((labels >= 1) & (cat[labels] == k)).flatten(1).any(1) for k in range(2)], 1)
    tot = present.sum(0) * 64 * 64
    truth = torch.bincount(labels.flatten(), minlength=C)
    fr = level_fractions()[:-1]                              # GD skips the last bucket
    for u in range(U):
        levels = np.quantile(up[:, u].double().flatten().numpy(), 1 - fr).astype(np.float32)
        m = up[:, u][None] > torch.from_numpy(levels)[:, None, None, None]          # [NL, N, H, W]
        best = (0.0, None, None)
        for c in range(1, C):
            k = int(cat[c])
            isect = (m & (labels == c)[None]).sum((1, 2, 3)).double() / float(tot[k])
            pred = m[:, present[:, k]].sum((1, 2, 3)).double() / float(tot[k])
            tr_ = float(truth[c]) / float(tot[k])
            for j in range(len(fr)):
                p = torch.tensor([[isect[j], pred[j] - isect[j]], [tr_ - isect[j], 1 - pred[j] - tr_ + isect[j]]],
                                 dtype=torch.float64).clamp(0, 1)
                if p[0, 0] + p[1, 1] > 0.8 and levels[j] > 0 and float(truth[c]) / truth.sum() >= 1e-3:
                    v = float(iqr_from_table(p[:, :, None])[0])
                    if v > best[0]:
                        best = (v, c, float(levels[j]))
        assert int(res.best_label[u]) == best[1], u
        assert float(res.thresholds[u]) == best[2], u
        # Counts at the pipeline's own threshold, by brute force.
        m = up[:, u] > res.thresholds[u]
        for c in range(1, C):
            assert int(res.counts["intersection"][u, c]) == int((m & (labels == c)).sum())
        assert torch.equal(res.counts["activation"][u],
                           torch.stack([m[present[:, k]].sum() for k in range(2)]))


def test_segmentation_at_a_lower_resolution_and_3d_output(gan):
    """A segmenter may return [B, H, W] at its own resolution: maps are upsampled to it."""
    g, s, info = gan

    class Half:
        num_classes, concept_names = s.num_classes, s.concept_names
        category_names, category_of = s.category_names, s.category_of

        def __call__(self, images):
            return s(images)[:, 0, 1::2, 1::2]                          # [B, 32, 32]

    lr = dissect_generator(g, "layer3", Half(), num_samples=24, batch_size=12, progress=False).layers["layer3"]
    for concept, units in info["planted"].items():
        assert [lr.unit_label(u) for u in units] == [concept] * 3
    assert int(lr.counts["truth"].sum()) <= 24 * 32 * 32


class _Flaky:
    """The palette segmenter, counting calls and failing at call `fail_at` (a crash mid-run)."""

    def __init__(self, fail_at=None):
        base = default_segmenter()
        self.base, self.fail_at, self.calls = base, fail_at, 0
        self.num_classes, self.concept_names = base.num_classes, base.concept_names
        self.category_names, self.category_of = base.category_names, base.category_of

    def __call__(self, images):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise RuntimeError("simulated crash")
        return self.base(images)


@pytest.mark.parametrize("fail_at", [2, 5, 8])          # pass 1, pass 2, pass 3 (3 batches each)
def test_resume_after_a_crash_equals_an_uninterrupted_run(gan, tmp_path, fail_at):
    g, _, _ = gan
    kw = dict(num_samples=9, batch_size=3, progress=False, top_k=2, checkpoint_interval=0.0,
              cache_bytes=0)           # no activation cache: every pass generates and segments
    first = _Flaky()
    ref = dissect_generator(g, "layer3", first, out_dir=tmp_path / "ref", **kw).layers["layer3"]
    exemplar_calls = first.calls - 9
    with pytest.raises(RuntimeError, match="simulated crash"):
        dissect_generator(g, "layer3", _Flaky(fail_at), out_dir=tmp_path / "run", **kw)
    again = _Flaky()
    res = dissect_generator(g, "layer3", again, out_dir=tmp_path / "run", **kw).layers["layer3"]
    # Only the batches after the last checkpoint were redone (+ exemplar regeneration).
    assert again.calls == 9 - (fail_at - 1) + exemplar_calls
    for name in ("iou", "iqr", "thresholds", "best_label", "topk_indices", "topk_values"):
        assert torch.equal(getattr(res, name), getattr(ref, name)), name
    for key, t in ref.counts.items():
        assert torch.equal(t, res.counts[key]), key
    assert not list((tmp_path / "run" / ".checkpoint").rglob("*.safetensors"))   # cleared at the end


def test_activation_cache_spares_passes_2_and_3_and_changes_nothing(gan):
    g, _, _ = gan
    kw = dict(num_samples=9, batch_size=3, progress=False, top_k=2)
    plain, cached = _Flaky(), _Flaky()
    a = dissect_generator(g, "layer3", plain, cache_bytes=0, **kw).layers["layer3"]
    b = dissect_generator(g, "layer3", cached, **kw).layers["layer3"]
    assert (plain.calls, cached.calls) == (9, 3)              # three passes, or pass 1 only
    for name in ("iou", "iqr", "thresholds", "best_label", "topk_indices", "topk_values"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    small = _Flaky()
    dissect_generator(g, "layer3", small, cache_bytes=1000, **kw)   # over budget: dropped
    assert small.calls == 9


def test_changed_inputs_do_not_reuse_a_checkpoint(gan, tmp_path):
    g, _, _ = gan
    kw = dict(num_samples=6, batch_size=3, progress=False, top_k=2, checkpoint_interval=0.0, cache_bytes=0)
    with pytest.raises(RuntimeError):
        dissect_generator(g, "layer3", _Flaky(5), out_dir=tmp_path, **kw)
    fresh = _Flaky()
    dissect_generator(g, "layer3", fresh, out_dir=tmp_path, seed=1, **kw)     # another seed
    assert fresh.calls >= 3 * 2                                               # every pass ran
