"""The image modality's first-stage autoencoder (Rombach et al. 2022, App. G, shrunk): convolutional encoder and
decoder with residual blocks, log2(f) stride-2 downsamplings, GroupNorm and SiLU, and no attention. The music
modality reuses it on its two roll planes."""
from __future__ import annotations

import math

import torch
from torch import nn

from .blocks import Downsample, Upsample, norm


class AEBlock(nn.Module):
    """A residual block without time embedding: x + conv(SiLU(norm(conv(SiLU(norm(x))))))."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.body = nn.Sequential(norm(in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1),
                                  norm(out_ch), nn.SiLU(), nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


def widths(channels: int, levels: int) -> list[int]:
    """Channels per level, finest first: channels / 2^(levels - i), at least 16, the last = channels."""
    return [max(16, channels >> (levels - i)) for i in range(levels + 1)]


def levels_of(factor: int) -> int:
    if factor < 1 or factor & (factor - 1):
        raise ValueError(f"autoencoder.factor={factor}: expected a power of 2 (1, 2, 4, 8, ...)")
    return int(math.log2(factor))


def build_encoder(in_ch: int, latent_ch: int, factor: int, channels: int, blocks: int) -> nn.Sequential:
    """x (B, in_ch, H, W) -> (B, 2 latent_ch, H / f, W / f): the posterior's mean and log-variance."""
    n = levels_of(factor)
    w = widths(channels, n)
    layers = [nn.Conv2d(in_ch, w[0], 3, padding=1)]
    for i in range(n + 1):
        layers += [AEBlock(w[max(i - 1, 0)] if b == 0 else w[i], w[i]) for b in range(blocks)]
        if i < n:
            layers.append(Downsample(w[i], True))
    layers += [AEBlock(w[-1], w[-1]), norm(w[-1]), nn.SiLU(), nn.Conv2d(w[-1], 2 * latent_ch, 3, padding=1)]
    return nn.Sequential(*layers)


def build_decoder(out_ch: int, latent_ch: int, factor: int, channels: int, blocks: int) -> nn.Sequential:
    """z (B, latent_ch, H / f, W / f) -> (B, out_ch, H, W), the encoder's mirror."""
    n = levels_of(factor)
    w = widths(channels, n)[::-1]
    layers = [nn.Conv2d(latent_ch, w[0], 3, padding=1), AEBlock(w[0], w[0])]
    for i in range(n + 1):
        layers += [AEBlock(w[max(i - 1, 0)] if b == 0 else w[i], w[i]) for b in range(blocks)]
        if i < n:
            layers.append(Upsample(w[i], True))
    layers += [norm(w[-1]), nn.SiLU(), nn.Conv2d(w[-1], out_ch, 3, padding=1)]
    return nn.Sequential(*layers)
