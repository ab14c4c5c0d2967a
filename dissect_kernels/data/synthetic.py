"""A synthetic dataset in exactly the Broden on-disk format: shapes with parts on a textured
wall over a ground material, colour labels per pixel, texture and scene as image-level labels.
Deterministic from the seed; used by the tests, the demo and the default model's training."""
from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image

# Broden colour names with the RGB drawn for them.
COLORS = [("black", (28, 28, 28)), ("blue", (40, 80, 220)), ("brown", (135, 80, 40)),
          ("gray", (128, 128, 128)), ("green", (40, 170, 60)), ("orange", (245, 140, 30)),
          ("pink", (250, 150, 190)), ("purple", (130, 50, 170)), ("red", (215, 35, 35)),
          ("white", (240, 240, 240)), ("yellow", (240, 220, 40))]
WALL_COLORS = ("gray", "pink", "purple", "orange", "black")
# Ground material -> (scene place name, colour label of its pixels).
GROUNDS = [("grass", "meadow", "green"), ("sand", "beach", "yellow"), ("water", "lake", "blue"),
           ("brick", "courtyard", "brown"), ("snow", "tundra", "white")]
SHAPES = ("disc", "box", "triangle", "cross", "diamond", "star", "bar")
PARTS = (("disc-core", "disc"), ("box-lid", "box"), ("box-base", "box"), ("triangle-apex", "triangle"),
         ("cross-hub", "cross"), ("diamond-top", "diamond"), ("star-core", "star"), ("bar-end", "bar"))
TEXTURES = ("striped", "banded", "dotted", "chequered", "zigzagged")
# Columns of index.csv and rows of category.csv, in Broden's column order.
CATEGORIES = ("color", "object", "material", "part", "scene", "texture")


PIXEL_ID_BASE = 300   # material/object/part ids start above 255, so label PNGs use G


def synthetic_concepts() -> list[tuple[int, str, str]]:
    """(id, name, category) of every synthetic concept: colours 1-11, scenes (ground place x
    biggest object) and textures next, then material, object and part from PIXEL_ID_BASE + 1
    (numbers in between are unused, which label.csv allows), so their PNGs exercise G."""
    low = [(c, "color") for c, _ in COLORS]
    low += [(f"{place}_{s}", "scene") for _, place, _ in GROUNDS for s in SHAPES]
    low += [(t, "texture") for t in TEXTURES]
    high = [(g, "material") for g, _, _ in GROUNDS]
    high += [(s, "object") for s in SHAPES]
    high += [(p, "part") for p, _ in PARTS]
    return ([(i + 1, n, c) for i, (n, c) in enumerate(low)]
            + [(PIXEL_ID_BASE + 1 + i, n, c) for i, (n, c) in enumerate(high)])


_IDS = {(c, n): i for i, n, c in synthetic_concepts()}
_RGB = {n: np.array(v, dtype=np.float32) for n, v in COLORS}


def _shape(kind: str, u, v):
    """Inside-mask of a unit shape at offsets (u, v) in units of its size; and its part masks."""
    if kind == "disc":
        rr = u * u + v * v
        return rr <= 1, [rr <= 0.45 ** 2]
    if kind == "box":
        m = (np.abs(u) <= 0.9) & (np.abs(v) <= 0.75)
        return m, [v < -0.35, v > 0.4]
    if kind == "triangle":
        m = (v >= -1) & (v <= 0.8) & (np.abs(u) <= (v + 1) / 1.8)
        return m, [v < -0.3]
    if kind == "cross":
        hub = (np.abs(u) <= 0.32) & (np.abs(v) <= 0.32)
        m = ((np.abs(u) <= 1) & (np.abs(v) <= 0.32)) | ((np.abs(v) <= 1) & (np.abs(u) <= 0.32))
        return m, [hub]
    if kind == "diamond":
        return np.abs(u) + np.abs(v) <= 1, [v < -0.35]
    if kind == "star":
        rho, theta = np.hypot(u, v), np.arctan2(u, -v)
        return rho <= 0.55 + 0.45 * np.cos(5 * theta), [rho <= 0.4]
    if kind == "bar":
        return (np.abs(u) <= 1.25) & (np.abs(v) <= 0.35), [np.abs(u) >= 0.85]
    raise ValueError(kind)


def _shade(rgb):
    """The colour parts and wall patterns are drawn in: darker, or lighter for dark colours."""
    return rgb * 0.55 if rgb.mean() > 70 else rgb * 0.5 + 110


def _frac(x):
    return x - np.floor(x)


def _sample(rng: np.random.Generator) -> dict:
    """Everything random about one image except pixel noise."""
    wall = WALL_COLORS[rng.integers(len(WALL_COLORS))]
    n_obj = int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))
    objects = []
    for _ in range(n_obj):
        kind = SHAPES[rng.integers(len(SHAPES))]
        choices = [c for c, _ in COLORS if c != wall]
        objects.append(dict(kind=kind, color=choices[rng.integers(len(choices))],
                            cx=rng.uniform(0.18, 0.82), cy=rng.uniform(0.2, 0.8),
                            r=rng.uniform(0.12, 0.22)))
    return dict(ground=int(rng.integers(len(GROUNDS))), horizon=rng.uniform(0.55, 0.75),
                wall=wall, texture=int(rng.integers(len(TEXTURES))),
                period=rng.uniform(0.07, 0.12), phase=rng.uniform(0, 1), objects=objects,
                seed=int(rng.integers(2 ** 31)))


def _texture_mask(t: str, xx, yy, p, phase):
    if t == "striped":
        return _frac(yy / p + phase) < 0.45
    if t == "banded":
        return _frac(xx / p + phase) < 0.45
    if t == "dotted":
        return (_frac(xx / p + phase) - 0.5) ** 2 + (_frac(yy / p) - 0.5) ** 2 < 0.28 ** 2
    if t == "chequered":
        return (np.floor(xx / p + phase) + np.floor(yy / p)) % 2 == 1
    if t == "zigzagged":
        tri = np.abs(2 * _frac(xx / p + phase) - 1)
        return _frac(yy / p + 0.8 * tri) < 0.45
    raise ValueError(t)


def _ground_rgb(g: str, xx, yy, rng) -> np.ndarray:
    n = xx.shape[0]
    if g == "grass":
        streak = rng.random((1, n)) * 0.35 + rng.random((n, n)) * 0.2
        return np.array([45, 150, 50], np.float32) * (0.7 + streak)[..., None]
    if g == "sand":
        return np.array([225, 198, 120], np.float32) + rng.normal(0, 14, (n, n, 1)).astype(np.float32)
    if g == "water":
        wave = np.sin(2 * np.pi * (yy / 0.05 + 0.4 * np.sin(2 * np.pi * xx / 0.2))) > 0.55
        return np.where(wave[..., None], np.float32([130, 175, 245]), np.float32([40, 90, 200]))
    if g == "brick":
        row = np.floor(yy / 0.06)
        mortar = (_frac(yy / 0.06) < 0.18) | (_frac((xx + 0.05 * (row % 2)) / 0.1) < 0.12)
        return np.where(mortar[..., None], np.float32([205, 200, 190]), np.float32([150, 75, 45]))
    if g == "snow":
        speck = rng.random((n, n)) < 0.06
        return np.where(speck[..., None], np.float32([175, 190, 225]), np.float32([242, 242, 247]))
    raise ValueError(g)


def render(spec: dict, n: int, rgb: bool):
    """Rasterise one image spec on an n x n grid of pixel centres. Returns (image uint8 or None,
    maps) with maps = dict(color, object (2 layers: top, next below), part, material) as int32."""
    c = (np.arange(n, dtype=np.float32) + 0.5) / n
    xx, yy = np.meshgrid(c, c)
    ground_name, _, ground_color = GROUNDS[spec["ground"]]
    wall = yy < spec["horizon"]
    color = np.where(wall, _IDS["color", spec["wall"]], _IDS["color", ground_color]).astype(np.int32)
    material = np.where(wall, 0, _IDS["material", ground_name]).astype(np.int32)
    top = np.zeros((n, n), np.int32)
    below = np.zeros((n, n), np.int32)
    part = np.zeros((n, n), np.int32)
    img = None
    if rgb:
        rng = np.random.default_rng(spec["seed"])
        base = _RGB[spec["wall"]]
        pat = _texture_mask(TEXTURES[spec["texture"]], xx, yy, spec["period"], spec["phase"])
        img = np.where(pat[..., None], _shade(base), base)
        img = np.where(wall[..., None], img, _ground_rgb(ground_name, xx, yy, rng))
    for ob in spec["objects"]:
        kind = ob["kind"]
        m, parts = _shape(kind, (xx - ob["cx"]) / ob["r"], (yy - ob["cy"]) / ob["r"])
        oid = _IDS["object", kind]
        under = m & (top > 0)
        below[under] = top[under]
        top[m] = oid
        part[m] = 0
        material[m] = 0
        color[m] = _IDS["color", ob["color"]]
        names = [p for p, o in PARTS if o == kind]
        for pname, pm in zip(names, parts):
            part[m & pm] = _IDS["part", pname]
        if rgb:
            col = _RGB[ob["color"]]
            img[m] = col
            for pm in parts:
                img[m & pm] = _shade(col)
    if rgb:
        img = img + rng.normal(0, spec.get("noise", 5.0), img.shape).astype(np.float32)
        img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return img, dict(color=color, object=(top, below), part=part, material=material)


def scene_id(spec: dict) -> int:
    """Scene = the ground's place name and the kind of the biggest object (first on ties)."""
    big = max(spec["objects"], key=lambda o: o["r"])
    return _IDS["scene", f"{GROUNDS[spec['ground']][1]}_{big['kind']}"]


def _png_bytes(lab: np.ndarray) -> bytes:
    rgb = np.zeros((*lab.shape, 3), np.uint8)
    rgb[..., 0] = lab % 256
    rgb[..., 1] = lab // 256
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _write_csv(path: Path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def _fmt(x: float) -> str:
    return f"{x:.4f}"


class _Totals:
    """Per-concept frequency and coverage, per-category frequency: what label.csv, c_<cat>.csv
    and category.csv report."""

    def __init__(self, num_concepts: int):
        self.freq = np.zeros(num_concepts, np.int64)
        self.cover = np.zeros(num_concepts, np.float64)
        self.cat_freq = dict.fromkeys(CATEGORIES, 0)

    def add_maps(self, cat: str, labs: list, seg: int) -> None:
        self.cat_freq[cat] += 1
        stack = np.stack(labs)
        present = np.unique(stack)
        present = present[present > 0]
        for cid in present:
            self.cover[cid] += float((stack == cid).any(axis=0).sum()) / (seg * seg)
        self.freq[present] += 1

    def add_image_label(self, cat: str, cid: int) -> None:
        self.freq[cid] += 1
        self.cover[cid] += 1.0
        self.cat_freq[cat] += 1


def _write_image(root: Path, i: int, spec: dict, image_size: int, seg: int, image_format: str,
                 totals: _Totals) -> tuple[str, dict]:
    """Render sample i: its image, label PNGs and image-level labels; returns (name, cells)."""
    img, _ = render(spec, image_size, rgb=True)
    _, maps = render(spec, seg, rgb=False)
    stem = f"synthetic/{i:06d}"
    name = f"{stem}.{image_format}"
    buf = io.BytesIO()
    options = {"format": "JPEG", "quality": 92} if image_format == "jpg" else {"format": "PNG"}
    Image.fromarray(img).save(buf, **options)
    (root / "images" / name).write_bytes(buf.getvalue())
    layers = {"color": [maps["color"]], "object": [l for l in maps["object"] if l.any()],
              "material": [maps["material"]] if maps["material"].any() else [],
              "part": [maps["part"]] if maps["part"].any() else []}
    cells = {}
    for cat, labs in layers.items():
        files = []
        for k, lab in enumerate(labs):
            fn = f"{stem}_{cat}{'' if k == 0 else k + 1}.png"
            (root / "images" / fn).write_bytes(_png_bytes(lab))
            files.append(fn)
        cells[cat] = ";".join(files)
        if labs:
            totals.add_maps(cat, labs, seg)
    for cat, cid in (("scene", scene_id(spec)), ("texture", _IDS["texture", TEXTURES[spec["texture"]]])):
        cells[cat] = str(cid)
        totals.add_image_label(cat, cid)
    return name, cells


def _write_tables(root: Path, rows: list, concepts: list, totals: _Totals) -> None:
    """index.csv, label.csv, c_<cat>.csv and category.csv."""
    freq, cover = totals.freq, totals.cover
    _write_csv(root / "index.csv", ["image", "split", "ih", "iw", "sh", "sw", *CATEGORIES], rows)
    label_rows = [[cid, name, f"{cat}({freq[cid]})", freq[cid], _fmt(cover[cid]), ""]
                  for cid, name, cat in concepts]
    _write_csv(root / "label.csv", ["number", "name", "category", "frequency", "coverage", "syns"], label_rows)
    cat_rows = []
    for cat in CATEGORIES:
        members = [(cid, name) for cid, name, c in concepts if c == cat]
        cat_rows.append([cat, members[0][0], members[-1][0], len(members), totals.cat_freq[cat]])
        _write_csv(root / f"c_{cat}.csv", ["code", "number", "name", "frequency", "coverage"],
                   [[0, 0, "-", 0, _fmt(0.0)]] +
                   [[k + 1, cid, name, freq[cid], _fmt(cover[cid])] for k, (cid, name) in enumerate(members)])
    _write_csv(root / "category.csv", ["name", "first", "last", "count", "frequency"], cat_rows)


def make_synthetic_broden(root, n_images: int = 1000, seed: int = 0, image_size: int = 112, *,
                          seg_size: int | None = None, image_format: str = "jpg",
                          noise: float = 5.0, train_fraction: float = 0.7) -> Path:
    """Write a synthetic Broden-format dataset under `root` and return its path. Segmentations
    are seg_size (default image_size // 2) square; the same arguments give byte-identical files."""
    root = Path(root)
    seg = image_size // 2 if seg_size is None else seg_size
    if n_images < 1 or image_size < 8 or seg < 1:
        raise ValueError(f"need n_images >= 1, image_size >= 8, seg_size >= 1; got "
                         f"{n_images}, {image_size}, {seg}")
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    (root / "images" / "synthetic").mkdir(parents=True, exist_ok=True)
    concepts = synthetic_concepts()
    totals = _Totals(concepts[-1][0] + 1)
    rows = []
    for i in range(n_images):
        spec = _sample(np.random.default_rng([seed, i]))
        spec["noise"] = noise
        name, cells = _write_image(root, i, spec, image_size, seg, image_format, totals)
        h = int(hashlib.md5(name.encode()).hexdigest(), 16)
        split = "train" if (h % 1000) < round(train_fraction * 1000) else "val"
        rows.append([name, split, image_size, image_size, seg, seg] + [cells[c] for c in CATEGORIES])
    _write_tables(root, rows, concepts, totals)
    return root
