"""Exact conversions between the eps, x0 and v parameterizations of a Gaussian diffusion.

With x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps (Ho et al. 2020, eq. 4) and
v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0 (Salimans & Ho 2022, Sec. 4).
`alpha_bar` is a per-sample tensor (B,) or a scalar; it is broadcast with `append_dims`.
"""
from __future__ import annotations

import math

import torch

from .utils import append_dims

PREDICTIONS = ("eps", "x0", "v")


def _coefs(alpha_bar, x):
    if isinstance(alpha_bar, float):  # one noise level for the whole batch
        return math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)
    ab = append_dims(torch.as_tensor(alpha_bar, dtype=x.dtype, device=x.device).expand(x.shape[0]), x.ndim)
    return ab.sqrt(), (1 - ab).sqrt()


def eps_to_x0(x_t, eps, alpha_bar):
    """x0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar)  (DDPM eq. 15)."""
    a, s = _coefs(alpha_bar, x_t)
    return (x_t - s * eps) / a


def x0_to_eps(x_t, x0, alpha_bar):
    """eps = (x_t - sqrt(alpha_bar) x0) / sqrt(1 - alpha_bar)."""
    a, s = _coefs(alpha_bar, x_t)
    return (x_t - a * x0) / s


def v_to_x0(x_t, v, alpha_bar):
    """x0 = sqrt(alpha_bar) x_t - sqrt(1 - alpha_bar) v  (Salimans & Ho 2022)."""
    a, s = _coefs(alpha_bar, x_t)
    return a * x_t - s * v


def v_to_eps(x_t, v, alpha_bar):
    """eps = sqrt(1 - alpha_bar) x_t + sqrt(alpha_bar) v  (Salimans & Ho 2022)."""
    a, s = _coefs(alpha_bar, x_t)
    return s * x_t + a * v


def to_v(x0, eps, alpha_bar):
    """v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0."""
    a, s = _coefs(alpha_bar, x0)
    return a * eps - s * x0


def q_sample(x0, alpha_bar, eps):
    """Draw x_t ~ q(x_t | x_0) with given noise (DDPM eq. 4)."""
    a, s = _coefs(alpha_bar, x0)
    return a * x0 + s * eps


def output_to_x0_eps(prediction: str, x_t, out, alpha_bar):
    """Turn a raw network output of the given parameterization into (x0, eps)."""
    if prediction == "eps":
        return eps_to_x0(x_t, out, alpha_bar), out
    if prediction == "x0":
        return out, x0_to_eps(x_t, out, alpha_bar)
    if prediction == "v":
        return v_to_x0(x_t, out, alpha_bar), v_to_eps(x_t, out, alpha_bar)
    raise ValueError(f"unknown prediction {prediction!r}; valid: {PREDICTIONS}")


def target_for(prediction: str, x0, eps, alpha_bar):
    """The regression target of a parameterization."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return to_v(x0, eps, alpha_bar)
    raise ValueError(f"unknown prediction {prediction!r}; valid: {PREDICTIONS}")
