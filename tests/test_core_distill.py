"""Progressive distillation (Salimans & Ho 2022): the target is two teacher DDIM steps, the student grids nest, and
`diffsuite distill` makes ordinary student checkpoints that record their teacher and resume exactly."""
from __future__ import annotations

import math
from pathlib import Path

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


@pytest.mark.parametrize("task, command, method", [
    ("image", ["image-path", "--out", "{root}/path"], "progressive"),
    ("image", ["image-inpaint", "--n", "2", "--out", "{root}/inpaint"], "consistency"),
    ("audio", ["vocode", "--wav", "{root}/wavs/clip0.wav", "--out", "{root}/voc.wav"], "progressive"),
    ("audio", ["vocode", "--wav", "{root}/wavs/clip0.wav", "--out", "{root}/voc.wav"], "consistency"),
    ("music", ["compose", "--n", "2", "--out", "{root}/compose"], "progressive"),
    ("trajectory", ["plan", "--episodes", "1", "--reference-episodes", "2", "--out", "{root}/plan"], "progressive"),
    ("trajectory", ["plan", "--episodes", "1", "--reference-episodes", "2", "--out", "{root}/plan"], "consistency"),
])
def test_a_student_samples_through_every_command(task, command, method, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path / "cache"))
    teacher = run.train(recipe(task, tmp_path, steps=2), out_dir=tmp_path / "teacher")
    out = tmp_path / "student"
    assert cli.main(["distill", str(teacher), "--method", method, "--steps", "2", "--out", str(out),
                     "distill.start_steps=4", "distill.ode_steps=4", "distill.stage_steps=2", "train.progress=false"]) == 0
    name, *rest = command
    assert cli.main([name, str(out), *[a.format(root=tmp_path) for a in rest]]) == 0, capsys.readouterr().err
    assert cli.main(["sample", str(out), "--out", str(tmp_path / "s")]) == 0
    info = __import__("json").loads((tmp_path / "s" / "sample.json").read_text())
    assert (info["sampler"], info["steps"]) == ("ddim" if method == "progressive" else "consistency", 2)


def test_plan_speed_times_a_maze_teacher_and_its_student_side_by_side(tmp_path, monkeypatch):
    """benchmarks/fewstep.py plan-speed: each run plans with its own sampler (RUN:STEPS overrides the steps,
    RUN:STEPS:SAMPLER the sampler too), and the speedups are against the first run."""
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from fewstep import plan_speed
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path / "cache"))
    teacher = run.train(recipe("trajectory", tmp_path, steps=2), out_dir=tmp_path / "teacher")
    assert cli.main(["distill", str(teacher), "--method", "consistency", "--steps", "2", "--out", str(tmp_path / "cd"),
                     "distill.ode_steps=4", "distill.stage_steps=2", "train.progress=false"]) == 0
    specs = [str(teacher), f"{tmp_path / 'cd'}:1", str(tmp_path / "cd"), f"{teacher}:2:dpmpp_2m"]
    rows = plan_speed(specs, threads=1, repeats=2)["rows"]
    own = run.load(teacher).recipe.sample
    assert [(r["sampler"], r["steps"]) for r in rows] == [(own.sampler, own.steps), ("consistency", 1),
                                                          ("consistency", 2), ("dpmpp_2m", 2)]
    assert rows[0]["speedup"] == 1.0 and all(r["ms_median"] > 0 for r in rows)


# ------------------------------------------------------------------------------------------------ consistency

@pytest.mark.parametrize("form", ["edm", "blend"])
def test_consistency_function_meets_its_boundary_exactly(form):
    from diffsuite.core.distill import ConsistencyFunction, consistency_coefs
    sch = make_schedule("cosine", 50)
    from diffsuite.recipes.toy2d import MLPDenoiser
    den = Denoiser(MLPDenoiser(2, 16, 2, 8), sch, "v")
    f = ConsistencyFunction(den, form=form)
    x = torch.randn(5, 2, dtype=torch.float64)
    den.double()
    a0 = math.sqrt(float(sch.alpha_bar[0]))
    assert torch.equal(f(x, torch.zeros(5)).x0, x / a0)  # a = 1, b = 0 at t = 0: no network term at all
    a, b = consistency_coefs(torch.tensor([f.sigma_min, 1.0, 80.0], dtype=torch.float64), f.sigma_min, form=form)
    assert a[0] == 1 and b[0] == 0 and torch.all(a[1:] < 1) and a[2] < 1e-4
    # away from the boundary f moves towards the network's x0 estimate
    t = torch.full((5,), 49.0)
    assert torch.allclose(f(x, t).x0, den(x, t).x0, atol=1e-3)


def test_a_consistency_student_starts_as_its_teachers_x0_predictor():
    """Song et al.'s c_out with the teacher's x0 as the EDM denoiser: f = x0_hat up to O(sigma_min / sigma) at every
    noise level; the pre-session-40 blend c_skip x + (1 - c_skip) x0_hat is far from it wherever c_skip is not small."""
    from diffsuite.core.distill import ConsistencyFunction
    gmm = GaussianMixture([[-1.0, 0.5], [1.0, -0.5]], [[0.05, 0.1], [0.1, 0.05]])
    sch = make_schedule("cosine", 1000)
    teacher = Denoiser(ExactGMMNet(gmm, sch, "v"), sch, "v")
    x = torch.randn(256, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for t in (250.0, 500.0):
        tt = torch.full((256,), t)
        gap = {form: float((ConsistencyFunction(teacher, form=form)(x, tt).x0 - teacher(x, tt).x0).abs().max())
               for form in ("edm", "blend")}
        assert gap["edm"] < 0.05 and gap["blend"] > 0.5, gap


def test_a_sampling_denoisers_clipping_applies_to_f_not_to_the_networks_x0():
    """With clip_x0 the network's x0 term may leave [-1, 1] to cancel c_skip's noise; only f, the sample, is clipped."""
    from diffsuite.core.denoiser import clip_x0
    from diffsuite.core.distill import ConsistencyFunction, consistency_coefs

    class Constant(torch.nn.Module):  # an x0-predicting network that always says 3
        def forward(self, x, t, cond=None):
            return torch.full_like(x, 3.0)
    sch = make_schedule("cosine", 50)
    f = ConsistencyFunction(Denoiser(Constant(), sch, "x0", x0_transform=clip_x0), form="blend")
    t = torch.full((4,), 20.0, dtype=torch.float64)
    ab = float(sch.alpha_bar_at(t[:1]))
    a, b = (float(c) for c in consistency_coefs(torch.tensor(math.sqrt((1 - ab) / ab)), f.sigma_min, form="blend"))
    x = torch.tensor([-6.0, -2.0, 0.0, 2.0], dtype=torch.float64)[:, None] * math.sqrt(ab)
    want = (a * x / math.sqrt(ab) + b * 3.0).clamp(-1, 1)
    assert torch.allclose(f(x, t).x0, want)
    assert (want.abs() < 1).any() and (want.abs() == 1).any()  # both cases occur: inside the range and clipped


def test_the_vocoders_fast_schedule_refuses_a_consistency_student():
    from diffsuite.core.distill import ConsistencyFunction
    from diffsuite.modalities.audio.task import ExplicitAlphaBars
    f = ConsistencyFunction(_gmm_teacher())
    with pytest.raises(ValueError, match="consistency student samples with 'consistency'"):
        ExplicitAlphaBars(f, torch.tensor([3.0]), torch.tensor([0.5]))


def test_consistency_sampler_is_algorithm_1():
    from diffsuite.core.distill import ConsistencyFunction
    from diffsuite.core.samplers import consistency
    teacher = _gmm_teacher()
    f = ConsistencyFunction(teacher)
    x_T = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    one = consistency(f, x_T, 1, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(one, f(x_T, torch.full((6,), 39.0)).x0)
    two = consistency(f, x_T, 2, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    x0 = f(x_T, torch.full((6,), 39.0)).x0
    ab = float(teacher.schedule.alpha_bar_at(torch.tensor(19.0)))
    z = torch.randn(6, 2, dtype=torch.float64, generator=g)
    want = f(math.sqrt(ab) * x0 + math.sqrt(1 - ab) * z, torch.full((6,), 19.0)).x0
    assert torch.allclose(two, want)


def test_consistency_target_network_is_an_ema_and_round_trips():
    from diffsuite.core.distill import ConsistencyDistillation, ConsistencyFunction
    from diffsuite.recipes.toy2d import MLPDenoiser
    sch = make_schedule("cosine", 50)
    student = ConsistencyFunction(Denoiser(MLPDenoiser(2, 16, 2, 8), sch, "v"))
    cd = ConsistencyDistillation(_gmm_teacher(50), student, ode_steps=10, target_decay=0.9)
    before = {k: v.clone() for k, v in cd.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    loss, t = cd(student, torch.randn(8, 2), None, torch.Generator().manual_seed(0))
    assert loss.shape == (8,) and torch.isfinite(loss).all()
    assert set(t.tolist()) <= {(n + 1) * 49 / 10 for n in range(10)}
    after = cd.state_dict()
    for k in before:  # theta- <- 0.9 theta- + 0.1 theta
        assert torch.allclose(after[k], 0.9 * before[k] + 0.1 * (before[k] + 1.0), atol=1e-6)
    cd2 = ConsistencyDistillation(_gmm_teacher(50), student, ode_steps=10)
    cd2.load_state_dict(after)
    assert all(torch.equal(cd2.state_dict()[k], after[k]) for k in after)


def test_consistency_distillation_resumes_exactly_with_its_target_network(teacher, tmp_path, monkeypatch):
    from diffsuite.core.trainer import Trainer, TrainingInterrupted
    from diffsuite.recipes import distill as D
    over = ["distill.stage_steps=6", "distill.ode_steps=8", "train.progress=false", "train.ckpt_every=2"]
    D.distill(teacher, tmp_path / "full", method="consistency", steps=1, overrides=over)
    real = Trainer.train

    def interrupted(self, resume=None, stop_at=None):
        real(self, resume, stop_at=3)
        raise TrainingInterrupted("stopped")
    monkeypatch.setattr(Trainer, "train", interrupted)
    with pytest.raises(TrainingInterrupted):
        D.distill(teacher, tmp_path / "part", method="consistency", steps=1, overrides=over)
    monkeypatch.setattr(Trainer, "train", real)
    D.distill(teacher, tmp_path / "part", method="consistency", steps=1, overrides=over, resume=True)
    a = load_checkpoint(run.resolve_checkpoint(tmp_path / "full"))[0]
    b = load_checkpoint(run.resolve_checkpoint(tmp_path / "part"))[0]
    for g in ("model", "ema", "loss"):
        assert a[g] and all(torch.equal(a[g][k], b[g][k]) for k in a[g]), g
    st = run.load(tmp_path / "full")
    assert st.recipe.sample.sampler == "consistency" and st.recipe.distill.method == "consistency"
    assert type(st.denoiser).__name__ == "ConsistencyFunction"


class _ExactGaussianFlow(torch.nn.Module):
    """For data N(m, S) the probability-flow ODE is linear: in S's eigenbasis it scales each coordinate of x_t - alpha m
    by sqrt(lambda) / sqrt(alpha^2 lambda + sigma^2) on its way to t = 0. That map is the exact consistency function."""

    def __init__(self, m, S, schedule):
        super().__init__()
        self.m, self.schedule = m, schedule
        self.lam, self.U = torch.linalg.eigh(S)

    def forward(self, x_t, t, cond=None):
        from types import SimpleNamespace
        ab = self.schedule.alpha_bar_at(torch.as_tensor(t, dtype=torch.float64)).expand(x_t.shape[0])[:, None]
        y = (x_t.double() - ab.sqrt() * self.m) @ self.U
        x0 = self.m + (y * self.lam.sqrt() / (ab * self.lam + 1 - ab).sqrt()) @ self.U.T
        return SimpleNamespace(x0=x0)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_consistency_sampling_of_the_exact_flow_map_gives_the_data(steps):
    """Algorithm 1 with the exact consistency function of Gaussian data reproduces N(m, S) at any number of steps
    (4-standard-error bounds on the mean and covariance), starting from the true q(x_T)."""
    from diffsuite.core.samplers import sample
    sch = make_schedule("cosine", 100)
    m = torch.tensor([1.0, -0.5], dtype=torch.float64)
    S = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=torch.float64)
    f = _ExactGaussianFlow(m, S, sch)
    g, n = torch.Generator().manual_seed(0), 4000
    ab_T = sch.alpha_bar[-1]
    x0 = m + torch.randn(n, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(S).T
    x_T = ab_T.sqrt() * x0 + (1 - ab_T).sqrt() * torch.randn(n, 2, generator=g, dtype=torch.float64)
    x = sample(f, (n, 2), "consistency", steps, generator=g, x_T=x_T, spacing="uniform")
    se_m = (S.diagonal() / n).sqrt()
    assert ((x.mean(0) - m).abs() < 4 * se_m).all(), x.mean(0)
    se_c = ((S.diagonal()[:, None] * S.diagonal()[None] + S ** 2) / n).sqrt()
    assert ((torch.cov(x.T) - S).abs() < 4 * se_c).all(), torch.cov(x.T)


def test_every_stage_of_a_guided_teacher_samples_unguided(tmp_path, monkeypatch):
    """A teacher guided at w is distilled at w in the first stage; every stage's student has learnt w and must sample
    with guidance 0 (guiding it again would apply w twice), and later stages distil unguided students."""
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path / "cache"))
    teacher = run.train(recipe("image", tmp_path, steps=2), out_dir=tmp_path / "teacher")
    assert run.load(teacher).recipe.sample.guidance == 1.0
    from diffsuite.recipes import distill as D
    seen = []
    real = D.teacher_denoiser
    monkeypatch.setattr(D, "teacher_denoiser", lambda loaded, w: (seen.append(w), real(loaded, w))[1])
    D.distill(teacher, tmp_path / "pd", steps=2, overrides=["distill.start_steps=8", "distill.stage_steps=1",
                                                            "train.progress=false"])
    assert seen == [1.0, 0.0]
    for stage in ("stages/0004", ""):
        r = run.load(tmp_path / "pd" / stage).recipe
        assert r.sample.guidance == 0.0 and r.distill.guidance == 1.0


def test_flowmap_diagnostic_measures_against_the_teachers_ode(teacher, tmp_path):
    """benchmarks/fewstep.py flowmap: with one ODE step the teacher's solution is its own x0 estimate (distance 0);
    with more steps it moves away from it."""
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from diffsuite.recipes import distill as D
    from fewstep import flowmap_rows
    student = D.distill(teacher, tmp_path / "cd", method="consistency", steps=1,
                        overrides=["distill.stage_steps=4", "train.progress=false"])
    one = flowmap_rows(teacher, student, 16, [500.0, 50.0], 1, "test")
    assert [r["teacher_x0_vs_ode"] for r in one] == [0.0, 0.0]
    many = flowmap_rows(teacher, student, 16, [500.0], 20, "test")[0]
    assert many["teacher_x0_vs_ode"] > 0 and many["student_vs_ode"] > 0


def test_a_student_saved_before_the_form_key_loads_as_the_blend_it_was_made_as(teacher, tmp_path, monkeypatch):
    from diffsuite.recipes import distill as D
    student = D.distill(teacher, tmp_path / "cd", method="consistency", steps=1,
                        overrides=["distill.stage_steps=2", "train.progress=false"])
    assert run.load(student).denoiser.form == "edm"
    real = run.load_checkpoint

    def without_form(*a, **k):
        tensors, state, config = real(*a, **k)
        config["distill"].pop("form")
        return tensors, state, config
    monkeypatch.setattr(run, "load_checkpoint", without_form)
    old = run.load(student)
    assert old.denoiser.form == "blend" and old.recipe.distill.form == "blend"  # the model and its recipe agree


# ------------------------------------------------------------------------------------------------ guidance

def test_guidance_distillation_target_is_the_guided_teachers_x0():
    """By hand (Meng et al. 2023, eq. 6 at a fixed w): on a stub eps network eps(x, c) = x / 2 + c, the target at
    (z_t, t) is the x0 of (1 + w) eps(z_t, c) - w eps(z_t, null); the loss of a conditional-only student is its
    weighted distance from that, and a student predicting the guided x0 has zero loss."""
    from diffsuite.core.distill import GuidanceDistillation
    from diffsuite.core.guidance import ClassifierFreeGuidance
    from diffsuite.core.utils import append_dims, randn

    class Net(torch.nn.Module):
        def forward(self, x, t, cond):
            return x / 2 + append_dims(cond.to(x.dtype), x.ndim)
    sch, w = make_schedule("cosine", 40), 1.5
    den = Denoiser(Net(), sch, "eps")
    teacher = ClassifierFreeGuidance(den, w, 0.0)
    x0 = torch.tensor([[0.3, -0.2], [-1.1, 0.4], [0.5, 0.5]], dtype=torch.float64)
    c = torch.tensor([1.0, 2.0, -3.0], dtype=torch.float64)
    loss, t = GuidanceDistillation(teacher)(den, x0, c, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # the same draws, by hand
    t_own = torch.randint(0, 40, (3,), generator=g).double()
    eps = randn(x0.shape, g, x0.device, x0.dtype)
    assert torch.equal(t.double(), t_own)
    ab = append_dims(sch.alpha_bar_at(t_own), 2)
    z = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    x0_of = lambda e: (z - (1 - ab).sqrt() * e) / ab.sqrt()  # noqa: E731
    guided = x0_of((1 + w) * (z / 2 + c[:, None]) - w * (z / 2))
    want = ((x0_of(z / 2 + c[:, None]) - guided) ** 2).mean(1) * (ab / (1 - ab)).clamp(min=1).squeeze(1)
    assert torch.allclose(loss.double(), want, rtol=1e-6) and (want > 0).all()
    assert GuidanceDistillation(teacher)(teacher, x0, c, torch.Generator().manual_seed(3))[0].abs().max() < 1e-10


def test_a_guidance_student_samples_unguided_and_teaches_a_consistency_student(tmp_path, monkeypatch, capsys):
    """`distill --method guidance`: the student keeps its teacher's sampler at guidance 0 and records the w it learnt;
    a consistency student of it distils it unguided; a teacher sampled without guidance is refused, naming it."""
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path / "cache"))
    teacher = run.train(recipe("image", tmp_path, steps=2), out_dir=tmp_path / "teacher")
    from diffsuite.recipes import distill as D
    seen = []
    real = D.teacher_denoiser
    monkeypatch.setattr(D, "teacher_denoiser", lambda loaded, w: (seen.append(w), real(loaded, w))[1])
    quiet = ["distill.stage_steps=2", "train.progress=false"]
    assert cli.main(["distill", str(teacher), "--method", "guidance", "--out", str(tmp_path / "gd"), *quiet]) == 0
    r = run.load(tmp_path / "gd").recipe
    assert (r.distill.method, r.distill.guidance, r.sample.guidance) == ("guidance", 1.0, 0.0)
    assert (r.sample.sampler, r.sample.steps) == ("ddim", 3) and r.distill.steps == 3
    assert cli.main(["sample", str(tmp_path / "gd"), "--out", str(tmp_path / "s"), "--n", "2"]) == 0
    D.distill(tmp_path / "gd", tmp_path / "cd", method="consistency", steps=2, overrides=quiet)
    assert seen == [1.0, 0.0] and run.load(tmp_path / "cd").recipe.distill.guidance == 0.0
    assert cli.main(["distill", str(tmp_path / "gd"), "--method", "guidance", "--out", str(tmp_path / "gd2"),
                     *quiet]) == 2
    err = capsys.readouterr().err
    assert "not sampled with classifier-free guidance" in err and "distill.guidance=W" in err
