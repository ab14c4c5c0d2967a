"""The compose analysis: planted units that fire on formulas ("red AND square", "bar OR green",
"square AND NOT blue", a length-3 one) are labelled by them and not by any single concept; the
streaming search equals the straightforward one that materialises every formula mask."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from dissect_kernels.analysis import formulas as fm
from dissect_kernels.analysis.compose import compose, signatures

SQUARE, BAR, BLOCK, RED, BLUE, GREEN, SCENE = 1, 2, 3, 4, 5, 6, 7
NAMES = ["-", "square", "bar", "block", "red", "blue", "green", "indoor"]
SHAPES = {SQUARE: (8, 8), BAR: (4, 12), BLOCK: (12, 4)}


class Shapes:
    """32x32 images, one shape (square 8x8, bar 4x12, block 12x4) per quadrant at even offsets
    in a random colour; label layer 0 = shape, layer 1 = colour; an image-level scene label on
    half the images. Image channel 0 = shape id, channel 1 = colour id."""

    category_names = ["object", "color", "scene"]
    concept_names = NAMES
    num_concepts, num_categories = len(NAMES), 3
    category_of = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2])

    def __init__(self, n: int = 24, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.items = []
        for _ in range(n):
            lab = np.zeros((2, 32, 32), np.int64)
            for qy, qx in ((0, 0), (0, 16), (16, 0), (16, 16)):
                shape = int(rng.choice([SQUARE, BAR, BLOCK]))
                h, w = SHAPES[shape]
                y, x = qy + 2 * rng.integers(0, (16 - h) // 2 + 1), qx + 2 * rng.integers(0, (16 - w) // 2 + 1)
                lab[0, y:y + h, x:x + w] = shape
                lab[1, y:y + h, x:x + w] = int(rng.choice([RED, BLUE, GREEN]))
            self.items.append((lab, SCENE if rng.random() < 0.5 else 0))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        lab, scene = self.items[i]
        lab = torch.from_numpy(lab)
        return dict(image=torch.stack([lab[0].float(), lab[1].float(), lab[0] * 0.0]), labels=lab.clone(),
                    image_labels=torch.tensor([scene]), index=i)


class FormulaUnits(nn.Module):
    """Layer `units`: each unit is a formula's mask, average-pooled 2x2 (so it must be upsampled
    back): red AND square; bar OR green; square AND NOT blue; (square OR bar) AND NOT green."""

    def __init__(self):
        super().__init__()
        self.units = nn.Identity()

    def forward(self, x):
        shape, colour = x[:, 0], x[:, 1]
        is_ = lambda t, c: (t == c).float()  # noqa: E731
        maps = [is_(colour, RED) * is_(shape, SQUARE),
                torch.maximum(is_(shape, BAR), is_(colour, GREEN)),
                is_(shape, SQUARE) * (1 - is_(colour, BLUE)),
                torch.maximum(is_(shape, SQUARE), is_(shape, BAR)) * (1 - is_(colour, GREEN))]
        return self.units(nn.functional.avg_pool2d(torch.stack(maps, 1), 2))


def test_planted_formulas_are_found_and_beat_single_concepts(tmp_path):
    ds = Shapes()
    rec = compose(FormulaUnits(), ["units"], ds, thresholds={"units": torch.full((4,), 0.5)}, batch_size=8,
                  device="cpu", progress=False, out_dir=tmp_path)
    units = rec["layers"]["units"]["units"]
    want = ["square AND red", "bar OR green", "square AND NOT blue"]
    for x, formula in zip(units, want):
        assert (x["layer"], x["formula"], x["formula_iou"], x["length"]) == ("units", formula, 1.0, 2), x
    # (square OR bar) AND NOT green has equivalents, e.g. (red OR blue) AND NOT block: any of length 3
    assert (units[3]["formula_iou"], units[3]["length"]) == (1.0, 3), units[3]
    assert all(x["iou"] < 0.8 for x in units)         # no single concept fits
    assert units[0]["label"] in ("red", "square") and units[1]["label"] in ("bar", "green")
    assert json.loads((tmp_path / "compose.json").read_text())["layers"]["units"]["units"][0]["formula"] == want[0]
    page = (tmp_path / "compose.html").read_text()
    assert "square AND red" in page and "compose.html" in (tmp_path / "index.html").read_text()


def test_streaming_search_equals_materialised_search():
    """Random unit masks and labels (two label layers, image-level labels, concepts repeated
    across layers): the per-signature counts give exactly the naive search's beams and IoUs."""
    g = torch.Generator().manual_seed(3)
    B, U, H, W, C = 12, 9, 10, 10, 9
    labels = torch.randint(0, C, (B, 2, H, W), generator=g) * (torch.rand(B, 2, H, W, generator=g) < 0.7)
    image_labels = torch.randint(0, C, (B, 2), generator=g)
    acts = torch.rand(B, U, H, W, generator=g) + labels[:, :1].float() * torch.rand(1, U, 1, 1, generator=g) * 0.2
    thr = torch.quantile(acts.permute(1, 0, 2, 3).reshape(U, -1), 0.8, dim=1)

    class Data:
        category_names, num_categories = ["a", "b"], 2
        num_concepts, concept_names = C, [f"c{i}" for i in range(C)]
        category_of = torch.tensor([0] * 5 + [1] * 4)

        def __len__(self):
            return B

        def __getitem__(self, i):
            return dict(image=acts[i], labels=labels[i].clone(), image_labels=image_labels[i].clone(), index=i)

    model = nn.Sequential(nn.Identity())
    rec = compose(model, ["0"], Data(), thresholds={"0": thr}, batch_size=5, device="cpu", progress=False)
    got = rec["layers"]["0"]["units"]
    masks = (acts > thr[None, :, None, None]).permute(1, 0, 2, 3).reshape(U, -1)
    concepts = torch.zeros(C, B, H, W, dtype=torch.bool)
    for c in range(1, C):
        concepts[c] = (labels == c).any(1) | (image_labels == c).any(1)[:, None, None]
    beams, vals = fm.naive_search(masks, concepts.reshape(C, -1), width=4)
    for u in range(U):
        assert got[u]["formula"] == fm.name(beams[u, 0], Data.concept_names)
        assert got[u]["formula_iou"] == pytest.approx(float(vals[u, 0]), abs=1e-12)


def test_signatures_cover_every_pixel_once():
    lab = torch.tensor([[[[1, 2], [0, 1]], [[3, 0], [3, 3]]]])          # [1, 2, 2, 2]
    sig, member, count = signatures(lab, torch.tensor([[4]]), 5)
    assert int(count.sum()) == 4 and member.shape == (3, 5)
    rows = {tuple(member[int(s)].nonzero().flatten().tolist()) for s in sig}
    assert rows == {(1, 3, 4), (2, 4), (3, 4)}


def test_formula_names_and_canonical_forms():
    assert fm.name([1, fm.OR, 2, fm.AND_NOT, 3], NAMES) == "(square OR bar) AND NOT block"
    assert fm.canonical([4, fm.AND, 1, 0, 0]) == fm.canonical([1, fm.AND, 4, 0, 0])
    assert fm.canonical([4, fm.AND_NOT, 1, 0, 0]) != fm.canonical([1, fm.AND_NOT, 4, 0, 0])
    with pytest.raises(ValueError, match="max_length"):
        compose(FormulaUnits(), ["units"], Shapes(2), max_length=4, progress=False)


def test_cli_on_the_default_model(tmp_path, capsys):
    from dissect_kernels.cli import main
    out = tmp_path / "run"
    assert main(["analyze", "compose", "--dataset", "synthetic:24", "--layers", "conv4", "--beam", "3",
                 "--out", str(out), "--quiet"]) == 0
    rec = json.loads((out / "compose.json").read_text())
    units = rec["layers"]["conv4"]["units"]
    assert len(units) == 128 and all(x["formula_iou"] >= x["iou"] for x in units)
    assert "units best labelled by a formula" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--max-length"):
        main(["analyze", "compose", "--max-length", "4", "--out", str(out)])
