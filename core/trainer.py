"""The Accelerate trainer: unchanged from CPU to one GPU to many (`accelerate launch`).

Batches, noise and per-item data randomness are functions of (seed, micro-step, rank), so a run that is
stopped and resumed from a checkpoint reproduces the uninterrupted run exactly (CPU, deterministic ops).
"""
from __future__ import annotations

import atexit
import contextlib
import copy
import dataclasses
import functools
import json
import math
import random
import shutil
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from accelerate import Accelerator, DistributedType
from torch.utils.data import DataLoader, Dataset
from torch.utils.data import default_collate
from tqdm.auto import tqdm

from .checkpoint import (CheckpointError, checkpoint_folders, flatten_optimizer_state,
                         load_checkpoint, read_json, remove_stale_temporaries, save_checkpoint,
                         unflatten_optimizer_state)
from .config import LR_SCHEDULES, TrainerConfig, to_dict
from .ema import EMA
from . import precision
from .conditions import cond_to, drop_condition
from .utils import atomic_write_json

def lr_lambda(cfg: TrainerConfig) -> Callable[[int], float]:
    """Linear warm-up over warmup_steps, then constant, cosine (Loshchilov & Hutter 2017) or linear decay to 0."""
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"train.lr_schedule: unknown {cfg.lr_schedule!r}; valid: {LR_SCHEDULES}")

    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        p = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return {"constant": 1.0, "cosine": 0.5 * (1 + math.cos(math.pi * min(p, 1.0))), "linear": max(0.0, 1 - p)}[cfg.lr_schedule]
    return f


@functools.lru_cache(maxsize=4)
def _epoch_perm(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def batch_index_tensor(n: int, micro_step: int, batch_size: int, seed: int) -> torch.Tensor:
    """Global indices of a micro-step's batch: a fresh permutation per epoch, seeded by (seed, epoch)."""
    out, pos, end = [], micro_step * batch_size, (micro_step + 1) * batch_size
    while pos < end:
        epoch, off = divmod(pos, n)
        take = min(end - pos, n - off)
        out.append(_epoch_perm(n, seed, epoch)[off: off + take])
        pos += take
    return out[0] if len(out) == 1 else torch.cat(out)


def batch_indices(n: int, micro_step: int, batch_size: int, seed: int) -> list[int]:
    return batch_index_tensor(n, micro_step, batch_size, seed).tolist()


class _SeededItems(Dataset):
    """Each item is fetched with torch's RNG seeded by (seed, micro-step, index): random crops are reproducible."""

    def __init__(self, dataset, seed):
        self.dataset, self.seed = dataset, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        m, i = key
        torch.default_generator.manual_seed((self.seed * 7919 + m * 104_729 + i) % (2**63))
        return self.dataset[i]


class _StepBatches(torch.utils.data.Sampler):
    def __init__(self, n, start, stop, batch_size, seed, rank, world):
        self.args = (n, start, stop, batch_size, seed, rank, world)

    def __iter__(self):
        n, start, stop, bs, seed, rank, world = self.args
        per = bs // world
        for m in range(start, stop):
            idx = batch_indices(n, m, bs, seed)[rank * per: (rank + 1) * per]
            yield [(m, i) for i in idx]

    def __len__(self):
        return self.args[2] - self.args[1]


def batch_of(dataset, indices) -> tuple:
    """(x0, cond) of the dataset's items at `indices`, collated as the trainer's loader does (a TensorDataset indexed
    directly)."""
    if isinstance(dataset, torch.utils.data.TensorDataset):
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return split_batch(tuple(t[idx] for t in dataset.tensors))
    return split_batch(default_collate([dataset[i] for i in indices]))


def split_batch(batch):
    """A collated batch is a tensor x0, a tuple (x0[, cond]) or a dict with 'x0' and optionally 'cond'."""
    if isinstance(batch, dict):
        if "x0" not in batch:
            raise KeyError(f"dataset items that are dicts need an 'x0' key; got keys {sorted(batch)}")
        return batch["x0"], batch.get("cond")
    if isinstance(batch, (list, tuple)):  # e.g. TensorDataset items: (x0,) or (x0, cond)
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


@atexit.register
def _end_process_group() -> None:
    """Destroy the distributed process group before the interpreter tears down, as PyTorch asks: left to exit, gloo's
    threads can meet static destruction and abort a rank ("terminate called without an active exception") after its
    work is done, which fails the whole launch."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def make_accelerator(cfg: TrainerConfig, mixed_precision: Optional[str] = None) -> Accelerator:
    """An Accelerator for cfg (`mixed_precision`: Accelerate's value, default cfg's resolved by precision.resolve_precision);
    a second run in one process with other precision settings replaces Accelerate's process-wide state (the
    distributed set-up, PartialState, is kept)."""
    if mixed_precision is None:
        mixed_precision = precision.resolve_precision(cfg.mixed_precision).accelerate
    kw = dict(mixed_precision=mixed_precision, gradient_accumulation_steps=cfg.grad_accum)
    try:
        return Accelerator(**kw)
    except ValueError as e:
        if "already been initialized" not in str(e):
            raise
        from accelerate.state import AcceleratorState
        AcceleratorState._reset_state(reset_partial_state=False)
        return Accelerator(**kw)


class TrainingDiverged(RuntimeError):
    """Raised by Trainer.train when the loss or the weights stop being finite; no checkpoint of that state is written."""


class RunFolderError(RuntimeError):
    """Raised when training would write over an earlier run's checkpoints without being asked to resume."""


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by Trainer.train after a SIGINT / SIGTERM, once the checkpoint of the last finished step is written."""


@contextlib.contextmanager
def _stop_requests(enabled: bool):
    """While active, SIGINT / SIGTERM only record {"signal": name} so the loop can save before stopping (a second
    signal raises KeyboardInterrupt at once). Off in multi-process runs (a save needs every rank) and off the main
    thread (Python delivers signals there only)."""
    request = {"signal": None}
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, frame):
        if request["signal"]:
            raise KeyboardInterrupt
        request["signal"] = signal.Signals(signum).name

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class Trainer:
    """Train a denoiser with a per-sample loss on a map-style dataset; checkpoints resume exactly."""

    def __init__(self, denoiser, dataset, cfg: TrainerConfig, out_dir, loss_fn, *, config: Optional[dict] = None,
                 cond_drop_prob: float = 0.0, null_cond=None, sample_fn: Optional[Callable] = None,
                 accelerator: Optional[Accelerator] = None, finish_fn: Optional[Callable] = None):
        self.cfg, self.out_dir, self.loss_fn = cfg, Path(out_dir), loss_fn
        self.finish_fn = finish_fn  # finish_fn(trainer) once train.steps is reached, before the last checkpoint
        self.config = config or {"train": to_dict(cfg)}
        self.cond_drop_prob, self.null_cond, self.sample_fn = cond_drop_prob, null_cond, sample_fn
        machine = precision.probe_machine()
        self.precision = precision.resolve_precision(cfg.mixed_precision, machine)
        self.acc = accelerator or make_accelerator(cfg, self.precision.accelerate)
        if self.acc.is_main_process:
            precision.announce(self.precision, machine)
        if self.acc.mixed_precision == "fp16" and not self.acc.native_amp:
            warnings.warn(f"train.mixed_precision=fp16 has no effect on {self.acc.device.type}: Accelerate runs it in "
                          "fp32 there (no autocast, no loss scaling); use bf16 for mixed precision on a CPU")
        if cfg.batch_size % self.acc.num_processes:
            raise ValueError(f"train.batch_size={cfg.batch_size} must be divisible by the {self.acc.num_processes} processes")
        if len(dataset) == 0:
            raise ValueError("the training dataset is empty")
        if cond_drop_prob > 0 and null_cond is None:
            raise ValueError("diffusion.cond_drop_prob > 0 needs a task with a null condition (null_cond)")
        self.dataset = dataset
        self.denoiser = denoiser
        params = [p for p in denoiser.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg))
        self.model, self.optimizer = self.acc.prepare(denoiser, self.optimizer)
        self._net = self.acc.unwrap_model(self.model).net
        # Plain DDP or one process: clip with torch directly (Accelerate's clip adds per-step overhead);
        # FSDP / DeepSpeed and friends keep Accelerate's own clipping.
        self._torch_clip = self.acc.distributed_type in (DistributedType.NO, DistributedType.MULTI_GPU,
                                                         DistributedType.MULTI_CPU)
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        self.ema = EMA(self.net, cfg.ema_decay, cfg.ema_warmup)
        self.step = 0
        self.history: list[dict] = []
        self._history_before: list[dict] = []
        self.resume_changes: dict = {}  # config keys changed on resume ({key: [old, new]}), recorded in run.json

    @property
    def net(self):
        return self._net

    # ----------------------------------------------------------------- checkpoints
    @property
    def ckpt_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    def save(self) -> Optional[Path]:
        """Write a checkpoint for the current step (main process only) and prune old ones; a state holding
        non-finite weights is never written (TrainingDiverged)."""
        self.acc.wait_for_everyone()
        if not self.acc.is_main_process:
            return None
        bad = self._non_finite_weights()
        if bad:
            raise TrainingDiverged(self._diverged_message(self.step, f"{bad} holds non-finite values"))
        opt_t, opt_meta = flatten_optimizer_state(self.optimizer.state_dict())
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        state = {"step": self.step, "ema_updates": self.ema.num_updates, "optimizer": opt_meta,
                 "scheduler": {k: v for k, v in self.scheduler.state_dict().items() if k != "lr_lambdas"},
                 "numpy_rng": _np_state(), "python_rng": _py_state(), "history_tail": self.history[-5:]}
        if self.acc.scaler is not None:  # fp16: the loss scale and its growth tracker, so a resume scales alike
            state["grad_scaler"] = self.acc.scaler.state_dict()
        net_sd = {k: v for k, v in self.net.state_dict().items()}
        groups = {"model": net_sd, "ema": self.ema.state_dict(), "optimizer": opt_t, "rng": rng}
        if hasattr(self.loss_fn, "state_dict"):  # a loss with state of its own (a target network): resumes exactly
            groups["loss"] = self.loss_fn.state_dict()
        path = save_checkpoint(self.ckpt_dir / f"step_{self.step:08d}", groups, state, self.config)
        atomic_write_json(self.ckpt_dir / "latest.json", {"path": path.name, "step": self.step})
        self._prune()
        return path

    def _prune(self):
        """Keep the newest `keep_checkpoints` checkpoints by step; the one latest.json names is never deleted."""
        keep = self.cfg.keep_checkpoints
        if keep <= 0:
            return
        latest = self.latest_checkpoint()
        others = [p for p in checkpoint_folders(self.ckpt_dir) if p != latest]  # oldest step first
        for p in others[:max(0, len(others) - (keep - 1))]:
            shutil.rmtree(p, ignore_errors=True)

    def latest_checkpoint(self) -> Optional[Path]:
        f = self.ckpt_dir / "latest.json"
        return self.ckpt_dir / read_json(f)["path"] if f.is_file() else None

    def newest_good_checkpoint(self) -> Optional[Path]:
        """The checkpoint latest.json names (every written checkpoint holds finite weights), if any."""
        try:
            p = self.latest_checkpoint()
        except CheckpointError:
            return None
        return p if p is not None and p.is_dir() else None

    def _non_finite_weights(self) -> Optional[str]:
        """Which weights (raw or EMA) hold a NaN or an infinity, or None when all are finite."""
        for name, tensors in (("the model", self.net.parameters()), ("the EMA", self.ema.shadow.values())):
            if not all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point()):
                return name
        return None

    def _diverged_message(self, step: int, what: str) -> str:
        last = next((h for h in reversed(self._history_before + self.history)
                     if h["loss"] is not None and math.isfinite(h["loss"])), None)
        last_text = "none" if last is None else f"{last['loss']:.6g} at step {last['step']}"
        good = self.newest_good_checkpoint()
        advice = (f"the newest good checkpoint is {good} (continue from it with --resume auto and a lower train.lr, "
                  f"e.g. train.lr={self.cfg.lr / 10:g})" if good else "no checkpoint was written before it")
        return (f"training diverged at step {step}: {what}; last finite loss {last_text}; {advice}; "
                "no checkpoint of the diverged state was written")

    def resume(self, path) -> None:
        """Restore weights, EMA, optimizer, LR scheduler, fp16 loss scale, step and RNG states from a checkpoint."""
        tensors, state, _ = load_checkpoint(path)
        self.net.load_state_dict(tensors["model"])
        self.ema.load_state_dict(tensors["ema"], state["ema_updates"])
        self.optimizer.load_state_dict(unflatten_optimizer_state(tensors["optimizer"], state["optimizer"]))
        if "loss" in tensors and hasattr(self.loss_fn, "load_state_dict"):
            self.loss_fn.load_state_dict(tensors["loss"])
        sched = self.scheduler.state_dict()
        sched.update(state["scheduler"])
        self.scheduler.load_state_dict(sched)
        self._apply_optimizer_settings()
        if self.acc.scaler is not None and state.get("grad_scaler"):
            self.acc.scaler.load_state_dict(state["grad_scaler"])
        torch.set_rng_state(tensors["rng"]["torch"])
        if "cuda" in tensors["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng"]["cuda"])
        np.random.set_state(_np_from(state["numpy_rng"]))
        random.setstate(_py_from(state["python_rng"]))
        self.step = state["step"]
        self._history_before = list(state.get("history_tail", []))  # for the divergence message only

    def _apply_optimizer_settings(self) -> None:
        """After a resume, the current config's lr, weight decay and betas apply (the checkpoint's optimizer state
        carries the old ones); the lr schedule continues at the resumed step with the new base lr."""
        f = lr_lambda(self.cfg)
        self.scheduler.base_lrs = [self.cfg.lr for _ in self.optimizer.param_groups]
        for g in self.optimizer.param_groups:
            g.update(initial_lr=self.cfg.lr, lr=self.cfg.lr * f(self.scheduler.last_epoch),
                     weight_decay=self.cfg.weight_decay, betas=tuple(self.cfg.adam_betas))
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    # ----------------------------------------------------------------- training
    def _loader(self, start_micro: int, stop_micro: int):
        if isinstance(self.dataset, torch.utils.data.TensorDataset):  # in-memory: index whole batches at once
            return self._tensor_batches(start_micro, stop_micro)
        sampler = _StepBatches(len(self.dataset), start_micro, stop_micro, self.cfg.batch_size, self.cfg.seed,
                               self.acc.process_index, self.acc.num_processes)
        return DataLoader(_SeededItems(self.dataset, self.cfg.seed), batch_sampler=sampler,
                          num_workers=self.cfg.num_workers, collate_fn=default_collate,
                          pin_memory=self.acc.device.type == "cuda")

    def _tensor_batches(self, start_micro: int, stop_micro: int):
        per, r = self.cfg.batch_size // self.acc.num_processes, self.acc.process_index
        for m in range(start_micro, stop_micro):
            idx = batch_index_tensor(len(self.dataset), m, self.cfg.batch_size, self.cfg.seed)[r * per: (r + 1) * per]
            yield tuple(t[idx] for t in self.dataset.tensors)

    def _generator(self, micro: int) -> torch.Generator:
        g = torch.Generator(device=self.acc.device if self.acc.device.type == "cuda" else "cpu")
        return g.manual_seed((self.cfg.seed * 1_000_003 + micro * self.acc.num_processes + self.acc.process_index) % (2**63))

    def _micro_step(self, batch, micro: int) -> torch.Tensor:
        x0, cond = split_batch(batch)
        x0 = x0.to(self.acc.device)
        cond = cond_to(cond, self.acc.device)
        g = self._generator(micro)
        if self.cond_drop_prob > 0 and cond is not None:
            cond = drop_condition(cond, self.cond_drop_prob, self.null_cond, g)
        with self.acc.accumulate(self.model):
            with self.acc.autocast():
                losses, _ = self.loss_fn(self.model, x0, cond, g)
            loss = losses.float().mean()
            self.acc.backward(loss)
            if self.acc.sync_gradients and self.cfg.clip_grad:
                self._clip()
            self._optimizer_step()
        return loss.detach()

    def _optimizer_step(self) -> None:
        """Step and zero the grads after the last micro-batch; in the plain case (no loss scaler, DDP or one
        process) call the wrapped torch optimizer directly, skipping AcceleratedOptimizer's per-step checks."""
        if not (self._torch_clip and self.acc.scaler is None):
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        elif self.acc.sync_gradients:
            self.optimizer.optimizer.step()
            self.optimizer.optimizer.zero_grad(set_to_none=True)

    def _clip(self) -> None:
        if not self._torch_clip:
            self.acc.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)
            return
        if self.acc.scaler is not None:  # fp16: unscale once before clipping, as Accelerate does
            self.acc.unscale_gradients()
        torch.nn.utils.clip_grad_norm_(self._params, self.cfg.clip_grad)

    def train(self, resume: Optional[str | Path] = None, stop_at: Optional[int] = None) -> list[dict]:
        """Train to cfg.steps (or stop_at); resume='auto' picks the latest checkpoint in out_dir.

        In a single process, SIGINT / SIGTERM (Ctrl-C, a scheduler's kill) end the run after the current step with a
        checkpoint of that step, then raise TrainingInterrupted; a second signal stops at once."""
        with _stop_requests(self.acc.num_processes == 1) as stop_request:
            history = self._train(resume, stop_at, stop_request)
        if stop_request["signal"]:
            raise TrainingInterrupted(f"training stopped by {stop_request['signal']} at step {self.step}; a checkpoint "
                                      f"of that step is in {self.ckpt_dir} (continue with resume='auto' / --resume auto)")
        return history

    def _train(self, resume, stop_at, stop_request) -> list[dict]:
        if self.acc.is_main_process:
            remove_stale_temporaries(self.ckpt_dir)
        if resume == "auto":
            resume = self.latest_checkpoint()
        if resume:
            self.resume(resume)
        elif self.step == 0 and checkpoint_folders(self.ckpt_dir):
            names = ", ".join(p.name for p in checkpoint_folders(self.ckpt_dir))
            raise RunFolderError(f"{self.out_dir} already holds checkpoints ({names}): resume them (resume='auto') "
                                 "or train into another folder")
        self._record_start()
        stop = self.cfg.steps if stop_at is None else min(stop_at, self.cfg.steps)
        ga = self.cfg.grad_accum
        log = _Logger(self.out_dir, self.acc.is_main_process, self.cfg.tensorboard)
        bar = tqdm(total=stop, initial=self.step, disable=not (self.cfg.progress and self.acc.is_main_process),
                   desc="train", dynamic_ncols=True)
        self.model.train()
        t0, start, micro_losses, pending = time.perf_counter(), self.step, [], []
        every = lambda k: bool(k) and self.step % k == 0  # noqa: E731
        for i, batch in enumerate(self._loader(self.step * ga, stop * ga)):
            micro = self.step * ga + (i % ga)
            micro_losses.append(self._micro_step(batch, micro))
            if (i + 1) % ga:
                continue
            self.scheduler.step()
            self.step += 1
            self.ema.update(self.net)
            # Losses stay on the device until a log point: no per-step host sync or collective.
            pending.append((self.step, self.scheduler.get_last_lr()[0], torch.stack(micro_losses).mean()))
            micro_losses = []
            bar.update(1)
            if every(self.cfg.log_every) or self.step == stop or every(self.cfg.ckpt_every) or every(self.cfg.sample_every):
                rec = self._flush(pending, log)
                pending = []
                bar.set_postfix(loss=f"{rec['loss']:.4f}")
                if every(self.cfg.log_every) or self.step == stop:
                    rec["steps_per_s"] = (self.step - start) / max(1e-9, time.perf_counter() - t0)
                    log.write(rec)
            if every(self.cfg.ckpt_every) and self.step < stop and not stop_request["signal"]:
                self.save()  # (an interrupted run saves once, below)
            if self.sample_fn and every(self.cfg.sample_every) and self.acc.is_main_process:
                self.sample_fn(self.ema_denoiser(), self.step, self.out_dir / "samples" / f"step_{self.step:08d}")
            if stop_request["signal"]:
                if pending:
                    log.write(self._flush(pending, log))
                break
        bar.close()
        log.close()
        if self.finish_fn is not None and self.step == self.cfg.steps and not stop_request["signal"]:
            self.finish_fn(self)
        self.save()
        return self.history

    def _record_start(self) -> None:
        """Append this start (step, precision and why, machine, torch) to <run>/run.json: what a bug report needs."""
        if not self.acc.is_main_process:
            return
        f = self.out_dir / "run.json"
        info = read_json(f) if f.is_file() else {"starts": []}
        machine = precision.probe_machine(self.acc.device)
        info["starts"].append({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "step": self.step,
                               "precision": self.precision.to_dict(), "machine": dataclasses.asdict(machine),
                               "torch": torch.__version__, "processes": self.acc.num_processes,
                               "threads": torch.get_num_threads(), "resume_changes": self.resume_changes})
        atomic_write_json(f, info)

    def _flush(self, pending, log=None) -> dict:
        """Move the pending per-step losses to the host (averaged over processes) into the history, and stop with
        TrainingDiverged at the first non-finite loss (fp16: only non-finite weights, since the GradScaler skips the
        steps whose gradients overflow) or when the weights are no longer finite."""
        losses = torch.stack([p[2] for p in pending])
        if self.acc.num_processes > 1:
            losses = self.acc.gather(losses[None]).mean(0)
        for (step, lr, _), loss in zip(pending, losses.tolist()):
            if not math.isfinite(loss) and self.acc.scaler is None:
                if log is not None:
                    log.write({"step": step, "loss": loss, "lr": lr})
                raise TrainingDiverged(self._diverged_message(step, f"the loss is {loss}"))
            self.history.append({"step": step, "loss": loss, "lr": lr})
        bad = self._non_finite_weights()
        if bad:
            raise TrainingDiverged(self._diverged_message(self.step, f"{bad} holds non-finite values"))
        return self.history[-1]

    def ema_denoiser(self):
        """A copy of the denoiser carrying the EMA weights, in eval mode."""
        d = copy.deepcopy(self.acc.unwrap_model(self.model))
        self.ema.copy_to(d.net)
        return d.eval()


class _Logger:
    """JSONL (always) and TensorBoard (when installed) logs, main process only."""

    def __init__(self, out_dir: Path, main: bool, tensorboard: bool):
        self.main, self.tb, self.f = main, None, None
        if not main:
            return
        (out_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.f = open(out_dir / "logs" / "train.jsonl", "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(out_dir / "logs" / "tb"))
            except Exception:  # tensorboard is optional
                self.tb = None

    def write(self, rec: dict):
        if not self.main:
            return
        rec = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in rec.items()}
        self.f.write(json.dumps(rec, allow_nan=False) + "\n")  # strict JSON: a NaN loss is written as null
        self.f.flush()
        if self.tb:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(f"train/{k}", v, rec["step"])

    def close(self):
        if self.f:
            self.f.close()
        if self.tb:
            self.tb.close()


def _np_state():
    s = np.random.get_state()
    return [s[0], s[1].tolist(), int(s[2]), int(s[3]), float(s[4])]


def _np_from(s):
    return (s[0], np.array(s[1], dtype=np.uint32), s[2], s[3], s[4])


def _py_state():
    v, st, g = random.getstate()
    return [v, list(st), g]


def _py_from(s):
    return (s[0], tuple(s[1]), s[2])
