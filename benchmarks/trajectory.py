"""Trajectory benchmark: normalised score / success rate of a checkpoint in PointMaze, and plan latency per sampler.

    python benchmarks/trajectory.py --checkpoint RUN_DIR --episodes 20 [--replan-every K] [--latency-only] [--device cuda]
    python benchmarks/trajectory.py --untrained trajectory_umaze_demo [--set data.size=d4rl ...] --episodes 100

Every score comes with its floor: the same planner, episodes and normalisation with an untrained network of the same
recipe (initialised as `diffsuite train` initialises it, train.seed), so a reader sees what planning by start / goal
inpainting and PD tracking gives before any learning (`--no-floor` skips it; `--untrained RECIPE` scores only that).

Scores use reference returns measured here (uniform-random policy and noiseless waypoint expert, 100 episodes
each, same env, mode and episode length; `score` with a fresh replanning expert per episode, `D4RL-ref` with
D4RL's reference-script protocol, the normalisation of Diffuser's published numbers: see evaluate.py);
episodes use seeds 1000, 1001, ... and, by default, Diffuser's loop
(plan once, PD-track the plan with planner.PD_KP / PD_KD, then head for the goal). Latency: one plan (start/goal
inpainting, one candidate) of the checkpoint's horizon for DDPM / DDIM / DPM-Solver++(2M) at 64 / 20 / 10 / 5 steps; without a checkpoint, a
randomly initialised Diffuser U-Maze network (horizon 128, dim 32, dim_mults 1-4-8, T 64) is timed.
Prints a table and writes benchmarks/results/trajectory.json.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from diffsuite.core.denoiser import Denoiser, clip_x0
from diffsuite.core.schedules import make_schedule
from diffsuite.core.utils import atomic_write_json
from diffsuite.modalities.trajectory.data import LimitsNormalizer
from diffsuite.modalities.trajectory.evaluate import plan_episode, reference_returns, summarize
from diffsuite.modalities.trajectory.maze import MazeGrid, make_env
from diffsuite.modalities.trajectory.planner import PD_KD, PD_KP, Planner, PlannerConfig, wall_value
from diffsuite.modalities.trajectory.temporal_unet import TemporalUnet

SAMPLERS = ("ddpm", "ddim", "dpmpp_2m")
STEPS = (64, 20, 10, 5)


def _random_diffuser(device):
    torch.manual_seed(0)
    den = Denoiser(TemporalUnet(6, 32, (1, 4, 8)), make_schedule("cosine", 64), "x0", x0_transform=clip_x0).to(device).eval()
    norm = LimitsNormalizer(np.array([[-1, -1, -1.5, -1.5, -5, -5], [1, 1, 1.5, 1.5, 5, 5]], np.float32))
    return den, norm, 128, "random-init Diffuser U-Maze net (H 128, dim 32, 1-4-8, T 64)"


def _loaded(path, device):
    from diffsuite.modalities.trajectory.task import full_dataset
    from diffsuite.recipes.run import load
    ld = load(path, device=device)
    return ld, full_dataset(ld.recipe.data)


def untrained(recipe, device):
    """A Loaded-like record holding an untrained network of `recipe`, seeded as `diffsuite train` seeds it."""
    from types import SimpleNamespace
    from diffsuite.core.build import build_denoiser
    from diffsuite.modalities.trajectory.task import TrajectoryTask, full_dataset
    task = TrajectoryTask()
    torch.manual_seed(recipe.train.seed)
    den = build_denoiser(task.build_net(recipe.model, recipe.diffusion), recipe.diffusion, for_sampling=True)
    return SimpleNamespace(task=task, recipe=recipe, denoiser=den.to(device).eval(), step=0), full_dataset(recipe.data)


def with_floor(rows: list[dict], floor: list[dict]) -> list[dict]:
    """Each score row with the untrained network's success and scores of the same mode beside it."""
    keys = ("success_rate", "normalized_score", "normalized_score_d4rl", "plan_in_wall")
    by_mode = {f["mode"]: f for f in floor}
    return [{**r, "floor_untrained": {k: by_mode[r["mode"]][k] for k in keys}} for r in rows]


def latency(den, norm, H, device, repeats: int) -> list[dict]:
    rows = []
    for sampler in SAMPLERS:
        for steps in STEPS:
            if steps > den.schedule.T:
                continue
            pl = Planner(den, norm, 2, 4, H, PlannerConfig(sampler=sampler, steps=steps))
            times = []
            for r in range(repeats + 1):
                g = torch.Generator().manual_seed(r)
                if device != "cpu":
                    torch.cuda.synchronize()
                p = pl.plan(np.array([0.5, 0.5, 0, 0]), np.array([-1.5, -1.0]), g)
                if device != "cpu":
                    torch.cuda.synchronize()
                times.append(p.seconds)
            t = np.array(times[1:])  # the first call warms up
            rows.append({"sampler": sampler, "steps": steps, "ms_mean": 1e3 * t.mean(), "ms_p95": 1e3 * np.percentile(t, 95)})
    return rows


def scores(ld, seq, episodes: int, replan_every: int, sampler, steps, control: str = "pd", candidates: int = 1,
           avoid_walls: bool = False) -> list[dict]:
    r = ld.recipe
    cfg = PlannerConfig(sampler=sampler or r.sample.sampler, steps=steps or r.sample.steps, condition=r.data.condition,
                        n_candidates=candidates)
    env, out = make_env(r.data.env_id), []
    J = wall_value(MazeGrid.from_env(env), seq.normalizer, seq.action_dim) if avoid_walls else None
    pl = Planner(ld.denoiser, seq.normalizer, seq.action_dim, seq.obs_dim, r.data.horizon, cfg, J)
    for multi in (False, True):
        eps = [plan_episode(env, pl, multi, 1000 + i, replan_every, control) for i in range(episodes)]
        refs = {p: reference_returns(r.data.env_id, multi, protocol=p) for p in ("replan", "d4rl")}
        s = summarize(eps, refs["replan"], refs["d4rl"])
        del s["reference"], s["reference_d4rl"]
        s["reference_returns"] = {p: {k: ref[k]["mean"] for k in ("random", "expert")} for p, ref in refs.items()}
        out.append({"env_id": r.data.env_id, "mode": "multi" if multi else "single", **s,
                    "sampler": cfg.sampler, "steps": cfg.steps, "replan_every": replan_every, "control": control,
                    "candidates": candidates, "avoid_walls": avoid_walls,
                    "kp": PD_KP, "kd": PD_KD, "train_steps": ld.step, "recipe": r.name})
    env.close()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--untrained", metavar="RECIPE", default=None,
                   help="score only an untrained network of this recipe (the floor), with --set overrides")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="recipe overrides for --untrained")
    p.add_argument("--no-floor", action="store_true", help="skip the untrained-network floor beside a checkpoint")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--replan-every", type=int, default=0, help="0: plan once (Diffuser)")
    p.add_argument("--control", default="pd", choices=("pd", "actions", "pursuit"),
                   help="pd: time-indexed tracking (Diffuser); pursuit: follow the plan as a path (planner.pursue)")
    p.add_argument("--sampler", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--candidates", type=int, default=1, help="plans sampled per call")
    p.add_argument("--avoid-walls", action="store_true", help="keep the candidate least inside walls (planner.wall_value)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--latency-only", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/trajectory.json")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    result = {"device": a.device if a.device == "cpu" else torch.cuda.get_device_name(), "threads": a.threads,
              "cpu": platform.processor() or platform.machine(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    if a.untrained:
        from diffsuite.recipes.run import load_recipe
        ld, seq = untrained(load_recipe(a.untrained, a.set), a.device)
        den, norm, H, what = ld.denoiser, seq.normalizer, ld.recipe.data.horizon, f"untrained {a.untrained} {a.set}"
    elif a.checkpoint:
        ld, seq = _loaded(a.checkpoint, a.device)
        den, norm, H, what = ld.denoiser, seq.normalizer, ld.recipe.data.horizon, f"checkpoint {a.checkpoint} (step {ld.step})"
    else:
        den, norm, H, what = _random_diffuser(a.device)
    result["latency_model"] = what
    result["latency"] = latency(den, norm, H, a.device, a.repeats)
    print(f"plan latency, {what}, {result['device']}, {a.threads} thread(s)")
    print(f"{'sampler':<10}{'steps':>6}{'mean ms':>10}{'p95 ms':>10}")
    for r in result["latency"]:
        print(f"{r['sampler']:<10}{r['steps']:>6}{r['ms_mean']:>10.1f}{r['ms_p95']:>10.1f}")
    if (a.checkpoint or a.untrained) and not a.latency_only:
        args = (a.episodes, a.replan_every, a.sampler, a.steps, a.control, a.candidates, a.avoid_walls)
        with torch.no_grad():
            result["scores"] = scores(ld, seq, *args)
            if a.checkpoint and not a.no_floor:
                result["scores"] = with_floor(result["scores"], scores(*untrained(ld.recipe, a.device), *args))
        print(f"\n{'env':<22}{'mode':<8}{'success':>8}{'return':>9}{'score':>8}{'D4RL-ref':>9}{'plan ms':>9}"
              f"{'in wall':>9}   floor (untrained): success / score / D4RL-ref")
        for s in result["scores"]:
            f = s.get("floor_untrained")
            floor = (f"   {f['success_rate']:.2f} / {f['normalized_score']:.1f} / {f['normalized_score_d4rl']:.1f}"
                     if f else "")
            print(f"{s['env_id']:<22}{s['mode']:<8}{s['success_rate']:>8.2f}{s['return_mean']:>9.1f}"
                  f"{s['normalized_score']:>8.1f}{s['normalized_score_d4rl']:>9.1f}{1e3 * s['plan_seconds_mean']:>9.1f}"
                  f"{100 * s['plan_in_wall']:>8.1f}%{floor}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.out, result)
    print(f"-> {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
