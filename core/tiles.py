"""Sampling canvases larger than the network's tile: a denoiser wrapper that runs the network on overlapping tiles
and blends their predictions at every step (MultiDiffusion, Bar-Tal et al. 2023, eq. 5 with smooth window weights), so
every sampler works on the whole canvas at once and neighbouring tiles agree: no seams. A source condition (SR3) is
cut into the same tiles; per-sample conditions (labels) are repeated per tile.
"""
from __future__ import annotations

import itertools

import torch
from torch import nn

from .conditions import cond_map
from .denoiser import Prediction


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile offsets along one axis covering [0, size): stride tile - overlap, the last tile flush with the end."""
    if size <= tile:
        return [0]
    stride = max(1, tile - overlap)
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def window(tile: int, overlap: int) -> torch.Tensor:
    """1-D blending weights: a linear ramp over the overlap at both ends, 1 inside (never 0)."""
    w = torch.ones(tile)
    if overlap > 0:
        ramp = torch.arange(1, overlap + 1, dtype=torch.float32) / (overlap + 1)
        w[:overlap] = ramp
        w[tile - overlap:] = ramp.flip(0)
    return w


class TiledDenoiser(nn.Module):
    """denoiser(x_t, t, cond) on a canvas (B, C, *spatial) of any size >= tile, through tiles of `tile` per spatial
    axis that overlap by `overlap`; x0, eps and the raw output are blended with window weights."""

    def __init__(self, denoiser, tile: int, overlap: int, batch_size: int = 64):
        super().__init__()
        if not 0 <= overlap < tile:
            raise ValueError(f"TiledDenoiser: overlap {overlap} must be in [0, tile={tile})")
        self.denoiser, self.tile, self.overlap, self.batch_size = denoiser, tile, overlap, batch_size
        self.schedule = denoiser.schedule

    def _boxes(self, spatial):
        if min(spatial) < self.tile:
            raise ValueError(f"TiledDenoiser: the canvas {tuple(spatial)} is smaller than the tile {self.tile}; pad it")
        return list(itertools.product(*[tile_starts(s, self.tile, self.overlap) for s in spatial]))

    def _cut(self, v, x_t, boxes):
        """(tiles * B, ...) of a tensor with the canvas's spatial shape, or of a per-sample tensor repeated."""
        if v.ndim == x_t.ndim and v.shape[2:] == x_t.shape[2:]:
            return torch.cat([v[(..., *[slice(o, o + self.tile) for o in box])] for box in boxes])
        return v.repeat(len(boxes), *[1] * (v.ndim - 1))

    def forward(self, x_t, t, cond=None) -> Prediction:
        B, spatial = x_t.shape[0], x_t.shape[2:]
        boxes = self._boxes(spatial)
        xs = self._cut(x_t, x_t, boxes)
        ts = torch.as_tensor(t, device=x_t.device, dtype=torch.float32).expand(B).repeat(len(boxes))
        cs = cond_map(lambda c: self._cut(c, x_t, boxes), cond)
        preds = [self.denoiser(xs[i:i + self.batch_size], ts[i:i + self.batch_size],
                               cond_map(lambda c: c[i:i + self.batch_size], cs))
                 for i in range(0, len(xs), self.batch_size)]
        w1 = window(self.tile, self.overlap).to(x_t)
        w = w1
        for _ in range(len(spatial) - 1):
            w = w[..., None] * w1
        out = {k: torch.zeros_like(x_t) for k in ("x0", "eps", "out")}
        total = torch.zeros(spatial, dtype=x_t.dtype, device=x_t.device)
        for k in out:
            parts = torch.cat([getattr(p, k) for p in preds]).chunk(len(boxes))
            for box, part in zip(boxes, parts):
                out[k][(..., *[slice(o, o + self.tile) for o in box])] += w * part
        for box in boxes:
            total[tuple(slice(o, o + self.tile) for o in box)] += w
        return Prediction(**{k: v / total for k, v in out.items()})
