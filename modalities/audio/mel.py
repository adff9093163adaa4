"""Mel spectrogram frontend in plain torch (STFT) with librosa's filterbank, in two named conventions.

- `hifigan` (Kong et al. 2020b, HiFi-GAN's meldataset): 22050 Hz, n_fft 1024, hop 256, win 1024, 80 mels,
  fmin 0, fmax 8000, Slaney mel scale and norm, reflect padding (n_fft - hop) / 2 without centring,
  magnitude, natural log of clamp(x, 1e-5). Frames = samples // hop.
- `diffwave` (the reference DiffWave preprocess): n_fft 1024, hop 256, win 4 * hop, 80 mels, fmin 20,
  fmax sr / 2, HTK mel scale without norm, centred STFT normalised by the window norm, magnitude,
  20 log10(clamp(x, 1e-5)) - 20, then (x + 100) / 100 clamped to [0, 1]. Frames = samples // hop + 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

LOG_CLAMP = 1e-5


@dataclass(frozen=True)
class MelConvention:
    name: str
    sample_rate: int = 22050
    n_fft: int = 1024
    hop: int = 256
    win: int = 1024
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float | None = 8000.0  # None: sample_rate / 2
    htk: bool = False
    norm: str | None = "slaney"
    center: bool = False
    normalized: bool = False

    @property
    def f_max(self) -> float:
        return self.fmax if self.fmax is not None else self.sample_rate / 2


CONVENTIONS = {
    "hifigan": MelConvention("hifigan"),
    "diffwave": MelConvention("diffwave", fmin=20.0, fmax=None, htk=True, norm=None, center=True, normalized=True),
    # DiffTransfer (Comanducci et al. 2023): 16 kHz, n_fft 1024, window 640, hop 320, 128 mels up to 8 kHz (HTK scale,
    # no norm, as torchaudio's MelSpectrogram), centred STFT, natural log of the magnitude clamped at 1e-5
    "difftransfer": MelConvention("difftransfer", sample_rate=16000, hop=320, win=640, n_mels=128, htk=True, norm=None,
                                  center=True),
}
LOG_COMPRESSED = ("hifigan", "difftransfer")  # natural log of clamp(x, 1e-5); the others: DiffWave's dB scaling


def convention(name: str, sample_rate: int | None = None, n_mels: int | None = None, hop: int | None = None):
    """A named convention, optionally at another rate / mel count / hop (win scales with hop for `diffwave`)."""
    if name not in CONVENTIONS:
        raise ValueError(f"mel convention {name!r} unknown; valid: {sorted(CONVENTIONS)}")
    c = CONVENTIONS[name]
    kw = {}
    if sample_rate is not None:
        kw["sample_rate"] = sample_rate
    if n_mels is not None:
        kw["n_mels"] = n_mels
    if hop is not None and hop != c.hop:
        kw["hop"] = hop
        kw["win"] = 4 * hop if name == "diffwave" else c.win
    return MelConvention(**{**c.__dict__, **kw})


@lru_cache(maxsize=16)
def _mel_basis(c: MelConvention) -> torch.Tensor:
    import librosa
    fb = librosa.filters.mel(sr=c.sample_rate, n_fft=c.n_fft, n_mels=c.n_mels, fmin=c.fmin, fmax=c.f_max,
                             htk=c.htk, norm=c.norm)
    return torch.from_numpy(fb.astype(np.float32))


def stft_magnitude(audio: torch.Tensor, c: MelConvention) -> torch.Tensor:
    """|STFT| (B, n_fft/2+1, frames) with the convention's padding and normalisation."""
    window = torch.hann_window(c.win, dtype=audio.dtype, device=audio.device)
    if not c.center:
        pad = (c.n_fft - c.hop) // 2
        audio = F.pad(audio.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    spec = torch.stft(audio, c.n_fft, c.hop, c.win, window, center=c.center, pad_mode="reflect",
                      return_complex=True)
    mag = spec.abs()
    if c.normalized:
        mag = mag / window.pow(2).sum().sqrt()
    return mag


def mel_magnitude(audio: torch.Tensor, c: MelConvention) -> torch.Tensor:
    """Mel filterbank applied to the STFT magnitude, before compression."""
    return torch.matmul(_mel_basis(c).to(audio.device, audio.dtype), stft_magnitude(audio, c))


def compress(mel: torch.Tensor, name: str) -> torch.Tensor:
    """Dynamic-range compression of a linear mel: natural log (hifigan) or dB scaled to [0, 1] (diffwave)."""
    if name in LOG_COMPRESSED:
        return torch.log(mel.clamp(min=LOG_CLAMP))
    db = 20 * torch.log10(mel.clamp(min=LOG_CLAMP)) - 20
    return ((db + 100) / 100).clamp(0.0, 1.0)


def mel_spectrogram(audio: torch.Tensor, c: MelConvention | str = "hifigan") -> torch.Tensor:
    """Log mel spectrogram (B, n_mels, frames) of audio (B, L) or (L,) in [-1, 1] at c.sample_rate."""
    c = convention(c) if isinstance(c, str) else c
    squeeze = audio.ndim == 1
    audio = audio[None] if squeeze else audio
    if audio.ndim != 2:
        raise ValueError(f"mel_spectrogram: audio must have shape (L,) or (B, L), got {tuple(audio.shape)}")
    mel = compress(mel_magnitude(audio.float(), c), c.name)
    return mel[0] if squeeze else mel


def n_frames(n_samples: int, c: MelConvention) -> int:
    """Frames the convention produces for n_samples of audio."""
    return n_samples // c.hop + 1 if c.center else (n_samples + 2 * ((c.n_fft - c.hop) // 2) - c.n_fft) // c.hop + 1


def check_mel(mel: torch.Tensor, c: MelConvention, where: str = "mel") -> None:
    """Refuse a mel of the wrong shape or value range for the vocoder's convention, saying what was expected."""
    if mel.ndim not in (2, 3) or mel.shape[-2] != c.n_mels:
        raise ValueError(f"{where}: expected a mel of shape ({c.n_mels}, frames) or (B, {c.n_mels}, frames) "
                         f"in the {c.name!r} convention, got {tuple(mel.shape)}")
    if mel.shape[-1] < 1:
        raise ValueError(f"{where}: the mel has 0 frames (shape {tuple(mel.shape)}); expected at least one")
    bad = int((~torch.isfinite(mel)).sum())
    if bad:
        raise ValueError(f"{where}: {bad} of {mel.numel()} values are NaN or infinite; expected a finite mel")
    lo, hi = float(mel.min()), float(mel.max())
    if c.name == "diffwave" and (lo < -1e-4 or hi > 1 + 1e-4):
        raise ValueError(f"{where}: values in [{lo:.3g}, {hi:.3g}] but the 'diffwave' convention is scaled to "
                         "[0, 1]; is this a natural-log ('hifigan') mel?")
    if c.name == "hifigan" and (lo < np.log(LOG_CLAMP) - 1e-3 or hi > 12 or lo >= 0):
        raise ValueError(f"{where}: values in [{lo:.3g}, {hi:.3g}] but the 'hifigan' convention is a natural log "
                         f"in [{np.log(LOG_CLAMP):.2f}, ~8] with negative values; is this a [0, 1] 'diffwave' mel?")
