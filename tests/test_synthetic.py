"""make_synthetic_broden: exact Broden format (read back by BrodenDataset), determinism, label
round trip against the renderer (ids > 255, several object layers), stats, sizes and speed."""
import time

import numpy as np
import pytest

from dissect_kernels.data import BrodenDataset, make_synthetic_broden, synthetic_concepts
from dissect_kernels.data.broden import read_csv
from dissect_kernels.data.synthetic import CATEGORIES, GROUNDS, SHAPES, _sample, render, scene_id

N, SIZE = 24, 64


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    make_synthetic_broden(root, n_images=N, seed=3, image_size=SIZE)
    return root


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic(synth, tmp_path):
    again = make_synthetic_broden(tmp_path / "again", n_images=N, seed=3, image_size=SIZE)
    a, b = _files(synth), _files(again)
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    other = _files(make_synthetic_broden(tmp_path / "other", n_images=N, seed=4, image_size=SIZE))
    assert a.keys() != other.keys() or any(a[k] != other[k] for k in a)


def test_round_trip_against_renderer(synth):
    ds = BrodenDataset(synth)
    assert ds.category_names == list(CATEGORIES)
    assert ds.resolution == SIZE and ds.label_size == SIZE // 2
    two_layers = 0
    for i in range(N):
        spec = _sample(np.random.default_rng([3, i]))
        _, maps = render(spec, SIZE // 2, rgb=False)
        item = ds[i]
        layers = item["labels"].numpy()
        expect = [maps["color"]] + [l for l in maps["object"] if l.any()]
        expect += [m for m in (maps["material"], maps["part"]) if m.any()]
        for k, lab in enumerate(expect):
            np.testing.assert_array_equal(layers[k], lab)
        assert not layers[len(expect):].any()
        two_layers += maps["object"][1].any()
        # the second object layer lies under the first (occlusion)
        assert (maps["object"][0][maps["object"][1] > 0] > 0).all()
        scene, texture = item["image_labels"].tolist()
        assert scene == scene_id(spec)
        assert ds.concept_names[texture] in ("striped", "banded", "dotted", "chequered", "zigzagged")
    assert two_layers > 0
    all_ids = np.unique(np.concatenate([ds[i]["labels"].numpy().ravel() for i in range(N)]))
    assert (all_ids > 255).any() and ((all_ids > 0) & (all_ids < 256)).any()


def test_images_show_what_labels_say(synth):
    """Object pixels are drawn in the colour their colour label names."""
    from dissect_kernels.data.synthetic import COLORS
    ds = BrodenDataset(synth)
    rgb = dict(COLORS)
    for i in range(4):
        img = ds.load_image_uint8(i)[::2, ::2].astype(float)     # seg-resolution pixel centres (approx.)
        col = ds[i]["labels"][0].numpy()
        for cid in np.unique(col):
            name = ds.concept_names[cid]
            inside = col == cid
            err = np.abs(img[inside].mean(0) - np.array(rgb[name])).max()
            assert err < 90, (i, name, err)      # textures/parts shade some pixels


def test_stats_match_data(synth):
    ds = BrodenDataset(synth)
    C = ds.num_concepts
    freq, cover = np.zeros(C, int), np.zeros(C)
    for i in range(N):
        item = ds[i]
        labs = item["labels"].numpy()
        for c in np.unique(labs[labs > 0]):
            freq[c] += 1
            cover[c] += (labs == c).any(0).mean()
        for c in item["image_labels"].tolist():
            freq[c] += 1
            cover[c] += 1
    rows = {int(r["number"]): r for _, r in read_csv(synth / "label.csv", ["number"])}
    for cid, name, cat in synthetic_concepts():
        assert rows[cid]["name"] == name and rows[cid]["category"] == f"{cat}({freq[cid]})"
        assert int(rows[cid]["frequency"]) == freq[cid]
        assert float(rows[cid]["coverage"]) == pytest.approx(cover[cid], abs=1e-4)
        assert ds.coverage[cid, ds.category_names.index(cat)] == pytest.approx(cover[cid], abs=1e-4)
        if freq[cid]:
            assert ds.category_names[int(ds.category_of[cid])] == cat
    cats = {r["name"]: r for _, r in read_csv(synth / "category.csv", ["name"])}
    for cat in CATEGORIES:
        ids = [cid for cid, _, c in synthetic_concepts() if c == cat]
        assert (int(cats[cat]["first"]), int(cats[cat]["last"]), int(cats[cat]["count"])) == (min(ids), max(ids), len(ids))


def test_inventory():
    inv = synthetic_concepts()
    ids = [i for i, _, _ in inv]
    assert len(set(ids)) == len(ids) and len({n for _, n, _ in inv}) == len(inv)
    assert {c for _, _, c in inv} == set(CATEGORIES)
    assert sum(c == "scene" for _, _, c in inv) == len(GROUNDS) * len(SHAPES)
    assert all(i > 255 for i, _, c in inv if c in ("object", "part", "material"))


@pytest.mark.parametrize("size", [227, 33])
def test_other_sizes(tmp_path, size):
    ds = BrodenDataset(make_synthetic_broden(tmp_path, n_images=2, image_size=size))
    item = ds[1]
    assert item["image"].shape == (3, size, size) and item["labels"].shape[-2:] == (size // 2, size // 2)
    assert ds.load_image_uint8(0).shape == (size, size, 3)


def test_png_images_and_seg_size(tmp_path):
    ds = BrodenDataset(make_synthetic_broden(tmp_path, n_images=3, image_size=48, seg_size=48, image_format="png"))
    assert ds.image_path(0).suffix == ".png" and ds.label_size == 48


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="image_format"):
        make_synthetic_broden(tmp_path, n_images=2, image_format="gif")
    with pytest.raises(ValueError, match="n_images"):
        make_synthetic_broden(tmp_path, n_images=0)


def test_speed_small(tmp_path):
    t = time.perf_counter()
    make_synthetic_broden(tmp_path, n_images=50, image_size=112)
    assert time.perf_counter() - t < 10       # ~1 s on one idle core


@pytest.mark.slow
def test_speed_1000(tmp_path):
    t = time.perf_counter()
    make_synthetic_broden(tmp_path, n_images=1000, image_size=112)
    assert time.perf_counter() - t < 20
