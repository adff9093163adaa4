"""PointMaze dataset generator following D4RL's maze2d recipe (Fu et al. 2020, scripts/generation/generate_maze2d_datasets.py).

One continuous stream: the agent is reset once and never again; when it arrives within 0.45 of its goal
the step is marked terminal and a new random goal is set (without reset). The waypoint expert plans over
cells by BFS and tracks jittered waypoints with a = clip(10 (w - p) - v, -1, 1), plus Gaussian action
noise. `timeouts` mark every `max_episode_steps` steps without arrival (the goal is kept, as in D4RL).
Coordinates and radius are gymnasium-robotics' (see maze.py for how they relate to D4RL).

Sizes: D4RL used 1M (U-Maze), 2M (Medium), 4M (Large) steps; `SIZES` names those and small CPU sizes.
"""
from __future__ import annotations

import argparse
import io
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from diffsuite.core.utils import atomic_write_bytes, atomic_write_json, cache_dir, sha256_file

from .maze import SUCCESS_RADIUS, MazeGrid, WaypointController, env_id_for, make_env, random_goal, set_goal

SIZES = {"d4rl": {"PointMaze_UMaze-v3": 1_000_000, "PointMaze_Medium-v3": 2_000_000, "PointMaze_Large-v3": 4_000_000,
                  "Hopper-v5": 1_000_000, "Walker2d-v5": 1_000_000, "HalfCheetah-v5": 1_000_000},  # (locomotion: per part)
         "cpu": 100_000, "tiny": 5_000}
KEYS = ("observations", "actions", "rewards", "terminals", "timeouts", "goals")
FORMAT_VERSION = 1


@dataclass
class GenSettings:
    """Everything that determines a generated dataset (stored in the .npz and the cache manifest)."""

    env_id: str = "PointMaze_UMaze-v3"
    n_steps: int = 100_000
    seed: int = 0
    action_noise: float = 0.5  # std of the Gaussian added to the expert's action (D4RL --noisy)
    kp: float = 10.0
    kd: float = 1.0
    jitter: float = 0.1  # uniform +- offset of each waypoint from its cell centre
    waypoint_radius: float = 0.3
    goal_noise: float = 0.25
    max_episode_steps: int = 0  # 0: the env's registered limit
    format_version: int = FORMAT_VERSION


def n_steps_for(size: str | int, env_id: str) -> int:
    """'d4rl' (1M/2M/4M for the mazes, 1M for locomotion), 'cpu' (100k), 'tiny' (5k) or an explicit step count."""
    if isinstance(size, int) or str(size).isdigit():
        return int(size)
    if size not in SIZES:
        raise ValueError(f"dataset size {size!r}: expected an integer or one of {sorted(SIZES)}")
    s = SIZES[size]
    return (s[env_id] if env_id in s else s[env_id_for(env_id)]) if isinstance(s, dict) else s


def generate(s: GenSettings, progress: bool = True) -> dict[str, np.ndarray]:
    """Roll the noisy waypoint expert in one never-reset stream of s.n_steps steps (D4RL maze2d recipe)."""
    env = make_env(s.env_id)
    limit = s.max_episode_steps or env.spec.max_episode_steps
    u = env.unwrapped
    rng = np.random.default_rng(s.seed)
    obs, _ = env.reset(seed=s.seed)
    grid = MazeGrid.from_env(env)
    ctrl = WaypointController(grid, rng, s.kp, s.kd, s.jitter, s.waypoint_radius)
    goal = random_goal(grid, rng, s.goal_noise, exclude_xy=obs["observation"][:2])
    set_goal(env, goal)
    ctrl.set_goal(goal, obs["observation"][:2])
    out = {k: [] for k in KEYS}
    since = 0
    for _ in tqdm(range(s.n_steps), disable=not progress, desc=f"generate {s.env_id}", mininterval=1.0):
        o = obs["observation"]
        if ctrl.off_path(o[:2]):
            ctrl.set_goal(goal, o[:2])
        a = np.clip(ctrl.act(o[:2], o[2:]) + s.action_noise * rng.standard_normal(2), -1.0, 1.0)
        obs, r, _, _, _ = u.step(a)
        since += 1
        arrived = np.linalg.norm(obs["observation"][:2] - goal) <= SUCCESS_RADIUS
        timeout = not arrived and since >= limit
        for k, v in zip(KEYS, (o, a, r, arrived, timeout, goal)):
            out[k].append(v)
        if arrived:
            goal = random_goal(grid, rng, s.goal_noise, exclude_xy=obs["observation"][:2])
            set_goal(env, goal)
            ctrl.set_goal(goal, obs["observation"][:2])
        if arrived or timeout:
            since = 0
    env.close()
    dtypes = {"terminals": bool, "timeouts": bool}
    return {k: np.asarray(v, dtype=dtypes.get(k, np.float32)) for k, v in out.items()}


def save_npz(path: Path, data: dict, settings: GenSettings) -> None:
    """Compressed .npz with the arrays and the generation settings (as a JSON string), written atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **data, settings=np.array(json.dumps(asdict(settings), sort_keys=True)))
    atomic_write_bytes(path, buf.getvalue())


def load_npz(path: str | Path) -> tuple[dict, dict]:
    """Arrays and settings of a generated dataset; a clear error for a file missing keys."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in KEYS[:5] if k not in z.files]
        if missing:
            raise ValueError(f"{path}: missing arrays {missing}; expected {list(KEYS[:5])} (found {z.files})")
        data = {k: z[k] for k in z.files if k != "settings"}
        settings = json.loads(str(z["settings"])) if "settings" in z.files else {}
    return data, settings


def _cache_name(s: GenSettings) -> str:
    import hashlib
    h = hashlib.sha256(json.dumps(asdict(s), sort_keys=True).encode()).hexdigest()[:12]
    return f"{s.env_id}_{s.n_steps}_seed{s.seed}_{h}"


def dataset_path(s: GenSettings, progress: bool = True) -> Path:
    """The cached dataset for these settings, generated on first use, with a manifest (settings + sha256)."""
    d = cache_dir("trajectory", _cache_name(s))
    path, manifest = d / "dataset.npz", d / "manifest.json"
    if path.is_file() and manifest.is_file():
        m = json.loads(manifest.read_text())
        if m.get("sha256") == sha256_file(path):
            return path
        warnings.warn(f"{path}: content hash does not match {manifest}; regenerating")
    save_npz(path, generate(s, progress), s)
    atomic_write_json(manifest, {"settings": asdict(s), "file": path.name, "sha256": sha256_file(path)})
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Generate a D4RL-style maze2d dataset in gymnasium-robotics PointMaze")
    p.add_argument("--env", default="PointMaze_UMaze-v3")
    p.add_argument("--size", default="cpu", help="d4rl | cpu | tiny | a step count")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--action-noise", type=float, default=0.5)
    p.add_argument("--out", default=None, help="write here instead of the cache")
    a = p.parse_args(argv)
    s = GenSettings(env_id=env_id_for(a.env), n_steps=n_steps_for(a.size, a.env), seed=a.seed, action_noise=a.action_noise)
    if a.out:
        save_npz(Path(a.out), generate(s), s)
        print(a.out)
    else:
        print(dataset_path(s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
