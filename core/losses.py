"""Training objectives. Every loss returns one value per sample; the trainer reduces them."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .parameterization import q_sample, target_for
from .utils import append_dims, mean_flat, randn

WEIGHTINGS = ("uniform", "min_snr", "snr")
LOG2 = math.log(2.0)


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _std_normal_cdf(x):
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(x, mean, log_scale, bins: int = 256):
    """log p(x) of data in [-1, 1] quantised to `bins` levels under a discretised Gaussian (Ho et al. 2020, eq. 13)."""
    half = 1.0 / (bins - 1)
    inv_std = torch.exp(-log_scale)
    cdf_plus = _std_normal_cdf(inv_std * (x - mean + half))
    cdf_min = _std_normal_cdf(inv_std * (x - mean - half))
    log_cdf_plus = cdf_plus.clamp(min=1e-12).log()
    log_one_minus_cdf_min = (1 - cdf_min).clamp(min=1e-12).log()
    log_delta = (cdf_plus - cdf_min).clamp(min=1e-12).log()
    return torch.where(x < -1 + 1e-3, log_cdf_plus, torch.where(x > 1 - 1e-3, log_one_minus_cdf_min, log_delta))


def loss_weight(weighting: str, prediction: str, snr: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    """Per-sample weight on the MSE of the network's own target.

    uniform: 1 (L_simple, Ho et al. 2020 eq. 14); min_snr: min(SNR, gamma) in x0 units (Hang et al. 2023, eq. 9);
    snr: SNR in x0 units (the eps-MSE). MSE_eps = SNR * MSE_x0 and MSE_v = (SNR + 1) * MSE_x0.
    """
    if weighting == "uniform":
        return torch.ones_like(snr)
    to_native = {"eps": snr, "x0": torch.ones_like(snr), "v": snr + 1}[prediction]
    if weighting == "min_snr":
        w_x0 = snr.clamp(max=gamma)
    elif weighting == "snr":
        w_x0 = snr
    else:
        raise ValueError(f"unknown loss weighting {weighting!r}; valid: {WEIGHTINGS}")
    return w_x0 / to_native.clamp(min=1e-12)


def q_posterior(schedule, x0, x_t, t):
    """Mean and log-variance of q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eq. 6-7); t integer (B,)."""
    c1 = append_dims(schedule.posterior_mean_coef1.to(x0)[t], x0.ndim)
    c2 = append_dims(schedule.posterior_mean_coef2.to(x0)[t], x0.ndim)
    logvar = append_dims(schedule.log_beta_tilde_clipped.to(x0)[t], x0.ndim)
    return c1 * x0 + c2 * x_t, logvar.expand_as(x0)


def p_log_variance(schedule, t, v_var, like):
    """Model log-variance: fixed beta_tilde, or the learned interpolation of log beta and log beta_tilde (IDDPM eq. 15)."""
    log_bt = append_dims(schedule.log_beta_tilde_clipped.to(like)[t], like.ndim)
    if v_var is None:
        return log_bt.expand_as(like)
    log_b = append_dims(schedule.betas.to(like)[t].log(), like.ndim)
    frac = (v_var + 1) / 2
    return frac * log_b + (1 - frac) * log_bt


def vlb_term(schedule, x0, x_t, t, pred_x0, v_var=None, bins: int = 256):
    """L_{t-1} = KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t > 0 and the decoder NLL L_0 at t = 0, in bits per dim."""
    mean_q, logvar_q = q_posterior(schedule, x0, x_t, t)
    mean_p, _ = q_posterior(schedule, pred_x0, x_t, t)
    logvar_p = p_log_variance(schedule, t, v_var, x0)
    kl = mean_flat(normal_kl(mean_q, logvar_q, mean_p, logvar_p)) / LOG2
    nll = -mean_flat(discretized_gaussian_log_likelihood(x0, mean_p, 0.5 * logvar_p, bins)) / LOG2
    return torch.where(t == 0, nll, kl)


def prior_bpd(schedule, x0):
    """L_T = KL(q(x_T | x_0) || N(0, I)) in bits per dim."""
    ab = schedule.alpha_bar[-1].to(x0)
    mean = ab.sqrt() * x0
    logvar = torch.log1p(-ab).expand_as(x0) if ab < 1 else torch.full_like(x0, -float("inf"))
    return mean_flat(normal_kl(mean, logvar, torch.zeros_like(x0), torch.zeros_like(x0))) / LOG2


@torch.no_grad()
def variational_bound(denoiser, x0, generator=None, cond=None, bins: int = 256, batch_t: Optional[int] = None):
    """The full bound L_T + sum_t L_{t-1} + L_0 in bits per dim, per sample (Ho et al. 2020, eq. 5; Nichol & Dhariwal 2021, Sec. 3.2)."""
    sch = denoiser.schedule
    B, terms = x0.shape[0], []
    for ti in range(sch.T - 1, -1, -1):
        t = torch.full((B,), ti, device=x0.device, dtype=torch.long)
        eps = randn(x0.shape, generator, x0.device, x0.dtype)
        x_t = q_sample(x0, sch.alpha_bar.to(x0)[t], eps)
        pred = denoiser(x_t, t.float(), cond)
        terms.append(vlb_term(sch, x0, x_t, t, pred.x0, pred.v_var, bins))
    terms = torch.stack(terms[::-1], dim=1)  # (B, T), column t = L_{t-1} (L_0 at t = 0)
    prior = prior_bpd(sch, x0)
    return {"total_bpd": terms.sum(1) + prior, "prior_bpd": prior, "terms_bpd": terms}


class UniformTimesteps:
    """t ~ U{0, ..., T-1}; weight 1."""

    def __init__(self, T: int):
        self.T = T

    def sample(self, B, generator=None, device=None):
        t = torch.randint(0, self.T, (B,), generator=generator, device=generator.device if generator else device)
        return t.to(device), torch.ones(B, device=device)

    def update(self, t, losses):
        pass


class ContinuousTimesteps(UniformTimesteps):
    """t ~ U[0, T - 1], fractional: the noise level is continuous between the schedule's steps (SR3's noise-level
    training, Saharia et al. 2021, Sec. 2.4; alpha_bar interpolated by Schedule.alpha_bar_at); weight 1."""

    def sample(self, B, generator=None, device=None):
        u = torch.rand(B, generator=generator, device=generator.device if generator else device, dtype=torch.float64)
        return (u * (self.T - 1)).to(device), torch.ones(B, device=device)


class ImportanceTimesteps(UniformTimesteps):
    """Importance sampling of t with p_t proportional to sqrt(E[L_t^2]) over a history of 10 (Nichol & Dhariwal 2021, eq. 17)."""

    def __init__(self, T: int, history: int = 10, uniform_prob: float = 0.001):
        super().__init__(T)
        self.hist = np.zeros((T, history))
        self.count = np.zeros(T, dtype=int)
        self.history, self.uniform_prob = history, uniform_prob

    def probs(self) -> np.ndarray:
        if (self.count < self.history).any():
            return np.full(self.T, 1.0 / self.T)
        w = np.sqrt((self.hist**2).mean(1))
        w = w / w.sum()
        return w * (1 - self.uniform_prob) + self.uniform_prob / self.T

    def sample(self, B, generator=None, device=None):
        p = torch.as_tensor(self.probs(), dtype=torch.float64)
        t = torch.multinomial(p, B, replacement=True, generator=generator if generator is not None and generator.device.type == "cpu" else None)
        w = 1.0 / (self.T * p[t])
        return t.to(device), w.float().to(device)

    def update(self, t, losses):
        for ti, li in zip(t.tolist(), losses.detach().float().cpu().tolist()):
            self.hist[ti] = np.roll(self.hist[ti], -1)
            self.hist[ti, -1] = li
            self.count[ti] = min(self.count[ti] + 1, self.history)


@dataclass
class DiffusionLoss:
    """L_simple with optional SNR weighting, plus lambda * L_vlb for learned variance (IDDPM hybrid, Sec. 3.1).

    Called as loss(denoiser, x0, cond, generator) -> (per-sample loss (B,), t (B,)).
    """

    weighting: str = "uniform"
    gamma: float = 5.0
    vlb_weight: float = 0.001
    timesteps: object = None  # UniformTimesteps / ImportanceTimesteps; uniform by default
    #: per-element weights of one sample (broadcast over the batch), e.g. Diffuser's action weight on the first
    #: step's actions; the squared error is weighted before its mean (Diffuser's WeightedLoss)
    element_weight: Optional[torch.Tensor] = None

    def __call__(self, denoiser, x0, cond=None, generator=None):
        sch = denoiser.schedule if hasattr(denoiser, "schedule") else denoiser.module.schedule
        sampler = self.timesteps or UniformTimesteps(sch.T)
        B = x0.shape[0]
        t, w_is = sampler.sample(B, generator, x0.device)
        eps = randn(x0.shape, generator, x0.device, x0.dtype)
        if t.is_floating_point():  # continuous noise levels
            ab64 = sch.alpha_bar_at(t.double())
            ab, snr = ab64.to(x0.dtype), (ab64 / (1 - ab64)).float()
        else:
            ab, snr = sch.alpha_bar.to(x0.device, torch.float32)[t].to(x0.dtype), sch.snr.to(x0.device, torch.float32)[t]
        x_t = q_sample(x0, ab, eps)
        pred = denoiser(x_t, t.float(), cond)
        inner = denoiser.module if hasattr(denoiser, "module") else denoiser
        target = target_for(inner.prediction, x0, eps, ab)
        se = (pred.out.float() - target.float()) ** 2
        if self.element_weight is not None:
            se = se * self.element_weight.to(se.device)
        mse = mean_flat(se)
        loss = mse * loss_weight(self.weighting, inner.prediction, snr, self.gamma)
        if pred.v_var is not None:
            x0_sg = pred.x0.detach()  # stop-gradient on the mean in the vlb term
            loss = loss + self.vlb_weight * sch.T * vlb_term(sch, x0.float(), x_t.float(), t, x0_sg.float(), pred.v_var.float())
        sampler.update(t, loss)
        return loss * w_is, t
