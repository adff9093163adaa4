"""Value function J(x_t, t) for guided planning: Diffuser's ValueFunction trained on noised windows (Janner et al. 2022, Sec. 3.2).

Targets are the normalised discounted returns-to-go from each window's first step; inputs are windows
noised with the same schedule as the diffusion model, x_t = q_sample(x0, alpha_bar_t, eps), so the
gradient of J at x_t is meaningful at every step the sampler visits.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from diffsuite.core.parameterization import q_sample
from diffsuite.core.utils import atomic_write_json, save_tensors

from .data import ValueDataset
from .temporal_unet import ValueNet


def train_value(value_ds: ValueDataset, schedule, steps: int = 1000, batch_size: int = 32, lr: float = 2e-4,
                dim: int = 32, dim_mults=(1, 4, 8), seed: int = 0, progress: bool = True) -> ValueNet:
    """Regress J(x_t, t) on returns-to-go with MSE, t uniform over the schedule (Diffuser's value training)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    seq = value_ds.seq
    net = ValueNet(seq.action_dim + seq.obs_dim, seq.horizon, dim, dim_mults)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in tqdm(range(steps), disable=not progress, desc="value"):
        idx = torch.randint(len(value_ds), (batch_size,), generator=g)
        x0 = torch.stack([value_ds[int(i)]["x0"] for i in idx])
        y = torch.stack([value_ds[int(i)]["value"] for i in idx])
        t = torch.randint(schedule.T, (batch_size,), generator=g)
        ab = schedule.alpha_bar.float()[t]
        x_t = q_sample(x0, ab, torch.randn(x0.shape, generator=g))
        loss = (net(x_t, t.float()) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def save_value(net: ValueNet, path: str | Path) -> Path:
    """Weights (safetensors) and the constructor settings (JSON) in folder `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_tensors(path / "value.safetensors", net.state_dict())
    enc = net.encoder
    atomic_write_json(path / "value.json", {"transition_dim": enc.dims[0], "horizon": net.horizon, "dim": enc.dims[1],
                                            "dim_mults": [d // enc.dims[1] for d in enc.dims[1:]]})
    return path


def load_value(path: str | Path) -> ValueNet:
    path = Path(path)
    if not (path / "value.json").is_file():
        raise FileNotFoundError(f"{path}: no value.json (expected a folder written by save_value)")
    c = json.loads((path / "value.json").read_text())
    net = ValueNet(c["transition_dim"], c["horizon"], c["dim"], tuple(c["dim_mults"]))
    net.load_state_dict(load_file(str(path / "value.safetensors")))
    return net.eval()
