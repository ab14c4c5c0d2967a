"""GAN driver memory vs num_samples: with quantile_mode="sketch" the driver's whole accumulator
state (every tensor it checkpoints) is the same size for N and 4N samples; exact quantiles grow."""
import re

import pytest
import torch

from dissect_kernels import distributed as ddp
from dissect_kernels import generator as gen
from dissect_kernels.engine import IndexSource, Pass, run_passes
from dissect_kernels.engine.checkpoint import Checkpointer
from dissect_kernels.models.tiny_gan import default_segmenter, load_default_generator


def _state_bytes(monkeypatch, tmp_path, n, mode):
    """Largest checkpointed state (bytes of every tensor) per pass index over a run of n samples
    (index 3: after the last pass); checkpoint_interval=0 makes the engine hand the state over
    after every batch."""
    peak: dict[int, int] = {}

    def record(self, progress, tensors):
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        peak[progress["pass"]] = max(peak.get(progress["pass"], 0), size)

    monkeypatch.setattr(Checkpointer, "save", record)   # measure, don't write
    g, seg = load_default_generator(), default_segmenter()
    gen.dissect_generator(g, "layer3", seg, num_samples=n, batch_size=4, progress=False,
                          out_dir=tmp_path / f"{mode}-{n}", checkpoint_interval=0.0,
                          quantile_mode=mode, top_k=3)
    return peak


def test_sketch_state_is_flat_while_exact_grows(monkeypatch, tmp_path):
    n1 = 4
    sketch = [_state_bytes(monkeypatch, tmp_path, n, "sketch") for n in (n1, 4 * n1)]
    exact = [_state_bytes(monkeypatch, tmp_path, n, "exact") for n in (n1, 4 * n1)]
    assert set(sketch[0]) == {0, 1, 2, 3} and sketch[0][0] > 0
    assert sketch[0] == sketch[1]                      # every pass: same bytes at N and 4N
    # exact mode keeps every upsampled value (levels reach Q(0)): pass 1 grows ~4x with N,
    # the later passes (level counts, tallies, top-k) are fixed size in both modes.
    assert exact[1][0] > 3 * exact[0][0]
    for i in (2, 3):
        assert exact[0][i] == exact[1][i] == sketch[0][i]


def test_quantile_mode_is_checked():
    g, seg = load_default_generator(), default_segmenter()
    with pytest.raises(ValueError, match="quantile_mode"):
        gen.dissect_generator(g, "layer3", seg, num_samples=2, progress=False, quantile_mode="tdigest")


def test_batches_are_built_lazily_for_huge_n():
    """10^12 samples: the first batches come at once (no index list of length N)."""
    src = IndexSource(10 ** 12, lambda idx: idx, batch_size=5)
    it = src.batches(0)
    assert next(it).indices.tolist() == [0, 1, 2, 3, 4]
    assert next(it).indices.tolist() == [5, 6, 7, 8, 9]
    tail = list(IndexSource(range(10 ** 12 - 7, 10 ** 12), lambda idx: idx, batch_size=5).batches(0))
    assert [b.indices.tolist() for b in tail] == [list(range(10 ** 12 - 7, 10 ** 12 - 2)),
                                                  [10 ** 12 - 2, 10 ** 12 - 1]]
    assert [b.indices.tolist() for b in IndexSource([3, 1, 4], lambda i: i, batch_size=2).batches(0)] \
        == [[3, 1], [4]]
    assert list(IndexSource(10, lambda i: i).shard(1, 3).samples) == list(ddp.shard_range(10, 1, 3)) == [3, 4, 5]
    assert len(IndexSource(10 ** 12, lambda i: i, batch_size=5).shard(1, 2)) == 10 ** 11


class _Count:
    """The smallest accumulator: counts samples."""

    def __init__(self):
        self.n = torch.zeros((), dtype=torch.int64)

    def update(self, step):
        self.n += len(step.indices)

    def merge(self, other):
        self.n += other.n

    def state_dict(self):
        return {"n": self.n.clone()}

    def load_state_dict(self, state):
        self.n = state["n"].clone()

    def finalize(self):
        return self.n


def test_progress_counts_samples_with_rate_and_eta(capsys):
    out = run_passes(torch.nn.Identity(), IndexSource(10, lambda i: i.float()[:, None], batch_size=4),
                     [Pass("count", lambda r: {"n": _Count()})], desc="test")
    assert int(out.results["count"]["n"]) == 10
    err = capsys.readouterr().err
    assert "sample/s" in err                            # a rate in samples, not batches
    assert re.search(r"/10\b", err)                     # a total, so tqdm can show the ETA
    assert "<" in err                                   # elapsed<remaining


def test_cli_passes_quantile_mode(monkeypatch, tmp_path):
    class Called(Exception):
        pass

    def fake(*args, **kwargs):
        raise Called(kwargs["quantile_mode"])

    from dissect_kernels.cli import main
    monkeypatch.setattr(gen, "dissect_generator", fake)
    for flag, want in ((["--quantile-mode", "sketch"], "sketch"), ([], None)):
        with pytest.raises(Called) as e:
            main(["gan", "--num-samples", "4", "--out", str(tmp_path), "--quiet"] + flag)
        assert e.value.args == (want,)
