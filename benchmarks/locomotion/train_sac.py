"""Behaviour policies for the locomotion datasets: Stable-Baselines3 SAC (Haarnoja et al. 2018) on gymnasium's MuJoCo
Hopper-v5, Walker2d-v5 and HalfCheetah-v5, as D4RL made its datasets (Fu et al. 2020). Run once, outside CI.

Every --eval-every environment steps: 10 deterministic evaluation episodes (fixed seeds) appended to curve.json (and
curve.png), and a snapshot of the actor (modalities.trajectory.locomotion.save_actor, about 0.3 MB) in snapshots/.
Every --save-every steps, and when interrupted (Ctrl-C or SIGTERM), the whole learner (SB3's model and replay buffer)
is saved under state/ (written to a temporary name, then renamed), so an interrupted run continues where it stopped
(the same command). Only snapshots/ and curve.* are meant to be committed; to carry a run to another machine without
its replay buffer (hundreds of MB), copy state/model.zip (a few MB) with them: the run then resumes with the buffer
refilled by --learning-starts steps of its own policy (not bit-exact, but no training is lost).

    python benchmarks/locomotion/train_sac.py --env Hopper-v5 --steps 300000 --work runs/sac/hopper
    python benchmarks/locomotion/train_sac.py --env Hopper-v5 --steps 300000 --work runs/sac/hopper   # resumes

Stable-Baselines3 is needed only here: pip install -c constraints.txt stable-baselines3.
"""
from __future__ import annotations

import argparse
import json
import signal
import time
from pathlib import Path

import numpy as np
import torch


def plot_curve(curve: list[dict], path: Path, env_id: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.2))
    x = [c["env_steps"] for c in curve]
    m, s = np.array([c["return_mean"] for c in curve]), np.array([c["return_std"] for c in curve])
    ax.plot(x, m)
    ax.fill_between(x, m - s, m + s, alpha=0.25)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("return (10 deterministic episodes)")
    ax.set_title(f"SAC on {env_id}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_state(model, state: Path) -> None:
    """The learner and its replay buffer, each written to a temporary name and renamed (never half-written)."""
    from diffsuite.core.utils import atomic_path
    with atomic_path(state / "model.zip") as tmp:
        model.save(str(tmp))
    with atomic_path(state / "replay.pkl") as tmp:
        model.save_replay_buffer(str(tmp))


def refill(model, env, steps: int, seed: int) -> None:
    """A learner carried over without its replay buffer (state/model.zip alone, small enough to commit): the buffer
    is refilled with `steps` transitions of the learner's own stochastic policy before training goes on."""
    obs, _ = env.reset(seed=seed)
    for _ in range(steps):
        action, _ = model.predict(obs, deterministic=False)
        nxt, reward, term, trunc, info = env.step(action)
        info = {**info, "TimeLimit.truncated": trunc and not term}  # SB3 bootstraps through a time limit
        model.replay_buffer.add(obs[None], nxt[None], model.policy.scale_action(action)[None], np.array([reward]),
                                np.array([term or trunc]), [info])
        obs = env.reset()[0] if term or trunc else nxt


def learn(model, args, work: Path, curve: list) -> int:
    """Train to args.steps: every args.eval_every steps an evaluation, a point on the curve and an actor snapshot;
    every args.save_every steps, and on an interruption, the state."""
    from diffsuite.core.utils import atomic_write_json
    from diffsuite.modalities.trajectory.locomotion import actor_file, actor_from_sb3, evaluate_actor, save_actor
    state, snaps, curve_path = work / "state", work / "snapshots", work / "curve.json"
    t0 = time.perf_counter()
    while model.num_timesteps < args.steps:
        before = model.num_timesteps
        chunk = min(args.eval_every - model.num_timesteps % args.eval_every, args.steps - model.num_timesteps)
        try:
            model.learn(total_timesteps=chunk, reset_num_timesteps=False, progress_bar=False)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: keep what was learnt since the last save
            save_state(model, state)
            print(f"interrupted at {model.num_timesteps} environment steps: state saved in {state}; the same "
                  "command resumes", flush=True)
            return 130
        n = model.num_timesteps
        if n % args.eval_every == 0 or n >= args.steps:
            actor = actor_from_sb3(model)
            ev = evaluate_actor(actor, args.env, args.eval_episodes, seed=10_000)
            save_actor(actor, actor_file(snaps, n),
                       {"env": args.env, "env_steps": n, "return_mean": ev["mean"], "return_std": ev["std"],
                        "seed": args.seed, "train_freq": args.train_freq})
            curve.append({"env_steps": n, "gradient_steps": int(model._n_updates), "return_mean": ev["mean"],
                          "return_std": ev["std"], "wall_seconds_this_start": time.perf_counter() - t0})
            atomic_write_json(curve_path, {"env": args.env, "args": vars(args), "curve": curve})
            plot_curve(curve, work / "curve.png", args.env)
            print(f"{args.env} {n:8d} steps: return {ev['mean']:8.1f} +- {ev['std']:6.1f} "
                  f"({(time.perf_counter() - t0) / 60:.1f} min this start)", flush=True)
        if n // args.save_every > before // args.save_every or n >= args.steps:
            save_state(model, state)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env", required=True, help="Hopper-v5, Walker2d-v5, HalfCheetah-v5 (any gymnasium Box env)")
    ap.add_argument("--steps", type=int, required=True, help="total environment steps")
    ap.add_argument("--work", required=True, help="run folder: state/, snapshots/, curve.json")
    ap.add_argument("--eval-every", type=int, default=10000)
    ap.add_argument("--save-every", type=int, default=50000)
    ap.add_argument("--eval-episodes", type=int, default=10)
    ap.add_argument("--learning-starts", type=int, default=10000, help="random actions before learning (SB3 zoo)")
    ap.add_argument("--train-freq", type=int, default=1, help="environment steps per gradient step")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import gymnasium as gym
    from stable_baselines3 import SAC
    from stable_baselines3.common.logger import Logger
    work = Path(args.work)
    state, curve_path = work / "state", work / "curve.json"
    (work / "snapshots").mkdir(parents=True, exist_ok=True)
    curve = json.loads(curve_path.read_text())["curve"] if curve_path.is_file() else []
    env = gym.make(args.env)
    if (state / "model.zip").is_file():
        model = SAC.load(str(state / "model.zip"), env=env, device="cpu")
        if (state / "replay.pkl").is_file():
            model.load_replay_buffer(str(state / "replay.pkl"))
        else:
            print(f"{state}: no replay.pkl (a learner carried over without it): refilling the buffer with "
                  f"{args.learning_starts} steps of its own policy", flush=True)
            refill(model, env, args.learning_starts, seed=args.seed + model.num_timesteps)
        print(f"resuming {args.env} at {model.num_timesteps} environment steps from {state}", flush=True)
        curve = [c for c in curve if c["env_steps"] <= model.num_timesteps]
    else:
        model = SAC("MlpPolicy", env, seed=args.seed, device="cpu", learning_starts=args.learning_starts,
                    train_freq=args.train_freq, gradient_steps=1, verbose=0)
    model.set_logger(Logger(None, []))  # SB3's default logger makes an empty /tmp/SB3-<time> folder per learn()
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # a SIGTERM saves the state as Ctrl-C does
    try:
        return learn(model, args, work, curve)
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
