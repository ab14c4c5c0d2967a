"""Fuzzed dataset and checkpoint files: index.csv rows, label PNG bytes and checkpoint state
files mutated at random. Every outcome must be a result (with any dropped sample counted), or
one clear line: a ValueError/OSError/TypeError/LookupError whose message has no newline and
names what was wrong, never an IndexError, a KeyError or a traceback from deep inside."""
from __future__ import annotations

import csv
import random
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dissect_kernels as dk
from dissect_kernels.data import BrodenDataset, make_synthetic_broden

CLEAR = (ValueError, OSError, TypeError, LookupError)
FUZZ = settings(max_examples=12, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


class Tiny(torch.nn.Module):
    """Two conv units: fast enough to dissect a few dozen times per test."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 2, 3, stride=4, padding=1)

    def forward(self, x):
        return self.conv(x)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return make_synthetic_broden(tmp_path_factory.mktemp("broden") / "b", n_images=6, seed=3, image_size=32)


def _copy(pristine: Path, tmp: Path) -> Path:
    root = Path(tempfile.mkdtemp(dir=tmp)) / "b"
    shutil.copytree(pristine, root)
    return root


def _run(root: Path, out: Path | None = None):
    """dissect the tiny model on root: the result, or the clear error it raised."""
    try:
        return dk.dissect(Tiny(), "conv", BrodenDataset(root), out_dir=out, batch_size=4,
                          progress=False, backend="cpu", num_workers=0)
    except CLEAR as err:
        if isinstance(err, (KeyError, IndexError)):
            raise AssertionError(f"a bare {type(err).__name__} escaped: {err!r}") from err
        message = str(err)
        assert message and "\n" not in message.strip(), repr(message)
        return err


cells = st.one_of(st.text(max_size=12), st.sampled_from(["../../x.jpg", "/etc/passwd", "-1", "0", "99999999",
                                                         "1e9", "nan", "", "images/../../a.png", "a;b"]))


@FUZZ
@given(row=st.integers(0, 5), column=st.sampled_from(["image", "ih", "iw", "sh", "sw", "color", "object", "scene"]),
       value=cells)
def test_fuzzed_index_rows(pristine, tmp_path, row, column, value):
    root = _copy(pristine, tmp_path)
    path = root / "index.csv"
    rows = list(csv.DictReader(path.open()))
    if column not in rows[0]:
        return
    rows[row][column] = value
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    outcome = _run(root)
    if isinstance(outcome, dk.DissectionResult):
        assert outcome.skipped <= 1                     # only the altered row may be dropped
        assert outcome.dataset["images"] + sum(
            r["count"] for r in outcome.dataset["refused_rows"].values()) >= 5


@FUZZ
@given(which=st.integers(0, 5), cut=st.integers(0, 400), flips=st.lists(st.integers(0, 10_000), max_size=6))
def test_fuzzed_label_pngs(pristine, tmp_path, which, cut, flips):
    root = _copy(pristine, tmp_path)
    pngs = sorted((root / "images").rglob("*_color.png")) or sorted((root / "images").rglob("*.png"))
    png = pngs[which % len(pngs)]
    data = bytearray(png.read_bytes())
    for f in flips:
        data[f % len(data)] ^= 0x5A
    png.write_bytes(bytes(data[: max(cut, 8)] if cut < len(data) else data))
    outcome = _run(root)
    if isinstance(outcome, dk.DissectionResult):
        assert outcome.skipped <= 1


@FUZZ
@given(target=st.sampled_from(["state", "manifest"]), mode=st.sampled_from(["truncate", "garbage", "flip", "empty"]),
       seed=st.integers(0, 1000))
def test_fuzzed_checkpoints_restart_cleanly(pristine, tmp_path, target, mode, seed):
    root = _copy(pristine, tmp_path)
    out = Path(tempfile.mkdtemp(dir=tmp_path)) / "out"
    clean = dk.dissect(Tiny(), "conv", BrodenDataset(root), batch_size=4, progress=False, backend="cpu")
    _interrupted_run(root, out)
    files = sorted(p for p in (out / ".checkpoint").rglob("*") if p.is_file()
                   and (p.name.endswith(".json") == (target == "manifest")))
    if not files:
        pytest.skip("no checkpoint file of that kind was written")   # pragma: no cover - layout guard
    victim = files[seed % len(files)]
    data = bytearray(victim.read_bytes())
    rng = random.Random(seed)
    if mode == "truncate":
        data = data[: rng.randrange(len(data))]
    elif mode == "garbage":
        data = bytearray(rng.randbytes(len(data)))
    elif mode == "flip" and data:
        data[rng.randrange(len(data))] ^= 0xFF
    else:
        data = bytearray()
    victim.write_bytes(bytes(data))
    resumed = _run(root, out)
    assert isinstance(resumed, dk.DissectionResult), resumed      # a damaged checkpoint restarts
    for key in ("iou", "thresholds"):
        assert torch.equal(getattr(resumed.layers["conv"], key), getattr(clean.layers["conv"], key))


def _interrupted_run(root: Path, out: Path) -> None:
    """A run stopped in pass 2 by a failing model call (a hook: the model's class and weights,
    part of the checkpoint key, stay the same), leaving pass 1's checkpoint behind."""
    calls = {"n": 0}

    def stop(module, inputs):
        calls["n"] += 1
        if calls["n"] > 3:                      # the size probe, pass 1's two batches, then stop
            raise RuntimeError("interrupted")

    model = Tiny()
    model.register_forward_pre_hook(stop)
    with pytest.raises(RuntimeError, match="interrupted"):
        dk.dissect(model, "conv", BrodenDataset(root), out_dir=out, batch_size=4, progress=False,
                   backend="cpu", checkpoint_interval=0, cache_bytes=0)
