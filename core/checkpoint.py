"""Checkpoints: weights in safetensors, config and trainer state in JSON, written atomically, verified on load.

A checkpoint is a folder: <name>.safetensors per tensor group, state.json (step, trainer state and a
manifest of every file's size and sha256) and config.json. It is written into a temporary folder that
is renamed into place only when complete, so a crash never leaves a partial checkpoint under the real name.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
try:
    from safetensors import SafetensorError as SafetensorsError
except ImportError:  # older safetensors
    SafetensorsError = Exception
from safetensors.torch import load_file, save_file

from .utils import atomic_write_json, sha256_file


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupted or does not match what is expected."""


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, dict[str, torch.Tensor]], state: dict, config: dict) -> Path:
    """Write {group: state_dict} tensors, state and config into folder `path` atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    manifest = {}
    for group, sd in tensors.items():
        f = tmp / f"{group}.safetensors"
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in sd.items()}, str(f))
        manifest[f.name] = {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
    atomic_write_json(tmp / "config.json", config)
    atomic_write_json(tmp / "state.json", {**state, "manifest": manifest})
    _fsync_dir(tmp)
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file missing: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); the checkpoint is corrupted or cut short") from e


def load_checkpoint(path: str | os.PathLike, groups: tuple[str, ...] | None = None, verify: bool = True):
    """Load (tensors by group, state, config) from a checkpoint folder, checking sizes and hashes first."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {path}")
    state = read_json(path / "state.json")
    config = read_json(path / "config.json")
    manifest = state.get("manifest", {})
    names = [n[: -len(".safetensors")] for n in manifest] if groups is None else list(groups)
    tensors = {}
    for g in names:
        f = path / f"{g}.safetensors"
        entry = manifest.get(f.name)
        if entry is None or not f.is_file():
            raise CheckpointError(f"checkpoint {path}: missing {f.name} (manifest lists {sorted(manifest)})")
        size = f.stat().st_size
        if size != entry["bytes"]:
            raise CheckpointError(f"{f}: {size} bytes, expected {entry['bytes']}: the file is cut short or was changed")
        if verify and sha256_file(f) != entry["sha256"]:
            raise CheckpointError(f"{f}: content hash does not match the manifest: the file is corrupted")
        try:
            tensors[g] = load_file(str(f))
        except (SafetensorsError, OSError, ValueError) as e:
            raise CheckpointError(f"{f}: cannot read safetensors ({e})") from e
    return tensors, state, config


def flatten_optimizer_state(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state_dict into safetensors-able tensors and JSON metadata (no pickling)."""
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pid}.{k}"] = v
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """Inverse of flatten_optimizer_state."""
    state: dict = {}
    for key, v in tensors.items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    for pid, d in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(d)
    return {"state": state, "param_groups": meta["param_groups"]}
