"""Reader for the Broden on-disk format (index.csv, category.csv, label.csv, c_<cat>.csv,
images/ with label PNGs decoded as R + 256*G); see REFERENCE-CONVENTIONS.md section 4."""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from dissect_kernels.data.errors import BrodenFormatError, CorruptSampleError
from dissect_kernels.data.transforms import normalized_transform, parse_normalization

INDEX_COLUMNS = ("image", "split", "ih", "iw", "sh", "sw")
CATEGORY_COLUMNS = ("name", "first", "last", "count", "frequency")
LABEL_COLUMNS = ("number", "name", "category", "frequency", "coverage")
CODE_COLUMNS = ("code", "number", "name", "frequency", "coverage")
_CATEGORY_FIELD = re.compile(r"^\s*([^();]+?)\s*\(\s*(\d+)\s*\)\s*$")


MAX_PIXELS = 64_000_000          # an image or label map with more pixels is refused unread


def _open_checked(path: Path, size: tuple[int, int], what: str, i: int, line: int) -> Image.Image:
    """Open an image lazily and check its header before any pixel is decoded: its width x height
    must equal `size` (from index.csv; None: anything up to MAX_PIXELS) and stay under
    MAX_PIXELS, so a decompression bomb is refused for the price of reading its header."""
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as e:
        raise CorruptSampleError(path, f"{what} is a decompression bomb ({e}) (index.csv line {line})",
                                 i, reason="too large") from None
    w, h = im.size
    if w * h > MAX_PIXELS:
        im.close()
        raise CorruptSampleError(path, f"{what} has {w}x{h} pixels, over the cap of {MAX_PIXELS:,} "
                                       f"(index.csv line {line})", i, reason="too large")
    if size is not None and (w, h) != (size[1], size[0]):
        im.close()
        raise CorruptSampleError(path, f"{what} is {w}x{h} (w x h) but index.csv line {line} says "
                                       f"{size[1]}x{size[0]}", i, reason="wrong size")
    return im


def _decode_rgb(im: Image.Image) -> Image.Image:
    with im:
        return im.convert("RGB")


def _uint8_chw(img: Image.Image) -> torch.Tensor:
    """A PIL image as uint8 [3, H, W] (what ToTensor reads, before scaling)."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(img.convert("RGB")).transpose(2, 0, 1)))


def read_csv(path: Path, required) -> list[tuple[int, dict]]:
    """Rows of a CSV file as (line number, dict), checking the header names `required`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Broden file not found: {path}")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise BrodenFormatError(path, "file is empty; expected a header line", 1)
        header = [h.strip() for h in header]
        missing = [c for c in required if c not in header]
        if missing:
            raise BrodenFormatError(path, f"missing column(s) {missing}; header is {header}", 1)
        rows = []
        for row in reader:
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise BrodenFormatError(path, f"expected {len(header)} fields, got {len(row)}",
                                        reader.line_num)
            rows.append((reader.line_num, dict(zip(header, row))))
    return rows


def _int(path, line, column, value) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise BrodenFormatError(path, f"column {column!r}: expected an integer, got {value!r}", line) from None


def _float(path, line, column, value) -> float:
    try:
        return float(value.strip())
    except ValueError:
        raise BrodenFormatError(path, f"column {column!r}: expected a number, got {value!r}", line) from None


def _is_int(text: str) -> bool:
    return bool(re.fullmatch(r"[+-]?\d+", text))


def primary_categories(coverage: np.ndarray) -> np.ndarray:
    """Primary category per label from a [C, K] coverage table: argmax over k of (coverage, k),
    so ties go to the later category and labels with no coverage get the last one."""
    K = coverage.shape[1]
    return (K - 1 - np.argmax(coverage[:, ::-1], axis=1)).astype(np.int64)


def decode_label_png(path) -> np.ndarray:
    """Label ids of a Broden label PNG (a path or an opened image) as int32 [H, W]: R + 256 * G
    (grey PNGs: the value)."""
    with (path if isinstance(path, Image.Image) else Image.open(path)) as im:
        im.load()
        if im.mode in ("RGB", "RGBA"):
            arr = np.asarray(im)
            return arr[..., 0].astype(np.int32) + 256 * arr[..., 1].astype(np.int32)
        if im.mode in ("L", "I", "I;16"):
            return np.asarray(im).astype(np.int32)
        raise ValueError(f"unsupported PNG mode {im.mode!r}; expected RGB(A) with label = R + 256*G")


@dataclass
class _Row:
    line: int
    image: str
    split: str
    ih: int
    iw: int
    sh: int
    sw: int
    pngs: list = field(default_factory=list)      # label PNG filenames, category order, dominant first
    ints: list = field(default_factory=list)      # image-level label ids


class BrodenDataset(torch.utils.data.Dataset):
    """A Broden-format dataset. Item i -> dict(image float32 [3,S,S] normalised, labels int32
    [L,H,W] (label layers, 0-padded to the dataset's max L), image_labels int32 [M], index=i).
    Concept ids are label.csv numbers (0 = unlabelled); `category_of` is the primary category."""

    def __init__(self, root, *, categories=None, max_images=None, split=None, image_size=None,
                 transform=None, require_labels: bool = False, normalize=None, strict: bool = False):
        """normalize: "imagenet" (the default), "ndl", or (mean, std) (numbers or per-channel
        triples), applied after to-tensor; `transform` replaces the whole image transform.
        A row of index.csv naming a file outside the dataset root (../, an absolute path, a
        symlink leading out) is refused: left out and counted in `refused` (strict=True: an
        error instead)."""
        self.root = Path(root)
        self.strict = strict
        if not self.root.is_dir():
            raise FileNotFoundError(f"Broden root directory not found: {self.root}")
        if transform is not None and normalize is not None:
            raise ValueError("pass either transform= or normalize=, not both")
        self.image_size = image_size
        mean, std = parse_normalization(normalize or "imagenet")
        self.transform = transform if transform is not None else normalized_transform(None, (mean, std))
        self.transform_info = {"image_size": image_size, "normalize": "custom transform" if transform
                               is not None else {"mean": list(mean), "std": list(std)}}
        self._read_labels()
        self._read_categories(categories)
        self._read_coverage()
        self._read_index(split, max_images, require_labels)

    # ---- metadata -------------------------------------------------------------------------
    def _read_labels(self):
        path = self.root / "label.csv"
        rows = read_csv(path, LABEL_COLUMNS)
        entries = {}
        for line, r in rows:
            num = _int(path, line, "number", r["number"])
            if num < 0 or num in entries:
                raise BrodenFormatError(path, f"label number {num} is negative or repeated", line)
            cats = []
            for part in filter(None, (p.strip() for p in r["category"].split(";"))):
                m = _CATEGORY_FIELD.match(part)
                if not m:
                    raise BrodenFormatError(path, f"column 'category': expected entries like "
                                                  f"'object(3)', got {part!r}", line)
                cats.append((m.group(1), int(m.group(2))))
            entries[num] = (r["name"].strip(), cats, _int(path, line, "frequency", r["frequency"]),
                            _float(path, line, "coverage", r["coverage"]))
        C = max(entries, default=0) + 1
        self.num_concepts = C
        self.concept_names = [""] * C
        self.concept_names[0] = "-"
        self._known = np.zeros(C, dtype=bool)
        self.label_frequency = np.zeros(C, dtype=np.int64)
        self.label_coverage = np.zeros(C, dtype=np.float64)
        self.label_category_field = [[] for _ in range(C)]
        for num, (name, cats, freq, cov) in entries.items():
            if num == 0:
                continue
            self.concept_names[num] = name
            self._known[num] = True
            self.label_frequency[num] = freq
            self.label_coverage[num] = cov
            self.label_category_field[num] = cats

    def _read_categories(self, categories):
        path = self.root / "category.csv"
        rows = read_csv(path, CATEGORY_COLUMNS)
        all_names = []
        for line, r in rows:
            for col in ("first", "last", "count", "frequency"):
                _int(path, line, col, r[col])
            all_names.append(r["name"].strip())
        self.all_category_names = all_names
        if categories is None:
            chosen = list(all_names)
        else:
            chosen = [categories] if isinstance(categories, str) else list(categories)
            unknown = [c for c in chosen if c not in all_names]
            if unknown:
                raise ValueError(f"categories {unknown} are not in {path} (available: {all_names})")
            chosen = [c for c in all_names if c in chosen]   # category.csv order
        if not chosen:
            raise ValueError(f"no categories selected; {path} lists {all_names}")
        self.category_names = chosen
        self.num_categories = len(chosen)

    def _read_coverage(self):
        C, K = self.num_concepts, self.num_categories
        cov = np.zeros((C, K), dtype=np.float64)
        self.category_codes = {}
        for k, cat in enumerate(self.category_names):
            path = self.root / f"c_{cat}.csv"
            codes = {}
            for line, r in read_csv(path, CODE_COLUMNS):
                code = _int(path, line, "code", r["code"])
                num = _int(path, line, "number", r["number"])
                c = _float(path, line, "coverage", r["coverage"])
                _int(path, line, "frequency", r["frequency"])
                if num == 0:
                    continue
                if num >= C or not self._known[num]:
                    raise BrodenFormatError(path, f"label number {num} is not in label.csv", line)
                codes[code] = num
                cov[num, k] = c
            self.category_codes[cat] = codes
        self.coverage = cov
        self.category_of = torch.from_numpy(primary_categories(cov))

    # ---- index ----------------------------------------------------------------------------
    def _read_index(self, split, max_images, require_labels):
        path = self.root / "index.csv"
        rows = read_csv(path, INDEX_COLUMNS + tuple(self.category_names))
        self.index_path = path
        self.refused: dict[str, list[str]] = {}
        inside = self._inside_root()
        out = []
        for line, r in rows:
            row = _Row(line, r["image"].strip(), r["split"].strip(),
                       *(_int(path, line, c, r[c]) for c in ("ih", "iw", "sh", "sw")))
            if not self._sizes_ok(row, path) or not inside(row, [row.image] + self._png_names(r)):
                continue
            if split is not None and row.split != split:
                continue
            for cat in self.category_names:
                for entry in filter(None, (e.strip() for e in r[cat].split(";"))):
                    if _is_int(entry):
                        num = int(entry)
                        if num <= 0 or num >= self.num_concepts or not self._known[num]:
                            raise BrodenFormatError(path, f"column {cat!r}: image-level label "
                                                          f"{num} is not in label.csv", line)
                        row.ints.append(num)
                    else:
                        row.pngs.append(entry)
            if require_labels and not (row.pngs or row.ints):
                continue
            out.append(row)
            if max_images is not None and len(out) >= max_images:
                break
        self.rows = out
        self.num_layers = max([len(r.pngs) for r in out] + [1])
        self.num_image_labels = max([len(r.ints) for r in out] + [1])
        isizes = {(r.ih, r.iw) for r in out}
        lsizes = {(r.sh, r.sw) for r in out}
        self._native_label_size = lsizes.pop() if len(lsizes) == 1 else None
        if image_size := self.image_size:
            size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        else:
            size = isizes.pop() if len(isizes) == 1 else None
        self._size = size
        self.resolution = None if size is None else (size[0] if size[0] == size[1] else size)
        lsize = self._native_label_size
        if lsize is None and size is not None:
            lsize = (size[0] // 2, size[1] // 2)
        self._label_hw = lsize
        self.label_size = None if lsize is None else (lsize[0] if lsize[0] == lsize[1] else lsize)

    def _png_names(self, r: dict) -> list[str]:
        return [e.strip() for cat in self.category_names for e in r[cat].split(";")
                if e.strip() and not _is_int(e.strip())]

    def _inside_root(self):
        """row, names -> whether every named file resolves (symlinks too) inside the root; an
        outside one refuses the row (or raises, when strict). Nothing is opened to decide."""
        images, top = (self.root / "images").resolve(), self.root.resolve()

        def check(row: _Row, names: list[str]) -> bool:
            for name in names:
                target = (images / name).resolve()
                if not target.is_relative_to(top):
                    message = f"index.csv line {row.line}: {name!r} lies outside the dataset root {top}"
                    if self.strict:
                        raise BrodenFormatError(self.index_path, f"{name!r} lies outside the dataset root "
                                                                 f"{top}", row.line)
                    self.refused.setdefault("outside the dataset root", []).append(message)
                    return False
            return True
        return check

    def _sizes_ok(self, row: _Row, path: Path) -> bool:
        """Sizes in index.csv must be positive and under the pixel cap (else the row is refused)."""
        bad = min(row.ih, row.iw, row.sh, row.sw) < 1 or row.ih * row.iw > MAX_PIXELS or \
            row.sh * row.sw > MAX_PIXELS
        if bad:
            message = f"index.csv line {row.line}: sizes {row.ih}x{row.iw} / {row.sh}x{row.sw} are not " \
                      f"positive or exceed {MAX_PIXELS:,} pixels"
            if self.strict:
                raise BrodenFormatError(path, message, row.line)
            self.refused.setdefault("impossible sizes", []).append(message)
        return not bad

    # ---- samples --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    def files(self) -> list[Path]:
        """Every file the rows name (images and label PNGs): what a checkpoint fingerprints."""
        images = self.root / "images"
        return [images / name for r in self.rows for name in [r.image, *r.pngs]]

    def image_path(self, i: int) -> Path:
        return self.root / "images" / self.rows[i].image

    @property
    def splits(self) -> list[str]:
        return [r.split for r in self.rows]

    def _read_sample_file(self, path: Path, i: int, reader, missing: str, unreadable: str):
        """reader(path), turning a missing or unreadable file into a CorruptSampleError."""
        line = self.rows[i].line
        try:
            return reader(path)
        except FileNotFoundError:
            raise CorruptSampleError(path, f"{missing} is missing (index.csv line {line})", i,
                                     reason="missing") from None
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
            if isinstance(e, CorruptSampleError):
                raise
            raise CorruptSampleError(path, f"{unreadable} cannot be read ({e}) (index.csv line {line})",
                                     i, reason="unreadable") from None

    def _load_pil(self, i: int) -> Image.Image:
        row, path = self.rows[i], self.image_path(i)
        im = self._read_sample_file(
            path, i, lambda p: _decode_rgb(_open_checked(p, (row.ih, row.iw), "image", i, row.line)),
            "image file", "image")
        if self._size is not None and im.size != (self._size[1], self._size[0]):
            im = im.resize((self._size[1], self._size[0]), Image.BILINEAR)
        return im

    def load_image_uint8(self, i: int) -> np.ndarray:
        """The image as uint8 [S, S, 3] (resized to image_size if given), for display."""
        return np.asarray(self._load_pil(i), dtype=np.uint8).copy()

    def _load_png(self, i: int, name: str) -> np.ndarray:
        row = self.rows[i]
        path = self.root / "images" / name
        lab = self._read_sample_file(
            path, i, lambda p: decode_label_png(_open_checked(p, (row.sh, row.sw), "label PNG", i, row.line)),
            "label PNG", "label PNG")
        hi = int(lab.max())
        if hi >= self.num_concepts or not self._known[lab].all():
            bad = sorted(int(v) for v in np.unique(lab) if v >= self.num_concepts or not self._known[v])
            bad = [b for b in bad if b != 0]
            if bad:
                raise CorruptSampleError(path, f"label ids {bad[:10]} are not in label.csv", i,
                                         reason="unknown label")
        if (row.sh, row.sw) != self._label_hw:
            h, w = self._label_hw
            ys = (np.arange(h) * row.sh) // h
            xs = (np.arange(w) * row.sw) // w
            lab = lab[ys][:, xs]
        return lab

    def __getitem__(self, i: int) -> dict:
        return self.item(i)

    def item(self, i: int, fields=("image", "labels"), uint8: bool = False) -> dict:
        """Sample i with only the fields asked for decoded: "image" (normalised float32
        [3, S, S], or uint8 [3, S, S] with uint8=True: normalise with `normalization`) and
        "labels" (label layers and image-level labels). A pass that needs no labels skips the
        label PNGs; one that reuses cached activations skips the image."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} images")
        i = i % len(self)
        out = dict(index=i)
        if "image" in fields:
            pil = self._load_pil(i)
            out["image"] = _uint8_chw(pil) if uint8 else self.transform(pil)
        if "labels" in fields:
            out.update(self._labels(i))
        return out

    @property
    def normalization(self):
        """(mean, std) applied after scaling to [0, 1], or None for a custom transform."""
        norm = self.transform_info["normalize"]
        return None if isinstance(norm, str) else (norm["mean"], norm["std"])

    def _labels(self, i: int) -> dict:
        row = self.rows[i]
        if self._label_hw is None:
            raise ValueError(f"{self.index_path}: images have different sizes; pass image_size=")
        labels = np.zeros((self.num_layers, *self._label_hw), dtype=np.int32)
        for k, name in enumerate(row.pngs):
            labels[k] = self._load_png(i, name)
        image_labels = np.zeros(self.num_image_labels, dtype=np.int32)
        image_labels[:len(row.ints)] = row.ints
        return dict(labels=torch.from_numpy(labels), image_labels=torch.from_numpy(image_labels))

    def check(self, i: int) -> str | None:
        """None if sample i loads, else the CorruptSampleError message (for count-and-skip)."""
        try:
            self[i]
        except CorruptSampleError as e:
            return str(e)
        return None

    def concept_category_names(self) -> list[str]:
        """Primary category name per concept id."""
        return [self.category_names[k] for k in self.category_of.tolist()]

    def __repr__(self) -> str:
        return (f"BrodenDataset({str(self.root)!r}, images={len(self)}, concepts={self.num_concepts}, "
                f"categories={self.category_names}, resolution={self.resolution}, "
                f"label_size={self.label_size}, layers={self.num_layers})")
