"""Timbre transfer (DiffTransfer, Comanducci, Antonacci & Sarti, ISMIR 2023): image-to-image diffusion on log-mel
spectrograms. The target instrument's spectrogram is generated with the source instrument's spectrogram of the same
music as a source condition (core.conditions; concatenated to x_t by the network); a vocoder turns it back to audio.

The network is the image modality's U-Net (a deliberate reuse, as the music model reuses its blocks) on (1, 128, F)
log-mel patches in the reference's representation (`mel.CONVENTIONS['difftransfer']`: 16 kHz, n_fft 1024, window 640,
hop 320, 128 mels to 8 kHz, natural log clamped at 1e-5), 128 frames (2.56 s) per patch.

Normalisation: log-mel values map linearly from the fixed range [log 1e-5, 6] to [-1, 1] for every clip, so the output
is de-normalised by the same map and keeps the loudness the model learned for the target instrument. The reference
min-max normalises each clip and de-normalises the output with the *source* clip's range, which is wrong whenever the
two instruments' ranges differ (they always do); a fixed map needs no statistics at all.

Data: the built-in paired corpus (`render.render_corpus`: Bach chorales rendered with a General MIDI SoundFont, one
arrangement of instruments for the source, one for the target, sample-aligned, split by chorale), or a user's pairs
(two folders with the same file names, resampled to 16 kHz and cut to the shorter of each pair).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from diffsuite.core.config import ConfigError, valid
from diffsuite.core.task import Task
from diffsuite.core.utils import split_of

from .mel import convention, mel_spectrogram

MEL = "difftransfer"
LOG_LO, LOG_HI = math.log(1e-5), 6.0  # the fixed normalisation's range of natural-log mel values


def log_mel(y: np.ndarray) -> torch.Tensor:
    """(128, F) log-mel of 16 kHz mono audio in the reference's representation."""
    return mel_spectrogram(torch.as_tensor(y, dtype=torch.float32), convention(MEL))


def normalise(m: torch.Tensor) -> torch.Tensor:
    """Log-mel values from [LOG_LO, LOG_HI] to [-1, 1] (the fixed map; see the module docstring)."""
    return ((m - LOG_LO) / (LOG_HI - LOG_LO) * 2 - 1).clamp(-1, 1)


def denormalise(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(-1, 1) + 1) / 2 * (LOG_HI - LOG_LO) + LOG_LO


@dataclass
class TimbreData:
    """Paired recordings: the built-in rendered chorales or two folders of one's own, and how they are cut."""

    source: str = valid("chorales", choices=("chorales", "folders"))
    source_instruments: list = field(default_factory=lambda: ["clarinet"])  # chorales: one per voice, or one for all
    target_instruments: list = field(default_factory=lambda: ["strings"])
    path: Optional[str] = None  # folders: the source recordings
    target_path: Optional[str] = None  # folders: the target recordings, the same file names
    limit: int = valid(60, min=1)  # chorales: how many (a name-hash split: of 60, 56 train, 2 val, 2 test)
    tempo: list = field(default_factory=lambda: [80.0, 100.0])  # chorales: quarter notes per minute, drawn per chorale
    velocity: list = field(default_factory=lambda: [70, 100])
    patch: int = valid(128, min=16)  # frames per patch (the model's image_size; 128 = 2.56 s)
    seed: int = 0


class MelPairs(torch.utils.data.Dataset):
    """Aligned (source, target) log-mel patches: random crops for training, a fixed grid for val / test;
    items {"x0": target (1, 128, patch), "cond": {"source": source (1, 128, patch)}}."""

    def __init__(self, pairs: list[tuple[torch.Tensor, torch.Tensor]], patch: int, train: bool):
        self.pairs, self.patch, self.train = pairs, patch, train
        self.index = [(k, s) for k, (a, _) in enumerate(pairs) for s in range(0, a.shape[-1] - patch + 1, patch)]
        if not self.index:
            raise ValueError(f"no recording is at least {patch} frames long")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i):
        k, s = self.index[i]
        src, tgt = self.pairs[k]
        if self.train:
            s = int(torch.randint(src.shape[-1] - self.patch + 1, ()))
        return {"x0": tgt[None, :, s:s + self.patch], "cond": {"source": src[None, :, s:s + self.patch]}}


def _audio_pairs(data: TimbreData, split: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    if data.source == "chorales":
        from .render import render_corpus
        kw = dict(limit=data.limit, tempo=tuple(data.tempo), velocity=tuple(data.velocity), seed=data.seed)
        a, b = render_corpus(tuple(data.source_instruments), **kw), render_corpus(tuple(data.target_instruments), **kw)
        return [(n, a[n].astype(np.float32) / 32767, b[n].astype(np.float32) / 32767) for n in a if split_of(n) == split]
    from .data import load_audio
    if not data.path or not data.target_path:
        raise ValueError("data.source=folders needs data.path (source recordings) and data.target_path (targets)")
    src, tgt = Path(data.path), Path(data.target_path)
    for folder, key in ((src, "data.path"), (tgt, "data.target_path")):
        if not folder.is_dir():
            raise ValueError(f"{key}: folder {folder} not found")
    names = sorted(p.name for p in src.glob("*.wav") if split_of(p.name) == split)
    unpaired = [n for n in names if not (tgt / n).is_file()]
    if unpaired:
        warnings.warn(f"timbre data: {len(unpaired)} recording(s) in {src} have no file of the same name in {tgt} "
                      f"and are skipped (first: {unpaired[0]})")
    out = []
    for n in (n for n in names if n not in unpaired):
        try:
            y, z = load_audio(src / n, 16000), load_audio(tgt / n, 16000)
        except Exception as e:  # an unreadable or empty file: skipped, named
            warnings.warn(f"timbre data: skipped the pair {n}: cannot read it ({type(e).__name__}: {e})")
            continue
        L = min(len(y), len(z))
        out.append((n, y[:L], z[:L]))
    return out


class TimbreTask(Task):
    """Spectrogram-to-spectrogram diffusion for timbre transfer (see the module docstring)."""

    name = "timbre"
    DataConfig = TimbreData

    @property
    def ModelConfig(self):  # the image U-Net's config, reused (image_size = the patch, one input channel)
        from diffsuite.modalities.image.task import ModelConfig
        return ModelConfig

    def configure(self, model, data: TimbreData):
        from dataclasses import replace
        if model.num_classes:
            raise ConfigError("model.num_classes: a timbre model has no class labels")
        return replace(model, image_size=model.image_size or data.patch, in_channels=1, source_channels=1)

    def build_net(self, model, diffusion):
        from diffsuite.modalities.image.task import build_image_net
        return build_image_net(model, diffusion)

    def build_dataset(self, data: TimbreData, split: str = "train"):
        pairs = []
        for name, y, z in _audio_pairs(data, split):
            pairs.append((normalise(log_mel(y)), normalise(log_mel(z))))
        if not pairs:
            raise ValueError(f"timbre data: no pairs in the {split!r} split (split by name: about 10% val, 10% test); "
                             "add recordings or raise data.limit")
        return MelPairs(pairs, data.patch, split == "train")

    def sample_shape(self, model, data: TimbreData) -> tuple:
        n_mels = convention(MEL).n_mels
        if model.image_size not in (None, data.patch):
            raise ValueError(f"timbre recipe: model.image_size={model.image_size} but data.patch={data.patch}")
        return (1, n_mels, data.patch)

    def sample_cond(self, n: int, cfg, generator=None):
        """Sources of the first n held-out (val) patches."""
        ds = self.build_dataset(cfg.data, "val")
        return {"source": torch.stack([ds[i % len(ds)]["cond"]["source"] for i in range(n)])}

    def save_samples(self, x: torch.Tensor, cond, out_dir: Path, cfg) -> dict:
        """A PNG of (source, output) spectrogram pairs and a Griffin-Lim WAV of each output (a preview)."""
        import soundfile as sf
        from .task import save_spectrograms
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        files = super().save_samples(x, cond, out_dir, cfg)
        c = convention(MEL)
        panels = []
        for i, (s, y) in enumerate(zip(cond["source"][:4], x[:4])):
            m = denormalise(y[0].float().cpu())
            panels += [(f"source {i}", denormalise(s[0].cpu()).numpy()), (f"output {i}", m.numpy())]
            sf.write(str(out_dir / f"sample_{i:03d}.wav"), griffin_lim(m), c.sample_rate, subtype="PCM_16")
        save_spectrograms(out_dir / "spectrograms.png", panels, c.sample_rate, c.hop)
        return {**files, "png": str(out_dir / "spectrograms.png")}


def griffin_lim(m: torch.Tensor, n_iter: int = 32) -> np.ndarray:
    """Audio from a log-mel (128, F): the STFT magnitude from the filterbank's pseudo-inverse (clipped at 0; librosa's
    NNLS inverse is far slower), then Griffin-Lim's phase (librosa): the no-training vocoder."""
    import librosa
    from .mel import _mel_basis
    c = convention(MEL)
    S = np.maximum(np.linalg.pinv(_mel_basis(c).numpy()) @ m.exp().numpy(), 0.0)
    y = librosa.griffinlim(S, n_iter=n_iter, hop_length=c.hop, win_length=c.win, n_fft=c.n_fft, center=c.center,
                           random_state=0)
    return np.clip(y, -1, 1).astype(np.float32)


def read_recording(path: str | Path) -> tuple[np.ndarray, dict]:
    """A recording as 16 kHz mono float32 (stereo is averaged, another rate resampled; both noted), refusing one
    shorter than an STFT window."""
    import soundfile as sf
    from .data import load_audio
    c = convention(MEL)
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--wav {path}: file not found")
    try:
        info = sf.info(str(p))
        y = load_audio(p, c.sample_rate)  # the audio modality's reader: channel mean, polyphase resampling
    except Exception as e:  # soundfile: any unreadable or empty file
        raise ConfigError(f"--wav {path}: cannot read it as audio ({type(e).__name__}); expected a WAV or FLAC file") from e
    notes = {"channels": int(info.channels), "sample_rate": int(info.samplerate)}
    if len(y) < c.n_fft:
        raise ConfigError(f"--wav {path}: {len(y) / c.sample_rate:.3f} s of audio is too short to transfer (at least "
                          f"{c.n_fft} samples at {c.sample_rate} Hz)")
    return y, notes


def transfer_mel(loaded, y: np.ndarray, steps: Optional[int] = None, seed: int = 0,
                 overlap: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(source log-mel, output log-mel, settings) for 16 kHz audio y of any length: its normalised log-mel is the
    source of a canvas of the same length sampled through overlapping patches blended at every step (core.tiles: no
    seams); both mels (128, F) in natural-log units."""
    from diffsuite.core.samplers import sample
    from diffsuite.core.tiles import TiledDenoiser
    r = loaded.recipe
    src = normalise(log_mel(y))
    F, patch = src.shape[-1], r.data.patch
    canvas = torch.nn.functional.pad(src, (0, max(0, patch - F)), value=-1.0)[None, None]  # silence to one patch
    den = TiledDenoiser(loaded.denoiser, patch, patch // 4 if overlap is None else overlap)
    steps = steps or r.sample.steps
    with torch.no_grad():
        x = sample(den, tuple(canvas.shape), r.sample.sampler, steps, generator=torch.Generator().manual_seed(seed),
                   cond={"source": canvas}, eta=r.sample.eta)
    return denormalise(src), denormalise(x[0, 0, :, :F].float()), {"frames": F, "patch": patch,
                                                                    "overlap": den.overlap, "steps": steps}


def transfer(loaded, wav: str, out: str | Path, vocoder=None, steps: Optional[int] = None, seed: int = 0,
             overlap: Optional[int] = None, target: Optional[str] = None) -> dict:
    """A recording of any length played by the model's target instrument (transfer_mel), vocoded (`vocoder`: a
    DiffWave checkpoint in the difftransfer mel convention, or None for Griffin-Lim), written as a WAV and a PNG of
    source / output (/ target) spectrograms."""
    import soundfile as sf
    from .task import save_spectrograms
    c = convention(MEL)
    y, notes = read_recording(wav)
    src, mel_out, info = transfer_mel(loaded, y, steps, seed, overlap)
    audio = griffin_lim(mel_out) if vocoder is None else vocode_with(vocoder, mel_out, seed)
    audio = np.pad(audio, (0, max(0, len(y) - len(audio))))[: len(y)]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(out), audio, c.sample_rate, subtype="PCM_16")
    panels = [("source", src.numpy()), ("output", mel_out.numpy())]
    if target is not None:
        panels.append(("target", log_mel(read_recording(target)[0]).numpy()))
    save_spectrograms(out.with_suffix(".png"), panels, c.sample_rate, c.hop)
    return {"wav": str(out), "png": str(out.with_suffix(".png")), "input": str(wav), **{f"input_{k}": v for k, v in notes.items()},
            "seconds": len(y) / c.sample_rate, **info,
            "vocoder": "griffin-lim" if vocoder is None else str(vocoder.checkpoint)}


def vocode_with(voc, mel: torch.Tensor, seed: int) -> np.ndarray:
    """A DiffWave vocoder checkpoint (recipes.run.load result) on a difftransfer log-mel (128, F)."""
    from .task import vocode_mel
    m = voc.recipe.model
    if m.mel != MEL or not m.conditional:
        raise ConfigError(f"--vocoder {voc.checkpoint}: expected a DiffWave vocoder in the '{MEL}' mel convention, got "
                          f"model.mel={m.mel!r}")
    with torch.no_grad():
        return vocode_mel(voc.denoiser, m, mel, "fast", None, seed)[0].numpy()
