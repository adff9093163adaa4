"""Guidance and conditioning that work with every sampler: denoiser wrappers and sampler hooks."""
from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm.auto import tqdm

from .conditions import cond_cat, drop_condition, null_like  # noqa: F401 (drop_condition: re-exported)
from .denoiser import Prediction
from .parameterization import eps_to_x0, q_sample
from .samplers import SAMPLERS, SamplerHook, _call, _grid, ddim_step, ddpm_step, timesteps_for
from .utils import append_dims, randn


class ClassifierFreeGuidance(torch.nn.Module):
    """eps = (1 + w) eps(x, c) - w eps(x, null) (Ho & Salimans 2022, eq. 6); w = 0 is the conditional model."""

    def __init__(self, denoiser, w: float, null_cond):
        super().__init__()
        self.denoiser, self.w, self.null_cond = denoiser, float(w), null_cond
        self.schedule = denoiser.schedule

    def forward(self, x_t, t, cond=None, **kw) -> Prediction:
        if self.w == 0 or cond is None:
            return self.denoiser(x_t, t, cond, **kw)
        null = null_like(cond, self.null_cond)
        kw2 = {k: None if v is None else torch.cat([v, v]) for k, v in kw.items()}  # e.g. a DDGAN latent z
        both = self.denoiser(torch.cat([x_t, x_t]), torch.cat([t, t]), cond_cat(cond, null), **kw2)
        eps_c, eps_u = both.eps.chunk(2)
        eps = (1 + self.w) * eps_c - self.w * eps_u
        ab = self.schedule.alpha_bar_at(t.double()).to(x_t.dtype)
        x0 = eps_to_x0(x_t, eps, ab)
        return Prediction(x0=x0, eps=eps, out=eps)


def _grad_of(fn, x, t, cond):
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        y = fn(x_in, t, cond)
        (g,) = torch.autograd.grad(y.sum(), x_in)
    return g, y.detach()


class GradientGuidance(torch.nn.Module):
    """Guide by grad_x f(x_t): eps' = eps - s sqrt(1 - alpha_bar) grad f (Dhariwal & Nichol 2021, Alg. 2 / eq. 14).

    `fn(x_t, t, cond)` returns one differentiable value per sample (a classifier's log p(y|x_t), a value). null_cond:
    the condition the denoiser sees instead of `cond`, a value or a function of cond (an unconditional model guided
    toward fn's condition); s = 0 is the denoiser itself.
    """

    def __init__(self, denoiser, fn: Callable, scale: float = 1.0, null_cond=None):
        super().__init__()
        self.denoiser, self.fn, self.scale, self.null_cond = denoiser, fn, float(scale), null_cond
        self.schedule = denoiser.schedule

    def _denoiser_cond(self, cond):
        return cond if self.null_cond is None or cond is None else null_like(cond, self.null_cond)

    def forward(self, x_t, t, cond=None) -> Prediction:
        pred = self.denoiser(x_t, t, self._denoiser_cond(cond))
        if self.scale == 0:
            return pred
        g, _ = _grad_of(self.fn, x_t, t, cond)
        ab = append_dims(self.schedule.alpha_bar_at(t.double()).to(x_t.dtype), x_t.ndim)
        eps = pred.eps - self.scale * (1 - ab).sqrt() * g
        return Prediction(x0=eps_to_x0(x_t, eps, ab.flatten()), eps=eps, out=pred.out, v_var=pred.v_var)


class ValueGuidance(SamplerHook):
    """Diffuser-style guidance: before each step, x <- x + s * Var * grad J(x) for n_guide_steps (Janner et al. 2022, Alg. 1).

    Var is the posterior variance beta_tilde_t when scale_grad_by_std, else 1; no guidance for t < t_stopgrad.
    """

    def __init__(self, fn: Callable, schedule, scale: float = 0.1, n_guide_steps: int = 2, t_stopgrad: int = 2,
                 scale_grad_by_std: bool = True):
        self.fn, self.schedule, self.scale = fn, schedule, scale
        self.n_guide_steps, self.t_stopgrad, self.scale_grad_by_std = n_guide_steps, t_stopgrad, scale_grad_by_std

    def before_step(self, x, t, cond):
        t = float(t)
        if t < self.t_stopgrad or self.scale == 0:  # scale 0 (ranking only): no gradient to compute
            return x
        var = float(self.schedule.beta_tilde[int(round(t))].clamp(min=1e-20)) if self.scale_grad_by_std else 1.0
        tt = torch.full((x.shape[0],), t, device=x.device)
        for _ in range(self.n_guide_steps):
            g, _ = _grad_of(self.fn, x, tt, cond)
            x = x + self.scale * var * g
        return x


class Inpaint(SamplerHook):
    """Replacement inpainting: keep q(x_t | known) on the mask at every step, exact known values at the end.

    mask is 1 where values are known (broadcastable to x); see Lugmayr et al. 2022 (RePaint, eq. 8).
    """

    def __init__(self, schedule, mask: torch.Tensor, known: torch.Tensor):
        self.schedule, self.mask, self.known = schedule, mask.to(known.dtype), known
        self._known_t = None

    def _noised(self, t, generator, like):
        t = float(t)
        if t < 0:
            return self.known.to(like)
        ab = self.schedule.alpha_bar_at(torch.tensor(t)).to(like.dtype)
        z = randn(self.known.shape, generator, like.device, like.dtype)
        return q_sample(self.known.to(like), ab, z)

    def _impose(self, x):
        m = self.mask.to(x)
        return m * self._known_t + (1 - m) * x

    def start(self, x, t, generator):
        self._known_t = self._noised(t, generator, x)
        return self._impose(x)

    def before_step(self, x, t, cond):
        return self._impose(x) if self._known_t is not None else x

    def after_step(self, x, t_next, generator):
        self._known_t = self._noised(t_next, generator, x)
        return self._impose(x)


def repaint_positions(n: int, jump_length: int = 10, jump_n_sample: int = 10) -> list[int]:
    """Grid positions visited by RePaint's resampling schedule (Lugmayr et al. 2022, Sec. 4.2): 0 = x_T, n = clean."""
    jumps = {j: jump_n_sample - 1 for j in range(jump_length, n, jump_length)}
    pos, seq = 0, [0]
    while pos < n:
        pos += 1
        seq.append(pos)
        level = n - pos
        if jumps.get(level, 0) > 0:
            jumps[level] -= 1
            for _ in range(jump_length):
                pos -= 1
                seq.append(pos)
    return seq


@torch.no_grad()  # (as core.samplers.sample: a sampler keeps no graph; guidance wrappers enable grad themselves)
def repaint(denoiser, x, steps: int | None = None, *, inpaint: Inpaint, cond=None, generator=None, hooks=(),
            jump_length: int = 10, jump_n_sample: int = 10, step: str = "ddpm", eta: float = 1.0,
            spacing: str = "linspace", progress: bool = False):
    """RePaint: inpainting with resampling; after a denoising run, jump back by re-noising (Lugmayr et al. 2022, Alg. 1)."""
    T = denoiser.schedule.T
    ts, abs_ = _grid(denoiser.schedule, timesteps_for(T, steps or T, spacing))
    n = len(ts) - 1
    hooks = (inpaint, *hooks)
    for h in hooks:
        x = h.start(x, ts[0], generator)
    seq = repaint_positions(n, jump_length, jump_n_sample)
    for a, b in tqdm(list(zip(seq[:-1], seq[1:])), disable=not progress, desc="repaint"):
        if b > a:  # denoise one step
            for h in hooks:
                x = h.before_step(x, ts[a], cond)
            pred = _call(denoiser, x, ts[a], cond)
            ab_t, ab_prev = float(abs_[a]), float(abs_[b])
            x = ddpm_step(pred, x, ab_t, ab_prev, "beta_tilde", generator, last=b == n) if step == "ddpm" \
                else ddim_step(pred, x, ab_t, ab_prev, eta, generator)
            for h in hooks:
                x = h.after_step(x, ts[b], generator)
        else:  # re-noise one step: q(x_t | x_{t-1})
            r = float(abs_[b] / abs_[a])
            x = math.sqrt(r) * x + math.sqrt(1 - r) * randn(x.shape, generator, x.device, x.dtype)
            inpaint._known_t = inpaint._noised(ts[b], generator, x)
            x = inpaint._impose(x)
    return x


SAMPLERS["repaint"] = repaint
