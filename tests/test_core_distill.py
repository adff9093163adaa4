"""Progressive distillation (Salimans & Ho 2022): the target is two teacher DDIM steps, the student grids nest, and
`diffsuite distill` makes ordinary student checkpoints that record their teacher and resume exactly."""
from __future__ import annotations

import math

import pytest
import torch

from diffsuite.core.analytic import ExactGMMNet, GaussianMixture
from diffsuite.core.denoiser import Denoiser
from diffsuite.core.distill import ProgressiveDistillation, pd_target
from diffsuite.core.samplers import ddim, uniform_timesteps
from diffsuite.core.schedules import make_schedule
from diffsuite.core.checkpoint import load_checkpoint
from diffsuite.core.utils import sha256_file
from diffsuite.recipes import cli, run
from diffsuite.recipes.distill import stage_plan

from tiny import recipe


def _gmm_teacher(T=40):
    gmm = GaussianMixture([[-1.0, 0.5], [1.0, -0.5]], [[0.05, 0.1], [0.1, 0.05]])
    sch = make_schedule("cosine", T)
    return Denoiser(ExactGMMNet(gmm, sch, "v"), sch, "v")


def test_uniform_grids_nest():
    for T, N in ((1000, 4), (1000, 16), (50, 5), (40, 2)):
        fine, coarse = uniform_timesteps(T, 2 * N), uniform_timesteps(T, N)
        assert torch.allclose(fine[::2], coarse) and float(coarse[-1]) == T / N - 1 and float(coarse[0]) == T - 1


def test_pd_target_takes_one_step_where_the_teacher_takes_two():
    """By hand: two deterministic DDIM steps of the teacher from z_t, then the x~ whose one DDIM step from z_t lands
    on the same point; the loss object's target must be it, for a final step (t'' clean) and an inner one."""
    teacher = _gmm_teacher()
    T, sch = 40, teacher.schedule
    x0 = torch.tensor([[0.3, -0.2], [-1.1, 0.4]], dtype=torch.float64)
    eps = torch.tensor([[0.5, 1.0], [-0.7, 0.2]], dtype=torch.float64)
    for N, j in ((1, 1), (4, 3), (4, 1)):
        t, t1, t2 = j * T / N - 1, j * T / N - 1 - T / (2 * N), j * T / N - 1 - T / N
        ab = [float(sch.alpha_bar_at(torch.tensor(s))) for s in (t, t1, t2)]
        a, s = [math.sqrt(v) for v in ab], [math.sqrt(1 - v) for v in ab]
        z = a[0] * x0 + s[0] * eps
        # the teacher's own sampler, two DDIM steps on the timesteps (t, t') and then t'' (-1 = clean)
        ts = torch.tensor([t, t1], dtype=torch.float64)
        abs_ = torch.tensor([ab[0], ab[1]], dtype=torch.float64)
        if t2 < 0:
            z2 = ddim(teacher, z, 2, timesteps=ts, alpha_bars=abs_)
        else:
            p = teacher(z, torch.full((2,), t), None)
            z1 = a[1] * p.x0 + s[1] * p.eps
            p = teacher(z1, torch.full((2,), t1), None)
            z2 = a[2] * p.x0 + s[2] * p.eps
        x_tilde = pd_target(z, z2, a[0], s[0], a[2], s[2])
        # one DDIM step of a student predicting x~ from z_t reaches z2
        eps_hat = (z - a[0] * x_tilde) / s[0]
        assert torch.allclose(a[2] * x_tilde + s[2] * eps_hat, z2, atol=1e-10)
        if t2 < 0:
            assert torch.allclose(x_tilde, z2, atol=1e-12)  # the last step's target is the teacher's sample itself
        # the loss object builds the same target: a "student" that returns x~ has zero loss
        pd = ProgressiveDistillation(teacher, N)
        g = torch.Generator().manual_seed(0)
        draws = pd.times(4096, torch.Generator().manual_seed(0), "cpu")[0]
        assert set(draws.tolist()) == {k * T / N - 1 for k in range(1, N + 1)}

        class Exact(torch.nn.Module):
            schedule = sch

            def forward(self, z_t, tt, cond=None):
                from types import SimpleNamespace
                return SimpleNamespace(x0=x_tilde.expand_as(z_t))
        pd.times = lambda B, gen, dev: tuple(torch.full((B,), v, dtype=torch.float64) for v in (t, t1, t2))
        loss, _ = pd(Exact(), x0, None, g)
        # the loss object draws its own eps; with the generator's eps == ours it is exactly zero
        g2 = torch.Generator().manual_seed(0)
        from diffsuite.core.utils import randn
        e = randn(x0.shape, g2, x0.device, x0.dtype)
        z_own = a[0] * x0 + s[0] * e
        p = teacher(z_own, torch.full((2,), t), None)
        z1 = a[1] * p.x0 + s[1] * p.eps
        p = teacher(z1, torch.full((2,), t1), None)
        target_own = pd_target(z_own, a[2] * p.x0 + s[2] * p.eps, a[0], s[0], a[2], s[2])
        w = max(ab[0] / (1 - ab[0]), 1.0)
        want = w * ((x_tilde - target_own) ** 2).mean(dim=1)
        assert torch.allclose(loss.double(), want, rtol=1e-6, atol=1e-9)


def test_stage_plan():
    assert stage_plan(64, 4) == [32, 16, 8, 4] and stage_plan(2, 1) == [1]
    for bad in ((48, 4), (4, 4), (16, 3)):
        with pytest.raises(ValueError, match="power of two"):
            stage_plan(*bad)


@pytest.fixture
def teacher(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path / "cache"))
    return run.train(recipe("toy2d", tmp_path, steps=30, lr=2e-3), out_dir=tmp_path / "teacher")


def test_distill_makes_a_student_every_command_samples(teacher, tmp_path, capsys):
    out = tmp_path / "student"
    argv = ["distill", teacher, "--steps", "2", "--out", out, "distill.start_steps=8", "distill.stage_steps=6",
            "train.progress=false"]
    assert cli.main([str(a) for a in argv]) == 0
    assert (out / "stages" / "0004").is_dir() and not (out / "stages" / "0002").exists()
    st = run.load(out)
    d = st.recipe.distill
    ckpt = run.resolve_checkpoint(teacher)
    assert d.method == "progressive" and d.steps == 2 and d.teacher == str(ckpt.resolve())
    assert d.teacher_sha256 == sha256_file(ckpt / "ema.safetensors")
    assert d.stage_teacher.endswith("step_00000006") and "0004" in d.stage_teacher
    assert (st.recipe.sample.sampler, st.recipe.sample.steps, st.recipe.sample.spacing) == ("ddim", 2, "uniform")
    assert cli.main(["sample", str(out), "--out", str(tmp_path / "s"), "--n", "16"]) == 0
    # a run folder is not trained over; --resume continues (here: nothing left to do)
    assert cli.main([str(a) for a in argv]) == 2 and "is not empty" in capsys.readouterr().err
    assert cli.main([str(a) for a in argv] + ["--resume"]) == 0


def test_distillation_resumes_exactly(teacher, tmp_path, monkeypatch):
    from diffsuite.core.trainer import Trainer, TrainingInterrupted
    from diffsuite.recipes import distill as D
    over = ["distill.start_steps=8", "distill.stage_steps=6", "train.progress=false", "train.ckpt_every=2"]
    D.distill(teacher, tmp_path / "full", steps=2, overrides=over)
    real = Trainer.train

    def interrupted(self, resume=None, stop_at=None):  # Ctrl-C after step 3 of the first stage
        real(self, resume, stop_at=3)
        raise TrainingInterrupted("stopped")
    monkeypatch.setattr(Trainer, "train", interrupted)
    with pytest.raises(TrainingInterrupted):
        D.distill(teacher, tmp_path / "part", steps=2, overrides=over)
    monkeypatch.setattr(Trainer, "train", real)
    assert run.load(tmp_path / "part" / "stages" / "0004").step == 3 and not (tmp_path / "part" / "checkpoints").exists()
    D.distill(teacher, tmp_path / "part", steps=2, overrides=over, resume=True)
    for stage in ("stages/0004", ""):
        a = load_checkpoint(run.resolve_checkpoint(tmp_path / "full" / stage))[0]
        b = load_checkpoint(run.resolve_checkpoint(tmp_path / "part" / stage))[0]
        for g in ("model", "ema"):
            assert all(torch.equal(a[g][k], b[g][k]) for k in a[g]), (stage, g)


@pytest.mark.parametrize("task, command", [
    ("image", ["image-path", "--out", "{root}/path"]),
    ("audio", ["vocode", "--wav", "{root}/wavs/clip0.wav", "--out", "{root}/voc.wav"]),
    ("music", ["compose", "--n", "2", "--out", "{root}/compose"]),
    ("trajectory", ["plan", "--episodes", "1", "--reference-episodes", "2", "--out", "{root}/plan"]),
])
def test_a_student_samples_through_every_command(task, command, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path / "cache"))
    teacher = run.train(recipe(task, tmp_path, steps=2), out_dir=tmp_path / "teacher")
    out = tmp_path / "student"
    assert cli.main(["distill", str(teacher), "--steps", "2", "--out", str(out), "distill.start_steps=4",
                     "distill.stage_steps=2", "train.progress=false"]) == 0
    name, *rest = command
    assert cli.main([name, str(out), *[a.format(root=tmp_path) for a in rest]]) == 0, capsys.readouterr().err
    assert cli.main(["sample", str(out), "--out", str(tmp_path / "s")]) == 0
    info = __import__("json").loads((tmp_path / "s" / "sample.json").read_text())
    assert (info["sampler"], info["steps"]) == ("ddim", 2)
