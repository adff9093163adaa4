"""Noise schedules as data: beta builders are plain functions, `Schedule` holds every derived quantity.

Notation follows Ho et al. (2020, DDPM): alpha_t = 1 - beta_t, alpha_bar_t = prod_{s<=t} alpha_s,
the posterior q(x_{t-1} | x_t, x_0) = N(mu_tilde, beta_tilde) with
mu_tilde = posterior_mean_coef1 * x_0 + posterior_mean_coef2 * x_t (DDPM eq. 6-7).
Indices run t = 0..T-1 (paper's t = 1..T); t = -1 denotes clean data (alpha_bar = 1).
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch


def linear_betas(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Linear betas (Ho et al. 2020, Sec. 4: T=1000, 1e-4 to 0.02)."""
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def scaled_linear_betas(T: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """Linear in sqrt(beta) (the latent-diffusion / Stable Diffusion schedule)."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2


def cosine_betas(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021, eq. 17): alpha_bar(t) = f(t)/f(0), betas capped at 0.999."""
    t = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(max=max_beta)


def sigmoid_betas(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, k: float = 6.0) -> torch.Tensor:
    """Sigmoid-shaped betas between beta_start and beta_end (as used by GeoDiff and diffusers)."""
    x = torch.linspace(-k, k, T, dtype=torch.float64)
    return torch.sigmoid(x) * (beta_end - beta_start) + beta_start


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Rescale so alpha_bar_T = 0 while keeping sqrt(alpha_bar_0) (Lin et al. 2024, Algorithm 1)."""
    sqrt_ab = torch.cumprod(1 - betas.double(), 0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    alpha_bar = sqrt_ab**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


def vp_sde_betas(T: int = 4, beta_start: float = 0.1, beta_end: float = 20.0) -> torch.Tensor:
    """The VP SDE's beta(s) = beta_min + s (beta_max - beta_min) on s in [0, 1] (Song et al. 2021), discretised at
    s_i = i / T: alpha_bar(s) = exp(-beta_min s - (beta_max - beta_min) s^2 / 2), beta_i = 1 - alpha_bar(s_i) /
    alpha_bar(s_{i-1}); the few-step chains of denoising diffusion GANs (Xiao et al. 2022, Sec. 5, T = 2 or 4).
    beta_start / beta_end are beta_min / beta_max."""
    s = torch.arange(T + 1, dtype=torch.float64) / T
    log_ab = -beta_start * s - 0.5 * (beta_end - beta_start) * s**2
    return (1 - torch.exp(log_ab[1:] - log_ab[:-1])).clamp(max=0.999)


def geometric_betas(T: int = 10, beta_start: float = 0.01, beta_end: float = 10.0) -> torch.Tensor:
    """NCSN's noise levels (Song & Ermon 2019, Sec. 4.2): sigma_1 > ... > sigma_L a geometric sequence, here from
    sigma_min = beta_start (t = 0) to sigma_max = beta_end (t = T - 1), as the VP schedule with the same VE sigmas:
    alpha_bar_t = 1 / (1 + sigma_t^2), beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}."""
    if not 0 < beta_start < beta_end:
        raise ValueError(f"geometric schedule: need 0 < sigma_min (beta_start) < sigma_max (beta_end), got "
                         f"{beta_start}, {beta_end}")
    sigma = torch.logspace(math.log10(beta_start), math.log10(beta_end), T, dtype=torch.float64) if T > 1 else \
        torch.tensor([beta_end], dtype=torch.float64)
    ab = 1 / (1 + sigma**2)
    return 1 - ab / torch.cat([ab.new_ones(1), ab[:-1]])


BETA_BUILDERS: dict[str, Callable[..., torch.Tensor]] = {
    "geometric": geometric_betas,
    "linear": linear_betas,
    "vp_sde": vp_sde_betas,
    "scaled_linear": scaled_linear_betas,
    "cosine": cosine_betas,
    "sigmoid": sigmoid_betas,
}


@dataclass
class Schedule:
    """A discrete diffusion schedule and all its derived quantities (float64 tensors, indexed 0..T-1)."""

    betas: torch.Tensor
    alphas: torch.Tensor = field(init=False)
    alpha_bar: torch.Tensor = field(init=False)
    alpha_bar_prev: torch.Tensor = field(init=False)
    beta_tilde: torch.Tensor = field(init=False)
    log_beta_tilde_clipped: torch.Tensor = field(init=False)
    posterior_mean_coef1: torch.Tensor = field(init=False)
    posterior_mean_coef2: torch.Tensor = field(init=False)
    snr: torch.Tensor = field(init=False)
    sigma: torch.Tensor = field(init=False)

    def __post_init__(self):
        b = torch.as_tensor(self.betas, dtype=torch.float64).flatten()
        if b.numel() < 1 or not torch.isfinite(b).all() or (b <= 0).any() or (b > 1).any():
            raise ValueError(f"Schedule: betas must be a non-empty 1-D tensor in (0, 1], got shape {tuple(b.shape)} "
                             f"with range [{b.min().item() if b.numel() else 'n/a'}, {b.max().item() if b.numel() else 'n/a'}]")
        self.betas = b
        self.alphas = 1 - b
        self.alpha_bar = torch.cumprod(self.alphas, 0)
        self.alpha_bar_prev = torch.cat([b.new_ones(1), self.alpha_bar[:-1]])
        self.beta_tilde = b * (1 - self.alpha_bar_prev) / (1 - self.alpha_bar)  # DDPM eq. 7
        # beta_tilde_0 = 0; IDDPM clips its log to beta_tilde_1 for the learned-variance interpolation.
        bt = self.beta_tilde.clone()
        if bt.numel() > 1:
            bt[0] = bt[1]
        self.log_beta_tilde_clipped = bt.clamp(min=1e-20).log()
        self.posterior_mean_coef1 = b * self.alpha_bar_prev.sqrt() / (1 - self.alpha_bar)
        self.posterior_mean_coef2 = (1 - self.alpha_bar_prev) * self.alphas.sqrt() / (1 - self.alpha_bar)
        self.snr = self.alpha_bar / (1 - self.alpha_bar)
        self.sigma = ((1 - self.alpha_bar) / self.alpha_bar).sqrt()  # VE sigma (Karras et al. 2022)

    @property
    def T(self) -> int:
        return self.betas.numel()

    @property
    def log_sigma_table(self) -> torch.Tensor:
        return self.sigma.log()

    def alpha_bar_at(self, t: torch.Tensor) -> torch.Tensor:
        """alpha_bar at (possibly fractional) indices t; t < 0 gives 1 (clean data).

        Fractional t interpolates log(sigma) linearly between neighbouring steps (as k-diffusion does).
        """
        t = torch.as_tensor(t, dtype=torch.float64)
        tc = t.clamp(0, self.T - 1)
        if bool((tc == t).all()) and bool((t == t.floor()).all()):  # integer steps (training): a table look-up
            return self.alpha_bar.to(t.device)[t.long()]
        lo = tc.floor().long()
        hi = (lo + 1).clamp(max=self.T - 1)
        w = tc - lo
        ls = self.log_sigma_table.to(t.device)
        ab_table = self.alpha_bar.to(t.device)
        frac = w > 0
        log_sigma = torch.where(frac, (1 - w) * ls[lo] + w * torch.where(frac, ls[hi], ls[lo]), ls[lo])
        ab = torch.where(frac, torch.sigmoid(-2 * log_sigma), ab_table[lo])
        return torch.where(t < 0, torch.ones_like(ab), ab)

    def _float_tables(self):
        """alpha_bar and log(sigma) as Python lists, cached, for the per-step scalar look-ups of samplers."""
        if getattr(self, "_tables", None) is None:
            self._tables = (self.alpha_bar.tolist(), self.log_sigma_table.tolist())
        return self._tables

    def alpha_bar_scalar(self, t: float) -> float:
        """`alpha_bar_at` for one Python float t, without tensor ops (same log-sigma interpolation)."""
        t = float(t)
        if t < 0:
            return 1.0
        ab, ls = self._float_tables()
        tc = min(t, self.T - 1.0)
        lo = int(math.floor(tc))
        w = tc - lo
        if w == 0:
            return ab[lo]
        log_sigma = (1 - w) * ls[lo] + w * ls[lo + 1]
        if log_sigma >= 0:  # sigmoid(-2 log_sigma), written to avoid overflow
            e = math.exp(-2 * log_sigma)
            return e / (1 + e)
        return 1 / (1 + math.exp(2 * log_sigma))

    def sigma_to_t_scalar(self, sigma: float) -> float:
        """`sigma_to_t` for one Python float sigma, by bisection on the log-sigma table."""
        _, ls = self._float_tables()
        log_s = min(max(math.log(max(float(sigma), 1e-30)), ls[0]), ls[-1])
        hi = min(max(bisect.bisect_left(ls, log_s), 1), self.T - 1)
        return hi - 1 + (log_s - ls[hi - 1]) / (ls[hi] - ls[hi - 1])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional index t whose interpolated sigma equals `sigma` (inverse of alpha_bar_at)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        ls = self.log_sigma_table.to(sigma.device)
        if not (ls[1:] > ls[:-1]).all():
            raise ValueError("sigma_to_t needs strictly increasing sigma over t")
        log_s = sigma.clamp(min=1e-30).log().clamp(ls[0], ls[-1])
        hi = torch.searchsorted(ls, log_s).clamp(1, self.T - 1)
        lo = hi - 1
        w = (log_s - ls[lo]) / (ls[hi] - ls[lo])
        return lo + w

    def to_dict(self) -> dict:
        return {"betas": self.betas.tolist()}


def make_schedule(name: str = "linear", T: int = 1000, zero_terminal_snr: bool = False,
                  betas: Sequence[float] | None = None, **kwargs) -> Schedule:
    """Build a `Schedule` by name ('linear', 'cosine', 'scaled_linear', 'sigmoid') or from user betas ('custom')."""
    if betas is not None or name == "custom":
        if betas is None:
            raise ValueError("make_schedule: name='custom' needs `betas`")
        b = torch.as_tensor(list(betas), dtype=torch.float64)
    elif name in BETA_BUILDERS:
        b = BETA_BUILDERS[name](T, **kwargs)
    else:
        raise ValueError(f"make_schedule: unknown schedule {name!r}; valid: {sorted(BETA_BUILDERS) + ['custom']}")
    if zero_terminal_snr:
        b = rescale_zero_terminal_snr(b)
    return Schedule(b)
