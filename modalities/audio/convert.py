"""Convert a state dict of the reference DiffWave implementation (the `diffwave` package, LMNT) to ours."""
from __future__ import annotations

import re

import torch

# reference name pattern -> our name (Kong et al. 2020 layout; the reference's names on the left)
_RULES = [
    (r"^input_projection\.", "input_proj."),
    (r"^diffusion_embedding\.projection1\.", "step_embed.fc1."),
    (r"^diffusion_embedding\.projection2\.", "step_embed.fc2."),
    (r"^spectrogram_upsampler\.", "mel_upsampler."),
    (r"^residual_layers\.(\d+)\.dilated_conv\.", r"layers.\1.dilated_conv."),
    (r"^residual_layers\.(\d+)\.diffusion_projection\.", r"layers.\1.step_proj."),
    (r"^residual_layers\.(\d+)\.conditioner_projection\.", r"layers.\1.mel_proj."),
    (r"^residual_layers\.(\d+)\.output_projection\.", r"layers.\1.out_proj."),
    (r"^skip_projection\.", "skip_proj."),
    (r"^output_projection\.", "output_proj."),
]
_SKIP = ("diffusion_embedding.embedding",)  # the reference's non-persistent sinusoid table


def convert_reference_state_dict(ref: dict) -> dict:
    """Rename the reference's tensors to our DiffWave's names; an unknown key is an error naming it."""
    out = {}
    for key, value in ref.items():
        if key in _SKIP:
            continue
        for pattern, repl in _RULES:
            new, n = re.subn(pattern, repl, key)
            if n:
                out[new] = value
                break
        else:
            raise KeyError(f"convert_reference_state_dict: unknown reference key {key!r}")
    return out


def reference_params(net) -> dict:
    """The reference `params` fields describing our network (for building the reference model to compare)."""
    import numpy as np
    return dict(residual_layers=len(net.layers), residual_channels=net.input_proj.out_channels,
                dilation_cycle_length=int(max(net.dilations)).bit_length(), n_mels=net.n_mels,
                noise_schedule=np.linspace(1e-4, 0.05, net.T).tolist(), hop_samples=net.hop_length,
                unconditional=net.n_mels is None)


def load_reference_into(net, ref_state: dict) -> None:
    """Load reference weights into our network (strict: every tensor must match by name and shape)."""
    missing, unexpected = net.load_state_dict(
        {k: torch.as_tensor(v) for k, v in convert_reference_state_dict(ref_state).items()}, strict=True)
    if missing or unexpected:  # pragma: no cover - strict=True raises first
        raise KeyError(f"missing {missing}, unexpected {unexpected}")
