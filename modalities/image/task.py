"""The image task: a DDPM/ADM U-Net on image folders or the built-in digits, through the core."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from PIL import Image

from diffsuite.core.classify import Candidates
from diffsuite.core.config import ConfigError, valid
from diffsuite.core.degrade import (border_mask, box_mask, check_factor, free_form_mask, inpaint_source, push_pull_fill,
                                    sr_source, to_grayscale)
from diffsuite.core.task import Task
from diffsuite.core.utils import atomic_write_json

from . import data as D
from .unet import PRESETS, UNetSpec, build_encoder, build_unet, preset


@dataclass
class ModelConfig:
    """UNet2D arguments (see unet.UNet2D); a field left at None takes the preset's value."""

    preset: str = valid("tiny", choices=lambda: sorted(PRESETS))
    image_size: Optional[int] = valid(None, min=1)
    in_channels: Optional[int] = valid(None, min=1)
    model_channels: Optional[int] = valid(None, min=1)
    channel_mult: Optional[list] = None
    num_res_blocks: Optional[int] = valid(None, min=1)
    attention_resolutions: Optional[list] = None
    dropout: Optional[float] = valid(None, min=0, max=1)
    num_heads: Optional[int] = valid(None, min=1)
    num_head_channels: Optional[int] = None
    use_scale_shift_norm: Optional[bool] = None
    resblock_updown: Optional[bool] = None
    conv_resample: Optional[bool] = None
    num_classes: Optional[int] = valid(None, min=0)  # class-conditional with this many classes (+ a null class for CFG)
    use_checkpoint: bool = False  # gradient checkpointing
    pad_to_multiple: bool = False  # pad sizes not divisible by the downsampling factor instead of an error
    channels_last: bool = False
    z_channels: int = valid(0, min=0)  # a DDGAN generator's latent channels (core.ddgan; 0: a plain denoiser)
    source_channels: Optional[int] = valid(None, min=0)  # image-to-image source channels (None: what data.degradation gives)


DEGRADATIONS = ("sr", "colorize", "inpaint", "uncrop")
MASKS = ("mixed", "box", "free", "half")


@dataclass
class DataConfig:
    """Where the images come from and how they are prepared."""

    source: str = valid("digits", choices=("digits", "folder", "photos"))  # photos: scikit-image's, as patches
    path: Optional[str] = None  # folder: the image folder (class labels from its sub-folders)
    eval_path: Optional[str] = None  # folder: images for the val/test splits (default: the training folder)
    image_size: int = valid(16, min=1)
    channels: int = valid(1, choices=(1, 3))  # 1 grayscale | 3 RGB
    hflip: bool = False
    class_cond: bool = True  # items carry their class label when the source has labels
    digits_mode: str = valid("resize", choices=("resize", "pad"))  # digits 8x8 -> image_size: resize | pad
    # folder: whole photographs cut into random image_size patches (split by file: 10% val, 10% test), as `photos`
    patches: bool = False
    short_side: int = valid(256, min=8)  # photos / patches: photographs are first shrunk to this shorter side
    # photos / patches: scale augmentation; each training crop comes from its photograph at a random level between
    # short_side and its own size (sqrt(2) apart), so the model also sees the finer scales that val / test keep
    scale_aug: bool = False
    # photos, RGB: the training split also takes the grayscale photographs (as gray RGB); val / test unchanged
    gray_train: bool = False
    # photos: the training split also takes the colour photographs scikit-learn and matplotlib ship (data.EXTRA_PHOTOS)
    extra_photos: bool = False
    # photos / patches: each training crop also takes a random quarter turn (with hflip, all 8 symmetries of the square)
    rot90: bool = False
    # image-to-image (SR3 / Palette): the model is given degrade(x) as a source image (core.degrade)
    degradation: Optional[str] = valid(None, choices=DEGRADATIONS)
    factor: int = valid(4, min=2)  # sr: the downsampling factor
    # residual: generate the residual over a base made from the source (SRDiff, Li et al. 2022): sr, the bicubic
    # upsampling; inpaint / uncrop, the known pixels with the hole filled by push-pull (core.degrade.push_pull_fill)
    residual: bool = False
    # residual: the model generates s * (x - base); "auto": s = 1 / std of the training residuals, measured when
    # training starts and saved in the run's config (a residual's std is ~0.1: unscaled, most noise levels hide it)
    residual_scale: Union[float, str] = 1.0
    mask: str = valid("mixed", choices=MASKS)  # inpaint: a random box, free-form strokes, a half, or any of them
    border: float = valid(0.25, above=0, max=0.75)  # uncrop: the hidden fraction of the right side


def _scale(data: DataConfig) -> float:
    """data.residual_scale as a number (a ConfigError while it is still "auto" or not positive)."""
    s = data.residual_scale
    if isinstance(s, (int, float)) and not isinstance(s, bool) and s > 0:
        return float(s)
    if s == "auto":
        raise ConfigError('data.residual_scale="auto" is measured when training starts; this recipe has no number yet')
    raise ConfigError(f'data.residual_scale: expected a number > 0 or "auto", got {s!r}')


RESIDUAL_DEGRADATIONS = ("sr", "inpaint", "uncrop")


def residual_base(source: torch.Tensor, data: DataConfig) -> torch.Tensor:
    """What a residual model's sample is the residual over (data.residual): the bicubic upsampling itself (sr), or the
    known pixels with the hole filled smoothly (inpaint / uncrop: the source's first C channels and its mask)."""
    if data.degradation == "sr":
        return source
    lead, C = source.shape[:-3], data.channels
    src = source.reshape(-1, *source.shape[-3:])
    return push_pull_fill(src[:, :C], src[:, C:C + 1]).reshape(*lead, C, *source.shape[-2:])


def source_channels(data: DataConfig) -> int:
    """The source image's channels a degradation gives (0: none)."""
    return {None: 0, "sr": data.channels, "colorize": 1, "inpaint": data.channels + 1,
            "uncrop": data.channels + 1}[data.degradation]


def _half_mask(size: tuple) -> torch.Tensor:
    return border_mask(size, ("left", "right", "top", "bottom")[int(torch.randint(4, ()))], 0.5)


_MASK_MAKERS = {"box": box_mask, "free": free_form_mask, "half": _half_mask}


def _inpaint(x: torch.Tensor, mask: str, size: tuple) -> torch.Tensor:
    kind = mask if mask != "mixed" else tuple(_MASK_MAKERS)[int(torch.randint(len(_MASK_MAKERS), ()))]
    return inpaint_source(x, _MASK_MAKERS[kind](size))


def _uncrop(x: torch.Tensor, size: tuple, border: float) -> torch.Tensor:
    return inpaint_source(x, border_mask(size, "right", border))


def degrader(data: DataConfig):
    """The data's degradation as a batch function x (B, C, H, W) -> source (core.degrade; masks drawn from torch's
    global RNG), or None; picklable (module functions and partials), so data-loader workers can be spawned."""
    d = data.degradation
    size = (data.image_size, data.image_size)
    if d == "sr":
        check_factor(size, data.factor, "data.image_size")
        return partial(sr_source, factor=data.factor)
    if d == "colorize":
        if data.channels != 3:
            raise ConfigError(f"data.degradation=colorize makes grayscale sources from RGB images: set data.channels=3 "
                              f"(got {data.channels})")
        return to_grayscale
    if d == "inpaint":
        return partial(_inpaint, mask=data.mask, size=size)
    if d == "uncrop":
        return partial(_uncrop, size=size, border=data.border)
    return None


def unet_spec(model: ModelConfig, learn_sigma: bool = False) -> UNetSpec:
    """The UNetSpec a ModelConfig names: its preset, with every non-None field overridden."""
    skip = {"preset", "channels_last"}
    kw = {f.name: getattr(model, f.name) for f in fields(ModelConfig) if f.name not in skip}
    for k in ("channel_mult", "attention_resolutions"):
        kw[k] = tuple(kw[k]) if kw[k] is not None else None
    return preset(model.preset, learn_sigma=learn_sigma, **kw)


def check_formats(model: ModelConfig, data: DataConfig) -> None:
    """The data's image size and channels (and source channels) must be those the network is built for."""
    spec = unet_spec(model)
    if model.source_channels is not None and model.source_channels != source_channels(data):
        raise ValueError(f"image recipe: model.source_channels={model.source_channels} but data.degradation="
                         f"{data.degradation} gives {source_channels(data)}-channel sources")
    if spec.image_size != data.image_size or spec.in_channels != data.channels:
        raise ValueError(f"image recipe: model (preset {model.preset!r}) is built for {spec.in_channels}x"
                         f"{spec.image_size}x{spec.image_size} but data gives {data.channels}x{data.image_size}x"
                         f"{data.image_size}; set model.image_size/in_channels or data.image_size/channels to agree")


def save_grid(x: torch.Tensor, path: Path, nrow: int, pad: int = 1, scale: int = 1) -> Path:
    """A PNG grid of images in [-1, 1] (N, C, H, W), nrow images per row."""
    u8 = D.to_uint8(x)
    n, h, w, c = u8.shape
    rows = -(-n // nrow)
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, np.uint8)
    for i, img in enumerate(u8):
        r, k = divmod(i, nrow)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + k * (w + pad):pad + k * (w + pad) + w] = img
    img = Image.fromarray(grid[..., 0] if c == 1 else grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def build_image_net(model: ModelConfig, diffusion: Any) -> torch.nn.Module:
    """The U-Net of a ModelConfig (in the channels_last layout if asked), for every task that reuses it."""
    net = build_unet(unet_spec(model, learn_sigma=bool(getattr(diffusion, "learned_variance", False))))
    return net.to(memory_format=torch.channels_last) if model.channels_last else net


class ImageTask(Task):
    name = "image"
    ModelConfig = ModelConfig
    DataConfig = DataConfig
    #: label -1 is the null class (the U-Net maps it to its null embedding, index num_classes)
    null_cond = -1

    def build_net(self, model: ModelConfig, diffusion: Any) -> torch.nn.Module:
        return build_image_net(model, diffusion)

    def build_discriminator(self, model: ModelConfig, data: DataConfig, gan: Any) -> torch.nn.Module:
        """DDGAN's D(x_{t-1}, x_t, t, class): a time-conditional conv net with a class projection (core.ddgan)."""
        from diffsuite.core.ddgan import ConvDiscriminator
        spec = unet_spec(model)
        return ConvDiscriminator(2, spec.in_channels, gan.d_width, gan.d_levels, num_classes=spec.num_classes)

    def build_classifier(self, model: ModelConfig, data: DataConfig, classifier: Any) -> torch.nn.Module:
        """ADM's noise-aware classifier: the down path of the U-Net the model section describes, then a pooling head
        over model.num_classes classes (core.classifier; classifier.depth overrides num_res_blocks)."""
        spec = unet_spec(model)
        if not spec.num_classes or not data.class_cond:
            raise ConfigError("classifier: a noise-aware classifier needs labelled data (data.class_cond=true) and "
                              f"model.num_classes (got {spec.num_classes})")
        spec = replace(spec, num_res_blocks=classifier.depth or spec.num_res_blocks)
        return build_encoder(spec, spec.num_classes, classifier.pool)

    def classification_inputs(self, recipe, source: str):
        """Images of a split (with their labels) or one image file, and the model's classes as the candidates."""
        spec = unet_spec(recipe.model)
        if not spec.num_classes:
            raise ConfigError("classify needs a class-conditional image model (model.num_classes); this one has none")
        d = recipe.data
        if source in ("train", "val", "test"):
            ds = self.build_dataset(replace(d, hflip=False), source)
            if ds.labels is None:
                raise ConfigError(f"classify --input {source}: the {source} split has no labels")
            x, labels, names = ds.x, ds.labels, ds.classes
        else:
            from .edit import load_known
            x, labels, names = load_known(source, d.image_size, d.channels, "--input"), None, []
        names = names or [str(i) for i in range(spec.num_classes)]
        return Candidates(x, torch.arange(spec.num_classes), names, labels)

    def build_dataset(self, data: DataConfig, split: str = "train") -> torch.utils.data.Dataset:
        if data.residual and data.degradation not in RESIDUAL_DEGRADATIONS:
            raise ConfigError(f"data.residual needs data.degradation in {RESIDUAL_DEGRADATIONS}, "
                              f"got {data.degradation}")
        base = self._images(data, split)
        degrade = degrader(data)
        if data.residual and data.residual_scale == "auto":  # (train measures it once and saves the number)
            data = self.measure(data)
        return base if degrade is None else D.Degraded(base, degrade, _scale(data) if data.residual else 0.0,
                                                       partial(residual_base, data=data))

    def measure(self, data: DataConfig) -> DataConfig:
        """data.residual_scale="auto" as a number: 1 / the std of 256 training residuals (seeded crops and flips)."""
        if not (data.residual and data.residual_scale == "auto"):
            _scale(data)
            return data
        ds = self.build_dataset(replace(data, residual_scale=1.0), "train")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            r = torch.stack([ds[i]["x0"] for i in torch.randint(len(ds), (256,)).tolist()])
        return replace(data, residual_scale=float(f"{1 / r.std().item():.4g}"))

    def _images(self, data: DataConfig, split: str) -> D.ArrayImages:
        if data.source == "digits":
            if data.channels != 1:
                raise ValueError(f"data.channels: the digits are grayscale (1 channel), got {data.channels}")
            return D.digits(split, data.image_size, data.digits_mode, data.hflip, data.class_cond)
        if data.source == "photos":
            return D.photos(split, data.image_size, data.channels, data.hflip, data.short_side, data.scale_aug,
                            data.gray_train, data.rot90, data.extra_photos)
        if data.source == "folder" and data.patches:
            if not data.path:
                raise ValueError("data.path: source 'folder' needs the image folder's path")
            return D.folder_patches(data.path, split, data.image_size, data.channels, data.hflip, data.short_side,
                                   data.scale_aug, data.rot90)
        if data.source == "folder":
            if not data.path:
                raise ValueError("data.path: source 'folder' needs the image folder's path")
            path = data.path if split == "train" or not data.eval_path else data.eval_path
            return D.image_folder(path, data.image_size, data.channels, data.hflip and split == "train",
                                  data.class_cond)
        raise ValueError(f"data.source must be 'digits', 'folder' or 'photos', got {data.source!r}")

    def configure(self, model: ModelConfig, data: DataConfig) -> ModelConfig:
        """model.num_classes from the data when unset (10 digits, or an image folder's class sub-folders), and
        model.source_channels from data.degradation; a count that differs from the data's, or classes the data will
        not label, are errors."""
        want = source_channels(data)
        if model.source_channels is not None and model.source_channels != want:
            raise ConfigError(f"model.source_channels={model.source_channels} but data.degradation="
                              f"{data.degradation} gives {want}-channel sources: leave model.source_channels unset")
        model = replace(model, source_channels=want)
        if data.source == "folder":
            if not data.path:
                raise ConfigError("data.path: source 'folder' needs the image folder's path")
            try:
                classes = sorted({lab for lab in D.scan_folder(data.path)[1] if lab is not None})
            except ValueError as e:
                raise ConfigError(str(e)) from e
        else:
            classes = [str(i) for i in range(10)] if data.source == "digits" else []  # photos: no labels
        k = model.num_classes or None
        if not data.class_cond or not classes:
            if k:
                why = "data.class_cond=false" if not data.class_cond else (
                    f"{data.path} has no class sub-folders" if data.source == "folder" else "the photos have no labels")
                raise ConfigError(f"model.num_classes={k} but {why}: the model would never see a label; set "
                                  "data.class_cond=true (with class sub-folders) or leave model.num_classes unset")
            return model
        if k is None:
            return replace(model, num_classes=len(classes))
        if k != len(classes):
            raise ConfigError(f"model.num_classes={k} but the data has {len(classes)} classes "
                              f"({', '.join(classes[:12])}{', ...' if len(classes) > 12 else ''}): leave "
                              f"model.num_classes unset to use {len(classes)}, or set it to {len(classes)}")
        return model

    def build_autoencoder(self, model: ModelConfig, data: DataConfig, ae) -> tuple:
        """LDM's convolutional encoder / decoder (modalities.image.autoencoder) for the data's channels."""
        from .autoencoder import build_decoder, build_encoder
        args = (data.channels, ae.latent_channels, ae.factor, ae.channels, ae.num_res_blocks)
        return build_encoder(*args), build_decoder(*args)

    def data_shape(self, data: DataConfig) -> tuple:
        return (data.channels, data.image_size, data.image_size)

    def latent_model(self, model: ModelConfig, shape: tuple, factor: int) -> ModelConfig:
        """The U-Net on latents: shape[0] channels of shape[-1] x shape[-1] (no image-to-image source in latents)."""
        if model.source_channels:
            raise ConfigError("latent: image-to-image models (data.degradation) do not run in a latent space yet")
        return replace(model, image_size=shape[-1], in_channels=shape[0])

    def sample_shape(self, model: ModelConfig, data: DataConfig) -> tuple:
        check_formats(model, data)
        return (data.channels, data.image_size, data.image_size)

    def null_condition(self, recipe: Any) -> Any:
        """-1 (the null class) for labels; with a source image, {"source": 0, "label": -1}: a dropped source is zeros."""
        if not unet_spec(recipe.model).source_channels:
            return self.null_cond
        return {"source": 0.0, **({"label": self.null_cond} if recipe.model.num_classes else {})}

    def finish(self, x: torch.Tensor, cond, recipe: Any) -> torch.Tensor:
        """A residual model's sample plus its base (data.residual); other samples as they are."""
        if recipe.data.residual and isinstance(cond, dict):
            return (x / _scale(recipe.data) + residual_base(cond["source"].to(x), recipe.data)).clamp(-1, 1)
        return x

    def sample_cond(self, n: int, cfg: Any, generator: Optional[torch.Generator] = None):
        """Class labels cycling 0..K-1 (so a grid with K columns has one class per column), or None; an image-to-image
        model's sources are the first n held-out (test) images degraded (masks from the generator's seed)."""
        k = cfg.model.num_classes
        labels = torch.arange(n) % k if k else None
        if not cfg.data.degradation:
            return labels
        test = self._images(cfg.data, "test")
        x = test.x[torch.arange(n) % len(test.x)]
        seed = int(torch.randint(2**31, (), generator=generator)) if generator is not None else 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            src = torch.cat([degrader(cfg.data)(x[i:i + 1]) for i in range(n)])
        return {"source": src, **({"label": labels} if labels is not None else {})}

    def save_samples(self, x: torch.Tensor, cond, out_dir: Path, cfg: Any) -> dict:
        """A PNG grid (one row per class when conditional) and a JSON of labels, beside the raw tensor."""
        out_dir = Path(out_dir)
        files = super().save_samples(x, cond, out_dir, cfg)
        if isinstance(cond, dict):  # image-to-image: rows of (source, sample) pairs
            return {**files, **save_pairs(cond["source"], x, out_dir)}
        k = cfg.model.num_classes
        nrow = int(np.ceil(np.sqrt(len(x))))
        if cond is not None and k:
            x, cond, nrow = rows_by_class(x, cond.cpu(), k)
        scale = max(1, 128 // x.shape[-1])
        files["grid"] = str(save_grid(x, out_dir / "samples.png", nrow, scale=scale))
        info = {"n": len(x), "shape": list(x.shape[1:]), "nrow": nrow,
                "labels": None if cond is None else cond.tolist()}
        atomic_write_json(out_dir / "samples.json", info)
        files["json"] = str(out_dir / "samples.json")
        return files

    def inpaint(self, loaded: Any, out_dir: Path, *, image: Optional[str] = None, mask: Optional[str] = None,
                n: Optional[int] = None, repaint: bool = False, sampler: Optional[str] = None,
                steps: Optional[int] = None, guidance: Optional[float] = None, seed: int = 0,
                eta: Optional[float] = None) -> dict:
        """`diffsuite sample --inpaint/--mask`: the same code as `diffsuite image-inpaint` (see cli.inpaint)."""
        from .cli import inpaint
        return inpaint(loaded, out_dir, image=image, mask=mask, n=n, repaint=repaint, sampler=sampler, steps=steps,
                       guidance=guidance, seed=seed, eta=eta)


def show_source(source: torch.Tensor, channels: int) -> torch.Tensor:
    """A source image as a picture with the sample's channels: the known pixels (a mask channel dropped; the hole
    mid-gray), a grayscale source repeated to RGB."""
    if source.shape[1] == channels + 1:  # inpaint / uncrop: the known values (0 in the hole) and the mask
        source = source[:, :-1]
    return source.expand(-1, channels, -1, -1) if source.shape[1] == 1 else source


def save_pairs(source: torch.Tensor, x: torch.Tensor, out_dir: Path) -> dict:
    """samples.png: the sources in the top row, each sample below its source."""
    pairs = torch.cat([show_source(source.cpu(), x.shape[1]), x.cpu()])
    scale = max(1, 128 // x.shape[-1])
    return {"grid": str(save_grid(pairs, Path(out_dir) / "samples.png", len(x), scale=scale))}


def rows_by_class(x: torch.Tensor, cond: torch.Tensor, k: int):
    """Rearrange samples so row j holds the samples of class j (missing cells blank, label -1)."""
    per = [x[cond == j] for j in range(k)]
    cols = max(len(p) for p in per)
    blank = torch.ones_like(x[:1])
    cells, labels = [], []
    for j in range(k):
        for c in range(cols):
            cells.append(per[j][c:c + 1] if c < len(per[j]) else blank)
            labels.append(j if c < len(per[j]) else -1)
    return torch.cat(cells), torch.tensor(labels), cols
