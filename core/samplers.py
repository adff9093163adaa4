"""Samplers: plain functions that own their loop, for any tensor shape.

Every sampler takes a denoiser (anything called as `denoiser(x_t, t, cond) -> Prediction` with a
`.schedule`), the starting noise x_T and a step count, and returns x_0. State such as the solver
history lives in local variables; randomness comes only from the `generator` argument.
Hooks (`SamplerHook`) let guidance and inpainting act between steps of every sampler.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .utils import randn


class SamplerOptionError(ValueError):
    """A sampler option chosen by the caller (name, steps, spacing, eta, variance) is not valid for this model."""

POWER_P = 2.5  # spacing="power": t uniform in t^(1/2.5); chosen on benchmarks/dpm_spacing.py, see README
POWER_SPACINGS = {"quadratic": 2.0, "power": POWER_P}  # t uniform in t^(1/p)
SPACINGS = ("leading", "trailing", "linspace", "logsnr", "uniform", *POWER_SPACINGS)


class SamplerHook:
    """Acts on the state between sampler steps; x is always in variance-preserving form x_t."""

    def start(self, x, t, generator):
        """Called once on x_T before the first step."""
        return x

    def before_step(self, x, t, cond):
        """Called before the denoiser is evaluated at (x, t)."""
        return x

    def after_step(self, x, t_next, generator):
        """Called on the new state x_{t_next}; t_next < 0 means the final, clean sample."""
        return x


def _hooks(hooks, name, x, *args):
    for h in hooks:
        x = getattr(h, name)(x, *args)
    return x


def timesteps_for(T: int, steps: int, spacing: str = "leading") -> torch.Tensor:
    """Descending integer timesteps for a `steps`-step sampler (DDIM/diffusers spacing conventions).

    leading: (0, k, 2k, ...) with k = T // steps (Song et al. 2021); trailing: ending at T-1
    (Lin et al. 2024, Table 2); linspace: rounded linspace(0, T-1, steps).
    """
    if not 1 <= steps <= T:
        raise SamplerOptionError(f"steps must be in [1, {T}] for this model (its schedule has T={T} steps), got {steps}")
    if spacing == "leading":
        ts = np.arange(steps) * (T // steps)
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / steps)).astype(np.int64)[::-1] - 1
    elif spacing == "linspace":
        ts = np.linspace(0, T - 1, steps).round().astype(np.int64)
    else:
        raise SamplerOptionError(f"timesteps_for: unknown spacing {spacing!r}; valid: {SPACINGS}")
    return torch.as_tensor(ts[::-1].copy(), dtype=torch.float64)  # a copy: one-element reversed views keep a -1 stride


def uniform_timesteps(T: int, steps: int) -> torch.Tensor:
    """Fractional timesteps t_j = j T / steps - 1, j = steps, ..., 1: 'trailing' without rounding, so the grid of N
    steps is every other point of the grid of 2N (the student grids of progressive distillation, core.distill)."""
    if not 1 <= steps <= T:
        raise SamplerOptionError(f"steps must be in [1, {T}] for this model (its schedule has T={T} steps), got {steps}")
    return torch.arange(steps, 0, -1, dtype=torch.float64) * T / steps - 1


def logsnr_timesteps(schedule, steps: int) -> torch.Tensor:
    """Fractional timesteps uniform in lambda = log(alpha / sigma) from t = T-1 to t = 0 (Lu et al. 2022, Sec. 3.3)."""
    if steps == 1:
        return torch.tensor([schedule.T - 1.0], dtype=torch.float64)
    lam = -schedule.log_sigma_table  # lambda_t = -log(sigma_VE)
    lam_min = float(lam[-1]) if torch.isfinite(lam[-1]) else float(lam[-2])
    lams = torch.linspace(lam_min, float(lam[0]), steps, dtype=torch.float64)
    ts = schedule.sigma_to_t(torch.exp(-lams))
    ts[0], ts[-1] = schedule.T - 1, 0.0
    return ts


def power_timesteps(T: int, steps: int, p: float = POWER_P) -> torch.Tensor:
    """Fractional timesteps uniform in t^(1/p) from t = T-1 to t = 0 (p = 2 is Lu et al. 2022's 'time_quadratic')."""
    if p <= 0:
        raise ValueError(f"power_timesteps: p must be > 0, got {p}")
    if steps == 1:
        return torch.tensor([T - 1.0], dtype=torch.float64)
    return (T - 1) * torch.linspace(1.0, 0.0, steps, dtype=torch.float64) ** p


def quadratic_timesteps(T: int, steps: int) -> torch.Tensor:
    """Fractional timesteps uniform in sqrt(t) from t = T-1 to t = 0 (Lu et al. 2022, 'time_quadratic')."""
    return power_timesteps(T, steps, 2.0)


def _timesteps(schedule, steps: int, spacing: str, lambda_min: float | None = None) -> torch.Tensor:
    if spacing == "logsnr":
        return logsnr_timesteps(schedule, steps)
    T = schedule.T if lambda_min is None else lambda_clipped_T(schedule, lambda_min)
    if spacing == "uniform":
        return uniform_timesteps(T, steps)
    if spacing in POWER_SPACINGS:
        return power_timesteps(T, steps, POWER_SPACINGS[spacing])
    return timesteps_for(T, steps, spacing)


def lambda_clipped_T(schedule, lambda_min: float) -> int:
    """How many training steps keep lambda_t = log(alpha_t / sigma_t) >= lambda_min (at least 1).

    Sampling then starts at that step instead of T-1: Lu et al. (2022) start the cosine schedule at
    t_T = 0.9946 for the same reason, and diffusers calls this `lambda_min_clipped`. Near alpha_bar = 0 the
    x0 estimate (x - sigma eps) / alpha amplifies the network's error by 1/alpha.
    """
    lam = -schedule.log_sigma_table
    return max(1, int((lam >= lambda_min).sum()))


def _grid(schedule, timesteps, alpha_bars=None):
    """(t_i, alpha_bar_i) for the given timesteps, followed by the clean end point (-1, 1)."""
    ts = torch.as_tensor(timesteps, dtype=torch.float64).flatten()
    ab = schedule.alpha_bar_at(ts) if alpha_bars is None else torch.as_tensor(alpha_bars, dtype=torch.float64)
    return torch.cat([ts, ts.new_tensor([-1.0])]), torch.cat([ab, ab.new_ones(1)])


def _call(denoiser, x, t, cond, **kw):
    return denoiser(x, torch.full((x.shape[0],), float(t), device=x.device), cond, **kw)


def _walk(denoiser, x, timesteps, alpha_bars, step, *, cond, generator, hooks, progress, desc):
    """The loop of the grid samplers: for each step i of the grid (t_i, alpha_bar_i), followed by the clean end point,
    the hooks around `step(i, x, ts, ab) -> x_{t_{i+1}}`; `step` evaluates the denoiser itself."""
    ts, abs_ = _grid(denoiser.schedule, timesteps, alpha_bars)
    ab = abs_.tolist()
    x = _hooks(hooks, "start", x, ts[0], generator)
    for i in tqdm(range(len(ts) - 1), disable=not progress, desc=desc):
        x = _hooks(hooks, "before_step", x, ts[i], cond)
        x = step(i, x, ts, ab)
        x = _hooks(hooks, "after_step", x, ts[i + 1], generator)
    return x


def ddpm_step(pred, x, ab_t, ab_prev, variance, generator, last):
    """One ancestral step x_t -> x_{t-1} (Ho et al. 2020, Alg. 2; respaced as Nichol & Dhariwal 2021, Sec. 4)."""
    beta = 1 - ab_t / ab_prev
    c1 = math.sqrt(ab_prev) * beta / (1 - ab_t)
    c2 = math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab_t)
    mean = c1 * pred.x0 + c2 * x
    if last:
        return mean
    beta_tilde = beta * (1 - ab_prev) / (1 - ab_t)
    if variance in ("beta", "beta_tilde"):
        std = math.sqrt(beta if variance == "beta" else beta_tilde)
        return mean + std * randn(x.shape, generator, x.device, x.dtype)
    if variance == "learned":
        if pred.v_var is None:
            raise SamplerOptionError("ddpm(variance='learned') needs a denoiser with learned_variance=True")
        frac = (pred.v_var + 1) / 2  # IDDPM eq. 15
        log_var = frac * math.log(beta) + (1 - frac) * math.log(beta_tilde)
    else:
        raise SamplerOptionError(f"ddpm: unknown variance {variance!r}; valid: beta, beta_tilde, learned")
    return mean + (0.5 * log_var).exp() * randn(x.shape, generator, x.device, x.dtype)


def ddpm(denoiser, x, steps: int | None = None, *, cond=None, generator=None, hooks: Sequence = (),
         variance: str = "beta_tilde", spacing: str = "linspace", timesteps=None, alpha_bars=None,
         progress: bool = False):
    """DDPM ancestral sampling over all T steps or a respaced subset (Ho et al. 2020, Algorithm 2)."""
    if timesteps is None:
        timesteps = _timesteps(denoiser.schedule, steps or denoiser.schedule.T, spacing)

    def step(i, x, ts, ab):
        return ddpm_step(_call(denoiser, x, ts[i], cond), x, ab[i], ab[i + 1], variance, generator, i == len(ts) - 2)
    return _walk(denoiser, x, timesteps, alpha_bars, step, cond=cond, generator=generator, hooks=hooks,
                 progress=progress, desc="ddpm")


def ddim_step(pred, x, ab_t, ab_prev, eta, generator):
    """One DDIM step x_t -> x_{t_prev} (Song et al. 2021, eq. 12 with sigma from eq. 16)."""
    sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev))
    x_prev = math.sqrt(ab_prev) * pred.x0 + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * pred.eps
    if sigma > 0:
        x_prev = x_prev + sigma * randn(x.shape, generator, x.device, x.dtype)
    return x_prev


def ddim(denoiser, x, steps: int = 50, *, cond=None, generator=None, hooks: Sequence = (), eta: float = 0.0,
         spacing: str = "leading", timesteps=None, alpha_bars=None, progress: bool = False):
    """DDIM sampling with eta in [0, 1] on any subset of steps (Song et al. 2021, Sec. 4.2)."""
    if not 0.0 <= eta <= 1.0:
        raise SamplerOptionError(f"ddim: eta must be in [0, 1], got {eta}")
    if timesteps is None:
        timesteps = _timesteps(denoiser.schedule, steps, spacing)

    def step(i, x, ts, ab):
        return ddim_step(_call(denoiser, x, ts[i], cond), x, ab[i], ab[i + 1], eta, generator)
    return _walk(denoiser, x, timesteps, alpha_bars, step, cond=cond, generator=generator, hooks=hooks,
                 progress=progress, desc="ddim")


def dpmpp_2m(denoiser, x, steps: int = 20, *, cond=None, generator=None, hooks: Sequence = (),
             spacing: str = "linspace", timesteps=None, alpha_bars=None, lambda_min: float | None = None,
             sde: bool = False, progress: bool = False):
    """DPM-Solver++(2M), data prediction, multistep (Lu et al. 2022b, Algorithm 2).

    lambda_min (optional) starts sampling where log(alpha / sigma) >= lambda_min: see `lambda_clipped_T`.
    sde=True takes SDE-DPM-Solver++(2M) steps instead (Lu et al. 2022b, Appendix; `dpmpp_2m_sde`).

    The last step, to the clean end point (lambda = inf), is always first order (it returns x0): this is the
    reference code's `lower_order_final`; every earlier step after the first is second order.
    """
    if timesteps is None:
        timesteps = _timesteps(denoiser.schedule, steps, spacing, lambda_min)
    ts, abs_ = _grid(denoiser.schedule, timesteps, alpha_bars)
    alpha, sigma = abs_.sqrt().tolist(), (1 - abs_).sqrt().tolist()
    lam = [_log_snr_half(a, s) for a, s in zip(alpha, sigma)]  # lambda = log(alpha / sigma); +inf at the clean end
    x = _hooks(hooks, "start", x, ts[0], generator)
    x0_prev, h_prev = None, None
    n = len(ts) - 1
    for i in tqdm(range(n), disable=not progress, desc="dpm++2m sde" if sde else "dpm++2m"):
        x = _hooks(hooks, "before_step", x, ts[i], cond)
        x0 = _call(denoiser, x, ts[i], cond).x0
        if i == n - 1:  # to the clean end point (sigma = 0): the first-order update is exactly x0
            x = x0
        elif lam[i + 1] == lam[i]:  # a repeated timestep (h = 0) is a no-op
            x = _hooks(hooks, "after_step", x, ts[i + 1], generator)
            continue
        else:
            h = lam[i + 1] - lam[i]
            D = x0
            if x0_prev is not None:  # second order: D = (1 + 1/2r) x0_i - 1/2r x0_{i-1}, r = h_{i-1} / h_i
                r = h_prev / h
                D = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
            x = (_sde_step if sde else _ode_step)(x, D, alpha[i + 1], sigma[i + 1], sigma[i], h, generator)
            h_prev = h
        x0_prev = x0
        x = _hooks(hooks, "after_step", x, ts[i + 1], generator)
    return x


def _ode_step(x, D, alpha_t, sigma_t, sigma_s, h, generator):
    """x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D (Lu et al. 2022b, eq. 9 with D for x0)."""
    return (sigma_t / sigma_s) * x - (alpha_t * math.expm1(-h)) * D


def _sde_step(x, D, alpha_t, sigma_t, sigma_s, h, generator):
    """x_t = (sigma_t / sigma_s) e^{-h} x_s + alpha_t (1 - e^{-2h}) D + sigma_t sqrt(1 - e^{-2h}) z (SDE-DPM-Solver++).

    The first-order step (D = x0) is exactly the DDPM posterior sample with beta_tilde, i.e. DDIM with eta = 1.
    """
    noise = randn(x.shape, generator, x.device, x.dtype)
    return ((sigma_t / sigma_s) * math.exp(-h)) * x - (alpha_t * math.expm1(-2 * h)) * D \
        + (sigma_t * math.sqrt(-math.expm1(-2 * h))) * noise


def dpmpp_2m_sde(denoiser, x, steps: int = 20, **options):
    """SDE-DPM-Solver++(2M): the stochastic multistep variant of DPM-Solver++ (Lu et al. 2022b, Appendix)."""
    return dpmpp_2m(denoiser, x, steps, sde=True, **options)


def _log_snr_half(alpha: float, sigma: float) -> float:
    """lambda = log(alpha / sigma) with the limits -inf (alpha = 0) and +inf (sigma = 0)."""
    if sigma == 0:
        return math.inf
    return math.log(alpha / sigma) if alpha > 0 else -math.inf


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) eq. 5: sigma_i = (s_max^(1/rho) + i/(n-1) (s_min^(1/rho) - s_max^(1/rho)))^rho, then 0."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    inv_min, inv_max = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sig = (inv_max + ramp * (inv_min - inv_max)) ** rho
    return torch.cat([sig, sig.new_zeros(1)])


def _karras_grid(schedule, steps, sigma_min, sigma_max, rho):
    smin = float(schedule.sigma[0]) if sigma_min is None else sigma_min
    finite = schedule.sigma[torch.isfinite(schedule.sigma)]
    smax = float(finite[-1]) if sigma_max is None else sigma_max
    return karras_sigmas(steps, smin, smax, rho)


def _denoise_ve(denoiser, x_ve, sigma, cond, hooks):
    """Evaluate a VP-trained denoiser at VE state x = x_t / sqrt(alpha_bar) (Karras et al. 2022, Table 1)."""
    t = torch.tensor(denoiser.schedule.sigma_to_t_scalar(sigma), dtype=torch.float64)
    scale = 1 / math.sqrt(1 + sigma**2)  # sqrt(alpha_bar)
    x_vp = _hooks(hooks, "before_step", x_ve * scale, t, cond)
    return _call(denoiser, x_vp, t, cond).x0, x_vp / scale


def _ve_hooks_after(denoiser, hooks, x_ve, sigma_next, generator):
    if not hooks:
        return x_ve
    t_next = torch.tensor(denoiser.schedule.sigma_to_t_scalar(sigma_next) if sigma_next > 0 else -1.0)
    scale = 1 / math.sqrt(1 + sigma_next**2)
    return _hooks(hooks, "after_step", x_ve * scale, t_next, generator) / scale


def _karras_start(denoiser, x, sigmas, hooks, generator):
    s0 = float(sigmas[0])
    x = _hooks(hooks, "start", x, torch.tensor(denoiser.schedule.sigma_to_t_scalar(s0)), generator)
    return x * math.sqrt(1 + s0**2)  # x_T ~ N(0, I) in VP form is N(0, (1 + sigma^2) I) in VE form


def euler(denoiser, x, steps: int = 50, *, cond=None, generator=None, hooks: Sequence = (),
          sigma_min=None, sigma_max=None, rho: float = 7.0, progress: bool = False):
    """Euler's method on the probability-flow ODE over Karras sigmas (Karras et al. 2022, Alg. 1 without 2nd order)."""
    sigmas = _karras_grid(denoiser.schedule, steps, sigma_min, sigma_max, rho)
    x = _karras_start(denoiser, x, sigmas, hooks, generator)
    for i in tqdm(range(len(sigmas) - 1), disable=not progress, desc="euler"):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x0, x = _denoise_ve(denoiser, x, s, cond, hooks)
        x = x + (s_next - s) * (x - x0) / s
        x = _ve_hooks_after(denoiser, hooks, x, s_next, generator)
    return x


def heun(denoiser, x, steps: int = 50, *, cond=None, generator=None, hooks: Sequence = (),
         sigma_min=None, sigma_max=None, rho: float = 7.0, progress: bool = False):
    """Heun's 2nd-order method over Karras sigmas (Karras et al. 2022, Algorithm 1); 2*steps - 1 NFE."""
    sigmas = _karras_grid(denoiser.schedule, steps, sigma_min, sigma_max, rho)
    x = _karras_start(denoiser, x, sigmas, hooks, generator)
    for i in tqdm(range(len(sigmas) - 1), disable=not progress, desc="heun"):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x0, x = _denoise_ve(denoiser, x, s, cond, hooks)
        d = (x - x0) / s
        x_next = x + (s_next - s) * d
        if s_next > 0:
            x0_2, _ = _denoise_ve(denoiser, x_next, s_next, cond, ())
            d2 = (x_next - x0_2) / s_next
            x_next = x + (s_next - s) * (d + d2) / 2
        x = _ve_hooks_after(denoiser, hooks, x_next, s_next, generator)
    return x


def consistency(denoiser, x, steps: int = 1, *, cond=None, generator=None, hooks: Sequence = (),
                spacing: str = "uniform", timesteps=None, alpha_bars=None, progress: bool = False):
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1): x0 = f(x_T, T), then at each next time t,
    x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) z with fresh noise z and x0 = f(x_t, t). The denoiser's x0 is the
    consistency function f (core.distill.ConsistencyFunction); one step is one network evaluation."""
    if timesteps is None:
        timesteps = _timesteps(denoiser.schedule, steps, spacing)

    def step(i, x, ts, ab):
        x0 = _call(denoiser, x, ts[i], cond).x0
        if i == len(ts) - 2:
            return x0
        return math.sqrt(ab[i + 1]) * x0 + math.sqrt(1 - ab[i + 1]) * randn(x.shape, generator, x.device, x.dtype)
    return _walk(denoiser, x, timesteps, alpha_bars, step, cond=cond, generator=generator, hooks=hooks,
                 progress=progress, desc="consistency")


def _score(denoiser, x_ve, t: float, ab: float, cond):
    """The score of the data noised to level t, in the variance-exploding state x_ve = x_t / sqrt(alpha_bar_t):
    grad log p_sigma(x_ve) = -eps_theta(x_t, t) / sigma_t (Song & Ermon 2019's s_theta(x, sigma) through the eps
    parameterisation; Vincent 2011)."""
    pred = _call(denoiser, x_ve * math.sqrt(ab), t, cond)
    return -pred.eps / math.sqrt((1 - ab) / ab), pred


def langevin_step(x_ve, score, step: float, generator):
    """x <- x + (step / 2) score + sqrt(step) z, z ~ N(0, I) (Song & Ermon 2019, eq. 2)."""
    return x_ve + 0.5 * step * score + math.sqrt(step) * randn(x_ve.shape, generator, x_ve.device, x_ve.dtype)


def langevin(denoiser, x, steps: int = 1000, *, cond=None, generator=None, hooks: Sequence = (), level: int = 0,
             step_size: float = 0.01, progress: bool = False):
    """Plain Langevin dynamics with the score at one noise level (Song & Ermon 2019, Sec. 2.2, eq. 2): `steps` steps of
    size `step_size` at the schedule's step `level` (default 0, the least noise), from x_T read as the state at the
    largest noise level (x_T / sqrt(alpha_bar_{T-1})). Returns the last state in the data's (VE) scale."""
    sch = denoiser.schedule
    t, ab = float(level), sch.alpha_bar_scalar(level)
    x_ve = _hooks(hooks, "start", x, float(sch.T - 1), generator) / math.sqrt(sch.alpha_bar_scalar(sch.T - 1))
    for _ in tqdm(range(steps), disable=not progress, desc="langevin"):
        x_ve = _hooks(hooks, "before_step", x_ve * math.sqrt(ab), t, cond) / math.sqrt(ab)
        x_ve = langevin_step(x_ve, _score(denoiser, x_ve, t, ab, cond)[0], step_size, generator)
    return _hooks(hooks, "after_step", x_ve, -1.0, generator)


def ncsn_step_ratio(steps_per_level: int, gamma: float) -> float:
    """eps / sigma_L^2 by Song & Ermon (2020, NCSNv2, Technique 4): the ratio r that brings the variance the Langevin
    chain reaches after T steps at a level, relative to sigma_i^2, closest to 1:
    (1 - r)^(2T) (gamma^2 - 2 / (2 - r)) + 2 / (2 - r), with gamma = sigma_{i-1} / sigma_i (a log grid search)."""
    rs = np.logspace(-5, np.log10(0.5), 2000)
    f = (1 - rs) ** (2 * steps_per_level) * (gamma**2 - 2 / (2 - rs)) + 2 / (2 - rs)
    return float(rs[np.argmin(np.abs(f - 1))])


def annealed_langevin(denoiser, x, steps: int | None = None, *, cond=None, generator=None, hooks: Sequence = (),
                      steps_per_level: int = 100, eps: float | None = None, spacing: str = "linspace",
                      denoise: bool = True, timesteps=None, progress: bool = False):
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1) over `steps` noise levels of the schedule (all T by
    default), largest first: at level i, `steps_per_level` Langevin steps of size alpha_i = eps sigma_i^2 / sigma_L^2
    (sigma_L the last, smallest level; eps default: NCSNv2's Technique 4, `ncsn_step_ratio`). denoise: end
    with Tweedie's x + sigma_L^2 score (the last step of Song & Ermon 2020's NCSNv2), which removes the sigma_L noise.
    Network evaluations: steps x steps_per_level (+ 1 when denoising)."""
    sch = denoiser.schedule
    if timesteps is None:
        timesteps = _timesteps(sch, steps or sch.T, spacing)
    ts = [float(t) for t in timesteps]
    abs_ = [sch.alpha_bar_scalar(t) for t in ts]
    sig2 = [(1 - a) / a for a in abs_]
    if eps is None:
        gamma = math.sqrt(sig2[0] / sig2[-1]) ** (1 / max(1, len(ts) - 1))  # the mean ratio of adjacent sigmas
        eps = ncsn_step_ratio(steps_per_level, gamma) * sig2[-1]
    x_ve = _hooks(hooks, "start", x, ts[0], generator) / math.sqrt(abs_[0])
    for i in tqdm(range(len(ts)), disable=not progress, desc="annealed langevin"):
        alpha = eps * sig2[i] / sig2[-1]
        x_ve = _hooks(hooks, "before_step", x_ve * math.sqrt(abs_[i]), ts[i], cond) / math.sqrt(abs_[i])
        for _ in range(steps_per_level):
            x_ve = langevin_step(x_ve, _score(denoiser, x_ve, ts[i], abs_[i], cond)[0], alpha, generator)
        if i < len(ts) - 1:
            x_ve = _hooks(hooks, "after_step", x_ve * math.sqrt(abs_[i + 1]), ts[i + 1], generator) / math.sqrt(abs_[i + 1])
    if denoise:
        x_ve = x_ve + sig2[-1] * _score(denoiser, x_ve, ts[-1], abs_[-1], cond)[0]
    return _hooks(hooks, "after_step", x_ve, -1.0, generator)


class LangevinCorrector(SamplerHook):
    """The corrector of predictor-corrector sampling (Song et al. 2021, Algorithms 4-5, VP form), after each predictor
    step at the new time t: `steps` times z ~ N(0, I), g = s_theta(x, t) = -eps_theta(x, t) / sqrt(1 - alpha_bar_t),
    e = 2 alpha_t (r ||z|| / ||g||)^2 (the norms averaged over the batch, as the authors' code does: a sample's own
    ||g|| vanishes near a mode; alpha_t = alpha_bar_t / alpha_bar_{t-1}), x <- x + e g +
    sqrt(2 e) z. snr r: a number, or None for `auto_snr` at each step. Made fresh per sampling call by `pc`; it keeps
    the last step's time and condition between before_step and after_step."""

    def __init__(self, denoiser, steps: int = 1, snr: float | None = 0.16):
        self.denoiser, self.steps, self.snr = denoiser, steps, snr
        self._t, self._cond = None, None

    def before_step(self, x, t, cond):
        self._t, self._cond = float(t), cond
        return x

    def after_step(self, x, t_next, generator):
        t = float(t_next)
        if t < 0 or self.steps == 0:
            return x
        sch = self.denoiser.schedule
        ab = sch.alpha_bar_scalar(t)
        alpha = ab / sch.alpha_bar_scalar(t - 1)
        r = self.snr if self.snr is not None else auto_snr(self.steps, sch, self._t, t)
        for _ in range(self.steps):
            z = randn(x.shape, generator, x.device, x.dtype)
            g = -_call(self.denoiser, x, t, self._cond).eps / math.sqrt(1 - ab)
            ratio = z.reshape(len(z), -1).norm(dim=1).mean() / g.reshape(len(g), -1).norm(dim=1).mean().clamp(min=1e-12)
            e = 2 * alpha * (r * ratio) ** 2
            x = x + e * g + (2 * e).sqrt() * z
        return x


def auto_snr(steps: int, schedule, t_from: float, t_to: float) -> float:
    """The corrector's snr r from NCSNv2's Technique 4 (`ncsn_step_ratio`): `steps` Langevin steps should bring the
    variance from the predictor's previous level (sigma_from^2) to the new one, gamma = sigma_from / sigma_to (VE sigmas).
    A Langevin step of size 2e relative to the level's variance (1 - alpha_bar) is that ratio; with ||g|| ~ ||z|| /
    sqrt(1 - alpha_bar), e = 2 alpha r^2 (1 - alpha_bar), so r = sqrt(ratio / (4 alpha))."""
    s_from, s_to = (math.sqrt((1 - a) / a) for a in (schedule.alpha_bar_scalar(t_from), schedule.alpha_bar_scalar(t_to)))
    alpha = schedule.alpha_bar_scalar(t_to) / schedule.alpha_bar_scalar(t_to - 1)
    return math.sqrt(ncsn_step_ratio(steps, max(s_from / s_to, 1.0 + 1e-6)) / (4 * alpha))


def pc(denoiser, x, steps: int = 20, *, predictor: str = "ddpm", corrector_steps: int = 1, snr: float | None = 0.16,
       cond=None, generator=None, hooks: Sequence = (), progress: bool = False, **options):
    """Predictor-corrector sampling (Song et al. 2021, Algorithms 2-3): each step of any core sampler (the predictor,
    with its `options`) is followed by `corrector_steps` Langevin corrector steps at the new time (the corrector after
    the predictor, as in the paper); snr None chooses it per step (`auto_snr`). Network evaluations: the predictor's
    plus corrector_steps per step but the last."""
    if predictor == "pc":
        raise SamplerOptionError("pc: the predictor must be another sampler")
    corrector = LangevinCorrector(denoiser, corrector_steps, snr)
    return get_sampler(predictor)(denoiser, x, steps, cond=cond, generator=generator, hooks=[corrector, *hooks],
                                  progress=progress, **options)


def ddgan(denoiser, x, steps: int | None = None, *, cond=None, generator=None, hooks: Sequence = (),
          spacing: str = "linspace", timesteps=None, alpha_bars=None, progress: bool = False):
    """Denoising diffusion GAN sampling (Xiao et al. 2022, Sec. 3): at each step a fresh latent z ~ N(0, I),
    x0' = G(x_t, z, t), then x_{t-1} ~ q(x_{t-1} | x_t, x0') (the last step returns x0'). steps = T (the default) is the
    chain the generator was trained on; fewer steps draw from the posterior between the grid's points instead."""
    from .ddgan import latent_shape
    if timesteps is None:
        timesteps = _timesteps(denoiser.schedule, steps or denoiser.schedule.T, spacing)
    z_shape = latent_shape(denoiser, x.shape)

    def step(i, x, ts, ab):
        z = {"z": randn(z_shape, generator, x.device, x.dtype)} if z_shape else {}
        pred = _call(denoiser, x, ts[i], cond, **z)
        return ddpm_step(pred, x, ab[i], ab[i + 1], "beta_tilde", generator, i == len(ts) - 2)
    return _walk(denoiser, x, timesteps, alpha_bars, step, cond=cond, generator=generator, hooks=hooks,
                 progress=progress, desc="ddgan")


SAMPLERS: dict[str, Callable] = {"ddpm": ddpm, "ddim": ddim, "dpmpp_2m": dpmpp_2m, "dpmpp_2m_sde": dpmpp_2m_sde,
                                  "euler": euler, "heun": heun, "consistency": consistency, "ddgan": ddgan, "pc": pc,
                                  "langevin": langevin, "annealed_langevin": annealed_langevin}


def nfe(sampler: str, steps: int, steps_per_level: int = 100, denoise: bool = True, predictor: str = "ddpm",
        corrector_steps: int = 1) -> int:
    """Network evaluations a sampler spends for `steps` steps (annealed Langevin: levels x steps per level (+ 1);
    predictor-corrector: the predictor's plus the corrector's at every step but the last)."""
    if sampler == "annealed_langevin":
        return steps * steps_per_level + int(denoise)
    if sampler == "pc":
        return nfe(predictor, steps) + corrector_steps * (steps - 1)
    return 2 * steps - 1 if sampler == "heun" else steps


def get_sampler(name: str) -> Callable:
    if name not in SAMPLERS:
        raise SamplerOptionError(f"unknown sampler {name!r}; valid: {sorted(SAMPLERS)}")
    return SAMPLERS[name]


@torch.no_grad()
def sample(denoiser, shape, sampler: str = "ddim", steps: int | None = 50, *, generator=None, cond=None,
           hooks: Sequence = (), device=None, x_T=None, progress: bool = False, **options):
    """Draw samples of `shape` with a named sampler; x_T ~ N(0, I) from `generator` unless given."""
    fn = get_sampler(sampler)
    if x_T is None:
        x_T = randn(tuple(shape), generator, device)
    needs_grad = any(getattr(h, "needs_grad", False) for h in hooks) or getattr(denoiser, "needs_grad", False)
    with torch.set_grad_enabled(needs_grad):
        return fn(denoiser, x_T, steps, cond=cond, generator=generator, hooks=hooks, progress=progress, **options)
