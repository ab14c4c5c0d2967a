"""TopK vs a sort-based oracle (ties: lower index first), merge, state_dict, bad input."""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from dissect_kernels import TopK


def oracle(scores: np.ndarray, indices: np.ndarray, k: int):
    """Per unit: sort (-value, index) pairs; pad with (-inf, -1)."""
    U = scores.shape[1]
    vals = np.full((U, k), -np.inf, dtype=np.float32)
    idx = np.full((U, k), -1, dtype=np.int64)
    for u in range(U):
        pairs = sorted(zip((-scores[:, u]).tolist(), indices.tolist()))[:k]
        for j, (nv, i) in enumerate(pairs):
            vals[u, j], idx[u, j] = -nv, i
    return vals, idx


def data(N, U, seed):
    g = torch.Generator().manual_seed(seed)
    scores = (torch.rand(N, U, generator=g) * 8).floor() / 2           # many ties
    indices = torch.randperm(10 * N, generator=g)[:N]                   # not monotone
    return scores, indices


@pytest.mark.parametrize("k", [1, 5, 17])
def test_topk_matches_sort_oracle(k):
    N, U = 300, 7
    scores, indices = data(N, U, k)
    t = TopK(U, k)
    for part_s, part_i in zip(torch.tensor_split(scores, [3, 50, 51, 200]),
                              torch.tensor_split(indices, [3, 50, 51, 200])):
        t.update(part_s, part_i)
    v, i = t.result()
    want_v, want_i = oracle(scores.numpy(), indices.numpy(), k)
    np.testing.assert_array_equal(v.numpy(), want_v)
    np.testing.assert_array_equal(i.numpy(), want_i)
    assert t.count == N


def test_fewer_than_k_pads():
    t = TopK(3, 6)
    s = torch.tensor([[1.0, 2.0, 2.0], [1.0, -1.0, 5.0]])
    t.update(s, torch.tensor([9, 4]))
    v, i = t.result()
    assert torch.equal(i[:, :2], torch.tensor([[4, 9], [9, 4], [4, 9]]))
    assert torch.equal(i[:, 2:], torch.full((3, 4), -1))
    assert bool(torch.isneginf(v[:, 2:]).all())
    assert torch.equal(v[:, :2], torch.tensor([[1.0, 1.0], [2.0, -1.0], [5.0, 2.0]]))


def test_merge_and_state_dict(tmp_path):
    N, U, k = 400, 5, 8
    scores, indices = data(N, U, 3)
    a, b, c = TopK(U, k), TopK(U, k), TopK(U, k)
    a.update(scores[:100], indices[:100])
    b.update(scores[100:250], indices[100:250])
    c.update(scores[250:], indices[250:])
    save_file(b.state_dict(), str(tmp_path / "t.safetensors"))
    b2 = TopK(U, k)
    b2.load_state_dict(load_file(str(tmp_path / "t.safetensors")))
    merged = c.merge(a).merge(b2).merge(TopK(U, k))
    want_v, want_i = oracle(scores.numpy(), indices.numpy(), k)
    v, i = merged.result()
    np.testing.assert_array_equal(v.numpy(), want_v)
    np.testing.assert_array_equal(i.numpy(), want_i)
    assert merged.count == N


def test_half_precision_scores():
    scores, indices = data(64, 4, 8)
    t = TopK(4, 3)
    t.update(scores.to(torch.bfloat16), indices)
    want_v, want_i = oracle(scores.numpy(), indices.numpy(), 3)   # values exact in bf16
    np.testing.assert_array_equal(t.result()[1].numpy(), want_i)


def test_bad_input():
    t = TopK(4, 2)
    with pytest.raises(ValueError, match="num_units=4"):
        t.update(torch.rand(3, 5), torch.arange(3))
    with pytest.raises(ValueError, match="dimensions"):
        t.update(torch.rand(3, 4, 1), torch.arange(3))
    with pytest.raises(ValueError, match="entries"):
        t.update(torch.rand(3, 4), torch.arange(2))
    with pytest.raises(TypeError, match="dtype"):
        t.update(torch.rand(3, 4), torch.rand(3))
    bad = torch.rand(3, 4)
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        t.update(bad, torch.arange(3))
    with pytest.raises(ValueError, match="k must"):
        TopK(4, 0)
    with pytest.raises(ValueError, match="same num_units"):
        t.merge(TopK(4, 3))
