"""Degradations: plain functions from clean samples to what an image-to-image model is given (SR3, Saharia et al.
2021; Palette, Saharia et al. 2022). Training pairs are made on the fly from clean data, and the same functions score
consistency at evaluation (a super-resolved sample, downsampled again, against its input).

Samples are (B, C, *spatial) tensors in [-1, 1] with one or two spatial dims (audio / trajectories, images); a mask is
1 where values are known, with one channel, broadcast over C.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601


def _spatial(x: torch.Tensor) -> int:
    if x.ndim not in (3, 4):
        raise ValueError(f"degradations take (B, C, L) or (B, C, H, W) samples, got shape {tuple(x.shape)}")
    return x.ndim - 2


def check_factor(shape, factor: int, what: str = "input") -> None:
    """Every spatial size must be a multiple of the factor (and at least the factor)."""
    bad = [s for s in shape if s < factor or s % factor]
    if factor < 1 or bad:
        raise ValueError(f"{what}: a {factor}x downsampling needs spatial sizes that are multiples of {factor}, got "
                         f"{'x'.join(map(str, shape))}")


def downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """The mean of each factor^d block (area downsampling: a box filter, so no aliasing of content above the new
    Nyquist rate beyond the box's)."""
    check_factor(x.shape[2:], factor)
    pool = F.avg_pool2d if _spatial(x) == 2 else F.avg_pool1d
    return pool(x, factor)


def upsample(x: torch.Tensor, factor: int, mode: str = "bicubic") -> torch.Tensor:
    """Interpolate up by the factor: bicubic (images) / linear (1-D), or nearest; clamped to [-1, 1]."""
    d = _spatial(x)
    mode = {"bicubic": "bicubic" if d == 2 else "linear"}.get(mode, mode)
    kw = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(x, scale_factor=factor, mode=mode, **kw).clamp(-1, 1)


def sr_source(x: torch.Tensor, factor: int) -> torch.Tensor:
    """SR3's conditioning input: the low-resolution sample, bicubic-upsampled back to the sample's size (Sec. 2.3)."""
    return upsample(downsample(x, factor), factor)


def consistency_error(y: torch.Tensor, low: torch.Tensor, factor: int) -> torch.Tensor:
    """Per sample: the RMS difference between a super-resolved sample downsampled again and the low-resolution input."""
    return (downsample(y, factor) - low).pow(2).flatten(1).mean(1).sqrt()


def project_consistent(y: torch.Tensor, low: torch.Tensor, factor: int, iterations: int = 20) -> torch.Tensor:
    """Alternating projections (POCS, Youla & Webb 1982) of y onto the outputs whose downsampling is low, y + A⁺(low −
    A y) (A the box average, A⁺ the nearest-neighbour upsampling; the range-null-space split of DDNM, Wang et al.
    2023), and onto [-1, 1]: both sets hold the true image, so no step moves y away from it."""
    check_factor(y.shape[2:], factor)
    if tuple(low.shape[2:]) != tuple(s // factor for s in y.shape[2:]):
        raise ValueError(f"project_consistent: the low-resolution input {tuple(low.shape)} is not the {factor}x "
                         f"downsampling of {tuple(y.shape)}")
    for _ in range(iterations):
        z = y + F.interpolate(low - downsample(y, factor), scale_factor=factor, mode="nearest")
        y = z.clamp(-1, 1)
        if torch.equal(y, z):  # the range did not bind: y is in both sets, and more rounds would add nothing
            break
    return y


def to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB to (B, 1, H, W) luma (BT.601 weights); one channel is returned as it is."""
    if x.shape[1] == 1:
        return x
    if x.shape[1] != 3:
        raise ValueError(f"to_grayscale: expected 1 or 3 channels, got shape {tuple(x.shape)}")
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).reshape(1, 3, *[1] * (x.ndim - 2))
    return (x * w).sum(1, keepdim=True)


def masked(x: torch.Tensor, mask: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """x where the mask is 1, `fill` elsewhere."""
    m = mask.to(x.dtype)
    return x * m + fill * (1 - m)


def inpaint_source(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Palette's inpainting / uncropping input: the known values (0 in the hole) and the mask itself, stacked on
    channels: (B, C + 1, ...)."""
    m = mask.to(x.dtype).expand(x.shape[0], 1, *x.shape[2:])
    return torch.cat([masked(x, m), m], 1)


def push_pull_fill(x: torch.Tensor, mask: torch.Tensor, smooth: int = 8) -> torch.Tensor:
    """x with its hole (mask 0) filled smoothly from the known values: push-pull (Gortler et al. 1996, the Lumigraph)
    with Jacobi smoothing toward the harmonic fill at each level, coarse to fine (a multigrid Laplace solve). Push: a
    mask-weighted average pyramid down to one cell. Pull: from the coarsest level up, a level's unknown cells start
    from the coarser level's values, linearly upsampled, and take `smooth` steps of the mean of their neighbours (the
    edges replicated). Known values stay exact; the fill is a convex combination of them (zeros when none is known)."""
    d = _spatial(x)
    m = mask.to(x.dtype).expand(x.shape[0], 1, *x.shape[2:])
    pool = F.avg_pool1d if d == 1 else F.avg_pool2d
    levels = [(x * m, m)]
    while max(levels[-1][1].shape[2:]) > 1:
        s, w = levels[-1]
        levels.append((pool(s, 2, ceil_mode=True), pool(w, 2, ceil_mode=True)))
    s, w = levels[-1]
    filled = s / w.clamp(min=1e-12)
    for s, w in reversed(levels[:-1]):
        up = F.interpolate(filled, size=s.shape[2:], mode="linear" if d == 1 else "bilinear", align_corners=False)
        filled = torch.where(w > 0, s / w.clamp(min=1e-12), up)
        filled = _jacobi(filled, w > 0, smooth)
    return filled


def _jacobi(y: torch.Tensor, known: torch.Tensor, steps: int) -> torch.Tensor:
    """`steps` Jacobi steps of Laplace's equation on the cells that are not `known`: each becomes the mean of its 2
    (1-D) or 4 (2-D) neighbours, the edges replicated."""
    d = y.ndim - 2
    for _ in range(steps):
        p = F.pad(y, (1, 1) * d, mode="replicate")
        if d == 1:
            mean = (p[..., :-2] + p[..., 2:]) / 2
        else:
            mean = (p[..., 1:-1, :-2] + p[..., 1:-1, 2:] + p[..., :-2, 1:-1] + p[..., 2:, 1:-1]) / 4
        y = torch.where(known, y, mean)
    return y


def box_mask(size: tuple, generator: Optional[torch.Generator] = None, min_frac: float = 0.25,
             max_frac: float = 0.5) -> torch.Tensor:
    """(1, H, W): one random rectangle hidden (0), its sides a uniform fraction of the image's."""
    H, W = size
    g = lambda lo, hi: int(torch.randint(lo, hi + 1, (), generator=generator))  # noqa: E731
    h, w = g(max(1, int(min_frac * H)), max(1, int(max_frac * H))), g(max(1, int(min_frac * W)), max(1, int(max_frac * W)))
    top, left = g(0, H - h), g(0, W - w)
    m = torch.ones(1, H, W)
    m[:, top:top + h, left:left + w] = 0
    return m


def free_form_mask(size: tuple, generator: Optional[torch.Generator] = None, strokes: int = 3,
                   width_frac: float = 0.12) -> torch.Tensor:
    """(1, H, W): random brush strokes hidden (0): each a polyline of 2-4 random segments with a round brush
    (free-form masks as in Palette / DeepFill v2, drawn with torch only)."""
    H, W = size
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    r = max(1.0, width_frac * min(H, W))
    hole = torch.zeros(H, W, dtype=torch.bool)
    u = lambda *s: torch.rand(*s, generator=generator)  # noqa: E731
    for _ in range(strokes):
        p = u(2) * torch.tensor([H - 1.0, W - 1.0])
        for _ in range(int(torch.randint(2, 5, (), generator=generator))):
            q = (p + (u(2) - 0.5) * torch.tensor([H, W]) * 0.6).clamp(min=torch.zeros(2), max=torch.tensor([H - 1.0, W - 1.0]))
            d = q - p
            s = (((yy - p[0]) * d[0] + (xx - p[1]) * d[1]) / d.pow(2).sum().clamp(min=1e-6)).clamp(0, 1)
            dist = ((yy - p[0] - s * d[0]) ** 2 + (xx - p[1] - s * d[1]) ** 2).sqrt()
            hole |= dist <= r
            p = q
    return (~hole).float()[None]


def border_mask(size: tuple, side: str = "right", frac: float = 0.25) -> torch.Tensor:
    """(1, H, W): a border of the given side(s) hidden (0), `frac` of the image wide: uncropping (Palette)."""
    H, W = size
    m = torch.ones(1, H, W)
    bh, bw = max(1, round(frac * H)), max(1, round(frac * W))
    sides = ("left", "right", "top", "bottom") if side == "all" else (side,)
    for s in sides:
        if s == "left":
            m[..., :bw] = 0
        elif s == "right":
            m[..., W - bw:] = 0
        elif s == "top":
            m[..., :bh, :] = 0
        elif s == "bottom":
            m[..., H - bh:, :] = 0
        else:
            raise ValueError(f"border_mask: side {s!r}; valid: left, right, top, bottom, all")
    return m
