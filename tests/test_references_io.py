"""Reading and writing the reference tools' result files, and `dissect-kernels compare`: a
result exported to each format and compared with itself shows no difference (thresholds, NaN
IoUs of dead units and labels included); the readers take files written the way each tool
writes them; netdissect's sketch is read out as its quantiles() does; the exit status follows
the tolerances."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from dissect_kernels.cli import main
from dissect_kernels.comparison import compare
from dissect_kernels.io import save_results
from dissect_kernels.io.references import export_results, load_units, sketch_quantiles
from results_factory import make_result

FORMATS = ("netdissect-lite", "netdissect", "gandissect")


def saved(tmp_path, *, dead_nan=False, float64=False):
    result = make_result(convention="dissect" if dead_nan else "netdissect")
    layer = result.layers["features.3"]
    layer.best_label[2], layer.best_category[2], layer.detector[2] = -1, -1, False   # a dead unit
    layer.best_iou[2] = math.nan if dead_nan else 0.0
    if float64:
        layer.thresholds = layer.thresholds.double() + 1e-12
    save_results(tmp_path / "ours", result)
    return tmp_path / "ours", result


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dead_nan,float64", [(False, True), (True, False)])
def test_export_then_compare_shows_no_difference(tmp_path, capsys, fmt, dead_nan, float64):
    ours, result = saved(tmp_path, dead_nan=dead_nan, float64=float64)
    assert main(["export", str(ours), "--format", fmt, "--out", str(tmp_path / fmt)]) == 0
    a, b = load_units(ours), load_units(tmp_path / fmt)
    assert set(b) == {"features.3", "block/2"} and b["features.3"].source == fmt
    for r in compare(a, b):
        assert r.same_label == r.units and r.iou_delta_max == 0.0 and r.nan_mismatch == 0
        assert r.threshold_delta_max == 0.0 and r.same_detector in (None, r.units)
    assert b["features.3"].label[2] is None and math.isnan(b["features.3"].iou[2]) == (dead_nan and fmt == "netdissect")
    assert main(["compare", str(ours), str(tmp_path / fmt), "--out", str(tmp_path / "cmp"),
                 "--iou-tolerance", "0", "--min-same-label", "1"]) == 0
    report = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert report["within_tolerance"] and (tmp_path / "cmp" / "compare.png").stat().st_size > 1000
    assert "same label 11/11" in capsys.readouterr().out


def test_compare_fails_outside_tolerance(tmp_path, capsys):
    ours, result = saved(tmp_path)
    export_results(result, "netdissect-lite", tmp_path / "ndl")
    path = tmp_path / "ndl" / "features.3" / "tally.csv"
    rows = list(csv.DictReader(path.open()))
    rows[0]["score"] = repr(float(rows[0]["score"]) + 2e-6)
    rows[1]["label"] = "wheel" if rows[1]["label"] != "wheel" else "door"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    args = ["compare", str(ours), str(tmp_path / "ndl"), "--layers", "features.3", "--out", str(tmp_path / "c")]
    assert main(args + ["--iou-tolerance", "1e-6", "--min-same-label", "0.9"]) == 1
    assert main(args + ["--iou-tolerance", "1e-5", "--min-same-label", "0.9"]) == 0
    assert main(args + ["--iou-tolerance", "1e-5", "--min-same-label", "0.95"]) == 1
    report = json.loads((tmp_path / "c" / "compare.json").read_text())["layers"][0]
    assert report["same_label"] == 10 and len(report["disagreements"]) == 1
    assert 1.5e-6 < report["iou_delta_max"] < 2.5e-6 and sum(report["iou_histogram"]) == 11


def test_reads_files_written_the_tools_way(tmp_path):
    """A tally.csv with NetDissect-Lite's columns (1-based units by score, empty label of a unit
    that never fires) and a report.json with davidbau/dissect's "NaN"."""
    ndl = tmp_path / "result" / "pytorch_resnet18_places365"
    ndl.mkdir(parents=True)
    cols = ["unit", "category", "label", "score"] + [f"{c}-{f}" for c in ("object", "color")
                                                      for f in ("label", "truth", "activation", "intersect", "iou")]
    rows = [[2, "object", "sky", 0.0812, "sky", 10, 5, 4, 0.0812, "red", 3, 1, 0, 0.0],
            [1, "color", "", 0.0, "", 0, 0, 0, 0.0, "", 0, 0, 0, 0.0]]
    with (ndl / "tally.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows(rows)
    np.save(ndl / "quantile.npy", np.array([0.25, 1.5]))
    got = load_units(ndl, layer="layer4")["layer4"]
    assert got.label == [None, "sky"] and got.category == [None, "object"]
    assert got.iou.tolist() == [0.0, 0.0812] and got.threshold.tolist() == [0.25, 1.5]
    assert got.detector.tolist() == [False, True]
    nd = tmp_path / "results" / "alexnet-places-netpqc-conv5-10"
    nd.mkdir(parents=True)
    (nd / "report.json").write_text('{"header": {"name": "x"}, "units": ['
                                    '{"image": "image/unit0.jpg", "unit": 0, "iou": "NaN", "label": "sky", "cat": "object"},'
                                    '{"image": "image/unit1.jpg", "unit": 1, "iou": 0.05, "label": "door", "cat": "part"}]}')
    got = load_units(nd / "report.json")["alexnet-places-netpqc-conv5-10"]
    assert got.label == [None, "door"] and math.isnan(got.iou[0]) and got.detector.tolist() == [False, True]


def midpoint_readout(pairs, lo, hi, q):
    """The weighted-midpoint readout written out with a loop: (value, weight) pairs sorted,
    min and max with weight 0 at the ends, position of j = (sum of weights up to j - w_j/2)/total
    in fp32 (as netdissect keeps them), q rounded to fp32."""
    f32 = np.float32
    pairs = [(lo, 0.0)] + sorted(pairs) + [(hi, 0.0)]
    total = f32(sum(w for _, w in pairs))
    pos, run = [], 0.0
    for _, w in pairs:
        run += w
        pos.append(float((f32(run) - f32(w) / f32(2)) / total))
    q = float(f32(q))
    for j in range(1, len(pairs)):
        if pos[j] >= q:
            t = (q - pos[j - 1]) / (pos[j] - pos[j - 1])
            return pairs[j - 1][0] + t * (pairs[j][0] - pairs[j - 1][0])
    return pairs[-1][0]


def test_netdissect_sketch_readout(tmp_path):
    """rq.npz as RunningQuantile.state_dict() saves it: levels of [count, units] samples (level
    i weighs 2^i; an empty level in between), extremes [units, 2]."""
    rng = np.random.default_rng(0)
    levels = [rng.standard_normal((7, 3)).astype(np.float32), rng.standard_normal((5, 3)).astype(np.float32),
              np.zeros((0, 3), np.float32), rng.standard_normal((2, 3)).astype(np.float32)]
    allv = np.concatenate(levels)
    extremes = np.stack([allv.min(0) - 0.5, allv.max(0) + 0.5], 1).astype(np.float32)
    np.savez(tmp_path / "rq.npz", data=np.array(levels + [None], dtype=object), extremes=extremes,
             sizes=[8, 8, 8, 8], size=100)
    for q in (0.001, 0.01, 0.5, 0.9, 0.99):
        got = sketch_quantiles(tmp_path / "rq.npz", q)
        assert got.dtype == np.float32
        for u in range(3):
            pairs = [(float(v), 2.0 ** i) for i, lv in enumerate(levels) for v in lv[:, u]]
            want = midpoint_readout(pairs, float(extremes[u, 0]), float(extremes[u, 1]), q)
            assert got[u] == np.float32(want)
    one = np.array([0.125, -2.0], np.float32)   # the writer's one-sample sketch reads back exactly
    from dissect_kernels.io.references import _write_sketch
    _write_sketch(tmp_path / "one.npz", one)
    assert sketch_quantiles(tmp_path / "one.npz", 0.99).tolist() == one.tolist()


def test_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds none of"):
        load_units(tmp_path / "empty")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a results file"):
        load_units(tmp_path / "bad.csv")
    with pytest.raises(SystemExit, match="compare: .*holds none of"):
        main(["compare", str(tmp_path / "empty"), str(tmp_path / "empty")])
