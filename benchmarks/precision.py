"""Training steps per second in fp32 and bf16 autocast, side by side, one recipe per modality, on this machine.

    python benchmarks/precision.py                       # the tour's recipes (image, audio, music, trajectory)
    python benchmarks/precision.py --recipes image_digits audio_vocoder_demo --steps 10 --repeats 3

One step is what the trainer does per step: the recipe's loss on one batch of its own data (forward), backward,
gradient clipping and an AdamW update, under torch.autocast(bf16) or in fp32. Rounds alternate fp32 / bf16 after a
warm-up, and the best round of each is reported. The table also says what `auto` chooses here and why
(core.precision), and the JSON goes to benchmarks/results/precision_<cpu capability>[_<device>].json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ["image_digits_quick", "audio_vocoder_quick", "music_bach_quick", "trajectory_umaze_quick"]


def one_batch(task, recipe):
    """The first training batch of the recipe's own dataset, as (x0, cond)."""
    from diffsuite.core.trainer import batch_of
    ds = task.build_dataset(recipe.data, "train")
    n = recipe.train.batch_size
    return batch_of(ds, [i % len(ds) for i in range(n)])


def step_fn(name: str, device: str):
    """A closure running one training step of recipe `name` with autocast dtype (None: fp32)."""
    from diffsuite.core.build import build_denoiser, build_loss
    from diffsuite.core.precision import autocast
    from diffsuite.recipes import run
    from diffsuite.recipes.registry import get_task
    r = run.load_recipe(name)
    task = get_task(r.task)
    torch.manual_seed(0)
    den = build_denoiser(task.build_net(r.model, r.diffusion), r.diffusion).to(device)
    loss_fn = build_loss(r.diffusion)
    x0, cond = one_batch(task, r)
    x0 = x0.to(device)
    cond = cond.to(device) if isinstance(cond, torch.Tensor) else cond
    opt = torch.optim.AdamW(den.parameters(), lr=r.train.lr)
    g = torch.Generator(device).manual_seed(0)

    def step(dtype):
        with autocast(device, dtype):
            losses, _ = loss_fn(den, x0, cond, g)
        losses.float().mean().backward()
        torch.nn.utils.clip_grad_norm_(den.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
    return step, r.train.batch_size, sum(p.numel() for p in den.parameters())


def measure(name: str, device: str, steps: int, repeats: int) -> dict:
    step, batch, params = step_fn(name, device)
    dtypes = {"fp32": None, "bf16": torch.bfloat16}
    for dt in dtypes.values():  # warm-up: the first calls pick and build kernels
        step(dt), step(dt)
    best = {k: float("inf") for k in dtypes}
    for _ in range(repeats):
        for k, dt in dtypes.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                step(dt)
            best[k] = min(best[k], (time.perf_counter() - t0) / steps)
    return {"recipe": name, "device": device, "batch_size": batch, "params": params,
            "fp32_steps_per_s": 1 / best["fp32"], "bf16_steps_per_s": 1 / best["bf16"],
            "bf16_over_fp32": best["fp32"] / best["bf16"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=RECIPES)
    p.add_argument("--steps", type=int, default=5, help="steps per timed round")
    p.add_argument("--repeats", type=int, default=3, help="alternating rounds per dtype (best kept)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present, else cpu)")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    from diffsuite.core.precision import cpu_name, probe_machine, resolve_precision
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    machine = probe_machine(device)
    auto = resolve_precision("auto", machine)
    rows = [measure(n, device, a.steps, a.repeats) for n in a.recipes]
    print(f"{machine.device_name or cpu_name()} | capability {machine.cpu_capability} | threads "
          f"{torch.get_num_threads()} | auto -> {auto.precision} ({auto.reason})")
    print(f"{'recipe':26s} {'fp32 steps/s':>13s} {'bf16 steps/s':>13s} {'bf16 / fp32':>12s}")
    for r in rows:
        print(f"{r['recipe']:26s} {r['fp32_steps_per_s']:13.2f} {r['bf16_steps_per_s']:13.2f} {r['bf16_over_fp32']:11.2f}x")
    tag = machine.cpu_capability.lower() + ("" if device == "cpu" else f"_{device}")
    out = Path(a.out) if a.out else ROOT / "benchmarks" / "results" / f"precision_{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": {**machine.__dict__, "cpu_model": cpu_name(),
                                           "threads": torch.get_num_threads(), "torch": torch.__version__},
                               "auto": auto.to_dict(), "steps": a.steps, "repeats": a.repeats, "rows": rows},
                              indent=2) + "\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
