"""The `dissect-kernels dissect` command on the embedded default (small synthetic dataset)."""
import csv
import json
import subprocess
import sys

from dissect_kernels.cli import main


def test_default_dissect_writes_results_and_report(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["dissect", "--dataset", "synthetic:48", "--out", str(out), "--quiet",
                 "--batch-size", "16", "--layers", "conv4"]) == 0
    printed = capsys.readouterr().out
    assert "conv4:" in printed and "index.html" in printed
    rows = list(csv.DictReader((out / "units.csv").open()))
    assert len(rows) == 128 and {r["layer"] for r in rows} == {"conv4"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["layers"]["conv4"]["units"] == 128
    assert (out / "index.html").is_file() and (out / "layer-conv4.html").read_text().count('<tbody class=') == 128
    assert any((out / "images" / "conv4").iterdir())


def test_help_explains_every_flag():
    text = subprocess.run([sys.executable, "-m", "dissect_kernels", "dissect", "--help"],
                          capture_output=True, text=True, check=True).stdout
    for flag in ("--model", "--weights", "--layers", "--dataset", "--convention", "--out",
                 "--batch-size", "--device", "--backend", "--rotation", "--top-k"):
        assert flag in text
