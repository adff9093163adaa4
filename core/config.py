"""Typed configuration: one dataclass per component, YAML loading, `key=value` overrides, strict keys."""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml


class ConfigError(ValueError):
    """A recipe or override names an unknown key, has a value of the wrong type, or a file is missing."""


LR_SCHEDULES = ("constant", "cosine", "linear")
DDPM_VARIANCES = ("beta", "beta_tilde", "learned")
CLIP_X0 = ("none", "clip", "dynamic")


def valid(default, *, min=None, max=None, above=None, choices=None, length=None, **kw):
    """A dataclass field whose value is checked when a config is loaded: min / max (inclusive), above (exclusive),
    choices (a tuple, or a function returning one, for lists owned by other modules), length (of a list, whose items
    the number rules then check). None always passes."""
    rules = {k: v for k, v in (("min", min), ("max", max), ("above", above), ("choices", choices), ("length", length))
             if v is not None}
    return field(default=default, metadata={"valid": rules}, **kw)


def check_value(name: str, value, rules: dict) -> None:
    """Raise ConfigError naming `name`, the value and what is valid when `value` breaks a field's rules."""
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, (list, tuple)):
        if "length" in rules and len(value) != rules["length"]:
            raise ConfigError(f"{name}: expected {rules['length']} values, got {len(value)}: {list(value)}")
        for v in value:
            check_value(name, v, {k: r for k, r in rules.items() if k != "length"})
        return
    choices = rules.get("choices")
    if choices is not None:
        choices = tuple(choices() if callable(choices) else choices)
        if value not in choices:
            raise ConfigError(f"{name}: unknown value {value!r}; valid: {list(choices)}")
    if isinstance(value, (int, float)):
        if "min" in rules and value < rules["min"]:
            raise ConfigError(f"{name}: {value!r} is too small; expected >= {rules['min']}")
        if "max" in rules and value > rules["max"]:
            raise ConfigError(f"{name}: {value!r} is too large; expected <= {rules['max']}")
        if "above" in rules and not value > rules["above"]:
            raise ConfigError(f"{name}: {value!r} is not valid; expected > {rules['above']}")


def positive_int(text: str) -> int:
    """A command-line type: an integer >= 1 (0 and negatives are errors, never 'the default')."""
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """A command-line type: an integer >= 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, lo: int) -> int:
    import argparse
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {text!r}") from None
    if v < lo:
        raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {v}")
    return v


def _samplers():
    from .samplers import SAMPLERS
    return sorted(SAMPLERS)


def _spacings():
    from .samplers import SPACINGS
    return SPACINGS


def _schedules():
    from .schedules import BETA_BUILDERS
    return (*sorted(BETA_BUILDERS), "custom")


def _predictions():
    from .parameterization import PREDICTIONS
    return PREDICTIONS


def _weightings():
    from .losses import WEIGHTINGS
    return WEIGHTINGS


def _precisions():
    from .precision import PRECISIONS
    return PRECISIONS


@dataclass
class DiffusionConfig:
    """Schedule, parameterization and loss settings (maps to make_schedule, Denoiser and DiffusionLoss)."""

    schedule: str = valid("linear", choices=_schedules)
    T: int = valid(1000, min=1)
    beta_start: Optional[float] = None
    beta_end: Optional[float] = None
    betas: Optional[list] = None
    zero_terminal_snr: bool = False
    prediction: str = valid("eps", choices=_predictions)
    learned_variance: bool = False
    weighting: str = valid("uniform", choices=_weightings)
    min_snr_gamma: float = valid(5.0, above=0)
    vlb_weight: float = valid(0.001, min=0)
    importance_sampling: bool = False
    cond_drop_prob: float = valid(0.0, min=0, max=1)
    clip_x0: str = valid("none", choices=CLIP_X0)
    # SR3's noise-level conditioning (Saharia et al. 2021, Sec. 2.4): train on continuous levels between the steps, and
    # let the network's time embedding read the noise level 1000 sqrt(alpha_bar) instead of the step t
    continuous_t: bool = False
    time_input: str = valid("t", choices=("t", "noise_level"))

    def __post_init__(self):
        if self.continuous_t and (self.learned_variance or self.importance_sampling):
            raise ConfigError("diffusion.continuous_t trains on noise levels between the steps: it does not combine "
                              "with learned_variance or importance_sampling, which need integer steps")
        if self.schedule == "custom" and not self.betas:
            raise ConfigError("diffusion.schedule=custom needs diffusion.betas (a list of T values in (0, 1))")
        if self.betas is not None:
            if not all(isinstance(b, (int, float)) and 0 < b < 1 for b in self.betas):
                raise ConfigError(f"diffusion.betas: expected values in (0, 1), got {self.betas}")


@dataclass
class TrainerConfig:
    """Trainer settings (maps to Trainer)."""

    steps: int = valid(1000, min=1)
    batch_size: int = valid(64, min=1)
    lr: float = valid(2e-4, above=0)
    weight_decay: float = valid(0.0, min=0)
    adam_betas: tuple = valid((0.9, 0.999), length=2, min=0, max=1)
    warmup_steps: int = valid(0, min=0)
    lr_schedule: str = valid("constant", choices=LR_SCHEDULES)
    grad_accum: int = valid(1, min=1)
    clip_grad: Optional[float] = valid(1.0, above=0)
    ema_decay: float = valid(0.999, min=0, max=1)
    ema_warmup: bool = True
    mixed_precision: str = valid("auto", choices=_precisions)  # auto: bf16 where native, else fp32 (core.precision)
    log_every: int = valid(50, min=0)
    sample_every: int = valid(0, min=0)
    ckpt_every: int = valid(0, min=0)  # 0: only at the end
    keep_checkpoints: int = valid(3, min=0)  # 0: keep all
    seed: int = valid(0, min=0)
    num_workers: int = valid(0, min=0)
    tensorboard: bool = True
    progress: bool = True


@dataclass
class SampleConfig:
    """Default sampling settings for `diffsuite sample` and the periodic sampling callback."""

    sampler: str = valid("ddim", choices=_samplers)
    steps: int = valid(50, min=1)
    n: int = valid(16, min=1)
    eta: float = valid(0.0, min=0, max=1)
    spacing: Optional[str] = valid(None, choices=_spacings)
    variance: str = valid("beta_tilde", choices=DDPM_VARIANCES)
    guidance: float = 0.0
    seed: int = valid(0, min=0)
    lambda_min: Optional[float] = None  # DPM-Solver++ only: start where log(alpha/sigma) >= lambda_min
    steps_per_level: int = valid(100, min=1)  # annealed Langevin only: Langevin steps at each noise level
    predictor: str = valid("ddpm", choices=_samplers)  # pc only: the predictor (any other sampler)
    corrector_steps: int = valid(1, min=0)  # pc only: Langevin corrector steps after each predictor step
    snr: Optional[float] = valid(0.16, above=0)  # pc only: the corrector's signal-to-noise ratio (None: automatic)


@dataclass
class DistillConfig:
    """How a student was (or is to be) distilled from a teacher checkpoint (core.distill; `diffsuite distill`)."""

    method: str = valid("progressive", choices=("progressive", "consistency", "guidance"))
    steps: int = valid(4, min=1)  # the student's sampling steps (progressive: the last stage's; guidance: sampler's)
    start_steps: int = valid(64, min=2)  # progressive: the first teacher's DDIM steps, halved each stage to `steps`
    stage_steps: int = valid(500, min=1)  # training steps per stage (consistency and guidance: in all)
    ode_steps: int = valid(18, min=1)  # consistency: intervals of the teacher's ODE grid t_n = n (T - 1) / N
    target_decay: float = valid(0.95, min=0, max=1)  # consistency: EMA decay mu of the target network
    sigma_data: float = valid(0.5, above=0)  # consistency: c_skip's sigma_data (core.distill.consistency_coefs)
    # consistency: how f is built from the network (core.distill.consistency_coefs): "edm", Song et al.'s c_skip and
    # c_out around the network's EDM-preconditioned output; "blend", c_skip x + (1 - c_skip) x0 (students made before
    # session 40, whose saved configs lack this key, load as "blend")
    form: str = valid("edm", choices=("edm", "blend"))
    weighting: str = valid("truncated_snr", choices=("truncated_snr", "x0"))  # progressive and guidance: x-space loss
    guidance: Optional[float] = None  # distil the teacher guided at this w (None: the teacher recipe's sample.guidance)
    # recorded by `diffsuite distill` (not set by hand): where the student came from
    teacher: Optional[str] = None
    teacher_sha256: Optional[str] = None
    stage_teacher: Optional[str] = None


@dataclass
class GanConfig:
    """A denoising diffusion GAN's adversarial training (core.ddgan; Xiao et al. 2022): the discriminator the task
    builds (`Task.build_discriminator`), its optimiser and the R1 weight. The generator's latent is model.z_channels."""

    r1_gamma: float = valid(0.05, min=0)  # R1 weight gamma: gamma / 2 * ||grad D(real)||^2
    d_lr: float = valid(1.25e-4, above=0)  # the discriminator's Adam learning rate
    d_betas: tuple = valid((0.5, 0.9), length=2, min=0, max=1)  # the discriminator's Adam betas (the paper's 0.5, 0.9)
    d_width: int = valid(32, min=1)  # the discriminator's first-level channels (MLP: hidden width)
    d_levels: int = valid(3, min=1)  # down-sampling levels (MLP: hidden layers)


@dataclass
class ClassifierConfig:
    """A noise-aware classifier p(y | x_t, t) (core.classifier; Dhariwal & Nichol 2021): trained on the recipe's data
    noised by its diffusion section, with the network the task builds (`Task.build_classifier`)."""

    pool: str = valid("attention", choices=("attention", "avg"))  # how the trunk's features become one vector
    depth: Optional[int] = valid(None, min=1)  # residual blocks per level (None: the model's num_res_blocks)


@dataclass
class AutoencoderConfig:
    """A KL-regularised autoencoder (core.autoencoder; Rombach et al. 2022): the first stage of latent diffusion, with
    the encoder and decoder the task builds (`Task.build_autoencoder`)."""

    latent_channels: int = valid(4, min=1)
    factor: int = valid(2, min=1)  # f: each spatial side shrinks by f (a power of 2)
    channels: int = valid(64, min=1)  # the widest level's channels
    num_res_blocks: int = valid(1, min=1)  # residual blocks per level
    kl_weight: float = valid(1.0e-6, min=0)  # LDM's weight (its KL and reconstruction summed over the image)
    recon: str = valid("l1", choices=("l1", "l2", "bce"))  # bce: binary data in {-1, 1}, the decoder gives logits
    scale_batches: int = valid(16, min=1)  # training batches the latent scale factor is measured on


@dataclass
class LatentConfig:
    """Diffuse in the latent space of a trained autoencoder (core.latent)."""

    autoencoder: str = ""  # its run folder or checkpoint
    cache: bool = True  # encode the items once, kept on disk with a manifest ($DIFFSUITE_CACHE/latents; false: per item)
    seed: int = 0  # the posterior samples of the cached latents


def _type_ok(value, tp) -> bool:
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)) or _float_str(value) is not None
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp in (list, tuple) or origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if tp is dict or origin is dict:
        return isinstance(value, dict)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _float_str(value):
    """PyYAML reads `1e-3` (no dot) as a string: accept such numbers for float fields."""
    if not isinstance(value, str):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _coerce(value, tp):
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType) and float in typing.get_args(tp) and _float_str(value) is not None:
        return float(value)
    if tp is float and (isinstance(value, int) or _float_str(value) is not None):
        return float(value)
    if tp is tuple and isinstance(value, list):
        return tuple(value)
    return value


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def from_dict(cls, data: dict | None, where: str = ""):
    """Build dataclass `cls` from a dict; unknown keys and wrong types are errors naming the valid keys."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    field_rules = {f.name: f.metadata.get("valid", {}) for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where or cls.__name__}: unknown key(s) {unknown}; valid keys: {names}")
    kwargs = {}
    for k, v in data.items():
        tp = hints[k]
        if dataclasses.is_dataclass(tp) and isinstance(v, dict):
            kwargs[k] = from_dict(tp, v, f"{where}.{k}" if where else k)
            continue
        name = f"{where + '.' if where else ''}{k}"
        if not _type_ok(v, tp):
            raise ConfigError(f"{name}: expected {_type_name(tp)}, got {type(v).__name__} {v!r}")
        kwargs[k] = _coerce(v, tp)
        check_value(name, kwargs[k], field_rules[k])
    return cls(**kwargs)


def to_dict(obj) -> dict:
    """A dataclass (nested) as plain JSON/YAML-friendly dicts."""
    return {f.name: (to_dict(getattr(obj, f.name)) if dataclasses.is_dataclass(getattr(obj, f.name))
                     else list(getattr(obj, f.name)) if isinstance(getattr(obj, f.name), tuple)
                     else getattr(obj, f.name)) for f in dataclasses.fields(obj)}


class _Loader(yaml.SafeLoader):
    """YAML 1.2's booleans: only true / false, so `mixed_precision: no` stays the string "no" (YAML 1.1 made it False);
    a key written twice in one mapping is an error (PyYAML would silently keep the second)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key] + 1}, again at line "
                    f"{key_node.start_mark.line + 1}): write each key once", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_Loader.yaml_implicit_resolvers = {k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
                                   for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def _yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def parse_overrides(overrides: list[str]) -> dict:
    """['train.steps=10', 'model.channels=[64,128]'] -> nested dict; values parsed as YAML scalars."""
    out: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.steps=100")
        key, raw = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p} is not a section")
        node[parts[-1]] = _yaml(raw) if raw != "" else ""
    return out


def deep_merge(base: dict, update: dict) -> dict:
    """Recursively merge `update` into a copy of `base`."""
    out = dict(base)
    for k, v in update.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _one_line(e: yaml.YAMLError) -> str:
    """A YAML error as one line: what is wrong and where."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    context = getattr(e, "context", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{context + ': ' if context else ''}{problem}{where}"


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; a missing file or a non-mapping is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path}")
    try:
        data = _yaml(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {_one_line(e)}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}")
    return data
