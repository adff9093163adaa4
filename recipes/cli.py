"""The `diffsuite` command: train, sample, list, tour, and the modality commands (eval, vocode, compose, plan)."""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

from diffsuite.core.config import ConfigError
from diffsuite.core.checkpoint import CheckpointError
from diffsuite.core.trainer import TrainingInterrupted
from diffsuite.core.samplers import SAMPLERS, SPACINGS
from diffsuite.core.schedules import BETA_BUILDERS
from diffsuite.core.utils import atomic_write_json

from . import run
from .registry import MODALITY_CLIS, TASKS


def cmd_train(args) -> int:
    path = run.train(args.recipe, args.overrides, out_dir=args.out, resume=args.resume)
    print(f"run folder: {path}")
    return 0


def cmd_sample(args) -> int:
    if args.repaint and not (args.inpaint or args.mask):
        raise ConfigError("sample: --repaint needs --inpaint IMAGE and/or --mask MASK")
    loaded = run.load(args.checkpoint, ema=not args.no_ema)
    if args.inpaint or args.mask:
        return _sample_inpaint(loaded, args)
    x, cond = run.generate(loaded.denoiser, loaded.task, loaded.recipe, n=args.n, sampler=args.sampler,
                           steps=args.steps, seed=args.seed, guidance=args.guidance, eta=args.eta)
    out = Path(args.out or Path(loaded.checkpoint).parent.parent / "samples" / f"sample-{time.strftime('%Y%m%d-%H%M%S')}")
    files = loaded.task.save_samples(x, cond, out, loaded.recipe)
    info = {"checkpoint": str(loaded.checkpoint), "step": loaded.step, "sampler": args.sampler or loaded.recipe.sample.sampler,
            "steps": args.steps or loaded.recipe.sample.steps, "seed": args.seed, "files": files}
    atomic_write_json(out / "sample.json", info)
    print(f"samples written under {out}")
    return 0


def _sample_inpaint(loaded, args) -> int:
    """`sample --inpaint/--mask`: the task fills the masked region (a task without inpainting raises ConfigError)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or Path(loaded.checkpoint).parent.parent / "samples" / f"inpaint-{stamp}")
    files = loaded.task.inpaint(loaded, out, image=args.inpaint, mask=args.mask, n=args.n, repaint=args.repaint,
                                sampler=args.sampler, steps=args.steps, guidance=args.guidance, seed=args.seed,
                                eta=args.eta)
    print(f"inpainting written under {out}" + (f" ({files['grid']})" if "grid" in files else ""))
    return 0


def cmd_list(args) -> int:
    print("recipes:   " + ", ".join(run.list_recipes()))
    print("tasks:     " + ", ".join(sorted(TASKS)))
    print("samplers:  " + ", ".join(sorted(SAMPLERS)))
    print("schedules: " + ", ".join(sorted(BETA_BUILDERS) + ["custom"]) + " (any with zero_terminal_snr=true)")
    print("spacings:  " + ", ".join(SPACINGS) + " (sample.spacing; logsnr, quadratic and power are fractional)")
    return 0


def cmd_tour(args) -> int:
    """Train and sample the quick variant of every recipe marked `tour: true`."""
    out = Path(args.out)
    names = args.only or [n for n in run.list_recipes() if run.load_yaml_tour(n)]
    summary = {}
    for name in names:
        t0 = time.time()
        print(f"== tour: {name}", flush=True)
        run_dir = run.train(name, args.overrides, out_dir=out / name)
        loaded = run.load(run_dir)
        x, cond = run.generate(loaded.denoiser, loaded.task, loaded.recipe)
        files = loaded.task.save_samples(x, cond, out / name / "samples" / "final", loaded.recipe)
        summary[name] = {"seconds": round(time.time() - t0, 1), "run": str(run_dir), "files": files}
        print(f"   {name}: {summary[name]['seconds']} s -> {out / name}", flush=True)
    atomic_write_json(out / "tour.json", summary)
    print(f"\nTour finished. Outputs under {out.resolve()}:")
    for name, s in summary.items():
        for k, f in s["files"].items():
            print(f"  {name:28s} {k:10s} {f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diffsuite", description="diffsuite: one diffusion core, four modalities")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a recipe", description="Train RECIPE (a path or a built-in name); "
                       "override any field with section.key=value, e.g. train.steps=100.")
    t.add_argument("recipe")
    t.add_argument("overrides", nargs="*", help="section.key=value")
    t.add_argument("--out", help="run folder (default runs/<recipe>-<time>)")
    t.add_argument("--resume", help="'auto' (latest checkpoint in --out) or a checkpoint folder")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="sample from a checkpoint (or inpaint with --inpaint/--mask)",
                       description="Sample from CHECKPOINT (a run or checkpoint folder); with --inpaint and/or --mask, "
                       "fill the masked region instead (tasks that support it, e.g. image).")
    s.add_argument("checkpoint")
    s.add_argument("--sampler", choices=sorted(SAMPLERS))
    s.add_argument("--steps", type=int)
    s.add_argument("--n", type=int)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--guidance", type=float, help="classifier-free guidance scale w (0: conditional model)")
    s.add_argument("--eta", type=float)
    s.add_argument("--out")
    s.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    s.add_argument("--inpaint", metavar="IMAGE", help="inpainting (tasks that support it, e.g. image): the image "
                   "to fill (default with --mask: held-out images of the dataset)")
    s.add_argument("--mask", metavar="MASK", help="inpainting: a mask image (white = keep) or a preset mask of the "
                   "task (image: left-half, centre-box; default centre-box)")
    s.add_argument("--repaint", action="store_true", help="inpainting: RePaint resampling (Lugmayr et al. 2022)")
    s.set_defaults(func=cmd_sample)

    l = sub.add_parser("list", help="list recipes, tasks, samplers and schedules")
    l.set_defaults(func=cmd_list)

    tr = sub.add_parser("tour", help="train and sample the quick variant of every recipe (the README's main job)")
    tr.add_argument("--out", default="runs/tour")
    tr.add_argument("--only", nargs="*", help="recipe names to run instead of all with tour: true")
    tr.add_argument("--overrides", nargs="*", default=[], help="section.key=value applied to every recipe")
    tr.set_defaults(func=cmd_tour)

    for mod in MODALITY_CLIS:
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name == mod:
                continue
            raise
        m.add_commands(sub)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    overrides = [e for e in extra if "=" in e and not e.startswith("-")]
    if len(overrides) != len(extra) or (overrides and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(e for e in extra if e not in overrides) or ' '.join(extra)}")
    if overrides:
        args.overrides = list(args.overrides) + overrides
    args.load = run.load
    try:
        return args.func(args) or 0
    except (ConfigError, CheckpointError, FileNotFoundError) as e:
        print(f"diffsuite: error: {e}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:
        print(f"diffsuite: {e}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
