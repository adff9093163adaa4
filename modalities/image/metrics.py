"""Image quality metrics: the Frechet distance (once), with pluggable feature extractors.

- "digits-FID": Frechet distance in the penultimate features of a small CNN classifier that this project
  trains on the digits train split (NOT Inception features; numbers are comparable only to other digits-FIDs).
- standard FID: the same formula on Inception-v3 pool features from a local TorchScript file the user supplies
  (for example clean-fid's / StyleGAN3's inception-2015-12-05.pt); nothing is downloaded.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import nn

from diffsuite.core.utils import atomic_write_json, cache_dir, save_tensors, sha256_file

CLASSIFIER_VERSION = 1


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) (Heusel et al. 2017, FID, eq. 6)."""
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # near-singular products are handled below
        covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        off = np.eye(len(sigma1)) * 1e-6
        covmean = linalg.sqrtm((sigma1 + off) @ (sigma2 + off))
    covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of (N, D) features."""
    feats = np.asarray(feats, dtype=np.float64)
    if len(feats) < 2:
        raise ValueError(f"feature_stats: need at least 2 feature vectors, got {len(feats)}")
    return feats.mean(0), np.cov(feats, rowvar=False)


@torch.no_grad()
def extract(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch: int = 256) -> np.ndarray:
    """Features of images x (N, C, H, W) in [-1, 1], batch by batch."""
    return torch.cat([fn(x[i:i + batch]).float().cpu() for i in range(0, len(x), batch)]).numpy()


def fid(fn: Callable, real: torch.Tensor, fake: torch.Tensor) -> float:
    """The Frechet distance between real and generated images in the features of fn."""
    return frechet_distance(*feature_stats(extract(fn, real)), *feature_stats(extract(fn, fake)))


# ---------------------------------------------------------------- the digits classifier

class DigitsClassifier(nn.Module):
    """A small CNN for 1 x S x S digits; `features` is its penultimate (128-d) layer."""

    def __init__(self, channels: int = 1, n_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(64 * 16, 128), nn.ReLU())
        self.head = nn.Linear(128, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def train_classifier(x: torch.Tensor, y: torch.Tensor, epochs: int = 30, seed: int = 0) -> DigitsClassifier:
    """Fit the classifier with Adam and small random shifts (train split only)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = DigitsClassifier(x.shape[1], int(y.max()) + 1)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            xb = torch.roll(x[idx], shifts=tuple(torch.randint(-1, 2, (2,), generator=g).tolist()), dims=(2, 3))
            loss = F.cross_entropy(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    pred = torch.cat([net(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)])
    return float((pred == y.to(pred.device)).float().mean())


def digits_classifier(image_size: int = 16, mode: str = "resize") -> tuple[DigitsClassifier, dict]:
    """The digits classifier, trained on the train split on first use and cached with a manifest."""
    from safetensors.torch import load_file
    from .data import digits
    settings = dict(version=CLASSIFIER_VERSION, image_size=image_size, mode=mode, epochs=30, seed=0)
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    d = cache_dir("image", f"digits-classifier-{key}")
    f, manifest = d / "classifier.safetensors", d / "manifest.json"
    if f.exists() and manifest.exists():
        net = DigitsClassifier()
        net.load_state_dict(load_file(str(f)))
        return net.eval(), json.loads(manifest.read_text())
    tr, te = digits("train", image_size, mode), digits("test", image_size, mode)
    net = train_classifier(tr.x, tr.labels)
    info = {"settings": settings, "test_accuracy": accuracy(net, te.x, te.labels)}
    return net, save_cached(net, f, manifest, info)


def save_cached(net: nn.Module, f: Path, manifest: Path, info: dict) -> dict:
    """A cached network: its weights written aside and renamed, then a manifest of `info` and their sha256."""
    save_tensors(f, net.state_dict())
    info = {**info, "sha256": {f.name: sha256_file(f)}}
    atomic_write_json(manifest, info)
    return info


# ---------------------------------------------------------------- Inception (user-supplied weights)

def inception_features(path: str | Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """Feature function from a local TorchScript Inception-v3 (inputs resized to 299, values 0..255).

    Works with TorchScript files whose forward accepts `return_features=True` (clean-fid / StyleGAN3's
    inception-2015-12-05.pt) or returns 2048-d pool features directly.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Inception weights file {str(p)!r} not found")
    try:
        model = torch.jit.load(str(p), map_location="cpu").eval()
    except Exception as e:
        raise ValueError(f"{str(p)!r} is not a TorchScript Inception model ({e}); expected a TorchScript file such "
                         "as inception-2015-12-05.pt") from e

    def fn(x: torch.Tensor) -> torch.Tensor:
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        x = F.interpolate((x.clamp(-1, 1) + 1) * 127.5, size=(299, 299), mode="bilinear", align_corners=False)
        try:
            out = model(x, return_features=True)
        except Exception:
            out = model(x)
        return out.reshape(len(x), -1)
    return fn


# ---------------------------------------------------------------- restoration (image-to-image) metrics

def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().clamp(-1, 1).numpy()


def psnr(x: torch.Tensor, ref: torch.Tensor) -> np.ndarray:
    """Per image: PSNR in dB of images in [-1, 1] (peak-to-peak range 2) against the references (scikit-image)."""
    from skimage.metrics import peak_signal_noise_ratio
    return np.array([peak_signal_noise_ratio(r, a, data_range=2.0) for a, r in zip(_np(x), _np(ref))])


def psnr_pooled(x: torch.Tensor, ref: torch.Tensor) -> float:
    """The PSNR of the squared error pooled over all the images (psnr's convention), where psnr averages per image."""
    from skimage.metrics import peak_signal_noise_ratio
    return float(peak_signal_noise_ratio(_np(ref), _np(x), data_range=2.0))


def ssim(x: torch.Tensor, ref: torch.Tensor) -> np.ndarray:
    """Per image: SSIM (Wang et al. 2004; scikit-image, 7x7 windows or the image's size if smaller)."""
    from skimage.metrics import structural_similarity
    win = min(7, x.shape[-1], x.shape[-2]) // 2 * 2 + 1 if min(x.shape[-2:]) >= 3 else 3
    return np.array([structural_similarity(r, a, data_range=2.0, channel_axis=0, win_size=win)
                     for a, r in zip(_np(x), _np(ref))])


def colourfulness(x: torch.Tensor) -> np.ndarray:
    """Per RGB image: Hasler & Suesstrunk's (2003) colourfulness, sigma_rgyb + 0.3 mu_rgyb on the 0-255 scale."""
    u = (_np(x) + 1) * 127.5
    rg, yb = u[:, 0] - u[:, 1], 0.5 * (u[:, 0] + u[:, 1]) - u[:, 2]
    sd = np.sqrt(rg.reshape(len(u), -1).std(1) ** 2 + yb.reshape(len(u), -1).std(1) ** 2)
    mu = np.sqrt(rg.reshape(len(u), -1).mean(1) ** 2 + yb.reshape(len(u), -1).mean(1) ** 2)
    return sd + 0.3 * mu
