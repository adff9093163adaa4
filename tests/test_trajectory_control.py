"""The plan-tracking controller (planner.track) in the real PointMaze: it must follow a plan whose route is right but
whose planned velocities are noise (what a briefly trained model produces), and head for the goal after the plan."""
import numpy as np
import pytest


def _noisy_corridor_plan(rng, H=64):
    """Top corridor of U-Maze, right to left at expert speed (0.03 per step); velocities replaced by N(0, 3^2) noise."""
    x = np.linspace(1.0, -1.0, H)
    states = np.stack([x, np.full(H, 1.0), np.zeros(H), np.zeros(H)], 1)
    states[1:, :2] += rng.normal(0, 0.03, (H - 1, 2))
    states[1:, 2:] = rng.normal(0, 3.0, (H - 1, 2))
    return states


def _start(env):
    """Reset U-Maze and put the point exactly at the corridor plan's first state, at rest."""
    env.reset(seed=0, options={"goal_cell": np.array([1, 1]), "reset_cell": np.array([1, 3])})
    point = env.unwrapped.point_env
    point.set_state(np.array([1.0, 1.0]), np.zeros(2))
    return np.concatenate([point.data.qpos, point.data.qvel])


def _follow(env, states, steps, **gains):
    from diffsuite.modalities.trajectory.planner import track
    o = _start(env)
    path = [o.copy()]
    for k in range(steps):
        o = env.step(track(states, np.zeros((len(states), 2)), k, o, "pd", **gains))[0]["observation"]
        path.append(o.copy())
    return np.array(path)


@pytest.fixture(scope="module")
def env():
    maze = pytest.importorskip("diffsuite.modalities.trajectory.maze")
    e = maze.make_env("PointMaze_UMaze-v3")
    yield e
    e.close()


def test_default_gains_keep_up_with_a_noisy_plan_and_reach_its_end(env):
    rng = np.random.default_rng(0)
    states = _noisy_corridor_plan(rng)
    path = _follow(env, states, len(states))
    # on schedule: at the plan's last step the agent is near the plan's end (-1, 1)
    assert np.linalg.norm(path[len(states) - 1, :2] - states[-1, :2]) < 0.3
    # after the plan: head for its last state (the goal) and settle there
    path = _follow(env, states, len(states) + 60)
    assert np.linalg.norm(path[-1, :2] - states[-1, :2]) < 0.1 and np.linalg.norm(path[-1, 2:]) < 0.5


def test_diffuser_unit_gains_fall_behind_the_same_plan(env):
    """Why PD_KP is 10: with Diffuser's kp = 1 the velocity noise dominates and the agent lags far behind the plan."""
    path = _follow(env, _noisy_corridor_plan(np.random.default_rng(0)), 64, kp=1.0, kd=1.0)
    assert np.linalg.norm(path[63, :2] - np.array([-1.0, 1.0])) > 0.5


def test_track_after_the_plan_targets_the_last_state_at_rest():
    from diffsuite.modalities.trajectory.planner import track
    states = np.array([[0.0, 0.0, 1.0, 1.0], [0.5, 0.0, 2.0, -2.0]])
    a = track(states, np.zeros((2, 2)), 5, np.array([0.45, 0.0, 0.0, 0.0]), kp=10.0, kd=1.0)
    np.testing.assert_allclose(a, [0.5, 0.0], atol=1e-6)  # 10 * 0.05, no planned velocity past the end


def test_pursuit_follows_a_slow_plan_as_a_path(env):
    """The same corridor route stretched over 256 steps: time-indexed tracking is still on the way at step 128, while
    pursuit (planner.pursue) arrives at the expert's pace and stays in the corridor."""
    from diffsuite.modalities.trajectory.planner import pursue
    states = _noisy_corridor_plan(np.random.default_rng(0), H=256)
    assert np.linalg.norm(_follow(env, states, 128)[-1, :2] - states[-1, :2]) > 0.5
    o, j, path = _start(env), 0, []
    for _ in range(128):
        a, j = pursue(states, j, o)
        o = env.step(a)[0]["observation"]
        path.append(o.copy())
    path = np.array(path)
    arrived = np.flatnonzero(np.linalg.norm(path[:, :2] - states[-1, :2], axis=1) < 0.2)
    assert arrived.size and arrived[0] < 100, arrived[:1]
    assert np.abs(path[:, 1] - 1.0).max() < 0.35
