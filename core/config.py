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


@dataclass
class DiffusionConfig:
    """Schedule, parameterization and loss settings (maps to make_schedule, Denoiser and DiffusionLoss)."""

    schedule: str = "linear"
    T: int = 1000
    beta_start: Optional[float] = None
    beta_end: Optional[float] = None
    betas: Optional[list] = None
    zero_terminal_snr: bool = False
    prediction: str = "eps"
    learned_variance: bool = False
    weighting: str = "uniform"
    min_snr_gamma: float = 5.0
    vlb_weight: float = 0.001
    importance_sampling: bool = False
    cond_drop_prob: float = 0.0
    clip_x0: str = "none"  # none | clip | dynamic


@dataclass
class TrainerConfig:
    """Trainer settings (maps to Trainer)."""

    steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-4
    weight_decay: float = 0.0
    adam_betas: tuple = (0.9, 0.999)
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # constant | cosine | linear
    grad_accum: int = 1
    clip_grad: Optional[float] = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    mixed_precision: str = "no"  # no | fp16 | bf16
    log_every: int = 50
    sample_every: int = 0
    ckpt_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 3
    seed: int = 0
    num_workers: int = 0
    tensorboard: bool = True
    progress: bool = True


@dataclass
class SampleConfig:
    """Default sampling settings for `diffsuite sample` and the periodic sampling callback."""

    sampler: str = "ddim"
    steps: int = 50
    n: int = 16
    eta: float = 0.0
    spacing: Optional[str] = None
    variance: str = "beta_tilde"
    guidance: float = 0.0
    seed: int = 0
    lambda_min: Optional[float] = None  # DPM-Solver++ only: start where log(alpha/sigma) >= lambda_min


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
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where or cls.__name__}: unknown key(s) {unknown}; valid keys: {names}")
    kwargs = {}
    for k, v in data.items():
        tp = hints[k]
        if dataclasses.is_dataclass(tp) and isinstance(v, dict):
            kwargs[k] = from_dict(tp, v, f"{where}.{k}" if where else k)
            continue
        if not _type_ok(v, tp):
            raise ConfigError(f"{where + '.' if where else ''}{k}: expected {_type_name(tp)}, got {type(v).__name__} {v!r}")
        kwargs[k] = _coerce(v, tp)
    return cls(**kwargs)


def to_dict(obj) -> dict:
    """A dataclass (nested) as plain JSON/YAML-friendly dicts."""
    return {f.name: (to_dict(getattr(obj, f.name)) if dataclasses.is_dataclass(getattr(obj, f.name))
                     else list(getattr(obj, f.name)) if isinstance(getattr(obj, f.name), tuple)
                     else getattr(obj, f.name)) for f in dataclasses.fields(obj)}


class _Loader(yaml.SafeLoader):
    """YAML 1.2's booleans: only true / false, so `mixed_precision: no` stays the string "no" (YAML 1.1 made it False)."""


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


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; a missing file or a non-mapping is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path}")
    try:
        data = _yaml(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}")
    return data
