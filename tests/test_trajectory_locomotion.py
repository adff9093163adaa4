"""Locomotion behaviour policies (modalities.trajectory.locomotion): SAC's actor read out of Stable-Baselines3 acts as
SB3 does, saves and loads exactly, and its stochastic actions follow a seeded generator."""
from pathlib import Path

import numpy as np
import pytest
import torch

from diffsuite.modalities.trajectory.locomotion import (OBSERVATION_NAMES, Actor, actor_from_sb3, evaluate_actor,
                                                         load_actor, save_actor)

torch.set_num_threads(1)


def _evaluate_module():
    """benchmarks/locomotion/evaluate.py, which is a script, not a package module."""
    from tiny import benchmark_script
    return benchmark_script("locomotion/evaluate.py", "loco_eval")


def test_the_actor_acts_as_stable_baselines3_does():
    import gymnasium as gym
    import stable_baselines3 as sb3
    env = gym.make("Hopper-v5")
    model = sb3.SAC("MlpPolicy", env, seed=0, device="cpu", learning_starts=10, policy_kwargs={"net_arch": [32, 32]})
    model.set_logger(sb3.common.logger.Logger(None, []))  # the default one leaves an empty /tmp/SB3-<time> folder
    model.learn(50)  # a few updates, so the weights are not the initial ones
    actor = actor_from_sb3(model)
    obs = np.stack([env.reset(seed=s)[0] for s in range(5)]).astype(np.float32) + np.random.default_rng(0).normal(
        0, 0.5, (5, 11)).astype(np.float32)
    want, _ = model.predict(obs, deterministic=True)
    np.testing.assert_allclose(actor.act(obs, deterministic=True), want, atol=1e-5)


def test_save_load_round_trip_and_seeded_noise(tmp_path):
    torch.manual_seed(0)
    a = Actor(11, 3, (16, 16), low=-np.ones(3) * 0.5, high=np.ones(3) * 2.0)
    p = save_actor(a, tmp_path / "actor.safetensors", {"env": "Hopper-v5", "env_steps": 7})
    b, meta = load_actor(p)
    assert meta["env_steps"] == 7 and meta["hidden"] == [16, 16] and meta["obs_dim"] == 11
    obs = np.random.default_rng(1).normal(size=(4, 11))
    np.testing.assert_array_equal(a.act(obs, deterministic=True), b.act(obs, deterministic=True))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x, y = a.act(obs, g1), b.act(obs, g2)
    np.testing.assert_array_equal(x, y)
    assert not np.allclose(x, a.act(obs, deterministic=True))
    assert (x >= -0.5).all() and (x <= 2.0).all()  # squashed into the action bounds
    (tmp_path / "other.safetensors").write_bytes(b"")
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not an actor file"):
        load_actor(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError, match="actor weights not found"):
        load_actor(tmp_path / "missing.safetensors")


def test_evaluate_actor_runs_fixed_seed_episodes():
    torch.manual_seed(0)
    a = Actor(11, 3, (8,))
    r1 = evaluate_actor(a, "Hopper-v5", episodes=2, seed=5, max_steps=50)
    r2 = evaluate_actor(a, "Hopper-v5", episodes=2, seed=5, max_steps=50)
    assert r1 == r2 and len(r1["returns"]) == 2 and max(r1["lengths"]) <= 50


def test_levels_follow_the_written_rule():
    from diffsuite.modalities.trajectory.locomotion import select_levels
    curve = [{"env_steps": s, "return_mean": r} for s, r in [(10, 100), (20, 900), (30, 1600), (40, 3000), (50, 2500)]]
    lv = select_levels(curve, 0.5)
    assert lv["expert"] == 40 and lv["medium"] == 30 and lv["replay"] == [10, 20, 30]
    early = select_levels([{"env_steps": 10, "return_mean": -300.0}, {"env_steps": 20, "return_mean": -1.0}])
    assert early["medium"] == early["expert"] == 20  # no positive return yet: medium is the best


def _actors(folder, n=3):
    from diffsuite.modalities.trajectory.locomotion import save_actor
    import json
    folder.mkdir()
    for i in range(n):
        torch.manual_seed(i)
        save_actor(Actor(11, 3, (8,)), folder / f"actor_{(i + 1) * 10:08d}.safetensors", {"env": "Hopper-v5"})
    (folder / "levels.json").write_text(json.dumps({"expert": 30, "medium": 20, "replay": [10, 20]}))
    return folder


def test_rollouts_keep_terminals_and_timeouts_apart_and_are_bit_identical(tmp_path, monkeypatch):
    from diffsuite.modalities.trajectory.locomotion import dataset_path, rollouts, generate_dataset
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path / "cache"))
    folder = _actors(tmp_path / "actors")
    d = rollouts([load_actor(folder / "actor_00000010.safetensors")[0]], "Hopper-v5", 300, seed=0, max_episode_steps=40)
    ends = np.flatnonzero(d["terminals"] | d["timeouts"])
    assert not (d["terminals"] & d["timeouts"]).any() and ends[-1] == 299 and d["timeouts"][-1]
    for a, b in zip(ends[:-1], ends[1:]):  # no episode is longer than the limit
        assert b - a <= 40
    within = np.setdiff1d(np.arange(299), ends)
    np.testing.assert_array_equal(d["next_observations"][within], d["observations"][within + 1])
    me, settings = generate_dataset("medium-expert", "Hopper-v5", folder, 100, seed=1, progress=False)
    assert len(me["rewards"]) == 200 and set(settings["actors"]) == {"actor_00000020.safetensors",
                                                                    "actor_00000030.safetensors"}
    p1 = dataset_path("medium-replay", "Hopper-v5", folder, 120, progress=False)
    a = np.load(p1)["observations"].copy()
    p1.unlink()
    p2 = dataset_path("medium-replay", "Hopper-v5", folder, 120, progress=False)
    assert p1 == p2 and np.array_equal(np.load(p2)["observations"], a)  # regenerated bit for bit


def test_returns_to_go_and_the_terminal_penalty_are_exact():
    """A hand-made stream: a 3-step episode that falls (terminal) and a 2-step one cut by a timeout; the penalty lands
    on the fall only, and returns-to-go stop at episode ends."""
    from diffsuite.modalities.trajectory.data import SequenceDataset
    obs, act = np.zeros((5, 2), np.float32), np.zeros((5, 1), np.float32)
    rewards = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    terminals = np.array([0, 0, 1, 0, 0], bool)
    timeouts = np.array([0, 0, 0, 0, 1], bool)
    seq = SequenceDataset(obs, act, rewards, terminals, timeouts, horizon=1, normalizer="gaussian", discount=0.5,
                          terminal_penalty=-100.0)
    assert seq.bounds == [(0, 3), (3, 5)]
    want = [1 + 0.5 * 2 + 0.25 * (3 - 100), 2 + 0.5 * (3 - 100), 3 - 100, 4 + 0.5 * 5, 5]
    np.testing.assert_allclose([seq.window_return(i) for i in range(5)], want)
    seq2 = SequenceDataset(obs, act, rewards, terminals, timeouts, horizon=2, normalizer="gaussian")
    assert [(w.episode, w.start) for w in seq2.windows] == [(0, 0), (0, 1), (1, 0)]  # never across an end


def test_action_weight_is_diffusers_weighted_loss():
    from diffsuite.core.losses import DiffusionLoss
    from diffsuite.modalities.trajectory.task import TrajectoryDataConfig, TrajectoryModelConfig, TrajectoryTask
    w = TrajectoryTask().loss_weights(TrajectoryModelConfig(transition_dim=5, action_dim=2),
                                      TrajectoryDataConfig(horizon=4, action_weight=10.0))
    assert w.shape == (4, 5) and w[0, :2].tolist() == [10, 10] and w.sum() == 18 + 2 * 10
    assert TrajectoryTask().loss_weights(TrajectoryModelConfig(), TrajectoryDataConfig()) is None
    from diffsuite.core.build import build_denoiser
    from diffsuite.core.config import DiffusionConfig

    class Zero(torch.nn.Module):
        def forward(self, x, t, cond=None):
            return torch.zeros_like(x)
    den = build_denoiser(Zero(), DiffusionConfig(T=10, prediction="x0"))
    x0 = torch.zeros(3, 4, 5)
    x0[:, 0, :2] = 1.0  # the only error sits on the first step's actions
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    plain, _ = DiffusionLoss()(den, x0, None, g())
    weighted, _ = DiffusionLoss(element_weight=w)(den, x0, None, g())
    torch.testing.assert_close(weighted, 10 * plain)


def test_a_tiny_locomotion_run_end_to_end(tmp_path, monkeypatch, capsys):
    """A few thousand generated steps from test actors, a few training steps, a value function, and planned episodes
    with `diffsuite plan` (value guidance at scale 0 plans exactly as without guidance)."""
    import json
    from diffsuite.recipes import run
    from diffsuite.recipes.cli import main
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path / "cache"))
    folder = _actors(tmp_path / "actors")
    r = {"task": "trajectory", "name": "hopper_test",
         "model": {"transition_dim": 14, "action_dim": 3, "dim": 8, "dim_mults": [1, 2]},
         "data": {"env_id": "Hopper-v5", "dataset": "medium", "actors": str(folder), "size": "2000", "horizon": 8,
                  "normalizer": "gaussian", "condition": "start", "discount": 0.997, "terminal_penalty": -100.0,
                  "action_weight": 10.0},
         "diffusion": {"schedule": "cosine", "T": 20, "prediction": "eps"},
         "train": {"steps": 3, "batch_size": 4, "lr": 1e-3, "progress": False, "tensorboard": False},
         "sample": {"sampler": "ddim", "steps": 3, "n": 2}}
    out = run.train(r, out_dir=tmp_path / "run")
    a = run.load(out)
    x, cond = run.generate(a.denoiser, a.task, a.recipe, n=2, progress=False)
    assert (tmp_path / "s" / "samples.png") == Path(a.task.save_samples(x, cond, tmp_path / "s", a.recipe)["png"])
    assert main(["train-value", str(out), "--steps", "3", "--discount", "0.997"]) == 0
    args = ["plan", str(out), "--episodes", "2", "--reference-episodes", "2", "--value", str(out / "value"),
            "--candidates", "2", "--steps", "3"]
    assert main(args + ["--guide-scale", "0", "--out", str(tmp_path / "p0")]) == 0
    assert main(args + ["--guidance", "none", "--out", str(tmp_path / "pn")]) == 0
    s0 = json.loads((tmp_path / "p0" / "summary.json").read_text())
    sn = json.loads((tmp_path / "pn" / "summary.json").read_text())
    assert s0["per_episode"] == sn["per_episode"]  # scale 0: the same plans, the same episodes
    assert s0["episodes"] == 2 and np.isfinite(s0["normalized_score"]) and s0["plan_seconds_mean"] > 0
    assert all(len(e["final_observation"]) == 11 for e in s0["per_episode"])  # Hopper's: what ended each episode
    assert main(["train-inverse", str(out), "--steps", "20"]) == 0  # a Diffuser run may execute f(s, s_1)
    assert main(args + ["--guidance", "none", "--inverse", str(out / "inverse"), "--out", str(tmp_path / "pi")]) == 0
    si = json.loads((tmp_path / "pi" / "summary.json").read_text())
    assert si["episodes"] == 2 and si["per_episode"] != sn["per_episode"]  # other actions, other episodes
    assert main(args + ["--inverse", str(out / "inverse"), "--execute", "mean", "--out", str(tmp_path / "pm")]) == 2
    assert "execute='mean' (--execute mean) averages the candidates' diffused actions; it does not combine with " \
        "actions from inverse dynamics (--inverse" in capsys.readouterr().err
    ev = _evaluate_module()
    args = ev.parser().parse_args([str(out), "--value", str(out / "value"), "--candidates", "3", "--steps", "3",
                                   "--inverse", str(out / "inverse")])
    diag = ev.ranking_diagnostic(args, a, 2)
    assert set(diag["summary"]["tracked_mean_real_gap_sd"]) == {"1", "4"}
    assert 0 <= diag["summary"]["tracked_share_ends"] <= 1
    assert len(diag["rows"]) == 2
    assert set(diag["summary"]["value_vs_planned_obs_corr"]) == set(OBSERVATION_NAMES["Hopper-v5"])
    gap = diag["summary"]["mean_real_gap_sd"]  # plans of 8 states: gaps after 1 and 4 actions, none after 8 or 16
    assert set(gap) == {"1", "4"} and gap["1"] >= 0 and gap["4"] >= 0
    assert diag["summary"]["data_real_gap_sd"]["1"] < 1e-4  # the data's own actions give the data's next states
    assert all(0 <= r["share_ends"] <= 1 and r["best_ends"] in (0.0, 1.0) for r in diag["rows"])


def test_play_from_replays_an_episode_from_its_first_observation():
    """A state set from an observation and the same actions give the same observations as the episode itself (the
    root's x does not enter the dynamics), the same termination, and nothing after it."""
    import gymnasium as gym
    from diffsuite.modalities.trajectory.locomotion import play_from
    env, other = gym.make("Hopper-v5"), gym.make("Hopper-v5")
    obs, _ = env.reset(seed=3)
    actions = np.random.default_rng(0).uniform(-1, 1, (200, 3))
    seen, ended = [], None
    for k, a in enumerate(actions):
        o, _, term, _, _ = env.step(a)
        seen.append(o)
        if term:
            ended = k + 1
            break
    assert ended is not None and ended < 200  # random actions topple the hopper
    other.reset(seed=99)
    out, k = play_from(other, obs, actions)
    assert k == ended and np.allclose(out[:k], seen, atol=1e-9) and np.isnan(out[k:]).all()
    policy = lambda k, o: np.tanh(-o[2:5] - 0.1 * o[8:11])  # noqa: E731  (closed loop: a feedback on joint angles)
    obs, _ = env.reset(seed=4)
    o, seen = obs, []
    for k in range(30):
        o = env.step(policy(k, o))[0]
        seen.append(o)
    out, k = play_from(other, obs, policy, 30)
    assert k is None and np.allclose(out, seen, atol=1e-9)
    with pytest.raises(ValueError, match=r"Hopper-v5: an observation of shape \(10,\)"):
        play_from(other, obs[:10], actions)


def test_behaviour_cloning_fits_a_linear_policy():
    from diffsuite.modalities.trajectory.locomotion import train_bc
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(2000, 4)).astype(np.float32)
    act = np.tanh(obs @ rng.normal(size=(4, 2)).astype(np.float32) * 0.5)
    pi = train_bc(obs, act, -np.ones(2), np.ones(2), steps=600, batch=128, lr=3e-3)
    err = np.abs(np.stack([pi.act(o) for o in obs[:200]]) - act[:200]).mean()
    assert err < 0.05, err


COMMITTED = [e for e in ("HalfCheetah-v5", "Hopper-v5", "Walker2d-v5")
             if (Path(__file__).resolve().parents[1] / "modalities/trajectory/actors" / e / "levels.json").is_file()]


@pytest.mark.parametrize("env_id", COMMITTED)
def test_the_committed_actors_follow_the_level_rule_and_act(env_id, tmp_path, monkeypatch):
    """The committed behaviour policies: levels.json is select_levels of the committed curve, each actor loads and
    acts, expert > medium > random actions on a fixed-seed episode, and a tiny dataset rolls out from them."""
    import json
    from diffsuite.modalities.trajectory import locomotion as L
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path / "cache"))
    folder = L.actors_folder(env_id)
    levels = L.read_levels(folder, env_id)
    rule = L.select_levels(json.loads((folder / "curve.json").read_text())["curve"], levels["fraction"])
    assert (levels["medium"], levels["expert"]) == (rule["medium"], rule["expert"])
    assert set(levels["replay"]) <= set(rule["replay"]) and levels["replay"][-1] == levels["medium"]
    ret = {k: L.evaluate_actor(L.load_actor(L.actor_file(folder, levels[k]))[0], env_id, 1, seed=0)["mean"]
           for k in ("medium", "expert")}
    rnd = L.random_returns(env_id, 1)[0]
    assert ret["expert"] > ret["medium"] > rnd, (ret, rnd)
    data = np.load(L.dataset_path("medium", env_id, folder, 2000, seed=0, progress=False))
    meta = L.load_actor(L.actor_file(folder, levels["medium"]))[1]
    assert data["observations"].shape == (2000, meta["obs_dim"]) and data["actions"].shape == (2000, meta["act_dim"])
    if env_id == "HalfCheetah-v5":
        assert not data["terminals"].any()  # HalfCheetah never falls


def test_sac_training_resumes_with_or_without_its_replay_buffer(tmp_path, capsys, monkeypatch):
    """benchmarks/locomotion/train_sac.py: an interrupted run resumes from state/; carried over as state/model.zip
    alone (no replay buffer), it refills the buffer from its own policy and trains on; interrupted mid-chunk, it
    saves at once."""
    import json
    import tempfile
    pytest.importorskip("stable_baselines3")
    from tiny import benchmark_script
    sac = benchmark_script("locomotion/train_sac.py", "train_sac")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where SB3's default logger would make folders
    (tmp_path / "tmp").mkdir()
    work = tmp_path / "sac"
    args = ["--env", "Pendulum-v1", "--work", str(work), "--eval-every", "100", "--save-every", "100",
            "--eval-episodes", "1", "--learning-starts", "50"]
    assert sac.main([*args, "--steps", "200"]) == 0
    assert sac.main([*args, "--steps", "300"]) == 0 and "resuming Pendulum-v1 at 200" in capsys.readouterr().out
    (work / "state" / "replay.pkl").unlink()
    assert sac.main([*args, "--steps", "400"]) == 0
    assert "refilling the buffer with 50 steps" in capsys.readouterr().out
    curve = json.loads((work / "curve.json").read_text())["curve"]
    assert [c["env_steps"] for c in curve] == [100, 200, 300, 400]
    assert curve[-1]["gradient_steps"] > curve[-2]["gradient_steps"] > curve[-3]["gradient_steps"]
    # a SIGTERM (or Ctrl-C) mid-chunk saves the state at once and exits 130; the same command resumes from there
    import signal
    from stable_baselines3 import SAC
    learn = SAC.learn

    def interrupted(self, total_timesteps, **kw):  # 30 steps into the chunk, what the SIGTERM handler raises
        learn(self, total_timesteps=30, **kw)
        raise KeyboardInterrupt
    monkeypatch.setattr(SAC, "learn", interrupted)
    assert sac.main([*args, "--steps", "500"]) == 130
    assert signal.getsignal(signal.SIGTERM) is not signal.default_int_handler  # the handler is put back
    monkeypatch.setattr(SAC, "learn", learn)
    assert sac.main([*args, "--steps", "500"]) == 0 and "resuming Pendulum-v1 at 430" in capsys.readouterr().out
    assert not list((tmp_path / "tmp").iterdir())  # no empty SB3-<time> folder left behind per learn() call


def test_every_locomotion_recipe_fits_its_environment():
    """A locomotion recipe's model sees [action, state] (or the states alone in Decision Diffuser's formulation): its
    transition_dim and action_dim are the environment's, so a recipe written for another environment fails here, not
    after its dataset is generated."""
    import gymnasium as gym
    from diffsuite.modalities.trajectory.locomotion import D4RL_REFERENCE
    from diffsuite.recipes import run
    seen = set()
    for name in run.list_recipes():
        r = run.load_recipe(name)
        env_id = getattr(r.data, "env_id", None)
        if r.task != "trajectory" or env_id not in D4RL_REFERENCE:
            continue
        env = gym.make(env_id)
        S, A = env.observation_space.shape[0], env.action_space.shape[0]
        env.close()
        a = 0 if r.data.formulation == "decision_diffuser" else A
        assert (r.model.transition_dim, r.model.action_dim) == (S + a, a), (name, env_id, S, A)
        seen.add(env_id)
    assert {"Hopper-v5", "Walker2d-v5", "HalfCheetah-v5"} <= seen


def test_episode_returns_split_at_terminals_and_timeouts():
    from diffsuite.modalities.trajectory.locomotion import episode_returns
    r = [1, 1, 1, 2, 2, 3, 3, 3, 5]
    term = [0, 0, 1, 0, 0, 0, 0, 1, 0]
    tout = [0, 0, 0, 0, 1, 0, 0, 0, 0]
    assert episode_returns(r, term, tout).tolist() == [3, 4, 9]  # the last step ends no episode: not one


def test_reference_rows_score_the_data_bc_and_every_replay_snapshot(tmp_path, monkeypatch):
    """benchmarks/locomotion/evaluate.py's rows beside the planner: the dataset's own episodes, behaviour cloning, and
    on medium-replay each snapshot and their pooled mixture."""
    import json
    from types import SimpleNamespace
    from diffsuite.modalities.trajectory import locomotion as L
    from diffsuite.modalities.trajectory.task import TrajectoryDataConfig, locomotion_arrays
    E = _evaluate_module()
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path / "cache"))
    folder = _actors(tmp_path / "actors")
    levels = {"expert": 30, "medium": 30, "replay": [10, 20, 30]}
    (folder / "levels.json").write_text(json.dumps(levels))
    d = TrajectoryDataConfig(env_id="Hopper-v5", dataset="medium-replay", actors=str(folder), size=600, horizon=8,
                             normalizer="gaussian")
    rows = E.reference_rows(SimpleNamespace(episodes=2, seed=0, bc_steps=5), d, folder, levels,
                            {"random": 0.0, "expert": 100.0})
    names = [r["method"] for r in rows]
    a = locomotion_arrays(d)
    data = L.episode_returns(a["rewards"], a["terminals"], a["timeouts"])
    assert names[0] == f"the dataset's episodes ({len(data)})" and rows[0]["return_mean"] == pytest.approx(data.mean())
    assert names[1] == "behaviour cloning (MLP 256-256)"
    assert names[2:5] == [f"behaviour policy (SAC actor at {s} steps, stochastic)" for s in (10, 20, 30)]
    assert rows[5]["episodes"] == 6 and rows[5]["return_mean"] == pytest.approx(np.mean([r["return_mean"]
                                                                                         for r in rows[2:5]]))


def test_an_interrupted_planner_evaluation_resumes_from_its_episode_log(tmp_path, monkeypatch):
    import json
    from pathlib import Path
    from types import SimpleNamespace
    import diffsuite.modalities.trajectory.cli as cli
    import diffsuite.modalities.trajectory.locomotion as L
    import diffsuite.recipes.run as run_mod
    ev = _evaluate_module()
    played = []

    def episode(env_id, planner, seed, replan_every):
        played.append(seed)
        if seed == 12:
            raise KeyboardInterrupt  # the user stops the evaluation during its third episode
        return {"seed": seed, "return": float(seed), "length": 3, "terminated": False, "plan_seconds": [0.1, 0.2]}

    import diffsuite.core.checkpoint as ckpt_mod
    monkeypatch.setattr(run_mod, "load", lambda run: SimpleNamespace(
        checkpoint=Path(run) / "ckpt", recipe=SimpleNamespace(data=SimpleNamespace(env_id="Hopper-v5"))))
    monkeypatch.setattr(run_mod, "resolve_checkpoint", lambda run: Path(run) / "ckpt")
    weights = {"sha": "a"}
    monkeypatch.setattr(ckpt_mod, "weights_sha256", lambda path: weights["sha"])
    monkeypatch.setattr(cli, "_planner", lambda opts, loaded: None)
    monkeypatch.setattr(L, "planned_episode", episode)
    opts = {"candidates": 16, "guide_scale": 0.1}
    with pytest.raises(KeyboardInterrupt):
        ev.planner_episodes(str(tmp_path), opts, [10, 11, 12, 13], 1)
    log = ev.episode_log(str(tmp_path), opts, 1)
    with open(log, "a") as f:
        f.write('{"seed": 12, "ret')  # a line torn by the interruption is ignored
    assert sorted(ev.logged_episodes(log)) == [10, 11]
    played.clear()
    monkeypatch.setattr(L, "planned_episode", lambda env_id, planner, seed, r: played.append(seed) or {
        "seed": seed, "return": float(seed), "length": 3, "terminated": False, "plan_seconds": [0.1]})
    eps = ev.planner_episodes(str(tmp_path), opts, [10, 11, 12, 13], 1)
    assert played == [12, 13] and [e["seed"] for e in eps] == [10, 11, 12, 13]
    assert sorted(ev.logged_episodes(log)) == [10, 11, 12, 13]
    assert ev.episode_log(str(tmp_path), {**opts, "guide_scale": 0.2}, 1) != log  # other settings, another log
    weights["sha"] = "b"
    assert ev.episode_log(str(tmp_path), opts, 1) != log  # the run retrained in place: another log
    assert json.loads(log.read_text().splitlines()[0])["plan_seconds"] == [0.1, 0.2]


def test_observation_names_fit_each_environment():
    """locomotion.OBSERVATION_NAMES names every dimension of each environment's observation, in gymnasium's order."""
    import gymnasium as gym
    for env_id, names in OBSERVATION_NAMES.items():
        env = gym.make(env_id)
        assert env.observation_space.shape == (len(names),) and names[:2] == ["height", "pitch"], env_id
        env.close()
