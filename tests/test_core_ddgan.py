"""Denoising diffusion GANs (core.ddgan): the posterior draw in closed form, the latent, the sampler, the objective,
exact resume, and a DDGAN recipe of every task training and sampling through the commands."""
from __future__ import annotations

import math

import pytest
import torch

from diffsuite.core.config import ConfigError
from diffsuite.core.ddgan import (ConvDiscriminator, DenoisingDiffusionGAN, MLPDiscriminator, latent_shape,
                                  posterior_sample, q_sample_pair)
from diffsuite.core.denoiser import Denoiser
from diffsuite.core.samplers import SamplerHook, sample
from diffsuite.core.schedules import make_schedule
from diffsuite.recipes import run
from diffsuite.recipes.toy2d import MLPDenoiser
from tiny import ddgan, recipe

SCH = make_schedule("vp_sde", 4, beta_start=0.1, beta_end=20.0)


def test_vp_sde_schedule_is_the_discretised_sde():
    s = torch.arange(5, dtype=torch.float64) / 4
    ab = torch.exp(-0.1 * s - 0.5 * 19.9 * s**2)[1:]
    assert torch.allclose(SCH.alpha_bar, ab, rtol=1e-9)


@pytest.mark.parametrize("t", [0, 1, 3])
def test_posterior_sample_matches_q_posterior_in_closed_form(t):
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0, x_t = torch.full((n, 1), 0.7, dtype=torch.float64), torch.full((n, 1), -0.4, dtype=torch.float64)
    tt = torch.full((n,), t)
    x = posterior_sample(SCH, x0, x_t, tt, g)
    ab, beta = float(SCH.alpha_bar[t]), float(SCH.betas[t])
    ab_prev = 1.0 if t == 0 else float(SCH.alpha_bar[t - 1])
    # DDPM eq. 7, by hand
    mean = math.sqrt(ab_prev) * beta / (1 - ab) * 0.7 + math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab) * -0.4
    var = (1 - ab_prev) / (1 - ab) * beta
    assert abs(float(x.mean()) - mean) < 4 * math.sqrt(var / n) + 1e-12
    if t == 0:
        assert torch.allclose(x, x0, atol=1e-12) and abs(mean - 0.7) < 1e-12  # at t = 0 the draw is x0 itself
    else:
        assert abs(float(x.var()) / var - 1) < 0.02


def test_real_pairs_have_the_forward_marginals():
    g = torch.Generator().manual_seed(1)
    n, t = 200_000, 2
    x0 = torch.full((n, 1), 0.5, dtype=torch.float64)
    x_prev, x_t = q_sample_pair(SCH, x0, torch.full((n,), t), g)
    for x, ab in ((x_prev, SCH.alpha_bar[t - 1]), (x_t, SCH.alpha_bar[t])):
        assert abs(float(x.mean()) - math.sqrt(float(ab)) * 0.5) < 0.01
        assert abs(float(x.var()) / (1 - float(ab)) - 1) < 0.02
    resid = x_t - math.sqrt(1 - float(SCH.betas[t])) * x_prev  # x_t | x_{t-1} ~ N(sqrt(1 - beta) x_{t-1}, beta)
    assert abs(float(resid.var()) / float(SCH.betas[t]) - 1) < 0.02


def _generator(z=2):
    return Denoiser(MLPDenoiser(2, 16, 2, 8, z_channels=z), SCH, "x0")


def test_the_generator_reads_its_latent_and_checks_it():
    G = _generator().eval()
    x, t = torch.randn(5, 2), torch.full((5,), 3.0)
    z = torch.randn(5, 2)
    assert latent_shape(G, x.shape) == (5, 2)
    assert not torch.allclose(G(x, t, z=z).x0, G(x, t, z=-z).x0)
    assert torch.equal(G(x, t).x0, G(x, t, z=torch.zeros(5, 2)).x0)  # no z: the zero latent
    with pytest.raises(ValueError, match="z has shape"):
        G(x, t, z=torch.randn(5, 3))
    plain = Denoiser(MLPDenoiser(2, 16, 2, 8), SCH, "x0")
    assert latent_shape(plain, x.shape) is None
    with pytest.raises(ValueError, match="reads none"):
        plain(x, t, z=z)


class _Point(torch.nn.Module):
    """A generator whose x0' is always c (data concentrated at one point), whatever x_t and z."""
    z_channels, channel_axis = 1, 1

    def __init__(self, c):
        super().__init__()
        self.c = torch.nn.Parameter(torch.as_tensor(c, dtype=torch.float32))

    def forward(self, x, t, cond=None):
        assert x.shape[1] == 3  # 2 data dims + the latent
        return self.c.expand(x.shape[0], 2).clone()


class _Record(SamplerHook):
    def __init__(self):
        self.states = {}

    def after_step(self, x, t_next, generator):
        self.states[float(t_next)] = x.clone()
        return x


def test_ddgan_sampler_draws_each_state_from_the_posterior():
    """With x0' = c the chain's states follow q(x_{t-1} | x0 = c) (up to the tiny alpha_bar_T of the prior); the last
    step returns c exactly."""
    c = torch.tensor([0.8, -0.3])
    G, rec = Denoiser(_Point(c), SCH, "x0"), _Record()
    x = sample(G, (100_000, 2), "ddgan", 4, generator=torch.Generator().manual_seed(0), hooks=[rec])
    assert torch.equal(x, c.expand_as(x))
    for t in (2, 1, 0):
        ab = float(SCH.alpha_bar[t])
        s = rec.states[float(t)]
        assert torch.allclose(s.mean(0), math.sqrt(ab) * c, atol=0.01)
        assert torch.allclose(s.var(0), torch.full((2,), 1 - ab), rtol=0.03)
    assert torch.equal(sample(G, (3, 2), "ddgan", None, generator=torch.Generator().manual_seed(5)),
                       sample(G, (3, 2), "ddgan", 4, generator=torch.Generator().manual_seed(5)))  # default: all T


def test_ddgan_objective_steps_the_discriminator_and_returns_the_generators_loss():
    torch.manual_seed(0)
    G, D = _generator(), MLPDiscriminator(2, 16, 2, 8)
    loss = DenoisingDiffusionGAN(D, r1_gamma=0.1, lr=1e-3)
    before = {k: v.clone() for k, v in D.state_dict().items()}
    x0 = torch.randn(16, 2)
    per_sample, t = loss(G, x0, None, torch.Generator().manual_seed(0))
    assert per_sample.shape == (16,) and t.shape == (16,) and bool((t >= 0).all() and (t < 4).all())
    assert any(not torch.equal(before[k], v) for k, v in D.state_dict().items())  # D took its step
    per_sample.mean().backward()
    assert all(p.grad is None for p in D.parameters())  # the generator's loss does not train D
    assert all(p.grad is not None for p in G.parameters())
    sd = loss.state_dict()
    other = DenoisingDiffusionGAN(MLPDiscriminator(2, 16, 2, 8), 0.1, 1e-3)
    other.load_state_dict(sd)
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), sd.values()))


def test_conv_discriminator_shapes_and_class_projection():
    D = ConvDiscriminator(2, 1, 8, 2, num_classes=10)
    x = torch.randn(3, 1, 16, 16)
    y = torch.tensor([0, 5, -1])
    out = D(x, x, torch.tensor([0.0, 1.0, 2.0]), y)
    assert out.shape == (3,)
    assert not torch.allclose(out, D(x, x, torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1, 6, 3])))
    D1 = ConvDiscriminator(1, 6, 8, 2, channel_axis=-1)
    assert D1(torch.randn(2, 16, 6), torch.randn(2, 16, 6), torch.zeros(2)).shape == (2,)


def test_a_ddgan_run_resumes_exactly(tmp_path):
    r = ddgan(recipe("toy2d", tmp_path, steps=6))
    a = run.train(r, out_dir=tmp_path / "a")
    run.train(r, out_dir=tmp_path / "b", stop_at=3)
    b = run.train(r, out_dir=tmp_path / "b", resume="auto")
    from diffsuite.core.checkpoint import load_checkpoint
    ta, _, _ = load_checkpoint(run.resolve_checkpoint(a))
    tb, _, _ = load_checkpoint(run.resolve_checkpoint(b))
    for group in ("model", "ema", "loss"):  # "loss": the discriminator and its optimiser
        assert ta[group].keys() == tb[group].keys()
        assert all(torch.equal(ta[group][k], tb[group][k]) for k in ta[group]), group


def test_ddgan_learns_the_toy_data(tmp_path):
    """300 steps move a T = 2 DDGAN from its untrained SW2 to under half of it (two moons, 1000 samples)."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from samplers import sliced_w2
    from diffsuite.recipes.toy2d import make_points
    r = ddgan(recipe("toy2d", tmp_path, steps=300, batch_size=128, lr=2e-3, adam_betas=[0.5, 0.9], log_every=100,
                     ema_decay=0.9), T=2)
    r["model"] = {"hidden": 64, "layers": 3, "t_dim": 16, "z_channels": 2}
    r["gan"] = {"d_width": 64, "d_levels": 3, "d_lr": 2e-3}
    out = run.train(r, out_dir=tmp_path / "run", stop_at=None)
    ref = make_points("moons", 1000, 0.05, 7).double()
    theta = torch.nn.functional.normalize(torch.randn(2, 64, generator=torch.Generator().manual_seed(0),
                                                      dtype=torch.float64), dim=0)
    trained = run.load(out)
    x, _ = run.generate(trained.denoiser, trained.task, trained.recipe, n=1000, progress=False)
    torch.manual_seed(0)
    untrained = run.build_for_training(trained.task, trained.recipe)[0].eval()
    x0, _ = run.generate(untrained, trained.task, trained.recipe, n=1000, progress=False)
    sw, sw0 = sliced_w2(x.double(), ref, theta), sliced_w2(x0.double(), ref, theta)
    assert sw < 0.5 * sw0, (sw, sw0)


def test_gan_recipes_are_checked(tmp_path):
    r = ddgan(recipe("toy2d", tmp_path))
    with pytest.raises(ConfigError, match="prediction=x0"):
        run.train({**r, "diffusion": {**r["diffusion"], "prediction": "eps"}}, out_dir=tmp_path / "a")
    with pytest.raises(ConfigError, match="z_channels"):
        run.train({**r, "model": {**r["model"], "z_channels": 0}}, out_dir=tmp_path / "b")
    with pytest.raises(ConfigError, match="gan.d_betas"):
        run.train({**r, "gan": {"d_betas": [0.5]}}, out_dir=tmp_path / "c")


@pytest.mark.parametrize("task, command", [
    ("toy2d", None),
    ("image", ["image-path", "--out", "{root}/path"]),
    ("audio", ["vocode", "--wav", "{root}/wavs/clip0.wav", "--out", "{root}/voc.wav"]),
    ("music", ["compose", "--n", "2", "--out", "{root}/compose"]),
    ("trajectory", ["plan", "--episodes", "1", "--reference-episodes", "2", "--out", "{root}/plan"]),
])
def test_every_task_trains_a_ddgan_that_every_command_samples(task, command, tmp_path, monkeypatch, capsys):
    from diffsuite.recipes import cli
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path / "cache"))
    out = run.train(ddgan(recipe(task, tmp_path, steps=2)), out_dir=tmp_path / "run")
    ld = run.load(out)
    assert ld.recipe.gan is not None and ld.denoiser.z_channels == 2
    if command:
        name, *rest = command
        assert cli.main([name, str(out), *[a.format(root=tmp_path) for a in rest]]) == 0, capsys.readouterr().err
    assert cli.main(["sample", str(out), "--out", str(tmp_path / "s")]) == 0
    info = __import__("json").loads((tmp_path / "s" / "sample.json").read_text())
    assert (info["sampler"], info["steps"]) == ("ddgan", 2)


DDGAN_DDP_SCRIPT = """
import hashlib, json, sys, torch
from diffsuite.core.config import TrainerConfig
from diffsuite.core.ddgan import DenoisingDiffusionGAN, MLPDiscriminator
from diffsuite.core.denoiser import Denoiser
from diffsuite.core.schedules import make_schedule
from diffsuite.core.trainer import Trainer
from diffsuite.recipes.toy2d import MLPDenoiser, make_points
torch.manual_seed(0)
sch = make_schedule("vp_sde", 2, beta_start=0.1, beta_end=20.0)
G, D = Denoiser(MLPDenoiser(2, 16, 2, 8, z_channels=2), sch, "x0"), MLPDiscriminator(2, 16, 2, 8)
cfg = TrainerConfig(steps=4, batch_size=16, lr=1e-3, warmup_steps=0, log_every=1, progress=False, tensorboard=False,
                    mixed_precision="no", seed=0)
tr = Trainer(G, torch.utils.data.TensorDataset(make_points("moons", 256, 0.05, 0)), cfg, sys.argv[1],
             DenoisingDiffusionGAN(D, 0.1, 1e-3))
tr.train()
dig = lambda m: hashlib.sha256(b"".join(v.detach().numpy().tobytes() for v in m.state_dict().values())).hexdigest()
print("RESULT", json.dumps({"rank": tr.acc.process_index, "G": dig(tr.net), "D": dig(D)}), flush=True)
"""


def test_a_two_process_ddgan_keeps_both_networks_in_sync(tmp_path):
    """Under `accelerate launch` (2 processes, gloo) each rank sees other data: DDP averages the generator's gradients,
    the objective averages the discriminator's, so both stay identical on every rank."""
    import os
    import subprocess
    import sys
    script = tmp_path / "ddgan_ddp.py"
    script.write_text(DDGAN_DDP_SCRIPT)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--main_process_ip", "127.0.0.1", "--main_process_port", "29531", "--mixed_precision", "no",
           "--dynamo_backend", "no", str(script), str(tmp_path / "run")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    import json
    recs = [json.loads(line.split("RESULT ", 1)[1]) for line in res.stdout.splitlines() if line.startswith("RESULT ")]
    assert sorted(r["rank"] for r in recs) == [0, 1]
    assert recs[0]["G"] == recs[1]["G"] and recs[0]["D"] == recs[1]["D"]
