"""Generated-vs-real statistics (dissect_kernels.gan_real) on the shipped tiny generator and its
shipped real images, whose distribution draws water more often (scripts/build_tiny_gan_real.py):
water is the planted under-produced class."""
import pytest
import torch

from dissect_kernels.data.image_folder import ImageFolder
from dissect_kernels.gan_real import generated_vs_real
from dissect_kernels.generated import sample_z
from dissect_kernels.models.tiny_gan import default_segmenter, load_default_generator
from dissect_kernels.models.tiny_gan_data import REAL_COUNT, REAL_IMAGES, real_z


@pytest.fixture(scope="module")
def gen():
    return load_default_generator()


def test_shipped_real_images_show_water_under_produced(gen):
    r = generated_vs_real(gen, default_segmenter(), REAL_IMAGES, num_samples=64)
    assert r.concept_names[r.under_produced()[0]] == "water" and len(r.under_produced()) == 1
    js = r.to_json()
    assert js["under_produced"] == ["water"] and js["num_real"] == REAL_COUNT and js["num_generated"] == 64
    water = js["classes"][4]
    assert water["class"] == "water" and water["pixel_ratio"] < 0.5
    assert sum(c["real_pixel_fraction"] for c in js["classes"]) == pytest.approx(1.0)


def test_shipped_real_images_are_the_real_distributions_rendering(gen):
    """The PNGs hold exactly what scripts/build_tiny_gan_real.py renders (lossless palette)."""
    with torch.no_grad():
        want = gen(real_z(torch.arange(3)))
    got = ImageFolder(REAL_IMAGES, (64, 64)).batch(torch.arange(3))
    assert torch.allclose(got, want, atol=1 / 127)


def test_identical_images_show_no_gap(gen):
    with torch.no_grad():
        same = gen(sample_z(torch.arange(16), 48))
    r = generated_vs_real(gen, default_segmenter(), same, num_samples=16, batch_size=5)
    assert r.under_produced() == [] and r.over_produced() == []
    assert torch.equal(r.generated["pixels"], r.real["pixels"])


def test_bad_real_inputs(gen, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        generated_vs_real(gen, default_segmenter(), tmp_path / "none", num_samples=2)
    with pytest.raises(ValueError, match="holds no"):
        generated_vs_real(gen, default_segmenter(), tmp_path, num_samples=2)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="not a readable image"):
        generated_vs_real(gen, default_segmenter(), tmp_path, num_samples=2)
    with pytest.raises(ValueError, match="factor"):
        generated_vs_real(gen, default_segmenter(), REAL_IMAGES, num_samples=2, factor=1)
