"""Bad inputs through the public API and the CLI: each fails with a clear error naming the input,
leaves no partial result files (an earlier run's stay intact, checkpoints stay resumable); and
determinism: the same inputs give bit-identical results."""
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import dissect_kernels as dk
from dissect_kernels import cli
from dissect_kernels.data.errors import CorruptSampleError
from planted import Planted, PlantedDataset

Q = PlantedDataset().midgap_quantile(16 * 16)
KW = dict(quantile=Q, batch_size=16, progress=False, backend="cpu")
OUTPUTS = ("results.safetensors", "units.csv", "summary.json", "index.html", "layer-units.html", "site.json")
ROOT = Path(__file__).resolve().parents[1]


def outputs(out_dir: Path) -> dict:
    """Bytes of every result file present in out_dir (and any stray temp file)."""
    if not out_dir.is_dir():
        return {}
    return {p.name: p.read_bytes() for p in out_dir.iterdir()
            if p.is_file() and (p.name in OUTPUTS or p.name.startswith("layer-") or p.name.endswith(".tmp"))}


def has_checkpoint(out_dir: Path) -> bool:
    return any((out_dir / ".checkpoint").rglob("manifest.json"))


class Poison(nn.Module):
    """Identity that writes `value` into one position of unit 1 of row `at` of every batch."""

    def __init__(self, value: float, at: int = 5):
        super().__init__()
        self.value, self.at = value, at

    def forward(self, x):
        x = x.clone()
        x[self.at % x.shape[0], 1, 2, 3] = self.value
        return x


class Items(PlantedDataset):
    """PlantedDataset with some items altered by `change(i, item) -> item`."""

    def __init__(self, change, **kw):
        super().__init__(**kw)
        self.change = change

    def __getitem__(self, i):
        return self.change(i, super().__getitem__(i))


class CountingPlanted(Planted):
    """Planted that counts its forward passes over batches (`calls`) apart from the one-sample
    probe that sizes a run's memory before pass 1 (`probes`)."""

    calls = probes = 0

    def forward(self, x):
        if x.shape[0] == 1:
            CountingPlanted.probes += 1
        else:
            CountingPlanted.calls += 1
        return super().forward(x)


@pytest.fixture(scope="module")
def data():
    return PlantedDataset()


# ------------------------------------------------------------------ public API


@pytest.mark.parametrize("value,word", [(float("nan"), "NaN"), (float("inf"), "Inf"),
                                        (-float("inf"), "Inf")])
def test_non_finite_activations_name_the_layer(data, tmp_path, value, word):
    model = Planted()
    model.units = Poison(value)
    with pytest.raises(ValueError, match=rf"layer 'units'.*{word}.*image 5") as err:
        dk.dissect(model, "units", data, out_dir=tmp_path, **KW)
    assert "units" in str(err.value)
    assert outputs(tmp_path) == {}


def test_non_finite_in_a_rotated_layer_names_the_source(data):
    model = Planted()
    model.units = Poison(float("nan"), at=9)
    with pytest.raises(ValueError, match=r"layer 'units'.*NaN.*image 9"):
        dk.dissect(model, "units", data, rotation=1, **KW)


@pytest.mark.parametrize("bad", [6, 1000, -1])
def test_label_ids_out_of_range_name_the_image(tmp_path, bad):
    def change(i, item):
        if i == 21:
            item["labels"][0, 3, 4] = bad
        return item

    with pytest.raises(ValueError, match=rf"image 21.*labels.*\[0, 6\)"):
        dk.dissect(Planted(), "units", Items(change), out_dir=tmp_path, **KW)
    assert outputs(tmp_path) == {}


def test_a_data_error_keeps_the_checkpoint_and_the_rerun_resumes(tmp_path):
    """Image 40 (batch 3 of pass 1) is bad: batches 1-2 are checkpointed, the fixed rerun
    recomputes only batch 3 of pass 1 (then pass 2) and equals a fresh run."""
    broken = {"on": True}

    def change(i, item):
        if broken["on"] and i == 40:
            item["labels"][0, 0, 0] = 6
        return item

    data, model = Items(change), CountingPlanted()    # the weights are part of the run's key
    CountingPlanted.calls = 0
    with pytest.raises(ValueError, match="image 40"):
        dk.dissect(model, "units", data, out_dir=tmp_path, checkpoint_interval=0, **KW)
    assert CountingPlanted.calls == 2 and has_checkpoint(tmp_path) and outputs(tmp_path) == {}
    broken["on"] = False
    CountingPlanted.calls = 0
    resumed = dk.dissect(model, "units", data, out_dir=tmp_path, **KW)
    assert CountingPlanted.calls == 1 + 3
    fresh = dk.dissect(Planted(), "units", data, **KW)
    for key in ("iou", "thresholds", "topk_indices"):
        assert torch.equal(getattr(resumed.layers["units"], key), getattr(fresh.layers["units"], key))


def test_image_label_ids_out_of_range_name_the_image():
    def change(i, item):
        if i == 30:
            item["image_labels"][0] = 9
        return item

    with pytest.raises(ValueError, match=r"image 30.*image_labels"):
        dk.dissect(Planted(), "units", Items(change), **KW)


def test_float_labels_are_refused():
    def change(i, item):
        item["labels"] = item["labels"].float() + 0.5
        return item

    with pytest.raises(TypeError, match=r"image 0.*labels.*integer"):
        dk.dissect(Planted(), "units", Items(change), **KW)


@pytest.mark.parametrize("at", [3, 40])  # inside the first batch; in a later batch
def test_inconsistent_label_shapes_name_the_image(tmp_path, at):
    def change(i, item):
        if i == at:
            item["labels"] = item["labels"][:, :16, :16].clone()
        return item

    with pytest.raises(ValueError, match=rf"image {at}.*labels.*shape"):
        dk.dissect(Planted(), "units", Items(change), out_dir=tmp_path, **KW)
    assert outputs(tmp_path) == {}


def test_layer_that_is_not_4d(data, tmp_path):
    class Flat(Planted):
        def __init__(self):
            super().__init__()
            self.flat = nn.Flatten(2)

        def forward(self, x):
            return self.flat(super().forward(x))

    with pytest.raises(ValueError, match=r"layer 'flat'.*\[batch, units, height, width\]"):
        dk.dissect(Flat(), "flat", data, out_dir=tmp_path, **KW)
    assert outputs(tmp_path) == {}


def test_layer_with_integer_output(data):
    class Ints(Planted):
        def __init__(self):
            super().__init__()
            self.ints = nn.Identity()

        def forward(self, x):
            return self.ints(super().forward(x).round().to(torch.int32))

    with pytest.raises(TypeError, match=r"layer 'ints'.*float"):
        dk.dissect(Ints(), "ints", data, **KW)


def test_unknown_layer_and_empty_dataset_write_nothing(data, tmp_path):
    with pytest.raises(LookupError, match="unitz"):
        dk.dissect(Planted(), ["units", "unitz"], data, out_dir=tmp_path, **KW)
    with pytest.raises(ValueError, match="empty"):
        dk.dissect(Planted(), "units", PlantedDataset(n_images=0), out_dir=tmp_path, **KW)
    assert outputs(tmp_path) == {} and not has_checkpoint(tmp_path)

    class Spare(Planted):
        def __init__(self):
            super().__init__()
            self.spare = nn.Conv2d(7, 7, 1)                   # never called by forward

    with pytest.raises(RuntimeError, match="spare.*did not run"):
        dk.dissect(Spare(), "spare", data, out_dir=tmp_path, **KW)
    assert outputs(tmp_path) == {}


def corrupt(bad):
    def change(i, item):
        if bad is None or i in bad:
            raise CorruptSampleError(f"images/{i:04d}.png", "image cannot be read (cannot decode it)", i)
        return item
    return change


def test_every_image_unreadable(tmp_path):
    with pytest.raises(ValueError, match=r"every sample was skipped \(48 unreadable; "
                                         r"the first: images/0000.png: image cannot be read"):
        dk.dissect(Planted(), "units", Items(corrupt(None)), out_dir=tmp_path, **KW)
    assert outputs(tmp_path) == {}


def test_some_images_unreadable_are_counted_and_reported(tmp_path):
    import json

    result = dk.dissect(Planted(), "units", Items(corrupt({3, 17, 40})), out_dir=tmp_path, **KW)
    assert result.skipped == 3
    assert result.skip_reasons == {"unreadable": 3}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["skipped"] == 3 and summary["skip_reasons"] == {"unreadable": 3}
    listed = summary["dataset"]["skipped_samples"]
    assert sorted(map(int, listed)) == [3, 17, 40] and "cannot decode" in listed["17"]
    layer = result.layers["units"]
    assert [int(layer.best_label[j]) for j in range(4)] == [1, 2, 3, 4]
    assert not (set(layer.topk_indices.flatten().tolist()) & {3, 17, 40})
    assert has_checkpoint(tmp_path) is False                    # a finished run cleans up
    strips = [rel for rel in layer.exemplar_strips.values() if rel]
    page = (tmp_path / "layer-units.html").read_text()
    assert strips and all((tmp_path / rel).is_file() and rel in page for rel in strips)


def test_intervene_unit_ids_out_of_range(data):
    model = Planted()
    x = torch.stack([data[i]["image"] for i in range(2)])
    for sets in ([[0, 7]], [[-1]], torch.tensor([[2, 9]])):
        with pytest.raises(ValueError, match=r"layer 'units'.*unit ids.*7 units.*\[0, 7\)"):
            dk.intervene(model, "units", sets, x)
    with pytest.raises(LookupError, match="unitz"):
        dk.intervene(model, "unitz", [[0]], x)


def test_tally_ops_name_their_inputs():
    acts = torch.rand(2, 3, 4, 4)
    labels = torch.randint(0, 5, (2, 1, 8, 8), dtype=torch.int32)
    with pytest.raises(ValueError, match=r"labels holds ids in \[0, 7\].*\[0, 5\)"):
        dk.tally(acts, torch.full((3,), 0.5), labels.clone().index_fill_(0, torch.tensor([1]), 7),
                 num_concepts=5)
    with pytest.raises(ValueError, match="acts contains NaN"):
        dk.tally(acts.clone().fill_(float("nan")), torch.full((3,), 0.5), labels, num_concepts=5)
    with pytest.raises(ValueError, match="acts must have 4 dimensions"):
        dk.tally(acts[0], torch.full((3,), 0.5), labels, num_concepts=5)


def test_unwritable_out_dir_fails_before_any_work(data, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    CountingPlanted.calls = 0
    with pytest.raises(OSError, match="a_file"):
        dk.dissect(CountingPlanted(), "units", data, out_dir=blocker / "out", **KW)
    assert CountingPlanted.calls == 0
    assert blocker.read_text() == "not a folder"


def _enospc(*args, **kw):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("writer", ["dissect_kernels.io.results._write_units_csv",
                                    "dissect_kernels.io.results.save_file",
                                    "dissect_kernels.report.site.html_page"])
def test_disk_full_keeps_the_earlier_run_and_resumes(data, tmp_path, monkeypatch, writer):
    dk.dissect(Planted(), "units", data, out_dir=tmp_path, **KW)
    before = outputs(tmp_path)
    assert set(before) == set(OUTPUTS)
    strips = {p: p.read_bytes() for p in (tmp_path / "images").rglob("*.jpg")}
    assert strips

    kw = dict(KW, quantile=0.99)              # another run into the same folder
    model = CountingPlanted()
    monkeypatch.setattr(writer, _enospc)
    CountingPlanted.calls = 0
    with pytest.raises(OSError) as err:
        dk.dissect(model, "units", data, out_dir=tmp_path, **kw)
    assert err.value.errno == errno.ENOSPC
    assert outputs(tmp_path) == before        # all four intact, no temp file left
    assert not list(tmp_path.glob(".staging-*"))
    assert {p: p.read_bytes() for p in (tmp_path / "images").rglob("*.jpg")} == strips
    assert has_checkpoint(tmp_path)
    full = CountingPlanted.calls
    monkeypatch.undo()

    CountingPlanted.calls = CountingPlanted.probes = 0   # the rerun resumes: no batch is recomputed
    resumed = dk.dissect(model, "units", data, out_dir=tmp_path, **kw)
    assert CountingPlanted.calls == 0 < full and CountingPlanted.probes == 1
    fresh = dk.dissect(model, "units", data, **kw)
    for key in ("iou", "thresholds", "topk_indices"):
        assert torch.equal(getattr(resumed.layers["units"], key), getattr(fresh.layers["units"], key))
    after = outputs(tmp_path)
    assert set(after) == set(OUTPUTS) and after["units.csv"] != before["units.csv"]
    assert not has_checkpoint(tmp_path)


# ------------------------------------------------------------------ determinism


def test_same_seed_gives_bit_identical_files(data, tmp_path):
    runs = []
    for name in ("a", "b"):
        torch.manual_seed(7)
        dk.dissect(Planted(), "units", data, out_dir=tmp_path / name, rotation=3, **KW)
        runs.append(tmp_path / name)
    a, b = (load_file(str(r / "results.safetensors")) for r in runs)
    assert sorted(a) == sorted(b) and len(a) > 10
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert (runs[0] / "units.csv").read_bytes() == (runs[1] / "units.csv").read_bytes()


# ------------------------------------------------------------------ CLI


def _cli_fails(argv, out: Path, *words) -> str:
    with pytest.raises(SystemExit) as err:
        cli.main(argv + ["--out", str(out), "--quiet"])
    msg = err.value.code
    assert isinstance(msg, str) and msg, f"exit code {msg!r}: expected a message"
    assert "\n" not in msg.strip() and "Traceback" not in msg
    for w in words:
        assert w in msg, (w, msg)
    assert outputs(out) == {}
    return msg


def test_cli_user_errors(tmp_path, monkeypatch):
    out = tmp_path / "out"
    base = ["dissect", "--model", "planted:Planted", "--layers", "units",
            "--dataset", f"broden:{tmp_path / 'no_such_broden'}"]
    _cli_fails(base, out, "--dataset", "no_such_broden")
    _cli_fails(["dissect", "--model", "planted.Planted", "--layers", "units"], out, "--model")
    _cli_fails(["dissect", "--model", "planted:Nope", "--layers", "units"], out, "--model", "Nope")
    _cli_fails(["dissect", "--model", "no_such_module:f", "--layers", "units"], out, "--model")
    _cli_fails(["dissect", "--model", "test_bad_inputs:Poison", "--layers", "units"], out,
               "--model", "Poison", "value")          # a factory that needs arguments
    _cli_fails(["dissect", "--model", "planted:PlantedDataset", "--layers", "units"], out,
               "--model", "not a torch.nn.Module")
    _cli_fails(base[:2] + ["planted:Planted", "--layers", "unitz"] + base[5:], out, "--layers", "unitz")
    _cli_fails(base[:4] + [" , "] + base[5:], out, "--layers")
    _cli_fails(base + ["--convention", "netdisect"], out, "--convention", "netdisect")
    bad_shape = tmp_path / "w.safetensors"
    save_file({"head.weight": torch.zeros(3, 7, 1, 1), "head.bias": torch.zeros(3)}, str(bad_shape))
    _cli_fails(base + ["--weights", str(bad_shape)], out, "--weights", "w.safetensors")
    garbage = tmp_path / "g.safetensors"
    garbage.write_bytes(b"this is not a safetensors file")
    _cli_fails(base + ["--weights", str(garbage)], out, "--weights", "g.safetensors")
    _cli_fails(base + ["--weights", str(tmp_path / "missing.pt")], out, "--weights")
    _cli_fails(base + ["--batch-size", "0"], out, "--batch-size")
    _cli_fails(base + ["--quantile", "1.5"], out, "--quantile")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    monkeypatch.setattr(cli.dissect, "open_dataset", lambda *a, **k: PlantedDataset())
    with pytest.raises(SystemExit, match=r"--out .*blocker"):
        cli.main(base + ["--out", str(blocker / "out"), "--quiet"])

    # data errors found during the run: one line naming the image, nothing written
    def change(i, item):
        if i == 33:
            item["labels"][0, 0, 0] = 99
        return item
    monkeypatch.setattr(cli.dissect, "open_dataset", lambda *a, **k: Items(change))
    _cli_fails(["dissect", "--model", "planted:Planted", "--layers", "units",
                "--quantile", str(Q), "--backend", "cpu"], out, "image 33")


def test_cli_subprocess_bad_layers(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    proc = subprocess.run(
        [sys.executable, "-m", "dissect_kernels", "dissect", "--model", "planted:Planted",
         "--layers", "units,unitz", "--dataset", str(tmp_path), "--out", str(out), "--quiet"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "--layers" in err and "unitz" in err
    assert outputs(out) == {}


# ------------------------------------------------------------------ a Broden on disk

try:
    from dissect_kernels.data import BrodenDataset, make_synthetic_broden
except ImportError:          # the data layer lands in main separately
    BrodenDataset = make_synthetic_broden = None
needs_broden = pytest.mark.skipif(BrodenDataset is None,
                                  reason="dissect_kernels.data.BrodenDataset is not in this tree")


@needs_broden
def test_cli_folder_that_is_not_a_broden_dataset(tmp_path):
    (tmp_path / "empty").mkdir()
    _cli_fails(["dissect", "--model", "planted:Planted", "--layers", "units",
                "--dataset", f"broden:{tmp_path / 'empty'}"], tmp_path / "out", "--dataset", "empty")


def tiny_cnn():
    """A 4-unit conv layer named "0" (a --model factory for the CLI tests)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=4, padding=1))


@needs_broden
def test_broden_on_disk_with_unreadable_images(tmp_path, capsys):
    """Truncated image files on disk are skipped, counted and listed; API and CLI finish."""
    import json

    root = make_synthetic_broden(tmp_path / "broden", n_images=12, seed=0, image_size=32)
    data = BrodenDataset(root)
    for i in (2, 7):
        path = Path(data.image_path(i))
        path.write_bytes(path.read_bytes()[:20])          # a truncated file
    result = dk.dissect(tiny_cnn(), "0", BrodenDataset(root), out_dir=tmp_path / "out",
                        batch_size=4, progress=False, backend="cpu")
    assert result.skipped == 2 and result.skip_reasons == {"unreadable": 2}
    listed = json.loads((tmp_path / "out" / "summary.json").read_text())["dataset"]["skipped_samples"]
    assert sorted(listed) == ["2", "7"] and "000007" in listed["7"]

    out = tmp_path / "cli_out"
    code = cli.main(["dissect", "--model", "test_bad_inputs:tiny_cnn", "--layers", "0",
                     "--dataset", f"broden:{root}", "--out", str(out), "--quiet",
                     "--batch-size", "4", "--backend", "cpu"])
    assert code == 0 and set(outputs(out)) == set(OUTPUTS) - {"layer-units.html"} | {"layer-0.html"}
    assert "skipped 2 samples" in capsys.readouterr().out


def test_cli_gan_user_errors(tmp_path):
    """The gan subcommand: a bad --layer or --weights is one line naming the flag."""
    gen = "dissect_kernels.models.tiny_gan:TinyGenerator"
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as err:
        cli.main(["gan", "--generator", gen, "--layer", "layer33", "--out", str(out), "--quiet"])
    assert "--layer" in str(err.value.code) and "layer33" in str(err.value.code)
    bad = tmp_path / "g.safetensors"
    save_file({"nope.weight": torch.zeros(2)}, str(bad))
    with pytest.raises(SystemExit) as err:
        cli.main(["gan", "--generator", gen, "--weights", str(bad), "--layer", "layer3",
                  "--out", str(out), "--quiet"])
    msg = str(err.value.code)
    assert "--weights" in msg and "g.safetensors" in msg and "\n" not in msg
    assert outputs(out) == {}
