"""BrodenDataset on a hand-made tiny Broden directory: decoding (R + 256*G, several layers,
image-level labels), the primary-category rule, filters, transforms and every malformed input."""
import csv
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from dissect_kernels.data import BrodenDataset, BrodenFormatError, CorruptSampleError
from dissect_kernels.data.broden import primary_categories
from dissect_kernels.data.transforms import NDL_MEAN, ndl_transform

S, H = 8, 4
# number -> name; categories (with c_<cat>.csv coverage) chosen to exercise the primary rule.
LABELS = {1: "disc", 2: "core", 3: "thing", 5: "park", 7: "orphan", 300: "big", 600: "bigger"}
COVERAGE = {"object": {1: 5.0, 2: 2.0, 3: 3.0, 300: 1.0},
            "part": {2: 2.0, 3: 1.0, 600: 1.5},
            "scene": {5: 4.0}}
CATS = ["object", "part", "scene"]            # category.csv order
PIXEL_IDS = np.array([0, 1, 2, 3, 300, 600])


def _write(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _png(path, lab):
    rgb = np.zeros((*lab.shape, 3), np.uint8)
    rgb[..., 0], rgb[..., 1] = lab % 256, lab // 256
    Image.fromarray(rgb).save(path)


@pytest.fixture
def tiny(tmp_path):
    """Three images; image 0 has two object layers, image 1 one object + one part layer and a
    scene, image 2 (val) only a part layer and two image-level labels."""
    root = tmp_path / "broden"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    truth = {}
    rows = []
    cells = [dict(object=["a0.png", "b0.png"], part=[], scene=[]),
             dict(object=["a1.png"], part=["p1.png"], scene=["5"]),
             dict(object=[], part=["p2.png"], scene=["5", "7"])]
    for i, cell in enumerate(cells):
        Image.fromarray(rng.integers(0, 256, (S, S, 3), dtype=np.uint8)).save(root / "images" / f"im{i}.png")
        layers = []
        for name in cell["object"] + cell["part"]:
            lab = rng.choice(PIXEL_IDS, size=(H, H)).astype(np.int32)
            _png(root / "images" / name, lab)
            layers.append(lab)
        truth[i] = (layers, [int(x) for x in cell["scene"]])
        rows.append([f"im{i}.png", "val" if i == 2 else "train", S, S, H, H,
                     ";".join(cell["object"]), ";".join(cell["part"]), ";".join(cell["scene"])])
    _write(root / "index.csv", ["image", "split", "ih", "iw", "sh", "sw", *CATS], rows)
    _write(root / "label.csv", ["number", "name", "category", "frequency", "coverage", "syns"],
           [[n, name, "", 1, 1.0, ""] for n, name in LABELS.items()])
    for cat in CATS:
        _write(root / f"c_{cat}.csv", ["code", "number", "name", "frequency", "coverage"],
               [[0, 0, "-", 0, 0.0]] + [[k + 1, n, LABELS[n], 1, cov]
                                        for k, (n, cov) in enumerate(COVERAGE[cat].items())])
    _write(root / "category.csv", ["name", "first", "last", "count", "frequency"],
           [[c, 1, 600, len(COVERAGE[c]), 3] for c in CATS])
    return root, truth


def test_decode_round_trip(tiny):
    root, truth = tiny
    ds = BrodenDataset(root)
    assert len(ds) == 3 and ds.num_layers == 2 and ds.num_image_labels == 2
    assert ds.resolution == S and ds.label_size == H
    assert ds.num_concepts == 601 and ds.concept_names[0] == "-" and ds.concept_names[600] == "bigger"
    assert ds.concept_names[4] == ""                     # unused number
    for i in range(3):
        item = ds[i]
        layers, ints = truth[i]
        assert item["index"] == i
        assert item["image"].dtype == torch.float32 and item["image"].shape == (3, S, S)
        assert item["labels"].dtype == torch.int32 and item["labels"].shape == (2, H, H)
        expect = np.zeros((2, H, H), np.int32)
        expect[:len(layers)] = layers                    # dominant first, then 0-padding
        np.testing.assert_array_equal(item["labels"].numpy(), expect)
        assert item["image_labels"].tolist() == (ints + [0, 0])[:2]
    # ids > 255 really went through G
    assert (ds[0]["labels"] >= 256).any()


def test_primary_category_rule(tiny):
    root, _ = tiny
    ds = BrodenDataset(root)
    cat = {n: ds.category_names[int(ds.category_of[n])] for n in LABELS}
    assert cat[1] == "object"          # only object
    assert cat[2] == "part"            # tie 2.0 / 2.0: later category wins
    assert cat[3] == "object"          # 3.0 > 1.0
    assert cat[600] == "part" and cat[300] == "object" and cat[5] == "scene"
    assert cat[7] == "scene"           # in no c_<cat>.csv: the last category
    assert ds.category_of.dtype == torch.int64 and ds.category_of.shape == (601,)
    sub = BrodenDataset(root, categories=["part", "object"])
    assert sub.category_names == ["object", "part"]      # category.csv order
    assert sub.category_names[int(sub.category_of[5])] == "part"   # scene excluded -> last selected
    assert sub.num_image_labels == 1 and int(sub[1]["image_labels"].abs().sum()) == 0


def test_primary_categories_function():
    cov = np.array([[0, 0, 0], [1, 1, 0], [2, 1, 2], [0, 3, 1]], float)
    assert primary_categories(cov).tolist() == [2, 1, 2, 1]


def test_filters(tiny):
    root, truth = tiny
    assert len(BrodenDataset(root, max_images=2)) == 2
    val = BrodenDataset(root, split="val")
    assert len(val) == 1 and val.image_path(0).name == "im2.png"
    assert val.num_layers == 1                            # max L over the selected images
    np.testing.assert_array_equal(val[0]["labels"][0].numpy(), truth[2][0][0])
    obj = BrodenDataset(root, categories="object")
    assert obj.num_layers == 2 and obj.num_image_labels == 1
    np.testing.assert_array_equal(obj[1]["labels"][0].numpy(), truth[1][0][0])
    assert int(obj[1]["labels"][1].abs().sum()) == 0     # the part layer is not loaded
    assert len(BrodenDataset(root, categories=["object"], require_labels=True)) == 2
    with pytest.raises(ValueError, match="not in .*category.csv.*available"):
        BrodenDataset(root, categories=["colour"])


def test_image_size_and_uint8(tiny):
    root, _ = tiny
    ds = BrodenDataset(root, image_size=16)
    item = ds[0]
    assert item["image"].shape == (3, 16, 16) and item["labels"].shape == (2, H, H)
    assert ds.resolution == 16 and ds.label_size == H
    u8 = ds.load_image_uint8(0)
    assert u8.dtype == np.uint8 and u8.shape == (16, 16, 3)
    native = BrodenDataset(root).load_image_uint8(1)
    np.testing.assert_array_equal(native, np.asarray(Image.open(root / "images" / "im1.png").convert("RGB")))


def test_normalisations(tiny):
    root, _ = tiny
    ds = BrodenDataset(root)
    u8 = torch.from_numpy(ds.load_image_uint8(0)).permute(2, 0, 1).float()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    torch.testing.assert_close(ds[0]["image"], (u8 / 255 - mean) / std)
    ndl = BrodenDataset(root, transform=ndl_transform())
    caffe = torch.tensor([124.6901, 118.6897, 109.5388]).view(3, 1, 1)
    torch.testing.assert_close(ndl[0]["image"], (u8 - caffe) / (255 * 0.224), rtol=1e-5, atol=1e-5)
    assert abs(NDL_MEAN[0] * 255 - 124.6901) < 1e-9


def _edit(path, old, new):
    path.write_text(path.read_text().replace(old, new, 1))


def test_missing_root_and_files(tiny, tmp_path):
    root, _ = tiny
    with pytest.raises(FileNotFoundError, match="nowhere"):
        BrodenDataset(tmp_path / "nowhere")
    for name in ("label.csv", "category.csv", "index.csv", "c_part.csv"):
        broken = tmp_path / f"no_{name}"
        shutil.copytree(root, broken)
        (broken / name).unlink()
        with pytest.raises(FileNotFoundError, match=name.replace(".", r"\.")):
            BrodenDataset(broken)


@pytest.mark.parametrize("file,old,new,pattern", [
    ("index.csv", "sh,", "shh,", r"index\.csv, line 1: missing column.*'sh'"),
    ("index.csv", "im1.png,train,8", "im1.png,train,eight", r"index\.csv, line 3: column 'ih'.*'eight'"),
    ("index.csv", "a1.png,p1.png,5", "a1.png,p1.png,9", r"index\.csv, line 3: column 'scene'.*9 is not in label\.csv"),
    ("index.csv", "im1.png,train,8,8", "im1.png,train,8,8,8", r"index\.csv, line 3: expected 9 fields"),
    ("label.csv", "300,big", "3x0,big", r"label\.csv, line \d: column 'number'.*'3x0'"),
    ("label.csv", "number,name,category", "number,nom,category", r"label\.csv, line 1: missing column.*'name'"),
    ("label.csv", "1,disc,,1,1.0", "1,disc,object[3],1,1.0", r"label\.csv, line 2: column 'category'"),
    ("c_object.csv", "4,300,big", "4,301,big", r"c_object\.csv, line 6: label number 301 is not in label\.csv"),
    ("c_part.csv", "1,2,core,1,2.0", "1,2,core,1,lots", r"c_part\.csv, line 3: column 'coverage'"),
    ("category.csv", "object,1,600", "object,one,600", r"category\.csv, line 2: column 'first'"),
])
def test_malformed_csv(tiny, file, old, new, pattern):
    root, _ = tiny
    assert old in (root / file).read_text()
    _edit(root / file, old, new)
    with pytest.raises(BrodenFormatError, match=pattern):
        BrodenDataset(root)


def test_corrupt_samples_are_skippable(tiny):
    root, _ = tiny
    (root / "images" / "b0.png").unlink()                                    # missing PNG
    Image.fromarray(np.zeros((H + 1, H, 3), np.uint8)).save(root / "images" / "p1.png")   # wrong size
    ds = BrodenDataset(root)
    with pytest.raises(CorruptSampleError, match=r"b0\.png: label PNG is missing \(index\.csv line 2\)") as e:
        ds[0]
    assert e.value.index == 0
    with pytest.raises(CorruptSampleError, match=r"p1\.png: label PNG is 4x5 .* says 4x4"):
        ds[1]
    assert "b0.png" in ds.check(0) and "p1.png" in ds.check(1)
    assert ds.check(2) is None and ds[2]["labels"].shape == (2, H, H)


def test_unknown_pixel_label_and_corrupt_image(tiny):
    root, _ = tiny
    lab = np.full((H, H), 4, np.int32)        # 4 is a gap in label.csv
    lab[0, 0] = 600 + 256                      # and 856 is beyond it
    _png(root / "images" / "p2.png", lab)
    (root / "images" / "im1.png").write_bytes(b"not an image at all")
    ds = BrodenDataset(root)
    with pytest.raises(CorruptSampleError, match=r"p2\.png: label ids \[4, 856\] are not in label\.csv"):
        ds[2]
    with pytest.raises(CorruptSampleError, match=r"im1\.png: image cannot be read"):
        ds[1]
    with pytest.raises(CorruptSampleError, match=r"im1\.png"):
        ds.load_image_uint8(1)
    (root / "images" / "im0.png").unlink()
    with pytest.raises(CorruptSampleError, match=r"im0\.png: image file is missing"):
        ds[0]


def test_image_size_mismatch_is_reported(tiny):
    root, _ = tiny
    Image.fromarray(np.zeros((S, S + 2, 3), np.uint8)).save(root / "images" / "im1.png")
    with pytest.raises(CorruptSampleError, match=r"im1\.png: image is 10x8 .* says 8x8"):
        BrodenDataset(root)[1]


def test_dataloader_batches(tiny):
    root, _ = tiny
    batch = next(iter(torch.utils.data.DataLoader(BrodenDataset(root), batch_size=3)))
    assert batch["image"].shape == (3, 3, S, S) and batch["labels"].shape == (3, 2, H, H)
    assert batch["image_labels"].shape == (3, 2) and batch["index"].tolist() == [0, 1, 2]
