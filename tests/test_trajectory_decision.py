"""Decision Diffuser (Ajay et al. 2023) as a trajectory formulation: states-only windows conditioned on their scaled
return (NaN: the null condition), inverse dynamics for the actions, and a tiny run planned end to end."""
import json

import numpy as np
import pytest
import torch

from diffsuite.modalities.trajectory.data import SequenceDataset, states_normalizer
from diffsuite.modalities.trajectory.temporal_unet import ConditionedTemporalUnet, ReturnsEmbedding


def _seq(n=60, S=3, A=2, seed=0):
    rng = np.random.default_rng(seed)
    obs, act = rng.normal(size=(n, S)).astype(np.float32), rng.normal(size=(n, A)).astype(np.float32)
    rew = rng.normal(size=n)
    timeouts = np.zeros(n, bool)
    timeouts[29] = True
    return SequenceDataset(obs, act, rew, np.zeros(n, bool), timeouts, 4, "gaussian", discount=0.9)


def test_null_return_has_zero_embedding_and_finite_gradients():
    emb = ReturnsEmbedding(8)
    y = torch.tensor([[0.5], [float("nan")], [-0.2]])
    e = emb(y)
    assert torch.equal(e[1], torch.zeros(8)) and e[0].abs().sum() > 0
    e.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in emb.parameters())


def test_the_return_condition_changes_the_prediction_and_the_states_are_held():
    torch.manual_seed(0)
    net = ConditionedTemporalUnet(3, 0, 8, (1, 2), returns_cond=True)
    x, t = torch.randn(2, 4, 3), torch.tensor([5, 5])
    states = torch.randn(2, 1, 3)
    a = net(x, t, {"states": states, "returns": torch.tensor([[0.9], [0.9]])})
    b = net(x, t, {"states": states, "returns": torch.tensor([[0.1], [0.1]])})
    c = net(x, t, {"states": states, "returns": torch.full((2, 1), float("nan"))})
    assert not torch.allclose(a, b) and not torch.allclose(a, c) and torch.isfinite(c).all()
    x2 = x.clone()
    x2[:, 0] = 100.0  # the start state is overwritten by the clean one: what x_t held there does not matter
    torch.testing.assert_close(net(x2, t, {"states": states, "returns": torch.zeros(2, 1)}),
                               net(x, t, {"states": states, "returns": torch.zeros(2, 1)}))
    with pytest.raises(ValueError, match="returns"):
        net(x, t, states)


def test_decision_items_are_states_with_their_scaled_return():
    from diffsuite.modalities.trajectory.task import decision_item
    seq = _seq()
    for i in (0, 7, 40):
        item = decision_item(seq, i, "start")
        torch.testing.assert_close(item["x0"], seq[i][:, 2:])
        torch.testing.assert_close(item["cond"]["states"], seq[i][:1, 2:])
        assert item["cond"]["returns"].item() == pytest.approx(seq.window_return(i) / seq.return_scale, rel=1e-6)
    assert max(abs(seq.window_return(i)) for i in range(len(seq))) <= seq.return_scale + 1e-9
    # the states' normaliser is the joint one restricted to the states
    raw = np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)
    joint = np.concatenate([np.zeros((5, 2), np.float32), raw], 1)
    np.testing.assert_allclose(states_normalizer(seq.normalizer, 2).normalize(raw), seq.normalizer.normalize(joint)[:, 2:],
                               rtol=1e-5, atol=1e-6)


def test_inverse_dynamics_recover_the_actions_of_known_dynamics():
    from diffsuite.modalities.trajectory.inverse import plan_actions, train_inverse, transitions
    rng = np.random.default_rng(0)
    n, K = 3000, np.array([[1.0, 0.5], [-0.5, 1.0], [0.2, 0.0]], np.float32)  # s' = s + K a
    act = rng.uniform(-1, 1, size=(n, 2)).astype(np.float32)
    obs = np.zeros((n, 3), np.float32)
    obs[0] = rng.normal(size=3)
    for k in range(n - 1):
        obs[k + 1] = obs[k] + K @ act[k]
    timeouts = np.zeros(n, bool)
    timeouts[999::1000] = True
    seq = SequenceDataset(obs, act, np.zeros(n), np.zeros(n, bool), timeouts, 4, "gaussian")
    pairs, a = transitions(seq)
    assert len(pairs) == n - 3  # no pair across the two episode ends nor past the stream's end
    f = train_inverse(seq, steps=1500, seed=0)
    err = np.abs(plan_actions(f, obs[None, :200]) - act[None, :199]).mean()
    assert err < 0.05, err


def test_a_misconfigured_decision_recipe_says_what_to_set(tmp_path, monkeypatch):
    from diffsuite.recipes import run
    from test_trajectory_locomotion import _actors
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path / "cache"))
    r = _recipe(_actors(tmp_path / "actors"))
    r["model"]["transition_dim"] = 14
    with pytest.raises(ValueError, match="model.transition_dim=11"):
        run.train(r, out_dir=tmp_path / "run")


def _recipe(actors):
    return {"task": "trajectory", "name": "dd_test",
            "model": {"transition_dim": 11, "action_dim": 0, "dim": 8, "dim_mults": [1, 2], "returns_cond": True},
            "data": {"env_id": "Hopper-v5", "dataset": "medium", "actors": str(actors), "size": "2000", "horizon": 8,
                     "normalizer": "gaussian", "condition": "start", "discount": 0.99,
                     "formulation": "decision_diffuser"},
            "diffusion": {"schedule": "cosine", "T": 20, "prediction": "eps", "cond_drop_prob": 0.25},
            "train": {"steps": 3, "batch_size": 4, "lr": 1e-3, "progress": False, "tensorboard": False},
            "sample": {"sampler": "ddim", "steps": 3, "n": 2}}


def test_a_tiny_decision_diffuser_run_end_to_end(tmp_path, monkeypatch, capsys):
    """Train a few steps, sample with a return condition, train inverse dynamics, plan two short episodes."""
    from diffsuite.recipes import run
    from diffsuite.recipes.cli import main
    from test_trajectory_locomotion import _actors
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path / "cache"))
    out = run.train(_recipe(_actors(tmp_path / "actors")), out_dir=tmp_path / "run")
    a = run.load(out)
    cond = a.task.sample_cond(2, a.recipe)
    assert cond["states"].shape == (2, 1, 11) and cond["returns"].shape == (2, 1)
    x, _ = run.generate(a.denoiser, a.task, a.recipe, n=2, cond=cond, guidance=0.2, progress=False)
    assert x.shape == (2, 8, 11) and torch.isfinite(x).all()
    args = ["plan", str(out), "--episodes", "2", "--reference-episodes", "2", "--steps", "2", "--out", str(tmp_path / "p")]
    assert main(args) != 0  # no inverse dynamics yet: a one-line error naming the command
    assert "diffsuite train-inverse" in capsys.readouterr().err
    assert main(["train-inverse", str(out), "--steps", "20"]) == 0
    assert main(args) == 0
    s = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert s["episodes"] == 2 and s["planner"]["target_return"] == 0.9 and np.isfinite(s["normalized_score"])
