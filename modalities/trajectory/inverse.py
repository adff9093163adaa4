"""Decision Diffuser's inverse dynamics a_t = f(s_t, s_{t+1}) (Ajay et al. 2023, Sec. 3.1): the states-only planner's
actions. An MLP (the behaviour-cloning one of locomotion.py) on consecutive states within episodes, MSE, the actions
squashed into the range the data's actions span.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from diffsuite.core.utils import atomic_write_json, save_tensors

from .data import SequenceDataset
from .locomotion import BCPolicy, train_bc


def transitions(seq: SequenceDataset) -> tuple[np.ndarray, np.ndarray]:
    """([s_t, s_{t+1}] (N, 2S), a_t (N, A)) in raw units, every step whose successor is in the same episode."""
    joint = seq.normalizer.unnormalize(seq.joint)
    a, s = joint[:, :seq.action_dim], joint[:, seq.action_dim:]
    idx = np.concatenate([np.arange(b, e - 1) for b, e in seq.bounds if e - b > 1] or [np.zeros(0, int)])
    if not len(idx):
        raise ValueError("inverse dynamics: no episode has two steps")
    return np.concatenate([s[idx], s[idx + 1]], 1), a[idx]


def train_inverse(seq: SequenceDataset, steps: int = 20000, seed: int = 0) -> BCPolicy:
    """f(s_t, s_{t+1}) -> a_t fitted to the dataset's transitions."""
    pairs, act = transitions(seq)
    return train_bc(pairs, act, act.min(0), act.max(0), steps, seed=seed)


def save_inverse(f: BCPolicy, path: str | Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_tensors(path / "inverse.safetensors", f.state_dict())
    atomic_write_json(path / "inverse.json", {"pair_dim": int(f.mu.numel()), "action_dim": int(f.low.numel())})
    return path


def load_inverse(path: str | Path) -> BCPolicy:
    path = Path(path)
    if not (path / "inverse.json").is_file():
        raise FileNotFoundError(f"{path}: no inverse.json (expected a folder written by diffsuite train-inverse)")
    c = json.loads((path / "inverse.json").read_text())
    f = BCPolicy(c["pair_dim"], c["action_dim"], np.zeros(c["action_dim"]), np.ones(c["action_dim"]))
    f.load_state_dict(load_file(str(path / "inverse.safetensors")))
    return f.eval()


@torch.no_grad()
def plan_actions(f: BCPolicy, states: np.ndarray) -> np.ndarray:
    """The actions of a states-only plan (..., H, S): a_k = f(s_k, s_{k+1}) for k < H - 1 (H - 1 actions)."""
    pairs = np.concatenate([states[..., :-1, :], states[..., 1:, :]], -1)
    return f(torch.as_tensor(pairs, dtype=torch.float32)).numpy()
