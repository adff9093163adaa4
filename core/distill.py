"""Few-step students of a trained denoiser, as loss objects the trainer calls.

Progressive distillation (Salimans & Ho 2022, Algorithm 2): a student that samples in N deterministic DDIM steps
learns, at each of its steps, what two DDIM steps of its teacher (2N steps) do. Each stage halves N; the next stage's
teacher is the last student.

Times: the core's schedules are discrete (indices 0..T-1, with t = -1 the clean data). An N-step grid is
t_j = j T / N - 1, j = N, ..., 1 (`uniform_timesteps`, the "uniform" spacing of the core's samplers), followed by the
clean end point; so the 2N-step grid holds the N-step grid and the mid-points between its steps, at any N <= T / 2
(fractional indices use the schedule's log-sigma interpolation).
"""
from __future__ import annotations

import torch

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
        pred = student(z_t, t.float(), cond)
        mse = mean_flat((pred.x0.float() - target.float()) ** 2)
        if self.weighting == "truncated_snr":
            mse = mse * (ab[0] / (1 - ab[0])).clamp(min=1.0).to(mse.dtype)
        return mse, t

