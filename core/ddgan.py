"""Denoising diffusion GANs (Xiao, Kreis & Vahdat 2022): a few-step chain whose reverse steps are conditional GANs.

The generator is a denoiser in the core contract whose network also reads a latent z (extra input channels along the
network's channel axis, `Denoiser.z_channels`): x0' = G(x_t, z, t). The next state is drawn from the true posterior
x'_{t-1} ~ q(x_{t-1} | x_t, x0') (eq. 7), so G only has to produce a plausible clean sample; a time-conditional
discriminator D(x_{t-1}, x_t, t) tells real pairs (x_{t-1} ~ q(x_{t-1} | x0), x_t ~ q(x_t | x_{t-1})) from generated
ones (eq. 6). Losses: the non-saturating GAN loss with R1 regularisation on real data (Sec. 4, Appendix C).

Indices follow the core (t = 0..T-1, t = -1 the clean data): the chain's T steps are the schedule's T steps, so a
DDGAN recipe sets diffusion.T to 2 or 4 (schedule `vp_sde`, the paper's discretised VP SDE).

`DenoisingDiffusionGAN` is a loss object the trainer calls like DiffusionLoss: it takes the discriminator's step
itself (own Adam optimiser, R1 penalty, gradients averaged over processes) and returns the generator's per-sample loss
for the trainer to step on; the discriminator and its optimiser state are saved in every checkpoint (the trainer's
"loss" group), so a resume is exact.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import flatten_optimizer_state, unflatten_optimizer_state
from .losses import q_posterior
from .parameterization import q_sample
from .utils import append_dims, randn, sinusoidal_features


def latent_shape(denoiser, x_shape) -> tuple | None:
    """The shape of z for a batch of x_shape, or None when the denoiser (or what it wraps) reads no latent."""
    d = denoiser
    while d is not None and not hasattr(d, "z_channels"):
        d = getattr(d, "denoiser", None)
    if d is None or not d.z_channels:
        return None
    shape = list(x_shape)
    shape[d.channel_axis] = d.z_channels
    return tuple(shape)


def q_sample_pair(schedule, x0, t, generator):
    """Real pairs (x_{t-1}, x_t): x_{t-1} ~ q(x_{t-1} | x0) (x0 itself at t = 0), x_t ~ q(x_t | x_{t-1}) (DDPM eq. 2, 4)."""
    ab_prev = schedule.alpha_bar_at(t.double() - 1).to(x0.device, x0.dtype)
    beta = schedule.betas.to(x0.device, x0.dtype)[t.long()]
    n1, n2 = randn(x0.shape, generator, x0.device, x0.dtype), randn(x0.shape, generator, x0.device, x0.dtype)
    x_prev = q_sample(x0, ab_prev, n1)
    x_t = append_dims((1 - beta).sqrt(), x0.ndim) * x_prev + append_dims(beta.sqrt(), x0.ndim) * n2
    return x_prev, x_t


def posterior_sample(schedule, x0, x_t, t, generator):
    """x_{t-1} ~ q(x_{t-1} | x_t, x0) = N(mu_tilde, beta_tilde) (DDPM eq. 6-7); at t = 0 the mean, which is x0."""
    mean, log_var = q_posterior(schedule, x0, x_t, t.long())  # (its log-variance at t = 0 is clipped: unused there)
    noise = randn(x0.shape, generator, x0.device, x0.dtype)
    return mean + (0.5 * log_var).exp() * append_dims((t > 0).to(x0.dtype), x0.ndim) * noise


def r1_penalty(d_real: torch.Tensor, x_real: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): ||grad_x D(x)||^2 on real data, per sample (keeps the graph for backward)."""
    (g,) = torch.autograd.grad(d_real.sum(), x_real, create_graph=True)
    return g.reshape(g.shape[0], -1).pow(2).sum(1)


class DenoisingDiffusionGAN:
    """The DDGAN objective (Xiao et al. 2022, eq. 6 with the non-saturating loss, Appendix C): per sample t ~ U{0..T-1},
    a real pair (x_{t-1}, x_t), z ~ N(0, I), x0' = G(x_t, z, t) and x'_{t-1} ~ q(x_{t-1} | x_t, x0').

    Discriminator step (taken inside the call): softplus(-D(x_{t-1}, x_t, t)) + softplus(D(x'_{t-1}, x_t, t))
    + r1_gamma / 2 * ||grad_{x_{t-1}} D(x_{t-1}, x_t, t)||^2; generator loss returned: softplus(-D(x'_{t-1}, x_t, t)).
    The discriminator is called as D(x_prev, x_t, t, cond) -> logits (B,)."""

    def __init__(self, discriminator: nn.Module, r1_gamma: float = 0.05, lr: float = 1.25e-4,
                 betas: tuple = (0.5, 0.9)):
        self.D, self.r1_gamma = discriminator, float(r1_gamma)
        self.opt = torch.optim.Adam(self.D.parameters(), lr=lr, betas=tuple(betas))
        self.last = {}  # the last call's D loss terms, for logging

    # ---- state, saved by the trainer as the checkpoint's "loss" group
    def state_dict(self) -> dict:
        tensors, _ = flatten_optimizer_state(self.opt.state_dict())
        return {**{f"D.{k}": v.detach().clone() for k, v in self.D.state_dict().items()},
                **{f"opt.{k}": v.detach().clone() for k, v in tensors.items()}}

    def load_state_dict(self, sd: dict) -> None:
        self.D.load_state_dict({k[2:]: v for k, v in sd.items() if k.startswith("D.")})
        opt = {k[4:]: v for k, v in sd.items() if k.startswith("opt.")}
        if opt:
            meta = {"param_groups": self.opt.state_dict()["param_groups"], "scalars": {}}
            self.opt.load_state_dict(unflatten_optimizer_state(opt, meta))

    def _to(self, device) -> None:
        if next(self.D.parameters()).device != device:
            self.D.to(device)
            self.opt.load_state_dict(self.opt.state_dict())  # moves the optimiser state along

    def _discriminator_step(self, x_prev, x_fake, x_t, t, cond) -> None:
        self.D.requires_grad_(True)
        x_real = x_prev.detach().requires_grad_(True)
        d_real = self.D(x_real, x_t, t, cond).float()
        d_fake = self.D(x_fake.detach(), x_t, t, cond).float()
        loss = F.softplus(-d_real) + F.softplus(d_fake)
        r1 = r1_penalty(d_real, x_real).float() if self.r1_gamma > 0 else torch.zeros_like(loss)
        (loss + 0.5 * self.r1_gamma * r1).mean().backward()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
            for p in self.D.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= world
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.D.requires_grad_(False)
        self.last = {"d_loss": loss.detach().mean(), "r1": r1.detach().mean()}

    def __call__(self, generator, x0, cond=None, generator_rng=None):
        G = generator.module if hasattr(generator, "module") else generator
        sch = G.schedule
        self._to(x0.device)
        g = generator_rng
        t = torch.randint(0, sch.T, (x0.shape[0],), generator=g, device=g.device if g else None).to(x0.device)
        x_prev, x_t = q_sample_pair(sch, x0, t, g)
        z_shape = latent_shape(G, x0.shape)
        z = randn(z_shape, g, x0.device, x0.dtype) if z_shape else None
        x0_fake = generator(x_t, t.float(), cond, z=z).x0
        x_fake = posterior_sample(sch, x0_fake, x_t, t, g)
        self._discriminator_step(x_prev, x_fake, x_t, t, cond)
        return F.softplus(-self.D(x_fake, x_t, t, cond).float()), t


class MLPDiscriminator(nn.Module):
    """D(x_{t-1}, x_t, t) for vectors (B, D): an MLP on [x_{t-1}, x_t, time features] with LeakyReLU (Xiao et al. 2022's
    toy discriminator, a time-conditional MLP)."""

    def __init__(self, dim: int, hidden: int = 128, layers: int = 3, t_dim: int = 32):
        super().__init__()
        self.t_dim, blocks, width = t_dim, [], 2 * dim + t_dim
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.LeakyReLU(0.2)]
            width = hidden
        self.mlp = nn.Sequential(*blocks, nn.Linear(hidden, 1))

    def forward(self, x_prev, x_t, t, cond=None):
        return self.mlp(torch.cat([x_prev, x_t, sinusoidal_features(t, self.t_dim).to(x_t.dtype)], 1)).squeeze(1)


class ConvDiscriminator(nn.Module):
    """D(x_{t-1}, x_t, t[, class]) for 1-D or 2-D signals: [x_{t-1}, x_t] stacked on the channel axis, stride-2
    convolution blocks with the time embedding added per block (Xiao et al. 2022, Appendix C: a time-conditional
    down-sampling network), global sum pooling, a linear logit, plus a projection term <embed(y), h> for class labels
    (Miyato & Koyama 2018) when `num_classes` is set. `channel_axis` -1 reads channel-last inputs (B, L, C)."""

    def __init__(self, dims: int, channels: int, width: int = 32, levels: int = 3, t_dim: int = 64,
                 num_classes: int | None = None, channel_axis: int = 1):
        super().__init__()
        if dims not in (1, 2):
            raise ValueError(f"ConvDiscriminator: dims must be 1 or 2, got {dims}")
        Conv = nn.Conv1d if dims == 1 else nn.Conv2d
        self.channel_axis, self.t_dim = channel_axis, t_dim
        self.inp = Conv(2 * channels, width, 3, padding=1)
        self.blocks, self.temb, c = nn.ModuleList(), nn.ModuleList(), width
        for i in range(levels):
            c_out = width * 2 ** min(i + 1, 3)
            self.temb.append(nn.Linear(t_dim, c))
            self.blocks.append(nn.Sequential(nn.LeakyReLU(0.2), Conv(c, c_out, 3, padding=1), nn.LeakyReLU(0.2),
                                             Conv(c_out, c_out, 4, stride=2, padding=1)))
            c = c_out
        self.t_mlp = nn.Sequential(nn.Linear(t_dim, t_dim), nn.LeakyReLU(0.2))
        self.head = nn.Linear(c, 1)
        self.embed = nn.Embedding(num_classes + 1, c) if num_classes else None  # + the null class (label -1)

    def forward(self, x_prev, x_t, t, cond=None):
        x = torch.cat([x_prev, x_t], dim=self.channel_axis)
        if self.channel_axis != 1:
            x = x.movedim(self.channel_axis, 1)
        e = self.t_mlp(sinusoidal_features(t, self.t_dim).to(x.dtype))
        h = self.inp(x)
        for temb, block in zip(self.temb, self.blocks):
            h = block(h + append_dims(temb(e), h.ndim))
        h = F.leaky_relu(h, 0.2).flatten(2).sum(2)
        out = self.head(h).squeeze(1)
        if self.embed is not None and isinstance(cond, torch.Tensor) and cond.ndim == 1:
            y = torch.where(cond < 0, torch.full_like(cond, self.embed.num_embeddings - 1), cond).long()
            out = out + (self.embed(y) * h).sum(1)
        return out
