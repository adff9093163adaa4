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
