"""Latent diffusion (Rombach et al. 2022): any task whose samples are tensors, diffused in the latent space of a trained
KL autoencoder (core.autoencoder).

`LatentTask` wraps the task: its network runs on the latent shape (C_z, H / f, W / f) (the task adapts its model
config: `Task.latent_model`), its training items are encoded to scaled latents scale * z, z ~ q(z | x) (once, into a
cached latent set on disk with a manifest, or per item as drawn), and every sample is decoded, D(z / scale), before
the task's own `finish`, so samplers, guidance, conditions and the CLI are unchanged. The autoencoder is frozen and
read from its checkpoint, whose recorded scale factor is the one used (never a constant in a recipe).
"""
from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import torch

from .config import ConfigError
from .task import Task


def encode_items(base, ae, seed: int = 0, batch: int = 256) -> tuple[torch.Tensor, list]:
    """(scaled latents of every item, posterior samples from a generator seeded `seed`; the items' conditions)."""
    g = torch.Generator().manual_seed(seed)
    items = [base[i] for i in range(len(base))]
    x = torch.stack([_x0(it) for it in items])
    with torch.no_grad():
        z = torch.cat([ae.latents(x[i:i + batch], g) for i in range(0, len(x), batch)])
    return z, [it.get("cond") if isinstance(it, dict) else None for it in items]


def cached_latents(base, ae, settings: dict, seed: int = 0) -> tuple[torch.Tensor, list]:
    """`encode_items` kept on disk: $DIFFSUITE_CACHE/latents/<hash of settings>/latents.safetensors beside a
    manifest.json of the settings (the autoencoder weights' sha256, data config, split, seed) and the file's sha256;
    read back when both match, encoded again (with a warning naming the file) when the file does not match its
    manifest. Conditions that are not tensors are not stored: the latents are then encoded in memory each time."""
    from safetensors.torch import load_file
    from .utils import atomic_write_json, cache_dir, save_tensors, sha256_file
    folder = cache_dir("latents", hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16])
    f, manifest = folder / "latents.safetensors", folder / "manifest.json"
    if f.is_file() and manifest.is_file():
        m = json.loads(manifest.read_text())
        if m.get("settings") == settings and m.get("sha256") == sha256_file(f):
            t = load_file(str(f))
            return t["z"], list(t["cond"]) if "cond" in t else [None] * len(t["z"])
        warnings.warn(f"{f}: does not match {manifest} (content hash or settings); encoding the latents again")
    z, conds = encode_items(base, ae, seed)
    if all(c is None for c in conds) or all(isinstance(c, torch.Tensor) for c in conds):
        save_tensors(f, {"z": z} if conds[0] is None else {"z": z, "cond": torch.stack(conds)})
        atomic_write_json(manifest, {"settings": settings, "file": f.name, "items": len(z),
                                     "shape": list(z.shape[1:]), "sha256": sha256_file(f)})
    return z, conds


class LatentItems(torch.utils.data.Dataset):
    """A dataset's items with x0 replaced by its scaled latent: encoded once (`cached`, posterior samples from a
    seeded generator, in batches; kept on disk with a manifest when `settings` names them: `cached_latents`) or per
    item as drawn (random crops and flips stay random)."""

    def __init__(self, base, ae, cached: bool = True, seed: int = 0, settings: Optional[dict] = None):
        self.base, self.ae, self.cached = base, ae, cached
        self.z = None
        if cached:
            self.z, self.conds = (cached_latents(base, ae, settings, seed) if settings is not None
                                  else encode_items(base, ae, seed))

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        if self.cached:
            z, cond = self.z[i], self.conds[i]
        else:
            item = self.base[i]
            with torch.no_grad():
                z = self.ae.latents(_x0(item)[None])[0]
            cond = item.get("cond") if isinstance(item, dict) else None
        return z if cond is None else {"x0": z, "cond": cond}


def _x0(item) -> torch.Tensor:
    return item["x0"] if isinstance(item, dict) else item


class LatentTask(Task):
    """`base` in the latent space of the autoencoder checkpoint `cfg.autoencoder` (see the module docstring)."""

    def __init__(self, base: Task, cfg: Any):
        self.base, self.cfg = base, cfg
        self.name, self.ModelConfig, self.DataConfig = base.name, base.ModelConfig, base.DataConfig
        self.null_cond = base.null_cond
        self._ae = None

    @property
    def ae(self):
        """The frozen autoencoder (EMA weights, eval mode), loaded on first use."""
        if self._ae is None:
            from diffsuite.recipes.run import load_autoencoder
            self._ae = load_autoencoder(self.cfg.autoencoder, task=self.base.name)
        return self._ae

    def latent_shape(self, data: Any) -> tuple:
        shape = tuple(self.base.data_shape(data))
        f = self.ae.factor
        if any(s % f for s in shape[1:]):
            raise ConfigError(f"latent.autoencoder {self.cfg.autoencoder}: the data's samples {shape} are not divisible "
                              f"by its downsampling factor f={f}")
        return (self.ae.latent_channels, *(s // f for s in shape[1:]))

    def null_condition(self, recipe: Any) -> Any:
        return self.base.null_condition(recipe)

    def measure(self, data: Any) -> Any:
        return self.base.measure(data)

    def configure(self, model: Any, data: Any) -> Any:
        return self.base.latent_model(self.base.configure(model, data), self.latent_shape(data), self.ae.factor)

    def build_net(self, model: Any, diffusion: Any):
        return self.base.build_net(model, diffusion)

    def build_dataset(self, data: Any, split: str = "train"):
        """The base task's items as latents; cached ones are kept on disk, keyed by the autoencoder's weights, the
        data config, the split and the seed (core.latent.cached_latents)."""
        base = self.base.build_dataset(data, split)
        settings = None
        if self.cfg.cache:
            from .checkpoint import weights_sha256  # the autoencoder, as a distilled student names its teacher
            settings = {"autoencoder": str(self.cfg.autoencoder), "autoencoder_sha256": weights_sha256(self.ae.checkpoint),
                        "data": json.loads(json.dumps(asdict(data), sort_keys=True, default=str)), "split": split,
                        "items": len(base), "seed": self.cfg.seed}
        return LatentItems(base, self.ae, self.cfg.cache, self.cfg.seed, settings)

    def sample_shape(self, model: Any, data: Any) -> tuple:
        return self.latent_shape(data)

    def finish(self, x: torch.Tensor, cond, recipe: Any) -> torch.Tensor:
        """Decode the latents, then the task's own finish."""
        ae = self.ae.to(x.device)
        with torch.no_grad():
            out = torch.cat([ae.from_latents(x[i:i + 256].float()) for i in range(0, len(x), 256)])
        return self.base.finish(out, cond, recipe)

    @property
    def pixel_task(self) -> Task:
        return self.base

    def inpaint_space(self, known: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inpainting in latent space: (scaled posterior means of the known images, the mask at the latents' size),
        a latent cell known only where all its f x f pixels are (mask 1 = known)."""
        f = self.ae.factor
        if any(s % f for s in mask.shape[-2:]):
            raise ValueError(f"inpaint: a mask of size {tuple(mask.shape[-2:])} is not divisible by the autoencoder's "
                             f"factor f={f}")
        with torch.no_grad():
            z = self.ae.latents(known.float(), sample=False)
        m = -torch.nn.functional.max_pool2d(-mask.float().reshape(-1, 1, *mask.shape[-2:]), f)
        return z, m.reshape(*mask.shape[:-2], *m.shape[-2:])

    def sample_cond(self, n: int, cfg: Any, generator: Optional[torch.Generator] = None):
        return self.base.sample_cond(n, cfg, generator)

    def save_samples(self, x: torch.Tensor, cond, out_dir: Path, cfg: Any) -> dict:
        return self.base.save_samples(x, cond, out_dir, cfg)
