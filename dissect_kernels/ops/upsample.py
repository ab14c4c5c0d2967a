"""dk.upsample: the tally's bilinear upsampling, materialised. Each backend evaluates the same
geometry tables in the same fp32 order as the fused tally (no FMA), so `upsample(...) > t`
is exactly the tally's active mask: exemplar masks, quantiles of upsampled maps (the
"dissect" convention) and pictures all agree with the counts."""
from __future__ import annotations

import torch

from dissect_kernels import _native
from dissect_kernels.conventions import get_convention
from dissect_kernels.geometry import AffineMaps, AxisTable, Geometry, device_tables
from dissect_kernels.ops import _checks, _library

BACKENDS = ("cpu", "cuda", "triton", "reference")
_DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def upsample(acts: torch.Tensor, out_size, *, convention: str = "exact",
             geometry: "str | Geometry | None" = None, backend: str = "auto",
             out: torch.Tensor | None = None) -> torch.Tensor:
    """acts [B, U, h, w] (fp32/fp16/bf16, any strides: read as stored, never copied) ->
    float32 [B, U, H, W] for out_size (H, W) (or an int for a square).

    The geometry is the convention's ("exact", "netdissect-lite", "gandissect": half-pixel
    centres with edge clamp; "dissect": zero padding). "netdissect" maps through each layer's
    receptive-field centres, so it needs geometry=Geometry.receptive_field(...) for the layer.
    geometry= (a name or a Geometry) overrides the convention's. out= (contiguous float32
    [B, U, H, W] on acts' device) is written and returned: reusing a buffer saves the page
    faults of a fresh large tensor, which on a CPU can cost several times the upsampling.
    """
    acts = _checks.tensor("acts", acts, ndim=4, dtypes=_checks.FLOAT_DTYPES)
    H, W = _out_size(out_size)
    _native.check_name(backend, BACKENDS)
    B, U, h, w = acts.shape
    if h == 0 or w == 0:
        raise ValueError(f"acts has empty maps: shape {tuple(acts.shape)}")
    maps = resolve_geometry(convention, geometry).affine_maps((h, w), (H, W))
    if out is None:
        return torch.ops.dissect_kernels.upsample(acts, H, W, *maps, backend)
    _check_out(out, (B, U, H, W), acts.device)
    torch.ops.dissect_kernels.upsample_out(acts, out, *maps, backend)
    return out


def _check_out(out, shape: tuple, device) -> None:
    if not isinstance(out, torch.Tensor) or out.dtype != torch.float32 or tuple(out.shape) != shape:
        got = f"{out.dtype} {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"out must be a float32 tensor of shape {shape}, got {got}")
    if out.device != device or not out.is_contiguous():
        raise ValueError(f"out must be contiguous and on {device} (acts' device)")


def resolve_geometry(convention, geometry) -> Geometry:
    """The Geometry to use: `geometry` if given, else the convention's preset."""
    if geometry is not None:
        return Geometry.named(geometry)
    conv = get_convention(convention)
    if conv.geometry == "receptive-field":
        raise ValueError(f"convention {conv.name!r} upsamples through each layer's receptive-field "
                         "centres: pass geometry=Geometry.receptive_field(offset, size, stride) for "
                         "this layer")
    return Geometry.named(conv.geometry)


def _out_size(out_size) -> tuple[int, int]:
    size = (out_size, out_size) if isinstance(out_size, int) else tuple(out_size)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size):
        raise ValueError(f"out_size must be a positive int or a pair (H, W) of them, got {out_size!r}")
    return size


def _upsample_impl(acts, height, width, scale_y, offset_y, scale_x, offset_x, boundary, arithmetic,
                   backend):
    """torch.ops.dissect_kernels.upsample: a new float32 [B, U, height, width] tensor (the
    validated wrapper above builds the arguments; torch.compile / torch.export see this op)."""
    B, U = acts.shape[:2]
    out = torch.empty(B, U, height, width, dtype=torch.float32, device=acts.device)
    _upsample_out_impl(acts, out, scale_y, offset_y, scale_x, offset_x, boundary, arithmetic, backend)
    return out


def _upsample_fake(acts, height, width, scale_y, offset_y, scale_x, offset_x, boundary, arithmetic,
                   backend):
    return acts.new_empty((acts.shape[0], acts.shape[1], height, width), dtype=torch.float32)


def _upsample_out_impl(acts, out, scale_y, offset_y, scale_x, offset_x, boundary, arithmetic,
                       backend) -> None:
    """torch.ops.dissect_kernels.upsample_out: upsample into a caller's buffer `out`."""
    name = _native.resolve(backend, acts.device, BACKENDS)
    ytab, xtab = device_tables(AffineMaps(scale_y, offset_y, scale_x, offset_x, boundary, arithmetic),
                               tuple(acts.shape[2:]), tuple(out.shape[2:]), acts.device)
    upsample_into(name, acts, ytab, xtab, out)


_MAPS = ("float scale_y, float offset_y, float scale_x, float offset_x, str boundary, str arithmetic, "
         "str backend")
_library.define(f"upsample(Tensor acts, int height, int width, {_MAPS}) -> Tensor",
                _upsample_impl, _upsample_fake)
_library.define(f"upsample_out(Tensor acts, Tensor(a!) out, {_MAPS}) -> ()",
                _upsample_out_impl, lambda *args: None)


def upsample_into(backend: str, acts: torch.Tensor, ytab: AxisTable, xtab: AxisTable,
                  out: torch.Tensor) -> None:
    """Run one concrete backend, writing `out` (contiguous float32 [B, U, H, W] on acts'
    device; tables there too). Tests call this to poison `out` first."""
    if acts.shape[0] * acts.shape[1] == 0:
        return
    if backend == "reference":
        from dissect_kernels.reference.upsample import upsample_into as run
        run(acts, ytab, xtab, out)
    elif backend == "triton":
        from dissect_kernels.triton.upsample import upsample_into as run
        run(acts, ytab, xtab, out)
    else:
        module = _native.native("_C" if backend == "cpu" else "_cuda")
        module.upsample(_native_spec(acts, ytab, xtab, out), _native.stream_handle(acts.device))


def _native_spec(acts, ytab: AxisTable, xtab: AxisTable, out) -> dict:
    """Pointers, shapes and element strides for the C++ entry point (python/bind_common.h)."""
    B, U, h, w = acts.shape
    return dict(acts=acts.data_ptr(), acts_dtype=_DTYPE_CODE[acts.dtype], B=B, U=U, h=h, w=w,
                acts_stride=list(acts.stride()), H=out.shape[2], W=out.shape[3],
                ytab=ytab.spec(), xtab=xtab.spec(),
                out=out.data_ptr())
