"""Image extras on top of the core samplers: inpainting masks and a figure of one sample's denoising path."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffsuite.core.config import ConfigError
from diffsuite.core.guidance import Inpaint
from diffsuite.core.samplers import SamplerHook

from .data import load_image, read_pixels, to_model, to_uint8

PRESET_MASKS = ("left-half", "centre-box")


def preset_mask(name: str, size: int, width: int | None = None) -> torch.Tensor:
    """A (1, 1, S, W) mask (W = S by default), 1 where pixels are KNOWN: 'left-half' keeps the left half, 'centre-box'
    hides the centre."""
    W = width or size
    m = torch.ones(1, 1, size, W)
    if name == "left-half":
        m[..., W // 2:] = 0
    elif name == "centre-box":
        m[..., size // 4:size - size // 4, W // 4:W - W // 4] = 0
    else:
        raise ValueError(f"unknown preset mask {name!r}; valid: {list(PRESET_MASKS)} or a mask image path")
    return m


def _read(path: str | Path, size: int | None, channels: int, what: str) -> np.ndarray:
    """load_image (size None: the image at its own size), with an unreadable file reported as a ConfigError naming
    it."""
    try:
        return load_image(Path(path), size, channels) if size else read_pixels(Path(path), channels)
    except (OSError, ValueError) as e:  # PIL: UnidentifiedImageError is an OSError
        raise ConfigError(f"{what} {path}: cannot read it as an image ({type(e).__name__}); expected a PNG or "
                          "JPEG file") from e


def load_mask(path: str | Path, size: int) -> torch.Tensor:
    """A mask image (white = known, black = to fill), resized and centre-cropped to size: (1, 1, S, S) in {0, 1}."""
    arr = _read(path, size, 1, "--mask")
    return torch.from_numpy((arr[..., 0] >= 128).astype(np.float32))[None, None]


def load_known(path: str | Path, size: int, channels: int, what: str = "--inpaint") -> torch.Tensor:
    """The image to inpaint (or classify), as (1, C, S, S) in [-1, 1]."""
    return to_model(_read(path, size, channels, what)[None].copy())  # copy: PIL arrays are read-only


def inpaint_hook(schedule, mask: torch.Tensor, known: torch.Tensor) -> Inpaint:
    """The core's replacement-inpainting hook (RePaint eq. 8 without resampling) with shapes checked."""
    if mask.shape[-2:] != known.shape[-2:]:
        raise ValueError(f"inpaint: mask size {tuple(mask.shape[-2:])} != image size {tuple(known.shape[-2:])}")
    if not ((mask == 0) | (mask == 1)).all():
        raise ValueError("inpaint: mask values must be 0 (fill) or 1 (known)")
    return Inpaint(schedule, mask, known)


class RecordPath(SamplerHook):
    """Keeps a copy of x_t after each sampler step (with its t), for the denoising-path figure."""

    def __init__(self):
        self.xs, self.ts = [], []

    def start(self, x, t, generator):
        self.xs.append(x.detach().cpu().clone())
        self.ts.append(float(t))
        return x

    def after_step(self, x, t_next, generator):
        self.xs.append(x.detach().cpu().clone())
        self.ts.append(float(t_next))
        return x


def path_figure(rec: RecordPath, out: Path, n_frames: int = 8, index: int = 0) -> Path:
    """A row of x_t frames of sample `index` at evenly chosen steps, labelled with t (for teaching)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    picks = np.unique(np.linspace(0, len(rec.xs) - 1, n_frames).round().astype(int))
    fig, axes = plt.subplots(1, len(picks), figsize=(1.6 * len(picks), 1.9))
    for ax, k in zip(np.atleast_1d(axes), picks):
        img = rec.xs[k][index].clamp(-1, 1).add(1).div(2).permute(1, 2, 0).numpy()
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
        ax.set_title("x_0" if rec.ts[k] < 0 else f"t={rec.ts[k]:.0f}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def read_full(path: str | Path, channels: int, what: str = "--image") -> torch.Tensor:
    """An image at its own size, as (1, C, H, W) in [-1, 1]; a missing or unreadable file is a ConfigError."""
    if not Path(path).is_file():
        raise ConfigError(f"{what} {path}: image file not found")
    return to_model(_read(path, None, channels, what)[None])


def write_png(x: torch.Tensor, path: str | Path) -> Path:
    """One image (C, H, W) in [-1, 1] as a PNG (its folder created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    u8 = to_uint8(x[None])[0]
    Image.fromarray(u8[..., 0] if u8.shape[-1] == 1 else u8).save(path)
    return path


def read_mask(mask: str | None, H: int, W: int) -> torch.Tensor:
    """(1, 1, H, W) in {0, 1} (1 = known): a preset name (default centre-box) or a mask image of exactly H x W pixels
    (white = keep)."""
    if mask is None or mask in PRESET_MASKS:
        return preset_mask(mask or "centre-box", H, W)
    m = read_full(mask, 1, "--mask")
    if m.shape[2:] != (H, W):
        raise ConfigError(f"--mask {mask}: {m.shape[3]}x{m.shape[2]} pixels but the image is {W}x{H}; give a mask of the "
                          f"image's size or one of {list(PRESET_MASKS)}")
    return (m >= 0).float()
