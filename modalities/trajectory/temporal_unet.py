"""Diffuser's temporal U-Net and value network (Janner et al. 2022, Sec. 3.1 and Appendix C).

Residual temporal blocks (two Conv1d(kernel 5) -> GroupNorm(8) -> Mish, time embedding added after the
first), down-sampling along time by strided convolutions, up-sampling by transposed convolutions with
skip connections. Inputs follow the core contract (B, H, D) (horizon H, transition dim D); the network
transposes to (B, D, H) inside. H must be divisible by 2 ** (len(dim_mults) - 1).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer sinusoidal position embedding of (possibly fractional) timesteps (Vaswani et al. 2017)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - 1))
    a = t.float()[:, None] * freqs[None]
    return torch.cat([a.sin(), a.cos()], dim=-1)


class Conv1dBlock(nn.Sequential):
    """Conv1d -> GroupNorm -> Mish."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 5, groups: int = 8):
        if c_out % groups:
            raise ValueError(f"Conv1dBlock: {c_out} channels not divisible by GroupNorm groups {groups}")
        super().__init__(nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2), nn.GroupNorm(groups, c_out), nn.Mish())


class ResidualTemporalBlock(nn.Module):
    """Two Conv1dBlocks with the time embedding added after the first; a 1x1 residual (Diffuser, Fig. 2)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, kernel: int = 5):
        super().__init__()
        self.block1, self.block2 = Conv1dBlock(c_in, c_out, kernel), Conv1dBlock(c_out, c_out, kernel)
        self.time_mlp = nn.Sequential(nn.Mish(), nn.Linear(emb_dim, c_out))
        self.residual = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):
        h = self.block1(x) + self.time_mlp(emb)[:, :, None]
        return self.block2(h) + self.residual(x)


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding -> Linear(dim, 4 dim) -> Mish -> Linear(4 dim, dim)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 4), nn.Mish(), nn.Linear(dim * 4, dim))

    def forward(self, t):
        return self.mlp(sinusoidal_embedding(t, self.dim))


class ReturnsEmbedding(nn.Module):
    """Decision Diffuser's returns MLP (Ajay et al. 2023, Sec. 3.1): y (B, 1) -> Linear -> Mish -> Linear -> Mish ->
    Linear -> (B, dim), added to the time embedding. A NaN return is the null condition of classifier-free training
    (their Bernoulli mask): its embedding is zero."""

    def __init__(self, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(1, dim), nn.Mish(), nn.Linear(dim, 4 * dim), nn.Mish(), nn.Linear(4 * dim, dim))

    def forward(self, y):
        if y is None:
            raise ValueError("a returns-conditioned U-Net needs cond['returns'] (B, 1); NaN for unconditional")
        y = y.reshape(len(y), 1).float()
        known = ~torch.isnan(y)
        return self.mlp(torch.where(known, y, torch.zeros_like(y))) * known  # NaN never reaches the weights' gradients


def check_horizon(H: int, factor: int, where: str) -> None:
    if H % factor:
        ok = [k * factor for k in range(max(1, H // factor), H // factor + 2)]
        raise ValueError(f"{where}: horizon {H} is not divisible by the down-sampling factor {factor} "
                         f"(2 ** (len(dim_mults) - 1)); use e.g. {ok}")


class TemporalEncoder(nn.Module):
    """The U-Net's down path: per level two residual blocks then (except at the last level) a stride-2 conv."""

    def __init__(self, transition_dim: int, dim: int, dim_mults: Sequence[int], kernel: int = 5):
        super().__init__()
        dims = [transition_dim, *[dim * m for m in dim_mults]]
        self.levels = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == len(dim_mults) - 1
            self.levels.append(nn.ModuleList([ResidualTemporalBlock(c_in, c_out, dim, kernel),
                                              ResidualTemporalBlock(c_out, c_out, dim, kernel),
                                              nn.Identity() if last else nn.Conv1d(c_out, c_out, 3, 2, 1)]))
        self.dims, self.factor = dims, 2 ** (len(dim_mults) - 1)

    def forward(self, x, emb):
        skips = []
        for b1, b2, down in self.levels:
            x = b2(b1(x, emb), emb)
            skips.append(x)
            x = down(x)
        return x, skips


class TemporalUnet(nn.Module):
    """Diffuser's temporal U-Net: net(x_t (B, H, D), t (B,), cond) -> (B, H, D)."""

    channel_axis = -1  # (B, H, D): transitions are channel-last

    def __init__(self, transition_dim: int, dim: int = 32, dim_mults: Sequence[int] = (1, 4, 8), kernel: int = 5,
                 z_channels: int = 0, returns_cond: bool = False):
        super().__init__()
        self.time, self.z_channels = TimeEmbedding(dim), z_channels  # z: a DDGAN latent after the D dims
        self.returns = ReturnsEmbedding(dim) if returns_cond else None
        self.encoder = TemporalEncoder(transition_dim + z_channels, dim, dim_mults, kernel)
        dims, mid = self.encoder.dims, self.encoder.dims[-1]
        self.mid1, self.mid2 = ResidualTemporalBlock(mid, mid, dim, kernel), ResidualTemporalBlock(mid, mid, dim, kernel)
        self.ups = nn.ModuleList()
        pairs = list(zip(dims[1:-1], dims[2:]))  # (c_in, c_out) of every level but the first, reversed below
        for i, (c_in, c_out) in enumerate(reversed(pairs)):
            self.ups.append(nn.ModuleList([ResidualTemporalBlock(2 * c_out, c_in, dim, kernel),
                                           ResidualTemporalBlock(c_in, c_in, dim, kernel),
                                           nn.ConvTranspose1d(c_in, c_in, 4, 2, 1)]))
        self.final = nn.Sequential(Conv1dBlock(dim, dim, kernel), nn.Conv1d(dim, transition_dim, 1))
        self.factor = self.encoder.factor
        self.transition_dim = transition_dim

    def forward(self, x, t, cond=None, returns=None):
        check_horizon(x.shape[1], self.factor, "TemporalUnet")
        emb = self.time(t)
        if self.returns is not None:
            emb = emb + self.returns(returns)
        h, skips = self.encoder(x.transpose(1, 2), emb)
        h = self.mid2(self.mid1(h, emb), emb)
        for b1, b2, up in self.ups:  # deepest skip first; the shallowest one is unused, as in Diffuser
            h = up(b2(b1(torch.cat([h, skips.pop()], 1), emb), emb))
        return self.final(h).transpose(1, 2)


class ValueNet(nn.Module):
    """Diffuser's value function J(x_t, t): the U-Net's encoder, flattened, then an MLP with the time embedding."""

    def __init__(self, transition_dim: int, horizon: int, dim: int = 32, dim_mults: Sequence[int] = (1, 4, 8),
                 kernel: int = 5):
        super().__init__()
        self.time = TimeEmbedding(dim)
        self.encoder = TemporalEncoder(transition_dim, dim, dim_mults, kernel)
        check_horizon(horizon, self.encoder.factor, "ValueNet")
        self.horizon = horizon
        fc = self.encoder.dims[-1] * (horizon // self.encoder.factor)
        self.head = nn.Sequential(nn.Linear(fc + dim, fc // 2), nn.Mish(), nn.Linear(fc // 2, 1))

    def forward(self, x, t, cond=None):
        if x.shape[1] != self.horizon:
            raise ValueError(f"ValueNet: horizon {x.shape[1]} != the horizon {self.horizon} it was built for")
        emb = self.time(t)
        h, _ = self.encoder(x.transpose(1, 2), emb)
        return self.head(torch.cat([h.flatten(1), emb], 1)).squeeze(-1)


def apply_conditioning(x: torch.Tensor, cond: torch.Tensor, action_dim: int) -> torch.Tensor:
    """Overwrite the states of step 0 (and step H-1 when cond holds two) with clean values (Diffuser's apply_conditioning).

    cond is (B, k, S) normalised states: k = 1 (start) or 2 (start, goal).
    """
    if cond.ndim != 3 or cond.shape[1] not in (1, 2) or cond.shape[2] != x.shape[2] - action_dim:
        raise ValueError(f"apply_conditioning: cond shape {tuple(cond.shape)}; expected (B, 1 or 2, {x.shape[2] - action_dim})")
    x = x.clone()
    x[:, 0, action_dim:] = cond[:, 0]
    if cond.shape[1] == 2:
        x[:, -1, action_dim:] = cond[:, 1]
    return x


class ConditionedTemporalUnet(nn.Module):
    """The temporal U-Net seeing clean start (and goal) states in x_t, as Diffuser trains and samples in mazes; with
    returns_cond (Decision Diffuser) cond is {"states": (B, k, S), "returns": (B, 1)}."""

    def __init__(self, transition_dim: int, action_dim: int, dim: int = 32, dim_mults: Sequence[int] = (1, 4, 8),
                 kernel: int = 5, z_channels: int = 0, returns_cond: bool = False):
        super().__init__()
        self.unet = TemporalUnet(transition_dim, dim, dim_mults, kernel, z_channels, returns_cond)
        self.action_dim, self.returns_cond = action_dim, returns_cond
        self.factor, self.z_channels, self.channel_axis = self.unet.factor, z_channels, -1

    def forward(self, x, t, cond=None):
        if self.returns_cond:
            if not isinstance(cond, dict) or "returns" not in cond:
                raise ValueError("a returns-conditioned trajectory model needs cond = {'states': ..., 'returns': ...}")
            cond, returns = cond.get("states"), cond["returns"]
            return self.unet(x if cond is None else apply_conditioning(x, cond, self.action_dim), t, returns=returns)
        if cond is not None and self.z_channels:  # the states go into the transitions, not into a DDGAN latent
            D = self.unet.transition_dim
            x = torch.cat([apply_conditioning(x[..., :D], cond, self.action_dim), x[..., D:]], -1)
        elif cond is not None:
            x = apply_conditioning(x, cond, self.action_dim)
        return self.unet(x, t)
