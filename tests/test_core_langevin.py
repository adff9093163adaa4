"""Score-based sampling (Song & Ermon 2019): the geometric noise levels, plain Langevin dynamics and annealed Langevin
dynamics, checked with exact scores of Gaussian (mixture) data."""
from __future__ import annotations

import math

import torch

from diffsuite.core.analytic import ExactGMMNet, GaussianMixture
from diffsuite.core.denoiser import Denoiser
from diffsuite.core.samplers import ncsn_step_ratio, nfe, sample
from diffsuite.core.schedules import make_schedule

# Song & Ermon (2019), Sec. 3.3 / Figure 3: 0.2 N((-5, -5), I) + 0.8 N((5, 5), I); sigma from 20 down to 1, L = 10
TWO_MODES = GaussianMixture([[-5.0, -5.0], [5.0, 5.0]], [[1.0, 1.0], [1.0, 1.0]], [0.2, 0.8])
LEVELS = make_schedule("geometric", 10, beta_start=1.0, beta_end=20.0)


def test_geometric_levels():
    s = LEVELS.sigma
    assert math.isclose(float(s[0]), 1.0) and math.isclose(float(s[-1]), 20.0)
    ratios = s[1:] / s[:-1]
    assert torch.allclose(ratios, ratios[0].expand_as(ratios))  # a geometric sequence
    assert torch.allclose(LEVELS.alpha_bar, 1 / (1 + s**2))


def test_langevin_samples_a_gaussian():
    """Plain Langevin with the exact score of N(mu, diag(s^2)) (at the smallest noise level, sigma = 0.01) reaches it."""
    g = GaussianMixture([[1.0, -2.0]], [[0.5, 2.0]])
    sch = make_schedule("geometric", 5, beta_start=0.01, beta_end=10.0)
    x = sample(Denoiser(ExactGMMNet(g, sch), sch), (20_000, 2), "langevin", 1000,
               generator=torch.Generator().manual_seed(0), step_size=0.05)
    assert torch.allclose(x.mean(0), torch.tensor([1.0, -2.0]), atol=0.05)
    assert torch.allclose(x.var(0), torch.tensor([0.5, 2.0]), rtol=0.05)


def _left_weight(x):
    return float((x.sum(1) < 0).float().mean())


def test_plain_langevin_gets_the_mode_weights_wrong():
    """Figure 3 of the paper: started wide, Langevin with the exact data score splits the particles by the basins they
    start in (about half each) instead of 0.2 / 0.8; the score is blind to the weights far from the modes."""
    den = Denoiser(ExactGMMNet(TWO_MODES, LEVELS), LEVELS)
    x = sample(den, (6000, 2), "langevin", 1000, generator=torch.Generator().manual_seed(0), step_size=0.1)
    assert abs(_left_weight(x) - 0.2) > 0.2


def test_annealed_langevin_recovers_the_mode_weights():
    """Annealed Langevin (Algorithm 1: 10 levels, eps = 0.1, 300 steps per level) brings the weight error under 0.02."""
    den = Denoiser(ExactGMMNet(TWO_MODES, LEVELS), LEVELS)
    x = sample(den, (6000, 2), "annealed_langevin", 10, generator=torch.Generator().manual_seed(0),
               steps_per_level=300, eps=0.1)
    assert abs(_left_weight(x) - 0.2) <= 0.02, _left_weight(x)
    right = x[x.sum(1) > 0]
    assert torch.allclose(right.mean(0), torch.tensor([5.0, 5.0]), atol=0.1)
    assert nfe("annealed_langevin", 10, 300) == 3001


def test_ncsn_step_ratio_meets_technique_4():
    """NCSNv2's rule: the ratio r brings (1 - r)^(2T) (gamma^2 - 2 / (2 - r)) + 2 / (2 - r) closest to 1."""
    f = lambda r, T, gamma: (1 - r) ** (2 * T) * (gamma**2 - 2 / (2 - r)) + 2 / (2 - r)  # noqa: E731
    for T, gamma in ((100, 1.8), (5, 1.3), (1000, 1.05)):
        r = ncsn_step_ratio(T, gamma)
        assert 0 < r < 0.5
        assert all(abs(f(r, T, gamma) - 1) <= abs(f(r * k, T, gamma) - 1) + 1e-9 for k in (0.8, 0.9, 1.1, 1.25))
    assert abs(f(ncsn_step_ratio(100, 1.8), 100, 1.8) - 1) < 0.03
