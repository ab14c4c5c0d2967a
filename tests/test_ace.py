"""ACE on the planted tiny generator: single-unit ranking puts the planted units first, ablating
them removes the concept and inserting them adds it, the batched ranking equals one-set-at-a-time
ACE, alpha optimisation favours the planted units; bad input gives clear errors."""
import pytest
import torch

from dissect_kernels.ace import ace, rank_units_by_ace
from dissect_kernels.alpha import optimize_alpha


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ranking(gan):
    g, s, _ = gan
    return rank_units_by_ace(g, "layer3", s, "water", num_samples=12, batch_size=6, value=2.0)


def test_planted_units_rank_first_by_single_unit_ace(gan, ranking):
    _, _, info = gan
    assert sorted(ranking.order[:3].tolist()) == info["planted"]["water"]
    assert float(ranking.ace[info["planted"]["water"]].min()) > 0.3
    # Noise units only feed the background: inserting them never adds water.
    assert float(ranking.ace[info["noise"]].max()) <= 0.0


def test_batched_ranking_equals_one_set_at_a_time(gan, ranking):
    g, s, info = gan
    for u in (info["planted"]["water"][0], info["noise"][0], 17):
        single = ace(g, "layer3", [u], s, "water", num_samples=12, batch_size=5, value=2.0)
        assert single.ace == pytest.approx(float(ranking.ace[u]), abs=1e-12)
        assert single.ablated == pytest.approx(float(ranking.ablated[u]), abs=1e-12)
        assert single.original == pytest.approx(ranking.original, abs=1e-12)


def test_ablating_planted_units_removes_the_concept_and_inserting_adds_it(gan):
    g, s, info = gan
    units = info["planted"]["tree"]
    ab = ace(g, "layer3", units, s, "tree", num_samples=8, mode="ablate", batch_size=8)
    ins = ace(g, "layer3", units, s, "tree", num_samples=8, mode="insert", batch_size=8)
    assert ab.original > 0.05
    assert ab.ablated < 0.3 * ab.original          # only the weak mixed units still draw trees
    assert ab.ace == pytest.approx(ab.original - ab.ablated)
    assert ins.inserted > 0.8                      # inserted everywhere (0.99 quantile): mostly tree
    assert ins.value.shape == (24,) and bool((ins.value > 0).all())
    # A cell-sized insertion adds a little tree; outside the cell nothing changes much.
    pos = torch.zeros(16, 16)
    pos[6:10, 6:10] = 1
    local = ace(g, "layer3", units, s, "tree", num_samples=8, mode="insert", positions=pos, batch_size=8)
    assert 0.0 < local.ace < ins.ace


def test_concept_conditioned_mean_value(gan):
    g, s, info = gan
    res = ace(g, "layer3", info["planted"]["sun"], s, "sun", num_samples=8, value="mean", batch_size=8)
    noise = res.value[info["noise"]]
    planted = res.value[info["planted"]["sun"]]
    assert float(planted.min()) > float(noise.max())  # sun units fire where the sun is
    assert res.ace > 0.3


def test_alpha_optimisation_gives_planted_units_the_largest_alpha(gan):
    g, s, info = gan
    res = optimize_alpha(g, "layer3", s, "door", steps=12, batch_size=3, value=2.0, lr=0.04)
    assert sorted(res.order[:3].tolist()) == info["planted"]["door"]
    assert float(res.alpha.min()) >= 0.0 and float(res.alpha.max()) <= 1.0
    assert len(res.history) == 12


def test_gandissect_preset_runs_and_the_ploc_bug_changes_the_result(gan):
    g, s, _ = gan
    kw = dict(num_samples=6, epochs=1, batch_size=2, value=2.0, preset="gandissect",
              init=torch.linspace(0, 1, 24))
    fixed = optimize_alpha(g, "layer3", s, "tree", **kw)
    buggy = optimize_alpha(g, "layer3", s, "tree", reproduce_ploc_bug=True, **kw)
    for r in (fixed, buggy):
        assert r.alpha.shape == (24,) and float(r.alpha.min()) >= 0 and float(r.alpha.max()) <= 1
        assert r.preset == "gandissect" and len(r.history) == 1     # the epoch's leftover batches update
    assert not torch.equal(fixed.alpha, buggy.alpha)


def test_bad_input_is_a_clear_error(gan):
    g, s, _ = gan
    with pytest.raises(ValueError, match=r"units \[24\] are out of range.*24 units"):
        ace(g, "layer3", [3, 24], s, "tree", num_samples=2)
    with pytest.raises(ValueError, match="out of range"):
        ace(g, "layer3", [-1], s, "tree", num_samples=2)
    with pytest.raises(LookupError, match="layer7"):
        rank_units_by_ace(g, "layer7", s, "tree", num_samples=2)
    with pytest.raises(ValueError, match="not a segmenter class"):
        ace(g, "layer3", [0], s, "cloud", num_samples=2)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        ace(g, "layer3", [0], s, 5, num_samples=2)
    with pytest.raises(ValueError, match="mode"):
        ace(g, "layer3", [0], s, "tree", num_samples=2, mode="remove")
    with pytest.raises(ValueError, match="24"):
        ace(g, "layer3", [0], s, "tree", num_samples=2, value=torch.ones(3))

    class NoSoft:
        num_classes = 5

        def __call__(self, images):
            return s(images)

    with pytest.raises(TypeError, match="soft_scores"):
        optimize_alpha(g, "layer3", NoSoft(), 1, steps=1)
