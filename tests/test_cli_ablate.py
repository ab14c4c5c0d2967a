"""`dissect-kernels ablate`: the default command writes every file and the CSV/JSON agree with
the safetensors and with a manual forward pass; a planted colour detector's ablation hurts its
class most; bad flags give one clear line; a failed write leaves no file behind."""
import csv
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dissect_kernels import cli
from dissect_kernels.cli import ablate as cli_ablate
from dissect_kernels.report import ablation as ablation_report
from dissect_kernels.data import BrodenDataset
from dissect_kernels.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from dissect_kernels.models import default_model_info, load_default_model

COLOURS = {"red": (215, 35, 35), "blue": (40, 80, 220), "green": (40, 170, 60), "yellow": (240, 220, 40)}


class PlantedColours(nn.Module):
    """`feat` unit k = how close a pixel is to target colour k (units 4, 5: noise); logit k =
    10 * max over the image of unit k - 5, so only unit k matters for class k."""

    def __init__(self):
        super().__init__()
        self.register_buffer("rgb", torch.tensor(list(COLOURS.values()), dtype=torch.float32) / 255)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.feat = nn.Identity()
        self.fc = nn.Linear(6, 4)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.weight[:, :4] = torch.eye(4) * 10
            self.fc.bias.fill_(-5.0)

    def forward(self, x):
        img = x * self.std + self.mean                                   # back to [0, 1] RGB
        dist = (img[:, None] - self.rgb[None, :, :, None, None]).norm(dim=2)  # [B, 4, H, W]
        near = torch.relu(1 - dist / 0.15)
        noise = torch.stack([img.mean(1), img[:, 0] * 0.5], 1)
        h = self.feat(torch.cat([near, noise], 1))
        return self.fc(h.amax((2, 3)))


def planted_colours():
    return PlantedColours().eval()


def run(tmp_path, *extra):
    return cli.main(["ablate", "--quiet", "--out", str(tmp_path / "out"), *extra])


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_default_command_writes_consistent_files(tmp_path, capsys):
    assert run(tmp_path, "--dataset", "synthetic:60", "--top-n", "1,3,200") == 0
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == sorted(ablation_report.FILES)
    assert "largest drop" in capsys.readouterr().out
    st = load_file(str(out / "ablation.safetensors"))
    names = default_model_info()["targets"]
    rows = read_csv(out / "ablation.csv")
    summary = json.loads((out / "ablation.json").read_text())
    assert [r["name"] for r in rows] == names and len(summary["classes"]) == len(names)
    assert st["ranking"].shape == (36, 128) and st["top_n"].tolist() == [1, 3, 200]
    assert summary["layer"] == "conv4" and summary["eval_images"] == int(st["num_samples"])
    for c, r in enumerate(rows):
        assert float(r["baseline_balanced"]) == float(st["baseline_balanced"][c])
        assert float(r["baseline_precision"]) == float(st["baseline_precision"][c])
        for t, n in enumerate((1, 3, 200)):
            assert float(r[f"top{n}_balanced"]) == float(st["topn_balanced"][c, t])
            assert float(r[f"allbut{n}_balanced"]) == float(st["allbut_balanced"][c, t])
        assert [int(u) for u in r["top_units"].split()] == st["ranking"][c, :10].tolist()
        drops = st["rank_drop"][st["ranking"][c, :10], c]   # units are 0..127 here
        assert [float(d) for d in r["top_unit_drops"].split()] == pytest.approx(drops.tolist(), rel=1e-5)
        assert bool((drops[:-1] >= drops[1:]).all())          # ranked by the drop, largest first
        assert summary["classes"][c]["top_units"] == st["ranking"][c, :10].tolist()
        assert int(r["positives"]) == int(st["positives"][c])
    assert torch.equal(st["allbut_balanced"][:, 2], st["baseline_balanced"])  # N=200 > 128: none ablated
    # the baseline against a forward pass with targets computed here from the label maps
    ds = BrodenDataset(out / "synthetic_broden")
    model = load_default_model()
    ids = [ds.concept_names.index(n) for n in names]
    val = [i for i, s in enumerate(ds.splits) if s == "val"]
    xs, ys = [], []
    for i in val:
        item = ds[i]
        present = set(item["labels"].flatten().tolist()) | set(item["image_labels"].tolist())
        xs.append(item["image"])
        ys.append(torch.tensor([c in present for c in ids]))
    with torch.no_grad():
        pred = model(torch.stack(xs)) > 0
    y = torch.stack(ys)
    assert torch.equal(st["positives"], y.sum(0))
    tp, fp = (pred & y).sum(0).double(), (pred & ~y).sum(0).double()
    fn, tn = (~pred & y).sum(0).double(), (~pred & ~y).sum(0).double()
    rec = torch.where(tp + fn > 0, tp / (tp + fn).clamp(min=1), 0)
    tnr = torch.where(tn + fp > 0, tn / (tn + fp).clamp(min=1), 0)
    torch.testing.assert_close(st["baseline_balanced"], (rec + tnr) / 2, rtol=0, atol=1e-12)
    assert float(st["baseline_balanced"].mean()) > 0.7     # the shipped model really classifies
    html = (out / "ablation.html").read_text()
    assert html.count('<section class="card"') == 36 and html.count("data:image/svg+xml;base64,") == 37
    assert "http://" not in html.replace("http://www.w3.org", "")


def test_planted_colour_unit_hurts_its_class_most(tmp_path):
    assert run(tmp_path, "--dataset", "synthetic:80", "--model", "test_cli_ablate:planted_colours",
               "--layer", "feat", "--targets", ",".join(COLOURS), "--top-n", "1,2,6") == 0
    st = load_file(str(tmp_path / "out" / "ablation.safetensors"))
    for k in range(4):
        assert float(st["rank_baseline_balanced"][k]) > 0.65           # the planted detector works
        assert int(st["ranking"][k, 0]) == k                           # its own unit ranks first
        assert float(st["rank_single_balanced"][k, k]) == 0.5          # ablated: never predicted
        others = [u for u in range(6) if u != k]
        assert torch.all(st["rank_drop"][others, k] == 0)              # other units do nothing
        assert float(st["topn_recall"][k, 0]) == 0.0                   # eval split: same effect
        assert float(st["allbut_balanced"][k, 0]) == float(st["baseline_balanced"][k])


def test_bad_flags_give_one_clear_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run(tmp_path, "--layer", "conv9")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("--layer: layer 'conv9' is not a submodule") and "conv4" in msg
    assert not (tmp_path / "out").exists()                     # checked before any data is written
    for bad in ("1,x", "0,5", ""):
        with pytest.raises(SystemExit) as e:
            run(tmp_path, "--top-n", bad)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "argument --top-n: expected comma-separated positive integers" in err
    with pytest.raises(SystemExit, match="--targets is required with --model"):
        run(tmp_path, "--model", "test_cli_ablate:planted_colours", "--layer", "feat")
    with pytest.raises(SystemExit, match=r"--targets \['mauve'\] are not concepts of the dataset"):
        run(tmp_path, "--dataset", "synthetic:12", "--model", "test_cli_ablate:planted_colours",
            "--layer", "feat", "--targets", "red,blue,green,mauve")
    with pytest.raises(SystemExit, match="must output one logit per target"):
        run(tmp_path, "--dataset", "synthetic:12", "--model", "test_cli_ablate:planted_colours",
            "--layer", "feat", "--targets", "red,blue,green")
    with pytest.raises(SystemExit, match="--eval-split 'test': the dataset has no images in that split"):
        run(tmp_path, "--dataset", "synthetic:12", "--eval-split", "test")
    with pytest.raises(SystemExit, match="--weights '/nonexistent.safetensors': no such file"):
        run(tmp_path, "--weights", "/nonexistent.safetensors")
    bad = tmp_path / "bad.safetensors"
    save_file({"fc.weight": torch.ones(2, 2)}, str(bad))
    with pytest.raises(SystemExit, match="do not fit the embedded 'SmallCNN'"):
        run(tmp_path, "--weights", str(bad))
    with pytest.raises(SystemExit, match="--device 'gpu7'"):
        run(tmp_path, "--device", "gpu7")
    assert cli_ablate.parse_top_n("5, 1,5") == (1, 5)
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["ablate"].format_help()
    for flag in ("--model", "--weights", "--targets", "--layer", "--dataset", "--top-n", "--out",
                 "--batch-size", "--device", "--quiet", "--rank-split", "--eval-split"):
        assert flag in help_text


def test_failed_write_leaves_no_partial_files(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "ablation.csv").write_text("old")
    monkeypatch.setattr(ablation_report, "render_html", lambda *a, **k: 12345)  # html writer fails late
    with pytest.raises(SystemExit, match="dissect-kernels: error: .*"):  # the CLI's one-line error
        run(tmp_path, "--dataset", "synthetic:24", "--model", "test_cli_ablate:planted_colours",
            "--layer", "feat", "--targets", ",".join(COLOURS), "--top-n", "1")
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["ablation.csv"]
    assert (out / "ablation.csv").read_text() == "old"


def test_replay_keeps_a_small_split_and_streams_a_big_one():
    batches = [(torch.randn(2, 3), torch.ones(2, 4, dtype=torch.int64)) for _ in range(3)]

    class Counting:
        passes = 0

        def __iter__(self):
            Counting.passes += 1
            yield from batches

    small, big = cli_ablate._Replay(Counting()), cli_ablate._Replay(Counting(), max_bytes=100)
    for r in (small, big):
        for _ in range(3):
            got = list(r)
            assert len(got) == 3 and all(torch.equal(a[0], b[0]) for a, b in zip(got, batches))
    assert Counting.passes == 1 + 3      # the small one read once, the big one every time
    assert small.batches is not None and big.batches is None
