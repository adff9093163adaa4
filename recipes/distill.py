"""`diffsuite distill CHECKPOINT --method progressive|consistency|guidance --steps N --out RUN`: a student.

Progressive distillation (core.distill.ProgressiveDistillation) runs in stages: the first teacher is the checkpoint
sampled with DDIM in `distill.start_steps` steps; each stage trains a copy of its teacher for `distill.stage_steps`
steps to take one step where the teacher takes two, and becomes the next stage's teacher, down to `distill.steps`.
Every stage is an ordinary run folder (RUN/stages/<N> for the intermediate ones, RUN itself for the last), trained by
the core trainer (exact resume, EMA, divergence guard), whose config records the teacher (path and sha256) and whose
sample section is the student's own sampler (DDIM, N steps, the 'uniform' spacing), so every command samples it
with no extra flags. A guided teacher (classifier-free guidance w) is distilled at that w: the student then samples
with guidance 0 and the config says which w it learned.

Consistency distillation (core.distill.ConsistencyDistillation) is one stage of `distill.stage_steps` steps: the
student, a copy of the teacher wrapped as a consistency function, learns to map every point of the teacher's ODE grid
(`distill.ode_steps` DDIM steps) to the same clean sample; it samples with multistep consistency sampling in N steps.

Guidance distillation (core.distill.GuidanceDistillation; Meng et al. 2023, stage one) is one stage of
`distill.stage_steps` steps: the student learns the guided teacher's x0 in one network evaluation instead of two, and
samples with the teacher's own sampler at guidance 0 (`--steps` sets its step count; default: the teacher's). A
guidance-distilled student is an unguided teacher for a consistency or progressive student (Meng et al.'s stage two).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Optional, Sequence

import torch

from diffsuite.core.build import build_denoiser
from diffsuite.core.checkpoint import checkpoint_folders, read_json, weights_sha256
from diffsuite.core.config import ConfigError, deep_merge, parse_overrides, positive_int
from diffsuite.core.distill import (ConsistencyDistillation, ConsistencyFunction, GuidanceDistillation,
                                   ProgressiveDistillation)
from diffsuite.core.guidance import ClassifierFreeGuidance
from diffsuite.core.trainer import Trainer
from diffsuite.core.utils import atomic_write_bytes

from . import safety
from .run import load, recipe_from_dict, recipe_to_dict, resolve_checkpoint

METHODS = ("progressive", "consistency", "guidance")


def stage_plan(start_steps: int, steps: int) -> list[int]:
    """The student step counts of the stages: start_steps / 2, start_steps / 4, ..., steps."""
    if steps >= start_steps or start_steps % steps or (start_steps // steps) & (start_steps // steps - 1):
        raise ConfigError(f"distill.start_steps={start_steps} must be steps={steps} times a power of two (> 1), "
                          "since each stage halves the steps")
    return [start_steps >> k for k in range(1, int(math.log2(start_steps // steps)) + 1)]


def student_recipe(teacher_cfg: dict, overrides: Sequence[str], method: str, steps: int):
    """The student's recipe: the teacher's, with the distill section and the overrides applied (and checked)."""
    cfg = {k: v for k, v in teacher_cfg.items() if k != "distill"}
    cfg = deep_merge(cfg, {"distill": {"method": method, "steps": steps}})
    cfg = deep_merge(cfg, parse_overrides(list(overrides)))
    r = recipe_from_dict(cfg, cfg.get("name", "student"), "recipe")
    if r.distill.method == "progressive":
        if r.distill.start_steps > r.diffusion.T:
            raise ConfigError(f"distill.start_steps={r.distill.start_steps}: at most the teacher's T={r.diffusion.T}")
        stage_plan(r.distill.start_steps, r.distill.steps)
    elif r.distill.method == "consistency" and not r.distill.ode_steps < r.diffusion.T:
        raise ConfigError(f"distill.ode_steps={r.distill.ode_steps}: at most the teacher's T - 1 = {r.diffusion.T - 1}")
    return r


def _stage_dir(out: Path, n: int, final: int) -> Path:
    return out if n == final else out / "stages" / f"{n:04d}"


def _finished(run_dir: Path, stage_steps: int) -> bool:
    latest = run_dir / "checkpoints" / "latest.json"
    return latest.is_file() and read_json(latest).get("step") == stage_steps


def teacher_denoiser(loaded, guidance: float):
    """The stage's teacher denoiser: the EMA weights, guided when w != 0 and the task has a null condition."""
    den = loaded.denoiser.eval().requires_grad_(False)
    null = loaded.task.null_condition(loaded.recipe)
    if guidance and null is not None:
        return ClassifierFreeGuidance(den, guidance, null)
    return den


def distill(checkpoint: str | Path, out: str | Path, method: str = "progressive", steps: Optional[int] = None,
            overrides: Sequence[str] = (), resume: bool = False) -> Path:
    """Distil `checkpoint` into a `steps`-step student under `out` (default 4; guidance: the teacher's sampler's
    steps); returns the student's run folder (= out)."""
    if method not in METHODS:
        raise ConfigError(f"--method {method!r}: valid: {list(METHODS)}")
    out = Path(out)
    if safety.run_folder_in_use(out) and not resume:
        raise ConfigError(safety.in_use_message(out).replace("--resume auto", "--resume"))
    ckpt = resolve_checkpoint(checkpoint)
    first = load(ckpt)
    steps = steps or (first.recipe.sample.steps if method == "guidance" else 4)
    r = student_recipe(recipe_to_dict(first.recipe), overrides, method, steps)
    d = r.distill
    w = first.recipe.sample.guidance if d.guidance is None else d.guidance
    d = dataclasses.replace(d, guidance=w, teacher=str(ckpt.resolve()), teacher_sha256=weights_sha256(ckpt))
    null = first.task.null_condition(first.recipe)
    if method == "guidance" and not (w and null is not None):
        raise ConfigError(f"distill --method guidance: {ckpt} is not sampled with classifier-free guidance "
                          f"(guidance {w}, null condition {null}); "
                          "set distill.guidance=W on a conditional model trained with condition dropout")
    task, dataset = first.task, first.task.build_dataset(r.data, "train")
    if method != "progressive":  # one stage
        sample = (_student_sampling(r.sample, "consistency", d.steps, w) if method == "consistency"
                  else dataclasses.replace(r.sample, steps=d.steps, guidance=0.0))
        stage = dataclasses.replace(r, distill=dataclasses.replace(d, stage_teacher=str(ckpt)),
                                    train=dataclasses.replace(r.train, steps=d.stage_steps), sample=sample)
        if not _finished(out, d.stage_steps):
            _train_stage(stage, task, dataset, first, teacher_denoiser(first, w), out)
        return out
    teacher_run, teacher, w_stage = ckpt, first, w
    for n in stage_plan(d.start_steps, d.steps):
        run_dir = _stage_dir(out, n, d.steps)
        stage = dataclasses.replace(r, distill=dataclasses.replace(d, steps=n, stage_teacher=str(teacher_run)),
                                    train=dataclasses.replace(r.train, steps=d.stage_steps),
                                    sample=_student_sampling(r.sample, "ddim", n, w))  # every stage has learnt w
        if not _finished(run_dir, d.stage_steps):
            _train_stage(stage, task, dataset, teacher, teacher_denoiser(teacher, w_stage), run_dir)
        teacher_run = resolve_checkpoint(run_dir)
        teacher = load(teacher_run)
        w_stage = 0.0  # the first student has learnt the guided teacher; later stages distil (unguided) students
    return out


def _student_sampling(s, sampler: str, steps: int, w: float):
    """The student's own sampler: `sampler` in `steps` steps on the uniform grid; guidance 0 when a guided teacher
    was distilled (the student has learnt it)."""
    return dataclasses.replace(s, sampler=sampler, steps=steps, spacing="uniform", eta=0.0,
                               guidance=0.0 if w else s.guidance)


def _train_stage(r, task, dataset, teacher_loaded, teacher, run_dir: Path) -> None:
    """One stage: the student starts as a copy of its teacher's weights (progressive: learns two teacher steps in one;
    consistency: learns the consistency function on the teacher's ODE grid; guidance: learns the guided x0)."""
    d = r.distill
    what = {"progressive": f"{d.steps * 2} -> {d.steps} steps", "consistency": f"consistency, {d.ode_steps}-step grid",
            "guidance": f"guidance w = {d.guidance} into one evaluation"}[d.method]
    print(f"distill: stage {what} into {run_dir}", flush=True)
    torch.manual_seed(r.train.seed)
    net = task.build_net(r.model, r.diffusion)
    net.load_state_dict(teacher_loaded.denoiser.net.state_dict())
    student = build_denoiser(net, r.diffusion)
    if d.method == "consistency":
        student = ConsistencyFunction(student, d.sigma_data, d.form)
        loss = ConsistencyDistillation(teacher, student, d.ode_steps, d.target_decay)
    elif d.method == "guidance":
        loss = GuidanceDistillation(teacher, d.weighting)
    else:
        loss = ProgressiveDistillation(teacher, d.steps, d.weighting)
    cfg = recipe_to_dict(r)
    trainer = Trainer(student, dataset, r.train, run_dir, loss, config=cfg,
                      cond_drop_prob=r.diffusion.cond_drop_prob, null_cond=task.null_condition(r))
    resume = resolve_checkpoint(run_dir) if checkpoint_folders(run_dir / "checkpoints") else None
    if trainer.acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        import yaml
        atomic_write_bytes(run_dir / "config.yaml", yaml.safe_dump(cfg, sort_keys=False).encode())
    trainer.train(resume=resume)


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("distill", help="distil a checkpoint into a few-step student (progressive, consistency) "
                              "or a guided one into an unguided student (guidance)",
                              description=__doc__)
    p.add_argument("checkpoint", help="the teacher: a run folder or a checkpoint folder")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. distill.stage_steps=1000 train.lr=1e-4")
    p.add_argument("--method", default="progressive", choices=METHODS)
    p.add_argument("--steps", type=positive_int, default=None,
                   help="the student's sampling steps (default 4; guidance: the teacher's)")
    p.add_argument("--out", required=True, help="the student's run folder (intermediate stages under OUT/stages)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted distillation in --out")
    p.set_defaults(func=cmd_distill)


def cmd_distill(args) -> int:
    out = distill(args.checkpoint, args.out, args.method, args.steps, args.overrides, args.resume)
    print(f"student: {out} (sample it like any run: diffsuite sample {out})")
    return 0

