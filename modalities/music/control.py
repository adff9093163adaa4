"""Internal control by inpainting through the core (core.guidance.Inpaint / repaint): bar infilling, continuation
(autoregressive for long pieces), accompaniment given the melody (highest voice) and melody given accompaniment.

Masks are in roll layout (2, P, T) with 1 where values are known; `run_inpaint` moves them to the model layout.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from diffsuite.core.guidance import ClassifierFreeGuidance, Inpaint
from diffsuite.core.samplers import sample
from diffsuite.core.utils import check_finite

from .chords import sounding
from .roll import from_model, to_model


def bar_mask(shape: tuple, bars: range, steps_per_bar: int) -> np.ndarray:
    """Known everywhere except the time steps of `bars` (0-based bar indices)."""
    m = np.ones(shape, np.uint8)
    for b in bars:
        m[:, :, b * steps_per_bar:(b + 1) * steps_per_bar] = 0
    return m


def skyline(roll: np.ndarray) -> np.ndarray:
    """Per time step, the highest sounding pitch index (-1 where silent): the melody as the highest voice."""
    on = sounding(roll)
    P = on.shape[0]
    top = P - 1 - np.argmax(on[::-1], axis=0)
    return np.where(on.any(axis=0), top, -1)


def melody_mask(roll: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Accompaniment given melody: known = the melody notes and every cell above them (so it stays the highest voice)."""
    top = skyline(roll)
    known = np.zeros_like(roll)
    m = np.zeros_like(roll)
    for t, p in enumerate(top):
        if p >= 0:
            m[:, p:, t] = 1
            known[:, p, t] = roll[:, p, t]
    return m, known


def accompaniment_mask(roll: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Melody given accompaniment: known = everything except the highest voice and the cells above it."""
    top = skyline(roll)
    known = roll.copy()
    m = np.ones_like(roll)
    for t, p in enumerate(top):
        if p >= 0:
            known[:, p:, t] = 0
            m[:, p:, t] = 0
    return m, known


def run_inpaint(denoiser, known: np.ndarray, mask: np.ndarray, *, cond=None, guidance: float = 0.0, null_cond=None,
                sampler: str = "ddim", steps: int = 50, generator: Optional[torch.Generator] = None,
                resample: bool = False, **options) -> np.ndarray:
    """Sample rolls (B, 2, P, T) that equal `known` where mask = 1 (replacement inpainting, or RePaint with resample)."""
    x_known = to_model(known)
    m = torch.as_tensor(np.asarray(mask), dtype=torch.float32).transpose(-1, -2)
    den = ClassifierFreeGuidance(denoiser, guidance, null_cond) if guidance and cond is not None else denoiser
    hook = Inpaint(denoiser.schedule, m, x_known)
    if resample:
        x = sample(den, x_known.shape, "repaint", steps, generator=generator, cond=cond, inpaint=hook, **options)
    else:
        x = sample(den, x_known.shape, sampler, steps, generator=generator, cond=cond, hooks=[hook], **options)
    out = from_model(check_finite(x, f"{'repaint' if resample else sampler} ({steps} steps) rolls",
                                  "try another sampler or checkpoint"))
    keep = np.asarray(mask, bool)
    out[keep] = np.asarray(known)[keep]  # Inpaint returns known values exactly; thresholding must not move them
    return out


def continue_piece(denoiser, prefix: np.ndarray, n_new: int, seg_len: int, steps_per_bar: int, *,
                   context_bars: Optional[int] = None, **kw) -> np.ndarray:
    """Extend a roll (2, P, T0) by n_new steps, one window at a time, each conditioned on the last context_bars bars."""
    ctx = (context_bars or max(seg_len // steps_per_bar // 2, 1)) * steps_per_bar
    if ctx >= seg_len:
        raise ValueError(f"continuation: context of {ctx} steps must be shorter than the window ({seg_len} steps)")
    roll = prefix
    target = prefix.shape[-1] + n_new
    while roll.shape[-1] < target:
        window = np.zeros(roll.shape[:2] + (seg_len,), np.uint8)
        tail = roll[:, :, -ctx:] if roll.shape[-1] >= ctx else roll
        window[:, :, :tail.shape[-1]] = tail
        mask = np.zeros_like(window)
        mask[:, :, :tail.shape[-1]] = 1
        out = run_inpaint(denoiser, window[None], mask[None], **kw)[0]
        roll = np.concatenate([roll, out[:, :, tail.shape[-1]:]], axis=-1)
    return roll[:, :, :target]
