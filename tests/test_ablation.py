"""classifier_ablation: a planted class unit is found and ranked first, single-label and
multi-label metrics equal a manual Trace loop, bad inputs give clear errors."""
import pytest
import torch
from torch import nn

from dissect_kernels.ablation import AblationResult, classifier_ablation
from dissect_kernels.report.ablation import plot_ablation
from dissect_kernels.hooks import Edit, Trace


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
