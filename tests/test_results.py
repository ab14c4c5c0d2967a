"""Results model and files: exact save/load round trip, units.csv and summary.json agree with
the tensors, atomic writes (failures leave earlier runs intact), clear errors."""
import csv
import json
import os

import pytest
import torch
from results_factory import CATEGORIES, CONCEPTS, make_layer, make_result

import dissect_kernels as dk
from dissect_kernels.io import results as R

TENSOR_FIELDS = ("iou", "thresholds", "best_label", "best_iou", "best_category", "detector",
                 "category_of", "iqr", "topk_indices", "topk_values", "rotation")
JSON_FIELDS = ("concept_names", "category_names", "exemplar_strips", "rotation_info", "extra")
RUN_FIELDS = ("convention", "unit_base", "model", "dataset", "parameters", "skipped",
              "skip_reasons", "timing", "created", "version")


def assert_same(a: dk.DissectionResult, b: dk.DissectionResult):
    assert list(a.layers) == list(b.layers)
    for f in RUN_FIELDS:
        assert getattr(a, f) == getattr(b, f), f
    for name in a.layers:
        la, lb = a.layers[name], b.layers[name]
        assert la.layer == lb.layer
        for f in TENSOR_FIELDS:
            ta, tb = getattr(la, f), getattr(lb, f)
            assert (ta is None) == (tb is None), f
            if ta is not None:
                assert ta.dtype == tb.dtype and torch.equal(ta, tb), (name, f)
        for f in JSON_FIELDS:
            assert getattr(la, f) == getattr(lb, f), (name, f)
        assert la.counts.keys() == lb.counts.keys()
        for k in la.counts:
            assert la.counts[k].dtype == lb.counts[k].dtype and torch.equal(la.counts[k], lb.counts[k])


def dir_snapshot(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_factory_is_not_trivial():
    r = make_result()
    for lr in r.layers.values():
        assert 0 < lr.num_detectors < lr.num_units  # both detectors and non-detectors
        assert (lr.iou[:, 1:] > 0).all() and (lr.thresholds > 0).all()


def test_round_trip_exact(tmp_path):
    r = make_result()
    paths = dk.save_results(tmp_path, r)
    assert sorted(p.name for p in paths.values()) == ["results.safetensors", "summary.json", "units.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths.values())
    back = dk.load_results(tmp_path)
    assert_same(r, back)
    assert back.unit_base == 1 and back.layers["block/2"].iqr is not None
    # and once more: saving what was loaded gives the same tensors again
    dk.save_results(tmp_path / "again", back)
    assert_same(r, dk.load_results(tmp_path / "again"))


def test_safetensors_keys_are_layer_slash_name(tmp_path):
    from safetensors import safe_open
    dk.save_results(tmp_path, make_result())
    with safe_open(str(tmp_path / "results.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        assert torch.equal(f.get_tensor("features.3/counts.intersection"),
                           make_result().layers["features.3"].counts["intersection"])
    assert {"features.3/iou", "features.3/thresholds", "block/2/iqr", "block/2/rotation"} <= keys


def test_units_csv_agrees_with_tensors(tmp_path):
    r = make_result()
    dk.save_results(tmp_path, r)
    with open(tmp_path / "units.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["layer", "unit", "label", "category", "iou", "threshold", "detector", "iqr"]
    for name, lr in r.layers.items():
        mine = [row for row in rows if row["layer"] == name]
        assert [int(row["unit"]) for row in mine] == list(range(1, lr.num_units + 1))
        for u, row in enumerate(mine):
            c = int(lr.best_label[u])
            assert row["label"] == CONCEPTS[c]
            assert row["category"] == CATEGORIES[int(lr.best_category[u])]
            assert float(row["iou"]) == float(lr.best_iou[u]) == float(lr.iou[u].max())
            assert float(row["threshold"]) == float(lr.thresholds[u])
            assert row["detector"] == str(int(float(lr.iou[u].max()) >= 0.04))
            if lr.iqr is None:
                assert row["iqr"] == ""
            else:
                assert float(row["iqr"]) == float(lr.iqr[u, c])
    assert len(rows) == sum(lr.num_units for lr in r.layers.values())


def test_summary_json_agrees_with_tensors(tmp_path):
    r = make_result()
    dk.save_results(tmp_path, r)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["convention"] == "netdissect" and s["unit_base"] == 1
    assert s["skipped"] == 3 and s["skip_reasons"] == {"unreadable image": 2, "no labels": 1}
    assert s["model"]["name"] == "tiny-cnn" and s["timing"]["tally"] == 3.5
    for name, lr in r.layers.items():
        ls = s["layers"][name]
        best = lr.iou.max(1)
        det = best.values >= 0.04
        assert ls["units"] == lr.num_units
        assert ls["detectors"] == int(det.sum())
        labels = best.indices[det].tolist()
        assert ls["unique_concepts"] == len(set(labels))
        assert ls["detector_concepts"] == {CONCEPTS[c]: labels.count(c) for c in set(labels)}
        assert [row["unit"] for row in ls["unit_rows"]] == list(range(1, lr.num_units + 1))
        assert [row["detector"] for row in ls["unit_rows"]] == det.tolist()


def test_unit_base_follows_convention(tmp_path):
    r = make_result(convention="exact")
    assert r.unit_base == 0
    dk.save_results(tmp_path, r)
    rows = list(csv.DictReader(open(tmp_path / "units.csv")))
    assert rows[0]["unit"] == "0"
    assert dk.DissectionResult(r.layers, convention="netdissect-lite").unit_base == 1
    assert dk.DissectionResult(r.layers, convention="netdissect", unit_base=0).unit_base == 0


def test_build_applies_the_conventions_detector_rule():
    C = len(CONCEPTS)
    iou = torch.full((4, C), 0.01, dtype=torch.float64)
    iou[0, 3], iou[1, 5], iou[2, 7] = 0.04, 0.2, 0.039
    label = torch.tensor([3, 5, 7, -1])
    best = torch.tensor([0.04, 0.2, 0.039, 0.0], dtype=torch.float64)
    kw = dict(concept_names=CONCEPTS, category_names=CATEGORIES, category_of=torch.tensor(
        [0, 0, 0, 1, 1, 2, 2, 0, 0, 3]))
    nd = dk.LayerResult.build("l", iou, torch.ones(4), label, best, convention="netdissect", **kw)
    assert nd.detector.tolist() == [True, True, False, False]  # >= 0.04; label -1 never
    assert nd.best_category.tolist() == [1, 2, 0, -1]
    assert nd.unit_label(3) == "-" and nd.unit_category(3) == "-"
    db = dk.LayerResult.build("l", iou, torch.ones(4), label, best, convention="dissect", **kw)
    assert db.detector.tolist() == [False, True, False, False]  # strict >
    with pytest.raises(ValueError, match="IQR"):
        dk.LayerResult.build("l", iou, torch.ones(4), label, best, convention="gandissect", **kw)
    iqr = torch.zeros(4, C, dtype=torch.float64)
    iqr[1, 5] = 0.02
    gd = dk.LayerResult.build("l", iou, torch.ones(4), label, best, convention="gandissect",
                              iqr=iqr, **kw)
    assert gd.detector.tolist() == [False, True, False, False]
    iqr[1, 5] = 0.005  # IoU clears 0.05 but IQR does not clear 0.01
    gd = dk.LayerResult.build("l", iou, torch.ones(4), label, best, convention="gandissect",
                              iqr=iqr, **kw)
    assert gd.detector.tolist() == [False, False, False, False]


def test_per_unit_concept_thresholds(tmp_path):
    lr = make_layer("x", 5, seed=4)
    thr = torch.rand(5, len(CONCEPTS)) + 0.5
    lr2 = dk.LayerResult(lr.layer, lr.iou, thr, lr.best_label, lr.best_iou, lr.best_category,
                         lr.detector, lr.concept_names, lr.category_names, lr.category_of)
    dk.save_results(tmp_path, dk.DissectionResult([lr2], convention="gandissect"))
    rows = list(csv.DictReader(open(tmp_path / "units.csv")))
    assert [float(r["threshold"]) for r in rows] == \
        [float(thr[u, lr.best_label[u]]) for u in range(5)]
    assert torch.equal(dk.load_results(tmp_path).layers["x"].thresholds, thr)


def test_validation_names_the_field(tmp_path):
    lr = make_layer("x", 5, seed=4)
    base = dict(layer="x", iou=lr.iou, thresholds=lr.thresholds, best_label=lr.best_label,
                best_iou=lr.best_iou, best_category=lr.best_category, detector=lr.detector,
                concept_names=CONCEPTS, category_names=CATEGORIES, category_of=lr.category_of)
    for field, bad, msg in [("thresholds", torch.ones(4), "thresholds must have shape"),
                            ("best_label", torch.full((5,), 99), "best_label holds ids"),
                            ("concept_names", CONCEPTS[:-1], "concept_names has 9 names"),
                            ("detector", torch.ones(6, dtype=torch.bool), "detector must have shape"),
                            ("iou", torch.ones(5, 10, dtype=torch.int64), "iou must be floating")]:
        with pytest.raises((ValueError, TypeError), match=msg) as e:
            dk.LayerResult(**{**base, field: bad})
        assert "'x'" in str(e.value)
    with pytest.raises(ValueError, match="exemplar_strips has unit 9"):
        dk.LayerResult(**base, exemplar_strips={9: "images/a.jpg"})
    with pytest.raises(ValueError, match="relative"):
        dk.LayerResult(**base, exemplar_strips={1: "/abs/a.jpg"})
    with pytest.raises(TypeError, match="parameters: value of type object"):
        dk.save_results(tmp_path / "never", dk.DissectionResult([lr], parameters={"bad": object()}))
    assert not (tmp_path / "never").exists()


def test_fields_changed_after_construction_are_checked_on_save(tmp_path):
    r = make_result()
    r.layers["features.3"].exemplar_strips[99] = "images/x.jpg"
    with pytest.raises(ValueError, match="exemplar_strips has unit 99"):
        dk.save_results(tmp_path, r)
    r.layers["features.3"].exemplar_strips.pop(99)
    r.layers["features.3"].best_iou = r.layers["features.3"].best_iou[:-1]
    with pytest.raises(ValueError, match="best_iou must have shape"):
        dk.save_results(tmp_path, r)
    assert list(tmp_path.iterdir()) == []


def test_layer_without_units_round_trips(tmp_path):
    lr = make_layer("empty", 1, seed=5)
    e = dk.LayerResult("empty", lr.iou[:0], lr.thresholds[:0], lr.best_label[:0], lr.best_iou[:0],
                       lr.best_category[:0], lr.detector[:0], CONCEPTS, CATEGORIES, lr.category_of)
    r = dk.DissectionResult([e, make_layer("x", 3, seed=6)])
    dk.save_results(tmp_path, r)
    assert_same(r, dk.load_results(tmp_path))
    assert json.loads((tmp_path / "summary.json").read_text())["layers"]["empty"]["units"] == 0


@pytest.mark.parametrize("writer", ["_write_tensors", "_write_units_csv", "_write_summary"])
def test_failure_mid_save_keeps_previous_run(tmp_path, monkeypatch, writer):
    first = make_result()
    dk.save_results(tmp_path, first)
    before = dir_snapshot(tmp_path)
    real = getattr(R, writer)

    def broken(path, result, run_id):
        real(path, result, run_id)   # a (partial) file is on disk when the error strikes
        with open(path, "ab") as f:
            f.write(b"garbage")
        raise OSError("disk full (injected)")

    monkeypatch.setattr(R, writer, broken)
    second = make_result(convention="exact")
    with pytest.raises(OSError, match="injected"):
        dk.save_results(tmp_path, second)
    assert dir_snapshot(tmp_path) == before  # no temp files, nothing replaced
    assert_same(first, dk.load_results(tmp_path))


def test_failure_in_safetensors_leaves_nothing_in_a_fresh_dir(tmp_path, monkeypatch):
    def broken(tensors, path, metadata=None):
        open(path, "wb").write(b"partial")
        raise RuntimeError("serialisation failed (injected)")

    monkeypatch.setattr(R, "save_file", broken)
    out = tmp_path / "fresh"
    with pytest.raises(RuntimeError, match="injected"):
        dk.save_results(out, make_result())
    assert list(out.iterdir()) == []


def test_unwritable_out_dir_is_named(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for out in (blocker / "results", blocker):
        with pytest.raises(OSError, match="cannot write to output directory") as e:
            dk.save_results(out, make_result())
        assert str(out) in str(e.value)
    assert blocker.read_text() == "x"


def test_load_rejects_mixed_or_missing_files(tmp_path):
    dk.save_results(tmp_path / "a", make_result())
    dk.save_results(tmp_path / "b", make_result())
    os.replace(tmp_path / "b" / "summary.json", tmp_path / "a" / "summary.json")
    with pytest.raises(ValueError, match="different runs"):
        dk.load_results(tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="summary.json is missing"):
        dk.load_results(tmp_path / "b")
