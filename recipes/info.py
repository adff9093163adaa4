"""`diffsuite info`: what a user pastes into a bug report (versions, device, precision rule, cache, extras)."""
from __future__ import annotations

import contextlib
import importlib
import importlib.metadata as md
import io
import os
import platform
import sys
import warnings
from dataclasses import asdict
from pathlib import Path

#: optional packages by the extra (or role) that needs them: module name -> distribution name
EXTRAS = {
    "image": {"sklearn": "scikit-learn", "skimage": "scikit-image"},
    "audio": {"soundfile": "soundfile", "librosa": "librosa", "espeakng_loader": "espeakng-loader", "scipy": "scipy"},
    "music": {"pretty_midi": "pretty_midi", "music21": "music21", "tinysoundfont": "tinysoundfont"},
    "trajectory": {"gymnasium": "gymnasium", "mujoco": "mujoco", "gymnasium_robotics": "gymnasium-robotics",
                   "stable_baselines3": "stable-baselines3"},
    "references": {"diffusers": "diffusers", "diffwave": "diffwave", "torchaudio": "torchaudio", "pesq": "pesq",
                   "pystoi": "pystoi", "pocketsphinx": "pocketsphinx", "essentia": "essentia"},
    "tools": {"accelerate": "accelerate", "safetensors": "safetensors", "tensorboard": "tensorboard"},
}


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def probe_import(module: str, dist: str) -> dict:
    """Whether `module` imports, its installed version, and the error where it does not."""
    version = _version(dist)
    if version is None:
        return {"installed": False}
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):  # some print notices on import
            warnings.simplefilter("ignore")
            importlib.import_module(module)
        return {"installed": True, "version": version, "imports": True}
    except Exception as e:  # any failure to import is what the report should show
        return {"installed": True, "version": version, "imports": False, "error": f"{type(e).__name__}: {e}"[:200]}


def folder_size(path: Path) -> int:
    """Bytes under `path` (0 if it does not exist)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def collect() -> dict:
    """Every fact of the report as a JSON-able dict."""
    import torch
    from diffsuite.core.precision import cpu_name, native_bf16, probe_machine, resolve_precision
    machine = probe_machine()
    native, _ = native_bf16(machine)
    cache = Path(os.environ.get("DIFFSUITE_CACHE", Path.home() / ".cache" / "diffsuite"))
    return {
        "diffsuite": _version("diffsuite"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": {"version": torch.__version__, "cuda": torch.version.cuda, "git": torch.version.git_version[:12],
                  "build": "CUDA" if torch.version.cuda else "CPU"},
        "device": asdict(machine),
        "cpu_model": cpu_name(),
        "threads": torch.get_num_threads(),
        "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "native_bf16": native,
        "precision_auto": resolve_precision("auto", machine).to_dict(),
        "cache": {"path": str(cache), "env": "DIFFSUITE_CACHE", "exists": cache.is_dir(),
                  "bytes": folder_size(cache)},
        "packages": {group: {m: probe_import(m, d) for m, d in mods.items()} for group, mods in EXTRAS.items()},
    }


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def render(f: dict) -> str:
    """The report as text lines."""
    dev = f["device"]
    lines = [f"diffsuite {f['diffsuite']}  python {f['python']}  {f['platform']}",
             f"torch {f['torch']['version']} ({f['torch']['build']} build, git {f['torch']['git']})",
             f"device: {dev['device']}  {dev['device_name'] or f['cpu_model']}",
             f"CPU: {f['cpu_model']}  capability {dev['cpu_capability']}  AVX512-BF16/AMX {dev['cpu_bf16_isa']}  "
             f"oneDNN bf16 {dev['onednn_bf16']}  threads {f['threads']}",
             f"CUDA devices: {f['cuda_devices']}",
             f"precision auto -> {f['precision_auto']['precision']} ({f['precision_auto']['reason']})",
             f"cache: {f['cache']['path']} ({_mb(f['cache']['bytes']) if f['cache']['exists'] else 'not created yet'}; "
             f"set {f['cache']['env']} to move it)"]
    for group, mods in f["packages"].items():
        parts = []
        for m, p in mods.items():
            if not p["installed"]:
                parts.append(f"{m} -")
            elif p["imports"]:
                parts.append(f"{m} {p['version']}")
            else:
                parts.append(f"{m} {p['version']} (does not import: {p['error']})")
        lines.append(f"{group + ':':12s}" + ", ".join(parts))
    return "\n".join(lines)
