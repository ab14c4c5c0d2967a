"""Segmenter adapters (dissect_kernels.segmenters): a user's torch network (logits, ids,
multi-label scores) and a Hugging Face transformers model from a local folder, each usable by
the GAN drivers in place of the shipped palette segmenter."""
import pytest
import torch
from torch import nn

import dissect_kernels as dk
from dissect_kernels.gan_real import generated_vs_real
from dissect_kernels.models.tiny_gan import CLASS_NAMES, default_segmenter, load_default_generator, palette_tensor
from dissect_kernels.segmenters import Segmenter, TorchSegmenter, check_segmenter, hf_segmenter, masks_to_layers


class PaletteLogits(nn.Module):
    """Logits = -squared distance to each palette colour, computed at half resolution and in the
    order (water, background, tree, door, sun): the adapter must resize, map the input back to
    [-1, 1] and reorder the classes."""

    order = [4, 0, 1, 2, 3]

    def forward(self, x):
        x = x * 2 - 1                                            # the adapter gives [0, 1]
        x = nn.functional.avg_pool2d(x, 2)
        p = palette_tensor()[self.order]
        return -((x[:, None] - p[None, :, :, None, None]) ** 2).sum(2)


def wrapped() -> TorchSegmenter:
    return TorchSegmenter(PaletteLogits(), [CLASS_NAMES[i] for i in PaletteLogits.order], background="background",
                          category_names=["object", "stuff"], category_of=[0, 1, 0, 0, 0])


OURS = ["background", "water", "tree", "door", "sun"]           # background first, then the model's order
TO_OURS = torch.tensor([OURS.index(n) for n in CLASS_NAMES])    # shipped id -> adapter id


def test_the_shipped_segmenter_and_the_adapters_meet_the_protocol():
    for seg in (default_segmenter(), wrapped()):
        assert isinstance(seg, Segmenter)
        check_segmenter(seg)
    with pytest.raises(TypeError, match="TorchSegmenter"):
        check_segmenter(PaletteLogits())                         # a bare network has no num_classes


def test_torch_adapter_reorders_classes_and_resizes_logits():
    g = load_default_generator()
    images = g(dk.generated.sample_z(torch.arange(6), 48))
    seg = wrapped()
    assert seg.concept_names == OURS                             # background moved to id 0
    ids = seg(images)
    assert ids.shape == (6, 64, 64)
    truth = TO_OURS[default_segmenter()(images)[:, 0]]
    assert (ids == truth).float().mean() > 0.97                  # all but some edges of the half-size logits


def test_background_none_and_auto_and_errors():
    seg = TorchSegmenter(lambda x: x[:, :2], ["sky", "tree"], background=None)
    assert seg.concept_names == ["background", "sky", "tree"] and seg.num_classes == 3
    x = torch.zeros(1, 3, 4, 4)
    x[:, 1, :, :2] = 1
    out = seg(x)
    assert out[0, 0, 0] == 2 and out[0, 0, 3] == 1               # class ids shifted by one
    assert TorchSegmenter(lambda x: x[:, :2], ["Background", "a"]).concept_names == ["Background", "a"]
    with pytest.raises(ValueError, match="background"):
        TorchSegmenter(lambda x: x, ["a"], background="cloud")
    with pytest.raises(ValueError, match="expected"):
        TorchSegmenter(lambda x: x, ["a", "b"], background=None)(torch.zeros(1, 3, 4, 4))


def test_ids_and_multilabel_outputs():
    ids = TorchSegmenter(lambda x: (x[:, 0] > 0.5).long(), ["bg", "thing"], output="ids", background=0)
    x = torch.zeros(1, 3, 2, 2)
    x[0, 0, 0, 0] = 1
    assert ids(x).tolist() == [[[1, 0], [0, 0]]]
    # multi-label: channel scores -> every class above the threshold, as label layers
    ml = TorchSegmenter(lambda x: x * 20 - 10, ["a", "b", "c"], output="multilabel", background=None)
    x = torch.zeros(1, 3, 1, 2)
    x[0, :, 0, 0] = torch.tensor([1.0, 1.0, 0.0])               # a and b at pixel 0 (after [-1,1] -> [0,1])
    x = x * 2 - 1
    layers = ml(x)
    assert layers.shape == (1, 2, 1, 2)
    assert sorted(layers[0, :, 0, 0].tolist()) == [1, 2] and layers[0, :, 0, 1].tolist() == [0, 0]
    assert masks_to_layers(torch.zeros(2, 4, 3, 3, dtype=torch.bool)).shape == (2, 1, 3, 3)


def test_gan_drivers_take_an_adapter():
    g = load_default_generator()
    a = generated_vs_real(g, wrapped(), g(dk.generated.sample_z(torch.arange(100, 108), 48)), num_samples=8)
    b = generated_vs_real(g, default_segmenter(), g(dk.generated.sample_z(torch.arange(100, 108), 48)), num_samples=8)
    ra, rb = a.fractions("generated")[0], b.fractions("generated")[0]
    assert torch.allclose(ra[TO_OURS], rb, atol=0.03)
    r = dk.ace(g, "layer3", [7, 16, 18], wrapped(), "sun", num_samples=4)
    assert r.ace > 0.05


def tiny_segformer(folder):
    """A randomly initialised 3-class SegFormer saved with its image processor (32x32 input)."""
    transformers = pytest.importorskip("transformers", reason="the optional hf extra (transformers) is not installed")
    cfg = transformers.SegformerConfig(num_encoder_blocks=1, depths=[1], sr_ratios=[1], hidden_sizes=[8],
                                       num_attention_heads=[1], patch_sizes=[3], strides=[2], mlp_ratios=[2],
                                       decoder_hidden_size=8, num_labels=3,
                                       id2label={0: "wall", 1: "background", 2: "door"},
                                       label2id={"wall": 0, "background": 1, "door": 2})
    torch.manual_seed(0)
    model = transformers.SegformerForSemanticSegmentation(cfg).eval()
    model.save_pretrained(folder)
    transformers.SegformerImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return model


def test_hf_adapter_loads_a_local_segformer(tmp_path):
    model = tiny_segformer(tmp_path)
    seg = hf_segmenter(tmp_path)
    assert seg.concept_names == ["background", "wall", "door"] and seg.num_classes == 3
    images = torch.rand(2, 3, 48, 48) * 2 - 1
    ids = seg(images)
    assert ids.shape == (2, 48, 48) and int(ids.max()) < 3
    x = nn.functional.interpolate((images + 1) / 2, size=(32, 32), mode="bilinear", align_corners=False)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    with torch.no_grad():
        logits = model(pixel_values=(x - mean[:, None, None]) / std[:, None, None]).logits
    logits = nn.functional.interpolate(logits, size=(48, 48), mode="bilinear", align_corners=False)
    assert torch.equal(ids, torch.tensor([1, 0, 2])[logits.argmax(1)])
    with pytest.raises(ValueError, match="not a local transformers"):
        hf_segmenter(tmp_path / "missing")


def test_a_multilabel_adapter_feeds_the_drivers():
    """Scores > 0 exactly at each pixel's palette colour: the label layers carry the same class
    pixels as the palette segmenter, through generated_vs_real and insertion_context."""
    def scores(x):
        d = ((x[:, None] * 2 - 1 - palette_tensor()[None, :, :, None, None]) ** 2).sum(2)
        return 50 * (0.05 - d)
    ml = TorchSegmenter(scores, CLASS_NAMES, output="multilabel", background="background")
    g = load_default_generator()
    real = g(dk.generated.sample_z(torch.arange(50, 56), 48))
    a = generated_vs_real(g, ml, real, num_samples=6)
    b = generated_vs_real(g, default_segmenter(), real, num_samples=6)
    assert torch.equal(a.generated["pixels"][1:], b.generated["pixels"][1:])
    assert torch.equal(a.real["images"], b.real["images"])
    ca = dk.insertion_context(g, "layer3", [7, 16, 18], ml, "sun", num_samples=2, grid=4, value=1.0)
    cb = dk.insertion_context(g, "layer3", [7, 16, 18], default_segmenter(), "sun", num_samples=2, grid=4, value=1.0)
    assert torch.equal(ca.counts["appeared"], cb.counts["appeared"])


def test_cli_takes_a_hf_segmenter_folder(tmp_path):
    from dissect_kernels.cli import main
    tiny_segformer(tmp_path / "seg")
    assert main(["gan", "real", "--segmenter", f"hf:{tmp_path / 'seg'}", "--num-samples", "4",
                 "--out", str(tmp_path / "out"), "--quiet"]) == 0
    import json
    classes = json.loads((tmp_path / "out/generated_vs_real.json").read_text())["classes"]
    assert [c["class"] for c in classes] == ["background", "wall", "door"]
    with pytest.raises(SystemExit, match="hf:"):
        main(["gan", "real", "--segmenter", f"hf:{tmp_path / 'nothing'}", "--out", str(tmp_path / "o2")])
