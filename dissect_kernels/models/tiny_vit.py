"""A tiny Vision Transformer with timm's module names (patch_embed.proj, cls_token, reg_token,
pos_embed, blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm, head), so a
timm-format state dict of the same sizes loads into it. Block outputs are [B, 1 + R + h*w, D]:
the class token, R register tokens, then the patch grid (dissect them with
LayerSpec("blocks.N", layout="tokens", prefix_tokens=1 + R)).

planted_vit() builds one whose first embedding channels are known concept masks: with
one-hot input decoding, patch_embed averages each concept's indicator over the patch, and every
block starts as the identity (zero output projections), so unit j of every block's patch
tokens is the fraction of patch pixels holding concepts[j]. Dissection must find them."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens [B, h*w, D] by a strided convolution (timm's layout)."""

    def __init__(self, in_chans: int, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, T, D))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, 2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """ViT on img_size^2 inputs with patch x patch patches, `depth` blocks of width dim, R
    register tokens. one_hot_input=K decodes channel 0 (a label map) into K one-hot channels
    first (the planted model's input)."""

    def __init__(self, img_size: int = 64, patch: int = 4, dim: int = 32, depth: int = 2,
                 heads: int = 2, in_chans: int = 3, register_tokens: int = 0, num_classes: int = 0,
                 one_hot_input: int = 0):
        super().__init__()
        self.one_hot_input = one_hot_input
        self.patch_embed = PatchEmbed(one_hot_input or in_chans, dim, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.reg_token = nn.Parameter(torch.zeros(1, register_tokens, dim)) if register_tokens else None
        self.pos_embed = nn.Parameter(torch.zeros(1, (img_size // patch) ** 2, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes) if num_classes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.one_hot_input:
            x = F.one_hot(x[:, 0].round().long().clamp(0, self.one_hot_input - 1),
                          self.one_hot_input).permute(0, 3, 1, 2).float()
        tokens = self.patch_embed(x) + self.pos_embed
        prefix = [self.cls_token.expand(len(x), -1, -1)]
        if self.reg_token is not None:
            prefix.append(self.reg_token.expand(len(x), -1, -1))
        tokens = self.blocks(torch.cat(prefix + [tokens], dim=1))
        return self.head(self.norm(tokens)[:, 0])


def planted_vit(concepts=(1, 2, 3, 4), num_concepts: int = 6, noise_units: int = 4,
                register_tokens: int = 2, seed: int = 0) -> TinyViT:
    """A TinyViT whose embedding channel j < len(concepts) is the fraction of each patch's pixels
    that hold concepts[j] (plus tiny noise), the rest small random features; blocks start as
    the identity, so every block's patch tokens carry the planted units."""
    g = torch.Generator().manual_seed(seed)
    dim = len(concepts) + noise_units
    model = TinyViT(dim=dim, heads=1, register_tokens=register_tokens, one_hot_input=num_concepts)
    with torch.no_grad():
        w = model.patch_embed.proj.weight                       # [dim, K, p, p]
        w.copy_(torch.randn(w.shape, generator=g) * 1e-3)
        for j, c in enumerate(concepts):
            w[j, c] += 1.0 / (w.shape[2] * w.shape[3])
        model.patch_embed.proj.bias.zero_()
        model.cls_token.normal_(generator=g)
        if model.reg_token is not None:
            model.reg_token.normal_(generator=g)
        for block in model.blocks:
            block.attn.proj.weight.zero_(), block.attn.proj.bias.zero_()
            block.mlp.fc2.weight.zero_(), block.mlp.fc2.bias.zero_()
    return model.eval()
