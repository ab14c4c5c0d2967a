"""Exemplar strips: a unit's top images side by side (rows of at most STRIP_COLUMNS tiles of
STRIP_TILE pixels, large enough to read), shaded outside its activation mask as NetDissect-Lite
does ((0.8*mask + 0.2)*img) with the mask's contour drawn on top."""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dissect_kernels.io.atomic import umask_mode

STRIP_TILE = 112      # pixels per image in a strip (pages show them at this size)
STRIP_GAP = 3         # white pixels between tiles
STRIP_COLUMNS = 10    # tiles per row; more exemplars wrap onto further rows


def _numpy(name: str, x, ndim: int) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {x.shape}")
    return x


def contour(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask (the image border does not count)."""
    m = np.pad(mask, 1, mode="edge")
    inner = m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask & ~inner


def shade_tile(image: np.ndarray, mask: np.ndarray, size: int,
               contour_color: tuple[int, int, int] | None = (255, 255, 0)) -> np.ndarray:
    """One tile: the image resized to size x size (bilinear), the mask nearest-resized to it,
    pixels scaled by 0.8*mask + 0.2, then the contour painted in contour_color."""
    img = Image.fromarray(image).convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    m = Image.fromarray(mask.astype(np.uint8) * 255)
    if m.size != (size, size):
        m = m.resize((size, size), Image.NEAREST)
    m = np.asarray(m) > 127
    out = np.asarray(img, dtype=np.float32) * (0.8 * m[..., None] + 0.2)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if contour_color is not None:
        out[contour(m)] = contour_color
    return out


def render_strip(images, masks, *, size: int = STRIP_TILE, gap: int = STRIP_GAP,
                 contour_color: tuple[int, int, int] | None = (255, 255, 0),
                 columns: int | None = None) -> Image.Image:
    """images uint8 [k,S,S,3] and masks bool [k,H,W] (any resolution) -> one RGB strip of k
    shaded size x size tiles separated by `gap` white pixels: one row (k*size + (k-1)*gap wide),
    or rows of `columns` tiles."""
    images = _numpy("images", images, 4)
    masks = _numpy("masks", masks, 3)
    if images.dtype != np.uint8 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 [k, S, S, 3], got {images.dtype} {images.shape}")
    if images.shape[0] == 0 or masks.shape[0] != images.shape[0]:
        raise ValueError(f"images and masks must hold the same k >= 1 entries, got "
                         f"{images.shape[0]} images and {masks.shape[0]} masks")
    if size < 1 or gap < 0 or (columns is not None and columns < 1):
        raise ValueError(f"size and columns must be >= 1 and gap >= 0, got size={size}, gap={gap}, "
                         f"columns={columns}")
    k = images.shape[0]
    cols = k if columns is None else min(k, columns)
    rows = -(-k // cols)
    strip = np.full((rows * size + (rows - 1) * gap, cols * size + (cols - 1) * gap, 3), 255,
                    dtype=np.uint8)
    for i in range(k):
        x, y = (i % cols) * (size + gap), (i // cols) * (size + gap)
        strip[y:y + size, x:x + size] = shade_tile(images[i], masks[i].astype(bool), size, contour_color)
    return Image.fromarray(strip)


def safe_name(name: str) -> str:
    """A file-name-safe form of a layer name (odd characters replaced, plus a short hash of the
    original so that different names never collide)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    if safe != name or safe in ("", ".", ".."):
        safe = f"{safe}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return safe


def strip_path(layer: str, unit: int, unit_base: int = 0) -> str:
    """Relative path of a unit's strip: images/<layer>/unit_<number:04d>.jpg, numbered as the
    report numbers units (0-based index `unit` + `unit_base`, 1 for NetDissect's presets)."""
    return f"images/{safe_name(layer)}/unit_{int(unit) + int(unit_base):04d}.jpg"


def save_strip(out_dir, layer: str, unit: int, images, masks, *, unit_base: int = 0, **kw) -> str:
    """Render and save unit's strip as JPEG under out_dir; returns its path relative to out_dir
    (what LayerResult.exemplar_strips holds). `unit` is the 0-based index; the file is named
    with the report's number for it (unit + unit_base)."""
    rel = strip_path(layer, unit, unit_base)
    path = Path(out_dir) / rel
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create exemplar directory '{path.parent}': {e.strerror or e}") from e
    kw.setdefault("columns", STRIP_COLUMNS)
    strip = render_strip(images, masks, **kw)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".strip-", suffix=".jpg")
    os.close(fd)
    try:
        strip.save(tmp, format="JPEG", quality=90)
        os.chmod(tmp, umask_mode())                 # mkstemp makes 0600; follow the user's umask
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return rel
