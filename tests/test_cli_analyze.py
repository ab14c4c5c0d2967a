"""`dissect-kernels analyze NAME` from the command line, on a planted Broden-format folder: every
registered analysis has a subcommand with documented flags, writes <out>/<name>.json whose unit
records name their layer and unit, adds its page to the run's site; bad flags fail in one line."""
import json

import pytest

from planted import PlantedDataset, write_planted_broden

from dissect_kernels.analysis import ANALYSES
from dissect_kernels.cli import build_parser, main

IDS = ["--normalize", "0,0.00392156862745098"]          # images store label ids in their red channel


@pytest.fixture(scope="module")
def broden(tmp_path_factory):
    data = PlantedDataset(16)
    return write_planted_broden(tmp_path_factory.mktemp("planted"), data), data.midgap_quantile(64)


def test_every_analysis_is_a_subcommand_with_help():
    sub = build_parser()._subparsers._group_actions[0].choices["analyze"]
    names = set(sub._subparsers._group_actions[0].choices)
    assert names == {m.NAME for m in ANALYSES}
    for m in ANALYSES:
        assert m.HELP and callable(m.run_cli) and callable(m.add_arguments)


@pytest.mark.parametrize("name,extra", [("robustness", ["--perturbations", "noise-100,rotate-90"]),
                                        ("rotation", ["--rotations", "2", "--alphas", "0,1"]),
                                        ("pca", ["--max-concepts", "3"])])
def test_analysis_from_the_command_line(broden, tmp_path, capsys, name, extra):
    root, q = broden
    threshold = [] if name == "pca" else ["--quantile", str(q)]          # pca thresholds nothing
    args = ["analyze", name, "--model", "planted:Planted", "--layers", "units", "--dataset", str(root),
            *threshold, "--out", str(tmp_path), "--quiet", "--batch-size", "8", *IDS, *extra]
    assert main(args) == 0
    rec = json.loads((tmp_path / f"{name}.json").read_text())
    assert rec["analysis"] == name and list(rec["layers"]) == ["units"]
    units = rec["layers"]["units"]["units"]
    assert units and all(u["layer"] == "units" and isinstance(u["unit"], int) for u in units)
    assert f"{name}.html" in (tmp_path / "index.html").read_text()
    assert f"{name}.json" in capsys.readouterr().out
    if name == "robustness":
        assert rec["layers"]["units"]["summary"]["rotate-90"]["retained"] == 4
    if name == "rotation":
        assert rec["layers"]["units"]["partial"][0]["detectors"] == rec["layers"]["units"]["unrotated"]["detectors"]


@pytest.mark.parametrize("args,flag", [(["robustness", "--perturbations", "blur-2"], "--perturbations"),
                                       (["rotation", "--alphas", "0,2"], "--alphas"),
                                       (["pca", "--components", "0"], "--components")])
def test_bad_flags_fail_in_one_line(tmp_path, args, flag):
    with pytest.raises(SystemExit, match=flag):
        main(["analyze", *args, "--out", str(tmp_path)])


def test_a_later_dissect_keeps_the_analysis_pages_listed(broden, tmp_path):
    root, q = broden
    common = ["--model", "planted:Planted", "--layers", "units", "--dataset", str(root), "--quantile", str(q),
              "--out", str(tmp_path), "--quiet", *IDS]
    assert main(["analyze", "pca", *[a for a in common if a not in ("--quantile", str(q))]]) == 0
    assert main(["dissect", *common]) == 0
    index = (tmp_path / "index.html").read_text()
    assert "pca.html" in index and "layer-units.html" in index
    assert "pca.html" in (tmp_path / "layer-units.html").read_text()      # in the pages' navigation too
