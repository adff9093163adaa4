"""The 2-D U-Net of DDPM (Ho et al. 2020, App. B) and ADM (Dhariwal & Nichol 2021, Sec. 3).

net(x_t (B, C, H, W), t (B,) float, cond) -> eps/x0/v output of x_t's shape, or (output, v_var) with learn_sigma.
cond: None, class labels (B,) long (index `num_classes` or -1 is the null class for classifier-free guidance), a
source image (B, source_channels, H, W) concatenated to x_t (SR3 / Palette), or a dict with "label" and / or "source".
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import (AttentionBlock, Downsample, ResBlock, TimestepEmbedSequential, Upsample, norm,
                     timestep_embedding, zero_module)


@dataclass
class UNetSpec:
    """UNet2D constructor arguments (one preset = one UNetSpec)."""

    image_size: int = 32
    in_channels: int = 3
    model_channels: int = 128
    channel_mult: tuple = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple = (16,)
    dropout: float = 0.0
    num_heads: int = 1
    num_head_channels: int | None = None
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    conv_resample: bool = True
    num_classes: int | None = None
    learn_sigma: bool = False
    use_checkpoint: bool = False
    pad_to_multiple: bool = False
    z_channels: int = 0
    source_channels: int = 0


PRESETS = {
    # DDPM CIFAR-10 (Ho et al. 2020, App. B): 35.7M parameters.
    "ddpm-cifar10": dict(image_size=32, model_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                         attention_resolutions=(16,), dropout=0.1),
    # ADM-style small network (Dhariwal & Nichol 2021): scale-shift norm, BigGAN resampling, attention at 32/16/8.
    "adm-small": dict(image_size=64, model_channels=64, channel_mult=(1, 2, 3, 4), num_res_blocks=2,
                      attention_resolutions=(32, 16, 8), num_head_channels=32, use_scale_shift_norm=True,
                      resblock_updown=True, dropout=0.1),
    # Trains on 2 CPU cores (digits at 16x16).
    "tiny": dict(image_size=16, in_channels=1, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                 attention_resolutions=(8,), num_heads=2, use_scale_shift_norm=True),
}


def preset(name: str, **overrides) -> UNetSpec:
    """A preset's UNetSpec with fields overridden (None values are ignored)."""
    if name not in PRESETS:
        raise ValueError(f"unknown U-Net preset {name!r}; valid: {sorted(PRESETS)}")
    valid = {f.name for f in fields(UNetSpec)}
    bad = set(overrides) - valid
    if bad:
        raise ValueError(f"U-Net preset {name!r}: unknown fields {sorted(bad)}; valid: {sorted(valid)}")
    kw = {**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}
    return UNetSpec(**kw)


class UNet2D(nn.Module):
    """DDPM/ADM U-Net; see the module docstring for the call contract. Labels -1 and num_classes are the null class."""

    def __init__(self, image_size: int = 32, in_channels: int = 3, model_channels: int = 128,
                 channel_mult=(1, 2, 2, 2), num_res_blocks: int = 2, attention_resolutions=(16,),
                 dropout: float = 0.0, num_heads: int = 1, num_head_channels: int | None = None,
                 use_scale_shift_norm: bool = False, resblock_updown: bool = False, conv_resample: bool = True,
                 num_classes: int | None = None, learn_sigma: bool = False, use_checkpoint: bool = False,
                 pad_to_multiple: bool = False, z_channels: int = 0, source_channels: int = 0,
                 encoder_only: bool = False):
        super().__init__()
        self.image_size, self.in_channels, self.model_channels = image_size, in_channels, model_channels
        self.z_channels = z_channels  # a DDGAN generator's latent, stacked after the image's channels (core.ddgan)
        self.source_channels = source_channels  # an image-to-image source, stacked after those (SR3 / Palette)
        self.num_classes, self.learn_sigma, self.use_checkpoint = num_classes, learn_sigma, use_checkpoint
        self.pad_to_multiple = pad_to_multiple
        self.factor = 2 ** (len(channel_mult) - 1)
        emb_dim = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # num_classes real classes plus one null class (index num_classes) for classifier-free guidance
        self.label_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self._attn = dict(num_heads=num_heads, head_dim=num_head_channels)
        res = lambda i, o, **kw: ResBlock(i, o, emb_dim, dropout, use_scale_shift_norm, **kw)
        attn_at = {image_size // r for r in attention_resolutions}  # downsampling factors with attention

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels + z_channels + source_channels, model_channels, 3,
                                                                                  padding=1))])
        chans, ch, ds = [model_channels], model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res(ch, model_channels * mult)]
                ch = model_channels * mult
                if ds in attn_at:
                    layers.append(AttentionBlock(ch, **self._attn))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                down = res(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample)
                self.input_blocks.append(TimestepEmbedSequential(down))
                chans.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(res(ch, ch), AttentionBlock(ch, **self._attn), res(ch, ch))
        self.trunk_channels = ch
        if encoder_only:  # the down path alone (UNetEncoder)
            return

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + chans.pop(), model_channels * mult)]
                ch = model_channels * mult
                if ds in attn_at:
                    layers.append(AttentionBlock(ch, **self._attn))
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, up=True) if resblock_updown else Upsample(ch, conv_resample))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        out_ch = in_channels * (2 if learn_sigma else 1)
        self.out = nn.Sequential(norm(ch), nn.SiLU(), zero_module(nn.Conv2d(ch, out_ch, 3, padding=1)))

    def _check_size(self, x: torch.Tensor) -> tuple[int, int]:
        """Padding (bottom, right) that makes H, W divisible by the downsampling factor; error if not allowed."""
        if x.ndim != 4 or x.shape[1] != self.in_channels + self.z_channels:
            raise ValueError(f"UNet2D: expected x of shape (B, {self.in_channels + self.z_channels}, H, W), got "
                             f"{tuple(x.shape)}")
        H, W = x.shape[-2:]
        ph, pw = -H % self.factor, -W % self.factor
        if (ph or pw) and not self.pad_to_multiple:
            raise ValueError(f"UNet2D: image size {H}x{W} is not divisible by the downsampling factor "
                             f"{self.factor} (2^(len(channel_mult)-1)); resize the data or set model.pad_to_multiple=true")
        return ph, pw

    def _embed(self, t: torch.Tensor, cond, B: int) -> torch.Tensor:
        t = t.reshape(-1).expand(B) if t.numel() in (1, B) else t
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        if self.label_emb is None:
            if cond is not None:
                raise ValueError("UNet2D: got class labels but the model was built with num_classes=None")
            return emb
        if cond is None:
            cond = torch.full((B,), self.num_classes, dtype=torch.long, device=t.device)
        cond = cond.long().reshape(B)
        cond = torch.where(cond == -1, torch.full_like(cond, self.num_classes), cond)  # -1: the null class
        if (cond < 0).any() or (cond > self.num_classes).any():
            raise ValueError(f"UNet2D: class labels must be in [0, {self.num_classes}] "
                             f"({self.num_classes} = null), got {cond.tolist()}")
        return emb + self.label_emb(cond)

    def _run(self, block, h, emb):
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(block, h, emb, use_reentrant=False)
        return block(h, emb)

    def _split_cond(self, x: torch.Tensor, cond):
        """(class labels or None, source image or None) from cond, checked against the model."""
        if isinstance(cond, dict):
            label, source = cond.get("label"), cond.get("source")
        elif isinstance(cond, torch.Tensor) and cond.ndim == 4:
            label, source = None, cond
        else:
            label, source = cond, None
        want = (x.shape[0], self.source_channels, *x.shape[2:])
        if self.source_channels and (source is None or tuple(source.shape) != want):
            got = "none" if source is None else tuple(source.shape)
            raise ValueError(f"UNet2D: built with source_channels={self.source_channels}: the condition must carry a "
                             f"source image of shape {want}, got {got}")
        if source is not None and not self.source_channels:
            raise ValueError(f"UNet2D: got a source image of shape {tuple(source.shape)} but the model was built "
                             "with source_channels=0")
        return label, source

    def features(self, x: torch.Tensor, t: torch.Tensor, cond=None):
        """The down path and the middle block: (h, skips, emb), h of size H / factor."""
        ph, pw = self._check_size(x)
        cond, source = self._split_cond(x, cond)
        if source is not None:
            x = torch.cat([x, source.to(x.dtype)], 1)
        H, W = x.shape[-2:]
        h = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(H, W) > max(ph, pw) else "replicate") if ph or pw else x
        emb = self._embed(t, cond, x.shape[0])
        skips = []
        for block in self.input_blocks:
            h = self._run(block, h, emb)
            skips.append(h)
        return self._run(self.middle_block, h, emb), skips, emb

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None):
        H, W = x.shape[-2:]
        h, skips, emb = self.features(x, t, cond)
        for block in self.output_blocks:
            h = self._run(block, torch.cat([h, skips.pop()], dim=1), emb)
        out = self.out(h)[..., :H, :W]
        if self.learn_sigma:
            return out[:, :self.in_channels], out[:, self.in_channels:]
        return out


class AttentionPool(nn.Module):
    """ADM's attention pooling: the mean token, with learned positions, attends over every position (Dhariwal &
    Nichol 2021, App. A, after CLIP's AttentionPool2d)."""

    def __init__(self, channels: int, positions: int, heads: int, out_dim: int):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(positions + 1, channels) / channels ** 0.5)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.proj = nn.Linear(channels, out_dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        tokens = h.flatten(2).transpose(1, 2)  # (B, N, C)
        if tokens.shape[1] + 1 != self.pos.shape[0]:
            raise ValueError(f"AttentionPool: built for {self.pos.shape[0] - 1} positions, got features of shape "
                             f"{tuple(h.shape)}; classify images of the size the classifier was trained on")
        tokens = torch.cat([tokens.mean(1, keepdim=True), tokens], 1) + self.pos
        out, _ = self.attn(tokens[:, :1], tokens, tokens, need_weights=False)
        return self.proj(out[:, 0])


class UNetEncoder(UNet2D):
    """ADM's noise-aware classifier: the U-Net's down path and middle block, then a pooling head to logits (Dhariwal &
    Nichol 2021, Sec. 4.1). net(x_t (B, C, H, W), t (B,)) -> (B, num_outputs)."""

    def __init__(self, num_outputs: int, pool: str = "attention", **unet):
        unet = {**unet, "num_classes": None, "learn_sigma": False, "z_channels": 0, "source_channels": 0,
                "encoder_only": True}
        super().__init__(**unet)
        ch = self.trunk_channels
        self.norm_out = nn.Sequential(norm(ch), nn.SiLU())
        if pool == "attention":
            side = -(-self.image_size // self.factor)
            heads = max(1, ch // self._attn["head_dim"]) if self._attn["head_dim"] else self._attn["num_heads"]
            self.head = AttentionPool(ch, side * side, heads, num_outputs)
        elif pool == "avg":
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch, num_outputs))
        else:
            raise ValueError(f"UNetEncoder: unknown pool {pool!r}; valid: attention, avg")

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        h, _, _ = self.features(x, t)
        return self.head(self.norm_out(h))


def build_unet(spec: UNetSpec) -> UNet2D:
    return UNet2D(**{f.name: getattr(spec, f.name) for f in fields(UNetSpec)})


def build_encoder(spec: UNetSpec, num_outputs: int, pool: str = "attention") -> UNetEncoder:
    """The classifier with the down path of the U-Net that `spec` describes."""
    return UNetEncoder(num_outputs, pool, **{f.name: getattr(spec, f.name) for f in fields(UNetSpec)})
