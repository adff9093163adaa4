"""Exact denoisers with no training: Gaussian-mixture data has a closed-form ideal denoiser.

For x_0 ~ sum_k pi_k N(mu_k, Sigma_k) and x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps (Ho et al. 2020, eq. 4),
    x_t | k ~ N(sqrt(ab) mu_k, ab Sigma_k + (1 - ab) I),
    E[x_0 | x_t, k] = mu_k + sqrt(ab) Sigma_k (ab Sigma_k + (1 - ab) I)^{-1} (x_t - sqrt(ab) mu_k),
and E[x_0 | x_t] averages these with the responsibilities p(k | x_t). Each Sigma_k = U_k diag(s_k) U_k^T is
diagonalised once, so every noise level costs two (B, D) x (D, D) products per component (none when diagonal).
All math runs in float64.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .parameterization import target_for


class GaussianMixture:
    """sum_k pi_k N(mu_k, Sigma_k) in D dimensions; covs are (K, D, D) full or (K, D) diagonal."""

    def __init__(self, means, covs, weights=None):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        if self.means.ndim != 2:
            raise ValueError(f"GaussianMixture: means must be (K, D), got shape {tuple(self.means.shape)}")
        K, D = self.means.shape
        covs = torch.as_tensor(covs, dtype=torch.float64)
        w = torch.full((K,), 1.0 / K, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (K,) or (w < 0).any() or abs(float(w.sum()) - 1) > 1e-9:
            raise ValueError(f"GaussianMixture: weights must be ({K},), non-negative, summing to 1; got {w.tolist()}")
        self.weights = w
        if covs.shape == (K, D):
            self.eigvals, self.U = covs, None
        elif covs.shape == (K, D, D):
            self.eigvals, self.U = torch.linalg.eigh(0.5 * (covs + covs.transpose(1, 2)))
        else:
            raise ValueError(f"GaussianMixture: covs must be ({K}, {D}) or ({K}, {D}, {D}), got {tuple(covs.shape)}")
        if (self.eigvals < 0).any():
            raise ValueError("GaussianMixture: covariances must be positive semi-definite")

    @property
    def K(self) -> int:
        return self.means.shape[0]

    @property
    def D(self) -> int:
        return self.means.shape[1]

    @property
    def covs(self) -> torch.Tensor:
        """Full (K, D, D) covariances."""
        if self.U is None:
            return torch.diag_embed(self.eigvals)
        return self.U @ torch.diag_embed(self.eigvals) @ self.U.transpose(1, 2)

    def mean(self) -> torch.Tensor:
        return self.weights @ self.means

    def cov(self) -> torch.Tensor:
        """Total covariance: sum_k pi_k (Sigma_k + mu_k mu_k^T) - m m^T."""
        m = self.mean()
        second = (self.weights[:, None, None] * (self.covs + self.means[:, :, None] * self.means[:, None, :])).sum(0)
        return second - m[:, None] * m[None, :]

    def _to_eig(self, v, k):
        return v if self.U is None else v @ self.U[k]

    def _from_eig(self, v, k):
        return v if self.U is None else v @ self.U[k].T

    def sample(self, n: int, generator: Optional[torch.Generator] = None, return_labels: bool = False):
        """n draws (float64): pick k ~ pi, then mu_k + U_k sqrt(s_k) z."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.D, generator=generator, dtype=torch.float64)
        x = torch.empty(n, self.D, dtype=torch.float64)
        for j in range(self.K):
            idx = k == j
            x[idx] = self.means[j] + self._from_eig(z[idx] * self.eigvals[j].sqrt(), j)
        return (x, k) if return_labels else x

    def noised_stats(self, x_t, alpha_bar):
        """Per component k: log pi_k + log N(x_t; sqrt(ab) mu_k, ab Sigma_k + (1-ab) I) and E[x_0 | x_t, k].

        x_t is (B, D) float64, alpha_bar is (B,) float64. Returns (log_joint (B, K), x0_k (B, K, D)).
        """
        if self.U is None:
            return self._noised_stats_diagonal(x_t, alpha_bar)
        a, ab = alpha_bar.sqrt()[:, None], alpha_bar[:, None]
        logs, x0s = [], []
        for k in range(self.K):
            s = self.eigvals[k][None, :]
            d = ab * s + (1 - ab)  # eigenvalues of the noised covariance
            y = self._to_eig(x_t - a * self.means[k], k)
            logs.append(-0.5 * ((y * y / d).sum(1) + d.log().sum(1) + self.D * math.log(2 * math.pi)))
            x0s.append(self.means[k] + self._from_eig(a * s / d * y, k))
        return torch.stack(logs, 1) + self.weights.log(), torch.stack(x0s, 1)

    def _noised_stats_diagonal(self, x_t, alpha_bar):
        """`noised_stats` for diagonal covariances, all components at once on (B, K, D) tensors."""
        a, ab = alpha_bar.sqrt()[:, None, None], alpha_bar[:, None, None]
        s = self.eigvals[None]
        d = ab * s + (1 - ab)
        y = x_t[:, None, :] - a * self.means[None]
        log_n = -0.5 * ((y * y / d).sum(2) + d.log().sum(2) + self.D * math.log(2 * math.pi))
        return log_n + self.weights.log(), self.means[None] + a * s / d * y

    def log_prob(self, x, alpha_bar=1.0) -> torch.Tensor:
        """log q(x) (or of the noised marginal q_t at alpha_bar); x is (B, D)."""
        x = torch.as_tensor(x, dtype=torch.float64).reshape(len(x), -1)
        ab = torch.as_tensor(alpha_bar, dtype=torch.float64).expand(x.shape[0])
        log_joint, _ = self.noised_stats(x, ab)
        return log_joint.logsumexp(1)

    def responsibilities(self, x, alpha_bar=1.0) -> torch.Tensor:
        """p(k | x) under the (noised) mixture, (B, K)."""
        x = torch.as_tensor(x, dtype=torch.float64).reshape(len(x), -1)
        log_joint, _ = self.noised_stats(x, torch.as_tensor(alpha_bar, dtype=torch.float64).expand(x.shape[0]))
        return log_joint.softmax(1)

    def posterior_mean(self, x_t, alpha_bar) -> torch.Tensor:
        """E[x_0 | x_t] = sum_k p(k | x_t) E[x_0 | x_t, k] (Tweedie's formula in closed form)."""
        log_joint, x0s = self.noised_stats(x_t, alpha_bar)
        return (log_joint.softmax(1)[:, :, None] * x0s).sum(1)


class ExactGMMNet(nn.Module):
    """A raw network net(x_t, t, cond) that returns the exact eps (or x0 / v) prediction for GMM data.

    x_t may have any shape (B, ...) whose trailing dims flatten to the mixture dimension D; t may be fractional
    (alpha_bar from `schedule.alpha_bar_at`). cond is ignored unless `cond_gmms` maps integer labels to mixtures.
    """

    def __init__(self, gmm: GaussianMixture, schedule, prediction: str = "eps", cond_gmms: Optional[dict] = None):
        super().__init__()
        self.gmm, self.schedule, self.prediction, self.cond_gmms = gmm, schedule, prediction, cond_gmms

    def x0_and_eps(self, x_t, t, gmm=None):
        """(E[x_0 | x_t], E[eps | x_t]) in float64, shape (B, D)."""
        gmm = gmm or self.gmm
        x = x_t.detach().to(torch.float64).reshape(x_t.shape[0], -1)
        if x.shape[1] != gmm.D:
            raise ValueError(f"ExactGMMNet: x_t has {x.shape[1]} values per sample, the mixture has D={gmm.D}")
        ab = self.schedule.alpha_bar_at(torch.as_tensor(t, dtype=torch.float64).cpu().expand(x.shape[0]))
        x0 = gmm.posterior_mean(x.cpu(), ab)
        eps = (x.cpu() - ab.sqrt()[:, None] * x0) / (1 - ab).sqrt()[:, None]
        return x0, eps, ab

    def _one(self, x_t, t, gmm):
        x0, eps, ab = self.x0_and_eps(x_t, t, gmm)
        return target_for(self.prediction, x0, eps, ab)

    def forward(self, x_t, t, cond=None):
        if self.cond_gmms is None or cond is None:
            out = self._one(x_t, t, self.gmm)
        else:
            out = torch.empty(x_t.shape[0], self.gmm.D, dtype=torch.float64)
            t = torch.as_tensor(t, dtype=torch.float64).expand(x_t.shape[0])
            for c in cond.unique().tolist():
                idx = (cond == c).cpu()
                g = self.cond_gmms.get(int(c), self.gmm)
                out[idx] = self._one(x_t[idx.to(x_t.device)], t[idx], g)
        return out.reshape(x_t.shape).to(x_t.dtype).to(x_t.device)


def diagonal_gmm(D: int = 64, K: int = 3, seed: int = 0, spread: float = 2.0) -> GaussianMixture:
    """A reproducible K-component diagonal mixture in D dimensions (used by tests and benchmarks)."""
    g = torch.Generator().manual_seed(seed)
    means = spread * torch.randn(K, D, generator=g, dtype=torch.float64) / math.sqrt(D) * 2
    covs = 0.05 + 0.5 * torch.rand(K, D, generator=g, dtype=torch.float64)
    weights = torch.softmax(torch.randn(K, generator=g, dtype=torch.float64) * 0.5, 0)
    return GaussianMixture(means, covs, weights)


def gmm_2d() -> GaussianMixture:
    """A 3-component 2-D mixture with unequal weights and correlated covariances."""
    means = [[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]]
    covs = [[[0.3, 0.15], [0.15, 0.2]], [[0.15, -0.05], [-0.05, 0.4]], [[0.25, 0.0], [0.0, 0.1]]]
    return GaussianMixture(means, covs, [0.5, 0.3, 0.2])
