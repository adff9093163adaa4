"""Noise-aware classifiers and classifier guidance (core.classifier) against the exact Gaussian-mixture posterior."""
import pytest
import torch
from torch import nn

from diffsuite.core.analytic import ExactGMMNet, GaussianMixture
from diffsuite.core.classifier import ClassifierLoss, NoisyClassifier, accuracy, classifier_guidance
from diffsuite.core.denoiser import Denoiser
from diffsuite.core.guidance import GradientGuidance
from diffsuite.core.samplers import sample
from diffsuite.core.schedules import make_schedule
from diffsuite.core.utils import sinusoidal_features

torch.set_num_threads(1)
SCH = make_schedule("linear", 1000)
A = GaussianMixture([[-2.0, 0.0]], [[0.2, 0.2]], [1.0])
B = GaussianMixture([[2.0, 1.0]], [[0.3, 0.1]], [1.0])
UNCOND = GaussianMixture([[-2.0, 0.0], [2.0, 1.0]], [[0.2, 0.2], [0.3, 0.1]], [0.5, 0.5])
NULL = -1


class ExactNoisyClassifier(nn.Module):
    """p(k | x_t) of the mixture's components, in closed form (differentiable in x_t)."""

    def forward(self, x_t, t):
        ab = SCH.alpha_bar_at(t.double().expand(x_t.shape[0]))
        log_joint, _ = UNCOND.noised_stats(x_t.double(), ab)
        return log_joint.log_softmax(1).to(x_t.dtype)


class MLP(nn.Module):
    def __init__(self, K=2, width=64):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(2 + 16, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                               nn.Linear(width, K))

    def forward(self, x, t):
        return self.f(torch.cat([x, sinusoidal_features(t / 1000, 16)], 1))


class SeesNull(nn.Module):
    def __init__(self, den):
        super().__init__()
        self.den, self.schedule = den, den.schedule

    def forward(self, x, t, cond=None):
        return self.den(x, t, torch.full_like(cond, NULL))


def _in_class(x, k):
    """Whether each sample is nearer component k's mean than the other's."""
    d = torch.cdist(x.double(), UNCOND.means.double())
    return d.argmin(1) == k


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpmpp_2m"])
def test_exact_classifier_guidance_of_the_unconditional_model_samples_the_class(name):
    """grad log q_t(x) + grad log p(y | x_t) = grad log q_t(x | y): at s = 1 the guided unconditional model samples
    class y's component (Dhariwal & Nichol 2021, Sec. 4.1); s = 0 keeps the 50/50 mixture."""
    den = Denoiser(ExactGMMNet(UNCOND, SCH), SCH)
    clf = NoisyClassifier(ExactNoisyClassifier(), SCH)
    y = torch.tensor([0, 1] * 200)
    x_T = torch.randn(400, 2, generator=torch.Generator().manual_seed(0))
    run = lambda d: sample(d, (400, 2), name, 50, cond=y, x_T=x_T.clone(), generator=torch.Generator().manual_seed(1))
    guided = run(classifier_guidance(den, clf, 1.0, null_cond=lambda c: None))
    hits = (_in_class(guided[0::2], 0).float().mean() + _in_class(guided[1::2], 1).float().mean()) / 2
    assert hits > 0.97, float(hits)
    plain = run(classifier_guidance(den, clf, 0.0, null_cond=lambda c: None))
    assert 0.4 < float(_in_class(plain, 0).float().mean()) < 0.6


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpmpp_2m_sde", "heun", "pc"])
def test_scale_zero_is_the_unguided_sampler(name):
    den = Denoiser(ExactGMMNet(UNCOND, SCH, cond_gmms={0: A, 1: B}), SCH)
    clf = NoisyClassifier(ExactNoisyClassifier(), SCH)
    y = torch.tensor([0, 1] * 20)
    x_T = torch.randn(40, 2, generator=torch.Generator().manual_seed(0))
    run = lambda d: sample(d, (40, 2), name, 8, cond=y, x_T=x_T.clone(), generator=torch.Generator().manual_seed(1))
    assert torch.equal(run(classifier_guidance(den, clf, 0.0)), run(den))
    # with null_cond the model sees the null condition: the unconditional mixture, not the labels' components
    assert torch.equal(run(classifier_guidance(den, clf, 0.0, null_cond=NULL)), run(SeesNull(den)))


def test_the_denoiser_sees_the_null_condition_and_the_classifier_the_labels():
    den = Denoiser(ExactGMMNet(UNCOND, SCH, cond_gmms={0: A, 1: B}), SCH)
    seen = []
    fn = lambda x, t, c: (seen.append(c.clone()), x.sum(1))[1]
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(2))
    t, y = torch.full((6,), 300.0), torch.tensor([0, 1, 0, 1, 1, 0])
    got = GradientGuidance(den, fn, 0.5, null_cond=NULL)(x, t, y)
    assert torch.equal(seen[0], y)
    ab = float(SCH.alpha_bar[300])
    want = den(x, t, torch.full_like(y, NULL)).eps - 0.5 * (1 - ab) ** 0.5 * torch.ones_like(x)
    torch.testing.assert_close(got.eps, want)


def test_classifier_loss_learns_the_noisy_posterior():
    """Cross-entropy on x_t ~ q(x_t | x0), t uniform, drives p(y | x_t, t) to the exact posterior p(k | x_t)."""
    torch.manual_seed(0)
    clf = NoisyClassifier(MLP(), SCH)
    opt = torch.optim.Adam(clf.parameters(), lr=3e-3)
    loss_fn = ClassifierLoss()
    g = torch.Generator().manual_seed(0)
    for _ in range(600):
        x0, k = UNCOND.sample(256, g, return_labels=True)
        loss, t = loss_fn(clf, x0.float(), k, g)
        assert loss.shape == (256,) and t.shape == (256,)
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
    x0, k = UNCOND.sample(2000, torch.Generator().manual_seed(5), return_labels=True)
    errs = []
    for t in (50, 300, 600):
        ab = SCH.alpha_bar[t]
        x_t = (ab.sqrt() * x0 + (1 - ab).sqrt() * torch.randn(x0.shape, generator=g, dtype=x0.dtype)).float()
        with torch.no_grad():
            p = clf(x_t, torch.full((2000,), float(t))).softmax(1)[:, 1].double()
        exact = UNCOND.responsibilities(x_t, ab)[:, 1]
        errs.append(float((p - exact).abs().mean()))
    assert max(errs) < 0.05, errs
    assert accuracy(clf, x0.float(), k, t=0) > 0.99
    with pytest.raises(ValueError, match="labelled data"):
        loss_fn(clf, x0.float(), None, g)


def test_guidance_refuses_a_classifier_of_another_schedule():
    den = Denoiser(ExactGMMNet(UNCOND, SCH), SCH)
    with pytest.raises(ValueError, match="another noise schedule"):
        classifier_guidance(den, NoisyClassifier(MLP(), make_schedule("cosine", 1000)), 1.0)
