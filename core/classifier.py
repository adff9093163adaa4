"""Noise-aware classifiers p(y | x_t, t) and classifier guidance (Dhariwal & Nichol 2021, Sec. 4).

A task supplies the network (`Task.build_classifier`: net(x_t, t) -> logits (B, K); images use the U-Net's down path,
ADM's classifier); `NoisyClassifier` pairs it with the diffusion's schedule, so it is trained through the core trainer
with `ClassifierLoss` (cross-entropy on x_t ~ q(x_t | x0), t ~ U{0..T-1}) and saved as an ordinary run folder.
`classifier_guidance` turns it into the core's `GradientGuidance`: eps' = eps - s sqrt(1 - alpha_bar) grad log p(y | x_t)
(eq. 14 / Algorithm 2), a denoiser wrapper, so every sampler can use it. With `null_cond` the diffusion model is run
unconditionally (the labels go to the classifier only): guidance of an unconditional model by a classifier.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .guidance import GradientGuidance
from .losses import UniformTimesteps
from .parameterization import q_sample
from .utils import randn


class NoisyClassifier(nn.Module):
    """p(y | x_t, t) on the schedule's noised samples: logits = net(x_t, t) (Dhariwal & Nichol 2021, Sec. 4.1)."""

    def __init__(self, net: nn.Module, schedule):
        super().__init__()
        self.net, self.schedule = net, schedule

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        """Logits (B, K); `cond` (the labels the trainer passes) is not read."""
        return self.net(x_t, t)

    def log_prob(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(y | x_t, t), one value per sample."""
        logp = F.log_softmax(self(x_t, t).float(), dim=-1)
        return logp.gather(1, y.long().reshape(-1, 1)).squeeze(1)


class ClassifierLoss:
    """Cross-entropy of p(y | x_t, t) with t ~ U{0..T-1}, x_t ~ q(x_t | x0) (ADM's classifier training, Sec. 4.1).

    Called like DiffusionLoss: loss(classifier, x0, labels, generator) -> (per-sample loss (B,), t (B,))."""

    def __call__(self, classifier, x0, cond=None, generator=None):
        if cond is None:
            raise ValueError("a noise-aware classifier trains on labelled data: the dataset gave no labels (cond)")
        sch = classifier.schedule if hasattr(classifier, "schedule") else classifier.module.schedule
        t, _ = UniformTimesteps(sch.T).sample(x0.shape[0], generator, x0.device)
        eps = randn(x0.shape, generator, x0.device, x0.dtype)
        x_t = q_sample(x0, sch.alpha_bar.to(x0.device, torch.float32)[t].to(x0.dtype), eps)
        logits = classifier(x_t, t.float())
        return F.cross_entropy(logits.float(), cond.long().reshape(-1), reduction="none"), t


def classifier_guidance(denoiser, classifier: NoisyClassifier, scale: float, null_cond=None) -> GradientGuidance:
    """Guide `denoiser` toward the labels passed as `cond` by grad log p(y | x_t) at scale s (Dhariwal & Nichol 2021,
    Alg. 2); null_cond: the condition the denoiser sees instead of the labels (None: the labels themselves)."""
    if classifier.schedule.T != denoiser.schedule.T or not torch.allclose(
            classifier.schedule.alpha_bar.double(), denoiser.schedule.alpha_bar.double(), atol=1e-6):
        raise ValueError(f"classifier guidance: the classifier was trained on another noise schedule (T="
                         f"{classifier.schedule.T}) than the diffusion model's (T={denoiser.schedule.T}); train it with "
                         "the model's diffusion section")
    return GradientGuidance(denoiser, classifier.log_prob, scale, null_cond=null_cond)


def accuracy(classifier: NoisyClassifier, x0: torch.Tensor, y: torch.Tensor, t: int = 0,
             generator: Optional[torch.Generator] = None, batch: int = 512) -> float:
    """Top-1 accuracy of p(y | x_t, t) on x_t ~ q(x_t | x0) at one timestep t (t = 0: nearly clean data)."""
    hits = 0
    ab = classifier.schedule.alpha_bar[t].to(x0.dtype)
    with torch.no_grad():
        for i in range(0, len(x0), batch):
            xb = x0[i:i + batch]
            x_t = q_sample(xb, ab.expand(len(xb)), randn(xb.shape, generator, xb.device, xb.dtype))
            hits += int((classifier(x_t, torch.full((len(xb),), float(t))).argmax(-1) == y[i:i + batch]).sum())
    return hits / len(x0)
