"""Planning with a trajectory diffusion model (Janner et al. 2022, Diffuser, Sec. 3 and Alg. 1).

* Goal conditioning by inpainting: the start state at step 0 and the goal (position, zero velocity, as
  Diffuser in maze2d) at step H-1 are held by the core's `Inpaint` hook (exact in the returned plan);
  a model trained with data.condition also sees them clean in its input (cond, Diffuser's apply_conditioning).
* Reward seeking by guidance with a value function J(x_t, t): the core's `ValueGuidance` hook (Diffuser's
  n_guide_steps, t_stopgrad, scale_grad_by_std) or the core's `GradientGuidance` denoiser wrapper.
* A batch of candidate plans, ranked by J when a value function is given.
* Warm start: re-noise the previous plan (shifted by the steps executed) to an intermediate t and denoise
  from there; receding-horizon replanning is the caller's choice of `replan_every` (evaluate.py). The default
  is Diffuser's: plan once, track the plan, then head for the goal. Replanning keeps the goal at step H-1, so a
  replan from a state already close to the goal asks for an H-step window between nearby endpoints, which in
  the never-reset training stream is a detour (go elsewhere and come back): with the U-Maze demo, replanning
  every 16-64 steps makes the agent shuttle back and forth (success 0.0-0.6 vs 1.0 planning once).
  `plan(..., horizon=h)` plans over a shorter horizon (a multiple of the U-Net's down-sampling factor): a
  shrinking-horizon replan keeps the goal at the step where the previous plan was due to arrive (evaluate.py,
  shrink=True), which fixes that (U-Maze demo, replan every 16: success 1.00 single- and multi-task).
* Any core sampler at any step count.
* Decision Diffuser (Ajay et al. 2023): with `target_return` the model is a states-only one conditioned on a scaled
  return; the plans are sampled with classifier-free guidance toward it (`cfg_w`) and their actions come from the
  inverse dynamics f(s_k, s_{k+1}) (inverse.py) instead of the diffused actions.
* In a maze, candidates can be ranked by how little they run into walls (`wall_value`, `diffsuite plan
  --candidates 8 --avoid-walls`): the CPU models put 5-8% of Medium's plan positions inside walls, and picking
  the cleanest of 8 plans takes that to ~0% (Medium 40k, 100 held-out episodes: success 0.92 -> 0.99 single-task,
  0.95 -> 1.00 multi-task; with pursuit control 0.79 / 0.84 -> 1.00 / 1.00). As guidance on x_t instead
  (ValueGuidance) it put more of the plans in walls, so it only ranks.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from diffsuite.core.config import ConfigError
from diffsuite.core.guidance import ClassifierFreeGuidance, GradientGuidance, Inpaint, ValueGuidance
from diffsuite.core.parameterization import q_sample
from diffsuite.core.samplers import sample
from diffsuite.core.utils import randn

from .inverse import plan_actions


@dataclass
class Plan:
    states: np.ndarray  # (H, S) unnormalised, best candidate
    actions: np.ndarray  # (H, A)
    value: Optional[float]
    seconds: float
    all_states: np.ndarray  # (B, H, S) every candidate
    normalized: torch.Tensor  # (B, H, D) the raw sample (for warm starts)


#: Decision Diffuser's test return (a fraction of the data's largest return-to-go) and guidance weight, in their
#: convention eps_u + w (eps_c - eps_u)
DD_TARGET_RETURN, DD_GUIDANCE_W = 0.9, 1.2


@dataclass
class PlannerConfig:
    sampler: str = "ddim"
    steps: int = 20
    n_candidates: int = 1
    guidance: str = "none"  # none | value (ValueGuidance hook) | gradient (GradientGuidance wrapper)
    guide_scale: float = 0.1
    n_guide_steps: int = 2
    t_stopgrad: int = 2
    scale_grad_by_std: bool = True
    warm_start_t: float = 0.0  # > 0: warm start from the previous plan noised to this fraction of T
    sampler_options: dict = field(default_factory=dict)  # e.g. recipes.run.sampler_options(recipe.sample, sampler)
    condition: str = "none"  # what the model was trained to see clean: start_goal | start | none (data.condition)
    #: Decision Diffuser: the scaled return the states-only plans are conditioned on, and the classifier-free weight
    #: w of eps = (1 + w) eps(c) - w eps(null) (their guidance scale 1.2 is w = 0.2 here)
    target_return: Optional[float] = None
    cfg_w: float = 0.2
    #: best: the actions of the highest-valued candidate (Diffuser); mean: the candidates' actions averaged, a Monte
    #: Carlo estimate of the model's mean action sequence from this start (what behaviour cloning's regression fits)
    execute: str = "best"


class Planner:
    """Sample (start, goal)-inpainted, optionally value-guided trajectories; unnormalise; rank by value."""

    def __init__(self, denoiser, normalizer, action_dim: int, obs_dim: int, horizon: int,
                 cfg: PlannerConfig = PlannerConfig(), value_fn: Optional[Callable] = None, goal_dims=(0, 1),
                 inverse: Optional[Callable] = None):
        """inverse: Decision Diffuser's f(s_t, s_{t+1}) -> a_t (inverse.py): the actions of states-only plans
        (action_dim 0, normalizer over the states alone), or for joint plans the actions executed in place of the
        diffused ones (the action that reaches the plan's next state)."""
        self.den, self.norm, self.A, self.S, self.H = denoiser, normalizer, action_dim, obs_dim, horizon
        self.cfg, self.value_fn, self.goal_dims, self.inverse = cfg, value_fn, tuple(goal_dims), inverse
        if cfg.guidance != "none" and value_fn is None:
            raise ValueError(f"Planner: guidance={cfg.guidance!r} needs a value_fn")
        if cfg.execute not in ("best", "mean"):
            raise ConfigError(f"Planner: execute={cfg.execute!r}: expected 'best' or 'mean'")
        if cfg.execute == "mean" and (inverse is not None or action_dim == 0):
            raise ConfigError("Planner: execute='mean' (--execute mean) averages the candidates' diffused actions; it "
                              "does not combine with actions from inverse dynamics (--inverse, Decision Diffuser)")
        self.device = next(denoiser.parameters()).device
        self.prev: Optional[torch.Tensor] = None

    @property
    def D(self) -> int:
        return self.A + self.S

    def _norm_state(self, s: np.ndarray) -> torch.Tensor:
        """Normalise a state alone: the normaliser is per dimension over the joint [action, state] vector."""
        joint = np.concatenate([np.zeros(self.A, np.float32), np.asarray(s, np.float32)])[None]
        return torch.as_tensor(self.norm.normalize(joint)[0, self.A:], dtype=torch.float32)

    def conditions(self, start: np.ndarray, goal: Optional[np.ndarray], B: int, H: Optional[int] = None):
        """(mask, known) for Inpaint: all state dims at step 0; goal position + zero velocity at step H-1."""
        H = H or self.H
        mask, known = torch.zeros(B, H, self.D), torch.zeros(B, H, self.D)
        mask[:, 0, self.A:] = 1
        known[:, 0, self.A:] = self._norm_state(start)
        if goal is not None:
            g = np.zeros(self.S, np.float32)
            g[list(self.goal_dims)] = np.asarray(goal, np.float32)[: len(self.goal_dims)]
            mask[:, -1, self.A:] = 1
            known[:, -1, self.A:] = self._norm_state(g)
        return mask.to(self.device), known.to(self.device)

    def model_cond(self, mask, known):
        """The clean (B, k, S) states a conditioned model sees (Diffuser's apply_conditioning), or None."""
        steps = {"start_goal": [0, -1], "start": [0], "none": []}[self.cfg.condition]
        if -1 in steps and not bool(mask[0, -1, self.A:].all()):
            raise ValueError("Planner: the model is conditioned on a goal (condition='start_goal'); pass a goal")
        return known[:, steps, self.A:] if steps else None

    def _warm(self, shift: int, generator, H: int):
        """x_t from the previous plan shifted by `shift` steps, noised to t = warm_start_t * T, and its timesteps."""
        T = self.den.schedule.T
        t0 = max(1, int(round(self.cfg.warm_start_t * T)) - 1)
        prev = self.prev[:, shift:shift + H]
        prev = torch.cat([prev, prev[:, -1:].expand(-1, H - prev.shape[1], -1)], 1) if prev.shape[1] < H else prev
        ab = self.den.schedule.alpha_bar_at(torch.tensor(float(t0))).float()
        x = q_sample(prev, ab.to(prev), randn(prev.shape, generator, prev.device))
        ts = torch.linspace(t0, 0, max(2, min(self.cfg.steps, t0 + 1))).round().unique().flip(0).double()
        return x, ts

    def plan(self, start: np.ndarray, goal: Optional[np.ndarray] = None, generator: Optional[torch.Generator] = None,
             shift: int = 0, horizon: Optional[int] = None) -> Plan:
        """One planning call (Diffuser Alg. 1 without the environment loop); `horizon` overrides H for this call."""
        c, B, H = self.cfg, self.cfg.n_candidates, horizon or self.H  # a ValueNet refuses horizons it was not built for
        t_start = time.perf_counter()
        mask, known = self.conditions(start, goal, B, H)
        hooks, den = [], self.den
        if c.guidance == "value":
            hooks.append(ValueGuidance(self.value_fn, self.den.schedule, c.guide_scale, c.n_guide_steps, c.t_stopgrad,
                                       c.scale_grad_by_std))
        elif c.guidance == "gradient":
            den = GradientGuidance(self.den, self.value_fn, c.guide_scale)
        hooks.append(Inpaint(self.den.schedule, mask, known))
        cond = self.model_cond(mask, known)
        if c.target_return is not None:  # Decision Diffuser: returns as a classifier-free condition
            cond = {"states": cond, "returns": torch.full((B, 1), float(c.target_return), device=self.device)}
            den = ClassifierFreeGuidance(den, c.cfg_w, {"returns": float("nan")})
        opts = dict(c.sampler_options)
        x_T = None
        if c.warm_start_t > 0 and self.prev is not None:
            x_T, opts["timesteps"] = self._warm(shift, generator, H)
        with torch.no_grad():
            x = sample(den, (B, H, self.D), c.sampler, c.steps, generator=generator, hooks=hooks, device=self.device,
                       x_T=x_T, cond=cond, **opts)
        return self._finish(x, t_start)

    def _finish(self, x: torch.Tensor, t_start: float) -> Plan:
        values = None
        if self.value_fn is not None:
            with torch.no_grad():
                values = self.value_fn(x, torch.zeros(x.shape[0], device=x.device), None).float().cpu()
        best = int(values.argmax()) if values is not None else 0
        self.prev = x[best: best + 1].expand(x.shape[0], -1, -1).clone()
        joint = self.norm.unnormalize(x.detach().cpu().float()).numpy()
        if self.cfg.execute == "mean":
            actions = joint[:, :, :self.A].mean(0)
        else:
            actions = plan_actions(self.inverse, joint[best, :, self.A:]) if self.inverse is not None \
                else joint[best, :, :self.A]
        secs = time.perf_counter() - t_start
        return Plan(states=joint[best, :, self.A:], actions=actions,
                    value=None if values is None else float(values[best]), seconds=secs,
                    all_states=joint[:, :, self.A:], normalized=x.detach())


def wall_value(grid, normalizer, action_dim: int) -> Callable:
    """A value J(x, t, cond) = -(wall penetration of the plan's positions) for normalised plans x (B, H, A + S),
    for ranking candidate plans (Planner value_fn); MazeGrid.wall_penetration."""
    def J(x, t=None, cond=None):
        return -grid.wall_penetration(normalizer.unnormalize(x)[..., action_dim: action_dim + 2])
    return J


#: PD gains of `track`. Diffuser's maze controller is a = (p_{k+1} - p) + (v_{k+1} - v), i.e. kp = kd = 1. A
#: CPU-trained model's plans are right about the route but jittery at the step scale: in the U-Maze demo the
#: planned velocities disagree with the planned positions by about 5 units/s (|dp/dt - v|; the data: ~0) and
#: step 1 sits ~0.3 away from the inpainted start (the data: 0.04). With kp = 1 the agent tracks that velocity
#: noise, falls behind the plan and, when the plan ends, heads for the goal from the wrong side of a wall. kp = 10
#: (the position gain of the waypoint expert that generated the data) keeps the agent on the planned positions;
#: `--kp 1` restores Diffuser's gains.
PD_KP, PD_KD = 10.0, 1.0


def track(plan_states: np.ndarray, plan_actions: np.ndarray, k: int, obs: np.ndarray, control: str = "pd",
          kp: float = PD_KP, kd: float = PD_KD) -> np.ndarray:
    """Action at plan step k: PD tracking of the next planned state (Diffuser's maze controller), or the planned action.

    pd: a = clip(kp (p_{k+1} - p) + kd (v_{k+1} - v), -1, 1). Past the plan's end, as in Diffuser's plan_maze2d,
    the target is the plan's last state at zero velocity, i.e. the inpainted goal: the agent heads straight for it.
    """
    if control == "actions":
        return np.clip(plan_actions[min(k, len(plan_actions) - 1)], -1, 1)
    if control != "pd":
        raise ValueError(f"control {control!r}: valid: pd, actions (pursuit: see pursue)")
    w = plan_states[min(k + 1, len(plan_states) - 1)].copy()
    if k + 1 >= len(plan_states):
        w[2:] = 0
    return np.clip(kp * (w[:2] - obs[:2]) + kd * (w[2:4] - obs[2:4]), -1, 1)


#: Lookahead of `pursue`: one maze cell, so the pursued point is at most a cell ahead of the agent along the plan.
#: U-Maze demo, dev seeds 5000-5019, single-task normalized score for lookahead 0.3 / 0.6 / 0.8 / 1.0 / 1.2 / 1.5:
#: 62.7 / 90.8 / 94.1 / 96.9 / 99.3 / 100.7 (time-indexed PD: 83.1); 1.0 is taken as the largest one-cell value.
LOOKAHEAD = 1.0


def pursue(plan_states: np.ndarray, j: int, obs: np.ndarray, lookahead: float = LOOKAHEAD, kp: float = PD_KP,
           kd: float = PD_KD) -> tuple[np.ndarray, int]:
    """Follow the plan as a path, not a timetable (pure pursuit): advance the plan index j past every planned position
    within `lookahead` of the agent and steer at p_j with the expert's law a = clip(kp (p_j - p) - kd v, -1, 1).

    The plans stretch each route over the whole horizon (the goal is inpainted at step H-1), so time-indexed
    tracking arrives after about H steps however short the route; pursuit moves along the same route at the
    expert's pace. Returns the action and the new j."""
    P, p = plan_states[:, :2], obs[:2]
    while j < len(P) - 1 and np.linalg.norm(P[j] - p) < lookahead:
        j += 1
    return np.clip(kp * (P[j] - p) - kd * obs[2:4], -1, 1), j
