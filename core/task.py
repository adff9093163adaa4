"""What a modality supplies to the generic train / sample pipeline: a network, a dataset, a sample shape.

A modality subclasses `Task`, sets `name`, `ModelConfig` and `DataConfig` (dataclasses whose fields map
1:1 to constructor arguments) and implements the methods below. Everything else (schedule,
parameterization, loss, sampler, guidance, trainer, checkpoints, CLI) comes from the core.

Dataset items are either a tensor x0 of the sample shape, or a dict {"x0": tensor, "cond": tensor}.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from .config import ConfigError


@dataclass
class NoConfig:
    """An empty config section."""


class Task:
    name: str = "task"
    ModelConfig: type = NoConfig
    DataConfig: type = NoConfig
    #: value of the condition meaning "unconditional", for classifier-free guidance (None: no CFG)
    null_cond: Any = None

    def null_condition(self, recipe: Any) -> Any:
        """The null condition of this recipe's model (core.conditions.null_like: a value, or a dict by part when
        conditions are dicts); default `null_cond`."""
        return self.null_cond

    def build_net(self, model: Any, diffusion: Any) -> nn.Module:
        """The raw network net(x_t, t, cond) -> output (or (output, v_var) with learned variance)."""
        raise NotImplementedError

    def build_discriminator(self, model: Any, data: Any, gan: Any) -> nn.Module:
        """A denoising diffusion GAN's time-conditional discriminator D(x_{t-1}, x_t, t, cond) -> logits (B,)
        (core.ddgan; `gan` is the recipe's GanConfig). A task that supports DDGAN recipes overrides this."""
        raise ConfigError(f"task {self.name!r} has no discriminator: it cannot train a denoising diffusion GAN (gan:)")

    def build_autoencoder(self, model: Any, data: Any, autoencoder: Any) -> tuple[nn.Module, nn.Module]:
        """(encoder, decoder) of a KL autoencoder for this task's samples (core.autoencoder): the encoder maps a sample
        to 2 * latent_channels maps (mean, log-variance) at 1/f of its size, the decoder back. A task whose samples
        are images of some kind overrides this."""
        raise ConfigError(f"task {self.name!r} has no autoencoder (autoencoder:)")

    def data_shape(self, data: Any) -> tuple:
        """The shape of one sample the data gives (without a batch dimension), whatever the model; latent diffusion
        uses it."""
        raise ConfigError(f"task {self.name!r} cannot run in an autoencoder's latent space (latent:)")

    def latent_model(self, model: Any, shape: tuple, factor: int) -> Any:
        """The model config with its network sized for latent samples of `shape`, `factor` times smaller per spatial
        axis than the data (core.latent)."""
        raise ConfigError(f"task {self.name!r} cannot run in an autoencoder's latent space (latent:)")

    def build_classifier(self, model: Any, data: Any, classifier: Any) -> nn.Module:
        """A noise-aware classifier's network net(x_t, t) -> logits (B, K) over the data's labels (core.classifier;
        `classifier` is the recipe's ClassifierConfig). A task whose data has labels overrides this."""
        raise ConfigError(f"task {self.name!r} has no noise-aware classifier (classifier:)")

    def classification_inputs(self, recipe: Any, source: str):
        """What `diffsuite classify` scores (core.classify): a core.classify.Candidates (the inputs, the candidate
        conditions, shared or per input, the class each stands for, class names, true classes or None) from `source`,
        a split name ('train', 'val', 'test') or a file. A task whose model is conditional overrides this; the default
        refuses with a ConfigError."""
        raise ConfigError(f"task {self.name!r} does not support classify: its model has no conditions to rank")

    def loss_weights(self, model: Any, data: Any) -> Optional[torch.Tensor]:
        """Per-element weights of one sample's squared error in the diffusion loss (None: uniform); e.g. Diffuser's
        weight on the first step's actions."""
        return None

    def build_dataset(self, data: Any, split: str = "train") -> torch.utils.data.Dataset:
        """A map-style dataset of x0 tensors or {"x0", "cond"} dicts; split is 'train', 'val' or 'test'."""
        raise NotImplementedError

    @property
    def pixel_task(self) -> "Task":
        """The task whose datasets hold samples as the user sees them (itself; a latent task: the task it wraps)."""
        return self

    def inpaint_space(self, known: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(known, mask) as the sampler sees them for inpainting: as given here; a latent task encodes the known
        samples and shrinks the mask."""
        return known, mask

    def finish(self, x: torch.Tensor, cond, recipe: Any) -> torch.Tensor:
        """What a sample means to the user, from what the sampler produced (default: itself; e.g. a residual over the
        source image added back). Every command that returns samples calls it."""
        return x

    def measure(self, data: Any) -> Any:
        """The data config with what is measured on the training data filled in (e.g. a residual's scale); `diffsuite
        train` calls it first and saves the result, so sampling never needs the data. Default: unchanged."""
        return data

    def sample_shape(self, model: Any, data: Any) -> tuple:
        """Shape of one sample, without the batch dimension; raises if model and data disagree (train calls it
        first, so a mismatch fails before any training)."""
        raise NotImplementedError

    def configure(self, model: Any, data: Any) -> Any:
        """The model config with what the data decides filled in (e.g. the class count of an image folder), checked
        against the data; `diffsuite train` calls it before building anything and saves the result. A mismatch the
        user must resolve is a ConfigError. Default: the model config unchanged."""
        return model

    def sample_cond(self, n: int, cfg: Any, generator: Optional[torch.Generator] = None):
        """Conditions for n samples in `diffsuite sample` (None for unconditional)."""
        return None

    def save_samples(self, x: torch.Tensor, cond, out_dir: Path, cfg: Any) -> dict:
        """Write what people look at (pictures, sounds, MIDI) under out_dir; return {name: path}."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        from .utils import save_tensors
        return {"samples": str(save_tensors(out_dir / "samples.safetensors", {"x": x}))}

    def inpaint(self, loaded: Any, out_dir: Path, *, image: Optional[str] = None, mask: Optional[str] = None,
                n: Optional[int] = None, repaint: bool = False, sampler: Optional[str] = None,
                steps: Optional[int] = None, guidance: Optional[float] = None, seed: int = 0,
                eta: Optional[float] = None) -> dict:
        """Fill the masked region of `image` (None: held-out items of the dataset) with the checkpoint `loaded`
        (what `recipes.run.load` returns), write the result under out_dir and return {name: path}.

        `mask` is a task-defined name or a file; `repaint` asks for RePaint resampling instead of plain
        replacement. Used by `diffsuite sample CHECKPOINT --inpaint/--mask`; a task that supports it overrides
        this method, the default refuses with a ConfigError."""
        raise ConfigError(f"task {self.name!r} does not support inpainting (--inpaint / --mask / --repaint)")
