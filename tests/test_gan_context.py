"""Insertion context maps (dissect_kernels.context) on the shipped tiny generator. Its planted
rule: every class's logit is the sum of its own units, so inserted door units (at the
concept-conditioned mean) outbid the weak grey background almost everywhere but not the trees,
whose own units stay strongly active: doors appear on background, rarely on trees."""
import pytest
import torch

from dissect_kernels.context import insertion_context, location_masks
from dissect_kernels.generated import sample_z
from dissect_kernels.hooks import Edit, Trace
from dissect_kernels.models.tiny_gan import default_segmenter, load_default_generator, tiny_gan_info

DOOR = tiny_gan_info()["planted"]["door"]


@pytest.fixture(scope="module")
def gen():
    return load_default_generator()


def test_planted_context_rule_door_on_background_not_on_trees(gen):
    r = insertion_context(gen, "layer3", DOOR, default_segmenter(), "door", num_samples=12, value="mean")
    names = r.concept_names
    rate, trials = r.context_rate(), r.counts["context_trials"]
    bg, tree = names.index("background"), names.index("tree")
    assert trials[bg] > 100 and trials[tree] > 30
    assert rate[bg] > 0.9                                  # doors appear on background ...
    assert rate[tree] < 0.6                                # ... far less often on trees
    assert int(r.counts["trials"].sum()) == 12 * 64 and r.grid == (8, 8)
    js = r.to_json()
    assert js["concept"] == "door" and len(js["appear_rate"]) == 8 and js["units"] == DOOR
    assert {c["class"] for c in js["by_context"]} == set(names)


def test_batched_counts_equal_one_insertion_at_a_time(gen):
    """The map's counts equal a plain loop: one Trace edit per sample and location."""
    seg, value, grid = default_segmenter(), 1.0, (4, 4)
    r = insertion_context(gen, "layer3", DOOR, seg, "door", num_samples=3, value=value, grid=grid, batch_size=2)
    masks = location_masks((16, 16), grid)
    alpha_units = torch.zeros(24)
    alpha_units[DOOR] = 1
    appeared = torch.zeros(grid, dtype=torch.int64)
    pixels = torch.zeros(grid, dtype=torch.int64)
    z = sample_z(torch.arange(3), 48)
    for s in range(16):
        alpha = alpha_units[None, :, None, None] * masks[s]
        with torch.no_grad(), Trace(gen, "layer3", edit=Edit(alpha, value)):
            images = gen(z)
        door = (seg(images)[:, 0] == 2)[:, (s // 4) * 16:(s // 4 + 1) * 16, (s % 4) * 16:(s % 4 + 1) * 16]
        n = door.sum((1, 2))
        pixels[s // 4, s % 4] = n.sum()
        appeared[s // 4, s % 4] = (n >= 0.5 * 256).sum()
    assert torch.equal(r.counts["pixels_after"], pixels)
    assert torch.equal(r.counts["appeared"], appeared)


def test_bad_arguments(gen):
    seg = default_segmenter()
    with pytest.raises(ValueError, match="divide"):
        insertion_context(gen, "layer3", DOOR, seg, "door", num_samples=1, grid=3)
    with pytest.raises(ValueError, match="min_coverage"):
        insertion_context(gen, "layer3", DOOR, seg, "door", num_samples=1, min_coverage=0)
    with pytest.raises(ValueError, match="out of range"):
        insertion_context(gen, "layer3", [99], seg, "door", num_samples=1)
    with pytest.raises(ValueError, match="cloud"):
        insertion_context(gen, "layer3", DOOR, seg, "cloud", num_samples=1)
