"""`dissect-kernels gan context | artifacts | real`: each analysis alone on the shipped tiny
generator, writing its JSON, images and page into --out's report site."""
import json

import pytest

from dissect_kernels.cli import build_parser, main


def test_each_analysis_runs_alone_and_joins_one_site(tmp_path, capsys):
    out = str(tmp_path)
    assert main(["gan", "context", "--concept", "door", "--num-samples", "4", "--grid", "4", "--value", "1.5",
                 "--out", out, "--quiet"]) == 0
    ctx = json.loads((tmp_path / "context.json").read_text())
    assert ctx["concept"] == "door" and ctx["grid"] == [4, 4] and ctx["num_samples"] == 4
    assert (tmp_path / "images/context/original.png").is_file()
    scores = tmp_path / "scores.csv"
    scores.write_text("sample,score\n" + "".join(f"{i},{i % 3}\n" for i in range(8)))
    assert main(["gan", "artifacts", "--annotations", str(scores), "--num-samples", "8", "--out", out,
                 "--quiet"]) == 0
    art = json.loads((tmp_path / "artifacts.json").read_text())
    assert art["ranking"] == "correlation" and art["score_after"] is None
    assert main(["gan", "real", "--num-samples", "8", "--out", out, "--quiet"]) == 0
    real = json.loads((tmp_path / "generated_vs_real.json").read_text())
    assert real["num_generated"] == 8 and real["under_produced"] == ["water"]
    index = (tmp_path / "index.html").read_text()
    for page in ("context.html", "artifacts.html", "generated_vs_real.html"):
        assert f'href="{page}"' in index and (tmp_path / page).is_file()
    assert "under-produced: water" in capsys.readouterr().out


def test_help_lists_the_analyses(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["gan", "--help"])
    text = capsys.readouterr().out
    assert "context" in text and "artifacts" in text and "real" in text


@pytest.mark.parametrize("argv, match", [
    (["context", "--units", "99"], "out of range"),
    (["context", "--value", "big"], "--value"),
    (["context", "--concept", "cloud"], "cloud"),
    (["artifacts", "--score", "nowhere:f"], "--score"),
    (["real", "--real", "/nonexistent/folder"], "does not exist"),
])
def test_bad_flags_fail_in_one_line(tmp_path, argv, match):
    with pytest.raises(SystemExit, match=match):
        main(["gan", *argv, "--num-samples", "2", "--out", str(tmp_path), "--quiet"])


def test_class_names_from_a_users_segmenter_show_as_text(tmp_path):
    import torch

    from dissect_kernels.context import insertion_context
    from dissect_kernels.gan_real import generated_vs_real
    from dissect_kernels.models.tiny_gan import load_default_generator, palette_tensor
    from dissect_kernels.report.gan_analyses import write_analysis
    from dissect_kernels.segmenters import TorchSegmenter
    names = ["background", "<script>alert(1)</script>", "door & co", "sun", "<b>water</b>"]
    seg = TorchSegmenter(lambda x: -((x[:, None] * 2 - 1 - palette_tensor()[None, :, :, None, None]) ** 2).sum(2),
                         names, background="background")
    g = load_default_generator()
    real = generated_vs_real(g, seg, g(torch.zeros(2, 48)), num_samples=2)
    ctx = insertion_context(g, "layer3", [0, 14, 20], seg, names[1], num_samples=1, grid=2, value=1.0)
    for kind, data in (("real", real.to_json()), ("context", ctx.to_json())):
        text = write_analysis(tmp_path, kind, data).read_text()
        assert "<script>alert" not in text and "<b>water" not in text
        assert "&lt;script&gt;alert" in text or kind == "real"
        assert "&lt;b&gt;water" in text or kind == "context"      # never a context in one sample
    assert "<script>alert" not in (tmp_path / "index.html").read_text()
