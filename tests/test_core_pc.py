"""Predictor-corrector sampling (Song et al. 2021): zero corrector steps is the predictor, the corrector keeps the exact
marginal, the automatic snr, and the evaluation count."""
from __future__ import annotations

import pytest
import torch

from diffsuite.core.analytic import ExactGMMNet, GaussianMixture
from diffsuite.core.denoiser import Denoiser
from diffsuite.core.samplers import LangevinCorrector, auto_snr, nfe, sample
from diffsuite.core.schedules import make_schedule

SCH = make_schedule("linear", 1000)
GAUSS = GaussianMixture([[1.0, -0.5]], [[0.3, 1.5]])
DEN = Denoiser(ExactGMMNet(GAUSS, SCH), SCH)


@pytest.mark.parametrize("predictor, options", [("ddpm", {}), ("ddim", {"eta": 0.0}), ("dpmpp_2m", {})])
def test_pc_without_corrector_steps_is_the_predictor(predictor, options):
    a = sample(DEN, (64, 2), "pc", 10, generator=torch.Generator().manual_seed(0), predictor=predictor,
               corrector_steps=0, **options)
    b = sample(DEN, (64, 2), predictor, 10, generator=torch.Generator().manual_seed(0), **options)
    assert torch.equal(a, b)


@pytest.mark.parametrize("snr", [0.16, None])
def test_the_corrector_keeps_the_exact_marginal(snr):
    """x_t drawn from the exact marginal q(x_t) of Gaussian data stays there under 20 corrector steps with the exact
    score: mean within 0.03, variance within 10% (a Langevin step e inflates a variance v to about v / (1 - e / 2v))."""
    t = 300
    ab = float(SCH.alpha_bar[t])
    g = torch.Generator().manual_seed(1)
    x0 = GAUSS.sample(20_000, g).float()
    x = ab ** 0.5 * x0 + (1 - ab) ** 0.5 * torch.randn(x0.shape, generator=g)
    mean, var = x.mean(0), x.var(0)
    c = LangevinCorrector(DEN, 20, snr)
    c.before_step(x, torch.tensor(float(t + 50)), None)
    y = c.after_step(x, torch.tensor(float(t)), g)
    assert torch.allclose(y.mean(0), mean, atol=0.03)
    assert torch.allclose(y.var(0), var, rtol=0.10)
    assert not torch.allclose(y, x)


def test_auto_snr_and_evaluation_count():
    r1, r10 = auto_snr(1, SCH, 500.0, 450.0), auto_snr(10, SCH, 500.0, 450.0)
    assert 0 < r10 < r1  # more corrector steps: smaller steps
    assert nfe("pc", 10, predictor="ddpm", corrector_steps=2) == 10 + 2 * 9
    assert nfe("pc", 10, predictor="heun", corrector_steps=1) == 19 + 9


def test_sampling_commands_take_sample_settings(tmp_path, capsys):
    """`diffsuite sample RUN sample.key=value`: the checkpoint's sampler settings for this run (checked); other
    sections are refused."""
    import json
    from diffsuite.recipes import cli, run
    from tiny import recipe
    out = run.train(recipe("toy2d", tmp_path, steps=2), out_dir=tmp_path / "run")
    assert cli.main(["sample", str(out), "--sampler", "pc", "sample.snr=null", "sample.corrector_steps=2",
                     "--out", str(tmp_path / "s")]) == 0
    assert json.loads((tmp_path / "s" / "sample.json").read_text())["sampler"] == "pc"
    capsys.readouterr()
    assert cli.main(["sample", str(out), "sample.snr=-1", "--out", str(tmp_path / "s2")]) == 2
    assert "sample.snr" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["sample", str(out), "train.lr=1", "--out", str(tmp_path / "s3")])
    assert "sampling commands take sample.* ones" in capsys.readouterr().err
