"""Exponential moving average of model weights with warm-up."""
from __future__ import annotations

import torch
from torch import nn


class EMA:
    """theta_ema <- d theta_ema + (1 - d) theta with d = min(decay, (1 + n) / (10 + n)) when warm-up is on
    (the warm-up of Tarvainen & Valpola 2017 as used by TensorFlow's ExponentialMovingAverage)."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        self.decay, self.warmup, self.num_updates = decay, warmup, 0
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if v.dtype.is_floating_point:
                s.mul_(d).add_(v.detach().float(), alpha=1 - d)
            else:
                s.copy_(v)
        self.num_updates += 1

    def copy_to(self, model: nn.Module) -> None:
        sd = model.state_dict()
        model.load_state_dict({k: self.shadow[k].to(sd[k].dtype) for k in sd})

    def state_dict(self) -> dict:
        return dict(self.shadow)

    def load_state_dict(self, shadow: dict, num_updates: int) -> None:
        missing = set(self.shadow) - set(shadow)
        if missing:
            raise KeyError(f"EMA state lacks keys {sorted(missing)[:5]}")
        self.shadow = {k: shadow[k].clone().float() for k in self.shadow}
        self.num_updates = num_updates
