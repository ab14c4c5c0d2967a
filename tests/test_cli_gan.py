"""`dissect-kernels gan` (registered in dissect_kernels.cli) end to end on the shipped tiny
generator, small sample counts."""
import json

import pytest
import torch

from dissect_kernels.cli import main
from dissect_kernels.models.tiny_gan import tiny_gan_info
from dissect_kernels.io import load_results


def test_gan_command_writes_results_report_and_ace_page(tmp_path, capsys):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = main(["gan", "--num-samples", "16", "--ace-samples", "4", "--batch-size", "8",
                   "--analysis-samples", "4", "--concept", "sun", "--out", str(tmp_path), "--quiet"])
    finally:
        torch.set_num_threads(n)
    assert rc == 0
    res = load_results(tmp_path)
    lr = res.layers["layer3"]
    planted = tiny_gan_info()["planted"]["sun"]
    assert sorted(lr.extra["ace"]["top_units"][:3]) == planted
    page = (tmp_path / "ace.html").read_text()
    for u in planted:
        assert f'id="ace-unit-{u}"' in page                # the top units' cards
    assert 'href="ace.html"' in (tmp_path / "index.html").read_text()
    assert (tmp_path / "images/ace/original.png").is_file()
    for u in range(lr.num_units):
        for kind in ("ablated", "inserted"):
            assert (tmp_path / f"images/ace/sun_unit_{u:04d}_{kind}.png").is_file()
    assert "sun" in capsys.readouterr().out
    index = (tmp_path / "index.html").read_text()
    for page, data in (("context.html", "context.json"), ("artifacts.html", "artifacts.json"),
                       ("generated_vs_real.html", "generated_vs_real.json")):
        assert f'href="{page}"' in index and (tmp_path / page).is_file()
        assert json.loads((tmp_path / data).read_text())["kind"]
    ctx = json.loads((tmp_path / "context.json").read_text())
    assert ctx["concept"] == "sun" and ctx["units"] == lr.extra["ace"]["top_units"][:3]
    assert json.loads((tmp_path / "artifacts.json").read_text())["ablated_units"]
    assert json.loads((tmp_path / "generated_vs_real.json").read_text())["under_produced"][0] == "water"   # 16 samples: noisy


def test_gan_command_rejects_an_unknown_concept(tmp_path):
    with pytest.raises(SystemExit, match="cloud"):
        main(["gan", "--num-samples", "4", "--concept", "cloud", "--out", str(tmp_path), "--quiet"])
