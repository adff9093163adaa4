"""The `diffsuite` command: train, sample, list, tour, and the modality commands (eval, vocode, compose, plan)."""
from __future__ import annotations

import argparse
import functools
import importlib
import json
import sys
import time
from pathlib import Path

from diffsuite.core.config import ConfigError, positive_int
from diffsuite.core.checkpoint import CheckpointError
from diffsuite.core.precision import SAMPLING_PRECISIONS
from diffsuite.core.trainer import RunFolderError, TrainingDiverged, TrainingInterrupted
from diffsuite.core.samplers import SAMPLERS, SPACINGS, SamplerOptionError
from diffsuite.core.schedules import BETA_BUILDERS
from diffsuite.core.utils import NonFiniteError, atomic_write_json

from . import run
from .registry import MODALITY_CLIS, TASKS

#: the commands that only sample: each takes --precision auto|fp32|bf16 (core.precision's rule)
SAMPLING_COMMANDS = ("sample", "vocode", "compose", "plan", "eval", "image-inpaint", "image-path", "classify",
                     "upscale", "restore", "transfer")
#: commands that sample with classifier guidance by a noise-aware classifier run (core.classifier)
GUIDED_COMMANDS = ("sample", "eval")


#: what a user can cause and fix (exit status 2, one line; --debug shows the traceback); anything else is a bug
USER_ERRORS = (ConfigError, CheckpointError, FileNotFoundError, RunFolderError, NonFiniteError, SamplerOptionError,
               NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)


def one_line(e: BaseException) -> str:
    """An error message on one line (a FileNotFoundError from the OS names its file)."""
    if isinstance(e, OSError) and e.filename and e.strerror:  # from the OS: say what, and which file
        return f"{e.strerror}: {e.filename}"
    return " ".join(str(e).split("\n")).strip()


def cmd_train(args) -> int:
    path = run.train(args.recipe, args.overrides, out_dir=args.out, resume=args.resume, overwrite=args.overwrite)
    print(f"run folder: {path}")
    return 0


def cmd_train_autoencoder(args) -> int:
    """`train` for recipes with an `autoencoder` section (the first stage of latent diffusion), refusing others."""
    r = run.load_recipe(args.recipe, args.overrides)
    if r.autoencoder is None:
        raise ConfigError(f"train-autoencoder: {args.recipe} has no autoencoder section (train it with `diffsuite "
                          "train`; an autoencoder recipe is e.g. image_digits_autoencoder)")
    return cmd_train(args)


def cmd_sample(args) -> int:
    if args.repaint and not (args.inpaint or args.mask):
        raise ConfigError("sample: --repaint needs --inpaint IMAGE and/or --mask MASK")
    loaded = args.load(args.checkpoint, ema=not args.no_ema)
    if args.inpaint or args.mask:
        if args.classifier:
            raise ConfigError("sample: --classifier does not combine with --inpaint / --mask")
        return _sample_inpaint(loaded, args)
    x, cond = run.generate(loaded.denoiser, loaded.task, loaded.recipe, n=args.n, sampler=args.sampler,
                           steps=args.steps, seed=args.seed, guidance=args.guidance, eta=args.eta,
                           classifier=classifier_of(args, loaded), classifier_scale=args.classifier_scale,
                           unconditional=args.unconditional)
    out = Path(args.out or Path(loaded.checkpoint).parent.parent / "samples" / f"sample-{time.strftime('%Y%m%d-%H%M%S')}")
    files = loaded.task.save_samples(x, cond, out, loaded.recipe)
    info = {"checkpoint": str(loaded.checkpoint), "step": loaded.step, "sampler": args.sampler or loaded.recipe.sample.sampler,
            "steps": args.steps or loaded.recipe.sample.steps, "seed": args.seed, "files": files,
            "precision": loaded.precision.to_dict()}
    if args.classifier:
        info.update(classifier=args.classifier, classifier_scale=args.classifier_scale, unconditional=args.unconditional)
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


def cmd_info(args) -> int:
    from .info import collect, render
    facts = collect()
    print(json.dumps(facts, indent=2) if args.json else render(facts))
    return 0


def cmd_list(args) -> int:
    print("recipes:   " + ", ".join(run.list_recipes()))
    print("tasks:     " + ", ".join(sorted(TASKS)))
    print("samplers:  " + ", ".join(sorted(SAMPLERS)))
    print("schedules: " + ", ".join(sorted(BETA_BUILDERS) + ["custom"]) + " (any with zero_terminal_snr=true)")
    print("spacings:  " + ", ".join(SPACINGS) + " (sample.spacing; logsnr, uniform, quadratic and power are fractional)")
    return 0


TOUR_MARK = ".diffsuite-tour"


def prepare_tour_folder(out: Path, overwrite: bool) -> None:
    """A tour writes into an empty folder; --overwrite replaces an earlier tour's folder (one holding the tour's mark),
    and nothing else."""
    if out.is_dir() and any(out.iterdir()):
        if not (out / TOUR_MARK).is_file():
            raise ConfigError(f"tour: {out} is not empty and holds no earlier tour: choose another --out")
        if not overwrite:
            raise ConfigError(f"tour: {out} holds an earlier tour: add --overwrite to replace it, or choose another --out")
        import shutil
        shutil.rmtree(out)
        print(f"tour: replaced the earlier tour in {out}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / TOUR_MARK).write_text("a folder written by `diffsuite tour`; `diffsuite tour --overwrite` replaces it\n")


def cmd_tour(args) -> int:
    """Train and sample the quick variant of every recipe marked `tour: true`."""
    out = Path(args.out)
    names = args.only or [n for n in run.list_recipes() if run.load_yaml_tour(n)]
    for name in names:
        run.find_recipe(name)  # an unknown name fails before anything runs
    prepare_tour_folder(out, args.overwrite)
    summary, start = {}, time.time()
    for name in names:
        t0 = time.time()
        print(f"== tour: {name}", flush=True)
        run_dir = run.train(name, args.overrides, out_dir=out / name)
        loaded = run.load(run_dir, precision="auto")
        x, cond = run.generate(loaded.denoiser, loaded.task, loaded.recipe)
        files = loaded.task.save_samples(x, cond, out / name / "samples" / "final", loaded.recipe)
        summary[name] = {"seconds": round(time.time() - t0, 1), "run": str(run_dir), "files": files}
        print(f"   {name}: {summary[name]['seconds']} s -> {out / name}", flush=True)
    from diffsuite.core.precision import cpu_name, probe_machine, resolve_precision
    m = probe_machine()
    total = round(time.time() - start, 1)
    atomic_write_json(out / "tour.json", {"recipes": summary, "seconds": total, "cpu": cpu_name(),
                                          "cpu_capability": m.cpu_capability, "overrides": args.overrides,
                                          "precision_auto": resolve_precision("auto", m).to_dict()})
    print(f"\nTour finished in {total:.0f} s. Outputs under {out.resolve()}:")
    for name, s in summary.items():
        for k, f in s["files"].items():
            print(f"  {name:28s} {k:10s} {f}")
    return 0


class Parser(argparse.ArgumentParser):
    """argparse with the suite's error form: one line, `diffsuite: error: ...`, exit status 2."""

    def error(self, message):
        self.exit(2, f"diffsuite: error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="diffsuite", description="diffsuite: one diffusion core, four modalities")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a recipe", description="Train RECIPE (a path or a built-in name); "
                       "override any field with section.key=value, e.g. train.steps=100.")
    a = sub.add_parser("train-autoencoder", help="train a latent diffusion's autoencoder (a recipe with an "
                       "autoencoder section)", description="Train the KL autoencoder of RECIPE; when it finishes, the "
                       "latent scale factor is measured on the training data and stored in its checkpoint.")
    for parser in (t, a):
        parser.add_argument("recipe")
        parser.add_argument("overrides", nargs="*", help="section.key=value")
        parser.add_argument("--out", help="run folder (default runs/<recipe>-<time>)")
        parser.add_argument("--resume", help="'auto' (the newest checkpoint in --out), a run folder or a checkpoint folder")
        parser.add_argument("--overwrite", action="store_true",
                            help="train into a non-empty --out anyway: the old run is moved to <out>.replaced-<time>")
    t.set_defaults(func=cmd_train)
    a.set_defaults(func=cmd_train_autoencoder)
    s = sub.add_parser("sample", help="sample from a checkpoint (or inpaint with --inpaint/--mask)",
                       description="Sample from CHECKPOINT (a run or checkpoint folder); with --inpaint and/or --mask, "
                       "fill the masked region instead (tasks that support it, e.g. image).")
    s.add_argument("checkpoint")
    s.add_argument("--sampler", choices=sorted(SAMPLERS))
    s.add_argument("--steps", type=positive_int)
    s.add_argument("--n", type=positive_int)
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
    tr.add_argument("--overwrite", action="store_true", help="replace an earlier tour in --out")
    tr.set_defaults(func=cmd_tour)

    from . import classify, distill
    distill.add_commands(sub)
    classify.add_commands(sub)

    i = sub.add_parser("info", help="what to paste into a bug report: versions, device, precision, cache, extras")
    i.add_argument("--json", action="store_true", help="print JSON instead of text")
    i.set_defaults(func=cmd_info)

    for mod in MODALITY_CLIS:
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name == mod:
                continue
            raise
        m.add_commands(sub)
    for name in SAMPLING_COMMANDS:
        if name in sub.choices:
            sub.choices[name].add_argument(
                "--precision", choices=SAMPLING_PRECISIONS, default="auto",
                help="network precision: auto (bf16 where the device computes it natively, else fp32), fp32 or bf16")
    for name in GUIDED_COMMANDS:
        if name in sub.choices:
            add_classifier_args(sub.choices[name])
    return p


def add_classifier_args(p) -> None:
    p.add_argument("--classifier", metavar="RUN", help="classifier guidance by this noise-aware classifier run "
                   "(a recipe with a classifier section, trained on the model's data and schedule)")
    p.add_argument("--classifier-scale", type=float, default=1.0, help="classifier guidance scale s (default 1)")
    p.add_argument("--unconditional", action="store_true", help="with --classifier: the model sees the null "
                   "condition and only the classifier sees the labels")


def classifier_of(args, loaded):
    """The --classifier run, loaded for the model `loaded` guides (None without --classifier)."""
    if getattr(args, "classifier", None) is None:
        if getattr(args, "unconditional", False):
            raise ConfigError("--unconditional needs --classifier RUN")
        return None
    return run.load_classifier(args.classifier, ema=not getattr(args, "no_ema", False), for_model=loaded)


def override_error(args, extra) -> str | None:
    """Why the leftover command-line words `extra` are not valid for the parsed command, or None: key=value overrides
    go to commands with recipes (train, distill, ...); a sampling command takes `sample.*` ones (the checkpoint's
    sampler settings for this run, e.g. sample.snr=null)."""
    overrides = [e for e in extra if "=" in e and not e.startswith("-")]
    if len(overrides) != len(extra):
        return "unrecognized arguments: " + " ".join(e for e in extra if e not in overrides)
    if not overrides or hasattr(args, "overrides"):
        return None
    if args.command in SAMPLING_COMMANDS and all(o.startswith("sample.") for o in overrides):
        return None
    return (f"the {args.command!r} command takes no key=value overrides: {' '.join(overrides)}"
            + (" (sampling commands take sample.* ones)" if args.command in SAMPLING_COMMANDS else ""))


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    problem = override_error(args, extra)
    if problem:
        parser.error(problem)
    overrides = list(extra)
    sample_overrides = []
    if overrides and hasattr(args, "overrides"):
        args.overrides = list(args.overrides) + overrides
    elif overrides:  # a sampling command: sample.* settings of the checkpoint's recipe, for this run only
        sample_overrides = overrides
    args.load = functools.partial(run.load, precision=getattr(args, "precision", "fp32"),
                                  sample_overrides=sample_overrides)
    args.classifier_of = classifier_of
    try:
        return args.func(args) or 0
    except USER_ERRORS as e:
        if args.debug:
            raise
        print(f"diffsuite: error: {one_line(e)}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        if args.debug:
            raise
        print(f"diffsuite: error: {one_line(e)}", file=sys.stderr)
        return 3
    except TrainingInterrupted as e:
        print(f"diffsuite: {e}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
