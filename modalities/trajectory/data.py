"""Sequence data for any gymnasium environment: episodes, fixed-horizon windows, per-dimension normalisation.

Follows Diffuser's data pipeline (Janner et al. 2022, diffuser/datasets/sequence.py): the stream is cut into
episodes at terminals or timeouts; a window of `horizon` steps never crosses an episode end. With
`use_padding` (Diffuser's locomotion setting) a window may start at any step and runs past the episode end
into zero padding (zeros in raw units, then normalised, as Diffuser's replay buffer does); without it
(Diffuser's maze setting) windows lie fully inside an episode. Each item is the joint (action, state)
trajectory (H, A + S), normalised per dimension.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch


class LimitsNormalizer:
    """x -> 2 (x - min) / (max - min) - 1 per dimension, mapping the data's range to [-1, 1]."""

    def __init__(self, x: np.ndarray):
        self.lo, self.hi = x.min(axis=0).astype(np.float64), x.max(axis=0).astype(np.float64)
        self.span = np.where(self.hi - self.lo > 1e-8, self.hi - self.lo, 1.0)

    def normalize(self, x):
        return _apply(x, lambda v, lo, sp: 2 * (v - lo) / sp - 1, self.lo, self.span)

    def unnormalize(self, x):
        return _apply(x, lambda v, lo, sp: (v + 1) / 2 * sp + lo, self.lo, self.span)

    def state(self) -> dict:
        return {"kind": "limits", "lo": self.lo.tolist(), "hi": self.hi.tolist()}


class GaussianNormalizer:
    """x -> (x - mean) / std per dimension."""

    def __init__(self, x: np.ndarray):
        self.mean, std = x.mean(axis=0).astype(np.float64), x.std(axis=0).astype(np.float64)
        self.std = np.where(std > 1e-8, std, 1.0)

    def normalize(self, x):
        return _apply(x, lambda v, m, s: (v - m) / s, self.mean, self.std)

    def unnormalize(self, x):
        return _apply(x, lambda v, m, s: v * s + m, self.mean, self.std)

    def state(self) -> dict:
        return {"kind": "gaussian", "mean": self.mean.tolist(), "std": self.std.tolist()}


NORMALIZERS = {"limits": LimitsNormalizer, "gaussian": GaussianNormalizer}


def _apply(x, f, a, b):
    if isinstance(x, torch.Tensor):
        return f(x, torch.as_tensor(a, dtype=x.dtype, device=x.device), torch.as_tensor(b, dtype=x.dtype, device=x.device))
    return f(np.asarray(x, dtype=np.float64), a, b).astype(np.float32)


def make_normalizer(kind: str, x: np.ndarray):
    if kind not in NORMALIZERS:
        raise ValueError(f"normalizer {kind!r}: valid: {sorted(NORMALIZERS)}")
    return NORMALIZERS[kind](x)


def normalizer_from_state(state: dict):
    """Rebuild a fitted normaliser from its state() dict (stored next to a checkpoint)."""
    kind = state["kind"]
    n = NORMALIZERS[kind].__new__(NORMALIZERS[kind])
    if kind == "limits":
        n.lo, n.hi = np.asarray(state["lo"]), np.asarray(state["hi"])
        n.span = np.where(n.hi - n.lo > 1e-8, n.hi - n.lo, 1.0)
    else:
        n.mean, n.std = np.asarray(state["mean"]), np.asarray(state["std"])
    return n


def states_normalizer(norm, action_dim: int):
    """The per-dimension normaliser of the joint [action, state] vector restricted to the states (for states-only
    plans, Decision Diffuser)."""
    st = norm.state()
    return normalizer_from_state({k: v[action_dim:] if isinstance(v, list) else v for k, v in st.items()})


def episode_bounds(terminals: np.ndarray, timeouts: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each episode; an episode ends after a step marked terminal or timeout (or at the stream end)."""
    ends = np.flatnonzero(np.asarray(terminals, bool) | np.asarray(timeouts, bool)) + 1
    ends = list(ends) + ([len(terminals)] if not len(ends) or ends[-1] != len(terminals) else [])
    starts = [0] + ends[:-1]
    return [(int(s), int(e)) for s, e in zip(starts, ends) if e > s]


def discounted_returns_to_go(rewards: np.ndarray, discount: float) -> np.ndarray:
    """G_t = sum_{k >= t} discount^(k - t) r_k within one episode (Diffuser's ValueDataset target)."""
    G, out = 0.0, np.zeros(len(rewards), dtype=np.float64)
    for t in range(len(rewards) - 1, -1, -1):
        G = rewards[t] + discount * G
        out[t] = G
    return out


@dataclass
class Window:
    episode: int
    start: int  # index within the episode


class SequenceDataset(torch.utils.data.Dataset):
    """Fixed-horizon windows of normalised [action, observation] per step that never cross episode ends."""

    def __init__(self, observations, actions, rewards, terminals, timeouts, horizon: int,
                 normalizer: str = "limits", use_padding: bool = False, discount: float = 0.99,
                 min_episode_length: int = 1, terminal_penalty: float = 0.0):
        obs, act = np.asarray(observations, np.float32), np.asarray(actions, np.float32)
        if len(obs) != len(act) or obs.ndim != 2 or act.ndim != 2:
            raise ValueError(f"SequenceDataset: observations {obs.shape} and actions {act.shape} must be (N, S), (N, A)")
        self.horizon, self.use_padding = horizon, use_padding
        self.obs_dim, self.action_dim = obs.shape[1], act.shape[1]
        self.bounds = [b for b in episode_bounds(terminals, timeouts) if b[1] - b[0] >= min_episode_length]
        joint = np.concatenate([act, obs], axis=1)
        self.normalizer = make_normalizer(normalizer, joint)
        self.joint = self.normalizer.normalize(joint)
        self.pad = self.normalizer.normalize(np.zeros((1, joint.shape[1]), np.float32))[0]
        rewards = np.asarray(rewards, np.float64) + terminal_penalty * np.asarray(terminals, bool)  # Diffuser's penalty
        self.rtg = np.concatenate([discounted_returns_to_go(rewards[s:e], discount) for s, e in self.bounds]) \
            if self.bounds else np.zeros(0)
        self._rtg_offset = np.cumsum([0] + [e - s for s, e in self.bounds])
        self.windows = self._make_windows()
        if not self.windows:
            raise ValueError(f"SequenceDataset: no window of horizon {horizon} fits in any episode "
                             f"(longest episode {max((e - s for s, e in self.bounds), default=0)} steps); "
                             "lower the horizon or set use_padding")

    def _make_windows(self) -> list[Window]:
        out = []
        for i, (s, e) in enumerate(self.bounds):
            n = e - s if self.use_padding else e - s - self.horizon + 1
            out.extend(Window(i, k) for k in range(max(n, 0)))
        return out

    def __len__(self):
        return len(self.windows)

    def window_array(self, idx: int) -> np.ndarray:
        """The normalised (H, A + S) window; steps past the episode end hold the padding value."""
        w = self.windows[idx]
        s, e = self.bounds[w.episode]
        seg = self.joint[s + w.start: min(s + w.start + self.horizon, e)]
        if len(seg) < self.horizon:
            seg = np.concatenate([seg, np.repeat(self.pad[None], self.horizon - len(seg), axis=0)])
        return seg

    def window_return(self, idx: int) -> float:
        """Discounted return-to-go from the window's first step to the episode end."""
        w = self.windows[idx]
        return float(self.rtg[self._rtg_offset[w.episode] + w.start])

    def __getitem__(self, idx):
        return torch.from_numpy(np.ascontiguousarray(self.window_array(idx)))

    @functools.cached_property
    def return_scale(self) -> float:
        """The largest |discounted return-to-go| in the data: returns / this lie in [-1, 1] (Decision Diffuser
        divides by a fixed per-environment constant instead)."""
        return float(np.abs(self.rtg).max()) if len(self.rtg) and np.abs(self.rtg).max() > 0 else 1.0

    def split(self, obs_action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(actions, observations) of a joint (..., A + S) tensor."""
        return obs_action[..., :self.action_dim], obs_action[..., self.action_dim:]


class ValueDataset(torch.utils.data.Dataset):
    """Windows with their discounted returns-to-go, for training a value function J(tau) (Diffuser, Sec. 3.2)."""

    def __init__(self, seq: SequenceDataset, normalize_returns: bool = True):
        self.seq = seq
        r = np.array([seq.window_return(i) for i in range(len(seq))], dtype=np.float64)
        self.r_mean, self.r_std = (r.mean(), r.std() + 1e-8) if normalize_returns else (0.0, 1.0)
        self.returns = ((r - self.r_mean) / self.r_std).astype(np.float32)

    def __len__(self):
        return len(self.seq)

    def __getitem__(self, idx):
        return {"x0": self.seq[idx], "value": torch.tensor(self.returns[idx])}
