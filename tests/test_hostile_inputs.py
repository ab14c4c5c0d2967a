"""Hostile and unlucky input (issue 20): nothing outside the dataset root is ever opened, a
decompression bomb is skipped unread and the rest dissected, damaged or stale checkpoints start
the run over (results equal a clean run), changed images invalidate a checkpoint, two runs never
share an output folder, files follow the umask, nothing is left behind after success."""
import csv
import json
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

import dissect_kernels as dk
from dissect_kernels.cli import main
from dissect_kernels.data import BrodenDataset, make_synthetic_broden
from dissect_kernels.io.lock import OutputInUse
from dissect_kernels.models import load_default_model

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["conv4"]
KW = dict(batch_size=8, progress=False, num_workers=0)     # every open happens in this process
OPENED: list[str] = []
AUDITING = [False]


def _audit(event, args):
    """Records every file this process opens while AUDITING (an audit hook stays for good)."""
    if AUDITING[0] and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


@pytest.fixture
def broden(tmp_path):
    return make_synthetic_broden(tmp_path / "broden", n_images=24, seed=5)


def rows(root: Path) -> list[list[str]]:
    with open(root / "index.csv", newline="") as f:
        return list(csv.reader(f))


def write_rows(root: Path, table: list[list[str]]) -> None:
    with open(root / "index.csv", "w", newline="") as f:
        csv.writer(f).writerows(table)


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height pixels, with no pixel data: a bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) +
                     chunk(b"IEND", b""))


def same(a, b) -> None:
    for name, la in a.layers.items():
        lb = b.layers[name]
        assert torch.equal(la.iou, lb.iou) and torch.equal(la.thresholds, lb.thresholds), name


def test_rows_naming_files_outside_the_root_are_refused_unopened(broden, tmp_path):
    secret = tmp_path / "secret.jpg"
    secret.write_bytes((broden / "images" / rows(broden)[1][0]).read_bytes())
    (broden / "images" / "link.jpg").symlink_to(secret)
    table = rows(broden)
    table[2][0] = "../../secret.jpg"
    table[3][0] = str(secret)
    table[4][0] = "link.jpg"
    write_rows(broden, table)
    OPENED.clear()
    AUDITING[0] = True
    try:
        data = BrodenDataset(broden)
        result = dk.dissect(load_default_model(), LAYERS, data, **KW)
    finally:
        AUDITING[0] = False
    assert OPENED, "the audit hook saw no open at all"
    outside = [p for p in OPENED if os.path.realpath(p) == str(secret)]
    assert outside == [], outside
    assert len(data) == 24 - 3
    refused = result.dataset["refused_rows"]["outside the dataset root"]
    assert refused["count"] == 3 and "line 3" in refused["first"]
    assert result.skip_reasons["refused: outside the dataset root"] == 3
    with pytest.raises(ValueError, match="outside the dataset root"):
        BrodenDataset(broden, strict=True)


def test_a_bomb_in_the_middle_is_skipped_and_the_rest_dissected(broden):
    table = rows(broden)
    png_header_only(broden / "images" / table[6][0], 20000, 20000)          # an image
    label = table[9][table[0].index("color")].split(";")[0]
    png_header_only(broden / "images" / label, 30000, 30000)                 # a label map
    data = BrodenDataset(broden)
    result = dk.dissect(load_default_model(), LAYERS, data, **KW)
    assert result.skip_reasons.get("too large") == 2
    assert len(result.dataset["skipped_samples"]) == 2
    with pytest.raises(ValueError, match="over the cap|strict"):
        dk.dissect(load_default_model(), LAYERS, data, strict=True, **KW)


def test_damaged_or_stale_checkpoints_start_over_with_clean_results(broden, tmp_path):
    data = BrodenDataset(broden)
    clean = dk.dissect(load_default_model(), LAYERS, data, **KW)

    class Crash(Exception):
        pass

    def crashing_model(at: int):
        model, calls = load_default_model(), [0]

        def pre(m, a):
            calls[0] += 1
            if calls[0] == at:
                raise Crash()
        model.register_forward_pre_hook(pre)
        return model

    for damage in ("truncate", "manifest", "garbage"):
        out = tmp_path / damage
        with pytest.raises(Crash):
            dk.dissect(crashing_model(3), LAYERS, data, out_dir=out, checkpoint_interval=0, cache_bytes=0, **KW)
        folder = next((out / ".checkpoint").rglob("manifest.json")).parent
        state = next(folder.glob("state-*.safetensors"))
        if damage == "truncate":
            state.write_bytes(state.read_bytes()[:100])
        elif damage == "manifest":
            meta = json.loads((folder / "manifest.json").read_text())
            del meta["progress"]
            (folder / "manifest.json").write_text(json.dumps(meta))
        else:
            (folder / "manifest.json").write_text("{not json")
        again = dk.dissect(load_default_model(), LAYERS, data, out_dir=out, report=False, **KW)
        same(clean, again)
        assert not (out / ".checkpoint").exists()


def test_changed_images_under_an_unchanged_index_start_over(broden, tmp_path):
    data = BrodenDataset(broden)
    out = tmp_path / "out"
    model, calls = load_default_model(), [0]
    model.register_forward_pre_hook(lambda m, a: calls.__setitem__(0, calls[0] + 1))

    def crash(m, a):
        if calls[0] == 3:
            raise RuntimeError("crash")
    handle = model.register_forward_pre_hook(crash)
    with pytest.raises(RuntimeError):
        dk.dissect(model, LAYERS, data, out_dir=out, checkpoint_interval=0, cache_bytes=0, **KW)
    handle.remove()
    table = rows(broden)
    a, b = broden / "images" / table[1][0], broden / "images" / table[2][0]
    swapped = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(swapped)
    os.utime(a, ns=(1, 1))                            # new content with another time stamp
    data = BrodenDataset(broden)
    calls[0] = 0
    resumed = dk.dissect(model, LAYERS, data, out_dir=out, report=False, cache_bytes=0, **KW)
    assert calls[0] == 2 * 3 + 1                       # the probe, then both passes from the start
    same(dk.dissect(load_default_model(), LAYERS, data, **KW), resumed)


def test_two_runs_never_share_an_output_folder(broden, tmp_path):
    """Another process holds the folder (as a running dissection would): this one fails at once,
    naming it, through the API and the CLI; once it is gone the folder is free again."""
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               "from dissect_kernels.io.lock import locked\n"
                               "with locked(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)", str(out)],
                              stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputInUse, match=f"in use by another run .*pid {holder.pid}"):
            dk.dissect(load_default_model(), LAYERS, BrodenDataset(broden), out_dir=out, **KW)
        with pytest.raises(SystemExit) as err:
            main(["dissect", "--dataset", f"broden:{broden}", "--quiet", "--out", str(out)])
        assert "in use by another run" in str(err.value.code) and "\n" not in str(err.value.code)
        assert not (out / "results.safetensors").exists()
    finally:
        holder.kill()
        holder.wait()
    assert main(["dissect", "--dataset", f"broden:{broden}", "--quiet", "--out", str(out)]) == 0


def test_files_follow_the_umask_and_nothing_is_left_behind(broden, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "out"
        dk.dissect(load_default_model(), LAYERS, BrodenDataset(broden), out_dir=out, **KW)
    finally:
        os.umask(old)
    written = [p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert len(written) > 5
    for path in written:                               # results, pages and exemplar strips
        assert path.stat().st_mode & 0o777 == 0o644, path
    assert not (out / ".checkpoint").exists()
    assert not list(out.glob(".staging-*")) and not list(out.glob("*.tmp"))


def test_fresh_and_strict_reach_the_driver(broden, tmp_path, monkeypatch):
    seen = {}

    class Stop(Exception):
        pass

    def fake(*args, **kw):
        seen.update(kw)
        raise Stop()

    monkeypatch.setattr(dk, "dissect", fake)
    with pytest.raises(Stop):
        main(["dissect", "--dataset", f"broden:{broden}", "--quiet", "--fresh", "--strict", "--out", str(tmp_path)])
    assert seen["resume"] is False and seen["strict"] is True


# ------------------------------------------------------------------ meaningless success
class _Constant(torch.nn.Module):
    """Unit 0 constant (never above its own threshold), the rest as computed."""

    def forward(self, x):
        x = x.clone()
        x[:, 0] = 0.25
        return x


def _planted_with_constant_unit():
    from planted import Planted
    model = Planted()
    model.units = _Constant()
    return model


def test_dead_constant_and_everywhere_units_get_no_label_and_a_warning(tmp_path):
    from planted import PlantedDataset
    data = PlantedDataset(24)
    kw = dict(batch_size=8, progress=False, backend="cpu")
    result = dk.dissect(_planted_with_constant_unit(), "units", data, out_dir=tmp_path, **kw)
    lr = result.layers["units"]
    assert int(lr.best_label[0]) == -1 and float(lr.best_iou[0]) == 0.0
    assert [w for w in result.warnings if "never fire" in w and re.search(r"units?\(s\) \(0[,)]", w)]
    assert int(lr.best_label[1]) > 0                          # the planted units keep their concepts
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["warnings"] == result.warnings
    assert "never fire" in (tmp_path / "index.html").read_text()
    assert dk.load_results(tmp_path).warnings == result.warnings

    ge = dk.dissect(_planted_with_constant_unit(), "units", data, convention="exact[threshold_compare=>=]", **kw)
    assert int(ge.layers["units"].best_label[0]) == -1        # active on every pixel: no region to label
    assert [w for w in ge.warnings if "every pixel" in w and re.search(r"units?\(s\) \(0[,)]", w)]


def test_a_dataset_without_labels_labels_nothing_and_says_so():
    from planted import Planted, PlantedDataset

    class Unlabelled(PlantedDataset):
        def __getitem__(self, i):
            item = super().__getitem__(i)
            item["labels"] = torch.zeros_like(torch.as_tensor(item["labels"]))
            item["image_labels"] = torch.zeros_like(item["image_labels"])
            return item

    result = dk.dissect(Planted(), "units", Unlabelled(16), batch_size=8, progress=False, backend="cpu")
    assert (result.layers["units"].best_label == -1).all()
    assert result.warnings[0].startswith("the dataset holds no concept labels")
