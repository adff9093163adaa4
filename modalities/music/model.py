"""RollUNet: a 2D U-Net over (time x pitch) for piano rolls (Polyffusion, Min et al. 2023), with chord cross-attention.

Built from the image modality's U-Net blocks (deliberate reuse through imports, see DESIGN.md): timestep
embedding, residual blocks, self-attention, cross-attention, down/upsampling. The chord sequence
(B, beats, 36) is embedded per beat by a small MLP and enters through a cross-attention block after every
self-attention block (Rombach et al. 2022, Sec. 3.3).
"""
from __future__ import annotations

import torch
from torch import nn

from diffsuite.modalities.image import blocks as B


class _Level(nn.Module):
    """Residual blocks at one resolution, each followed by self- and cross-attention where enabled."""

    def __init__(self, chs: list[tuple[int, int]], emb_dim, attn, heads, cond_dim, dropout):
        super().__init__()
        self.res = nn.ModuleList(B.ResBlock(i, o, emb_dim, dropout=dropout) for i, o in chs)
        self.attn = nn.ModuleList(B.AttentionBlock(o, heads) if attn else nn.Identity() for _, o in chs)
        self.cross = nn.ModuleList(B.CrossAttentionBlock(o, cond_dim, heads) for _, o in chs) \
            if attn and cond_dim else None


class RollUNet(nn.Module):
    """net(x_t (B, 2, T, P), t (B,), cond (B, beats, 36) or None) -> (B, 2, T, P)."""

    def __init__(self, channels: int = 64, channel_mults=(1, 2, 4, 4), num_res_blocks: int = 2,
                 attention_levels=(2, 3), heads: int = 4, dropout: float = 0.0, cond_dim: int | None = 36,
                 in_ch: int = 2):
        super().__init__()
        self.channels, self.cond_dim = channels, cond_dim
        emb = channels * 4
        self.t_mlp = nn.Sequential(nn.Linear(channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.inp = nn.Conv2d(in_ch, channels, 3, padding=1)
        ctx = emb if cond_dim else None  # chord tokens are embedded to the timestep-embedding width
        self.chord_mlp = nn.Sequential(nn.Linear(cond_dim, emb), nn.SiLU(), nn.Linear(emb, emb)) if cond_dim else None
        widths = [channels * m for m in channel_mults]
        self.down, self.downsample, skips, ch = nn.ModuleList(), nn.ModuleList(), [channels], channels
        for i, w in enumerate(widths):
            pairs = []
            for _ in range(num_res_blocks):
                pairs.append((ch, w))
                ch = w
                skips.append(ch)
            self.down.append(_Level(pairs, emb, i in attention_levels, heads, ctx, dropout))
            last = i == len(widths) - 1
            self.downsample.append(nn.Identity() if last else B.Downsample(ch))
            if not last:
                skips.append(ch)
        self.mid = _Level([(ch, ch), (ch, ch)], emb, True, heads, ctx, dropout)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            pairs = []
            for _ in range(num_res_blocks + 1):
                pairs.append((ch + skips.pop(), w))
                ch = w
            self.up.append(_Level(pairs, emb, i in attention_levels, heads, ctx, dropout))
            self.upsample.append(B.Upsample(ch) if i > 0 else nn.Identity())
        self.out = nn.Sequential(B.norm(ch), nn.SiLU(), nn.Conv2d(ch, in_ch, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    @staticmethod
    def _run(level: _Level, h, e, cond, i, skips=None):
        if skips is not None:
            h = torch.cat([h, skips.pop()], dim=1)
        h = level.attn[i](level.res[i](h, e))
        if level.cross is not None and cond is not None:
            h = level.cross[i](h, cond)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if self.cond_dim and cond is not None and (cond.ndim != 3 or cond.shape[-1] != self.cond_dim):
            raise ValueError(f"RollUNet: cond must be (B, beats, {self.cond_dim}), got {tuple(cond.shape)}")
        e = self.t_mlp(B.timestep_embedding(t.float(), self.channels))
        if cond is not None and self.chord_mlp is not None:
            cond = self.chord_mlp(cond)
        else:
            cond = None
        h = self.inp(x)
        skips = [h]
        for level, down in zip(self.down, self.downsample):
            for i in range(len(level.res)):
                h = self._run(level, h, e, cond, i)
                skips.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                skips.append(h)
        for i in range(len(self.mid.res)):
            h = self._run(self.mid, h, e, cond, i)
        for level, up in zip(self.up, self.upsample):
            for i in range(len(level.res)):
                h = self._run(level, h, e, cond, i, skips)
            h = up(h)
        return self.out(h)
