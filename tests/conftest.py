"""Test set-up: tests marked `gpu` skip cleanly without CUDA. Triton kernels need no set-up:
on CPU tensors dissect_kernels.triton.launch runs them through Triton's interpreter whatever
TRITON_INTERPRET says, so the CPU-tensor Triton tests pass on a GPU machine too (where CUDA
tensors compile for real)."""
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


POISON_INT = -7777777


def poison_like(t: torch.Tensor) -> torch.Tensor:
    """Fill an output buffer with garbage a correct kernel must overwrite."""
    if t.dtype.is_floating_point:
        return t.fill_(float("nan"))
    if t.dtype == torch.uint8:
        return t.fill_(0xAB)
    return t.fill_(POISON_INT)


@pytest.fixture(scope="module")
def one_thread():
    """Run a module single-threaded: tiny ops only wait for each other on a shared 2-core box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def gan():
    """The embedded tiny generator, its exact segmenter and its planted-unit record."""
    from dissect_kernels.models.tiny_gan import default_segmenter, load_default_generator, tiny_gan_info
    return load_default_generator(), default_segmenter(), tiny_gan_info()
