"""Trainer overhead: steps/s of diffsuite's Accelerate Trainer against a bare PyTorch loop, same model and batch.

The bare loop is what a user would write by hand: index a random batch from an in-memory tensor, the same
per-sample diffusion loss, backward, AdamW step. Two bare variants are timed:
  bare      forward + loss + backward + AdamW (the minimum),
  bare+     the same plus gradient clipping and an EMA update (the work the trainer does by default),
and the trainer runs with its defaults (EMA, clipping, LR schedule, logging; progress bar and TensorBoard off).
Each measurement is the median of `--repeats` interleaved runs after a warm-up. Overhead = 1 - trainer / bare.

    python benchmarks/trainer.py            # toy MLP and the image `tiny` U-Net (about 3 minutes on 2 cores)
    python benchmarks/trainer.py --quick

`--minutes RECIPE[,key=value...] ...` instead measures how long each recipe's training takes on this machine, all
threads (the "CPU recipe within N minutes" promises): steps per second as the difference of a 10- and a 50-step run
(start-up and data loading cancel; more steps until the difference is 5 s or more), times the recipe's steps.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from diffsuite.core.build import build_denoiser, build_loss
from diffsuite.core.config import DiffusionConfig, TrainerConfig
from diffsuite.core.ema import EMA
from diffsuite.core.trainer import Trainer
from diffsuite.core.utils import atomic_write_json


def toy_case():
    from diffsuite.recipes.toy2d import MLPDenoiser, make_points
    return "toy2d MLP (4x128), batch 256", lambda: MLPDenoiser(2, 128, 4, 32), make_points("moons", 8192, 0.05, 0), 256


def unet_case():
    from diffsuite.modalities.image.unet import build_unet, preset
    spec = preset("tiny", in_channels=1, image_size=16)
    x = torch.randn(2048, 1, 16, 16).clamp(-1, 1)
    return "image tiny U-Net 16x16, batch 32", lambda: build_unet(spec), x, 32


def bare_loop(make_net, data, batch, steps, diff, extra: bool) -> float:
    """Steps/s of a hand-written loop."""
    torch.default_generator.manual_seed(0)
    den = build_denoiser(make_net(), diff)
    loss_fn = build_loss(diff)
    opt = torch.optim.AdamW(den.parameters(), lr=1e-4)
    ema = EMA(den.net, 0.999) if extra else None
    g = torch.Generator().manual_seed(0)
    n = len(data)
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, n, (batch,), generator=g)
        losses, _ = loss_fn(den, data[idx], None, g)
        loss = losses.mean()
        loss.backward()
        if extra:
            torch.nn.utils.clip_grad_norm_(den.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if extra:
            ema.update(den.net)
    return steps / (time.perf_counter() - t0)


def trainer_loop(make_net, data, batch, steps, diff) -> float:
    """Steps/s of Trainer.train with the default options (timed inside, excluding construction)."""
    torch.default_generator.manual_seed(0)
    den = build_denoiser(make_net(), diff)
    cfg = TrainerConfig(steps=steps, batch_size=batch, lr=1e-4, log_every=max(1, steps // 2), progress=False,
                        tensorboard=False)
    with tempfile.TemporaryDirectory() as d:
        tr = Trainer(den, torch.utils.data.TensorDataset(data), cfg, d, build_loss(diff))
        tr.save = lambda: None  # the final checkpoint write is not part of the step rate
        t0 = time.perf_counter()
        tr.train()
        return steps / (time.perf_counter() - t0)


def recipe_minutes(specs: list[str], warm: int = 10, timed: int = 40) -> list[dict]:
    """Minutes of training per recipe on this machine; each spec is `name[,key=value...]` (overrides, e.g. the
    autoencoder a latent recipe needs)."""
    from diffsuite.core.precision import cpu_name
    from diffsuite.recipes import run
    quiet = ["train.progress=false", "train.log_every=100000", "train.ckpt_every=100000"]
    rows = []
    for spec in specs:
        name, *over = spec.split(",")
        steps, n = run.load_recipe(name, over).train.steps, timed  # the steps an override sets count
        with tempfile.TemporaryDirectory() as tmp:
            def seconds(k: int) -> float:
                t0 = time.perf_counter()
                run.train(name, over + quiet + [f"train.steps={k}"], out_dir=Path(tmp) / name, overwrite=True)
                return time.perf_counter() - t0
            base = seconds(warm)
            while (span := seconds(warm + n) - base) < 5.0 and n < steps:  # fast recipes: time more steps
                n = min(steps, n * 5)
        rate = n / span
        rows.append({"recipe": name, "overrides": over, "steps": steps, "steps_per_second": rate,
                     "minutes": steps / rate / 60, "threads": torch.get_num_threads(), "cpu": cpu_name(),
                     "cpu_capability": torch.backends.cpu.get_cpu_capability()})
        print(f"{name:28s} {rate:6.2f} steps/s x {steps} steps = {steps / rate / 60:5.1f} min", flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--minutes", nargs="+", metavar="RECIPE", help="minutes of training per recipe instead "
                    "(name[,key=value...]); writes --out, default benchmarks/results/recipe_minutes.json")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.minutes:
        atomic_write_json(args.out or "benchmarks/results/recipe_minutes.json", {"rows": recipe_minutes(args.minutes)})
        return 0
    args.out = args.out or "benchmarks/results/trainer.json"
    diff = DiffusionConfig(schedule="cosine", T=1000)
    repeats = 2 if args.quick else args.repeats
    results = []
    for case in (toy_case, unet_case):
        name, make_net, data, batch = case()
        steps = 30 if args.quick else (400 if "MLP" in name else 40)
        bare_loop(make_net, data, batch, max(3, steps // 10), diff, True)  # warm-up
        runs = {"bare": [], "bare+": [], "trainer": []}
        for _ in range(repeats):  # interleaved, so drifts in machine load hit all three alike
            runs["bare"].append(bare_loop(make_net, data, batch, steps, diff, False))
            runs["bare+"].append(bare_loop(make_net, data, batch, steps, diff, True))
            runs["trainer"].append(trainer_loop(make_net, data, batch, steps, diff))
        med = {k: statistics.median(v) for k, v in runs.items()}
        rec = {"case": name, "steps_per_run": steps, "repeats": repeats, "steps_per_s_median": med,
               "steps_per_s_all": runs,
               "overhead_vs_bare": 1 - med["trainer"] / med["bare"],
               "overhead_vs_bare_plus_ema_clip": 1 - med["trainer"] / med["bare+"]}
        results.append(rec)
        print(f"{name}: bare {med['bare']:.1f} it/s, bare+ema+clip {med['bare+']:.1f} it/s, trainer {med['trainer']:.1f} it/s"
              f" -> overhead {100 * rec['overhead_vs_bare']:.1f}% vs bare, "
              f"{100 * rec['overhead_vs_bare_plus_ema_clip']:.1f}% vs bare+ema+clip", flush=True)
    out = {"benchmark": "trainer", "target": "trainer overhead under 5% vs a bare loop", "torch": torch.__version__,
           "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
           "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
