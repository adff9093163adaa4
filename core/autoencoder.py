"""The first stage of latent diffusion (Rombach et al. 2022, Sec. 3.1 and App. G): a KL-regularised autoencoder.

A task supplies the encoder E (x -> 2 * latent_channels maps: the mean and log-variance of a diagonal Gaussian
q(z | x)) and the decoder D (z -> x) (`Task.build_autoencoder`); `KLAutoencoder` holds them and the latent scale
factor, and trains through the core trainer like a denoiser, with `AutoencoderLoss`:

    L = mean_pixels |x - D(z)|  (or the squared error)  +  kl_weight * sum_latents KL(q(z | x) || N(0, I)) / pixels,
    z = mu + sigma * e,

the LDM objective's reconstruction and KL terms written per pixel (LDM sums both over the image, so its kl_weight of
1e-6 means the same here). (LDM's perceptual and adversarial terms are not implemented.)

The scale factor (LDM's 0.18215 for its own autoencoder) is *measured*: 1 / the standard deviation of posterior samples
of the training data on a stated number of batches (`measure_scale`), when training finishes, and stored as a buffer of
the autoencoder, so it travels in every checkpoint and nobody copies a constant.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .utils import randn

def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """z = mu + sigma e, e ~ N(0, I) (Kingma & Welling 2014)."""
    return mu + (0.5 * logvar).exp() * randn(mu.shape, generator, mu.device, mu.dtype)


class KLAutoencoder(nn.Module):
    """E, D and the latent scale factor (a buffer): encode x -> (mu, logvar), decode z -> x (Rombach et al. 2022)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, factor: int, latent_channels: int):
        super().__init__()
        self.encoder, self.decoder, self.factor, self.latent_channels = encoder, decoder, factor, latent_channels
        self.register_buffer("scale", torch.zeros(()))  # 0 until measured (measure_scale, when training finishes)

    def check_size(self, x: torch.Tensor, what: str = "input") -> None:
        bad = [s for s in x.shape[2:] if s % self.factor]
        if bad:
            raise ValueError(f"autoencoder: {what} of size {tuple(x.shape[2:])} is not divisible by its downsampling "
                             f"factor f={self.factor}; crop or pad it to a multiple of {self.factor}")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of q(z | x), each (B, latent_channels, H / f, W / f); logvar clamped to [-30, 20] as in LDM."""
        self.check_size(x)
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def posterior_sample(self, x: torch.Tensor, generator: Optional[torch.Generator] = None,
                         sample: bool = True) -> torch.Tensor:
        """z ~ q(z | x) (or its mean), unscaled."""
        mu, logvar = self.encode(x)
        return reparameterize(mu, logvar, generator) if sample else mu

    def _scale(self, z: torch.Tensor) -> torch.Tensor:
        if not float(self.scale) > 0:
            raise ValueError("autoencoder: the latent scale factor has not been measured yet (measure_scale)")
        return self.scale.to(z.dtype)

    def latents(self, x: torch.Tensor, generator: Optional[torch.Generator] = None, sample: bool = True) -> torch.Tensor:
        """Scaled latents scale * z of x, z ~ q(z | x) (sample) or its mean: what a latent diffusion model diffuses."""
        z = self.posterior_sample(x, generator, sample)
        return z * self._scale(z)

    def from_latents(self, z: torch.Tensor) -> torch.Tensor:
        """x from scaled latents: D(z / scale)."""
        return self.decode(z / self._scale(z))

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None):
        """(reconstruction D(z), mu, logvar) with z ~ q(z | x)."""
        mu, logvar = self.encode(x)
        return self.decode(reparameterize(mu, logvar, generator)), mu, logvar


class AutoencoderModel(nn.Module):
    """The trainer's view of an autoencoder: `net` is the KLAutoencoder (what checkpoints and the EMA hold)."""

    def __init__(self, ae: KLAutoencoder):
        super().__init__()
        self.net = ae

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None):
        return self.net(x, generator)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, e^logvar) || N(0, I)) summed over all but the batch dimension."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


RECON = ("l1", "l2", "bce")


def reconstruction_error(x_rec: torch.Tensor, x0: torch.Tensor, recon: str) -> torch.Tensor:
    """Per element: |x - D(z)|, (x - D(z))^2, or for binary data in {-1, 1} (piano rolls) the Bernoulli negative
    log-likelihood with D(z) as the logit of x = 1 (so D(z) > 0 decodes to 1). On sparse binary data (a roll is ~97%
    empty) L1 pulls every cell alike and the piano-roll autoencoder learned to decode silence (L1 0.06 = the share
    of note cells); under the likelihood a missed note pulls with 1 - p, an empty cell with p."""
    if recon == "bce":
        return torch.nn.functional.binary_cross_entropy_with_logits(x_rec, (x0 > 0).to(x_rec.dtype), reduction="none")
    err = x_rec - x0
    return err.abs() if recon == "l1" else err.pow(2)


class AutoencoderLoss:
    """LDM's first-stage objective per sample (see the module docstring), called like DiffusionLoss:
    loss(model, x, cond, generator) -> (per-sample loss (B,), zeros (B,)); `cond` is not read."""

    def __init__(self, kl_weight: float = 1e-6, recon: str = "l1"):
        if recon not in RECON:
            raise ValueError(f"autoencoder.recon: expected one of {RECON}, got {recon!r}")
        self.kl_weight, self.recon = kl_weight, recon

    def __call__(self, model, x0, cond=None, generator=None):
        x_rec, mu, logvar = model(x0, generator)
        rec = reconstruction_error(x_rec.float(), x0.float(), self.recon).flatten(1).mean(1)
        pixels = x0[0].numel()
        loss = rec + self.kl_weight * kl_standard_normal(mu.float(), logvar.float()) / pixels
        return loss, torch.zeros(len(x0), device=x0.device, dtype=torch.long)


@torch.no_grad()
def measure_scale(ae: KLAutoencoder, batches, generator: Optional[torch.Generator] = None) -> float:
    """1 / the standard deviation of posterior samples z ~ q(z | x) over the given batches of x (LDM's scale factor,
    there taken on one batch)."""
    zs = [ae.posterior_sample(x, generator) for x in batches]
    if not zs:
        raise ValueError("measure_scale: no batches to measure the latent scale on")
    std = torch.cat([z.flatten().float() for z in zs]).std().item()
    if not std > 0:
        raise ValueError(f"measure_scale: the latents have standard deviation {std}; the autoencoder is broken")
    return 1.0 / std
