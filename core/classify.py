"""The zero-shot diffusion classifier (Li et al. 2023, "Your diffusion model is secretly a zero-shot classifier").

A conditional denoiser scores each candidate condition c of an input x by its expected noise-prediction error
E_{t, eps} ||eps - eps_theta(x_t, t, c)|| (the ELBO's simple form, up to constants; Sec. 3.1, eq. 5): the lower, the
likelier c. Every candidate is scored on the same (t, eps) pairs (the paper's variance reduction), with t on a
stratified grid over the schedule's steps; the rounds of Sec. 3.2 spend the budget adaptively: after a round, only
the `keep` best candidates of each input go on to the next round's further pairs. Class probabilities are
softmax(-error / temperature) (eq. 6 with the simple error as the ELBO; temperature 1 unless calibrated).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from .parameterization import q_sample
from .utils import randn

NORMS = ("l2", "l1")


@dataclass
class Candidates:
    """What `classify` ranks for a batch of inputs x (B, ...): the candidate conditions, (K, ...) shared by every input
    or (B, K, ...) per input (`per_input`); the class each candidate stands for (K,) when several conditions make one
    class (None: candidate k is class k); the class names; the inputs' true classes (B,) or None; per input, which part
    of it is classified, when a part is (e.g. a music window's beat; for reports)."""

    x: torch.Tensor
    conditions: torch.Tensor
    names: list
    labels: Optional[torch.Tensor] = None
    per_input: bool = False
    class_of: Optional[torch.Tensor] = None
    where: Optional[list] = None

    def __post_init__(self):
        K = self.conditions.shape[1 if self.per_input else 0]
        if self.per_input and self.conditions.shape[0] != len(self.x):
            raise ValueError(f"classify: per-input candidates of shape {tuple(self.conditions.shape)} for "
                             f"{len(self.x)} inputs; expected ({len(self.x)}, K, ...)")
        if self.class_of is None:
            self.class_of = torch.arange(K)
        if len(self.class_of) != K or int(self.class_of.max()) >= len(self.names):
            raise ValueError(f"classify: class_of must give each of the {K} candidates one of the {len(self.names)} "
                             "classes")

    def first(self, n: int) -> "Candidates":
        """The first n inputs only."""
        return Candidates(self.x[:n], self.conditions[:n] if self.per_input else self.conditions, self.names,
                          None if self.labels is None else self.labels[:n], self.per_input, self.class_of,
                          None if self.where is None else self.where[:n])

    def class_errors(self, errors: torch.Tensor) -> torch.Tensor:
        """(B, classes): each class's lowest candidate error (its likeliest condition)."""
        out = torch.full((errors.shape[0], len(self.names)), math.inf, dtype=errors.dtype)
        return out.scatter_reduce(1, self.class_of.expand_as(errors), errors, "amin")

    def predict(self, ranking: "Ranking") -> torch.Tensor:
        """The class of each input's best candidate in the last round (B,)."""
        return self.class_of[ranking.top1]


@dataclass
class Ranking:
    """Per input (B): each candidate's mean error over the (t, eps) pairs it was scored on (B, K), which candidates
    lasted to the last round (B, K), how many pairs each got (B, K), and the network evaluations spent (B,)."""

    errors: torch.Tensor
    alive: torch.Tensor
    trials: torch.Tensor
    nfe: torch.Tensor
    rounds: list = field(default_factory=list)

    @property
    def top1(self) -> torch.Tensor:
        """The best candidate of the last round per input (B,)."""
        return torch.where(self.alive, self.errors, torch.full_like(self.errors, math.inf)).argmin(dim=1)

    def probabilities(self, temperature: float = 1.0) -> torch.Tensor:
        """p(c | x) = softmax(-error / temperature) over the candidates (an eliminated candidate with the error of the
        pairs it was scored on)."""
        return torch.softmax(-self.errors / temperature, dim=1)


def default_rounds(K: int, budget: float) -> list[tuple[int, Optional[int]]]:
    """Rounds [(pairs, keep), ...] that spend on average `budget` evaluations per candidate: half of it on every
    candidate, then the rest on the best max(1, ceil(K / 5)) (Li et al. 2023, Sec. 3.2's two-round scheme, scaled)."""
    if budget < 1:
        raise ValueError(f"classify: the budget must be at least 1 evaluation per candidate, got {budget}")
    if K == 1:
        return [(max(1, int(budget)), None)]
    keep = max(1, math.ceil(K / 5))
    first = max(1, int(budget // 2))
    second = int((budget * K - first * K) // keep)
    return [(first, keep), (second, None)] if second > 0 else [(first, None)]


def stratified_t(n: int, T: int, B: int, generator) -> torch.Tensor:
    """(n, B) timesteps: one per stratum [i T / n, (i + 1) T / n), i = 0..n-1, at a uniform offset, per input."""
    u = torch.rand(n, B, generator=generator, dtype=torch.float64)
    return ((torch.arange(n, dtype=torch.float64)[:, None] + u) * T / n).floor().clamp(max=T - 1)


def _errors(denoiser, x0, t, eps, cond, norm: str):
    """Per-row noise-prediction error: ||eps - eps_theta(x_t, t, c)||^2 (l2, summed over the dimensions as in the
    paper's eq. 5) or ||.||_1 (l1)."""
    x_t = q_sample(x0, denoiser.schedule.alpha_bar_at(t).to(x0.device, x0.dtype), eps)
    d = (denoiser(x_t, t.to(x0.device, torch.float32), cond).eps.float() - eps.float()).reshape(len(x0), -1)
    return d.pow(2).sum(1) if norm == "l2" else d.abs().sum(1)


@torch.no_grad()
def classify(denoiser, x: torch.Tensor, candidates: torch.Tensor, *, budget: float = 20,
             rounds: Optional[Sequence[tuple[int, Optional[int]]]] = None, norm: str = "l2",
             generator: Optional[torch.Generator] = None, batch_size: int = 256, per_input: bool = False) -> Ranking:
    """Rank the K `candidates` (a tensor of K conditions stacked on dim 0, or with per_input (B, K, ...): each input's
    own K) for each input of x (B, ...) by the denoiser's noise-prediction error (Li et al. 2023, Algorithm 1 with
    Sec. 3.2's adaptive rounds). `budget`: network evaluations per candidate on average (ignored when `rounds` are
    given)."""
    if norm not in NORMS:
        raise ValueError(f"classify: norm must be one of {NORMS}, got {norm!r}")
    B, K, T = x.shape[0], candidates.shape[1 if per_input else 0], denoiser.schedule.T
    rounds = list(rounds) if rounds is not None else default_rounds(K, budget)
    total = torch.zeros(B, K, dtype=torch.float64)
    trials = torch.zeros(B, K, dtype=torch.long)
    alive = torch.ones(B, K, dtype=torch.bool)
    for n, keep in rounds:
        ts = stratified_t(n, T, B, generator)
        for i in range(n):
            eps = randn(x.shape, generator, x.device, x.dtype)
            b, k = alive.nonzero(as_tuple=True)
            for s in range(0, len(b), batch_size):  # every alive (input, candidate) pair shares this (t, eps)
                bb, kk = b[s:s + batch_size], k[s:s + batch_size]
                dev = candidates.device
                c = candidates[bb.to(dev), kk.to(dev)] if per_input else candidates[kk.to(dev)]
                e = _errors(denoiser, x[bb.to(x.device)], ts[i][bb], eps[bb.to(x.device)], c, norm)
                total[bb, kk] += e.double().cpu()
                trials[bb, kk] += 1
        if keep is not None and keep < K:
            mean = torch.where(alive, total / trials.clamp(min=1), torch.full_like(total, math.inf))
            best = mean.topk(keep, dim=1, largest=False).indices
            alive = torch.zeros_like(alive).scatter_(1, best, True)
    return Ranking((total / trials.clamp(min=1)).float(), alive, trials, trials.sum(1), rounds)


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 10) -> float:
    """ECE (Guo et al. 2017): the |accuracy - confidence| of the top class, averaged over equal-width confidence bins,
    weighted by the bins' shares of the inputs."""
    conf, pred = probs.max(dim=1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += float(m.float().mean()) * abs(float(correct[m].mean()) - float(conf[m].mean()))
    return ece
