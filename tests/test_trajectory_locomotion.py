"""Locomotion behaviour policies (modalities.trajectory.locomotion): SAC's actor read out of Stable-Baselines3 acts as
SB3 does, saves and loads exactly, and its stochastic actions follow a seeded generator."""
import numpy as np
import pytest
import torch

from diffsuite.modalities.trajectory.locomotion import Actor, actor_from_sb3, evaluate_actor, load_actor, save_actor

torch.set_num_threads(1)


def test_the_actor_acts_as_stable_baselines3_does():
    import gymnasium as gym
    import stable_baselines3 as sb3
    env = gym.make("Hopper-v5")
    model = sb3.SAC("MlpPolicy", env, seed=0, device="cpu", learning_starts=10, policy_kwargs={"net_arch": [32, 32]})
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
