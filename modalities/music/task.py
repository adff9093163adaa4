"""MusicTask: polyphonic piano-roll diffusion (Polyffusion, Min et al. 2023) as a diffsuite Task.

x0 is a (2, T, P) roll in [-1, 1] (onset, sustain; time x pitch). With `chord_cond` the condition is a
per-beat chord sequence (beats, 36) fed by cross-attention; the null condition is all -1 (chord features
are 0/1), used for per-sample condition dropout and classifier-free guidance.
"""
from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from diffsuite.core.classify import Candidates
from diffsuite.core.config import ConfigError, valid
from diffsuite.core.task import Task
from diffsuite.core.utils import atomic_write_json

from . import chords
from .data import RollWindows, cached_midi_folder, corpus_pieces, split_pieces
from .roll import RollPiece, from_model, integrity_rate, piece_to_midi, to_model

NULL_CHORD = -1.0


@dataclass
class MusicModelConfig:
    """U-Net over (time x pitch); preset 'polyffusion' (64 ch, (1,2,4,4), attention + feed-forward at the two coarsest
    levels, 39.6M parameters) or 'small' (CPU: 4x4 patches, 48 ch, (1,2,4), pitch-aligned chord planes, 7.4M); a field
    left at None takes the preset's value."""

    preset: str = valid("small", choices=lambda: sorted(PRESETS))
    channels: Optional[int] = valid(None, min=1)
    channel_mults: Optional[list] = None
    num_res_blocks: Optional[int] = valid(None, min=1)
    attention_levels: Optional[list] = None  # level indices (0 = finest) with self-attention
    heads: int = valid(4, min=1)
    ff_mult: Optional[int] = None  # GEGLU feed-forward after each attention site (0: none)
    dropout: float = valid(0.0, min=0, max=1)
    patch: Optional[int] = None  # fold patch x patch roll cells into channels first (space-to-depth)
    chord_cond: bool = True
    chord_map: Optional[bool] = None  # also feed the chords as pitch-aligned input planes (needs pitch_lo)
    pitch_lo: Optional[int] = None  # the roll's lowest MIDI pitch; must equal data.pitch_lo (checked)
    chord_fold: int = valid(1, min=1)  # chord planes drawn at chord_fold x the input's size, folded into channels
    cond_dim: int = chords.CHORD_DIM
    z_channels: int = valid(0, min=0)  # a DDGAN generator's latent channels (core.ddgan; 0: a plain denoiser)
    in_channels: int = valid(2, min=1)  # the roll's onset and sustain planes (a latent model: the latent channels)


PRESETS = {
    "polyffusion": dict(channels=64, channel_mults=[1, 2, 4, 4], num_res_blocks=2, attention_levels=[2, 3],
                        ff_mult=4, patch=1, chord_map=False),
    # CPU: 4x4 patches (a 16 x 16 grid for a 64 x 64 roll), attention at the two coarsest levels and pitch-aligned
    # chord planes, so thousands of steps fit in minutes on two cores
    "small": dict(channels=48, channel_mults=[1, 2, 4], num_res_blocks=1, attention_levels=[1, 2],
                  ff_mult=0, patch=4, chord_map=True),
}


def resolved(model: MusicModelConfig) -> dict:
    """The preset's settings overridden by any field set explicitly in the config."""
    if model.preset not in PRESETS:
        raise ValueError(f"model.preset={model.preset!r}: valid: {sorted(PRESETS)}")
    out = dict(PRESETS[model.preset])
    out.update({k: getattr(model, k) for k in out if getattr(model, k) is not None})
    return out


@dataclass
class MusicDataConfig:
    """Source ('corpus:<collection>' of music21, default the Bach chorales, or a MIDI folder path) and roll geometry."""

    source: str = "corpus:bach"
    steps_per_beat: int = valid(4, min=1)
    seg_len: int = valid(64, min=1)
    n_pitch: int = valid(64, min=1, max=128)
    pitch_lo: int = valid(32, min=0, max=127)
    transpose_max: int = valid(5, min=0)
    metres: list = field(default_factory=lambda: ["3/4", "4/4"])
    limit: Optional[int] = valid(None, min=1)  # first N scores / files only (tests, quick runs)
    val_fraction: float = valid(0.1, min=0, max=1)
    test_fraction: float = valid(0.1, min=0, max=1)
    seed: int = 0  # unused: transpositions follow train.seed (the trainer's per-item RNG); kept so old configs load


@functools.lru_cache(maxsize=4)
def _pieces(data_key: str) -> list[RollPiece]:
    d = MusicDataConfig(**json.loads(data_key))
    if d.source.startswith("corpus:"):
        return corpus_pieces(d.source.split(":", 1)[1], d.steps_per_beat, d.n_pitch, d.pitch_lo, tuple(d.metres),
                             d.limit)
    pieces = cached_midi_folder(d.source, d.steps_per_beat, d.n_pitch, d.pitch_lo)
    return pieces[:d.limit] if d.limit else pieces


def pieces_for(data: MusicDataConfig, split: str) -> list[RollPiece]:
    """The pieces of a split (cached in-process)."""
    return split_pieces(_pieces(json.dumps(asdict(data), sort_keys=True)), split, data.val_fraction,
                        data.test_fraction)


class MusicTask(Task):
    name = "music"
    ModelConfig = MusicModelConfig
    DataConfig = MusicDataConfig
    null_cond = NULL_CHORD

    def build_net(self, model: MusicModelConfig, diffusion=None) -> torch.nn.Module:
        from .model import RollUNet
        kw = resolved(model)
        kw["chord_map"] = kw["chord_map"] and model.chord_cond
        if kw["chord_map"] and model.pitch_lo is None:
            raise ValueError("model.chord_map needs model.pitch_lo (set it to data.pitch_lo) to align chords with pitches")
        return RollUNet(**kw, heads=model.heads, dropout=model.dropout, pitch_lo=model.pitch_lo,
                        cond_dim=model.cond_dim if model.chord_cond else None, z_channels=model.z_channels,
                        in_ch=model.in_channels, chord_fold=model.chord_fold)

    def build_autoencoder(self, model: MusicModelConfig, data: MusicDataConfig, ae):
        """The image modality's convolutional encoder / decoder on the roll's two planes (time x pitch)."""
        from diffsuite.modalities.image.autoencoder import build_decoder, build_encoder
        args = (2, ae.latent_channels, ae.factor, ae.channels, ae.num_res_blocks)
        return build_encoder(*args), build_decoder(*args)

    def data_shape(self, data: MusicDataConfig) -> tuple:
        return (2, data.seg_len, data.n_pitch)

    def latent_model(self, model: MusicModelConfig, shape: tuple, factor: int) -> MusicModelConfig:
        """The roll U-Net on latents: shape[0] input channels and no space-to-depth patches (the latent grid is already
        coarse); pitch-aligned chord planes, when the model has them, are drawn at the roll's size and folded into
        channels at the latent's (chord_fold = f), as the pixel model's patches fold them."""
        from dataclasses import replace
        return replace(model, in_channels=shape[0], patch=1, chord_fold=factor)

    def build_discriminator(self, model: MusicModelConfig, data: MusicDataConfig, gan):
        """DDGAN's D(x_{t-1}, x_t, t): a time-conditional conv net over the two roll planes (core.ddgan)."""
        from diffsuite.core.ddgan import ConvDiscriminator
        return ConvDiscriminator(2, 2, gan.d_width, gan.d_levels)

    def classification_inputs(self, recipe, source: str):
        """Chord recognition from the model alone (core.classify): for each window of a split (in a fixed shuffled
        order, so --n takes a random sample), the chord of one beat (the middle one, else the nearest sounding one),
        labelled by the chord extractor as one of 36 triads (12 roots x major, minor, diminished; sevenths count as
        their triad). Each window's candidates are its own chord condition with that beat replaced by each triad in
        each inversion (108 conditions, 3 per class): the model sees the rest of the progression, as when sampling."""
        if not recipe.model.chord_cond:
            raise ConfigError("classify needs a chord-conditioned music model (model.chord_cond=true)")
        if source not in ("train", "val", "test"):
            raise ConfigError(f"classify --input {source!r}: a music model classifies the windows of a split: "
                              "train, val or test")
        d = recipe.data
        ds = RollWindows(pieces_for(d, source), d.seg_len)
        rows, class_of, _ = chords.triad_conditions()
        xs, conds, labels, beats = [], [], [], []
        for j in torch.randperm(len(ds), generator=torch.Generator().manual_seed(0)).tolist():
            w = ds.window(j)
            chroma, bass = chords.chroma_bass(w, d.pitch_lo, d.steps_per_beat)
            sounding = np.nonzero(bass >= 0)[0]
            if not len(sounding):
                continue
            b = int(sounding[np.argmin(np.abs(sounding - len(bass) // 2))])
            c = np.repeat(chords.encode(chroma, bass)[None], len(rows), 0)
            c[:, b] = rows
            xs.append(to_model(w))
            conds.append(torch.from_numpy(c))
            labels.append(chords.triad_class(chroma[b], int(bass[b])))
            beats.append(b)
        return Candidates(torch.stack(xs), torch.stack(conds), chords.triad_names(), torch.tensor(labels),
                          per_input=True, class_of=torch.from_numpy(class_of), where=beats)

    def build_dataset(self, data: MusicDataConfig, split: str = "train"):
        pieces = pieces_for(data, split)
        if not pieces:
            raise ConfigError(f"music data {data.source!r}: no pieces in the {split!r} split (pieces are split by name: "
                              f"{data.val_fraction:.0%} val, {data.test_fraction:.0%} test); add pieces or change "
                              "data.val_fraction / data.test_fraction")
        ds = RollWindows(pieces, data.seg_len, data.transpose_max if split == "train" else 0)
        return ds

    def sample_shape(self, model, data: MusicDataConfig) -> tuple:
        check_formats(model, data)
        return (2, data.seg_len, data.n_pitch)

    def sample_cond(self, n: int, cfg, generator: Optional[torch.Generator] = None):
        """Chords of n random held-out (val) windows, so chord accuracy is measured on unseen progressions."""
        if not cfg.model.chord_cond:
            return None
        ds = self.build_dataset(cfg.data, "val")
        idx = torch.randint(len(ds), (n,), generator=generator)
        return torch.stack([ds[int(i)]["cond"] for i in idx])

    def save_samples(self, x: torch.Tensor, cond, out_dir: Path, cfg) -> dict:
        return save_rolls(from_model(x), cond, Path(out_dir), cfg.data)


def check_formats(model: MusicModelConfig, data: MusicDataConfig) -> None:
    """A network with pitch-aligned chord planes must be built for the data's lowest pitch."""
    if model is not None and model.pitch_lo is not None and model.pitch_lo != data.pitch_lo:
        raise ValueError(f"model.pitch_lo={model.pitch_lo} differs from data.pitch_lo={data.pitch_lo}: "
                         "the chord planes would be misaligned with the pitch axis")


def piece_of(roll: np.ndarray, data: MusicDataConfig, qpm: float = 100.0) -> RollPiece:
    bpb = 4.0 if data.seg_len % (4 * data.steps_per_beat) == 0 else 3.0
    return RollPiece(roll, data.steps_per_beat, bpb, (int(bpb), 4), qpm, 0, data.pitch_lo)


def save_rolls(rolls: np.ndarray, cond, out_dir: Path, data: MusicDataConfig, wav: bool = True) -> dict:
    """Per roll: MIDI, piano-roll PNG and a WAV preview; plus stats.json (integrity, chord accuracy)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files, stats = {}, []
    for i, r in enumerate(rolls):
        pm = piece_to_midi(piece_of(r, data))
        pm.write(str(out_dir / f"piece_{i:02d}.mid"))
        files[f"midi_{i}"] = str(out_dir / f"piece_{i:02d}.mid")
        s = {"integrity": integrity_rate(r), "notes": int(r[0].sum())}
        if isinstance(cond, torch.Tensor):
            s["chord_accuracy"] = chords.accuracy(r, cond[i].cpu().numpy(), data.pitch_lo, data.steps_per_beat)
        stats.append(s)
        if wav:
            files[f"wav_{i}"] = write_wav(pm, out_dir / f"piece_{i:02d}.wav")
    files["png"] = plot_rolls(rolls, out_dir / "pianoroll.png", data)
    atomic_write_json(out_dir / "stats.json", stats)
    files["stats"] = str(out_dir / "stats.json")
    return files


def write_wav(pm, path: Path, fs: int = 22050) -> str:
    """Audio preview: fluidsynth with its default soundfont where installed, else pretty_midi's sine synthesiser."""
    import soundfile as sf
    try:
        audio = pm.fluidsynth(fs=fs)
    except Exception:
        audio = pm.synthesize(fs=fs)
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    sf.write(str(path), (audio / peak * 0.8 if peak > 0 else audio).astype(np.float32), fs)
    return str(path)


def plot_rolls(rolls: np.ndarray, path: Path, data: MusicDataConfig) -> str:
    """A grid of piano rolls: onsets dark, sustains light; pitch upward, time rightward, bar lines drawn."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = len(rolls)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, r in zip(axes.flat, rolls):
        img = np.maximum(r[1] * 0.45, r[0] * 1.0)
        ax.imshow(img, origin="lower", aspect="auto", cmap="Greys", vmin=0, vmax=1,
                  extent=(0, r.shape[-1], data.pitch_lo, data.pitch_lo + r.shape[1]))
        bar = 4 * data.steps_per_beat
        for b in range(bar, r.shape[-1], bar):
            ax.axvline(b, color="tab:blue", lw=0.5)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)
