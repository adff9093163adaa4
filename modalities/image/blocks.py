"""U-Net building blocks of the DDPM / ADM family (Ho et al. 2020, App. B; Dhariwal & Nichol 2021, Sec. 3).

Dimension-agnostic where it is cheap: the convolutional blocks take `dims` (1, 2 or 3; default 2).
The music modality reuses these blocks through imports (DESIGN.md); keep the signatures stable.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from diffsuite.core.utils import append_dims


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (fractional) timesteps (Vaswani et al. 2017, Sec. 3.5; DDPM App. B): (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def num_groups(ch: int, max_groups: int = 32) -> int:
    """The largest group count <= max_groups that divides ch."""
    return next(g for g in range(min(max_groups, ch), 0, -1) if ch % g == 0)


def norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups(ch), ch)


def conv_nd(dims: int, *args, **kw) -> nn.Module:
    return {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims](*args, **kw)


def zero_module(m: nn.Module) -> nn.Module:
    """Zero-initialise a module's parameters (ADM: residual branches start as the identity)."""
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


class Downsample(nn.Module):
    """Halve every spatial size: strided 3x3 conv (DDPM) or average pooling."""

    def __init__(self, ch: int, use_conv: bool = True, dims: int = 2, out_ch: int | None = None):
        super().__init__()
        out_ch = out_ch or ch
        if use_conv:
            self.op = conv_nd(dims, ch, out_ch, 3, stride=2, padding=1)
        elif out_ch != ch:
            raise ValueError(f"Downsample: use_conv=False cannot change channels {ch} -> {out_ch}")
        else:
            self.op = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}[dims](2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double every spatial size: nearest-neighbour, then an optional 3x3 conv (DDPM)."""

    def __init__(self, ch: int, use_conv: bool = True, dims: int = 2, out_ch: int | None = None):
        super().__init__()
        out_ch = out_ch or ch
        if not use_conv and out_ch != ch:
            raise ValueError(f"Upsample: use_conv=False cannot change channels {ch} -> {out_ch}")
        self.conv = conv_nd(dims, ch, out_ch, 3, padding=1) if use_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class TimestepBlock(nn.Module):
    """A block whose forward takes the timestep (and class) embedding: forward(x, emb)."""


class ContextBlock(nn.Module):
    """A block whose forward takes a context tensor for cross-attention: forward(x, context)."""


class TimestepEmbedSequential(nn.Sequential):
    """Sequential container passing emb to TimestepBlocks and context to ContextBlocks."""

    def forward(self, x, emb=None, context=None):
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            elif isinstance(layer, ContextBlock):
                x = layer(x, context) if context is not None else x
            else:
                x = layer(x)
        return x


class ResBlock(TimestepBlock):
    """Residual block with timestep embedding (DDPM App. B); AdaGN scale-shift and BigGAN up/down (ADM Sec. 3)."""

    def __init__(self, in_ch: int, out_ch: int | None, emb_dim: int, dropout: float = 0.0,
                 use_scale_shift_norm: bool = False, up: bool = False, down: bool = False, dims: int = 2):
        super().__init__()
        out_ch = out_ch or in_ch
        if up and down:
            raise ValueError("ResBlock: up and down are exclusive")
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(norm(in_ch), nn.SiLU(), conv_nd(dims, in_ch, out_ch, 3, padding=1))
        self.resample = Upsample(in_ch, False, dims) if up else Downsample(in_ch, False, dims) if down else None
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_ch if use_scale_shift_norm else out_ch))
        self.out_norm = norm(out_ch)
        self.out_layers = nn.Sequential(nn.SiLU(), nn.Dropout(dropout),
                                        zero_module(conv_nd(dims, out_ch, out_ch, 3, padding=1)))
        self.skip = nn.Identity() if in_ch == out_ch else conv_nd(dims, in_ch, out_ch, 1)

    def _trunk(self, x):
        """Norm-act, resample (BigGAN: resample inside the residual branch and the skip), conv."""
        if self.resample is None:
            return self.in_layers(x), x
        h = self.in_layers[:-1](x)
        return self.in_layers[-1](self.resample(h)), self.resample(x)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h, x = self._trunk(x)
        e = append_dims(self.emb_layers(emb).to(h.dtype), h.ndim)
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_norm(h) * (1 + scale) + shift
        else:
            h = self.out_norm(h + e)
        return self.skip(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all spatial positions (DDPM App. B; ADM multi-head), via SDPA."""

    def __init__(self, ch: int, num_heads: int = 1, head_dim: int | None = None):
        super().__init__()
        if head_dim is not None:
            if ch % head_dim:
                raise ValueError(f"AttentionBlock: channels {ch} not divisible by head_dim {head_dim}")
            num_heads = ch // head_dim
        if ch % num_heads:
            raise ValueError(f"AttentionBlock: channels {ch} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = norm(ch)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)
        self.proj_out = zero_module(nn.Conv1d(ch, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        qkv = self.qkv(self.norm(x).reshape(b, c, -1))  # (B, 3C, N)
        q, k, v = qkv.reshape(b, 3, self.num_heads, c // self.num_heads, -1).transpose(-1, -2).unbind(1)
        a = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, d)
        a = a.transpose(-1, -2).reshape(b, c, -1)
        return x + self.proj_out(a).reshape(b, c, *spatial)


class CrossAttentionBlock(ContextBlock):
    """Attention from spatial positions to a context sequence (B, L, context_dim) (Rombach et al. 2022, Sec. 3.3)."""

    def __init__(self, ch: int, context_dim: int, num_heads: int = 1):
        super().__init__()
        if ch % num_heads:
            raise ValueError(f"CrossAttentionBlock: channels {ch} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = norm(ch)
        self.q = nn.Conv1d(ch, ch, 1)
        self.kv = nn.Linear(context_dim, 2 * ch)
        self.proj_out = zero_module(nn.Conv1d(ch, ch, 1))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        h = self.num_heads
        q = self.q(self.norm(x).reshape(b, c, -1)).reshape(b, h, c // h, -1).transpose(-1, -2)
        k, v = self.kv(context).reshape(b, -1, 2, h, c // h).permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, -1)
        return x + self.proj_out(a).reshape(b, c, *spatial)
