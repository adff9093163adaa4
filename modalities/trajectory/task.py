"""TrajectoryTask: Diffuser (Janner et al. 2022) as a diffsuite Task.

x0 is a normalised joint trajectory (H, A + S): per time step the action then the observation (Diffuser's
layout). As in Diffuser's maze2d training, the network sees the clean start state (and, with
data.condition = start_goal, the clean final state) in x_t (`apply_conditioning`); at planning time the
same states come from the environment and the core's `Inpaint` hook holds them exactly in the returned plan.
Rewards enter by value guidance (planner.py). Recipes predict x0 with limits normalisation, as Diffuser does.

data.formulation = decision_diffuser is Decision Diffuser's alternative (Ajay et al. 2023): x0 holds the states
only (H, S) (model.transition_dim = S, model.action_dim = 0), the window's discounted return-to-go (divided by the
data's largest, `SequenceDataset.return_scale`) is a classifier-free condition (NaN the null one), and actions come
from an inverse-dynamics model a_t = f(s_t, s_{t+1}) (`diffsuite train-inverse`).
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from diffsuite.core.config import valid
from diffsuite.core.task import Task
from diffsuite.core.utils import atomic_write_json

from . import locomotion
from .data import NORMALIZERS, SequenceDataset, states_normalizer
from .generate import GenSettings, dataset_path, load_npz, n_steps_for
from .maze import env_id_for
from .temporal_unet import ConditionedTemporalUnet

VAL_FRACTION = 0.05  # the last 5% of episodes of the stream are the validation split


@dataclass
class TrajectoryModelConfig:
    """Temporal U-Net settings (Diffuser: dim 32, dim_mults (1, 4, 8) in mazes, (1, 2, 4, 8) in locomotion)."""

    transition_dim: int = valid(6, min=1)  # action dim + observation dim (PointMaze: 2 + 4)
    action_dim: int = valid(2, min=0)
    dim: int = valid(32, min=1)
    dim_mults: list = field(default_factory=lambda: [1, 4, 8])
    kernel: int = valid(5, min=1)
    z_channels: int = valid(0, min=0)  # a DDGAN generator's latent dims per step (core.ddgan; 0: a plain denoiser)
    returns_cond: bool = False  # a returns embedding added to the time embedding (Decision Diffuser; needs
    #                             data.formulation = decision_diffuser)


@dataclass
class TrajectoryDataConfig:
    """Which dataset (generated PointMaze stream or an explicit .npz) and how it is cut into windows."""

    env_id: str = "PointMaze_UMaze-v3"
    size: Union[str, int] = "cpu"  # d4rl | cpu | tiny | a step count
    seed: int = 0
    action_noise: float = valid(0.5, min=0)
    path: Optional[str] = None  # an explicit .npz with observations, actions, rewards, terminals, timeouts
    horizon: int = valid(128, min=1)
    normalizer: str = valid("limits", choices=lambda: sorted(NORMALIZERS))
    use_padding: bool = False
    discount: float = valid(0.99, min=0, max=1)
    #: where episodes end: "terminals" (arrival or timeout, D4RL's flags) or "timeouts" (only timeouts; with
    #: arrivals not splitting the stream, windows may pass intermediate goals, like Diffuser's long maze2d episodes)
    episode_ends: str = valid("terminals", choices=("terminals", "timeouts"))
    #: what the model sees clean in x_t (Diffuser's conditioning): start_goal (maze2d GoalDataset), start, none
    condition: str = valid("start_goal", choices=lambda: sorted(CONDITIONS))
    # locomotion (Hopper-v5, Walker2d-v5, HalfCheetah-v5): D4RL-style rollouts of the committed SAC actors
    dataset: str = valid("medium", choices=("medium", "medium-replay", "medium-expert"))
    actors: Optional[str] = None  # the actors' folder (actor_*.safetensors, levels.json); default the committed ones
    terminal_penalty: float = 0.0  # added to the reward of a step that ends its episode by termination (Diffuser: -100)
    action_weight: float = valid(1.0, min=0)  # loss weight of the first step's actions (Diffuser's locomotion: 10)
    #: diffuser (joint states and actions, value guidance) | decision_diffuser (states only, returns as a
    #: classifier-free condition, actions by inverse dynamics; Ajay et al. 2023)
    formulation: str = valid("diffuser", choices=("diffuser", "decision_diffuser"))


def locomotion_arrays(d: TrajectoryDataConfig) -> dict:
    """The D4RL-style arrays of a locomotion dataset (generated and cached on first use)."""
    folder = locomotion.actors_folder(d.env_id, d.actors)
    return load_npz(locomotion.dataset_path(d.dataset, d.env_id, folder, n_steps_for(d.size, d.env_id), d.seed))[0]


@functools.lru_cache(maxsize=4)
def _dataset(data_key: str) -> SequenceDataset:
    d = TrajectoryDataConfig(**json.loads(data_key))
    if d.path:
        arrays, _ = load_npz(d.path)
    elif d.env_id in locomotion.ENVS:
        arrays = locomotion_arrays(d)
    else:
        s = GenSettings(env_id=env_id_for(d.env_id), n_steps=n_steps_for(d.size, d.env_id), seed=d.seed,
                        action_noise=d.action_noise)
        arrays, _ = load_npz(dataset_path(s))
    if d.episode_ends not in ("terminals", "timeouts"):
        raise ValueError(f"data.episode_ends={d.episode_ends!r}: valid: terminals, timeouts")
    terminals = arrays["terminals"] if d.episode_ends == "terminals" else np.zeros_like(arrays["terminals"])
    return SequenceDataset(arrays["observations"], arrays["actions"], arrays["rewards"], terminals,
                           arrays["timeouts"], d.horizon, d.normalizer, d.use_padding, d.discount,
                           terminal_penalty=d.terminal_penalty)


def full_dataset(data: TrajectoryDataConfig) -> SequenceDataset:
    """All windows of the configured dataset (cached in-process); its normaliser is the one the model uses."""
    from dataclasses import asdict
    return _dataset(json.dumps(asdict(data), sort_keys=True))


CONDITIONS = {"start_goal": [0, -1], "start": [0], "none": []}


def window_cond(x0: torch.Tensor, condition: str, action_dim: int):
    """The clean states the model is conditioned on: (k, S) from steps 0 (and H-1) of a window, or None."""
    if condition not in CONDITIONS:
        raise ValueError(f"data.condition={condition!r}: valid: {sorted(CONDITIONS)}")
    steps = CONDITIONS[condition]
    return x0[..., steps, action_dim:] if steps else None


def decision_item(seq: SequenceDataset, i: int, condition: str) -> dict:
    """Decision Diffuser's training item: the window's states, its clean start (goal) states and its scaled return."""
    x0 = seq[i][:, seq.action_dim:]
    return {"x0": x0, "cond": {"states": window_cond(x0, condition, 0),
                               "returns": torch.tensor([seq.window_return(i) / seq.return_scale], dtype=torch.float32)}}


class _Split(torch.utils.data.Dataset):
    def __init__(self, seq: SequenceDataset, idx: np.ndarray, condition: str = "none", decision: bool = False):
        self.seq, self.idx, self.condition, self.decision = seq, idx, condition, decision
        window_cond(torch.zeros(1, 2, 1 + seq.action_dim), condition, seq.action_dim)  # validate early

    def __len__(self):
        return len(self.idx)

    def __getitem__(self, i):
        if self.decision:
            return decision_item(self.seq, int(self.idx[i]), self.condition)
        x0 = self.seq[int(self.idx[i])]
        c = window_cond(x0, self.condition, self.seq.action_dim)
        return x0 if c is None else {"x0": x0, "cond": c}


class TrajectoryTask(Task):
    name = "trajectory"
    ModelConfig = TrajectoryModelConfig
    DataConfig = TrajectoryDataConfig
    null_cond = None

    def null_condition(self, recipe):
        """Decision Diffuser: a NaN return (the returns embedding is zero), the start states kept."""
        return {"returns": float("nan")} if recipe.data.formulation == "decision_diffuser" else None

    def build_net(self, model: TrajectoryModelConfig, diffusion) -> torch.nn.Module:
        return ConditionedTemporalUnet(model.transition_dim, model.action_dim, model.dim, tuple(model.dim_mults),
                                       model.kernel, model.z_channels, model.returns_cond)

    def build_discriminator(self, model: TrajectoryModelConfig, data, gan) -> torch.nn.Module:
        """DDGAN's D(x_{t-1}, x_t, t): a time-conditional strided 1-D conv net over the horizon (core.ddgan)."""
        from diffsuite.core.ddgan import ConvDiscriminator
        return ConvDiscriminator(1, model.transition_dim, gan.d_width, gan.d_levels, channel_axis=-1)

    def loss_weights(self, model: TrajectoryModelConfig, data: TrajectoryDataConfig):
        """Diffuser's WeightedLoss: 1 everywhere but data.action_weight on the first step's actions."""
        if data.action_weight == 1.0 or model.action_dim == 0:
            return None
        w = torch.ones(data.horizon, model.transition_dim)
        w[0, :model.action_dim] = data.action_weight
        return w

    def build_dataset(self, data: TrajectoryDataConfig, split: str = "train"):
        seq = full_dataset(data)
        cut = int(len(seq.bounds) * (1 - VAL_FRACTION))
        ep = np.array([w.episode for w in seq.windows])
        idx = np.flatnonzero(ep < cut) if split == "train" else np.flatnonzero(ep >= cut)
        if len(idx) == 0:
            idx = np.arange(len(seq))
        return _Split(seq, idx, data.condition, data.formulation == "decision_diffuser")

    def sample_shape(self, model, data: TrajectoryDataConfig) -> tuple:
        seq = full_dataset(data)
        if data.formulation == "decision_diffuser":
            if model.action_dim or not model.returns_cond or model.transition_dim != seq.obs_dim:
                raise ValueError(f"data.formulation=decision_diffuser diffuses states only, conditioned on returns: set "
                                 f"model.transition_dim={seq.obs_dim} (the observation dims), model.action_dim=0 and "
                                 f"model.returns_cond=true (got {model.transition_dim}, {model.action_dim}, "
                                 f"{model.returns_cond})")
            if data.condition == "none":
                raise ValueError("data.formulation=decision_diffuser plans from the current state: set data.condition=start")
            return (data.horizon, seq.obs_dim)
        if model.returns_cond:
            raise ValueError("model.returns_cond=true needs data.formulation=decision_diffuser (returns to condition on)")
        D = seq.action_dim + seq.obs_dim
        if D != model.transition_dim:
            raise ValueError(f"model.transition_dim={model.transition_dim} but the dataset has {seq.action_dim} action "
                             f"+ {seq.obs_dim} observation dims = {D}; set model.transition_dim={D}")
        return (data.horizon, D)

    def sample_cond(self, n: int, cfg, generator: Optional[torch.Generator] = None):
        """Start (and goal) states of n random dataset windows, for `diffsuite sample`."""
        seq = full_dataset(cfg.data)
        idx = torch.randint(len(seq), (n,), generator=generator)
        if cfg.data.formulation == "decision_diffuser":
            items = [decision_item(seq, int(i), cfg.data.condition)["cond"] for i in idx]
            return {k: torch.stack([c[k] for c in items]) for k in ("states", "returns")}
        return window_cond(torch.stack([seq[int(i)] for i in idx]), cfg.data.condition, seq.action_dim)

    def save_samples(self, x: torch.Tensor, cond, out_dir: Path, cfg) -> dict:
        """Unnormalise the trajectories, draw their states on the maze (PNG) and write them as JSON."""
        from .plot import draw_paths
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        seq = full_dataset(cfg.data)
        x = x.detach().cpu().float()
        if cfg.data.formulation == "decision_diffuser":  # states only: actions come from inverse dynamics at plan time
            s = states_normalizer(seq.normalizer, seq.action_dim).unnormalize(x)
            a = s[..., :0]
        else:
            a, s = seq.split(seq.normalizer.unnormalize(x))
        atomic_write_json(out_dir / "samples.json", {"actions": a.tolist(), "observations": s.tolist()})
        if cfg.data.env_id in locomotion.ENVS:  # no maze to draw on: each sample's first state dims over time
            from .plot import state_curves
            return {"json": str(out_dir / "samples.json"), "png": str(state_curves(s, out_dir / "samples.png"))}
        png = draw_paths(cfg.data.env_id, [p[:, :2].numpy() for p in s], out_dir / "samples.png")
        return {"json": str(out_dir / "samples.json"), "png": str(png)}

