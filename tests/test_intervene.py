"""intervene: S unit sets in one pass equal S single-set Trace runs exactly (conv net and
generator-like net, ablate and insert, positions, chunking); classifier_ablation finds a
planted class unit; bad inputs give clear errors."""
import pytest
import torch
from torch import nn

from dissect_kernels.hooks import Edit, Trace
from dissect_kernels.intervene import (AblationResult, classifier_ablation, intervene,
                                       plot_ablation, unit_masks)


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


class Planted(nn.Module):
    """Unit k of `feat` copies input channel k (k < 3, class k's marker); units 3..5 are noise;
    the head reads class k from unit k only."""

    def __init__(self):
        super().__init__()
        self.feat, self.fc = nn.Conv2d(3, 6, 1), nn.Linear(6, 3)
        with torch.no_grad():
            self.feat.weight.zero_(), self.feat.bias.zero_(), self.fc.weight.zero_(), self.fc.bias.zero_()
            for k in range(3):
                self.feat.weight[k, k] = 1.0
                self.fc.weight[k, k] = 1.0
            self.feat.weight[3:] = torch.randn(3, 3, 1, 1) * 0.01
            self.fc.weight[:, 3:] = 0.001

    def forward(self, x):
        return self.fc(torch.relu(self.feat(x)).mean((2, 3)))


def planted_data(n=90, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.rand(n, 3, 4, 4, generator=g) * 0.3
    x[torch.arange(n), y] += 1.0
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, n, 16)], x, y


def manual_metrics(pred, y, c):
    tp = int(((pred == c) & (y == c)).sum())
    fp = int(((pred == c) & (y != c)).sum())
    fn = int(((pred != c) & (y == c)).sum())
    tn = len(y) - tp - fp - fn
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    return prec, rec, (rec + tn / (tn + fp)) / 2


def test_classifier_ablation_finds_the_planted_unit(tmp_path):
    torch.manual_seed(0)
    model = Planted().eval()
    loader, x, y = planted_data()
    r = classifier_ablation(model, "feat", loader, num_classes=3, top_n=(1, 2, 10), progress=False)
    assert isinstance(r, AblationResult) and r.num_samples == 90
    assert torch.equal(r.baseline_recall, torch.ones(3, dtype=torch.float64))
    for k in range(3):
        assert int(r.single_recall[:, k].argmin()) == k  # unit k's ablation hurts class k most
        assert float(r.single_recall[k, k]) < 0.5
        assert int(r.ranking[k, 0]) == k
    # single-unit and top-N numbers against a manual loop
    with torch.no_grad():
        for u in (0, 4):
            with Trace(model, "feat", edit=Edit(torch.eye(6)[u].view(1, 6, 1, 1), 0.0)):
                pred = model(x).argmax(1)
            for c in range(3):
                p, rec, b = manual_metrics(pred, y, c)
                assert r.single_precision[u, c] == pytest.approx(p, abs=1e-12)
                assert r.single_recall[u, c] == pytest.approx(rec, abs=1e-12)
                assert r.single_balanced[u, c] == pytest.approx(b, abs=1e-12)
        for c in range(3):
            keep = torch.ones(6)
            keep[r.ranking[c, :2]] = 0  # all but top 2 ablated -> alpha = 1 - top2
            with Trace(model, "feat", edit=Edit(keep.view(1, 6, 1, 1), 0.0)):
                pred = model(x).argmax(1)
            assert r.allbut_balanced[c, 1] == pytest.approx(manual_metrics(pred, y, c)[2], abs=1e-12)
    assert torch.equal(r.topn_balanced[:, 0], r.single_balanced[torch.arange(3), torch.arange(3)])
    assert torch.equal(r.drop, r.baseline_balanced[None] - r.single_balanced)
    assert torch.equal(r.allbut_balanced[:, 2], r.baseline_balanced)  # N=10 clips to 6: none ablated
    assert torch.all(r.topn_balanced[:, 2] == 0.5)  # all 6 ablated: a constant prediction
    path = plot_ablation(r, tmp_path / "ablation.png")
    from PIL import Image
    assert Image.open(path).size[0] > 100
    # a ranking from one run evaluated on other data skips the single-unit pass
    r2 = classifier_ablation(model, "feat", planted_data(seed=1)[0], num_classes=3, top_n=(1,),
                             ranking=r.ranking, progress=False)
    assert r2.single_recall is None and torch.equal(r2.ranking, r.ranking)


def test_classifier_ablation_bad_inputs():
    model = Planted().eval()
    loader, _, _ = planted_data(20)
    with pytest.raises(ValueError, match="num_classes=2"):
        classifier_ablation(model, "feat", loader, num_classes=2, progress=False)
    with pytest.raises(ValueError, match="top_n"):
        classifier_ablation(model, "feat", loader, num_classes=3, top_n=(0,), progress=False)
    with pytest.raises(ValueError, match="must lie in"):
        classifier_ablation(model, "feat", loader, num_classes=3, units=[9], progress=False)
    with pytest.raises(ValueError, match="ranking must have shape"):
        classifier_ablation(model, "feat", loader, num_classes=3, ranking=torch.zeros(3, 2).long(),
                            progress=False)
    with pytest.raises(LookupError):
        classifier_ablation(model, "fc1", loader, num_classes=3, progress=False)


class PlantedMultiLabel(nn.Module):
    """Multi-label: logit k = 4 * mean(relu(unit k)) - 2 reads marker channel k (k < 3) only;
    units 3..5 are noise with a tiny weight on every logit."""

    def __init__(self):
        super().__init__()
        self.feat, self.fc = nn.Conv2d(3, 6, 1), nn.Linear(6, 3)
        with torch.no_grad():
            self.feat.weight.zero_(), self.feat.bias.zero_(), self.fc.weight.zero_()
            for k in range(3):
                self.feat.weight[k, k] = 1.0
                self.fc.weight[k, k] = 4.0
            self.fc.bias.fill_(-2.0)
            self.feat.weight[3:] = torch.randn(3, 3, 1, 1) * 0.5
            self.fc.weight[:, 3:] = torch.randn(3, 3) * 0.3

    def forward(self, x):
        return self.fc(torch.relu(self.feat(x)).mean((2, 3)))


def multilabel_data(n=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, 3, generator=g) < torch.tensor([0.5, 0.3, 0.6])).long()
    x = torch.rand(n, 3, 4, 4, generator=g) * 0.3
    x = x + y[:, :, None, None] * (0.6 + torch.rand(n, 1, 1, 1, generator=g))  # markers of varying strength
    flip = torch.rand(n, 3, generator=g) < 0.1                      # some label noise: imperfect baseline
    y = torch.where(flip, 1 - y, y)
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, n, 16)], x, y


def manual_binary_metrics(pred, y, c):
    """pred, y [N, C] bool: class c's binary precision, recall, balanced accuracy."""
    p, t = pred[:, c], y[:, c].bool()
    tp, fp = int((p & t).sum()), int((p & ~t).sum())
    fn, tn = int((~p & t).sum()), int((~p & ~t).sum())
    rec = tp / (tp + fn) if tp + fn else 0.0
    tnr = tn / (tn + fp) if tn + fp else 0.0
    return (tp / (tp + fp) if tp + fp else 0.0), rec, (rec + tnr) / 2


def test_classifier_ablation_multilabel_matches_a_manual_loop():
    torch.manual_seed(3)
    model = PlantedMultiLabel().eval()
    loader, x, y = multilabel_data()
    r = classifier_ablation(model, "feat", loader, num_classes=3, top_n=(1, 2, 4), progress=False,
                            multilabel=True, chunk_size=3)
    assert r.num_samples == 100
    with torch.no_grad():
        base = model(x) > 0
        for c in range(3):
            p, rec, b = manual_binary_metrics(base, y, c)
            assert (r.baseline_precision[c], r.baseline_recall[c], r.baseline_balanced[c]) == (
                pytest.approx(p, abs=1e-12), pytest.approx(rec, abs=1e-12), pytest.approx(b, abs=1e-12))
            assert 0.6 < b < 1.0  # a good but imperfect classifier: the metrics are not trivial
        for u in range(6):
            with Trace(model, "feat", edit=Edit(torch.eye(6)[u].view(1, 6, 1, 1), 0.0)):
                pred = model(x) > 0
            for c in range(3):
                p, rec, b = manual_binary_metrics(pred, y, c)
                assert r.single_precision[u, c] == pytest.approx(p, abs=1e-12)
                assert r.single_recall[u, c] == pytest.approx(rec, abs=1e-12)
                assert r.single_balanced[u, c] == pytest.approx(b, abs=1e-12)
        for c in range(3):
            assert int(r.ranking[c, 0]) == c  # the planted unit's ablation hurts its class most
            assert float(r.single_recall[c, c]) == 0.0 and float(r.single_balanced[c, c]) == 0.5
            for t, n in enumerate((1, 2, 4)):
                top = torch.zeros(6)
                top[r.ranking[c, :n]] = 1
                for alpha, got in ((top, r.topn_balanced), (1 - top, r.allbut_balanced)):
                    with Trace(model, "feat", edit=Edit(alpha.view(1, 6, 1, 1), 0.0)):
                        pred = model(x) > 0
                    assert got[c, t] == pytest.approx(manual_binary_metrics(pred, y, c)[2], abs=1e-12)
    # dict batches, the same numbers; bad targets are named
    dicts = [{"image": a, "label": b} for a, b in loader]
    r2 = classifier_ablation(model, "feat", dicts, num_classes=3, top_n=(1, 2, 4), progress=False,
                             multilabel=True)
    assert torch.equal(r2.single_balanced, r.single_balanced) and torch.equal(r2.topn_balanced, r.topn_balanced)
    with pytest.raises(ValueError, match=r"multi-hot \[B, num_classes\] = \[B, 3\]"):
        classifier_ablation(model, "feat", [(x[:4], y[:4, 0])], num_classes=3, multilabel=True, progress=False)
    with pytest.raises(ValueError, match="only 0 and 1"):
        classifier_ablation(model, "feat", [(x[:4], y[:4] * 2)], num_classes=3, multilabel=True, progress=False)
    with pytest.raises(ValueError, match=r"model output must be \[B, num_classes\] = \[B, 4\]"):
        classifier_ablation(model, "feat", [(x[:4], torch.zeros(4, 4))], num_classes=4, multilabel=True,
                            progress=False)


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
    assert dk.classifier_ablation is classifier_ablation and callable(dk.edit_)


@pytest.mark.gpu
def test_batched_equals_loop_on_cuda():
    model, x = conv_net().cuda(), torch.randn(4, 3, 10, 10, device="cuda")
    sets = [[u] for u in range(16)] + [list(range(8))]
    pos = torch.rand(4, 5, 5, device="cuda") > 0.3
    with torch.no_grad():
        got = intervene(model, "2", sets, x, positions=pos, chunk_size=5)
        A = unit_masks(sets, 16, "cuda")
        for s in range(len(sets)):
            with Trace(model, "2", edit=Edit(A[s].view(1, 16, 1, 1) * pos[:, None].float(), 0.0)):
                assert torch.equal(got[s], model(x))
