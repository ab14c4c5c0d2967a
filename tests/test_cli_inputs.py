"""The command line on any model: layer layouts (a tiny ViT through `--layers NAME:tokens,...`),
input transforms (--image-size, --normalize, recorded in summary.json), fixed --thresholds, and
one clear line for every flag that cannot work (--weights without --model, --device cuda with
no GPU, an empty --layers)."""
import json

import pytest
import torch
from safetensors.torch import save_file

from dissect_kernels.cli import build_parser, main
from dissect_kernels.models import load_default_model
from dissect_kernels.models.tiny_gan import load_default_generator
from planted import PlantedDataset, write_planted_broden

DATA = PlantedDataset()
IDS = "0,0.00392156862745098"            # mean 0, std 1/255: the image's red channel = the label id


@pytest.fixture(scope="module")
def broden(tmp_path_factory):
    return write_planted_broden(tmp_path_factory.mktemp("planted") / "broden", DATA)


def fails(args, *words):
    """The CLI exits with one line naming every word (no traceback)."""
    with pytest.raises(SystemExit) as err:
        main(args)
    text = str(err.value.code)
    assert "\n" not in text and "Traceback" not in text
    for word in words:
        assert word in text, (word, text)


def test_vit_tokens_from_the_command_line(broden, tmp_path):
    q = str(DATA.midgap_quantile(16 * 16))
    assert main(["dissect", "--model", "dissect_kernels.models.tiny_vit:planted_vit", "--quiet",
                 "--layers", "blocks.1:tokens,prefix=3", "--dataset", f"broden:{broden}",
                 "--normalize", IDS, "--quantile", q, "--out", str(tmp_path / "vit")]) == 0
    summary = json.loads((tmp_path / "vit" / "summary.json").read_text())
    rows = summary["layers"]["blocks.1"]["unit_rows"]
    assert [r["label"] for r in rows[:4]] == ["thing1", "thing2", "thing3", "thing4"]
    assert all(r["iou"] > 0.95 and r["detector"] for r in rows[:4])
    assert summary["dataset"]["transform"] == {"image_size": None,
                                               "normalize": {"mean": [0.0] * 3, "std": [1 / 255] * 3}}
    # fixed thresholds from that run: the same IoU, and summary.json says where they came from
    assert main(["dissect", "--model", "dissect_kernels.models.tiny_vit:planted_vit", "--quiet",
                 "--layers", "blocks.1:tokens,prefix=3", "--dataset", f"broden:{broden}",
                 "--normalize", IDS, "--thresholds", str(tmp_path / "vit"), "--out", str(tmp_path / "t")]) == 0
    again = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert again["parameters"]["thresholds"] == str(tmp_path / "vit")
    assert [r["iou"] for r in again["layers"]["blocks.1"]["unit_rows"]] == [r["iou"] for r in rows]


def test_image_size_is_applied_and_recorded(broden, tmp_path):
    assert main(["dissect", "--model", "planted:Planted", "--layers", "units", "--quiet",
                 "--dataset", f"broden:{broden}", "--image-size", "96", "--normalize", IDS,
                 "--max-images", "8", "--out", str(tmp_path / "o")]) == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["dataset"]["transform"]["image_size"] == 96


def test_weights_without_model_load_into_the_default_model(tmp_path):
    broken = {k: torch.zeros_like(v) for k, v in load_default_model().state_dict().items()}
    save_file(broken, str(tmp_path / "zeros.safetensors"))
    bad = {"nothing.weight": torch.zeros(1)}
    save_file(bad, str(tmp_path / "bad.safetensors"))
    fails(["dissect", "--weights", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "a")],
          "--weights", "no such file")
    fails(["dissect", "--weights", str(tmp_path / "bad.safetensors"), "--out", str(tmp_path / "a")],
          "--weights", "do not fit")
    fails(["gan", "--weights", str(tmp_path / "bad.safetensors"), "--out", str(tmp_path / "g")],
          "--weights", "do not fit")
    gan_state = {k: v.clone() for k, v in load_default_generator().state_dict().items()}
    save_file(gan_state, str(tmp_path / "gan.safetensors"))
    assert main(["gan", "--weights", str(tmp_path / "gan.safetensors"), "--num-samples", "8",
                 "--ace-samples", "2", "--batch-size", "8", "--quiet", "--out", str(tmp_path / "g2")]) == 0
    # zero weights really reach the model: every unit is dead, so no unit is a detector
    assert main(["dissect", "--weights", str(tmp_path / "zeros.safetensors"), "--dataset", "synthetic:12",
                 "--quiet", "--out", str(tmp_path / "z")]) == 0
    summary = json.loads((tmp_path / "z" / "summary.json").read_text())
    assert all(layer["detectors"] == 0 for layer in summary["layers"].values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
@pytest.mark.parametrize("command", ["dissect", "gan", "ablate"])
def test_cuda_without_a_gpu_is_one_line(tmp_path, command):
    fails([command, "--device", "cuda", "--out", str(tmp_path)], "--device", "no usable CUDA GPU")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_backend_without_a_gpu_is_one_line(tmp_path):
    fails(["dissect", "--backend", "cuda", "--dataset", "synthetic:8", "--quiet", "--out", str(tmp_path)],
          "cuda")


def test_empty_and_unknown_layers_are_refused(tmp_path):
    fails(["dissect", "--layers", "", "--out", str(tmp_path)], "--layers is empty")
    fails(["dissect", "--layers", " , ", "--out", str(tmp_path)], "--layers is empty")
    fails(["dissect", "--layers", "conv4:tokens,prefix=x", "--out", str(tmp_path)], "--layers", "prefix")
    fails(["gan", "--layer", "nope", "--out", str(tmp_path)], "--layer", "nope")
    fails(["dissect", "--normalize", "1,2,3", "--dataset", "synthetic:4", "--out", str(tmp_path)], "--normalize")
    fails(["dissect", "--thresholds", str(tmp_path / "none"), "--out", str(tmp_path)], "--thresholds")


def test_help_explains_every_flag():
    parser = build_parser()
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        text = sub.format_help()
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings} has no help text"
    gan = parser._subparsers._group_actions[0].choices["gan"].format_help()
    assert "ace.html" in gan and "--layers" in parser._subparsers._group_actions[0].choices["dissect"].format_help()


def test_default_output_folder_is_git_ignored(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["dissect", "--dataset", "synthetic:12", "--quiet"]) == 0
    assert (tmp_path / "dissect_results" / ".gitignore").read_text().strip().endswith("*")


def planted_vit_architecture():
    """The planted ViT's architecture with fresh (random) weights: --model for the weights test."""
    from dissect_kernels.models.tiny_vit import TinyViT
    return TinyViT(dim=8, heads=1, register_tokens=2, one_hot_input=6)


def test_timm_format_weights_load_from_a_safetensors_file(broden, tmp_path):
    """The planted ViT's state dict (timm's names) saved as safetensors and loaded with --weights
    into a freshly built model: its planted units are found again."""
    from dissect_kernels.models.tiny_vit import planted_vit
    save_file(planted_vit().state_dict(), str(tmp_path / "vit.safetensors"))
    assert main(["dissect", "--model", "test_cli_inputs:planted_vit_architecture", "--quiet",
                 "--weights", str(tmp_path / "vit.safetensors"), "--layers", "blocks.1:tokens,prefix=3",
                 "--dataset", f"broden:{broden}", "--normalize", IDS,
                 "--quantile", str(DATA.midgap_quantile(16 * 16)), "--out", str(tmp_path / "o")]) == 0
    rows = json.loads((tmp_path / "o" / "summary.json").read_text())["layers"]["blocks.1"]["unit_rows"]
    assert [r["label"] for r in rows[:4]] == ["thing1", "thing2", "thing3", "thing4"]
