"""How well a timbre transfer keeps the music and changes the instrument (benchmarks/timbre.py).

- log-mel L1: mean |log-mel(output) - log-mel(target)| in natural-log units (both clamped at 1e-5), DiffTransfer's
  representation; the identity (the source itself as the output) is the floor.
- multi-pitch Jaccard distance (Music-STAR, Alinoori & Tzerpos 2022): the pitches sounding in each frame as a set of
  MIDI keys, 1 - |P n Q| / |P u Q| averaged over the frames where either sounds. Pitches from essentia's
  MultiPitchMelodia (Salamon & Gomez 2012) where essentia is installed, else from a harmonic sum over a constant-Q
  spectrogram (`cqt_multipitch`, documented below); the same estimator runs on output, oracle and target.
- instrument identity: a small CNN trained here on rendered spectrogram patches of each arrangement (a stand-in for
  FAD, whose VGGish weights cannot be downloaded) and the Frechet distance in its penultimate features.
"""
from __future__ import annotations

import hashlib
import json
from typing import Optional

import numpy as np
import torch

from diffsuite.core.utils import cache_dir, split_of

HOP = 320  # pitch frames: the mel's hop at 16 kHz (20 ms)
CLASSIFIER_VERSION = 3  # 2: a noise class; 3: patches reach the last frame


def logmel_l1(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean absolute difference of two natural-log mels (n_mels, F), over their common frames."""
    F = min(a.shape[-1], b.shape[-1])
    return float((a[..., :F].float() - b[..., :F].float()).abs().mean())


def to_midi(freqs) -> set:
    """Frequencies in Hz (zeros and negatives ignored) as a set of MIDI keys."""
    f = np.asarray([x for x in freqs if x > 0], dtype=np.float64)
    return set(np.round(69 + 12 * np.log2(f / 440.0)).astype(int).tolist()) if len(f) else set()


def essentia_multipitch(y: np.ndarray, sr: int = 16000) -> list[set]:
    """Per HOP-sample frame, the MIDI keys essentia's MultiPitchMelodia finds (ImportError without essentia)."""
    import essentia.standard as es
    est = es.MultiPitchMelodia(sampleRate=sr, hopSize=HOP, frameSize=2048)
    return [to_midi(f) for f in est(np.asarray(y, dtype=np.float32))]


def cqt_multipitch(y: np.ndarray, sr: int = 16000, n_harmonics: int = 4, rel: float = 0.3,
                   floor_db: float = -45.0, max_voices: int = 4) -> list[set]:
    """Per HOP-sample frame, up to `max_voices` MIDI keys (C2-B5, the chorales' range) whose harmonic sum over a constant-Q magnitude
    (harmonic h weighted 0.8^(h-1)) is a local maximum of at least `rel` times the frame's largest, in frames
    within `floor_db` of the recording's loudest: the fallback estimator when essentia is missing."""
    import librosa
    lo, n = 36, 48  # C2, four octaves of candidate pitches; the CQT goes two octaves higher for their harmonics
    C = np.abs(librosa.cqt(np.asarray(y, dtype=np.float32), sr=sr, hop_length=HOP, fmin=librosa.midi_to_hz(lo),
                           n_bins=n + 24, bins_per_octave=12))
    S = sum(0.8 ** (h - 1) * np.roll(C, -int(round(12 * np.log2(h))), axis=0) for h in range(1, n_harmonics + 1))[:n]
    loud = C.max(0)
    out = []
    for k in range(S.shape[1]):
        s = S[:, k]
        if loud[k] <= 0 or 20 * np.log10(loud[k] / (loud.max() + 1e-12) + 1e-12) < floor_db:
            out.append(set())
            continue
        peaks = [i for i in range(n) if s[i] >= rel * s.max() and s[i] >= s[max(i - 1, 0)] and s[i] >= s[min(i + 1, n - 1)]]
        peaks = sorted(peaks, key=lambda i: -s[i])[:max_voices]
        out.append({lo + i for i in peaks})
    return out


def multipitch(y: np.ndarray, sr: int = 16000, method: Optional[str] = None) -> tuple[list[set], str]:
    """(frames of MIDI key sets, the estimator's name): essentia where it imports (or `method`), else the CQT one."""
    if method in (None, "essentia"):
        try:
            return essentia_multipitch(y, sr), "essentia MultiPitchMelodia"
        except ImportError:
            if method == "essentia":
                raise
    return cqt_multipitch(y, sr), "CQT harmonic sum"


def pitch_jaccard(P: list[set], Q: list[set]) -> float:
    """Music-STAR's multi-pitch distance: 1 - |P n Q| / |P u Q| averaged over the common frames where either sounds
    (0: the same notes everywhere; nan when neither sounds anywhere)."""
    d = [1 - len(p & q) / len(p | q) for p, q in zip(P, Q) if p or q]
    return float(np.mean(d)) if d else float("nan")


# ---------------------------------------------------------------- the instrument classifier

def _pool(x: torch.Tensor) -> torch.Tensor:
    """Normalised log-mel patches (B, 1, 128, 128) averaged 2x2 to (B, 1, 64, 64): what the classifier sees."""
    return torch.nn.functional.avg_pool2d(x, 2)


def patches(mel: torch.Tensor, size: int = 128, stride: int = 64) -> torch.Tensor:
    """Normalised log-mel (128, F) -> (N, 1, 128, size) patches every `stride` frames and one ending at the last
    frame (a short mel is padded with silence to one patch)."""
    if mel.shape[-1] < size:
        mel = torch.nn.functional.pad(mel, (0, size - mel.shape[-1]), value=-1.0)
    last = mel.shape[-1] - size
    starts = sorted(set(range(0, last + 1, stride)) | {last})
    return torch.stack([mel[:, s:s + size] for s in starts])[:, None]


def noise_patches(n: int, shape, g: torch.Generator) -> torch.Tensor:
    """n pooled patches of smoothed Gaussian noise at random levels and spreads in the normalised log-mel range."""
    out = []
    for _ in range(n):
        k = int(torch.randint(3, (), generator=g)) * 2 + 1
        lvl, spread = float(torch.rand((), generator=g)) * 1.5 - 1, float(torch.rand((), generator=g)) + 0.05
        z = torch.nn.functional.avg_pool2d(torch.randn(1, 1, *shape, generator=g), k, 1, k // 2)
        out.append((lvl + spread * z / z.std()).clamp(-1, 1))
    return torch.cat(out)


def instrument_classifier(arrangements: list[tuple], limit: int = 60, epochs: int = 4, seed: int = 0):
    """(classifier, info): the digits CNN (image.metrics) trained to tell `arrangements` apart from the train
    chorales' normalised log-mel patches rendered with each (render.render_corpus), and from noise (a last class,
    `noise_patches`), scored on the test chorales; cached with a manifest. Call `net(_pool(x))` on normalised
    patches."""
    from safetensors.torch import load_file
    from diffsuite.modalities.image.metrics import DigitsClassifier, accuracy, save_cached, train_classifier
    from .render import render_corpus
    from .timbre import log_mel, normalise
    arrangements = [tuple(a) for a in arrangements]
    settings = dict(version=CLASSIFIER_VERSION, arrangements=[list(a) for a in arrangements], limit=limit,
                    epochs=epochs, seed=seed)
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    d = cache_dir("timbre", f"instrument-classifier-{key}")
    f, manifest = d / "classifier.safetensors", d / "manifest.json"
    net = DigitsClassifier(1, len(arrangements) + 1)
    if f.exists() and manifest.exists():
        net.load_state_dict(load_file(str(f)))
        return net.eval(), json.loads(manifest.read_text())
    data = {"train": ([], []), "test": ([], [])}
    for k, a in enumerate(arrangements):
        for name, y in render_corpus(a, limit=limit).items():
            split = split_of(name)
            if split in data:
                p = _pool(patches(normalise(log_mel(y.astype(np.float32) / 32767))))
                data[split][0].append(p)
                data[split][1].append(torch.full((len(p),), k))
    g = torch.Generator().manual_seed(seed)
    for split, (xs, ys) in data.items():  # one more class, "noise": what a broken model makes belongs to no instrument
        n = sum(len(x) for x in xs) // len(arrangements)
        xs.append(noise_patches(n, xs[0].shape[-2:], g))
        ys.append(torch.full((n,), len(arrangements)))
    (xtr, ytr), (xte, yte) = [(torch.cat(a), torch.cat(b)) for a, b in (data["train"], data["test"])]
    net = train_classifier(xtr, ytr, epochs=epochs, seed=seed)
    info = {"settings": settings, "classes": ["+".join(a) for a in arrangements] + ["noise"], "train_patches": len(xtr),
            "test_patches": len(xte), "test_accuracy": accuracy(net, xte, yte)}
    return net, save_cached(net, f, manifest, info)
