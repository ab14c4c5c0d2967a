"""analysis.compare on two planted models: A detects things 1-4 with one unit each, B has two
units on thing2 and none on thing4; the comparison finds the shared concepts, what only A has,
and matches units by label (also from the command line, from results folders)."""
import json

import pytest

from planted import Planted, PlantedDataset

import dissect_kernels as dk
from dissect_kernels.cli import main


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    ds = PlantedDataset(24)
    q = ds.midgap_quantile(64)
    out = {}
    for name, concepts in (("a", (1, 2, 3, 4)), ("b", (1, 2, 2, 3))):
        out[name] = tmp_path_factory.mktemp(name)
        dk.dissect(Planted(concepts=concepts), ["units"], ds, quantile=q, batch_size=12, progress=False,
                   out_dir=out[name], report=False)
    return out


def test_shared_concepts_and_units_matched_by_label(runs, tmp_path):
    rec = dk.analysis.compare([runs["a"], runs["b"]], names=["A", "B"], out_dir=tmp_path)
    a, b = rec["sides"]
    assert (a["detectors"], a["unique_concepts"], b["detectors"], b["unique_concepts"]) == (4, 4, 4, 3)
    assert a["categories"]["object"] == {"detectors": 4, "unique_concepts": 4}
    assert b["categories"]["object"] == {"detectors": 4, "unique_concepts": 3}
    pair = rec["pairs"][0]
    assert pair["shared_concepts"] == ["thing1", "thing2", "thing3"] and pair["only_a"] == ["thing4"]
    assert pair["only_b"] == [] and pair["jaccard"] == pytest.approx(0.75)
    thing2 = next(c for c in rec["concepts"] if c["concept"] == "thing2")
    assert thing2["units"]["A"] == [1] and sorted(thing2["units"]["B"]) == [1, 2]
    unit1 = rec["layers"]["A"]["units"][1]
    assert unit1["layer"] == "units" and unit1["unit"] == 1 and sorted(unit1["matches"]["B"]) == [1, 2]
    assert rec["layers"]["A"]["units"][3]["matches"]["B"] == []          # thing4: no partner
    assert json.loads((tmp_path / "compare.json").read_text())["pairs"] == rec["pairs"]
    assert "compare.html" in (tmp_path / "index.html").read_text()


def test_cli_writes_into_the_first_run(runs, capsys):
    assert main(["analyze", "compare", str(runs["a"]), f"{runs['b']}:units"]) == 0
    assert "3 shared concepts" in capsys.readouterr().out
    rec = json.loads((runs["a"] / "compare.json").read_text())
    assert [s["name"] for s in rec["sides"]] == [f"{runs['a'].name}/units", f"{runs['b'].name}/units"]


def test_one_layer_is_refused():
    with pytest.raises(ValueError, match="two or more"):
        dk.analysis.compare([("x", None)])
