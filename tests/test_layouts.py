"""Any model: token (ViT with class + register tokens), sequence-first, NHWC and channels_last
layouts dissect as strided views of the layer's tensor; planted units are recovered in each;
counts on every layout and dtype equal the reference on the NCHW-contiguous fp32 copy; fixed
thresholds round-trip; edits on token layers leave the prefix tokens alone."""
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

import dissect_kernels as dk
from dissect_kernels.engine.layers import LayerSpec, parse_layer, parse_layers
from dissect_kernels.models.tiny_convnext import planted_convnext
from dissect_kernels.models.tiny_vit import planted_vit
from dissect_kernels.reference.tally import tally_into as reference_tally
from planted import Planted, PlantedDataset

DATA = PlantedDataset()
Q = DATA.midgap_quantile(16 * 16)
KW = dict(quantile=Q, batch_size=16, progress=False, backend="cpu")


class ChannelsLast(Planted):
    """Planted, with its `units` layer's output in channels_last memory."""

    def forward(self, x):
        maps = [(x[:, 0] == c).float() for c in self.concepts]
        planted = nn.functional.avg_pool2d(torch.stack(maps, 1), 4)
        noise = torch.stack([self._noise(img) for img in x])[:, :, ::4, ::4]
        feats = torch.cat([planted + 1e-3 * noise[:, :len(self.concepts)], noise[:, len(self.concepts):]], 1)
        return self.units(feats.contiguous(memory_format=torch.channels_last)).mean((2, 3))


class SeqFirst(nn.Module):
    """The planted ViT's block 1 tokens, sequence-first like nn.MultiheadAttention: [T, B, C]."""

    def __init__(self):
        super().__init__()
        self.vit = planted_vit()
        self.seq = nn.Identity()

    def forward(self, x):
        tokens = self.vit.blocks(self._tokens(x))
        return self.seq(tokens.transpose(0, 1))

    def _tokens(self, x):
        v = self.vit
        x = nn.functional.one_hot(x[:, 0].round().long(), v.one_hot_input).permute(0, 3, 1, 2).float()
        t = v.patch_embed(x) + v.pos_embed
        return torch.cat([v.cls_token.expand(len(x), -1, -1), v.reg_token.expand(len(x), -1, -1), t], 1)


CASES = {
    "vit tokens, 1 class + 2 register tokens": (planted_vit, LayerSpec("blocks.1", layout="tokens", prefix_tokens=3)),
    "sequence-first tokens": (SeqFirst, LayerSpec("seq", layout="tokens_seq_first", prefix_tokens=3)),
    "convnext nhwc (a norm's input)": (planted_convnext, LayerSpec("stages.1.blocks.0.norm", layout="nhwc",
                                                                   capture="input")),
    "channels_last cnn": (ChannelsLast, "units"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_planted_units_recovered_in_every_layout(case):
    build, layer = CASES[case]
    result = dk.dissect(build(), layer, DATA, **KW)
    lr = next(iter(result.layers.values()))
    for j, c in enumerate((1, 2, 3, 4)):
        assert int(lr.best_label[j]) == c and float(lr.best_iou[j]) > 0.95, (case, j)
        assert bool(lr.detector[j])


def test_layer_specs_parse_from_the_command_line():
    assert parse_layer("layer4") == "layer4"
    assert parse_layer("blocks.6:tokens,prefix=1") == LayerSpec("blocks.6", "tokens", prefix_tokens=1)
    assert parse_layer("m:tokens_seq_first,grid=4x6,select=0") == \
        LayerSpec("m", "tokens_seq_first", grid=(4, 6), select=0)
    assert parse_layer("enc:tokens,select=last_hidden_state,input") == \
        LayerSpec("enc", "tokens", select="last_hidden_state", capture="input")
    assert parse_layers("a,blocks.6:tokens,prefix=1,grid=2x8,b:nhwc") == \
        ["a", LayerSpec("blocks.6", "tokens", prefix_tokens=1, grid=(2, 8)), LayerSpec("b", "nhwc")]
    for bad in ("x:tokens,prefix=one", "x:tokens,size=3", ":tokens", "x:diagonal"):
        with pytest.raises(ValueError, match="layer"):
            parse_layer(bad)


def test_layout_errors_are_one_clear_line():
    with pytest.raises(ValueError, match="not a square grid; pass grid"):
        LayerSpec("b", "tokens", prefix_tokens=1).to_nchw(torch.zeros(2, 1 + 12, 4))
    with pytest.raises(ValueError, match="grid .* holds 12 tokens"):
        LayerSpec("b", "tokens", grid=(3, 4), prefix_tokens=2).to_nchw(torch.zeros(2, 13, 4))
    with pytest.raises(ValueError, match=r"layout='tokens'"):
        LayerSpec("b").to_nchw(torch.zeros(2, 13, 4))
    with pytest.raises(TypeError, match="select="):
        LayerSpec("b").pick((torch.zeros(1), torch.zeros(1)))
    with pytest.raises(ValueError, match="prefix_tokens applies"):
        LayerSpec("b", "nhwc", prefix_tokens=1)
    assert LayerSpec("b", "tokens", grid=(3, 4), prefix_tokens=1).to_nchw(torch.zeros(2, 13, 5)).shape == (2, 5, 3, 4)


def _native_layout(nchw: torch.Tensor, layout: str, prefix: int, sliced: bool) -> torch.Tensor:
    """The same values stored in `layout` (plus `prefix` junk tokens, and optionally inside a
    bigger tensor so that the strides are not the contiguous ones)."""
    B, U, h, w = nchw.shape
    if layout == "nchw":
        x = nchw.contiguous(memory_format=torch.channels_last)
    elif layout == "nhwc":
        x = nchw.permute(0, 2, 3, 1).contiguous()
    else:
        tok = nchw.flatten(2).transpose(1, 2)                           # [B, hw, U]
        tok = torch.cat([torch.full((B, prefix, U), 99.0, dtype=nchw.dtype), tok], 1)
        x = tok.contiguous() if layout == "tokens" else tok.transpose(0, 1).contiguous()
    if sliced:                                                          # a view into a wider tensor
        wide = torch.zeros(*x.shape[:-1], x.shape[-1] + 3, dtype=x.dtype)
        wide[..., 1:x.shape[-1] + 1] = x
        x = wide[..., 1:x.shape[-1] + 1]
    return x


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 3), U=st.integers(1, 5), h=st.integers(1, 4), w=st.integers(1, 4),
       layout=st.sampled_from(["nchw", "nhwc", "tokens", "tokens_seq_first"]),
       prefix=st.integers(0, 3), sliced=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]), seed=st.integers(0, 2 ** 16))
def test_counts_on_every_layout_equal_the_reference_on_fp32_nchw(B, U, h, w, layout, prefix, sliced, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    nchw = torch.randn(B, U, h, w, generator=g).to(dtype)
    prefix = prefix if layout.startswith("tokens") else 0
    spec = LayerSpec("x", layout, grid=(h, w), prefix_tokens=prefix)
    view = spec.to_nchw(_native_layout(nchw, layout, prefix, sliced))
    assert torch.equal(view.float(), nchw.float())
    H, W = 2 * h + 1, 3 * w
    labels = torch.randint(0, 5, (B, 1, H, W), generator=g, dtype=torch.int32)
    thresholds = torch.randn(U, generator=g)
    got = dk.tally(view, thresholds, labels, num_concepts=5, backend="cpu")
    want = dk.ops.tally.TallyResult.empty(B, U, 5, None, "cpu")
    from dissect_kernels.geometry import Geometry
    ytab, xtab = Geometry.named("half-pixel").tables((h, w), (H, W))
    reference_tally(nchw.float().contiguous(), thresholds, labels, None, ytab, xtab, 5, False, None, None, want)
    assert torch.equal(got.intersection, want.intersection) and torch.equal(got.active, want.active)
    assert torch.equal(dk.upsample(view, (H, W)), dk.upsample(nchw.float().contiguous(), (H, W)))


def test_thresholds_round_trip(tmp_path):
    first = dk.dissect(Planted(), "units", DATA, out_dir=tmp_path / "a", **KW)
    again = dk.dissect(Planted(), "units", DATA, thresholds=tmp_path / "a", out_dir=tmp_path / "b", **KW)
    a, b = first.layers["units"], again.layers["units"]
    assert torch.equal(a.iou, b.iou) and torch.equal(a.thresholds, b.thresholds)
    assert torch.equal(a.topk_indices, b.topk_indices)
    assert again.parameters["thresholds"] == str(tmp_path / "a")
    assert (tmp_path / "b" / "index.html").is_file() and list((tmp_path / "b" / "images").rglob("*.jpg"))
    by_dict = dk.dissect(Planted(), "units", DATA, thresholds={"units": a.thresholds}, **KW)
    assert torch.equal(by_dict.layers["units"].iou, a.iou)
    with pytest.raises(ValueError, match="no entry for layers"):
        dk.dissect(Planted(), "units", DATA, thresholds={"other": a.thresholds}, **KW)


def test_token_edits_leave_the_prefix_tokens_alone():
    model = planted_vit()
    spec = LayerSpec("blocks.1", "tokens", prefix_tokens=3)
    x = torch.stack([DATA[i]["image"] for i in range(4)])
    seen = []
    hook = model.norm.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    with torch.no_grad():
        model(x)
        out = dk.intervene(model, spec, [[0, 2], [1]], x)               # [S, B, classes]
    hook.remove()
    plain, edited = seen[0], seen[1].view(2, 4, *seen[0].shape[1:])      # set-major copies
    assert out.shape[:2] == (2, 4)
    for s, units in enumerate(([0, 2], [1])):
        keep = [u for u in range(plain.shape[-1]) if u not in units]
        assert torch.equal(edited[s, :, :3], plain[:, :3])             # class + register tokens
        assert bool((edited[s, :, 3:, units] == 0).all())              # the set's units ablated
        assert torch.equal(edited[s, :, 3:, keep], plain[:, 3:, keep])


class Allocations:
    """The largest single allocation any op makes while the block runs, inside custom ops and
    native kernels' Python wrappers too (torch's profiler with profile_memory)."""

    def __enter__(self):
        from torch.profiler import ProfilerActivity, profile
        self.prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self.prof.__enter__()
        return self

    def __exit__(self, *exc):
        self.prof.__exit__(*exc)
        events = [e for e in self.prof.events() if e.self_cpu_memory_usage > 0]
        top = max(events, key=lambda e: e.self_cpu_memory_usage, default=None)
        self.biggest, self.op = (0, None) if top is None else (top.self_cpu_memory_usage, top.name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_accumulators_never_copy_the_activation(dtype):
    """A ViT-like [B, 1 + 2 + 16*16, 96] token map (fp32 or bf16) through the engine's layer
    accumulators (exact quantiles, top-k, the fused tally): no op makes a tensor as large as a
    quarter of the activation (a layout copy or an fp32 upcast would be one or two)."""
    from dissect_kernels.engine import Step
    from dissect_kernels.engine.step import check_features
    from dissect_kernels.engine.layer_stats import LayerQuantiles, LayerTally, LayerTopK
    from dissect_kernels.geometry import Geometry
    B, U = 8, 96
    raw = torch.randn(B, 3 + 16 * 16, U).to(dtype)
    view = LayerSpec("b", "tokens", prefix_tokens=3).to_nchw(raw)
    labels = torch.randint(0, 6, (B, 1, 32, 32), dtype=torch.int32)
    accs = [LayerQuantiles("b", 0.99, samples=4 * B, mode="exact"), LayerTopK("b", 5),
            LayerTally("b", torch.full((U,), 1.5), num_concepts=6, category_of=DATA.category_of,
                       num_categories=2, convention="exact", backend="cpu",
                       geometry_for=lambda s, d: Geometry.named("half-pixel"))]

    def step():
        return Step(None, None, torch.arange(B), {"labels": labels, "image_labels": None}, {"b": view})

    for acc in accs:                                    # first batch: the states are allocated
        acc.update(step())
    with Allocations() as seen:
        check_features("b", view, torch.arange(B))     # the engine's finite check on captures
        for acc in accs:
            acc.update(step())
    assert seen.biggest < raw.untyped_storage().nbytes() // 4, (seen.op, seen.biggest)
