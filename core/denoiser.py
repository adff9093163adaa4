"""The one denoiser contract.

A raw network is any `nn.Module` called as `net(x_t, t, cond)` where `x_t` has any shape (B, ...),
`t` is a float tensor (B,) of (possibly fractional) schedule indices and `cond` is whatever the
modality conditions on (None, a tensor, a dict). It returns its raw output, or a pair
(output, v_var) when it learns the variance (Nichol & Dhariwal 2021, eq. 15, v_var in [-1, 1]).

`Denoiser` wraps such a network with a `Schedule` and a parameterization and always returns a
`Prediction` holding both x0 and eps, so samplers and losses never care what the network predicts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from .precision import autocast
from .parameterization import PREDICTIONS, output_to_x0_eps, x0_to_eps
from .schedules import Schedule
from .utils import append_dims


@dataclass
class Prediction:
    """What a denoiser predicts at (x_t, t): the clean-data estimate, the noise estimate, the raw output."""

    x0: torch.Tensor
    eps: torch.Tensor
    out: torch.Tensor
    v_var: Optional[torch.Tensor] = None  # learned-variance interpolation output in [-1, 1], if any


def clip_x0(x0: torch.Tensor, limit: float = 1.0) -> torch.Tensor:
    """Static clipping of the x0 estimate to [-limit, limit] (Ho et al. 2020)."""
    return x0.clamp(-limit, limit)


def dynamic_threshold(x0: torch.Tensor, percentile: float = 0.995, max_value: float = 1.0) -> torch.Tensor:
    """Dynamic thresholding (Saharia et al. 2022, Imagen Sec. 2.3): s = max(1, per-sample quantile of |x0|)."""
    s = torch.quantile(x0.reshape(x0.shape[0], -1).abs().float(), percentile, dim=1).to(x0.dtype)
    s = append_dims(s.clamp(min=max_value), x0.ndim)
    return x0.clamp(-s, s) / s * max_value


class Denoiser(nn.Module):
    """Wrap a raw network: (x_t, t, cond) -> Prediction(x0, eps), for any parameterization and shape."""

    def __init__(self, net: nn.Module, schedule: Schedule, prediction: str = "eps",
                 learned_variance: bool = False, x0_transform: Optional[Callable] = None, time_input: str = "t"):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"Denoiser: unknown prediction {prediction!r}; valid: {PREDICTIONS}")
        if time_input not in ("t", "noise_level"):
            raise ValueError(f"Denoiser: time_input must be 't' or 'noise_level', got {time_input!r}")
        self.time_input = time_input  # what the network's time embedding reads: t, or SR3's 1000 sqrt(alpha_bar_t)
        self.net = net
        self.schedule = schedule
        self.prediction = prediction
        self.learned_variance = learned_variance
        self.x0_transform = x0_transform
        #: autocast dtype for the network's forward at sampling time (None: fp32); see core.precision
        self.autocast_dtype: Optional[torch.dtype] = None

    @property
    def z_channels(self) -> int:
        """Channels of the latent z the network also reads (a DDGAN generator, core.ddgan); 0 for a plain denoiser."""
        return int(getattr(self.net, "z_channels", 0) or 0)

    @property
    def channel_axis(self) -> int:
        """The network's channel axis (1 for (B, C, ...), -1 for channel-last (B, ..., C)), where z is stacked."""
        return int(getattr(self.net, "channel_axis", 1))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond=None, z: Optional[torch.Tensor] = None) -> Prediction:
        t = torch.as_tensor(t, device=x_t.device, dtype=torch.float32)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        x_in = self._with_latent(x_t, z)
        t_net = t if self.time_input == "t" else \
            1000 * self.schedule.alpha_bar_at(t.double()).sqrt().float()
        with autocast(x_t.device.type, self.autocast_dtype):
            raw = self.net(x_in, t_net, cond)
        v_var = None
        if self.learned_variance:
            if not (isinstance(raw, (tuple, list)) and len(raw) == 2):
                raise ValueError("Denoiser(learned_variance=True): the network must return (output, v_var)")
            raw, v_var = raw
        elif isinstance(raw, (tuple, list)):
            raise ValueError("Denoiser: the network returned a tuple but learned_variance=False")
        if raw.shape != x_t.shape:
            raise ValueError(f"Denoiser: network output shape {tuple(raw.shape)} != input shape {tuple(x_t.shape)}")
        if self.autocast_dtype is not None:  # sampling in bf16: the sampler's arithmetic stays in x_t's dtype
            raw, v_var = raw.to(x_t.dtype), None if v_var is None else v_var.to(x_t.dtype)
        ab = self._alpha_bar(t, x_t)
        x0, eps = output_to_x0_eps(self.prediction, x_t, raw, ab)
        if self.x0_transform is not None:
            x0 = self.x0_transform(x0)
            eps = x0_to_eps(x_t, x0, ab)
        return Prediction(x0=x0, eps=eps, out=raw, v_var=v_var)

    def _with_latent(self, x_t, z):
        """x_t with z stacked on the channel axis when the network reads a latent (z = None: zeros, the mode)."""
        if not self.z_channels:
            if z is not None:
                raise ValueError("Denoiser: a latent z was given but the network reads none (z_channels = 0)")
            return x_t
        shape = list(x_t.shape)
        shape[self.channel_axis] = self.z_channels
        if z is None:
            z = x_t.new_zeros(shape)
        elif list(z.shape) != shape:
            raise ValueError(f"Denoiser: z has shape {tuple(z.shape)}, expected {tuple(shape)}")
        return torch.cat([x_t, z.to(x_t.dtype)], dim=self.channel_axis)

    def _alpha_bar(self, t, x_t):
        """alpha_bar per sample, or one Python float when every sample shares t on the CPU (the sampler case)."""
        if t.device.type == "cpu" and t.numel() > 0 and bool((t == t[0]).all()):
            return self.schedule.alpha_bar_scalar(float(t[0]))
        return self.schedule.alpha_bar_at(t.double()).to(x_t.dtype)
