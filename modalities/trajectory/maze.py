"""PointMaze (gymnasium-robotics v3) helpers: making the env, the maze grid, BFS over cells, the waypoint expert.

How gymnasium-robotics PointMaze relates to D4RL maze2d (both are MuJoCo point masses in the same maps):

* Coordinates. D4RL puts the centre of cell (row i, col j) at (x, y) = (i, j) (row first, origin at the
  top-left wall cell). gymnasium-robotics centres the maze at the origin and flips y:
  x = (j + 0.5) - W / 2, y = H / 2 - (i + 0.5) for a map of H rows and W columns (cell size 1).
  Observations are (x, y, vx, vy) in both; actions are forces in [-1, 1]^2.
* Success. gymnasium-robotics counts the goal reached when ||achieved - goal|| <= 0.45 (D4RL: 0.5);
  the sparse reward is 1 on every such step.
* Goal after success. With the default `continuing_task=True, reset_target=False`, the goal stays where it
  is after success and the episode only ends at the time limit (300 / 600 / 800 steps for U-Maze /
  Medium / Large), as in D4RL's evaluation. D4RL's *dataset* instead moves the goal on arrival; we do that
  ourselves (see `set_goal`) without resetting the agent.

Generator and evaluation use the same radius (0.45), the same coordinates and the same sparse reward, so
the returns in the dataset, the reference returns and the evaluation returns are on one scale.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from diffsuite.core.config import ConfigError

MAZES = {"umaze": "PointMaze_UMaze-v3", "medium": "PointMaze_Medium-v3", "large": "PointMaze_Large-v3"}
SUCCESS_RADIUS = 0.45
AGENT_RADIUS = 0.1  # the point mass's collision sphere (gymnasium-robotics assets/point/point.xml)
#: the fixed goal cell (row, col) of single-task evaluation: the "G" cell of D4RL's maze2d maps (same map indices)
EVAL_GOAL_CELL = {"PointMaze_UMaze-v3": (1, 1), "PointMaze_Medium-v3": (6, 6), "PointMaze_Large-v3": (7, 10)}


def env_id_for(name: str) -> str:
    """'umaze' / 'PointMaze_UMaze-v3' -> the gymnasium id; a clear error for anything else."""
    if name in MAZES.values():
        return name
    if name.lower() in MAZES:
        return MAZES[name.lower()]
    raise ConfigError(f"unknown maze {name!r}; valid: {sorted(MAZES)} or {sorted(MAZES.values())}")


def make_env(env_id: str, **kwargs):
    """gym.make a PointMaze after registering gymnasium-robotics' environments.

    gymnasium-robotics writes each maze's MuJoCo XML beside its own temporary folder (in the system temp dir) and
    never deletes it; building the env with the temp dir pointed at a private folder, removed once the model is
    loaded, stops one file per env piling up."""
    import tempfile

    import gymnasium as gym
    import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)
    kwargs.setdefault("continuing_task", True)
    kwargs.setdefault("reset_target", False)
    with tempfile.TemporaryDirectory(prefix="diffsuite-maze-") as private:
        system, tempfile.tempdir = tempfile.tempdir, private
        try:
            return gym.make(env_id_for(env_id), **kwargs)
        finally:
            tempfile.tempdir = system


def set_goal(env, goal_xy: np.ndarray) -> None:
    """Move the goal of a running env without reset (env.unwrapped.goal and the target site used for drawing)."""
    u = env.unwrapped
    u.goal = np.asarray(goal_xy, dtype=np.float64).copy()
    u.update_target_site_pos()


@dataclass
class MazeGrid:
    """The discrete maze: free cells and the cell <-> xy maps of gymnasium-robotics (cell size `scale`)."""

    walls: np.ndarray  # (H, W) bool, True where a wall is
    scale: float = 1.0

    @classmethod
    def from_env(cls, env) -> "MazeGrid":
        m = env.unwrapped.maze
        walls = np.array([[c == 1 for c in row] for row in m.maze_map], dtype=bool)
        return cls(walls, float(m.maze_size_scaling))

    @property
    def free_cells(self) -> list[tuple[int, int]]:
        return [tuple(int(v) for v in c) for c in np.argwhere(~self.walls)]

    def cell_xy(self, cell) -> np.ndarray:
        """Centre of cell (i, j) in gymnasium-robotics coordinates."""
        H, W = self.walls.shape
        i, j = cell
        return np.array([(j + 0.5) * self.scale - W / 2 * self.scale, H / 2 * self.scale - (i + 0.5) * self.scale])

    def xy_cell(self, xy) -> tuple[int, int]:
        """The cell (i, j) containing point xy (clamped to the map)."""
        H, W = self.walls.shape
        i = int(np.floor((H / 2 * self.scale - xy[1]) / self.scale))
        j = int(np.floor((xy[0] + W / 2 * self.scale) / self.scale))
        return min(max(i, 0), H - 1), min(max(j, 0), W - 1)

    @cached_property
    def wall_centres(self) -> np.ndarray:
        """(N, 2) centres of the wall cells."""
        return np.stack([self.cell_xy(c) for c in np.argwhere(self.walls)])

    def point_penetration(self, xy, margin: float = AGENT_RADIUS):
        """Per point of xy (a (..., 2) tensor): the sum over wall cells of the product of the two per-axis depths by
        which the point's disc (its bounding box of half-width `margin`) enters the cell. With margin 0 it is > 0
        exactly when the point lies inside a wall cell; differentiable in xy."""
        import torch
        centres = torch.as_tensor(self.wall_centres, dtype=xy.dtype, device=xy.device)
        depth = (self.scale / 2 + margin - (xy[..., None, :] - centres).abs()).clamp(min=0)
        return (depth[..., 0] * depth[..., 1]).sum(dim=-1)

    def wall_penetration(self, xy, margin: float = AGENT_RADIUS):
        """How far plans run into walls: per plan (xy a (..., H, 2) tensor), point_penetration summed over its
        points. 0 for a plan clear of every wall."""
        return self.point_penetration(xy, margin).sum(dim=-1)

    def neighbours(self, cell):
        i, j = cell
        for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            n = (i + di, j + dj)
            if 0 <= n[0] < self.walls.shape[0] and 0 <= n[1] < self.walls.shape[1] and not self.walls[n]:
                yield n

    def distances_to(self, goal_cell) -> dict:
        """Breadth-first search: number of cell moves from every free cell to goal_cell."""
        dist, queue = {tuple(goal_cell): 0}, deque([tuple(goal_cell)])
        while queue:
            c = queue.popleft()
            for n in self.neighbours(c):
                if n not in dist:
                    dist[n] = dist[c] + 1
                    queue.append(n)
        return dist

    def path(self, start_cell, goal_cell) -> list[tuple[int, int]]:
        """Shortest cell path start -> goal (both included), following the BFS distance field."""
        dist = self.distances_to(goal_cell)
        if tuple(start_cell) not in dist:
            raise ValueError(f"MazeGrid.path: cell {start_cell} cannot reach {goal_cell}")
        path = [tuple(start_cell)]
        while path[-1] != tuple(goal_cell):
            path.append(min(self.neighbours(path[-1]), key=lambda n: dist.get(n, 1 << 30)))
        return path


class WaypointController:
    """D4RL maze2d's expert: plan over cells (BFS), track jittered cell centres with a = clip(kp (w - p) - kd v, -1, 1).

    jitter: +-jitter uniform around each cell centre, or "d4rl" for D4RL's own offsets (U[0, 0.2) subtracted from
    the (row, col) position, i.e. -u_col in x and +u_row in y here). waypoint_radius: the next waypoint is taken
    within this distance (D4RL's solve_thresh is 0.1; 0.3 here by default, which keeps the agent moving). D4RL's
    second condition, a step shorter than 0.1, always holds in PointMaze (|v| <= 5, dt = 0.01).
    """

    def __init__(self, grid: MazeGrid, rng: np.random.Generator, kp: float = 10.0, kd: float = 1.0,
                 jitter: float | str = 0.1, waypoint_radius: float = 0.3):
        self.grid, self.rng, self.kp, self.kd = grid, rng, kp, kd
        self.jitter, self.waypoint_radius = jitter, waypoint_radius
        self.goal = None
        self.waypoints: list[np.ndarray] = []

    def set_goal(self, goal_xy, position) -> None:
        """Re-plan the cell path from the current position to a new goal; jitter each intermediate waypoint."""
        self.goal = np.asarray(goal_xy, dtype=np.float64)
        cells = self.grid.path(self.grid.xy_cell(position), self.grid.xy_cell(self.goal))
        self.waypoints = [self.grid.cell_xy(c) + self._offset() for c in cells[1:-1]]
        self.waypoints.append(self.goal.copy())

    def _offset(self) -> np.ndarray:
        if self.jitter == "d4rl":
            u = self.rng.uniform(0.0, 0.2, 2) * self.grid.scale
            return np.array([-u[1], u[0]])
        return self.rng.uniform(-self.jitter, self.jitter, 2)

    def waypoint(self, position) -> np.ndarray:
        """The current waypoint, advancing past those already within waypoint_radius."""
        while len(self.waypoints) > 1 and np.linalg.norm(self.waypoints[0] - position) <= self.waypoint_radius:
            self.waypoints.pop(0)
        return self.waypoints[0]

    def act(self, position, velocity) -> np.ndarray:
        """PD control towards the current waypoint (D4RL waypoint_controller, p_gain 10, d_gain -1)."""
        w = self.waypoint(np.asarray(position))
        return np.clip(self.kp * (w - position) - self.kd * np.asarray(velocity), -1.0, 1.0)

    def off_path(self, position) -> bool:
        """True when noise pushed the agent into a cell that is not next to its next waypoint's cell."""
        here, nxt = self.grid.xy_cell(position), self.grid.xy_cell(self.waypoints[0])
        return here != nxt and nxt not in set(self.grid.neighbours(here))


def random_goal(grid: MazeGrid, rng: np.random.Generator, noise: float = 0.25, exclude_xy=None) -> np.ndarray:
    """A uniformly chosen free cell's centre plus uniform noise of +-noise (gymnasium-robotics' goal sampler)."""
    cells = grid.free_cells
    while True:
        g = grid.cell_xy(cells[rng.integers(len(cells))]) + rng.uniform(-noise, noise, 2) * grid.scale
        if exclude_xy is None or np.linalg.norm(g - exclude_xy) > SUCCESS_RADIUS:
            return g
