"""`diffsuite plan` end to end on a briefly trained (essentially random) checkpoint; TrajectoryTask plumbing."""
import json

import numpy as np
import pytest

RECIPE = {
    "task": "trajectory",
    "model": {"transition_dim": 6, "dim": 8, "dim_mults": [1, 2]},
    "data": {"env_id": "PointMaze_UMaze-v3", "size": "1500", "horizon": 16, "episode_ends": "timeouts"},
    "diffusion": {"schedule": "cosine", "T": 10, "prediction": "x0", "clip_x0": "clip"},
    "train": {"steps": 2, "batch_size": 4, "log_every": 1, "tensorboard": False, "progress": False},
    "sample": {"sampler": "ddim", "steps": 4, "n": 2},
}


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path / "cache"))
    run = pytest.importorskip("diffsuite.recipes.run")
    return run.train(RECIPE, out_dir=tmp_path / "run")


def test_plan_command_runs_one_episode(run_dir, tmp_path):
    from diffsuite.recipes.cli import main
    out = tmp_path / "plan"
    rc = main(["plan", str(run_dir), "--env", "PointMaze_UMaze-v3", "--episodes", "1", "--steps", "3",
               "--replan-every", "100", "--reference-episodes", "2", "--out", str(out)])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    for k in ("success_rate", "return_mean", "normalized_score", "normalized_score_d4rl", "plan_seconds_mean",
              "plan_seconds_p95", "plan_in_wall"):
        assert np.isfinite(s[k]), k
    assert 0 <= s["plan_in_wall"] <= 1
    traj = json.loads((out / "trajectories.json").read_text())
    assert len(traj) == 1 and len(traj[0]["executed"]) == 301 and len(traj[0]["planned"]) == 3  # t = 0, 100, 200
    assert np.array(traj[0]["planned"][0]).shape == (16, 4)
    assert (out / "plans.png").stat().st_size > 0


def test_plan_command_shrinking_horizon_replans(run_dir, tmp_path):
    from diffsuite.recipes.cli import main
    out = tmp_path / "plan"
    rc = main(["plan", str(run_dir), "--env", "PointMaze_UMaze-v3", "--episodes", "1", "--steps", "2",
               "--replan-every", "4", "--shrink-horizon", "--shrink-min", "4", "--reference-episodes", "2",
               "--out", str(out)])
    assert rc == 0
    lengths = [len(p) for p in json.loads((out / "trajectories.json").read_text())[0]["planned"]]
    # each replan covers what is left of the previous plan; one due within shrink_min steps is followed to its end
    assert lengths == [16, 12, 8], lengths
    assert json.loads((out / "summary.json").read_text())["shrink_horizon"] is True


def test_plan_command_pursuit_control(run_dir, tmp_path):
    from diffsuite.recipes.cli import main
    out = tmp_path / "plan"
    rc = main(["plan", str(run_dir), "--env", "PointMaze_UMaze-v3", "--episodes", "1", "--steps", "2",
               "--control", "pursuit", "--lookahead", "0.5", "--reference-episodes", "2", "--out", str(out)])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert (s["control"], s["lookahead"]) == ("pursuit", 0.5)
    assert len(json.loads((out / "trajectories.json").read_text())[0]["executed"]) == 301


def test_plan_command_avoid_walls_ranks_candidates(run_dir, tmp_path, capsys):
    from diffsuite.recipes.cli import main
    out = tmp_path / "plan"
    rc = main(["plan", str(run_dir), "--env", "PointMaze_UMaze-v3", "--episodes", "1", "--steps", "2",
               "--candidates", "3", "--avoid-walls", "--reference-episodes", "2", "--out", str(out)])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["avoid_walls"] is True and s["planner"]["n_candidates"] == 3 and s["planner"]["guidance"] == "none"
    assert main(["plan", str(run_dir), "--episodes", "1", "--avoid-walls", "--out", str(out)]) == 2
    assert "--avoid-walls ranks --candidates" in capsys.readouterr().err


def test_task_dataset_shape_and_samples(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path))
    import torch
    from diffsuite.core.config import from_dict
    from diffsuite.modalities.trajectory.task import TrajectoryTask
    task = TrajectoryTask()
    m, d = from_dict(task.ModelConfig, RECIPE["model"]), from_dict(task.DataConfig, RECIPE["data"])
    assert task.sample_shape(m, d) == (16, 6)
    tr, va = task.build_dataset(d, "train"), task.build_dataset(d, "val")
    assert tr[0]["x0"].shape == (16, 6) and len(tr) > 0 and len(va) > 0
    assert torch.equal(tr[0]["cond"], tr[0]["x0"][[0, -1], 2:])  # clean start and goal states (Diffuser's conditioning)
    assert task.sample_cond(3, type("C", (), {"data": d}), torch.Generator().manual_seed(0)).shape == (3, 2, 4)
    with pytest.raises(ValueError, match="transition_dim"):
        task.sample_shape(from_dict(task.ModelConfig, {"transition_dim": 5}), d)

    class Cfg:
        data = d
    files = task.save_samples(torch.zeros(2, 16, 6), None, tmp_path / "s", Cfg)
    assert len(json.loads(open(files["json"]).read())["observations"]) == 2


def test_train_value_then_value_guided_plan(run_dir, tmp_path):
    from diffsuite.recipes.cli import main
    assert main(["train-value", str(run_dir), "--steps", "3", "--batch-size", "4", "--out", str(tmp_path / "v")]) == 0
    out = tmp_path / "plan"
    rc = main(["plan", str(run_dir), "--episodes", "1", "--steps", "3", "--replan-every", "150", "--candidates", "3",
               "--value", str(tmp_path / "v"), "--guidance", "value", "--multi-task", "--sampler", "ddpm",
               "--reference-episodes", "2", "--out", str(out)])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["planner"]["guidance"] == "value" and s["multi_task"] is True


@pytest.mark.parametrize("name", ["trajectory_umaze_quick", "trajectory_umaze_demo", "trajectory_pointmaze_umaze",
                                  "trajectory_pointmaze_medium", "trajectory_pointmaze_large"])
def test_recipes_load_with_valid_horizons(name):
    run = pytest.importorskip("diffsuite.recipes.run")
    r = run.load_recipe(name)
    assert r.task == "trajectory" and r.data.horizon % 2 ** (len(r.model.dim_mults) - 1) == 0
    assert r.diffusion.prediction == "x0" and r.data.normalizer == "limits"
    assert r.sample.steps <= r.diffusion.T
