"""Build core objects from a DiffusionConfig: the schedule, the denoiser wrapper and the loss."""
from __future__ import annotations

from .config import DiffusionConfig
from .denoiser import Denoiser, clip_x0, dynamic_threshold
from .losses import ContinuousTimesteps, DiffusionLoss, ImportanceTimesteps
from .schedules import Schedule, make_schedule

X0_TRANSFORMS = {"none": None, "clip": clip_x0, "dynamic": dynamic_threshold}


def build_schedule(cfg: DiffusionConfig) -> Schedule:
    kw = {k: v for k, v in (("beta_start", cfg.beta_start), ("beta_end", cfg.beta_end)) if v is not None}
    return make_schedule(cfg.schedule, cfg.T, zero_terminal_snr=cfg.zero_terminal_snr, betas=cfg.betas, **kw)


def build_denoiser(net, cfg: DiffusionConfig, for_sampling: bool = False) -> Denoiser:
    """Wrap `net` per the config; the x0 transform (clipping) applies only when sampling."""
    if cfg.clip_x0 not in X0_TRANSFORMS:
        raise ValueError(f"diffusion.clip_x0: unknown {cfg.clip_x0!r}; valid: {sorted(X0_TRANSFORMS)}")
    return Denoiser(net, build_schedule(cfg), cfg.prediction, cfg.learned_variance,
                    X0_TRANSFORMS[cfg.clip_x0] if for_sampling else None, cfg.time_input)


def build_loss(cfg: DiffusionConfig, element_weight=None) -> DiffusionLoss:
    timesteps = ImportanceTimesteps(cfg.T) if cfg.importance_sampling else \
        ContinuousTimesteps(cfg.T) if cfg.continuous_t else None
    return DiffusionLoss(cfg.weighting, cfg.min_snr_gamma, cfg.vlb_weight, timesteps, element_weight)
