"""PriorGrad (Lee et al. 2022): a data-dependent prior N(0, diag(sigma_c^2)) whose std follows the mel's frame energy.

Run through the unchanged core by whitening: with y = x / sigma_c, the forward process
x_t = sqrt(ab) x_0 + sqrt(1 - ab) sigma_c e is y_t = sqrt(ab) y_0 + sqrt(1 - ab) e, e ~ N(0, I), so every core
loss and sampler works on y. The network sees x_t = sigma_c y_t and predicts the coloured noise sigma_c e, as in
PriorGrad; dividing its output by sigma_c gives e, and the core's L_simple on e is PriorGrad's
||eps - eps_theta||^2 weighted by Sigma^-1. Samples are mapped back by x = sigma_c y.

sigma_c per frame = clamp(E / level, STD_MIN, 1), E = RMS over mel bins of the linear mel magnitude, repeated over
the hop's samples (frame i covers samples [i hop, (i + 1) hop), as the dataset's crops align them).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .mel import LOG_CLAMP, LOG_COMPRESSED, MelConvention

PRIORS = ("standard", "priorgrad")
STD_MIN = 0.1  # PriorGrad's floor on the prior std (silence keeps some noise)
# Frame energy E that gets the full unit prior, per mel convention: a frame RMS of about 0.33 in peak-normalised
# speech (built-in corpus: E/RMS = 1.49 hifigan, 3.36 diffwave; the corpus's loudest frame has E = 0.54 hifigan;
# difftransfer's unnormalised filters on a 1024-point FFT: E/RMS = 37.5 on the rendered strings chorales).
LEVEL = {"hifigan": 0.5, "diffwave": 1.1, "difftransfer": 12.4}


def check_prior(prior: str, level: Optional[float], conditional: bool, where: str = "model") -> None:
    if prior not in PRIORS:
        raise ValueError(f"{where}.prior={prior!r} unknown; valid: {PRIORS}")
    if prior == "priorgrad" and not conditional:
        raise ValueError(f"{where}.prior='priorgrad' needs a mel ({where}.conditional=true): its std comes from the mel")
    if level is not None and level <= 0:
        raise ValueError(f"{where}.prior_level={level} must be > 0")


def linear_mel(mel: torch.Tensor, c: MelConvention) -> torch.Tensor:
    """Undo the convention's compression (`mel.compress`): natural log (hifigan) or dB scaled to [0, 1] (diffwave)."""
    if c.name in LOG_COMPRESSED:
        return mel.float().exp()
    return torch.pow(10.0, (mel.float() * 100 - 100 + 20) / 20).clamp(min=LOG_CLAMP)


def prior_std(mel: torch.Tensor, c: MelConvention, n_samples: int, level: Optional[float] = None) -> torch.Tensor:
    """sigma_c of shape (B, 1, n_samples) for mels (B, n_mels, frames): clamp(E / level, STD_MIN, 1) per hop."""
    level = LEVEL[c.name] if level is None else level
    energy = linear_mel(mel, c).pow(2).mean(dim=-2).sqrt()
    std = (energy / level).clamp(STD_MIN, 1.0).repeat_interleave(c.hop, dim=-1)
    if std.shape[-1] < n_samples:
        raise ValueError(f"prior_std: {mel.shape[-1]} mel frames cover {std.shape[-1]} samples, fewer than {n_samples}")
    return std[..., :n_samples].unsqueeze(-2)


def whiten(x: torch.Tensor, mel: torch.Tensor, c: MelConvention, level: Optional[float] = None) -> torch.Tensor:
    """Waveform x -> y = x / sigma_c, what the core diffuses."""
    return x / prior_std(mel, c, x.shape[-1], level).to(x.dtype)


def unwhiten(y: torch.Tensor, mel: torch.Tensor, c: MelConvention, level: Optional[float] = None) -> torch.Tensor:
    """A sample y -> waveform x = sigma_c y."""
    return y * prior_std(mel, c, y.shape[-1], level).to(y.dtype)


class PriorGradNet(nn.Module):
    """Wraps a mel-conditioned network (x_t, t, mel) -> coloured noise into the whitened denoiser net(y_t, t, mel) -> e."""

    def __init__(self, net: nn.Module, c: MelConvention, level: Optional[float] = None):
        super().__init__()
        self.inner, self.c, self.level = net, c, level
        self.z_channels = getattr(net, "z_channels", 0)

    def std(self, mel: torch.Tensor, n_samples: int) -> torch.Tensor:
        return prior_std(mel, self.c, n_samples, self.level)

    def condition_cache(self, *args, **kwargs):
        return self.inner.condition_cache(*args, **kwargs)

    def forward(self, y_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if cond is None:
            raise ValueError("PriorGradNet: a mel is required (the prior's std comes from it)")
        s = self.std(cond, y_t.shape[-1]).to(y_t.dtype)
        if self.z_channels:  # a DDGAN latent z (channels after the waveform's) is not scaled
            return self.inner(torch.cat([s * y_t[:, :1], y_t[:, 1:]], 1), t, cond) / s
        return self.inner(s * y_t, t, cond) / s


class Whitened(torch.utils.data.Dataset):
    """Items {"x0": x, "cond": mel} of a conditional audio dataset with x0 replaced by y = x / sigma_c."""

    def __init__(self, dataset, c: MelConvention, level: Optional[float] = None):
        self.dataset, self.c, self.level = dataset, c, level

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        item = dict(self.dataset[i])
        item["x0"] = whiten(item["x0"], item["cond"], self.c, self.level)
        return item
