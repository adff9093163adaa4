"""Small shared helpers: broadcasting per-sample scalars, atomic file writes, hashing."""
from __future__ import annotations

import contextlib
import hashlib
import math
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


class NonFiniteError(RuntimeError):
    """A result (samples, a waveform, weights) holds NaN or infinite values."""


def check_finite(x: torch.Tensor, what: str, hint: str = "") -> torch.Tensor:
    """Return x, or raise NonFiniteError saying how many of its items hold NaN / inf values."""
    ok = torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1) if x.ndim else torch.isfinite(x)
    if not bool(ok.all()):
        bad = int((~ok).sum())
        raise NonFiniteError(f"{what}: {bad} of {ok.numel()} hold NaN or infinite values{'; ' + hint if hint else ''}")
    return x


def append_dims(a: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dims so a per-sample tensor (B,) broadcasts against (B, ...)."""
    if a.ndim > ndim:
        raise ValueError(f"append_dims: tensor has {a.ndim} dims, more than the target {ndim}")
    return a.reshape(*a.shape, *([1] * (ndim - a.ndim)))


def sinusoidal_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[sin(t w_k), cos(t w_k)], w_k = 10000^(-k / (dim / 2)): the time embedding of Ho et al. (2020) (Vaswani et al.
    2017's positions) for (fractional) timesteps t (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    a = t.float()[:, None] * freqs[None]
    return torch.cat([a.sin(), a.cos()], dim=1)


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension except the batch dimension, giving one value per sample."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def sum_flat(x: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension except the batch dimension."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


def randn(shape, generator: torch.Generator | None = None, device=None, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise drawn from `generator` (on its device), then moved to `device`."""
    gen_device = generator.device if generator is not None else device
    x = torch.randn(shape, generator=generator, device=gen_device, dtype=dtype)
    return x.to(device) if device is not None else x


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """A fresh temporary file name beside `path` (same suffix, for writers that pick the format from it: np.savez,
    soundfile, safetensors), renamed onto `path` when the block succeeds and removed when it fails: a reader never
    sees half a file, and two processes filling one cache at once never take each other's temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~user_umask())  # mkstemp makes 0600: give the file the user's usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_tensors(path: str | os.PathLike, tensors: dict, metadata: dict | None = None) -> Path:
    """A safetensors file written through atomic_path: never half-written, and with the user's usual mode (safetensors
    itself writes 0600 files)."""
    from safetensors.torch import save_file
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically: a temporary file in the same folder, fsync, then rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def user_umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default).encode())


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Content hash of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def cache_dir(*parts: str) -> Path:
    """The built-in dataset cache: $DIFFSUITE_CACHE or ~/.cache/diffsuite, with sub-folders."""
    root = Path(os.environ.get("DIFFSUITE_CACHE", Path.home() / ".cache" / "diffsuite"))
    p = root.joinpath(*parts)
    p.mkdir(parents=True, exist_ok=True)
    return p


def split_of(name: str, val_fraction: float = 0.1, test_fraction: float = 0.1) -> str:
    """Stable split by name (a piece, a photograph): a hash in [0, 1) decides train / val / test."""
    u = int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 16 ** 8
    return "val" if u < val_fraction else "test" if u < val_fraction + test_fraction else "train"
