"""Temporal U-Net shapes, inpainting with every sampler, value guidance."""
import numpy as np
import pytest
import torch

from diffsuite.core.denoiser import Denoiser, clip_x0
from diffsuite.core.schedules import make_schedule
from diffsuite.modalities.trajectory.data import LimitsNormalizer
from diffsuite.modalities.trajectory.planner import Planner, PlannerConfig, track
from diffsuite.modalities.trajectory.temporal_unet import TemporalUnet, ValueNet


@pytest.mark.parametrize("dim_mults", [(1, 4, 8), (1, 2, 4, 8)])
def test_unet_every_divisible_horizon_and_clear_error(dim_mults):
    torch.manual_seed(0)
    net = TemporalUnet(6, 8, dim_mults)
    f = 2 ** (len(dim_mults) - 1)
    assert net.factor == f
    for H in range(f, 8 * f + 1, f):
        x = torch.randn(2, H, 6)
        assert net(x, torch.tensor([0.0, 3.5])).shape == x.shape
    for H in (f + 1, 3 * f - 2):
        with pytest.raises(ValueError, match=f"horizon {H} is not divisible by the down-sampling factor {f}"):
            net(torch.randn(1, H, 6), torch.zeros(1))


def test_unet_output_depends_on_time_and_all_steps():
    torch.manual_seed(0)
    net = TemporalUnet(6, 8, (1, 2))
    x = torch.randn(1, 16, 6, requires_grad=True)
    y = net(x, torch.zeros(1))
    assert not torch.allclose(y, net(x, torch.full((1,), 50.0)))
    (g,) = torch.autograd.grad(y[0, 0].sum(), x)
    assert g[0, :3].abs().sum() > 0


def test_value_net_shape_and_horizon_check():
    v = ValueNet(6, 16, 8, (1, 2, 4))
    assert v(torch.randn(3, 16, 6), torch.zeros(3)).shape == (3,)
    with pytest.raises(ValueError, match="horizon 32"):
        v(torch.randn(3, 32, 6), torch.zeros(3))
    with pytest.raises(ValueError, match="not divisible"):
        ValueNet(6, 18, 8, (1, 2, 4))


class GaussianX0(torch.nn.Module):
    """The exact x0-denoiser for data x0 ~ N(0, I): E[x0 | x_t] = sqrt(alpha_bar_t) x_t."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule, self.dummy = schedule, torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t, cond=None):
        ab = self.schedule.alpha_bar_at(t.double()).to(x.dtype)
        return ab.sqrt()[:, None, None] * x


def _planner(cfg, value_fn=None, H=16, exact=False):
    torch.manual_seed(0)
    sched = make_schedule("cosine", 20)
    net = GaussianX0(sched) if exact else TemporalUnet(6, 8, (1, 2))
    den = Denoiser(net, sched, "x0", x0_transform=None if exact else clip_x0)
    data = np.random.default_rng(0).uniform([-1, -1, -2, -1, -3, -3], [1, 1, 2, 1, 3, 3], (100, 6))
    return Planner(den, LimitsNormalizer(data), 2, 4, H, cfg, value_fn)


@pytest.mark.parametrize("sampler,steps", [("ddpm", 20), ("ddim", 5), ("dpmpp_2m", 5), ("heun", 4)])
def test_inpainting_holds_start_and_goal_exactly(sampler, steps):
    pl = _planner(PlannerConfig(sampler=sampler, steps=steps, n_candidates=3))
    start, goal = np.array([0.3, -0.2, 0.5, -1.0]), np.array([-1.5, 0.7])
    p = pl.plan(start, goal, torch.Generator().manual_seed(0))
    mask, known = pl.conditions(start, goal, 3)
    x = p.normalized
    assert torch.equal(x[mask.bool()], known[mask.bool()]), "known entries must be returned exactly"
    np.testing.assert_allclose(p.all_states[:, 0], np.tile(start, (3, 1)), atol=1e-5)
    np.testing.assert_allclose(p.all_states[:, -1], np.tile([*goal, 0, 0], (3, 1)), atol=1e-5)
    assert p.states.shape == (16, 4) and p.actions.shape == (16, 2)


@pytest.mark.parametrize("guidance,scale", [("value", 20.0), ("gradient", 3.0)])
def test_value_guided_sample_scores_higher_than_unguided(guidance, scale):
    J = lambda x, t, c: x[:, :, 2].mean(dim=1)  # noqa: E731  value: mean normalised x position of the plan
    start = np.array([0.0, 0.0, 0.0, 0.0])
    plain = _planner(PlannerConfig(sampler="ddim", steps=10, n_candidates=4), J, exact=True).plan(start, None, torch.Generator().manual_seed(1))
    guided = _planner(PlannerConfig(sampler="ddim", steps=10, n_candidates=4, guidance=guidance, guide_scale=scale,
                                    t_stopgrad=0), J, exact=True).plan(start, None, torch.Generator().manual_seed(1))
    assert guided.value > plain.value + 0.05, (guided.value, plain.value)
    assert J(guided.normalized, None, None).mean() > J(plain.normalized, None, None).mean()


def test_candidates_ranked_by_value():
    J = lambda x, t, c: x[:, :, 3].mean(dim=1)  # noqa: E731
    pl = _planner(PlannerConfig(sampler="ddim", steps=5, n_candidates=6), J)
    p = pl.plan(np.zeros(4), None, torch.Generator().manual_seed(0))
    assert p.value == pytest.approx(float(J(p.normalized, None, None).max()), abs=1e-6)


def test_execute_mean_averages_the_candidates_actions():
    """execute='mean' acts on the candidates' actions averaged; the states shown stay the best plan's."""
    J = lambda x, t, c: x[:, :, 3].mean(dim=1)  # noqa: E731
    pl = _planner(PlannerConfig(sampler="ddim", steps=5, n_candidates=6, execute="mean"), J)
    p = pl.plan(np.zeros(4), None, torch.Generator().manual_seed(0))
    joint = pl.norm.unnormalize(p.normalized.float()).numpy()
    np.testing.assert_allclose(p.actions, joint[:, :, :2].mean(0), atol=1e-6)
    best = int(J(p.normalized, None, None).argmax())
    assert not np.allclose(p.actions, joint[best, :, :2]) and np.allclose(p.states, joint[best, :, 2:])
    with pytest.raises(ValueError, match="execute='mean'"):  # a states-only plan has no actions to average
        Planner(pl.den, pl.norm, 0, 4, 16, PlannerConfig(execute="mean"))


def test_candidates_ranked_by_wall_penetration():
    from diffsuite.modalities.trajectory.maze import MazeGrid
    from diffsuite.modalities.trajectory.planner import wall_value
    grid = MazeGrid(np.array([[1, 1, 1, 1], [1, 0, 0, 1], [1, 0, 1, 1], [1, 1, 1, 1]], dtype=bool))
    probe = _planner(PlannerConfig())
    J = wall_value(grid, probe.norm, 2)
    pl = _planner(PlannerConfig(sampler="ddim", steps=5, n_candidates=6), J)
    p = pl.plan(np.zeros(4), np.array([0.5, 0.5]), torch.Generator().manual_seed(0))
    pen = grid.wall_penetration(torch.tensor(p.all_states[..., :2]))
    assert len(set(pen.tolist())) > 1  # the candidates differ
    assert float(pen[int(pen.argmin())]) == pytest.approx(-p.value, rel=1e-4)
    np.testing.assert_allclose(p.states, p.all_states[int(pen.argmin())])


def test_warm_start_replans_from_previous_plan():
    pl = _planner(PlannerConfig(sampler="ddim", steps=5, warm_start_t=0.3))
    g = torch.Generator().manual_seed(0)
    pl.plan(np.zeros(4), np.array([1.0, 1.0]), g)
    p2 = pl.plan(np.array([0.1, 0.1, 0, 0]), np.array([1.0, 1.0]), g, shift=3)
    np.testing.assert_allclose(p2.states[0], [0.1, 0.1, 0, 0], atol=1e-5)


def test_shorter_horizon_plan_holds_start_and_goal():
    """A shrinking-horizon replan: a shorter plan with start at step 0 and goal at its own last step, warm-started."""
    from diffsuite.modalities.trajectory.evaluate import shrunk_horizon
    pl = _planner(PlannerConfig(sampler="ddim", steps=5, warm_start_t=0.3))
    g, goal = torch.Generator().manual_seed(0), np.array([1.0, -0.5])
    pl.plan(np.zeros(4), goal, g)
    H = shrunk_horizon(16 - 7, factor=2, H=16, minimum=4)
    assert H == 10
    p = pl.plan(np.array([0.2, 0.1, 0.3, 0.0]), goal, g, shift=7, horizon=H)
    assert p.states.shape == (10, 4)
    np.testing.assert_allclose(p.states[0], [0.2, 0.1, 0.3, 0.0], atol=1e-5)
    np.testing.assert_allclose(p.states[-1], [1.0, -0.5, 0.0, 0.0], atol=1e-5)
    assert [shrunk_horizon(r, 4, 128, 32) for r in (1, 30, 33, 200)] == [32, 32, 36, 128]
    vnet = ValueNet(6, 16, 8, (1, 2))
    with pytest.raises(ValueError, match="ValueNet: horizon 8 != the horizon 16"):
        _planner(PlannerConfig(sampler="ddim", steps=5), lambda x, t, c: vnet(x, t)).plan(np.zeros(4), goal, g, horizon=8)
    # a value of any horizon (the maze's wall_value) ranks shorter plans too
    p = _planner(PlannerConfig(sampler="ddim", steps=5, n_candidates=3), lambda x, t, c: -x.abs().sum((1, 2))).plan(
        np.zeros(4), goal, g, horizon=8)
    assert p.states.shape == (8, 4) and p.value is not None


def test_track_pd_and_actions():
    states = np.array([[0, 0, 0, 0], [0.5, 0, 1, 0]], float)
    a = track(states, np.array([[0.2, -0.3], [0, 0]]), 0, np.zeros(4), "pd")
    np.testing.assert_allclose(a, [1.0, 0.0])  # clip(0.5 + 1.0)
    np.testing.assert_allclose(track(states, np.array([[0.2, -0.3], [0, 0]]), 0, np.zeros(4), "actions"), [0.2, -0.3])
    np.testing.assert_allclose(track(states, None, 5, np.array([0.5, 0, 0.3, 0]), "pd"), [-0.3, 0])
    with pytest.raises(ValueError, match="control"):
        track(states, None, 0, np.zeros(4), "bogus")


def test_conditioned_unet_sees_clean_start_and_goal():
    from diffsuite.modalities.trajectory.temporal_unet import ConditionedTemporalUnet, apply_conditioning
    torch.manual_seed(0)
    net = ConditionedTemporalUnet(6, 2, 8, (1, 2))
    x, cond = torch.randn(2, 16, 6), torch.randn(2, 2, 4)
    x2 = x.clone()
    x2[:, [0, -1], 2:] += 5.0  # whatever x_t holds there is replaced by the clean states
    t = torch.tensor([3.0, 7.0])
    assert torch.allclose(net(x, t, cond), net(x2, t, cond))
    c = apply_conditioning(x, cond, 2)
    assert torch.equal(c[:, 0, 2:], cond[:, 0]) and torch.equal(c[:, -1, 2:], cond[:, 1]) and torch.equal(c[:, 1:-1], x[:, 1:-1])
    with pytest.raises(ValueError, match="cond shape"):
        apply_conditioning(x, torch.randn(2, 3, 4), 2)
    pl = _planner(PlannerConfig(steps=2, condition="start_goal"))
    with pytest.raises(ValueError, match="pass a goal"):
        pl.plan(np.zeros(4), None)


def test_planner_uses_the_recipe_sampler_options(monkeypatch):
    """`diffsuite plan` passes the recipe's sample options (here DDIM eta and spacing) to the sampler, and they act."""
    from types import SimpleNamespace
    from diffsuite.core.config import SampleConfig
    from diffsuite.modalities.trajectory import cli, task
    from diffsuite.recipes.run import sampler_options
    start, goal = np.array([0.3, -0.2, 0.5, -1.0]), np.array([-1.5, 0.7])
    plans = {}
    for key, opts in (("default", {}), ("eta", {"eta": 1.0}), ("trailing", {"spacing": "trailing"})):
        pl = _planner(PlannerConfig(sampler="ddim", steps=5, sampler_options=opts))
        plans[key] = pl.plan(start, goal, torch.Generator().manual_seed(0)).states
    assert not np.allclose(plans["default"], plans["eta"])
    assert not np.allclose(plans["default"], plans["trailing"])
    recipe = SimpleNamespace(sample=SampleConfig(sampler="ddim", steps=5, eta=0.5, spacing="trailing"),
                             data=SimpleNamespace(horizon=16, condition="start_goal", formulation="diffuser"))
    loaded = SimpleNamespace(recipe=recipe, denoiser=_planner(PlannerConfig()).den)
    args = SimpleNamespace(value=None, guidance=None, sampler=None, steps=None, candidates=1, guide_scale=0.1,
                           t_stopgrad=2, warm_start=0.0, device="cpu", avoid_walls=False, execute="best", inverse=None)
    seq = SimpleNamespace(normalizer=LimitsNormalizer(np.array([[0.0] * 6, [1.0] * 6])), action_dim=2, obs_dim=4)
    monkeypatch.setattr(task, "full_dataset", lambda data: seq)
    cfg = cli._planner(args, loaded).cfg
    assert cfg.sampler_options == sampler_options(recipe.sample, "ddim") == {"eta": 0.5, "spacing": "trailing"}
