"""What keeps a user's work safe around `diffsuite train`: run folders that are never trained over by accident, and
resumes that say what they do (which checkpoint, which settings changed, what may not change).

The rules (docs/core.md, "What is protected"):
- a run folder that holds files is refused unless --resume or --overwrite (which moves the old run aside);
- --resume auto / RUN / CHECKPOINT names the checkpoint it continues from; a missing or corrupt newest checkpoint is
  an error that names the newest good one;
- on resume, RESUMABLE keys may change (applied and printed); any other change to the model, the diffusion or the
  data is refused before anything is written.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

from diffsuite.core.checkpoint import CheckpointError, checkpoint_folders, load_checkpoint, read_json
from diffsuite.core.config import ConfigError

#: sections whose every key may change on resume (training schedule, logging, sampling defaults)
RESUMABLE_SECTIONS = ("train", "sample")
#: single keys of the other sections that may change on resume (where the data lives, not what it is)
RESUMABLE_KEYS = ("data.path", "data.eval_path", "name", "tour", "description")
#: train keys whose change makes the rest of the run differ from an uninterrupted one (allowed, with a note)
ORDER_KEYS = ("train.batch_size", "train.grad_accum", "train.seed")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_folder_in_use(run: Path) -> bool:
    """Whether `run` exists and holds anything."""
    return run.is_dir() and any(run.iterdir())


def in_use_message(run: Path) -> str:
    ckpts = checkpoint_folders(run / "checkpoints")
    held = f"checkpoints {', '.join(p.name for p in ckpts)}" if ckpts else f"{sum(1 for _ in run.iterdir())} entries"
    return (f"run folder {run} is not empty ({held}): continue that run with --resume auto, start over with "
            f"--overwrite (the old run is moved to {run.name}.replaced-<time>), or choose another --out")


def move_aside(run: Path) -> Path:
    """Rename an existing run folder to <run>.replaced-<time> (never deleted) and say where it went."""
    dest = run.with_name(f"{run.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while dest.exists():
        dest = run.with_name(f"{run.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
        n += 1
    run.rename(dest)
    say(f"--overwrite: the old run {run} was moved to {dest}")
    return dest


def _good(ckpt: Path) -> Optional[str]:
    """None when checkpoint folder `ckpt` loads and verifies, else why not."""
    try:
        load_checkpoint(ckpt)
        return None
    except CheckpointError as e:
        return str(e)


def newest_good(run: Path, skip: Optional[Path] = None) -> Optional[Path]:
    """The newest checkpoint of `run` that loads and verifies (other than `skip`)."""
    for p in reversed(checkpoint_folders(run / "checkpoints")):
        if p != skip and _good(p) is None:
            return p
    return None


def _bad_newest(run: Path, newest: Path, why: str) -> CheckpointError:
    good = newest_good(run, skip=newest)
    hint = (f"the newest good checkpoint is {good}: continue from it with --resume {good}" if good
            else "no other checkpoint of this run loads")
    return CheckpointError(f"cannot resume from {newest}: {why}; {hint}")


def resume_checkpoint(run: Path, resume: str) -> Optional[Path]:
    """The checkpoint that `--resume` names: 'auto' (the run's newest, or None with a notice when it has none), a run
    folder (its newest) or a checkpoint folder. A missing or corrupt one is an error naming the newest good one."""
    from .run import resolve_checkpoint
    if resume == "auto":
        latest = run / "checkpoints" / "latest.json"
        ckpts = checkpoint_folders(run / "checkpoints")
        if not latest.is_file():
            if ckpts:
                raise _bad_newest(run, ckpts[-1], "checkpoints/latest.json is missing")
            say(f"--resume auto: no checkpoint in {run}: starting from step 0")
            return None
        try:
            newest = run / "checkpoints" / read_json(latest)["path"]
        except (CheckpointError, KeyError, TypeError) as e:
            raise _bad_newest(run, latest, f"latest.json is unreadable ({e})") from e
    else:
        newest = resolve_checkpoint(resume)
        run = newest.parent.parent
    why = "the folder does not exist" if not newest.is_dir() else _good(newest)
    if why:
        raise _bad_newest(run, newest, why)
    say(f"resuming from {newest}")
    return newest


def prepare_run_folder(run: Path, resume: Optional[str], overwrite: bool, cfg: dict) -> tuple[Optional[Path], dict]:
    """(the checkpoint to resume from or None, the resume's allowed config changes); a folder in use without
    --resume / --overwrite, a bad checkpoint or a forbidden change is an error before anything is written."""
    if resume:
        ckpt = resume_checkpoint(run, resume)
        changes = {} if ckpt is None else check_resume_config(load_checkpoint(ckpt, groups=())[2], cfg, ckpt)
        return ckpt, changes
    if run_folder_in_use(run):
        if not overwrite:
            raise ConfigError(in_use_message(run))
        move_aside(run)
    return None, {}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _resumable(key: str) -> bool:
    return key.split(".", 1)[0] in RESUMABLE_SECTIONS or key in RESUMABLE_KEYS


def check_resume_config(old_config: dict, new_config: dict, ckpt: Path) -> dict:
    """Compare the checkpoint's config with the one about to train: refuse (ConfigError, nothing written yet) a change
    the weights cannot follow; print and return the allowed changes {key: [old, new]}."""
    from .run import load_recipe, recipe_to_dict
    old = _flat(recipe_to_dict(load_recipe(old_config)))
    new = _flat(new_config)
    changed = {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
    refused = {k: v for k, v in changed.items() if not _resumable(k)}
    if refused:
        lines = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in refused.items())
        raise ConfigError(f"cannot resume from {ckpt} with a different model, diffusion or data ({lines}): keep these "
                          "values, or train a new run into another --out")
    allowed = {k: v for k, v in changed.items() if k not in ("name", "tour", "description")}
    for k, (a, b) in allowed.items():
        note = " (the data order from here on differs from an uninterrupted run)" if k in ORDER_KEYS else ""
        say(f"resume: {k} {a!r} -> {b!r} (applied){note}")
    return allowed
