"""intervene: S unit sets in one pass equal S single-set Trace runs exactly (conv net and
generator-like net, ablate and insert, positions, chunking); bad inputs give clear errors."""
import pytest
import torch
from torch import nn

from dissect_kernels.hooks import Edit, Trace
from dissect_kernels.intervene import intervene, unit_masks


def conv_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 12, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(12, 5)).eval()


def gen_net():
    torch.manual_seed(1)
    return nn.Sequential(nn.Unflatten(1, (16, 1, 1)), nn.ConvTranspose2d(16, 24, 4), nn.ReLU(),
                         nn.ConvTranspose2d(24, 12, 4, stride=2, padding=1), nn.BatchNorm2d(12),
                         nn.ReLU(), nn.Conv2d(12, 3, 3, padding=1), nn.Tanh()).eval()


MODELS = {"conv": (conv_net, "2", lambda: torch.randn(4, 3, 10, 10)),
          "gen": (gen_net, "3", lambda: torch.randn(3, 16))}


def loop(model, layer, sets, x, U, values, positions, measure=lambda o: o):
    """The reference: one Trace(edit=Edit(alpha_s, value)) forward pass per unit set."""
    A = unit_masks(sets, U)
    out = []
    for s in range(A.shape[0]):
        a = A[s].view(1, U, 1, 1)
        if positions is not None:
            p = positions[s] if positions.dim() == 4 else positions
            a = a * p[:, None].float()
        with Trace(model, layer, edit=Edit(a, 0.0 if values is None else values)):
            out.append(measure(model(x)))
    return torch.stack(out)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("mode", ["ablate", "insert"])
@pytest.mark.parametrize("where", ["everywhere", "shared-positions", "per-set-positions"])
def test_batched_equals_loop_exactly(name, mode, where):
    make, layer, inputs = MODELS[name]
    model, x = make(), inputs()
    with torch.no_grad():
        h = model[: int(layer) + 1](x)
    U, spatial = h.shape[1], h.shape[2:]
    g = torch.Generator().manual_seed(7)
    sets = [[0], [1, 3], [], list(range(U)), torch.tensor([U - 1, 2])] + [[u] for u in range(U)]
    positions = {"everywhere": None,
                 "shared-positions": torch.rand(x.shape[0], *spatial, generator=g) > 0.5,
                 "per-set-positions": torch.rand(len(sets), x.shape[0], *spatial, generator=g)}[where]
    values = None if mode == "ablate" else torch.rand(U, generator=g) * 4
    with torch.no_grad():
        want = loop(model, layer, sets, x, U, values, positions)
        for chunk in (None, 4):
            got = intervene(model, layer, sets, x, mode=mode, values=values, positions=positions,
                            chunk_size=chunk)
            assert got.shape == (len(sets),) + tuple(want.shape[1:])
            assert got.dtype == want.dtype and torch.equal(got, want)
    assert not want[0].eq(want[3]).all()  # the sets really change the output


def test_unit_set_formats_and_soft_alpha_and_measure():
    model, x = conv_net(), torch.randn(2, 3, 10, 10)
    U = 16
    measure = lambda o: o.softmax(1)[:, 2]  # noqa: E731
    with torch.no_grad():
        a = intervene(model, "2", torch.tensor([3, 5, 7]), x, measure=measure)
        b = intervene(model, "2", [[3], [5], [7]], x, measure=measure)
        mask = torch.zeros(3, U)
        mask[[0, 1, 2], [3, 5, 7]] = 1
        c = intervene(model, "2", mask.bool(), x, measure=measure, chunk_size=2)
        assert a.shape == (3, 2) and torch.equal(a, b) and torch.equal(a, c)
        soft = torch.rand(4, U)
        got = intervene(model, "2", soft, x, mode="insert", values=1.5)
        want = [model_edit(model, x, soft[s].view(1, U, 1, 1), 1.5) for s in range(4)]
        assert torch.equal(got, torch.stack(want))
        per_sample = torch.randn(2, U, 1, 1)  # insertion values that differ per sample
        got = intervene(model, "2", [[1, 2], [4]], x, mode="insert", values=per_sample, chunk_size=1)
        want = [model_edit(model, x, m.view(1, U, 1, 1), per_sample) for m in unit_masks([[1, 2], [4]], U)]
        assert torch.equal(got, torch.stack(want))
        with pytest.raises(ValueError, match="batch size 1 or 2"):
            intervene(model, "2", [[1]], x, mode="insert", values=torch.randn(3, U, 1, 1))
        with pytest.raises(TypeError, match="unit_sets must be"):
            intervene(model, "2", (u for u in range(3)), x)


def model_edit(model, x, alpha, value):
    with Trace(model, "2", edit=Edit(alpha, value)):
        return model(x)


def test_gradients_through_a_soft_unit_mask_match_the_loop():
    model, x = gen_net(), torch.randn(2, 16)
    alpha = torch.rand(3, 12, requires_grad=True)
    intervene(model, "3", alpha, x, mode="insert", values=2.0,
              measure=lambda o: o.mean((1, 2, 3))).sum().backward()
    alpha2 = alpha.detach().clone().requires_grad_(True)
    total = 0
    for s in range(3):
        with Trace(model, "3", edit=Edit(alpha2[s].view(1, 12, 1, 1), 2.0)):
            total = total + model(x).mean((1, 2, 3)).sum()
    total.backward()
    torch.testing.assert_close(alpha.grad, alpha2.grad)


class Skip(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 2, 1)

    def forward(self, x):
        h = self.a(x)
        return self.head(h + self.b(h))


def test_skip_connections_need_replicate_input():
    torch.manual_seed(0)
    model, x = Skip().eval(), torch.randn(3, 3, 5, 5)
    sets = [[0], [2, 4], [5]]
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="replicate='input'"):
            intervene(model, "b", sets, x)
        got = intervene(model, "b", sets, x, replicate="input", chunk_size=2)
        assert torch.equal(got, loop(model, "b", sets, x, 6, None, None))


def test_bad_inputs():
    model, x = conv_net(), torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"ids in \[0, 16\].*16 units"):
            intervene(model, "2", [[0], [16]], x)
        with pytest.raises(ValueError, match="must lie in"):
            intervene(model, "2", torch.tensor([-1]), x)
        with pytest.raises(LookupError, match="'conv2' is not a submodule"):
            intervene(model, "conv2", [[0]], x)
        with pytest.raises(ValueError, match=r"positions must have shape \[B, \*spatial\] = \[2, 5, 5\]"):
            intervene(model, "2", [[0]], x, positions=torch.ones(2, 4, 4))
        with pytest.raises(ValueError, match="positions must have shape"):
            intervene(model, "2", [[0], [1]], x, positions=torch.ones(3, 2, 5, 5))
        with pytest.raises(ValueError, match="positions must have shape"):
            intervene(model, "8", [[0]], x, positions=torch.ones(2))  # [B, 5] output, no spatial dims
        with pytest.raises(ValueError, match="needs values"):
            intervene(model, "2", [[0]], x, mode="insert")
        with pytest.raises(ValueError, match="mode must be"):
            intervene(model, "2", [[0]], x, mode="zero")
        with pytest.raises(ValueError, match="chunk_size"):
            intervene(model, "2", [[0]], x, chunk_size=0)
        with pytest.raises(ValueError, match="one row per sample"):
            intervene(model, "2", [[0]], x, measure=lambda o: o.sum())
        with pytest.raises(ValueError, match=r"shape \[S, 16\]"):
            intervene(model, "2", torch.ones(2, 15).bool(), x)
        shared = nn.Sequential(nn.Linear(4, 4))
        twice = nn.Sequential()
        twice.forward = lambda z: shared(shared(z))
        twice.add_module("s", shared)
        with pytest.raises(RuntimeError, match="more than once"):
            intervene(twice, "s", [[0]], torch.randn(2, 4))


def test_keyword_called_layer_and_top_level_exports():
    import dissect_kernels as dk
    from test_hooks import KwNet
    torch.manual_seed(0)
    model, x = KwNet().eval(), torch.randn(2, 3, 4, 4)
    sets = [[0], [1, 2], [3]]
    with torch.no_grad():
        got = dk.intervene(model, "scale", sets, x, mode="insert", values=torch.tensor([1.0, 2, 3, 4]))
        want = []
        for s in unit_masks(sets, 4):
            with dk.Trace(model, "scale", edit=dk.Edit(s, torch.tensor([1.0, 2, 3, 4]))):
                want.append(model(x))
    assert torch.equal(got, torch.stack(want))
    assert dk.intervene is intervene and callable(dk.edit_) and callable(dk.classifier_ablation)


@pytest.mark.gpu
def test_batched_equals_loop_on_cuda():
    """On CUDA the layers after the edit run at batch c*B instead of B, and cuDNN may pick
    another algorithm for another batch size (other rounding): equal to float32 tolerance, not
    bit for bit (the CPU tests check bit equality)."""
    model, x = conv_net().cuda(), torch.randn(4, 3, 10, 10, device="cuda")
    sets = [[u] for u in range(16)] + [list(range(8))]
    pos = torch.rand(4, 5, 5, device="cuda") > 0.3
    with torch.no_grad():
        got = intervene(model, "2", sets, x, positions=pos, chunk_size=5)
        A = unit_masks(sets, 16, "cuda")
        for s in range(len(sets)):
            with Trace(model, "2", edit=Edit(A[s].view(1, 16, 1, 1) * pos[:, None].float(), 0.0)):
                torch.testing.assert_close(got[s], model(x), rtol=1e-5, atol=1e-6)
