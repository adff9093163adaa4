"""Few-step students of a trained denoiser, as loss objects the trainer calls.

Progressive distillation (Salimans & Ho 2022, Algorithm 2): a student that samples in N deterministic DDIM steps
learns, at each of its steps, what two DDIM steps of its teacher (2N steps) do. Each stage halves N; the next stage's
teacher is the last student.

Times: the core's schedules are discrete (indices 0..T-1, with t = -1 the clean data). An N-step grid is
t_j = j T / N - 1, j = N, ..., 1 (`uniform_timesteps`, the "uniform" spacing of the core's samplers), followed by the
clean end point; so the 2N-step grid holds the N-step grid and the mid-points between its steps, at any N <= T / 2
(fractional indices use the schedule's log-sigma interpolation).

Guidance distillation (Meng et al. 2023, stage one) and consistency distillation (Song et al. 2023) are below.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .denoiser import Prediction
from .losses import UniformTimesteps
from .parameterization import q_sample, x0_to_eps
from .utils import append_dims, mean_flat, randn


def pd_target(z_t, z_t2, alpha_t, sigma_t, alpha_t2, sigma_t2):
    """The x-space target x~ that takes z_t to the teacher's z_t'' in one DDIM step (Salimans & Ho 2022, Alg. 2):
    x~ = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t)."""
    r = sigma_t2 / sigma_t
    return (z_t2 - r * z_t) / (alpha_t2 - r * alpha_t)


def ddim_to(pred, alpha_to, sigma_to):
    """The deterministic DDIM update to a lower noise level: alpha x0_hat + sigma eps_hat (Song et al. 2021, eq. 12)."""
    return alpha_to * pred.x0 + sigma_to * pred.eps


class ProgressiveDistillation:
    """One stage of progressive distillation: student steps N, teacher steps 2N (Salimans & Ho 2022, Algorithm 2).

    Called as loss(student, x0, cond, generator) -> (per-sample loss (B,), t (B,)), like DiffusionLoss. The loss is
    in x-space with the paper's truncated-SNR weighting max(alpha^2 / sigma^2, 1) ("weighting": "truncated_snr"), or
    unweighted in x-space ("x0"). `teacher` is any denoiser in the core contract (a guided one distils guidance)."""

    WEIGHTINGS = ("truncated_snr", "x0")

    def __init__(self, teacher, student_steps: int, weighting: str = "truncated_snr"):
        if weighting not in self.WEIGHTINGS:
            raise ValueError(f"ProgressiveDistillation: weighting {weighting!r}; valid: {self.WEIGHTINGS}")
        self.teacher, self.N, self.weighting = teacher, int(student_steps), weighting
        T = teacher.schedule.T
        if not 1 <= self.N <= T // 2:
            raise ValueError(f"ProgressiveDistillation: student steps must be in [1, {T // 2}] for T={T}, got {self.N}")
        self.T = T

    def times(self, B: int, generator, device):
        """Per sample: a student time t = j T / N - 1 and the teacher's two steps t' = t - T / 2N, t'' = t - T / N."""
        j = torch.randint(1, self.N + 1, (B,), generator=generator, device=generator.device if generator else None)
        t = j.to(device, torch.float64) * self.T / self.N - 1
        return t, t - self.T / (2 * self.N), t - self.T / self.N

    def __call__(self, student, x0, cond=None, generator=None):
        inner = student.module if hasattr(student, "module") else student
        sch = inner.schedule
        t, t1, t2 = self.times(x0.shape[0], generator, x0.device)
        ab = [sch.alpha_bar_at(s).to(x0.device) for s in (t, t1, t2)]
        alpha = [append_dims(a.sqrt().to(x0.dtype), x0.ndim) for a in ab]
        sigma = [append_dims((1 - a).clamp(min=0).sqrt().to(x0.dtype), x0.ndim) for a in ab]
        eps = randn(x0.shape, generator, x0.device, x0.dtype)
        z_t = alpha[0] * x0 + sigma[0] * eps
        with torch.no_grad():
            z_t1 = ddim_to(self.teacher(z_t, t.float(), cond), alpha[1], sigma[1])
            z_t2 = ddim_to(self.teacher(z_t1, t1.float(), cond), alpha[2], sigma[2])
            target = pd_target(z_t, z_t2, alpha[0], sigma[0], alpha[2], sigma[2])
        return x_space_loss(student(z_t, t.float(), cond).x0, target, ab[0], self.weighting), t


def x_space_loss(x0_hat, target, alpha_bar, weighting: str):
    """Per-sample squared error in x-space, weighted by the truncated SNR max(alpha^2 / sigma^2, 1) (Salimans & Ho
    2022, eq. 9) or unweighted ("x0")."""
    mse = mean_flat((x0_hat.float() - target.float()) ** 2)
    if weighting == "truncated_snr":
        mse = mse * (alpha_bar / (1 - alpha_bar)).clamp(min=1.0).to(mse.dtype)
    return mse


class GuidanceDistillation:
    """Guidance distillation, stage one at a fixed w (Meng et al. 2023, eq. 6): the student learns to predict in one
    network evaluation the x0 that its classifier-free guided teacher predicts in two, (1 + w) x0(z_t, c) - w x0(z_t),
    at the same z_t and t ~ U{0..T-1}; x-space loss with `weighting` as progressive distillation's. `teacher` is the
    guided denoiser (core.guidance.ClassifierFreeGuidance). Called like DiffusionLoss."""

    def __init__(self, teacher, weighting: str = "truncated_snr"):
        if weighting not in ProgressiveDistillation.WEIGHTINGS:
            raise ValueError(f"GuidanceDistillation: weighting {weighting!r}; "
                             f"valid: {ProgressiveDistillation.WEIGHTINGS}")
        self.teacher, self.weighting, self.T = teacher, weighting, teacher.schedule.T

    def __call__(self, student, x0, cond=None, generator=None):
        t, _ = UniformTimesteps(self.T).sample(x0.shape[0], generator, x0.device)
        ab = self.teacher.schedule.alpha_bar_at(t.double()).to(x0.device)
        z_t = q_sample(x0, ab.to(x0.dtype), randn(x0.shape, generator, x0.device, x0.dtype))
        with torch.no_grad():
            target = self.teacher(z_t, t.float(), cond).x0
        return x_space_loss(student(z_t, t.float(), cond).x0, target, ab, self.weighting), t



def consistency_coefs(sigma, sigma_min: float, sigma_data: float = 0.5, form: str = "edm"):
    """(a, b) with f = a x + b x0_hat, on the variance-exploding state x = x_t / alpha_t at noise level sigma.

    Song et al. (2023, App. C): f = c_skip x + c_out F, c_skip = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2),
    c_out = sigma_data (sigma - sigma_min) / sqrt(sigma^2 + sigma_data^2), where F is the network of an EDM denoiser
    x0_hat = c_skip^EDM x + c_out^EDM F (Karras et al. 2022: sigma_data^2 / (sigma^2 + sigma_data^2) and
    sigma sigma_data / sqrt(sigma^2 + sigma_data^2)). form "edm" writes F through the network's own x0 estimate,
    so a = c_skip - b c_skip^EDM and b = c_out / c_out^EDM = (sigma - sigma_min) / sigma: f = x exactly at sigma_min,
    and a student copied from its teacher starts as the teacher's x0 predictor (to O(sigma_min / sigma)), as Song et
    al.'s students start from their EDM teachers. form "blend" (before session 40): a = c_skip, b = 1 - c_skip, which
    starts as a blend of x0_hat with the noisy x wherever c_skip is not small."""
    c_skip = sigma_data ** 2 / ((sigma - sigma_min) ** 2 + sigma_data ** 2)
    if form == "blend":
        return c_skip, 1 - c_skip
    if form != "edm":
        raise ValueError(f"consistency_coefs: form must be 'edm' or 'blend', got {form!r}")
    b = (sigma - sigma_min) / sigma
    return c_skip - b * sigma_data ** 2 / (sigma ** 2 + sigma_data ** 2), b


class ConsistencyFunction(nn.Module):
    """f(x_t, t) = a(sigma_t) x_t / alpha_t + b(sigma_t) x0_hat(x_t, t) around a denoiser (Song et al. 2023, eq. 3 and
    App. C, on the core's VP schedules: x_t / alpha_t is the variance-exploding state, sigma_t = sqrt(1 - ab) / sqrt(ab);
    a, b from consistency_coefs, and the boundary t = 0 gives f = x_0 / alpha_0 exactly). Returns a Prediction whose
    x0 is f, so the core's samplers and hooks run on it; `samplers.consistency` is Algorithm 1. A sampling denoiser's
    x0 transform (clipping) moves onto f: the network's own x0 term is not a sample and must not be clipped."""

    def __init__(self, denoiser, sigma_data: float = 0.5, form: str = "edm"):
        super().__init__()
        self.x0_transform, denoiser.x0_transform = getattr(denoiser, "x0_transform", None), None
        self.denoiser, self.sigma_data, self.form = denoiser, sigma_data, form
        self.schedule = denoiser.schedule
        self.sigma_min = float(self.schedule.sigma[0])

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["denoiser"], name)  # net, prediction, autocast_dtype, ...

    def forward(self, x_t, t, cond=None):
        pred = self.denoiser(x_t, t, cond)
        t = torch.as_tensor(t, device=x_t.device, dtype=torch.float64).expand(x_t.shape[0])
        ab = self.schedule.alpha_bar_at(t).to(x_t.device)
        sigma = ((1 - ab) / ab).sqrt()
        a, b = (append_dims(c.to(x_t.dtype), x_t.ndim)
                for c in consistency_coefs(sigma, self.sigma_min, self.sigma_data, self.form))
        x0 = a * x_t / append_dims(ab.sqrt().to(x_t.dtype), x_t.ndim) + b * pred.x0
        if self.x0_transform is not None:
            x0 = self.x0_transform(x0)
        return Prediction(x0=x0, eps=x0_to_eps(x_t, x0, ab.to(x_t.dtype)), out=pred.out, v_var=pred.v_var)


class ConsistencyDistillation:
    """Consistency distillation (Song et al. 2023, Algorithm 2) on a discrete VP schedule.

    The ODE grid t_n = n (T - 1) / N, n = 0..N (t_0 = 0 is the boundary). Per sample: n ~ U{0..N-1},
    x_{t_{n+1}} = alpha x0 + sigma eps, one deterministic DDIM step of the teacher to x^_{t_n} (the ODE solver), and the
    loss ||f_theta(x_{t_{n+1}}, t_{n+1}) - f_theta-(x^_{t_n}, t_n)||^2 (lambda = 1, squared L2 per sample), where
    theta- is an EMA of the student's weights with decay mu (`target_decay`; updated before each loss evaluation, and
    saved in checkpoints through state_dict so a resume is exact). Called like DiffusionLoss."""

    def __init__(self, teacher, student, ode_steps: int = 18, target_decay: float = 0.95):
        T = teacher.schedule.T
        if not 1 <= ode_steps <= T - 1:
            raise ValueError(f"ConsistencyDistillation: ode_steps must be in [1, {T - 1}], got {ode_steps}")
        self.teacher, self.N, self.mu, self.T = teacher, int(ode_steps), float(target_decay), T
        inner = student.module if hasattr(student, "module") else student
        self.target = copy.deepcopy(inner).requires_grad_(False).eval()

    def state_dict(self) -> dict:
        return {k: v.detach().clone() for k, v in self.target.state_dict().items()}

    def load_state_dict(self, sd: dict) -> None:
        self.target.load_state_dict(sd)

    @torch.no_grad()
    def _update_target(self, student) -> None:
        inner = student.module if hasattr(student, "module") else student
        for p_t, p in zip(self.target.parameters(), inner.parameters()):
            p_t.mul_(self.mu).add_(p.detach(), alpha=1 - self.mu)

    def __call__(self, student, x0, cond=None, generator=None):
        self._update_target(student)
        sch = self.teacher.schedule
        n = torch.randint(0, self.N, (x0.shape[0],), generator=generator,
                          device=generator.device if generator else None).to(x0.device, torch.float64)
        t1, t0 = (n + 1) * (self.T - 1) / self.N, n * (self.T - 1) / self.N
        ab1, ab0 = sch.alpha_bar_at(t1).to(x0.device), sch.alpha_bar_at(t0).to(x0.device)
        a1, s1, a0, s0 = (append_dims(v.to(x0.dtype), x0.ndim) for v in (ab1.sqrt(), (1 - ab1).sqrt(), ab0.sqrt(),
                                                                            (1 - ab0).sqrt()))
        x_t1 = a1 * x0 + s1 * randn(x0.shape, generator, x0.device, x0.dtype)
        with torch.no_grad():
            x_t0 = ddim_to(self.teacher(x_t1, t1.float(), cond), a0, s0)
            target = self.target(x_t0, t0.float(), cond).x0
        pred = student(x_t1, t1.float(), cond).x0
        return mean_flat((pred.float() - target.float()) ** 2), t1
