"""Checkpoints: weights in safetensors, config and trainer state in JSON, written atomically, verified on load.

A checkpoint is a folder: <name>.safetensors per tensor group, state.json (step, trainer state and a
manifest of every file's size and sha256) and config.json. It is written into a temporary folder that
is renamed into place only when complete, so a crash never leaves a partial checkpoint under the real name.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import warnings
from pathlib import Path

import torch
try:
    from safetensors import SafetensorError as SafetensorsError
except ImportError:  # older safetensors
    SafetensorsError = Exception
from safetensors.torch import load_file

from .utils import atomic_write_json, save_tensors, sha256_file


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupted or does not match what is expected."""


STEP_PREFIX = "step_"
_TEMPORARY = re.compile(r"^\.(.+)\.(tmp|old)-(\d+)$")


def checkpoint_step(path: Path) -> int:
    """The step of a checkpoint folder named step_XXXXXXXX (-1 for other names)."""
    try:
        return int(Path(path).name[len(STEP_PREFIX):])
    except ValueError:
        return -1


def checkpoint_folders(ckpt_dir: Path) -> list[Path]:
    """The checkpoint folders (step_*) under ckpt_dir, oldest step first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    return sorted((p for p in ckpt_dir.glob(f"{STEP_PREFIX}*") if p.is_dir()), key=checkpoint_step)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(ckpt_dir: Path) -> list[Path]:
    """Remove the partial checkpoint folders (.NAME.tmp-PID, .NAME.old-PID) of processes that no longer run, or of
    this one (a save that failed); returns what was removed."""
    removed = []
    for p in Path(ckpt_dir).glob(".*") if Path(ckpt_dir).is_dir() else []:
        m = _TEMPORARY.match(p.name)
        if m and p.is_dir() and (int(m.group(3)) == os.getpid() or not _pid_alive(int(m.group(3)))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    if removed:
        warnings.warn(f"removed {len(removed)} partial checkpoint folder(s) left by a stopped run: "
                      f"{', '.join(p.name for p in removed)}")
    return removed


def _bytes_needed(tensors: dict[str, dict[str, torch.Tensor]]) -> int:
    return sum(v.numel() * v.element_size() for sd in tensors.values() for v in sd.values())


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, dict[str, torch.Tensor]], state: dict, config: dict) -> Path:
    """Write {group: state_dict} tensors, state and config into folder `path` atomically; when the disk fills up,
    the partial folder is removed and CheckpointError says how much space the checkpoint needs."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        _write_folder(tmp, tensors, state, config)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        need, free = _bytes_needed(tensors), shutil.disk_usage(path.parent).free
        raise CheckpointError(f"no space left on the device while writing checkpoint {path} ({e.strerror}): it needs "
                              f"about {need / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are free in {path.parent}; the "
                              "partial folder was removed and earlier checkpoints are intact: free some space, then "
                              "continue with --resume auto") from e
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def _write_folder(tmp: Path, tensors, state: dict, config: dict) -> None:
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    manifest = {}
    for group, sd in tensors.items():
        f = tmp / f"{group}.safetensors"
        save_tensors(f, {k: v.detach().to("cpu", copy=True) for k, v in sd.items()})  # one copy, own storage each
        manifest[f.name] = {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
    atomic_write_json(tmp / "config.json", config)
    atomic_write_json(tmp / "state.json", {**state, "manifest": manifest})
    _fsync_dir(tmp)


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


def weights_sha256(path: str | os.PathLike, group: str = "ema") -> str:
    """The sha256 of a checkpoint's `group` weights as its manifest records it (checked on every load): what names a
    teacher or an autoencoder that something else was made from."""
    path = Path(path)
    entry = read_json(path / "state.json").get("manifest", {}).get(f"{group}.safetensors")
    if entry is None:
        raise CheckpointError(f"checkpoint {path}: its manifest lists no {group}.safetensors")
    return entry["sha256"]


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
