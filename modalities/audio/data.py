"""Audio datasets: a folder of WAV/FLAC files, the LJSpeech layout, or a `path|text` file list.

Every clip is mixed down to mono and resampled to the model rate; its mel spectrogram is computed once and
cached in the diffsuite cache (`audio/mels/`, keyed by the file's path, with the convention's settings and a
version tag), never in the data folder. Items are aligned random crops of audio and mel, drawn with torch's global RNG
(the trainer seeds it per item, so crops are reproducible). Unreadable files are skipped with a warning.
"""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import soundfile as sf
import torch

from diffsuite.core.utils import atomic_path, cache_dir

from .mel import MelConvention, mel_spectrogram, n_frames

MEL_CACHE_VERSION = 1
AUDIO_EXTS = (".wav", ".flac")
SOURCES = ("folder", "ljspeech", "filelist")


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Read a WAV/FLAC file as float32 mono in [-1, 1] at sample_rate (channel mean, polyphase resampling)."""
    y, sr = sf.read(str(path), dtype="float32", always_2d=True)
    y = y.mean(axis=1)
    if y.size == 0:
        raise ValueError("no samples")
    if sr != sample_rate:
        import librosa
        y = librosa.resample(y, orig_sr=sr, target_sr=sample_rate, res_type="polyphase").astype(np.float32)
    return y


def folder_split(rel: str) -> str:
    """Fixed split of a folder of files by a hash of the relative path: 5% test, 5% val, 90% train."""
    h = int(hashlib.sha1(rel.encode()).hexdigest(), 16) % 100
    return "test" if h < 5 else "val" if h < 10 else "train"


def list_folder(root: Path, split: Optional[str]) -> list[Path]:
    if not root.is_dir():
        raise FileNotFoundError(f"audio folder {root} does not exist or is not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTS and p.is_file())
    if not files:
        raise ValueError(f"audio folder {root}: no audio files ({', '.join(AUDIO_EXTS)}, searched recursively)")
    return [p for p in files if split is None or folder_split(str(p.relative_to(root))) == split]


def ljspeech_split(utt_id: str) -> str:
    """The held-out split used here for LJSpeech: LJ001-* test, LJ002-* val, the rest train."""
    return "test" if utt_id.startswith("LJ001-") else "val" if utt_id.startswith("LJ002-") else "train"


def ljspeech_metadata(root: Path) -> list[tuple[str, str]]:
    """(id, text) per line of an LJSpeech layout's metadata.csv (id|text|normalised text, no header): the last field,
    the normalised text where there is one; "" for a line with an id only."""
    meta = Path(root) / "metadata.csv"
    if not meta.is_file():
        raise FileNotFoundError(f"LJSpeech layout: {meta} not found (expected id|text lines and a wavs/ folder)")
    rows = [line.split("|") for line in meta.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(r[0].strip(), r[-1].strip() if len(r) > 1 else "") for r in rows]


def list_ljspeech(root: Path, split: Optional[str]) -> list[Path]:
    """LJSpeech layout: metadata.csv (id|text|normalised text, no header) and wavs/<id>.wav.

    If root/splits/<split>.txt exists (one id per line, as the built-in corpus writes), it defines the split.
    """
    ids = [i for i, _ in ljspeech_metadata(root)]
    split_file = root / "splits" / f"{split}.txt"
    if split is not None and split_file.is_file():
        keep = set(split_file.read_text().split())
        ids = [i for i in ids if i in keep]
    elif split is not None:
        ids = [i for i in ids if ljspeech_split(i) == split]
    return [root / "wavs" / f"{i}.wav" for i in ids]


def list_filelist(path: Path) -> list[Path]:
    """`path|text` lines (text optional); relative paths are relative to the list file's folder."""
    if not path.is_file():
        raise FileNotFoundError(f"file list {path} not found (expected lines 'path|text')")
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            p = Path(line.split("|", 1)[0].strip())
            out.append(p if p.is_absolute() else path.parent / p)
    return out


def list_files(source: str, path: str | Path, split: Optional[str]) -> list[Path]:
    path = Path(path)
    if source == "folder":
        if not path.is_dir():
            raise FileNotFoundError(f"data.path: folder {path} not found")
        return list_folder(path, split)
    if source == "ljspeech":
        return list_ljspeech(path, split)
    if source == "filelist":
        return list_filelist(path)
    raise ValueError(f"data.source: unknown {source!r}; valid: {SOURCES}")


def mel_cache_path(audio_path: Path, c: MelConvention) -> Path:
    """Where a clip's mel is cached: in the diffsuite cache (never in the user's data folder), keyed by the file's
    absolute path, with the convention, its settings' hash and a version tag."""
    tag = hashlib.sha1(repr(sorted(c.__dict__.items())).encode()).hexdigest()[:8]
    name = f"{audio_path.name}.{c.name}-{tag}.v{MEL_CACHE_VERSION}.mel.npy"
    key = hashlib.sha1(str(audio_path.resolve()).encode()).hexdigest()[:16]
    return cache_dir("audio", "mels", key[:2]) / f"{key}.{name}"


def load_or_compute_mel(audio_path: Path, y: np.ndarray, c: MelConvention) -> np.ndarray:
    p = mel_cache_path(audio_path, c)
    if p.is_file() and p.stat().st_mtime >= audio_path.stat().st_mtime:
        try:
            mel = np.load(p, allow_pickle=False)
            if mel.shape == (c.n_mels, n_frames(len(y), c)):
                return mel
        except (OSError, ValueError):
            pass
    mel = mel_spectrogram(torch.from_numpy(y), c).numpy().astype(np.float32)
    with atomic_path(p) as tmp:
        np.save(tmp, mel)
    return mel


@dataclass
class Clip:
    path: Path
    n_samples: int


class AudioClips(torch.utils.data.Dataset):
    """Aligned random crops of audio (1, crop) and mel (n_mels, crop / hop) from a list of audio files."""

    def __init__(self, files: list[Path], c: MelConvention, crop_samples: int, conditional: bool = True,
                 short: str = "pad", progress: bool = True):
        if conditional and crop_samples % c.hop:
            raise ValueError(f"data.crop_samples={crop_samples} must be a multiple of the hop length {c.hop}")
        if short not in ("pad", "skip"):
            raise ValueError(f"data.short: unknown {short!r}; valid: pad, skip")
        self.c, self.crop, self.conditional, self.short = c, crop_samples, conditional, short
        self.clips, self.skipped, self.too_short = self._scan(files, progress)
        if not self.clips:
            raise ValueError(f"no usable audio among {len(files)} files ({len(self.skipped)} unreadable, "
                             f"{len(self.too_short)} shorter than {crop_samples} samples)")

    def _scan(self, files, progress):
        from tqdm.auto import tqdm
        clips, bad, short = [], [], []
        for f in tqdm(files, desc="audio files", disable=not progress or len(files) < 50):
            try:
                y = load_audio(f, self.c.sample_rate)
                if not np.isfinite(y).all():
                    raise ValueError("non-finite samples")
            except Exception as e:  # noqa: BLE001 - any unreadable file is skipped and named
                warnings.warn(f"skipping unreadable audio file {f}: {type(e).__name__}: {e}")
                bad.append(f)
                continue
            if len(y) < self.crop and self.short == "skip":
                short.append(f)
                continue
            if self.conditional:
                load_or_compute_mel(f, self._padded(y), self.c)
            clips.append(Clip(f, len(y)))
        if bad:
            warnings.warn(f"skipped {len(bad)} unreadable audio file(s) of {len(files)}")
        if short:
            warnings.warn(f"skipped {len(short)} clip(s) shorter than {self.crop} samples (data.short=skip)")
        return clips, bad, short

    def _padded(self, y: np.ndarray) -> np.ndarray:
        return np.pad(y, (0, self.crop - len(y))) if len(y) < self.crop else y

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int):
        clip = self.clips[i]
        y = self._padded(load_audio(clip.path, self.c.sample_rate))
        if not self.conditional:
            s0 = int(torch.randint(0, len(y) - self.crop + 1, ()).item())
            return torch.from_numpy(y[s0: s0 + self.crop].copy())[None]
        frames = self.crop // self.c.hop
        max_start = len(y) // self.c.hop - frames
        f0 = int(torch.randint(0, max_start + 1, ()).item()) if max_start > 0 else 0
        audio = torch.from_numpy(y[f0 * self.c.hop: f0 * self.c.hop + self.crop].copy())[None]
        mel = load_or_compute_mel(clip.path, y, self.c)
        return {"x0": audio, "cond": torch.from_numpy(mel[:, f0: f0 + frames].copy())}
