"""A new modality in under 100 lines: 2-D point clouds (two moons, a Gaussian mixture). The guide to reusing the
core: a modality supplies only a network, a dataset and a sample shape (optionally how to save samples, a DDGAN
discriminator); schedules, losses, samplers, guidance, trainer, checkpoints and CLI come from diffsuite.core."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from diffsuite.core.config import valid
from diffsuite.core.ddgan import MLPDiscriminator
from diffsuite.core.task import Task
from diffsuite.core.utils import sinusoidal_features


@dataclass
class Toy2DModel:
    hidden: int = valid(128, min=1)
    layers: int = valid(3, min=1)
    t_dim: int = valid(32, min=2)
    z_channels: int = valid(0, min=0)  # a DDGAN generator's latent dims (0: a plain denoiser)


@dataclass
class Toy2DData:
    kind: str = valid("moons", choices=("moons", "gmm"))
    n: int = valid(8000, min=1)
    noise: float = valid(0.05, min=0)
    seed: int = 0


class MLPDenoiser(nn.Module):
    """An MLP on [x, sinusoidal embedding of t] (Ho et al. 2020's time embedding, for vectors)."""

    def __init__(self, dim=2, hidden=128, layers=3, t_dim=32, z_channels=0):
        super().__init__()
        self.t_dim, self.z_channels = t_dim, z_channels
        blocks, width = [], dim + z_channels + t_dim
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        self.mlp = nn.Sequential(*blocks, nn.Linear(hidden, dim))

    def forward(self, x, t, cond=None):
        return self.mlp(torch.cat([x, sinusoidal_features(t, self.t_dim).to(x.dtype)], dim=1))


def make_points(kind: str, n: int, noise: float, seed: int) -> torch.Tensor:
    """Two interleaved half circles, or a mixture of 8 Gaussians on a circle; roughly unit scale."""
    g = torch.Generator().manual_seed(seed)
    if kind == "moons":
        u = torch.rand(n, generator=g) * math.pi
        upper = torch.rand(n, generator=g) < 0.5
        x = torch.where(upper, torch.cos(u), 1 - torch.cos(u))
        y = torch.where(upper, torch.sin(u), 0.5 - torch.sin(u))
        pts = torch.stack([x - 0.5, y - 0.25], 1)
    elif kind == "gmm":
        k = torch.randint(0, 8, (n,), generator=g).float() * (2 * math.pi / 8)
        pts = 1.5 * torch.stack([k.cos(), k.sin()], 1)
    else:
        raise ValueError(f"toy2d data.kind: unknown {kind!r}; valid: moons, gmm")
    return pts + noise * torch.randn(n, 2, generator=g)


class Toy2DTask(Task):
    name, ModelConfig, DataConfig = "toy2d", Toy2DModel, Toy2DData

    def build_net(self, model, diffusion):
        return MLPDenoiser(2, model.hidden, model.layers, model.t_dim, model.z_channels)

    def build_discriminator(self, model, data, gan):
        return MLPDiscriminator(2, gan.d_width, gan.d_levels, model.t_dim)

    def build_dataset(self, data, split="train"):
        seed = data.seed + {"train": 0, "val": 1, "test": 2}[split]
        return torch.utils.data.TensorDataset(make_points(data.kind, data.n, data.noise, seed))

    def sample_shape(self, model, data):
        return (2,)

    def save_samples(self, x, cond, out_dir, cfg):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        (out_dir := Path(out_dir)).mkdir(parents=True, exist_ok=True)
        ref = make_points(cfg.data.kind, 2000, cfg.data.noise, cfg.data.seed + 2)
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.scatter(*ref.T, s=3, c="lightgray", label="data")
        ax.scatter(*x.detach().cpu().T, s=3, c="tab:blue", label="samples")
        ax.set_aspect("equal")
        ax.legend(loc="upper right")
        fig.savefig(out_dir / "samples.png", dpi=100)
        plt.close(fig)
        return {"png": str(out_dir / "samples.png"), **super().save_samples(x, cond, out_dir, cfg)}
