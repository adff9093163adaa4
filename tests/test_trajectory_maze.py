"""PointMaze generator and waypoint expert: the expert reaches goals, the dataset is reproducible and cached."""
import numpy as np
import pytest

from diffsuite.modalities.trajectory.evaluate import d4rl_controller, expert_policy, reference_returns, run_policy
from diffsuite.modalities.trajectory.generate import GenSettings, dataset_path, generate, load_npz, save_npz
from diffsuite.modalities.trajectory.maze import MAZES, SUCCESS_RADIUS, MazeGrid, make_env, set_goal


@pytest.mark.parametrize("env_id", sorted(MAZES.values()))
def test_expert_reaches_goal_in_each_maze(env_id):
    env = make_env(env_id)
    for seed in range(3):
        ep = run_policy(env, expert_policy(env, np.random.default_rng(seed)), multi_task=True, seed=seed)
        assert ep["success"], f"{env_id} seed {seed}: expert ended {ep['final_distance']:.2f} from the goal"
        assert ep["final_distance"] <= SUCCESS_RADIUS
    env.close()


def test_grid_matches_gymnasium_coordinates():
    env = make_env("PointMaze_Medium-v3")
    grid, maze = MazeGrid.from_env(env), env.unwrapped.maze
    for cell in grid.free_cells:
        np.testing.assert_allclose(grid.cell_xy(cell), maze.cell_rowcol_to_xy(np.array(cell)))
        assert grid.xy_cell(grid.cell_xy(cell)) == cell
    path = grid.path((1, 1), (6, 6))
    assert path[0] == (1, 1) and path[-1] == (6, 6)
    assert all(abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1 and not grid.walls[b] for a, b in zip(path, path[1:]))


def test_in_wall_fraction_counts_planned_positions_inside_walls():
    from diffsuite.modalities.trajectory.evaluate import in_wall_fraction
    env = make_env("PointMaze_UMaze-v3")
    grid = MazeGrid.from_env(env)
    path = [grid.cell_xy(c) for c in grid.path((1, 1), (3, 1))]  # around the U: every point in a free cell
    assert in_wall_fraction(grid, np.array(path)) == 0.0
    a, b = grid.cell_xy((1, 1)), grid.cell_xy((3, 1))  # straight through the U's inner wall, cell (2, 1)
    t = (np.arange(8) + 0.5) / 8  # the wall cell is the middle half of the segment: 4 of these 8 points
    assert in_wall_fraction(grid, a + t[:, None] * (b - a)) == 0.5
    env.close()


def test_wall_penetration_is_zero_clear_of_walls_and_pushes_out_of_them():
    import torch
    from diffsuite.modalities.trajectory.maze import AGENT_RADIUS
    env = make_env("PointMaze_UMaze-v3")
    grid = MazeGrid.from_env(env)
    env.close()
    free = torch.tensor(np.array([grid.cell_xy(c) for c in grid.free_cells]))[None]
    assert grid.wall_penetration(free).item() == 0.0  # cell centres: 0.5 from every wall, more than the radius
    depth = grid.scale / 2 + AGENT_RADIUS
    wall = torch.tensor(grid.cell_xy((2, 1)))  # the U's inner wall cell: only that cell overlaps its centre
    assert grid.wall_penetration(wall[None, None]).item() == pytest.approx(depth ** 2)
    # 0.05 from the wall's face, beside it: the disc enters by 0.05 across, the full depth along it
    near = (wall + torch.tensor([0.0, grid.scale / 2 + 0.05])).requires_grad_(True)
    pen = grid.wall_penetration(near[None, None])
    assert pen.item() == pytest.approx((AGENT_RADIUS - 0.05) * depth)
    pen.backward()
    assert near.grad[1] < 0 and abs(near.grad[0]) < 1e-9  # descending it moves the point away from the wall


def test_make_env_leaves_no_maze_xml_behind(tmp_path, monkeypatch):
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    env = make_env("PointMaze_UMaze-v3")
    assert tempfile.tempdir == str(tmp_path) and list(tmp_path.iterdir()) == []
    env.reset(seed=0)
    obs, *_ = env.step(np.ones(2))  # the model was loaded before its XML went
    assert np.isfinite(obs["observation"]).all()
    env.close()


def test_set_goal_without_reset_moves_goal():
    env = make_env("PointMaze_UMaze-v3")
    obs, _ = env.reset(seed=0)
    set_goal(env, np.array([1.0, 1.0]))
    obs, *_ = env.step(np.zeros(2))
    np.testing.assert_allclose(obs["desired_goal"], [1.0, 1.0])


def test_stream_flags_and_reproducibility(tmp_path):
    s = GenSettings(n_steps=1500, seed=3)
    a, b, c = generate(s, progress=False), generate(s, progress=False), generate(GenSettings(n_steps=1500, seed=4), progress=False)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["observations"], c["observations"])
    assert a["terminals"].sum() > 3, "the expert should arrive at several goals in 1500 steps"
    # a terminal step lands within the radius of that step's goal, and the goal changes right after it
    t = np.flatnonzero(a["terminals"])[:-1]
    assert np.all(np.linalg.norm(a["observations"][t + 1, :2] - a["goals"][t], axis=1) <= SUCCESS_RADIUS)
    assert np.all(np.any(a["goals"][t + 1] != a["goals"][t], axis=1))
    assert np.all(np.abs(a["actions"]) <= 1)
    save_npz(tmp_path / "d.npz", a, s)
    data, settings = load_npz(tmp_path / "d.npz")
    assert settings["seed"] == 3 and settings["n_steps"] == 1500
    np.testing.assert_array_equal(data["rewards"], a["rewards"])


def test_dataset_cache_with_manifest(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path))
    s = GenSettings(n_steps=300, seed=1)
    p = dataset_path(s, progress=False)
    assert (p.parent / "manifest.json").is_file()
    mtime = p.stat().st_mtime_ns
    assert dataset_path(s, progress=False) == p and p.stat().st_mtime_ns == mtime  # reused, not regenerated


def test_d4rl_reference_protocol_keeps_the_first_episodes_waypoints():
    """D4RL's reference script shares one controller across single-task episodes and re-plans only on a new target
    cell, so later episodes started behind the U-Maze wall stall (return 0); a fresh expert reaches the goal."""
    env = make_env("PointMaze_UMaze-v3")
    shared = d4rl_controller(env, np.random.default_rng(0))
    d4rl = [run_policy(env, expert_policy(env, None, shared), False, s) for s in range(8)]
    fresh = [run_policy(env, expert_policy(env, np.random.default_rng(0)), False, s) for s in range(8)]
    env.close()
    assert all(e["success"] for e in fresh) and d4rl[0]["success"]
    stalled = [i for i, e in enumerate(d4rl) if e["return"] == 0]
    assert stalled and 0 not in stalled
    assert all(fresh[i]["return"] > 0 for i in stalled)


def test_reference_protocol_is_checked():
    with pytest.raises(ValueError, match="protocol 'x'.*replan, d4rl"):
        reference_returns("PointMaze_UMaze-v3", False, protocol="x")
