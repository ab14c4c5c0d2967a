"""hooks: Trace/TraceDict retain the right tensors, edits follow the rule, stop ends the pass
early (later layers never run), hooks vanish after errors, keyword-called modules work."""
import pytest
import torch
from torch import nn

from dissect_kernels.hooks import Edit, StopForward, Trace, TraceDict, get_module, run_layers


class Counter(nn.Module):
    """Identity that counts its calls."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x


class Scale(nn.Module):
    def forward(self, x, *, scale=1.0):
        return x * scale


class KwNet(nn.Module):
    """Calls its submodules with keyword arguments only."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.scale = Scale()
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        h = self.conv(input=x)
        h = self.scale(x=h, scale=2.0)
        return self.head(input=h)


def make_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(),
                         nn.Sequential(nn.Conv2d(5, 6, 3, padding=1), Counter()),
                         nn.ReLU(), Counter(), nn.Flatten(), nn.Linear(6 * 4 * 4, 3)).eval()


def no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_retains_output_and_input_like_a_manual_forward():
    net, x = make_net(), torch.randn(2, 3, 4, 4)
    with torch.no_grad(), Trace(net, "2.0", retain_input=True) as t:
        y = net(x)
    h0 = net[1](net[0](x))
    with torch.no_grad():
        assert torch.equal(t.input, h0)
        assert torch.equal(t.output, net[2][0](h0))
        assert torch.equal(y, net(x))
    assert t.calls == 1 and no_hooks(net)


def test_edit_applies_the_rule_and_retains_the_pre_edit_value():
    net, x = make_net(), torch.randn(2, 3, 4, 4)
    alpha = torch.zeros(1, 6, 4, 4)
    alpha[:, [1, 4], 1:3, :] = 1.0
    alpha[:, 2] = 0.25
    value = torch.arange(6.0) + 1
    with torch.no_grad():
        with Trace(net, "2.0", edit=Edit(alpha, value)) as t:
            y = net(x)
        h = net[2][0](net[1](net[0](x)))
        edited = h * (1 - alpha) + value.view(1, 6, 1, 1) * alpha
        want = net[6](net[5](net[4](net[3](edited))))
    assert torch.equal(t.output, h)  # pre-edit
    assert torch.equal(y, want)
    with torch.no_grad(), Trace(net, "2.0", edit=lambda o: o * 0 + 1.5, retain_output=False) as t:
        y2 = net(x)
        want2 = net[6](net[5](net[4](net[3](torch.full_like(h, 1.5)))))
    assert t.output is None and torch.equal(y2, want2)
    assert no_hooks(net)


def test_clone_protects_against_later_in_place_ops():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(inplace=True)).eval()
    x = torch.randn(1, 3, 5, 5)
    with torch.no_grad():
        raw = net[0](x)
        with Trace(net, "0", clone=True) as cloned, Trace(net, "0") as shared:
            net(x)
    assert torch.equal(cloned.output, raw) and bool((raw < 0).any())
    assert torch.equal(shared.output, raw.clamp(min=0))  # detach only: shares the storage


def test_stop_ends_the_pass_and_later_layers_never_run():
    net, x = make_net(), torch.randn(2, 3, 4, 4)
    after = []
    with Trace(net, "2", stop=True) as t:
        net(x)
        after.append(1)  # not reached
    assert after == [] and t.output.shape == (2, 6, 4, 4)
    assert net[2][1].calls == 1 and net[4].calls == 0
    assert no_hooks(net)


def test_tracedict_stops_after_the_last_listed_layer_to_run_in_any_order():
    net, x = make_net(), torch.randn(2, 3, 4, 4)
    with TraceDict(net, ["3", "0", "2.1"], stop=True) as td:
        net(x)
    assert list(td) == ["3", "0", "2.1"]
    assert net[4].calls == 0 and net[2][1].calls == 1
    with torch.no_grad():
        h0 = net[0](x)
        assert torch.equal(td["0"].output, h0)
        assert torch.equal(td["3"].output, net[3](net[2](net[1](h0))))
    assert no_hooks(net)
    with TraceDict(net, ["0", "4"]) as td:  # no stop: runs to the end
        net(x)
    assert net[4].calls == 1 and td["4"].calls == 1


def test_tracedict_edits():
    net, x = make_net(), torch.randn(2, 3, 4, 4)
    with torch.no_grad(), TraceDict(net, ["0", "3"], edits={"3": Edit(1.0, 0.0)}) as td:
        y = net(x)
    with torch.no_grad():
        assert torch.equal(y, net[6].bias.expand(2, 3))
    assert td["3"].output.abs().sum() > 0  # retained pre-edit
    with pytest.raises(ValueError, match="not in layers"):
        TraceDict(net, ["0"], edits={"3": Edit(1.0, 0.0)})
    assert no_hooks(net)


def test_hooks_are_removed_after_exceptions():
    net, x = make_net(), torch.randn(2, 3, 4, 4)
    with pytest.raises(ZeroDivisionError):
        with Trace(net, "0"), TraceDict(net, ["2.0", "3"], stop=True):
            1 / 0
    assert no_hooks(net)
    bad = Edit(torch.ones(7), 0.0)  # 7 units do not broadcast to 5
    with pytest.raises(ValueError, match="alpha of shape"):
        with Trace(net, "0", edit=bad):
            net(x)
    assert no_hooks(net)
    with pytest.raises(LookupError):  # a later bad name: the earlier hooks are removed too
        TraceDict(net, ["0", "2.0", "nope"])
    assert no_hooks(net)
    with pytest.raises(StopForward):  # only the Trace that asked for a stop swallows it
        with Trace(net, "0"):
            with Trace(net, "3", stop=False), Trace(net, "0", stop=True):
                pass
            raise StopForward("x")
    assert no_hooks(net)


def test_keyword_called_modules():
    torch.manual_seed(0)
    net, x = KwNet().eval(), torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        h = net.conv(x)
        with Trace(net, "scale", retain_input=True, edit=Edit(torch.tensor([1.0, 0, 0, 1]), -1.0)) as t:
            y = net(x)
        edited = (2 * h).clone()
        edited[:, [0, 3]] = -1.0
        assert torch.equal(t.input, h)
        assert torch.equal(t.output, 2 * h)
        assert torch.equal(y, net.head(edited))
    assert run_layers(net, x, "scale")["scale"].shape == (2, 4, 4, 4)


def test_run_layers_returns_outputs_and_stops_early():
    net, x = make_net(), torch.randn(2, 3, 4, 4)
    out = run_layers(net, x, ["1", "2.0"])
    with torch.no_grad():
        assert torch.equal(out["1"], net[1](net[0](x)))
    assert net[4].calls == 0 and net[2][1].calls == 0
    assert not out["2.0"].requires_grad
    with pytest.raises(RuntimeError, match="did not run"):
        run_layers(_WithUnused(), x, ["used", "unused"])


class _WithUnused(nn.Module):
    def __init__(self):
        super().__init__()
        self.used, self.unused = nn.Identity(), nn.Identity()

    def forward(self, x):
        return self.used(x)


def test_get_module_names_close_matches():
    net = make_net()
    assert get_module(net, "2.0") is net[2][0]
    assert get_module(net, net[3]) is net[3]
    with pytest.raises(LookupError, match="did you mean .*'2.0'"):
        get_module(net, "2.O")
    with pytest.raises(LookupError, match="did you mean 'scale'"):
        get_module(KwNet(), "scael")
    with pytest.raises(TypeError, match="layer must be"):
        get_module(net, 3)


def test_edit_on_tuple_output_is_a_clear_error():
    lstm = nn.LSTM(3, 4, batch_first=True)
    model = nn.Sequential(lstm)
    with pytest.raises(TypeError, match="needs a tensor output"):
        with Trace(model, "0", edit=Edit(1.0, 0.0)):
            model(torch.randn(2, 5, 3))
    with Trace(model, "0") as t:  # retaining a tuple works
        model(torch.randn(2, 5, 3))
    assert isinstance(t.output, tuple) and not t.output[0].requires_grad
