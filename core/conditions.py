"""Conditions as the core carries them: None, a tensor with one row per sample (class labels (B,), a chord sequence
(B, beats, 36), a source image with the sample's shape (B, C, H, W)), or a dict of such tensors by name (e.g.
{"label": (B,), "source": (B, C, H, W)}). The core never reads a condition: it moves, stacks, slices and drops it, and
the network reads it. A source condition (a tensor with the sample's spatial shape, SR3 / Palette) is concatenated to
x_t by the network itself; no sampler or hook learns about it.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .utils import append_dims


def cond_map(fn: Callable, *conds):
    """fn applied leaf-wise to one or more conditions of the same structure (None stays None)."""
    first = conds[0]
    if first is None:
        return None
    if isinstance(first, dict):
        return {k: cond_map(fn, *(c[k] for c in conds)) for k in first}
    return fn(*conds)


def cond_to(cond, device):
    return cond_map(lambda c: c.to(device) if isinstance(c, torch.Tensor) else c, cond)


def cond_cat(*conds):
    """Stack conditions along the batch (e.g. the conditional and null halves of classifier-free guidance)."""
    return cond_map(lambda *c: torch.cat(c), *conds)


def cond_rows(cond, index):
    """The rows `index` (a slice or index tensor) of every tensor of a condition."""
    return cond_map(lambda c: c[index], cond)


def cond_batch_size(cond) -> Optional[int]:
    if cond is None:
        return None
    if isinstance(cond, dict):
        return next((cond_batch_size(v) for v in cond.values() if v is not None), None)
    return cond.shape[0]


def null_like(cond, null):
    """The null condition for `cond`: `null` (a value, a tensor, a function of cond) in place of a tensor; for a dict,
    `null` is a dict by name, and a name it lacks is kept (never dropped, e.g. a source image)."""
    if isinstance(cond, dict):
        if not isinstance(null, dict):
            raise ValueError(f"a condition with parts {sorted(cond)} needs a null condition by part (a dict), got {null!r}")
        return {k: null_like(v, null[k]) if k in null else v for k, v in cond.items()}
    if callable(null):
        return null(cond)
    if isinstance(null, torch.Tensor):
        return null.expand_as(cond)
    return torch.full_like(cond, null)


def drop_condition(cond, p: float, null, generator: Optional[torch.Generator] = None):
    """Replace each sample's condition by the null one with probability p (the same draw for all parts of a dict), for
    classifier-free training (Ho & Salimans 2022, Alg. 1)."""
    if p <= 0 or cond is None:
        return cond
    B = cond_batch_size(cond)
    u = torch.rand(B, generator=generator, device=generator.device if generator else None)
    nulls = null_like(cond, null)
    return cond_map(lambda c, n: torch.where(append_dims((u >= p).to(c.device), c.ndim), c, n.to(c.dtype)), cond, nulls)
