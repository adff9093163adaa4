"""Exact-denoiser checks: with the closed-form GMM denoiser every sampler must reproduce the data.

Tolerances are in Monte Carlo standard errors (SE) of the statistic for n i.i.d. draws from the true
distribution (estimated from a large true sample): a perfect sampler gives normalised errors near 1.
We allow 3 SE for the mean vector and covariance matrix (Euclidean / Frobenius norm of the error divided by
the root-sum-square SE) and 4 SE on each mixture weight (E_q[p(k | x)] = pi_k exactly, SE <= sqrt(pi(1-pi)/n)),
at step counts where the solvers' discretisation bias is below that noise (10-step DDIM / Euler fail it).
"""
import math

import pytest
import torch

from diffsuite.core.analytic import ExactGMMNet, GaussianMixture, diagonal_gmm, gmm_2d
from diffsuite.core.denoiser import Denoiser
from diffsuite.core.samplers import SAMPLERS, ddim, ddim_step, ddpm_step, euler, sample, timesteps_for
from diffsuite.core.schedules import make_schedule
from diffsuite.core.denoiser import Prediction

torch.set_num_threads(1)
SCH = make_schedule("linear", 1000)

# (sampler, steps, options) at step counts where the sampler is accurate
CASES = [
    ("ddpm", 1000, {"variance": "beta_tilde"}),
    ("ddpm", 1000, {"variance": "beta"}),
    ("ddim", 100, {"eta": 0.0}),
    ("ddim", 1000, {"eta": 1.0}),
    ("dpmpp_2m", 50, {}),
    ("dpmpp_2m_sde", 100, {}),
    ("euler", 100, {}),
    ("heun", 50, {}),
]
IDS = [f"{s}-{n}-{'-'.join(map(str, o.values()))}" for s, n, o in CASES]


def _se_norms(gmm, n, n_ref=20000):
    """Root-sum-square standard errors of the sample mean and the sample covariance for n true draws."""
    x = gmm.sample(n_ref, torch.Generator().manual_seed(123))
    c = x - x.mean(0)
    # sum_ij Var(c_i c_j) = E||c||^4 - ||C||_F^2
    var_cov = float((c.pow(2).sum(1) ** 2).mean() - torch.cov(c.T).pow(2).sum())
    return math.sqrt(float(c.var(0).sum()) / n), math.sqrt(var_cov / n)


def distribution_errors(x, gmm):
    """(mean error / SE, cov error / SE, max |weight error|) of samples x against the true mixture."""
    x = x.double().reshape(len(x), -1)
    se_m, se_c = _se_norms(gmm, len(x))
    e_m = float((x.mean(0) - gmm.mean()).norm()) / se_m
    e_c = float((torch.cov(x.T) - gmm.cov()).norm()) / se_c
    se_w = (gmm.weights * (1 - gmm.weights) / len(x)).sqrt()
    e_w = float(((gmm.responsibilities(x).mean(0) - gmm.weights).abs() / se_w).max())
    return e_m, e_c, e_w


def assert_matches(x, gmm, tag):
    e_m, e_c, e_w = distribution_errors(x, gmm)
    assert torch.isfinite(x).all(), tag
    assert e_m < 3 and e_c < 3 and e_w < 4, f"{tag}: errors in SE: mean {e_m:.2f}, cov {e_c:.2f}, weights {e_w:.2f}"


def exact(gmm, sch=SCH, prediction="eps"):
    return Denoiser(ExactGMMNet(gmm, sch, prediction=prediction), sch, prediction=prediction)


def test_error_measure_can_fail():
    """A wrong distribution (shifted and scaled) must fail the same check a sampler has to pass."""
    gmm = gmm_2d()
    x = gmm.sample(2000, torch.Generator().manual_seed(1))
    assert_matches(x, gmm, "true samples")
    with pytest.raises(AssertionError):
        assert_matches(x * 1.1, gmm, "scaled")
    with pytest.raises(AssertionError):
        assert_matches(x + 0.15, gmm, "shifted")


@pytest.mark.parametrize("name,steps,opts", CASES, ids=IDS)
def test_reproduces_2d_mixture(name, steps, opts):
    gmm = gmm_2d()
    x = sample(exact(gmm), (2000, 2), name, steps, generator=torch.Generator().manual_seed(0), **opts)
    assert_matches(x, gmm, f"2-D {name}")


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_other_parameterizations_reproduce(prediction):
    gmm = gmm_2d()
    x = sample(exact(gmm, prediction=prediction), (2000, 2), "dpmpp_2m", 50, generator=torch.Generator().manual_seed(0))
    assert_matches(x, gmm, f"dpmpp_2m with {prediction}-prediction")


def _cases_64(full):
    """The 64-D runs: the T-step DDPM / DDIM(eta=1) are respaced to 200 steps unless `full`."""
    return [(s, n if full or n < 1000 else 200, o) for s, n, o in CASES]


@pytest.mark.parametrize("name,steps,opts", _cases_64(False), ids=IDS)
def test_reproduces_64d_mixture(name, steps, opts):
    gmm = diagonal_gmm(64, K=3)
    x = sample(exact(gmm), (1000, 64), name, steps, generator=torch.Generator().manual_seed(0), **opts)
    assert_matches(x, gmm, f"64-D {name}")


@pytest.mark.slow
@pytest.mark.parametrize("name,steps,opts", _cases_64(True), ids=IDS)
def test_reproduces_64d_full_covariance_big(name, steps, opts):
    g = torch.Generator().manual_seed(5)
    A = torch.randn(2, 64, 64, generator=g, dtype=torch.float64) / 8
    covs = A @ A.transpose(1, 2) + 0.05 * torch.eye(64, dtype=torch.float64)
    gmm = GaussianMixture(torch.randn(2, 64, generator=g, dtype=torch.float64) * 0.4, covs, [0.6, 0.4])
    x = sample(exact(gmm), (4000, 64), name, steps, generator=torch.Generator().manual_seed(0), **opts)
    assert_matches(x, gmm, f"64-D full-cov {name}")


def _pred(x, g):
    x0 = torch.randn(x.shape, generator=g, dtype=torch.float64)
    return Prediction(x0=x0, eps=torch.randn(x.shape, generator=g, dtype=torch.float64), out=x0)


@pytest.mark.parametrize("ab_t,ab_prev", [(0.3, 0.5), (0.01, 0.02), (0.9, 0.99), (0.5, 1.0 - 1e-4)])
def test_ddim_eta1_step_is_ddpm_beta_tilde_step(ab_t, ab_prev):
    """Song et al. 2021 eq. 16: eta=1 gives sigma^2 = beta_tilde and the same mean as DDPM eq. 7."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g, dtype=torch.float64)
    # consistent prediction: eps = (x - sqrt(ab) x0) / sqrt(1 - ab)
    x0 = torch.randn(64, 3, generator=g, dtype=torch.float64)
    pred = Prediction(x0=x0, eps=(x - math.sqrt(ab_t) * x0) / math.sqrt(1 - ab_t), out=x0)
    z = [torch.Generator().manual_seed(s) for s in (7, 7, 8, 8)]
    outs = [ddim_step(pred, x, ab_t, ab_prev, 1.0, z[0]), ddpm_step(pred, x, ab_t, ab_prev, "beta_tilde", z[1], False),
            ddim_step(pred, x, ab_t, ab_prev, 1.0, z[2]), ddpm_step(pred, x, ab_t, ab_prev, "beta_tilde", z[3], False)]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(outs[2], outs[3], rtol=1e-10, atol=1e-10)
    # independent algebra: mean (DDPM eq. 7) and variance beta_tilde
    beta = 1 - ab_t / ab_prev
    mean = math.sqrt(ab_prev) * beta / (1 - ab_t) * x0 + math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab_t) * x
    beta_tilde = (1 - ab_prev) / (1 - ab_t) * beta
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    torch.testing.assert_close(outs[0], mean + math.sqrt(beta_tilde) * noise, rtol=1e-10, atol=1e-10)


def test_ddim_eta1_equals_ddpm_in_distribution():
    """Full T-step runs: same seed gives the same samples; independent seeds give the same distribution."""
    gmm = gmm_2d()
    den = exact(gmm)
    a = sample(den, (500, 2), "ddim", 1000, eta=1.0, generator=torch.Generator().manual_seed(3))
    b = sample(den, (500, 2), "ddpm", 1000, variance="beta_tilde", generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-3)  # float32 round-off over 1000 steps
    c = sample(den, (2000, 2), "ddpm", 1000, variance="beta_tilde", generator=torch.Generator().manual_seed(4))
    d = sample(den, (2000, 2), "ddim", 1000, eta=1.0, generator=torch.Generator().manual_seed(5))
    se_m, se_c = _se_norms(gmm, 2000)
    assert float((c.double().mean(0) - d.double().mean(0)).norm()) < 3 * math.sqrt(2) * se_m
    assert float((torch.cov(c.double().T) - torch.cov(d.double().T)).norm()) < 3 * math.sqrt(2) * se_c


def test_ddim_eta0_is_deterministic_and_an_euler_step_in_sigma_space():
    """x / sqrt(ab) moves by (sigma_prev - sigma) * eps in one DDIM(eta=0) step (Song et al. 2021, eq. 14)."""
    gmm = gmm_2d()
    den = exact(gmm)
    x_T = torch.randn(300, 2, generator=torch.Generator().manual_seed(0))
    a = sample(den, (300, 2), "ddim", 20, x_T=x_T.clone())
    b = sample(den, (300, 2), "ddim", 20, x_T=x_T.clone(), generator=torch.Generator().manual_seed(99))
    assert torch.equal(a, b)
    x = x_T.double()
    for t, t_prev in [(999, 949), (500, 400), (30, 0)]:
        ab, ab_p = float(SCH.alpha_bar[t]), float(SCH.alpha_bar[t_prev])
        pred = den(x, torch.full((300,), float(t)))
        s, s_p = math.sqrt((1 - ab) / ab), math.sqrt((1 - ab_p) / ab_p)
        x_ve = x / math.sqrt(ab)
        euler_ve = x_ve + (s_p - s) * (x_ve - pred.x0) / s
        torch.testing.assert_close(ddim_step(pred, x, ab, ab_p, 0.0, None) / math.sqrt(ab_p), euler_ve, rtol=1e-9, atol=1e-9)


def test_ddim_sampler_equals_euler_sampler_on_the_same_sigmas():
    """Whole samplers: DDIM(eta=0) on the t's of a Karras grid equals Euler on that grid (Karras et al. 2022, Sec. 3)."""
    den = exact(gmm_2d())
    x_T = torch.randn(200, 2, generator=torch.Generator().manual_seed(1))
    s_max, s_min = float(SCH.sigma[-1]), float(SCH.sigma[0])
    e = euler(den, x_T.clone(), 8, sigma_min=s_min, sigma_max=s_max)
    from diffsuite.core.samplers import karras_sigmas
    ts = SCH.sigma_to_t(karras_sigmas(8, s_min, s_max)[:-1])
    d = ddim(den, x_T.clone(), timesteps=ts, eta=0.0)
    torch.testing.assert_close(e, d, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,steps,opts", [c for c in CASES if c[0] != "ddpm"] + [("ddpm", 50, {})], ids=lambda v: str(v))
def test_same_seed_same_samples(name, steps, opts):
    den = exact(gmm_2d())
    run = lambda s: sample(den, (64, 2), name, min(steps, 50), generator=torch.Generator().manual_seed(s), **opts)
    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


SHAPES = [(4, 6), (4, 2, 5), (4, 2, 3, 3), (4, 5, 3)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", sorted(set(SAMPLERS) - {"repaint"}))
def test_contract_every_sampler_every_shape(name, shape):
    D = math.prod(shape[1:])
    den = exact(diagonal_gmm(D, K=2))
    x = sample(den, shape, name, 10, generator=torch.Generator().manual_seed(0))
    assert x.shape == shape and x.dtype == torch.float32 and torch.isfinite(x).all()


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_spacings_match_definitions(spacing):
    T, n = 1000, 10
    ts = timesteps_for(T, n, spacing).long().tolist()
    want = {"leading": list(range(900, -1, -100)), "trailing": list(range(999, 0, -100)),
            "linspace": [round(999 * i / 9) for i in range(9, -1, -1)]}[spacing]
    assert ts == want
    assert ts == sorted(set(ts), reverse=True)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_spacings_match_diffusers(spacing):
    diffusers = pytest.importorskip("diffusers")
    for n in (7, 10, 50, 999):
        ref = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
        ref.set_timesteps(n)
        assert timesteps_for(1000, n, spacing).long().tolist() == ref.timesteps.tolist(), (spacing, n)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace", "logsnr", "quadratic", "power"])
@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpmpp_2m"])
def test_every_spacing_reproduces(name, spacing):
    gmm = gmm_2d()
    x = sample(exact(gmm), (2000, 2), name, 100, spacing=spacing, generator=torch.Generator().manual_seed(0))
    assert_matches(x, gmm, f"{name} {spacing}")


def test_bad_arguments_raise():
    den = exact(gmm_2d())
    with pytest.raises(ValueError, match="unknown sampler"):
        sample(den, (2, 2), "nope", 5)
    with pytest.raises(ValueError, match="spacing"):
        sample(den, (2, 2), "ddim", 5, spacing="middle")
    with pytest.raises(ValueError, match="eta"):
        sample(den, (2, 2), "ddim", 5, eta=1.5)
    with pytest.raises(ValueError, match="steps"):
        sample(den, (2, 2), "ddim", 2000)
    with pytest.raises(ValueError, match="variance"):
        sample(den, (2, 2), "ddpm", 5, variance="huge")


def _diffusers_reference(name, n, den, x_T):
    """Run diffusers' scheduler on the same exact denoiser and noise; returns (x, its timesteps)."""
    diffusers = pytest.importorskip("diffusers")
    kw = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    sched = {"ddim": lambda: diffusers.DDIMScheduler(**kw, clip_sample=False, set_alpha_to_one=True),
             "dpmpp_2m": lambda: diffusers.DPMSolverMultistepScheduler(**kw, algorithm_type="dpmsolver++", solver_order=2,
                                                                       final_sigmas_type="zero"),
             "dpmpp_2m_sde": lambda: diffusers.DPMSolverMultistepScheduler(
                 **kw, algorithm_type="sde-dpmsolver++", solver_order=2, final_sigmas_type="zero")}[name]()
    sched.set_timesteps(n)
    x, g = x_T.clone(), torch.Generator().manual_seed(1)
    for t in sched.timesteps:
        x = sched.step(den(x, torch.full((len(x),), float(t))).eps, t, x, generator=g).prev_sample
    return x, sched.timesteps.double()


@pytest.mark.parametrize("name", ["ddim", "dpmpp_2m"])
@pytest.mark.parametrize("n", [5, 10, 20])
def test_deterministic_samplers_equal_diffusers(name, n):
    """Reference equivalence: same denoiser, noise and timesteps give the same samples as diffusers' schedulers."""
    den = exact(gmm_2d())
    x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    ref, ts = _diffusers_reference(name, n, den, x_T)
    ours = sample(den, (256, 2), name, n, x_T=x_T.clone(), timesteps=ts)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-3)


@pytest.mark.parametrize("n", [5, 10, 20])
def test_sde_dpmpp_equals_diffusers_with_the_same_noise(n):
    """SDE-DPM-Solver++(2M) draws one N(0, I) per step like diffusers' sde-dpmsolver++: same noise, same samples."""
    den = exact(gmm_2d())
    x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    ref, ts = _diffusers_reference("dpmpp_2m_sde", n, den, x_T)
    ours = sample(den, (256, 2), "dpmpp_2m_sde", n, x_T=x_T.clone(), timesteps=ts, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-3)


def test_sde_dpmpp_first_order_step_is_ddim_eta_1():
    """Without history the SDE-DPM-Solver++ step is the DDPM posterior sample (beta_tilde) = DDIM with eta = 1."""
    den = exact(gmm_2d())
    x_T = torch.randn(512, 2, generator=torch.Generator().manual_seed(0))
    ts = torch.tensor([700.0, 300.0])  # one solver step to t=300, then the final step to x0
    a = sample(den, (512, 2), "dpmpp_2m_sde", x_T=x_T.clone(), timesteps=ts, generator=torch.Generator().manual_seed(2))
    b = sample(den, (512, 2), "ddim", x_T=x_T.clone(), timesteps=ts, eta=1.0, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    c = sample(den, (512, 2), "dpmpp_2m", x_T=x_T.clone(), timesteps=ts)
    assert (a - c).abs().max() > 1e-2  # the noise really enters


def test_dpmpp_repeated_timestep_is_a_no_op():
    den = exact(gmm_2d())
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    ts = torch.tensor([999.0, 700.0, 400.0, 100.0, 20.0])
    ts_dup = torch.tensor([999.0, 700.0, 700.0, 400.0, 100.0, 20.0])
    a = sample(den, (64, 2), "dpmpp_2m", x_T=x_T.clone(), timesteps=ts)
    b = sample(den, (64, 2), "dpmpp_2m", x_T=x_T.clone(), timesteps=ts_dup)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("zt", [False, True])
def test_logsnr_spacing_is_uniform_in_lambda(zt):
    """spacing='logsnr': fractional t from T-1 to 0 with lambda = log(alpha/sigma) equally spaced (Lu et al. 2022)."""
    sch = make_schedule("linear", 1000, zero_terminal_snr=zt)
    from diffsuite.core.samplers import logsnr_timesteps
    ts = logsnr_timesteps(sch, 12)
    assert float(ts[0]) == 999 and float(ts[-1]) == 0 and (ts[1:] < ts[:-1]).all()
    ab = sch.alpha_bar_at(ts[1:])  # (the first point is moved to T-1 when alpha_bar_T = 0)
    lam = 0.5 * (ab / (1 - ab)).log()
    d = lam[1:] - lam[:-1]
    torch.testing.assert_close(d, d[0].expand_as(d), rtol=1e-6, atol=1e-9)
    assert logsnr_timesteps(sch, 1).tolist() == [999.0]


def test_quadratic_spacing_is_uniform_in_sqrt_t():
    """spacing='quadratic': fractional t from T-1 to 0 with sqrt(t) equally spaced (Lu et al. 2022, time_quadratic);
    with lambda_min it starts at the clipped T instead."""
    from diffsuite.core.samplers import _timesteps, lambda_clipped_T
    sch = make_schedule("linear", 1000)
    ts = _timesteps(sch, 10, "quadratic")
    assert float(ts[0]) == pytest.approx(999) and float(ts[-1]) == 0 and (ts[1:] < ts[:-1]).all()
    d = ts.sqrt()[:-1] - ts.sqrt()[1:]
    torch.testing.assert_close(d, d[0].expand_as(d))
    assert _timesteps(sch, 1, "quadratic").tolist() == [999.0]
    Tc = lambda_clipped_T(sch, -3.0)
    assert Tc < 1000 and float(_timesteps(sch, 10, "quadratic", lambda_min=-3.0)[0]) == pytest.approx(Tc - 1)


def test_power_spacing_is_uniform_in_t_to_the_one_over_p():
    """spacing='power': t from T-1 to 0 with t^(1/2.5) equally spaced; p = 2 is the quadratic spacing; p <= 0 errors."""
    from diffsuite.core.samplers import POWER_P, _timesteps, power_timesteps
    sch = make_schedule("linear", 1000)
    ts = _timesteps(sch, 10, "power")
    assert POWER_P == 2.5 and float(ts[0]) == pytest.approx(999) and float(ts[-1]) == 0 and (ts[1:] < ts[:-1]).all()
    r = ts ** (1 / 2.5)
    d = r[:-1] - r[1:]
    torch.testing.assert_close(d, d[0].expand_as(d))
    torch.testing.assert_close(power_timesteps(1000, 10, 2.0), _timesteps(sch, 10, "quadratic"))
    assert float(ts[-2]) < float(_timesteps(sch, 10, "quadratic")[-2])  # denser near t = 0 than quadratic
    with pytest.raises(ValueError, match="p must be > 0"):
        power_timesteps(1000, 10, 0.0)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace", "uniform", "logsnr", "quadratic", "power"])
def test_one_step_grids(spacing):
    """A one-step sampler on any spacing (a reversed one-element array once kept a negative stride torch refused)."""
    from diffsuite.core.samplers import _timesteps
    from diffsuite.core.schedules import make_schedule
    ts = _timesteps(make_schedule("linear", 100), 1, spacing)
    assert ts.shape == (1,) and 0 <= float(ts[0]) <= 99
