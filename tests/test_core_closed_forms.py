"""Closed forms of the schedules and parameterizations, each checked against an independent computation."""
import math

import numpy as np
import pytest
import torch

from diffsuite.core import parameterization as P
from diffsuite.core.analytic import ExactGMMNet, GaussianMixture
from diffsuite.core.denoiser import Denoiser
from diffsuite.core.samplers import SAMPLERS, sample
from diffsuite.core.schedules import make_schedule, rescale_zero_terminal_snr

torch.set_num_threads(1)
NAMES = ["linear", "cosine", "scaled_linear", "sigmoid"]


def test_linear_schedule_values():
    s = make_schedule("linear", 1000)
    assert s.T == 1000 and s.betas.dtype == torch.float64
    assert float(s.betas[0]) == pytest.approx(1e-4) and float(s.betas[-1]) == pytest.approx(0.02)
    assert float(s.alpha_bar[-1]) == pytest.approx(float(np.prod(1 - np.linspace(1e-4, 0.02, 1000))), rel=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_q_sample_moments_by_monte_carlo(name):
    """x_t | x_0 ~ N(sqrt(ab) x_0, (1 - ab) I) (Ho et al. 2020, eq. 4): 4-sigma Monte Carlo bounds on mean and variance."""
    s, n = make_schedule(name, 1000), 200_000
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([0.7, -1.3], dtype=torch.float64)
    for t in (0, 250, 999):
        ab = s.alpha_bar[t]
        x_t = P.q_sample(x0.expand(n, 2), ab.expand(n), torch.randn(n, 2, generator=g, dtype=torch.float64))
        var = 1 - float(ab)
        assert torch.allclose(x_t.mean(0), ab.sqrt() * x0, atol=4 * math.sqrt(var / n))
        assert torch.allclose(x_t.var(0), torch.full((2,), var, dtype=torch.float64), rtol=4 * math.sqrt(2 / n))


@pytest.mark.parametrize("name", NAMES)
def test_posterior_mean_and_beta_tilde(name):
    """q(x_{t-1} | x_t, x_0) by Gaussian conditioning of the joint (x_{t-1}, x_t) given x_0 vs DDPM eq. 6-7."""
    s = make_schedule(name, 1000)
    for t in (1, 10, 500, 999):
        ab_p, ab, beta = float(s.alpha_bar[t - 1]), float(s.alpha_bar[t]), float(s.betas[t])
        # x_{t-1} = sqrt(ab_p) x0 + sqrt(1-ab_p) e1;  x_t = sqrt(1-beta) x_{t-1} + sqrt(beta) e2
        var_prev, cov, var_t = 1 - ab_p, math.sqrt(1 - beta) * (1 - ab_p), 1 - ab
        gain = cov / var_t  # coefficient on (x_t - E x_t)
        coef2 = gain
        coef1 = math.sqrt(ab_p) - gain * math.sqrt(ab)
        assert float(s.posterior_mean_coef1[t]) == pytest.approx(coef1, rel=1e-9)
        assert float(s.posterior_mean_coef2[t]) == pytest.approx(coef2, rel=1e-9)
        assert float(s.beta_tilde[t]) == pytest.approx(var_prev - cov * gain, rel=1e-7)
    assert float(s.beta_tilde[0]) == 0.0
    assert float(s.log_beta_tilde_clipped[0]) == pytest.approx(math.log(float(s.beta_tilde[1])))


def test_cosine_schedule_values():
    """alpha_bar(t) = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2), s = 0.008; betas capped at 0.999 (IDDPM eq. 17)."""
    T, s_ = 1000, 0.008
    f = lambda t: math.cos((t / T + s_) / (1 + s_) * math.pi / 2) ** 2
    sch = make_schedule("cosine", T)
    for t in (0, 1, 100, 500, 900, 998):  # index t is the paper's t + 1
        assert float(sch.alpha_bar[t]) == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert float(sch.betas.max()) == pytest.approx(0.999) and float(sch.betas[-1]) == pytest.approx(0.999)
    assert (sch.betas[:-1] < 0.999).all()  # only the last one hits the cap (f(T) = 0 would give beta = 1)


def test_scaled_linear_sigmoid_and_custom_betas():
    sl = make_schedule("scaled_linear", 1000)
    np.testing.assert_allclose(sl.betas.numpy(), np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2, rtol=1e-12)
    sg = make_schedule("sigmoid", 1000)
    want = 1 / (1 + np.exp(-np.linspace(-6, 6, 1000))) * (0.02 - 1e-4) + 1e-4
    np.testing.assert_allclose(sg.betas.numpy(), want, rtol=1e-12)
    assert (sg.betas[1:] > sg.betas[:-1]).all()
    betas = [0.1, 0.2, 0.3]
    c = make_schedule("custom", betas=betas)
    np.testing.assert_allclose(c.alpha_bar.numpy(), np.cumprod(1 - np.array(betas)), rtol=1e-12)
    np.testing.assert_allclose(c.snr.numpy(), c.alpha_bar.numpy() / (1 - c.alpha_bar.numpy()), rtol=1e-12)
    np.testing.assert_allclose(c.sigma.numpy() ** 2, 1 / c.snr.numpy(), rtol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_zero_terminal_snr(name):
    """Lin et al. 2024, Alg. 1: alpha_bar_T = 0, sqrt(alpha_bar_1) kept, SNR strictly decreasing."""
    base = make_schedule(name, 1000)
    s = make_schedule(name, 1000, zero_terminal_snr=True)
    assert float(s.alpha_bar[-1]) == 0.0 and float(s.snr[-1]) == 0.0
    assert float(s.alpha_bar[0]) == pytest.approx(float(base.alpha_bar[0]), rel=1e-12)
    assert (s.snr[1:] < s.snr[:-1]).all()
    assert torch.isfinite(s.betas).all() and float(s.betas[-1]) == 1.0
    # sqrt(alpha_bar) is an affine map of the original one
    a, b = base.alpha_bar.sqrt(), s.alpha_bar.sqrt()
    ratio = (b[1:-1] - b[-1]) / (a[1:-1] - a[-1])
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-9)
    assert torch.equal(rescale_zero_terminal_snr(base.betas), s.betas)


def test_alpha_bar_at_fractional_and_sigma_to_t():
    s = make_schedule("linear", 1000)
    t = torch.tensor([-1.0, 0.0, 10.0, 10.5, 998.25, 999.0], dtype=torch.float64)
    ab = s.alpha_bar_at(t)
    assert float(ab[0]) == 1.0 and float(ab[1]) == float(s.alpha_bar[0]) and float(ab[-1]) == float(s.alpha_bar[-1])
    assert float(s.alpha_bar[11]) < float(ab[3]) < float(s.alpha_bar[10])
    sig = ((1 - ab[1:]) / ab[1:]).sqrt()
    torch.testing.assert_close(s.sigma_to_t(sig), t[1:], rtol=0, atol=1e-9)


DIFFWAVE_BETAS = np.linspace(1e-4, 0.05, 50)


def test_diffwave_schedule_terminal_alpha_bar():
    s = make_schedule("custom", betas=DIFFWAVE_BETAS)
    assert float(s.alpha_bar[-1]) == pytest.approx(float(np.prod(1 - DIFFWAVE_BETAS)), rel=1e-12)
    assert 0.25 < float(s.alpha_bar[-1]) < 0.31  # far from 0


# consistency sampling needs a consistency function, not a posterior-mean denoiser (its own closed-form test:
# tests/test_core_distill.py::test_consistency_sampling_of_the_exact_flow_map_gives_the_data); Langevin dynamics are
# MCMC, not 50-step integrators of the reverse process (their own exact-score tests: tests/test_core_langevin.py)
@pytest.mark.parametrize("name", sorted(set(SAMPLERS) - {"repaint", "consistency", "langevin", "annealed_langevin"}))
def test_far_from_zero_terminal_snr_works_with_every_sampler(name):
    """With alpha_bar_T ~ 0.28, start from the true q(x_T); every sampler must reproduce N(m, S) data (4-SE bounds)."""
    sch = make_schedule("custom", betas=DIFFWAVE_BETAS)
    m = torch.tensor([1.0, -0.5], dtype=torch.float64)
    S = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=torch.float64)
    gmm = GaussianMixture(m[None], S[None], [1.0])
    g, n = torch.Generator().manual_seed(0), 4000
    ab_T = sch.alpha_bar[-1]
    x_T = (ab_T.sqrt() * gmm.sample(n, g) + (1 - ab_T).sqrt() * torch.randn(n, 2, generator=g, dtype=torch.float64)).float()
    den = Denoiser(ExactGMMNet(gmm, sch), sch)
    x = sample(den, (n, 2), name, 50 if name != "heun" else 25, generator=g, x_T=x_T).double()
    assert torch.isfinite(x).all()
    se_m = (S.diagonal() / n).sqrt()
    assert ((x.mean(0) - m).abs() < 4 * se_m).all(), (name, x.mean(0))
    se_c = ((S.diagonal()[:, None] * S.diagonal()[None] + S**2) / n).sqrt()
    assert ((torch.cov(x.T) - S).abs() < 4 * se_c + 0.01).all(), (name, torch.cov(x.T))


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_parameterization_round_trips(prediction):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(8, 3, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(8, 3, 4, generator=g, dtype=torch.float64)
    ab = torch.rand(8, generator=g, dtype=torch.float64) * 0.98 + 0.01
    x_t = P.q_sample(x0, ab, eps)
    out = P.target_for(prediction, x0, eps, ab)
    x0_hat, eps_hat = P.output_to_x0_eps(prediction, x_t, out, ab)
    torch.testing.assert_close(x0_hat, x0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(eps_hat, eps, rtol=1e-10, atol=1e-10)
    v = P.to_v(x0, eps, ab)
    a, s = ab.sqrt()[:, None, None], (1 - ab).sqrt()[:, None, None]
    torch.testing.assert_close(v, a * eps - s * x0)  # Salimans & Ho 2022
    torch.testing.assert_close(P.v_to_x0(x_t, v, ab), x0)
    torch.testing.assert_close(P.v_to_eps(x_t, v, ab), eps)
    torch.testing.assert_close(P.x0_to_eps(x_t, P.eps_to_x0(x_t, eps, ab), ab), eps)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_denoiser_wrapper_gives_same_prediction_for_every_parameterization(prediction):
    sch = make_schedule("cosine", 1000)
    gmm = GaussianMixture([[0.5, -0.5]], [[0.2, 0.3]], [1.0])
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.linspace(0, 999, 16)
    ref = Denoiser(ExactGMMNet(gmm, sch, "eps"), sch, "eps")(x, t)
    got = Denoiser(ExactGMMNet(gmm, sch, prediction), sch, prediction)(x, t)
    torch.testing.assert_close(got.x0, ref.x0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got.eps, ref.eps, rtol=1e-6, atol=1e-6)


def test_bad_betas_and_names_raise():
    for bad in ([0.1, 0.0], [0.1, 1.5], [0.1, float("nan")], []):
        with pytest.raises(ValueError, match="betas"):
            make_schedule("custom", betas=bad)
    with pytest.raises(ValueError, match="unknown schedule 'cosinus'.*linear"):
        make_schedule("cosinus")
    with pytest.raises(ValueError, match="custom"):
        make_schedule("custom")
    with pytest.raises(ValueError, match="prediction"):
        P.output_to_x0_eps("score", torch.zeros(1, 1), torch.zeros(1, 1), 0.5)


def test_analytic_gmm_against_scipy():
    """The GMM log-density and moments against scipy / numpy on a correlated 3-D mixture."""
    stats = pytest.importorskip("scipy.stats")
    means = np.array([[0.0, 1.0, -1.0], [2.0, 0.0, 0.5]])
    A = np.random.default_rng(0).normal(size=(2, 3, 3))
    covs = A @ A.transpose(0, 2, 1) + 0.1 * np.eye(3)
    w = np.array([0.3, 0.7])
    gmm = GaussianMixture(means, covs, w)
    x = np.random.default_rng(1).normal(size=(50, 3))
    ref = np.log(sum(w[k] * stats.multivariate_normal(means[k], covs[k]).pdf(x) for k in range(2)))
    np.testing.assert_allclose(gmm.log_prob(torch.tensor(x)).numpy(), ref, rtol=1e-10)
    ab = 0.3  # noised marginal
    ref_t = np.log(sum(w[k] * stats.multivariate_normal(math.sqrt(ab) * means[k], ab * covs[k] + (1 - ab) * np.eye(3)).pdf(x)
                       for k in range(2)))
    np.testing.assert_allclose(gmm.log_prob(torch.tensor(x), ab).numpy(), ref_t, rtol=1e-10)
    m = w @ means
    C = sum(w[k] * (covs[k] + np.outer(means[k] - m, means[k] - m)) for k in range(2))
    np.testing.assert_allclose(gmm.cov().numpy(), C, rtol=1e-10)
    # Tweedie: E[x0 | x_t] = (x_t + (1 - ab) grad log q_t(x_t)) / sqrt(ab)
    xt = torch.tensor(x, requires_grad=True)
    gmm.log_prob(xt, ab).sum().backward()
    tweedie = (xt.detach() + (1 - ab) * xt.grad) / math.sqrt(ab)
    torch.testing.assert_close(gmm.posterior_mean(xt.detach(), torch.full((50,), ab, dtype=torch.float64)), tweedie)


@pytest.mark.parametrize("zt", [False, True])
def test_scalar_lookups_match_tensor_versions(zt):
    """The samplers' float fast paths (alpha_bar_scalar, sigma_to_t_scalar) equal the tensor versions."""
    s = make_schedule("cosine", 1000, zero_terminal_snr=zt)
    t = torch.cat([torch.tensor([-1.0, 0.0, 998.5, 999.0]), torch.rand(200, generator=torch.Generator().manual_seed(0)) * 999])
    ref = s.alpha_bar_at(t.double())
    got = torch.tensor([s.alpha_bar_scalar(float(v)) for v in t], dtype=torch.float64)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-15)
    if not zt:
        sig = ((1 - ref[1:]) / ref[1:]).sqrt()
        got_t = torch.tensor([s.sigma_to_t_scalar(float(v)) for v in sig], dtype=torch.float64)
        torch.testing.assert_close(got_t, s.sigma_to_t(sig), rtol=0, atol=1e-9)
