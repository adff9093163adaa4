"""Diffuser's locomotion table, measured here: per environment and dataset, the value-guided planner (a trained
trajectory run and its value function), behaviour cloning on the same data (an MLP, the floor every offline method
must beat) and the behaviour policy itself (the actor that generated the data, stochastic as it was then), each over
--episodes episodes with fixed seeds; mean and spread of the return, normalised scores against our references
(random actions and our expert actor over 100 episodes) and against D4RL's constants (not comparable digit for
digit: v5 is not D4RL's v2), and the planner's time per planning call.

    python benchmarks/locomotion/evaluate.py RUN --value RUN/value [--episodes 10] [--candidates 64] [--jobs 2]
    python benchmarks/locomotion/evaluate.py RUN --value RUN/value --ranking-diagnostic 60 --candidates 16
    python benchmarks/locomotion/evaluate.py RUN --references-only --out references   # no planner

Finished planner episodes are logged in RUN/eval_episodes/, so the same command, interrupted, resumes where it stopped.

Writes benchmarks/results/locomotion_<env>_<dataset>.json (..._decision.json for a Decision Diffuser run).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parents[1] / "results"


def row(name: str, returns: list[float], ref: dict, env_id: str, extra: dict | None = None) -> dict:
    from diffsuite.modalities.trajectory.locomotion import score
    out = {"method": name, **score(returns, ref, env_id), **(extra or {})}
    print(f"{name:40s} return {out['return_mean']:8.1f} +- {out['return_std']:7.1f}  score {out['normalized_score']:6.1f}"
          f" (D4RL constants {out['normalized_score_d4rl_constants']:6.1f})", flush=True)
    return out


def episode_log(run: str, opts: dict, replan_every: int) -> Path:
    """Where finished planner episodes are kept, one JSON line each, so an interrupted evaluation resumes where it
    stopped: RUN/eval_episodes/<hash of the weights (the model's, the value's, the inverse dynamics') and the
    planner's settings>.jsonl; a run retrained or overwritten in place gets a new log."""
    import hashlib
    from diffsuite.core.checkpoint import weights_sha256
    from diffsuite.core.utils import sha256_file
    from diffsuite.recipes.run import resolve_checkpoint
    value = Path(opts["value"]) / "value.safetensors" if opts.get("value") else None
    inverse = Path(opts["inverse"]) / "inverse.safetensors" if opts.get("inverse") else None
    key = json.dumps({"weights": weights_sha256(resolve_checkpoint(run)), "replan_every": replan_every, **opts,
                      "value_weights": sha256_file(value) if value and value.is_file() else None,
                      **({"inverse_weights": sha256_file(inverse)} if inverse else {})}, sort_keys=True)
    return Path(run) / "eval_episodes" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.jsonl"


def logged_episodes(log: Path) -> dict[int, dict]:
    """The episodes an earlier evaluation with the same settings finished, by seed (a torn last line is ignored)."""
    done = {}
    for line in log.read_text().splitlines() if log.is_file() else []:
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue
        done[e["seed"]] = e
    return done


def append(log: Path, line: str) -> None:
    """Append one line to the log in a single write(), so workers appending at once do not interleave."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def planner_episodes(run: str, opts: dict, seeds: list[int], replan_every: int, threads: int = 1) -> list[dict]:
    """Planned episodes with the given seeds (one worker's share when --jobs > 1; frames dropped), each appended to
    the episode log when it ends; seeds already in the log are not played again."""
    from diffsuite.modalities.trajectory.cli import _planner
    from diffsuite.modalities.trajectory.locomotion import planned_episode
    from diffsuite.recipes.run import load
    torch.set_num_threads(threads)
    log = episode_log(run, opts, replan_every)
    done = logged_episodes(log)
    eps = [done[s] for s in seeds if s in done]
    todo = [s for s in seeds if s not in done]
    if not todo:
        return eps
    loaded = load(run)
    planner = _planner(SimpleNamespace(**opts), loaded)
    log.parent.mkdir(parents=True, exist_ok=True)
    if log.is_file() and not log.read_bytes().endswith(b"\n"):
        append(log, "")  # end a line torn by an interruption, so the next episode starts its own
    for s in todo:
        e = {k: v for k, v in planned_episode(loaded.recipe.data.env_id, planner, s, replan_every).items()
             if k != "frames"}
        append(log, json.dumps(e, default=float))
        eps.append(e)
        print(f"  episode seed {s}: return {e['return']:.1f}, {e['length']} steps, plan "
              f"{np.mean(e['plan_seconds']) * 1000:.0f} ms", flush=True)
    return sorted(eps, key=lambda e: e["seed"])


def planner_opts(args) -> dict:
    """The planner's settings from this script's arguments, as `diffsuite plan` would pass them (cli._planner)."""
    return dict(value=args.value, guidance=None, avoid_walls=False, candidates=args.candidates,
                guide_scale=args.guide_scale, t_stopgrad=args.t_stopgrad, warm_start=0.0, sampler=args.sampler,
                steps=args.steps, device="cpu", target_return=args.target_return,
                condition_guidance_w=args.condition_guidance_w, inverse=args.inverse, execute=args.execute)


def run_planner(args) -> list[dict]:
    """The planner's episodes, split over --jobs processes of one thread each (episodes are independent and seeded,
    so the split changes nothing but the wall time)."""
    opts = planner_opts(args)
    seeds = [args.seed + i for i in range(args.episodes)]
    if args.jobs <= 1:
        return planner_episodes(args.run, opts, seeds, args.replan_every, args.threads)
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as ex:
        parts = ex.map(planner_episodes, *zip(*[(args.run, opts, seeds[j::args.jobs], args.replan_every, 1)
                                                for j in range(args.jobs)]))
        return sorted((e for part in parts for e in part), key=lambda e: e["seed"])


GAP_STEPS = (1, 4, 8, 16)  # plan steps at which the ranking diagnostic compares a plan with its real open-loop rollout


def ranking_diagnostic(args, loaded, n_states: int) -> dict:
    """What ranking candidates by value picks, with no guidance: from n_states dataset states, --candidates plans
    each; the value spread among them, how far the first action of the best-valued plan and of the average
    candidate lie from the action the behaviour policy took in that state (the data's), and how the value follows
    each dimension of the candidates' planned observations (over the horizon; forward velocity, what the reward pays
    for, among them): its correlation with the value, and the best-valued plan's mean minus the candidates' mean in
    the data's sd units; and each plan against the real dynamics: its actions played open loop from the same state,
    the RMS gap between planned and real observations (data sd units) at GAP_STEPS, and whether gymnasium ends the
    episode within the plan; beside them the same for the data's own next actions from that state (the floor: exact,
    up to episode ends); with --inverse, also each plan tracked closed loop through the inverse dynamics,
    a_k = f(s_k, planned s_(k+1))."""
    import bisect
    import gymnasium as gym
    from diffsuite.modalities.trajectory.cli import _planner
    from diffsuite.modalities.trajectory.data import ValueDataset
    from diffsuite.modalities.trajectory.inverse import plan_actions
    from diffsuite.modalities.trajectory.locomotion import OBSERVATION_NAMES, play_from
    from diffsuite.modalities.trajectory.task import full_dataset
    opts = {**planner_opts(args), "guidance": "none", "guide_scale": 0.0}
    planner, seq = _planner(SimpleNamespace(**opts), loaded), full_dataset(loaded.recipe.data)
    flat = np.asarray(seq.normalizer.unnormalize(np.asarray(seq.joint)), np.float32).reshape(-1, seq.joint.shape[-1])
    A, g, rows = seq.action_dim, torch.Generator().manual_seed(args.seed), []
    env_id = loaded.recipe.data.env_id
    sd = flat[:, A:].std(0)
    env = gym.make(env_id)
    env.reset(seed=args.seed)
    H = loaded.recipe.data.horizon
    steps = [k for k in GAP_STEPS if k < H]  # HalfCheetah plans 4 steps
    starts = [b[0] for b in seq.bounds]
    f = planner.inverse  # --inverse: loaded with the planner (its executed actions are not used here)

    def against_real(start, actions, planned):  # the RMS gap (data sd) after each of `steps` actions; did it end?
        real, k = play_from(env, start, actions, len(planned) if callable(actions) else None)
        gap = np.sqrt(np.mean(((real[:len(planned)] - planned) / sd) ** 2, axis=1))
        return [gap[n - 1] if n <= len(gap) else np.nan for n in steps], k is not None

    for i in np.random.default_rng(args.seed).choice(len(flat), n_states, replace=False):
        x = planner.plan(flat[i, A:], generator=g).normalized
        with torch.no_grad():
            v = planner.value_fn(x, torch.zeros(len(x)), None).float().flatten().numpy()
        plans = seq.normalizer.unnormalize(x.float().numpy())
        d = np.linalg.norm(plans[:, 0, :A] - flat[i, :A], axis=1)
        obs = plans[:, :, A:].mean(1)  # each candidate's planned observation, averaged over its horizon
        corr = [float(np.corrcoef(v, o)[0, 1]) for o in obs.T]
        gap, ends = map(np.array, zip(*[against_real(flat[i, A:], p[:-1, :A], p[1:, A:]) for p in plans]))
        if f is not None:  # tracking each plan's states: the action that reaches its next state from the real one
            track = [against_real(flat[i, A:], lambda k, o, p=p: plan_actions(f, np.stack([o, p[k + 1, A:]]))[0],
                                  p[1:, A:]) for p in plans]
            tgap, tends = map(np.array, zip(*track))
        e = seq.bounds[bisect.bisect_right(starts, i) - 1][1]  # the end of the data episode holding state i
        data_gap, data_ends = against_real(flat[i, A:], flat[i:min(i + H - 1, e), :A], flat[i + 1:min(i + H, e), A:])
        rows.append({"value_spread": float(v.max() - v.min()), "best_action_distance": float(d[v.argmax()]),
                     "mean_action_distance": float(d.mean()), "value_vs_closeness_corr": float(np.corrcoef(v, -d)[0, 1]),
                     "value_vs_planned_obs_corr": corr,
                     "best_minus_mean_obs_sd": ((obs[v.argmax()] - obs.mean(0)) / sd).tolist(),
                     "best_real_gap_sd": gap[v.argmax()].tolist(), "mean_real_gap_sd": np.nanmean(gap, 0).tolist(),
                     "best_ends": float(ends[v.argmax()]), "share_ends": float(ends.mean()),
                     "data_real_gap_sd": data_gap, "data_ends": float(data_ends),
                     **({"tracked_best_real_gap_sd": tgap[v.argmax()].tolist(),
                         "tracked_mean_real_gap_sd": np.nanmean(tgap, 0).tolist(),
                         "tracked_best_ends": float(tends[v.argmax()]), "tracked_share_ends": float(tends.mean())}
                        if f is not None else {})})
    env.close()
    summary = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if not isinstance(rows[0][k], list)}
    for k in [k for k in rows[0] if k.endswith("real_gap_sd")]:  # at GAP_STEPS, over the plays not yet ended there
        summary[k] = dict(zip(map(str, steps), np.nanmean([r[k] for r in rows], 0).round(4).tolist()))
    for k in ("value_vs_planned_obs_corr", "best_minus_mean_obs_sd"):  # per observation dimension, named
        summary[k] = dict(zip(OBSERVATION_NAMES[env_id], np.nanmean([r[k] for r in rows], 0).round(3).tolist()))
    vd = ValueDataset(seq)  # the value's own error on data windows, in the same units (returns-to-go / their std)
    pick = np.random.default_rng(args.seed).choice(len(vd), min(2000, len(vd)), replace=False)
    x = torch.stack([seq[int(i)] for i in pick])
    with torch.no_grad():
        err = planner.value_fn(x, torch.zeros(len(x)), None).float().flatten().numpy() - vd.returns[pick]
    summary["value_rms_error_on_data"] = float(np.sqrt(np.mean(err ** 2)))
    print(json.dumps(summary, indent=1), flush=True)
    return {"n_states": n_states, "candidates": args.candidates, "summary": summary, "rows": rows}


def reference_rows(args, d, folder: Path, levels: dict, ref: dict) -> list[dict]:
    """The dataset's own episodes, behaviour cloning on the same data (an MLP) and the behaviour policies themselves
    (stochastic, as when the data was made), over the same episode seeds as the planner: medium's actor, medium-expert's
    two, and for medium-replay every snapshot and their mixture (each snapshot's episodes pooled, equal weights, as the
    snapshots take equal shares of the data)."""
    import gymnasium as gym
    from diffsuite.modalities.trajectory import locomotion as L
    from diffsuite.modalities.trajectory.task import full_dataset, locomotion_arrays
    env_id = d.env_id
    arrays = locomotion_arrays(d)
    data = L.episode_returns(arrays["rewards"], arrays["terminals"], arrays["timeouts"])
    rows = [row(f"the dataset's episodes ({len(data)})", data, ref, env_id)]
    seq = full_dataset(d)
    a, s = seq.split(torch.as_tensor(seq.normalizer.unnormalize(seq.joint)))
    env = gym.make(env_id)
    t0 = time.perf_counter()
    bc = L.train_bc(s.numpy(), a.numpy(), env.action_space.low, env.action_space.high, args.bc_steps)
    env.close()
    rows.append(row("behaviour cloning (MLP 256-256)", L.evaluate_actor(bc, env_id, args.episodes, args.seed)["returns"],
                    ref, env_id, {"train_seconds": time.perf_counter() - t0}))
    names = {"medium": [levels["medium"]], "medium-replay": levels["replay"],
             "medium-expert": [levels["medium"], levels["expert"]]}[d.dataset]
    pooled = []
    for steps in names:
        actor, _ = L.load_actor(L.actor_file(folder, steps))
        returns = L.evaluate_actor(actor, env_id, args.episodes, args.seed, deterministic=False)["returns"]
        rows.append(row(f"behaviour policy (SAC actor at {steps} steps, stochastic)", returns, ref, env_id))
        pooled += returns
    if d.dataset == "medium-replay":
        rows.append(row(f"behaviour policies' mixture ({len(names)} snapshots, equal shares)", pooled, ref, env_id))
    return rows


def planner_row(args, d, ref: dict, env_id: str) -> dict:
    """The planner's episodes as one row, with its time per planning call and how many episodes ended in a fall."""
    eps = run_planner(args)
    secs = np.concatenate([e["plan_seconds"] for e in eps])
    name = (f"Decision Diffuser (return {args.target_return}, w {args.condition_guidance_w})"
            if d.formulation == "decision_diffuser" else f"Diffuser planner ({args.candidates} candidates, "
            f"{'value guide scale ' + format(args.guide_scale, 'g') if args.value else 'no value'}"
            f"{', their actions averaged' if args.execute == 'mean' else ''}"
            f"{', actions from inverse dynamics' if args.inverse else ''})")
    return row(name, [e["return"] for e in eps], ref, env_id,
               {"plan_seconds_mean": float(secs.mean()), "fell": int(sum(e["terminated"] for e in eps))})


def parser() -> argparse.ArgumentParser:
    from diffsuite.modalities.trajectory.planner import DD_GUIDANCE_W, DD_TARGET_RETURN
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a trained locomotion trajectory run")
    ap.add_argument("--value", default=None, help="its value function folder (diffsuite train-value); none for a "
                    "Decision Diffuser run (its inverse dynamics are read from RUN/inverse)")
    ap.add_argument("--target-return", type=float, default=DD_TARGET_RETURN, help="Decision Diffuser: the "
                    "conditioned return")
    ap.add_argument("--condition-guidance-w", type=float, default=DD_GUIDANCE_W, help="Decision Diffuser: the CFG weight")
    ap.add_argument("--inverse", default=None, help="Diffuser runs: execute f(s, s_1) of these inverse dynamics "
                    "(diffsuite train-inverse) in place of the diffused action; with --ranking-diagnostic, also play "
                    "each plan by tracking its states with them")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--candidates", type=int, default=64)
    ap.add_argument("--guide-scale", type=float, default=0.1)
    ap.add_argument("--t-stopgrad", type=int, default=2, help="no value gradient at diffusion steps below this")
    ap.add_argument("--replan-every", type=int, default=1)
    ap.add_argument("--execute", choices=("best", "mean"), default="best", help="act on the best-valued candidate "
                    "(Diffuser) or on the candidates' actions averaged")
    ap.add_argument("--sampler", default=None, help="the planner's sampler (default the recipe's)")
    ap.add_argument("--steps", type=int, default=None, help="the planner's sampling steps (default the recipe's)")
    ap.add_argument("--jobs", type=int, default=1, help="planner episodes in this many processes of one thread each")
    ap.add_argument("--bc-steps", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    only = ap.add_mutually_exclusive_group()
    only.add_argument("--planner-only", action="store_true", help="skip the dataset, behaviour cloning and behaviour "
                      "policy rows (an ablation of the planner's settings)")
    only.add_argument("--references-only", action="store_true", help="only the dataset, behaviour cloning and "
                      "behaviour policy rows (no planner)")
    ap.add_argument("--out", default=None, help="suffix of the results file (an ablation: ..._<out>.json)")
    ap.add_argument("--ranking-diagnostic", type=int, metavar="N", default=0, help="instead of episodes: what ranking "
                    "--candidates plans by value picks from N dataset states (..._ranking.json)")
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    from diffsuite.core.precision import probe_machine
    from diffsuite.modalities.trajectory import locomotion as L
    from diffsuite.recipes.run import load
    loaded = load(args.run)
    d = loaded.recipe.data
    env_id = d.env_id
    folder = L.actors_folder(env_id, d.actors)
    levels = L.read_levels(folder, env_id)
    ref = L.reference_returns(env_id, L.actor_file(folder, levels["expert"]))
    d4rl = L.D4RL_REFERENCE[env_id]
    if args.ranking_diagnostic:
        out = RESULTS / f"locomotion_{env_id.split('-')[0].lower()}_{d.dataset}_ranking.json"
        out.write_text(json.dumps({"checkpoint": str(loaded.checkpoint), "args": vars(args),
                                   **ranking_diagnostic(args, loaded, args.ranking_diagnostic)}, indent=1))
        print(f"written {out}")
        return 0
    rows = [] if args.references_only else [planner_row(args, d, ref, env_id)]
    if not args.planner_only:
        rows += reference_rows(args, d, folder, levels, ref)
    m = probe_machine("cpu")
    res = {"env_id": env_id, "dataset": d.dataset, "checkpoint": str(loaded.checkpoint), "train_step": loaded.step,
           "args": vars(args), "references": ref, "d4rl_constants": d4rl, "levels": levels, "rows": rows,
           "machine": {"cpu": m.device_name, "cpu_capability": m.cpu_capability, "torch": torch.__version__}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    dd = "_decision" if d.formulation == "decision_diffuser" else ""
    ab = f"_{args.out}" if args.out else ""
    out = RESULTS / f"locomotion_{env_id.split('-')[0].lower()}_{d.dataset}{dd}{ab}.json"
    out.write_text(json.dumps(res, indent=1))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
