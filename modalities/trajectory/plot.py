"""Drawing plans and executed paths on the PointMaze layout (gymnasium-robotics coordinates), and locomotion plans'
state dimensions over time."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np


def _walls(env_id: str) -> np.ndarray:
    from gymnasium_robotics.envs.maze import maps
    from .maze import env_id_for
    name = {"PointMaze_UMaze-v3": "U_MAZE", "PointMaze_Medium-v3": "MEDIUM_MAZE", "PointMaze_Large-v3": "LARGE_MAZE"}
    return np.array([[c == 1 for c in row] for row in getattr(maps, name[env_id_for(env_id)])], dtype=bool)


def draw_paths(env_id: str, plans: Sequence[np.ndarray], out: str | Path, executed: Optional[Sequence[np.ndarray]] = None,
               goals: Optional[Sequence[np.ndarray]] = None, max_panels: int = 16) -> Path:
    """One panel per plan: walls grey, plan coloured by time, executed path black, goal a red star."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    walls = _walls(env_id)
    H, W = walls.shape
    n = min(len(plans), max_panels)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols * W / max(H, W) + 0.5, 3 * rows * H / max(H, W) + 0.5),
                             squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        ax.imshow(walls, cmap="Greys", vmin=0, vmax=1.6, extent=(-W / 2, W / 2, -H / 2, H / 2), origin="upper")
        p = np.asarray(plans[k])
        ax.scatter(p[:, 0], p[:, 1], c=np.arange(len(p)), cmap="viridis", s=6, zorder=3)
        if executed is not None and k < len(executed) and len(executed[k]):
            e = np.asarray(executed[k])
            ax.plot(e[:, 0], e[:, 1], "k-", lw=1, zorder=2)
        if goals is not None and k < len(goals):
            ax.plot(*np.asarray(goals[k])[:2], "r*", ms=12, zorder=4)
        ax.set_xlim(-W / 2, W / 2)
        ax.set_ylim(-H / 2, H / 2)
        ax.set_aspect("equal")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def state_curves(states, path: Path, dims: int = 4) -> Path:
    """A PNG of the first `dims` state dimensions of up to 8 plans (B, H, S) tensor over the horizon."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    k = min(dims, states.shape[-1])
    fig, axes = plt.subplots(1, k, figsize=(3 * k, 2.4), squeeze=False)
    for j, ax in enumerate(axes[0]):
        for p in states[:8]:
            ax.plot(p[:, j].numpy(), lw=0.8)
        ax.set_title(f"state {j}")
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
