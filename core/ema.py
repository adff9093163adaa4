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
        """One EMA step; fp32 tensors are updated in a single fused lerp (s += (1 - d)(v - s))."""
        d = self.current_decay()
        fused_s, fused_v, rest = self._pairs(model)
        for s, v in rest:
            if v.dtype.is_floating_point:
                s.lerp_(v.detach().to(s.device, torch.float32), 1 - d)
            else:
                s.copy_(v)
        if fused_s:
            torch._foreach_lerp_(fused_s, fused_v, 1 - d)
        self.num_updates += 1

    def _pairs(self, model: nn.Module):
        """(shadow, live) tensor pairs, cached per model (state_dict tensors alias the live parameters)."""
        key = id(model)
        if getattr(self, "_cache_key", None) != key:
            fused_s, fused_v, rest = [], [], []
            for k, v in model.state_dict().items():
                s = self.shadow[k]
                if v.dtype == torch.float32 and v.device == s.device:
                    fused_s.append(s)
                    fused_v.append(v.detach())
                else:
                    rest.append((s, v))
            self._cache, self._cache_key = (fused_s, fused_v, rest), key
        return self._cache

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
        self._cache_key = None
        self.num_updates = num_updates
