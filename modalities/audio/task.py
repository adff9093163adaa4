"""The audio task: a DiffWave vocoder (mel -> waveform) or an unconditional waveform model, through the core."""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from diffsuite.core.config import valid
from diffsuite.core.samplers import sample
from diffsuite.core.task import Task
from diffsuite.core.utils import split_of

from .diffwave import PRESETS, StepEmbedding, build_diffwave, preset
from .mel import CONVENTIONS, MelConvention, check_mel, convention, mel_spectrogram
from . import priorgrad
from .priorgrad import PRIORS, PriorGradNet, Whitened, check_prior


MELS = tuple(sorted(CONVENTIONS))


@dataclass
class ModelConfig:
    """DiffWave network settings (a preset, any field overridden) and the audio format it was trained on."""

    preset: str = valid("base", choices=lambda: sorted(PRESETS))
    residual_layers: Optional[int] = valid(None, min=1)
    residual_channels: Optional[int] = valid(None, min=1)
    dilation_cycle: Optional[int] = valid(None, min=1)
    conditional: bool = True
    mel: str = valid("hifigan", choices=MELS)  # mel convention the vocoder expects: hifigan | diffwave
    sample_rate: int = valid(22050, min=1)
    n_mels: int = valid(80, min=1)
    hop_length: int = valid(256, min=1)
    # lerp: the sinusoid table at integer steps, interpolated at fractional t (the reference's; the fast schedule's
    # steps are fractional, and a model trained at integer steps has never seen the direct sinusoid between them,
    # whose fastest components turn over ~10^4 times per step). sinusoid: the direct sinusoid, for continuous t.
    step_embedding: str = valid("lerp", choices=("lerp", "sinusoid"))
    upsampler_init: str = valid("interp", choices=("interp", "default"))  # mel upsampler starts as linear interpolation | default (PyTorch's, the reference's)
    prior: str = valid("standard", choices=PRIORS)  # standard N(0, I) | priorgrad (std from the mel's frame energy; priorgrad.py)
    prior_level: Optional[float] = None  # priorgrad: frame energy given the unit prior (None: priorgrad.LEVEL)
    z_channels: int = valid(0, min=0)  # a DDGAN generator's latent channels (core.ddgan; 0: a plain denoiser)


@dataclass
class DataConfig:
    """Where the audio comes from and how it is cut; the audio format must match the model's."""

    source: str = valid("builtin", choices=("builtin", "folder", "ljspeech", "filelist", "chorales"))
    path: Optional[str] = None
    eval_path: Optional[str] = None  # for source=filelist: the list used for the val/test splits
    corpus_size: int = valid(300, min=1)  # builtin corpus: number of utterances
    corpus_seed: int = 0
    # chorales: Bach chorales rendered with these instruments (render.py; one per voice or one for all), split by
    # chorale as the timbre corpus is (corpus_size chorales, 16 kHz)
    instruments: list = field(default_factory=lambda: ["strings"])
    crop_samples: int = valid(16000 // 256 * 256, min=1)
    short: str = valid("pad", choices=("pad", "skip"))  # clips shorter than one crop: pad | skip
    mel: str = valid("hifigan", choices=MELS)
    sample_rate: int = valid(22050, min=1)
    n_mels: int = valid(80, min=1)
    hop_length: int = valid(256, min=1)
    sample_seconds: float = valid(2.0, above=0)  # length of the clips `diffsuite sample` vocodes
    conditional: bool = True  # items carry a mel ({"x0", "cond"}) or are bare waveforms
    prior: str = valid("standard", choices=PRIORS)  # priorgrad: items carry x0 / sigma_c (the model's prior; must match model.prior)
    prior_level: Optional[float] = None


def mel_convention(model: ModelConfig) -> MelConvention:
    return convention(model.mel, model.sample_rate, model.n_mels, model.hop_length)


def check_formats(model: ModelConfig, data: DataConfig) -> None:
    """The data's audio format must be the one the model is built for."""
    for k in ("mel", "sample_rate", "n_mels", "hop_length", "conditional", "prior", "prior_level"):
        if getattr(model, k) != getattr(data, k):
            raise ValueError(f"audio recipe: model.{k}={getattr(model, k)!r} but data.{k}={getattr(data, k)!r}; "
                             "they must agree")


def fast_schedule(train_betas: Sequence[float], infer_betas: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """DiffWave's fast sampling (Kong et al. 2020, Appendix B): align each inference alpha_bar_s to a
    fractional training step t + (sqrt(ab_t) - sqrt(gamma_s)) / (sqrt(ab_t) - sqrt(ab_{t+1})).

    Returns descending (timesteps, alpha_bars) for core `sample(..., timesteps=, alpha_bars=)`.
    """
    ab_train = np.cumprod(1 - np.asarray(train_betas, dtype=np.float64))
    gamma = np.cumprod(1 - np.asarray(infer_betas, dtype=np.float64))
    ts = []
    for g in gamma:
        t = next((t for t in range(len(ab_train) - 1) if ab_train[t + 1] <= g <= ab_train[t]), None)
        if t is None:
            raise ValueError(f"fast_schedule: inference alpha_bar {g:.4g} lies outside the training schedule's "
                             f"[{ab_train[-1]:.4g}, {ab_train[0]:.4g}]")
        ts.append(t + (ab_train[t] ** 0.5 - g ** 0.5) / (ab_train[t] ** 0.5 - ab_train[t + 1] ** 0.5))
    return torch.tensor(ts[::-1], dtype=torch.float64), torch.tensor(gamma[::-1].copy(), dtype=torch.float64)


class ExplicitAlphaBars(torch.nn.Module):
    """Denoiser whose x0/eps conversion uses given alpha_bars at given (fractional) t, not the schedule's
    interpolation, so x0 is consistent with the sampler's alpha_bars (DiffWave fast sampling, Appendix B)."""

    def __init__(self, denoiser, timesteps: torch.Tensor, alpha_bars: torch.Tensor):
        super().__init__()
        from diffsuite.core.distill import ConsistencyFunction
        if isinstance(denoiser, ConsistencyFunction):  # its x0 is f, not a conversion of the network's output
            raise ValueError("the fast schedule needs a diffusion model; a consistency student samples with "
                             "'consistency' (its own sampler)")
        self.denoiser, self.schedule = denoiser, denoiser.schedule
        self.ts = torch.as_tensor(timesteps, dtype=torch.float64)
        self.abs_ = torch.as_tensor(alpha_bars, dtype=torch.float64)

    def forward(self, x, t, cond=None):
        from diffsuite.core.parameterization import output_to_x0_eps
        pred = self.denoiser(x, t, cond)
        dist = (t.detach().double().cpu()[:, None] - self.ts[None]).abs()
        if dist.min(dim=1).values.max() > 1e-3:
            raise ValueError(f"ExplicitAlphaBars: t={t.tolist()} is not one of the timesteps {self.ts.tolist()}")
        ab = self.abs_[dist.argmin(dim=1)].to(x.device, x.dtype)
        pred.x0, pred.eps = output_to_x0_eps(self.denoiser.prediction, x, pred.out, ab)
        if self.denoiser.x0_transform is not None:
            from diffsuite.core.parameterization import x0_to_eps
            pred.x0 = self.denoiser.x0_transform(pred.x0)
            pred.eps = x0_to_eps(x, pred.x0, ab)
        return pred


# DDIM's own default ("leading", as diffusers) starts a 6-of-50 schedule at t=40, skipping the noisiest steps
# DiffWave's short T=50 schedule has; "linspace" spans t=49..0 like the fast schedule (chosen on the val split).
AUDIO_SPACING = {"ddim": "linspace"}


def synthesize(denoiser, n_samples: int, cond=None, sampler: str = "fast", steps: Optional[int] = None,
               generator: Optional[torch.Generator] = None, fast_betas: Optional[Sequence[float]] = None,
               batch: int = 1, progress: bool = False, device=None, spacing: Optional[str] = None) -> torch.Tensor:
    """Waveforms (B, 1, n_samples): sampler 'fast' (DiffWave's 6-step schedule), 'ddpm' (all T steps
    or `steps` respaced), or any core sampler ('ddim', 'dpmpp_2m', ...) with `steps` and the core's timestep
    `spacing` (default: AUDIO_SPACING, else the sampler's own). The mel terms are computed once and reused at
    every step (DiffWave.condition_cache). A PriorGrad model's samples are returned as waveforms (x = sigma_c y)."""
    cache = getattr(denoiser.net, "condition_cache", None)
    with cache() if cache is not None else contextlib.nullcontext():
        x = _synthesize(denoiser, n_samples, cond, sampler, steps, generator, fast_betas, batch, progress, device,
                        spacing)
    return unwhiten(x, denoiser.net, cond)


def unwhiten(x: torch.Tensor, net, cond) -> torch.Tensor:
    """A PriorGrad model samples y = x / sigma_c: map it back to the waveform (other models: x unchanged)."""
    return priorgrad.unwhiten(x, cond, net.c, net.level) if isinstance(net, PriorGradNet) else x


def whiten(x: torch.Tensor, net, cond) -> torch.Tensor:
    """A waveform in the space the model diffuses: x / sigma_c for a PriorGrad model, else x unchanged."""
    return priorgrad.whiten(x, cond, net.c, net.level) if isinstance(net, PriorGradNet) else x


def _synthesize(denoiser, n_samples, cond, sampler, steps, generator, fast_betas, batch, progress, device,
                spacing=None):
    device = device or next(denoiser.parameters()).device
    shape = (batch if cond is None else cond.shape[0], 1, n_samples)
    if sampler == "fast":
        if spacing is not None:
            raise ValueError(f"synthesize(sampler='fast'): the fast schedule fixes its own steps; spacing={spacing!r} "
                             "applies to the core samplers only")
        if fast_betas is None:
            raise ValueError("synthesize(sampler='fast'): this preset has no fast schedule; pass fast_betas")
        ts, abs_ = fast_schedule(denoiser.schedule.betas.tolist(), fast_betas)
        warn_direct_sinusoid(denoiser)
        return sample(ExplicitAlphaBars(denoiser, ts, abs_), shape, "ddpm", None, generator=generator, cond=cond,
                      device=device, timesteps=ts, alpha_bars=abs_, variance="beta_tilde", progress=progress)
    opts = {"variance": "beta_tilde"} if sampler == "ddpm" else {}
    spacing = spacing or AUDIO_SPACING.get(sampler)
    if spacing is not None:
        opts["spacing"] = spacing
    steps = steps or denoiser.schedule.T
    return sample(denoiser, shape, sampler, steps, generator=generator, cond=cond, device=device,
                  progress=progress, **opts)


def warn_direct_sinusoid(denoiser) -> None:
    """The fast schedule's steps are fractional: warn if the network embeds them with the direct sinusoid (a
    checkpoint made before lerp became the default), which a model trained at integer steps has never seen."""
    if any(isinstance(m, StepEmbedding) and m.mode == "sinusoid" for m in denoiser.modules()):
        warnings.warn("fast synthesis: this model embeds the schedule's fractional steps with the direct sinusoid "
                      "(model.step_embedding: sinusoid), unseen in training at integer steps; its output is much worse "
                      "than with 'lerp' (the reference's interpolation: same weights, identical at integer steps). "
                      "Set step_embedding to lerp in the checkpoint's config.json to use it.", stacklevel=3)


def vocode_mel(denoiser, model: ModelConfig, mel: torch.Tensor, sampler: str = "fast", steps=None, seed: int = 0,
               progress: bool = False, spacing: Optional[str] = None) -> torch.Tensor:
    """Mel (n_mels, frames) or (B, n_mels, frames) in the model's convention -> waveform (B, frames * hop)."""
    c = mel_convention(model)
    check_mel(mel, c, "vocode mel")
    mel = mel[None] if mel.ndim == 2 else mel
    device = next(denoiser.parameters()).device
    g = torch.Generator().manual_seed(seed)
    fb = preset(model.preset)["fast_betas"]
    x = synthesize(denoiser, mel.shape[-1] * c.hop, mel.float().to(device), sampler, steps, g, fb,
                   progress=progress, spacing=spacing)
    return x[:, 0].clamp(-1, 1)


def wav_to_mel(y: np.ndarray, model: ModelConfig) -> torch.Tensor:
    """Mel of a waveform padded to a multiple of the hop, trimmed to whole hops' worth of frames."""
    c = mel_convention(model)
    n = -(-len(y) // c.hop) * c.hop
    mel = mel_spectrogram(torch.from_numpy(np.pad(y, (0, n - len(y)))).float(), c)
    return mel[:, : n // c.hop]


def save_spectrograms(path: Path, panels: list[tuple[str, np.ndarray]], sample_rate: int, hop: int) -> None:
    """A PNG with one log-mel panel per (title, mel) pair, stacked vertically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.2 * len(panels)), squeeze=False)
    for ax, (title, m) in zip(axes[:, 0], panels):
        ax.imshow(m, origin="lower", aspect="auto", interpolation="nearest",
                  extent=(0, m.shape[1] * hop / sample_rate, 0, m.shape[0]))
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("mel bin")
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class AudioTask(Task):
    """DiffWave on waveforms (B, 1, L), conditioned on mels (B, n_mels, L / hop) or unconditional."""

    name = "audio"
    ModelConfig = ModelConfig
    DataConfig = DataConfig
    null_cond = None

    def build_net(self, model: ModelConfig, diffusion: Any):
        check_prior(model.prior, model.prior_level, model.conditional, "model")
        net = build_diffwave(model.preset, model.residual_layers, model.residual_channels, model.dilation_cycle,
                             model.n_mels if model.conditional else None, model.hop_length, diffusion.T,
                             model.step_embedding, model.upsampler_init, model.z_channels)
        return PriorGradNet(net, mel_convention(model), model.prior_level) if model.prior == "priorgrad" else net

    def build_discriminator(self, model: ModelConfig, data: Any, gan: Any):
        """DDGAN's D(x_{t-1}, x_t, t): a time-conditional strided 1-D conv net on the waveform pair (core.ddgan)."""
        from diffsuite.core.ddgan import ConvDiscriminator
        return ConvDiscriminator(1, 1, gan.d_width, gan.d_levels)

    def _files(self, data: DataConfig, split: str):
        from .data import list_files
        if data.source == "builtin":
            from .corpus import corpus_path
            return list_files("ljspeech", corpus_path(data.corpus_size, data.corpus_seed), split)
        if data.source == "chorales":
            from .render import corpus_wavs
            folder = corpus_wavs(tuple(data.instruments), limit=data.corpus_size, sr=data.sample_rate,
                                 seed=data.corpus_seed)
            return sorted(p for p in folder.glob("*.wav") if split_of(p.stem) == split)
        if data.path is None:
            raise ValueError(f"data.path is required for data.source={data.source!r}")
        if data.source == "filelist":
            return list_files("filelist", data.path if split == "train" else (data.eval_path or data.path), None)
        return list_files(data.source, data.path, split)

    def build_dataset(self, data: DataConfig, split: str = "train"):
        from .data import AudioClips
        check_prior(data.prior, data.prior_level, data.conditional, "data")
        c = convention(data.mel, data.sample_rate, data.n_mels, data.hop_length)
        clips = AudioClips(self._files(data, split), c, data.crop_samples, conditional=data.conditional,
                           short=data.short)
        return Whitened(clips, c, data.prior_level) if data.prior == "priorgrad" else clips

    def sample_shape(self, model: ModelConfig, data: DataConfig) -> tuple:
        check_formats(model, data)
        L = int(data.sample_seconds * data.sample_rate)
        return (1, L // data.hop_length * data.hop_length if data.conditional else L)

    def sample_cond(self, n: int, cfg: Any, generator: Optional[torch.Generator] = None):
        """Mels of the first n validation clips (from their start, cycling if fewer), for `diffsuite sample`."""
        if not cfg.model.conditional:
            return None
        from .data import load_audio
        L = self.sample_shape(cfg.model, cfg.data)[1]
        files = self._files(cfg.data, "val") or self._files(cfg.data, "train")
        if not files:
            raise ValueError("sample_cond: the data has no validation or training clips to take mels from")
        files = [files[i % len(files)] for i in range(n)]
        ys = [np.pad(y[:L], (0, max(0, L - len(y)))) for y in (load_audio(f, cfg.data.sample_rate) for f in files)]
        return torch.stack([wav_to_mel(y, cfg.model) for y in ys])

    def save_samples(self, x: torch.Tensor, cond, out_dir: Path, cfg: Any) -> dict:
        """One WAV per sample and a PNG of (conditioning mel, generated mel) spectrograms; x as sampled (a
        PriorGrad model's y = x / sigma_c is mapped back here)."""
        import soundfile as sf
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        m = cfg.model
        if m.prior == "priorgrad":
            x = priorgrad.unwhiten(x, cond.to(x.device), mel_convention(m), m.prior_level)
        paths, panels = {}, []
        for i, y in enumerate(x[:, 0].detach().float().cpu().clamp(-1, 1).numpy()):
            p = out_dir / f"sample_{i:03d}.wav"
            sf.write(str(p), y, m.sample_rate, subtype="PCM_16")
            paths[f"wav_{i}"] = str(p)
            if i < 4:
                if cond is not None:
                    panels.append((f"sample {i}: conditioning mel", cond[i].detach().cpu().numpy()))
                panels.append((f"sample {i}: mel of generated audio", wav_to_mel(y, m).numpy()))
        png = out_dir / "spectrograms.png"
        save_spectrograms(png, panels, m.sample_rate, m.hop_length)
        paths["spectrograms"] = str(png)
        return paths
