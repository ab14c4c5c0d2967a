"""LayerSpec: which tensor of which module to dissect, and how its memory is laid out.

Every layout becomes a strided [B, U, h, w] *view* of the module's tensor (never a copy), which
is what every kernel reads:
- "nchw"              [B, C, H, W] with any strides (channels_last included);
- "nhwc"              [B, H, W, C] (Swin, ConvNeXt internals);
- "tokens"            [B, T, C]: `prefix_tokens` class/register tokens first, then the patch
                      grid in row-major order (ViT, DeiT, DINOv2, CLIP image towers);
- "tokens_seq_first"  [T, B, C] (nn.MultiheadAttention's default).
`select` picks one tensor from a tuple/list/dict/ModelOutput output (an index or a key such as
"last_hidden_state"); capture="input" takes the module's first positional input instead."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

LAYOUTS = ("nchw", "nhwc", "tokens", "tokens_seq_first")
SHAPES = {"nchw": "[batch, units, height, width]", "nhwc": "[batch, height, width, units]",
          "tokens": "[batch, tokens, units]", "tokens_seq_first": "[tokens, batch, units]"}


@dataclass(frozen=True)
class LayerSpec:
    """A layer to dissect: module name plus how to find a [B, U, h, w] map in what it returns."""

    module: str
    layout: str = "nchw"
    grid: tuple[int, int] | None = None
    prefix_tokens: int = 0
    select: Any = None
    capture: str = "output"
    name: str | None = None

    def __post_init__(self):
        where = f"layer {self.module!r}"
        if self.layout not in LAYOUTS:
            raise ValueError(f"{where}: layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.capture not in ("output", "input"):
            raise ValueError(f"{where}: capture must be 'output' or 'input', got {self.capture!r}")
        if not isinstance(self.prefix_tokens, int) or self.prefix_tokens < 0:
            raise ValueError(f"{where}: prefix_tokens must be an int >= 0, got {self.prefix_tokens!r}")
        if self.prefix_tokens and not self.layout.startswith("tokens"):
            raise ValueError(f"{where}: prefix_tokens applies to the token layouts, not {self.layout!r}")
        if self.grid is not None:
            grid = tuple(int(g) for g in self.grid)
            if len(grid) != 2 or min(grid) < 1:
                raise ValueError(f"{where}: grid must be (height, width) of positive ints, got {self.grid!r}")
            object.__setattr__(self, "grid", grid)

    @property
    def key(self) -> str:
        """The name results are stored under (the module name unless `name` is given)."""
        return self.name or self.module

    def extract(self, value) -> torch.Tensor:
        """The [B, U, h, w] view of what the module returned (or received)."""
        return self.to_nchw(self.pick(value))

    def pick(self, value):
        """The selected tensor of a tuple/list/dict/object output."""
        if self.select is None:
            if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor) \
                    and not isinstance(value, torch.Tensor):
                raise TypeError(f"layer {self.module!r} returns a {type(value).__name__} of "
                                f"{len(value)}: pass select= (an index) to pick one tensor")
            return value
        try:
            if isinstance(value, dict) or hasattr(value, "keys") and isinstance(self.select, str):
                return value[self.select]
            if isinstance(self.select, str):
                return getattr(value, self.select)
            return value[self.select]
        except (KeyError, IndexError, AttributeError, TypeError):
            raise ValueError(f"layer {self.module!r}: select={self.select!r} does not pick anything "
                             f"from its {type(value).__name__} output") from None

    def to_nchw(self, x) -> torch.Tensor:
        """A [B, U, h, w] view (no copy) of x in this spec's layout."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"layer {self.module!r} gives {type(x).__name__}, not a tensor "
                            "(pass select= to pick a tensor from it)")
        want = 4 if self.layout in ("nchw", "nhwc") else 3
        if x.dim() != want:
            hint = " (a [batch, tokens, units] output: layout='tokens', on the command line " \
                f"'{self.module}:tokens,prefix=K')" if x.dim() == 3 and want == 4 else ""
            raise ValueError(f"layer {self.module!r} output has shape {tuple(x.shape)}; layout "
                             f"{self.layout!r} needs a {SHAPES[self.layout]} map{hint}")
        if self.layout == "nchw":
            return x
        if self.layout == "nhwc":
            return x.permute(0, 3, 1, 2)
        if self.layout == "tokens":
            h, w = self.grid_of(x.shape[1])
            return x[:, self.prefix_tokens:].unflatten(1, (h, w)).permute(0, 3, 1, 2)
        h, w = self.grid_of(x.shape[0])
        return x[self.prefix_tokens:].unflatten(0, (h, w)).permute(2, 3, 0, 1)

    def grid_of(self, tokens: int) -> tuple[int, int]:
        """(h, w) of the patch grid among `tokens` tokens (given, or square when unambiguous)."""
        n = tokens - self.prefix_tokens
        if self.grid is not None:
            if self.grid[0] * self.grid[1] != n:
                raise ValueError(f"layer {self.module!r}: grid {self.grid} holds {self.grid[0] * self.grid[1]} "
                                 f"tokens, but the layer has {tokens} tokens with {self.prefix_tokens} prefix "
                                 f"tokens, leaving {n}")
            return self.grid
        side = math.isqrt(max(n, 0))
        if n < 1 or side * side != n:
            raise ValueError(f"layer {self.module!r}: {tokens} tokens minus {self.prefix_tokens} prefix "
                             f"tokens leaves {n}, not a square grid; pass grid=(h, w) and prefix_tokens=")
        return side, side


def parse_layer(text: str) -> "str | LayerSpec":
    """A --layers item: 'name' or 'name:layout[,grid=HxW][,prefix=K][,select=S][,input]', e.g.
    'blocks.6:tokens,prefix=1' or 'stages.2:nhwc' or 'encoder:tokens,select=last_hidden_state'."""
    module, _, options = text.strip().partition(":")
    if not module:
        raise ValueError(f"layer {text!r}: the module name is empty")
    if not options:
        return module
    layout, *rest = [o.strip() for o in options.split(",")]
    kw: dict[str, Any] = {"layout": layout or "nchw"}
    for item in rest:
        key, _, value = item.partition("=")
        if key == "input" and not value:
            kw["capture"] = "input"
        elif key == "prefix":
            kw["prefix_tokens"] = _int(text, key, value)
        elif key == "grid":
            h, _, w = value.lower().partition("x")
            kw["grid"] = (_int(text, key, h), _int(text, key, w))
        elif key == "select":
            kw["select"] = int(value) if value.lstrip("-").isdigit() else value
        else:
            raise ValueError(f"layer {text!r}: unknown option {item!r} (known: grid=HxW, prefix=K, "
                             "select=INDEX|KEY, input)")
    return LayerSpec(module, **kw)


def parse_layers(text: str) -> list:
    """A --layers value: comma-separated layers, each 'name' or 'name:layout' followed by its
    options (an item with '=' or the word 'input' belongs to the layer before it), e.g.
    'layer3,layer4' or 'blocks.6:tokens,prefix=1,blocks.9:tokens,prefix=1'."""
    groups: list[list[str]] = []
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        if groups and ("=" in item or item == "input") and ":" in groups[-1][0]:
            groups[-1].append(item)
        else:
            groups.append([item])
    return [parse_layer(",".join(g)) for g in groups]


def _int(text: str, key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"layer {text!r}: {key}= needs a whole number, got {value!r}") from None


def as_spec(layer: "str | LayerSpec") -> LayerSpec:
    """A module name or a LayerSpec -> a LayerSpec."""
    if isinstance(layer, LayerSpec):
        return layer
    if isinstance(layer, str):
        return LayerSpec(layer)
    raise TypeError(f"a layer must be a module name (str) or a dk.LayerSpec, got {type(layer).__name__}")


def as_specs(model, layers) -> list[LayerSpec]:
    """One layer or several -> a non-empty list of LayerSpecs whose modules exist in `model`
    (errors name a missing one and suggest close names) and whose keys are unique."""
    from dissect_kernels.hooks import get_module
    items = [layers] if isinstance(layers, (str, LayerSpec)) else list(layers)
    if not items:
        raise ValueError("layers is empty: name at least one module of the model")
    specs = [as_spec(item) for item in items]
    for spec in specs:
        get_module(model, spec.module)
    keys = [s.key for s in specs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"layers lists a name twice: {keys} (give LayerSpecs distinct name=)")
    return specs
