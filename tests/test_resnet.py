"""The torchvision-free ResNet-18 has torchvision's size (11,689,512 parameters, 1.82 G
multiply-adds at 224²), its module names, and layer4 maps of 512 x 7 x 7."""
import torch

from dissect_kernels.hooks import Trace
from dissect_kernels.models.resnet import conv_flops, resnet18


def test_resnet18_matches_the_published_size():
    model = resnet18().eval()
    assert sum(p.numel() for p in model.parameters()) == 11_689_512
    x = torch.randn(1, 3, 224, 224)
    # 1.814 G multiply-adds (He et al. 2016, Table 1: 1.8e9 FLOPs counted as multiply-adds)
    assert abs(conv_flops(model, x) / 2 - 1.814e9) < 0.01e9


def test_features_is_layer4_and_width_scales():
    model = resnet18(num_classes=10, width=8).eval()
    x = torch.randn(2, 3, 64, 64)
    with Trace(model, "layer4") as tr:
        logits = model(x)
    assert logits.shape == (2, 10)
    assert tr.output.shape == (2, 64, 2, 2)
    assert torch.equal(model.features(x), tr.output)
