"""`diffsuite plan CHECKPOINT --env PointMaze_UMaze-v3 --episodes N [--multi-task]`: closed-loop planning in PointMaze."""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import torch

from diffsuite.core.config import ConfigError, nonnegative_int, positive_int
from diffsuite.core.utils import atomic_write_json

from . import locomotion
from .evaluate import plan_episode, reference_returns, summarize
from .maze import MazeGrid, env_id_for, make_env
from .planner import DD_GUIDANCE_W, DD_TARGET_RETURN, LOOKAHEAD, PD_KD, PD_KP, Planner, PlannerConfig, wall_value


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("plan", help="plan in a PointMaze with a trained trajectory model and score it",
                              description=__doc__)
    p.add_argument("checkpoint", help="checkpoint folder or run folder")
    p.add_argument("--env", default=None, help="gymnasium id (default: the env the model was trained on)")
    p.add_argument("--episodes", type=positive_int, default=10)
    p.add_argument("--multi-task", action="store_true", help="random start and goal (default: D4RL's fixed goal cell)")
    p.add_argument("--sampler", default=None, help="ddpm | ddim | dpmpp_2m | ... (default: the recipe's)")
    p.add_argument("--steps", type=positive_int, default=None, help="sampling steps (default: the recipe's)")
    p.add_argument("--candidates", type=positive_int, default=1, help="plans sampled per call, ranked by value when --value")
    p.add_argument("--replan-every", type=nonnegative_int, default=0,
                   help="replan every k env steps (0: plan once, then head for the goal, as Diffuser; without "
                        "--shrink-horizon replans keep the "
                        "goal at step H-1, which with a goal nearer than H steps gives detour plans)")
    p.add_argument("--shrink-horizon", action="store_true",
                   help="with --replan-every: each replan covers only what is left of the previous plan, so the goal "
                        "stays at the step where the agent was due to arrive")
    p.add_argument("--shrink-min", type=positive_int, default=32,
                   help="with --shrink-horizon: a plan due to arrive within this many steps is followed to its end")
    p.add_argument("--warm-start", type=float, default=0.0, help="> 0: warm start replans from the previous plan at this fraction of T")
    p.add_argument("--control", choices=("pd", "actions", "pursuit"), default="pd",
                   help="pd: track planned states by time (Diffuser); actions: the diffused actions; pursuit: follow "
                        "the plan as a path with --lookahead (planner.pursue)")
    p.add_argument("--lookahead", type=float, default=LOOKAHEAD, help="pursuit lookahead distance (maze cells)")
    p.add_argument("--kp", type=float, default=PD_KP, help="PD position gain (Diffuser: 1; see planner.PD_KP)")
    p.add_argument("--kd", type=float, default=PD_KD, help="PD velocity gain (Diffuser: 1)")
    p.add_argument("--value", default=None, help="value-function folder (from value.save_value) for guidance / ranking")
    p.add_argument("--guidance", choices=("none", "value", "gradient"), default=None)
    p.add_argument("--execute", choices=("best", "mean"), default="best", help="with --candidates > 1: act on the "
                   "best-valued plan (Diffuser), or on the candidates' actions averaged (the model's mean action)")
    p.add_argument("--avoid-walls", action="store_true",
                   help="with --candidates > 1: keep the candidate plan that runs least into the maze's walls "
                        "(planner.wall_value); not with --value")
    p.add_argument("--guide-scale", type=float, default=0.1)
    p.add_argument("--t-stopgrad", type=int, default=2, help="value guidance: no gradient at diffusion steps t below "
                   "this (Diffuser: 2; its HalfCheetah setting 4, with --guide-scale 0.001)")
    p.add_argument("--target-return", type=float, default=DD_TARGET_RETURN, help="Decision Diffuser models: the "
                   "return the plans are conditioned on, as a fraction of the data's largest return-to-go (their test_ret)")
    p.add_argument("--condition-guidance-w", type=float, default=DD_GUIDANCE_W, help="Decision Diffuser models: "
                   "classifier-free weight in their convention, eps_u + w (eps_c - eps_u)")
    p.add_argument("--inverse", default=None, help="an inverse-dynamics folder (diffsuite train-inverse): a Decision "
                   "Diffuser model's actions (default <run>/inverse); a Diffuser model executes f(s, s_1), the action "
                   "that reaches the plan's next state, in place of the diffused action")
    p.add_argument("--filmstrip", action="store_true", help="locomotion: render the first episode (MuJoCo, EGL) into "
                   "filmstrip.png")
    p.add_argument("--reference-episodes", type=positive_int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None)
    p.set_defaults(func=cmd_plan)
    v = subparsers.add_parser("train-value", help="train a value function J(x_t, t) on a trajectory model's data",
                              description="Diffuser's value function on returns-to-go of the checkpoint's dataset windows")
    v.add_argument("checkpoint")
    v.add_argument("--steps", type=positive_int, default=2000)
    v.add_argument("--batch-size", type=positive_int, default=32)
    v.add_argument("--lr", type=float, default=2e-4)
    v.add_argument("--discount", type=float, default=0.99)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--out", default=None, help="folder (default: <run>/value)")
    v.set_defaults(func=cmd_train_value)
    i = subparsers.add_parser("train-inverse", help="train Decision Diffuser's inverse dynamics a = f(s, s') on a "
                              "trajectory model's data", description="an MLP on the consecutive states of the "
                              "checkpoint's dataset (inverse.py), written to <run>/inverse")
    i.add_argument("checkpoint")
    i.add_argument("--steps", type=positive_int, default=20000)
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--out", default=None, help="folder (default: <run>/inverse)")
    i.set_defaults(func=cmd_train_inverse)


def cmd_train_inverse(args) -> int:
    from .inverse import save_inverse, train_inverse, transitions
    from .task import full_dataset
    loaded = args.load(args.checkpoint, task="trajectory", command="diffsuite train-inverse")
    seq = full_dataset(loaded.recipe.data)
    f = train_inverse(seq, args.steps, args.seed)
    pairs, act = transitions(seq)
    with torch.no_grad():
        mse = float((f(torch.as_tensor(pairs[:10000])) - torch.as_tensor(act[:10000])).pow(2).mean())
    out = save_inverse(f, args.out or Path(loaded.checkpoint).parent.parent / "inverse")
    print(f"inverse dynamics -> {out} (training MSE {mse:.4f}, action variance {float(act.var(0).mean()):.4f})")
    return 0


def cmd_train_value(args) -> int:
    from dataclasses import replace
    from .data import ValueDataset
    from .task import full_dataset
    from .value import save_value, train_value
    loaded = args.load(args.checkpoint, task="trajectory", command="diffsuite train-value")
    m = loaded.recipe.model
    seq = full_dataset(replace(loaded.recipe.data, discount=args.discount))
    net = train_value(ValueDataset(seq), loaded.denoiser.schedule, args.steps, args.batch_size, args.lr, m.dim,
                      tuple(m.dim_mults), args.seed)
    out = save_value(net, args.out or Path(loaded.checkpoint).parent.parent / "value")
    print(f"value function -> {out}")
    return 0


def _planner(args, loaded, grid=None) -> Planner:
    from diffsuite.recipes.run import sampler_options
    from .task import full_dataset
    r = loaded.recipe
    seq = full_dataset(r.data)
    if r.data.formulation == "decision_diffuser":
        return _decision_planner(args, loaded, seq)
    value_fn = None
    if args.avoid_walls:
        if args.value or args.candidates < 2:
            raise ConfigError("--avoid-walls ranks --candidates (> 1) plans by wall penetration; it does not combine "
                             f"with --value (got --candidates {args.candidates}, --value {args.value})")
        value_fn = wall_value(grid, seq.normalizer, seq.action_dim)
    if args.value:
        from .value import load_value
        vnet = load_value(args.value).to(args.device)
        value_fn = lambda x, t, c: vnet(x, t)  # noqa: E731
    guidance = args.guidance or ("value" if args.value else "none")  # the wall value only ranks
    if guidance != "none" and not args.value:
        raise ConfigError(f"--guidance {guidance} needs a value function: --value FOLDER (from diffsuite train-value)")
    if not 0 <= args.warm_start <= 1:
        raise ConfigError(f"--warm-start {args.warm_start}: expected a fraction of the diffusion steps in [0, 1]")
    sampler = args.sampler or r.sample.sampler
    cfg = PlannerConfig(sampler=sampler, steps=args.steps or r.sample.steps,
                        n_candidates=args.candidates, guidance=guidance, guide_scale=args.guide_scale,
                        t_stopgrad=args.t_stopgrad,
                        warm_start_t=args.warm_start, sampler_options=sampler_options(r.sample, sampler),
                        condition=r.data.condition, execute=args.execute)
    inverse = None
    if args.inverse:  # joint plans executed through the inverse dynamics: f(s, s_1) in place of the diffused action
        from .inverse import load_inverse
        inverse = load_inverse(args.inverse)
    return Planner(loaded.denoiser, seq.normalizer, seq.action_dim, seq.obs_dim, r.data.horizon, cfg, value_fn,
                   inverse=inverse)


def _decision_planner(args, loaded, seq) -> Planner:
    """Decision Diffuser's planner: states-only plans from the current state, conditioned on --target-return with
    classifier-free guidance, actions from the inverse dynamics."""
    from diffsuite.recipes.run import sampler_options
    from .data import states_normalizer
    from .inverse import load_inverse
    if args.value or args.avoid_walls or (args.guidance or "none") != "none":
        raise ConfigError("a Decision Diffuser model is steered by --target-return, not by a value function "
                          "(--value, --guidance, --avoid-walls)")
    r = loaded.recipe
    folder = Path(args.inverse) if args.inverse else Path(loaded.checkpoint).parent.parent / "inverse"
    if not (folder / "inverse.json").is_file():
        raise ConfigError(f"{folder}: no inverse dynamics; train them with diffsuite train-inverse {args.checkpoint}")
    sampler = args.sampler or r.sample.sampler
    cfg = PlannerConfig(sampler=sampler, steps=args.steps or r.sample.steps, n_candidates=1,
                        sampler_options=sampler_options(r.sample, sampler), condition=r.data.condition,
                        target_return=args.target_return, cfg_w=args.condition_guidance_w - 1)
    return Planner(loaded.denoiser, states_normalizer(seq.normalizer, seq.action_dim), 0, seq.obs_dim, r.data.horizon,
                   cfg, inverse=load_inverse(folder))


@torch.no_grad()
def cmd_plan(args) -> int:
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {args.device}: CUDA is not available here (torch {torch.__version__}); use cpu")
    loaded = args.load(args.checkpoint, device=args.device, task="trajectory", command="diffsuite plan")
    if loaded.recipe.data.env_id in locomotion.ENVS:
        return plan_locomotion(args, loaded)
    env_id = env_id_for(args.env or loaded.recipe.data.env_id)
    if env_id != env_id_for(loaded.recipe.data.env_id):
        warnings.warn(f"planning in {env_id} with a model trained on {loaded.recipe.data.env_id}")
    env = make_env(env_id)
    planner = _planner(args, loaded, MazeGrid.from_env(env))
    eps = [plan_episode(env, planner, args.multi_task, args.seed + i, args.replan_every, args.control, args.kp, args.kd,
                        args.shrink_horizon, args.shrink_min, args.lookahead) for i in range(args.episodes)]
    env.close()
    ref = reference_returns(env_id, args.multi_task, args.reference_episodes)
    ref_d4rl = reference_returns(env_id, args.multi_task, args.reference_episodes, protocol="d4rl")
    summary = summarize(eps, ref, ref_d4rl)
    summary.update(env_id=env_id, multi_task=args.multi_task, checkpoint=str(loaded.checkpoint), train_step=loaded.step,
                   planner=vars(planner.cfg), replan_every=args.replan_every,
                   shrink_horizon=args.shrink_horizon, shrink_min=args.shrink_min,
                   avoid_walls=args.avoid_walls,
                   control=args.control, lookahead=args.lookahead if args.control == "pursuit" else None,
                   kp=args.kp, kd=args.kd)
    out = Path(args.out or Path(loaded.checkpoint).parent.parent / "plans" / f"plan-{time.strftime('%Y%m%d-%H%M%S')}")
    write_outputs(out, env_id, eps, summary)
    print(f"{env_id} {'multi' if args.multi_task else 'single'}-task, {args.episodes} episodes: "
          f"success {summary['success_rate']:.2f}, return {summary['return_mean']:.1f}, "
          f"planned positions inside walls {100 * summary['plan_in_wall']:.1f}%, "
          f"normalized score {summary['normalized_score']:.1f} (D4RL's reference protocol: "
          f"{summary['normalized_score_d4rl']:.1f}), plan time mean {1e3 * summary['plan_seconds_mean']:.0f} ms "
          f"p95 {1e3 * summary['plan_seconds_p95']:.0f} ms -> {out}")
    return 0


def plan_locomotion(args, loaded) -> int:
    """`diffsuite plan` in Hopper / Walker2d / HalfCheetah: receding-horizon planning (every --replan-every steps,
    default every step), returns and normalised scores against our references (random actions, the expert actor)
    and D4RL's constants, plan time per call, and a filmstrip of the first episode."""
    env_id, d = loaded.recipe.data.env_id, loaded.recipe.data
    if args.env and args.env != env_id:
        raise ConfigError(f"--env {args.env}: this model was trained on {env_id}")
    if args.avoid_walls or args.multi_task:
        raise ConfigError("--avoid-walls and --multi-task are for the mazes, not for locomotion")
    planner = _planner(args, loaded)
    folder = locomotion.actors_folder(env_id, d.actors)
    expert = locomotion.actor_file(folder, locomotion.read_levels(folder, env_id)["expert"])
    eps = [locomotion.planned_episode(env_id, planner, args.seed + i, args.replan_every or 1,
                                      filmstrip=i == 0 and args.filmstrip) for i in range(args.episodes)]
    ref = locomotion.reference_returns(env_id, expert, args.reference_episodes)
    secs = np.concatenate([e["plan_seconds"] for e in eps])
    summary = {"env_id": env_id, "dataset": d.dataset, **locomotion.score([e["return"] for e in eps], ref, env_id),
               "references": ref, "d4rl_constants": locomotion.D4RL_REFERENCE[env_id],
               "fell": int(sum(e["terminated"] for e in eps)), "plan_seconds_mean": float(secs.mean()),
               "plan_seconds_p95": float(np.percentile(secs, 95)), "replan_every": args.replan_every or 1,
               "checkpoint": str(loaded.checkpoint), "train_step": loaded.step, "planner": vars(planner.cfg),
               "per_episode": [{k: e[k] for k in ("seed", "return", "length", "terminated", "final_observation")}
                               for e in eps]}
    out = Path(args.out or Path(loaded.checkpoint).parent.parent / "plans" / f"plan-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "summary.json", summary)
    strip = locomotion.filmstrip(eps[0]["frames"], out / "filmstrip.png") if eps and eps[0]["frames"] else None
    print(f"{env_id} ({d.dataset}), {len(eps)} episodes: return {summary['return_mean']:.1f} +- "
          f"{summary['return_std']:.1f}, normalised score {summary['normalized_score']:.1f} (D4RL's constants: "
          f"{summary['normalized_score_d4rl_constants']:.1f}), fell {summary['fell']}, plan time mean "
          f"{1e3 * summary['plan_seconds_mean']:.0f} ms -> {out}" + (f" (filmstrip: {strip})" if strip else ""))
    return 0


def write_outputs(out: Path, env_id: str, eps: list[dict], summary: dict) -> None:
    """summary.json, trajectories.json (planned vs executed), plans.png (first plan + executed path per episode)."""
    from .plot import draw_paths
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "summary.json", summary)
    atomic_write_json(out / "trajectories.json", [
        {"goal": e["goal"].tolist(), "return": e["return"], "success": e["success"],
         "planned": [np.asarray(p).tolist() for p in e["plans"]], "executed": e["executed"].tolist()} for e in eps])
    draw_paths(env_id, [e["plans"][0][:, :2] for e in eps], out / "plans.png",
               executed=[e["executed"][:, :2] for e in eps], goals=[e["goal"] for e in eps])
