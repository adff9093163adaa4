"""Tiny recipes (seconds to train) for every modality, on small data files the tests write themselves; and a loader
for the scripts under benchmarks/ that tests call into."""
from __future__ import annotations

from pathlib import Path

import numpy as np

SR = 22050
QUIET = {"progress": False, "tensorboard": False, "log_every": 1}


def benchmark_script(rel: str, name: str):
    """A script under benchmarks/ (not a package module) loaded as a module, e.g. benchmark_script("audio.py", "A")."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" / rel)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wav_files(root: Path, n: int = 4, seconds: float = 0.3) -> Path:
    """n short WAVs (tones with a little noise) and a `path|text` list of them; returns the list file."""
    import soundfile as sf
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(SR * seconds)) / SR
    for i in range(n):
        y = 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t) + 0.01 * rng.standard_normal(len(t))
        sf.write(root / f"clip{i}.wav", y.astype(np.float32), SR)
    (root / "list.txt").write_text("".join(f"clip{i}.wav|\n" for i in range(n)))
    return root / "list.txt"


def midi_files(root: Path, n: int = 30) -> Path:
    """n MIDI files of 8 bars of quarter-note triads; returns the folder."""
    import pretty_midi
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pm = pretty_midi.PrettyMIDI(initial_tempo=120)
        inst = pretty_midi.Instrument(0)
        for b in range(32):
            r = int(rng.integers(48, 60))
            for p in (r, r + 4, r + 7):
                inst.notes.append(pretty_midi.Note(80, p, b * 0.5, b * 0.5 + 0.5))
        pm.instruments.append(inst)
        pm.write(str(root / f"song{i:02d}.mid"))
    return root


def recipe(task: str, root: Path, steps: int = 4, **train) -> dict:
    """A tiny recipe dict of `task` whose data lives under root (written here when the task needs files)."""
    tr = {"steps": steps, "batch_size": 4, "lr": 1e-3, **QUIET, **train}
    if task == "toy2d":
        return {"task": "toy2d", "model": {"hidden": 16, "layers": 2, "t_dim": 8}, "data": {"n": 256},
                "diffusion": {"schedule": "cosine", "T": 50, "prediction": "v"}, "train": tr,
                "sample": {"sampler": "ddim", "steps": 4, "n": 8}}
    if task == "image":
        return {"task": "image", "model": {"preset": "tiny", "num_classes": 10, "model_channels": 8, "num_heads": 1},
                "data": {"source": "digits", "image_size": 16, "channels": 1, "hflip": True},
                "diffusion": {"schedule": "cosine", "T": 20, "cond_drop_prob": 0.2}, "train": tr,
                "sample": {"sampler": "ddim", "steps": 3, "n": 4, "guidance": 1.0}}
    if task == "audio":
        lst = wav_files(root / "wavs")
        audio = {"mel": "hifigan", "prior": "standard"}
        return {"task": "audio",
                "model": {"preset": "tiny", "residual_layers": 2, "residual_channels": 4, "dilation_cycle": 2, **audio},
                "data": {"source": "filelist", "path": str(lst), "crop_samples": 1024, "sample_seconds": 0.1, **audio},
                "diffusion": {"schedule": "linear", "T": 20, "beta_start": 1e-4, "beta_end": 0.05}, "train": tr,
                "sample": {"sampler": "ddim", "steps": 3, "n": 1}}
    if task == "music":
        folder = midi_files(root / "midi")
        return {"task": "music", "model": {"preset": "small", "channels": 8, "pitch_lo": 40},
                "data": {"source": str(folder), "seg_len": 32, "n_pitch": 32, "pitch_lo": 40, "transpose_max": 3},
                "diffusion": {"schedule": "cosine", "T": 20, "prediction": "v", "cond_drop_prob": 0.1}, "train": tr,
                "sample": {"sampler": "ddim", "steps": 3, "n": 2}}
    if task == "trajectory":
        return {"task": "trajectory", "model": {"transition_dim": 6, "dim": 8, "dim_mults": [1, 2]},
                "data": {"env_id": "PointMaze_UMaze-v3", "size": "1500", "horizon": 16, "episode_ends": "timeouts"},
                "diffusion": {"schedule": "cosine", "T": 10, "prediction": "x0", "clip_x0": "clip"}, "train": tr,
                "sample": {"sampler": "ddim", "steps": 3, "n": 2}}
    raise ValueError(task)


TASKS = ("toy2d", "image", "audio", "music", "trajectory")


def ddgan(r: dict, T: int = 2) -> dict:
    """A tiny recipe turned into a denoising diffusion GAN (core.ddgan): a generator with 2 latent channels on a T-step
    vp_sde chain, a small discriminator, the ddgan sampler."""
    r = {**r, "model": {**r["model"], "z_channels": 2},
         "diffusion": {"schedule": "vp_sde", "T": T, "beta_start": 0.1, "beta_end": 20.0, "prediction": "x0"},
         "gan": {"d_width": 8, "d_levels": 2}, "sample": {**r["sample"], "sampler": "ddgan", "steps": T}}
    r["sample"].pop("guidance", None)
    if r["task"] == "trajectory":
        r["diffusion"]["clip_x0"] = "clip"
    return r
