"""RollUNet: a 2D U-Net over (time x pitch) for piano rolls (Polyffusion, Min et al. 2023), with chord cross-attention.

Built from the image modality's U-Net blocks (deliberate reuse through imports, see DESIGN.md): timestep
embedding, residual blocks, self-attention, cross-attention, down/upsampling. The chord sequence
(B, beats, 36) is embedded per beat by a small MLP and enters through a cross-attention block after every
self-attention block (Rombach et al. 2022, Sec. 3.3).

Two options make a small model learn fast on a CPU:
- `patch` > 1 folds patch x patch cells of the roll into channels first (space-to-depth, as in the patch
  embedding of Peebles & Xie 2023) and unfolds them at the output, so the finest level runs at 1/patch^2 of
  the cells;
- `chord_map` also feeds the chords as three pitch-aligned input planes (per time step and pitch: is the
  pitch class in the beat's chroma, is it the root, is it the bass; the null condition gives planes of -1),
  so a convolution sees which pitches the chord allows where it writes them. This needs `pitch_lo`, the
  roll's lowest MIDI pitch, to align pitch classes with the pitch axis. In a latent model (core.latent) the planes
  are drawn at the roll's size, chord_fold = f times the latent grid, and folded into channels like the patches.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diffsuite.modalities.image import blocks as B


class FeedForward(nn.Module):
    """Position-wise GEGLU feed-forward with a residual, the last layer of a spatial transformer block
    (Shazeer 2020; Rombach et al. 2022, whose U-Net Polyffusion uses): x + W2 (a * GELU(g)), (a, g) = W1 norm(x)."""

    def __init__(self, ch: int, mult: int = 4):
        super().__init__()
        self.norm = B.norm(ch)
        self.proj_in = nn.Conv1d(ch, 2 * mult * ch, 1)
        self.proj_out = B.zero_module(nn.Conv1d(mult * ch, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        a, g = self.proj_in(self.norm(x).reshape(b, c, -1)).chunk(2, dim=1)
        return x + self.proj_out(a * F.gelu(g)).reshape(b, c, *spatial)


class _Level(nn.Module):
    """Residual blocks at one resolution, each followed by self-attention, cross-attention and a feed-forward
    (ff_mult > 0) where attention is enabled."""

    def __init__(self, chs: list[tuple[int, int]], emb_dim, attn, heads, cond_dim, dropout, ff_mult=0):
        super().__init__()
        self.res = nn.ModuleList(B.ResBlock(i, o, emb_dim, dropout=dropout) for i, o in chs)
        self.attn = nn.ModuleList(B.AttentionBlock(o, heads) if attn else nn.Identity() for _, o in chs)
        self.cross = nn.ModuleList(B.CrossAttentionBlock(o, cond_dim, heads) for _, o in chs) \
            if attn and cond_dim else None
        self.ff = nn.ModuleList(FeedForward(o, ff_mult) for _, o in chs) if attn and ff_mult else None


class RollUNet(nn.Module):
    """net(x_t (B, 2, T, P), t (B,), cond (B, beats, 36) or None) -> (B, 2, T, P)."""

    def __init__(self, channels: int = 64, channel_mults=(1, 2, 4, 4), num_res_blocks: int = 2,
                 attention_levels=(2, 3), heads: int = 4, dropout: float = 0.0, cond_dim: int | None = 36,
                 in_ch: int = 2, patch: int = 1, chord_map: bool = False, pitch_lo: int | None = None,
                 ff_mult: int = 0, z_channels: int = 0, chord_fold: int = 1):
        super().__init__()
        if chord_map and (not cond_dim or pitch_lo is None):
            raise ValueError("RollUNet: chord_map needs chord conditioning (cond_dim) and pitch_lo (the roll's lowest MIDI pitch)")
        self.channels, self.cond_dim, self.patch, self.in_ch = channels, cond_dim, patch, in_ch
        self.chord_map, self.pitch_lo, self.chord_fold = chord_map, pitch_lo, chord_fold
        self.z_channels = z_channels  # a DDGAN generator's latent channels after the roll's (core.ddgan)
        self.n_down = len(channel_mults) - 1
        emb = channels * 4
        self.t_mlp = nn.Sequential(nn.Linear(channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        in_planes = in_ch + z_channels + 3 * chord_map * chord_fold ** 2  # x_t, a DDGAN's z, folded chord planes
        self.inp = nn.Conv2d(in_planes * patch * patch, channels, 3, padding=1)
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
            self.down.append(_Level(pairs, emb, i in attention_levels, heads, ctx, dropout, ff_mult))
            last = i == len(widths) - 1
            self.downsample.append(nn.Identity() if last else B.Downsample(ch))
            if not last:
                skips.append(ch)
        self.mid = _Level([(ch, ch), (ch, ch)], emb, True, heads, ctx, dropout, ff_mult)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            pairs = []
            for _ in range(num_res_blocks + 1):
                pairs.append((ch + skips.pop(), w))
                ch = w
            self.up.append(_Level(pairs, emb, i in attention_levels, heads, ctx, dropout, ff_mult))
            self.upsample.append(B.Upsample(ch) if i > 0 else nn.Identity())
        self.out = nn.Sequential(B.norm(ch), nn.SiLU(), nn.Conv2d(ch, in_ch * patch * patch, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    @staticmethod
    def _run(level: _Level, h, e, cond, i, skips=None):
        if skips is not None:
            h = torch.cat([h, skips.pop()], dim=1)
        h = level.attn[i](level.res[i](h, e))
        if level.cross is not None and cond is not None:
            h = level.cross[i](h, cond)
        return level.ff[i](h) if level.ff is not None else h

    def chord_planes(self, cond: torch.Tensor, T: int, P: int) -> torch.Tensor:
        """(B, beats, 36) root / chroma / bass per beat -> (B, 3, T, P): each pitch's class looked up per time step."""
        if T % cond.shape[1]:
            raise ValueError(f"RollUNet: {T} time steps do not split into the condition's {cond.shape[1]} beats")
        pc = (torch.arange(P, device=cond.device) + self.pitch_lo) % 12  # (P,)
        per_step = cond.repeat_interleave(T // cond.shape[1], dim=1)  # (B, T, 36)
        planes = [per_step[..., o:o + 12][..., pc] for o in (12, 0, 24)]  # chroma, root, bass: (B, T, P) each
        return torch.stack(planes, dim=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if self.cond_dim and cond is not None and (cond.ndim != 3 or cond.shape[-1] != self.cond_dim):
            raise ValueError(f"RollUNet: cond must be (B, beats, {self.cond_dim}), got {tuple(cond.shape)}")
        mult = self.patch * 2 ** self.n_down
        if x.shape[-1] % mult or x.shape[-2] % mult:
            raise ValueError(f"RollUNet: time and pitch sizes {tuple(x.shape[-2:])} must be multiples of {mult} "
                             f"(patch {self.patch} x 2^{self.n_down} downsamplings)")
        e = self.t_mlp(B.timestep_embedding(t.float(), self.channels))
        if self.chord_map:  # no condition reads as the null condition (planes of -1)
            T, P = (s * self.chord_fold for s in x.shape[-2:])
            planes = self.chord_planes(cond, T, P) if cond is not None else \
                -torch.ones(x.shape[0], 3, T, P, device=x.device)
            if self.chord_fold > 1:  # drawn at the roll's size, folded to the latent's (space-to-depth)
                planes = F.pixel_unshuffle(planes, self.chord_fold)
            x = torch.cat([x, planes.to(x.dtype)], dim=1)
        if cond is not None and self.chord_mlp is not None:
            cond = self.chord_mlp(cond)
        else:
            cond = None
        h = self.inp(F.pixel_unshuffle(x, self.patch) if self.patch > 1 else x)
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
        h = self.out(h)
        return F.pixel_shuffle(h, self.patch) if self.patch > 1 else h
