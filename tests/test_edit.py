"""dk.edit (x <- x*(1-alpha) + value*alpha): every backend equals the oracle bit for bit on
random broadcast shapes and dtypes; the oracle equals the formula; bad inputs are named."""
import itertools

import pytest
import torch

from conftest import poison_like
from dissect_kernels.ops.edit import _prepare, edit, edit_
from dissect_kernels.reference.edit import edit as oracle

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BACKENDS = ("cpu", "triton")


def _alpha_shapes(S, U, H, W):
    return [(), (U,), (S, U, 1, 1), (S, 1, H, W), (S, U, H, W), (1, U, 1, W), (H, 1), (1, 1, 1, 1)]


def _value_shapes(S, U, H, W):
    return [(), (U,), (1, U, 1, 1), (S, 1, H, W), (S, U, H, W)]


def _case(seed):
    g = torch.Generator().manual_seed(seed)
    S, U, H, W = (int(v) for v in torch.randint(1, 6, (4,), generator=g))
    U += 1  # keep U != 1 so a [U] vector is unambiguous
    a_shape = _alpha_shapes(S, U, H, W)[seed % 8]
    v_shape = _value_shapes(S, U, H, W)[(seed // 8) % 5]
    x = torch.randn(S, U, H, W, generator=g) * 3
    alpha = torch.rand(a_shape, generator=g)
    alpha[alpha < 0.2] = 0.0
    alpha[alpha > 0.8] = 1.0
    value = torch.randn(v_shape, generator=g) * 2
    return x, alpha, value


def _bits(t):
    return t.view(torch.int16) if t.element_size() == 2 else t.view(torch.int32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_backends_match_oracle_bitwise(backend, dtype):
    for seed in range(40):
        x, alpha, value = _case(seed)
        x = x.to(dtype)
        want = oracle(*_prepare(x, alpha, value))
        got = edit(x, alpha, value, backend=backend)
        assert got.dtype == dtype and got.shape == x.shape
        assert torch.equal(_bits(got), _bits(want)), (seed, alpha.shape, value.shape)


@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_writes_every_element_of_a_poisoned_output(dtype):
    from dissect_kernels.ops.edit import _as4d
    from dissect_kernels.triton.edit import edit_into
    for seed in (3, 17, 29):
        x, alpha, value = _case(seed)
        x, a, v = _prepare(x.to(dtype), alpha, value)
        out = poison_like(torch.empty_like(x))
        edit_into(_as4d(x, x.shape), _as4d(a, x.shape), _as4d(v, x.shape), out)
        assert torch.equal(_bits(out), _bits(oracle(x, a, v)))


def test_oracle_is_the_formula():
    x, alpha, value = _case(5)
    a = alpha.double()
    want = x.double() * (1 - a) + value.double() * a
    torch.testing.assert_close(oracle(*_prepare(x, alpha, value)).double(), want, rtol=1e-6, atol=1e-5)
    assert torch.equal(edit(x, 1.0, 0.0), torch.zeros_like(x))  # ablation
    assert torch.equal(edit(x, 1.0, 2.5), torch.full_like(x, 2.5))  # insertion
    assert torch.equal(edit(x, 0.0, 7.0), x)  # alpha 0 keeps x


def test_per_unit_vector_means_dim_1():
    x = torch.randn(2, 3, 4, 5)
    alpha = torch.tensor([0.0, 1.0, 0.5])
    value = torch.tensor([9.0, 8.0, 7.0])
    got = edit(x, alpha, value)
    want = x * (1 - alpha.view(1, 3, 1, 1)) + value.view(1, 3, 1, 1) * alpha.view(1, 3, 1, 1)
    assert torch.equal(got, want)
    assert torch.equal(got[:, 1], torch.full((2, 4, 5), 8.0))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["transposed", "sliced", "channels_last", "2d", "5d", "expanded"])
def test_strided_and_other_ranks(backend, layout):
    g = torch.Generator().manual_seed(1)
    base = torch.randn(4, 6, 5, 7, generator=g)
    x = {"transposed": base.transpose(2, 3), "sliced": base[:, 1::2, :, 2:],
         "channels_last": base.to(memory_format=torch.channels_last), "2d": base[:, :, 0, 0],
         "5d": base.reshape(2, 2, 6, 5, 7), "expanded": base[:1].expand(4, 6, 5, 7)}[layout]
    alpha = torch.rand(x.shape[1])
    value = torch.randn(x.shape[:1] + (1,) * (x.dim() - 1))
    want = oracle(*_prepare(x, alpha, value))
    assert torch.equal(edit(x, alpha, value, backend=backend), want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_in_place_equals_out_of_place(backend, dtype):
    for seed in (1, 2, 11):
        x, alpha, value = _case(seed)
        x = x.to(dtype)
        want = edit(x, alpha, value, backend="reference")
        y = x.clone()
        assert edit_(y, alpha, value, backend=backend) is y
        assert torch.equal(_bits(y), _bits(want))
        z = x.clone().transpose(2, 3)  # non-contiguous in-place goes through copy_
        edit_(z, alpha.transpose(-1, -2) if alpha.dim() >= 2 else alpha,
              value.transpose(-1, -2) if value.dim() >= 2 else value, backend=backend)
        assert torch.equal(_bits(z.transpose(2, 3)), _bits(want))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's numpy warns on inf*0
def test_special_values_follow_the_oracle():
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 3e38, -0.0, 1.0]).view(1, 6, 1, 1)
    for a, v in itertools.product((0.0, 0.5, 1.0), (0.0, 2.0, float("inf"))):
        want = oracle(*_prepare(x, a, v))
        for backend in BACKENDS:
            torch.testing.assert_close(edit(x, a, v, backend=backend), want, rtol=0, atol=0, equal_nan=True)


def test_gradients_flow_to_alpha_and_value():
    x = torch.randn(2, 3, 4, 4)
    alpha = torch.rand(2, 3, 1, 1, requires_grad=True)
    value = torch.randn(3, requires_grad=True)
    edit(x, alpha, value, backend="cpu").pow(2).sum().backward()
    a, v = alpha.detach(), value.detach().view(1, 3, 1, 1)
    y = x * (1 - a) + v * a
    torch.testing.assert_close(alpha.grad, (2 * y * (v - x)).sum((2, 3), keepdim=True))
    torch.testing.assert_close(value.grad, (2 * y * a).sum((0, 2, 3)))


def test_bad_inputs_are_named():
    x = torch.randn(2, 3, 4, 5)
    with pytest.raises(ValueError, match="alpha of shape \\(2, 4\\)"):
        edit(x, torch.rand(2, 4), 0.0)
    with pytest.raises(ValueError, match="value of shape \\(7,\\)"):
        edit(x, 1.0, torch.rand(7))
    with pytest.raises(TypeError, match="x must have dtype"):
        edit(x.long(), 1.0, 0.0)
    with pytest.raises(TypeError, match="alpha must be a number or a torch.Tensor"):
        edit(x, "1", 0.0)
    with pytest.raises(ValueError, match="backend must be one of"):
        edit(x, 1.0, 0.0, backend="gpu")
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        edit([1.0], 1.0, 0.0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_on_cuda_matches_oracle(dtype):
    for seed in range(40):
        x, alpha, value = _case(seed)
        x, alpha, value = x.to(dtype).cuda(), alpha.cuda(), value.cuda()
        want = oracle(*_prepare(x, alpha, value))
        got = edit(x, alpha, value)  # auto -> triton on CUDA
        assert torch.equal(_bits(got), _bits(want)), seed
        y = x.clone()
        edit_(y, alpha, value)
        assert torch.equal(_bits(y), _bits(want)), seed
