"""The Accelerate trainer: learning, exact resume, checkpoint integrity, and a real 2-process gloo run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from diffsuite.core.build import build_denoiser, build_loss
from diffsuite.core.checkpoint import CheckpointError, load_checkpoint
from diffsuite.core.config import DiffusionConfig, TrainerConfig
from diffsuite.core.trainer import Trainer, batch_indices
from diffsuite.recipes import run
from diffsuite.recipes.toy2d import MLPDenoiser, make_points

REPO = Path(__file__).resolve().parents[1]


class NoisyPoints(torch.utils.data.Dataset):
    """A map-style dataset with per-item randomness (like a random crop): exercises the per-item seeding."""

    def __init__(self, n=256):
        self.x = make_points("moons", n, 0.0, 0)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x0": self.x[i] + 0.05 * torch.randn(2)}


TOY_DIFFUSION = DiffusionConfig(schedule="cosine", T=100, prediction="eps")


def make_trainer(out, steps, dataset=None, accelerator=None, loss_fn=None, **cfg):
    torch.default_generator.manual_seed(0)
    den = build_denoiser(MLPDenoiser(2, 32, 2, 16), TOY_DIFFUSION)
    base = dict(steps=steps, batch_size=16, lr=1e-2, warmup_steps=3, lr_schedule="cosine", ema_decay=0.9,
                log_every=1, ckpt_every=0, progress=False, tensorboard=False, seed=3)
    base.update(cfg)
    ds = dataset if dataset is not None else torch.utils.data.TensorDataset(make_points("moons", 512, 0.05, 0))
    return Trainer(den, ds, TrainerConfig(**base), out, loss_fn or build_loss(TOY_DIFFUSION), accelerator=accelerator)


def weights(tr):
    return {k: v.clone() for k, v in tr.net.state_dict().items()}


def test_batch_indices_cover_each_epoch_once():
    idx = sum((batch_indices(10, m, 5, seed=1) for m in range(4)), [])
    assert sorted(idx[:10]) == list(range(10)) and sorted(idx[10:]) == list(range(10))
    assert idx[:10] != idx[10:]  # a fresh permutation per epoch


def test_loss_falls_on_toy_recipe(tmp_path):
    # eps-prediction: its loss starts near E|eps|^2 = 1 and has a small floor, so learning shows clearly.
    out = run.train("toy2d", ["train.steps=300", "train.log_every=1", "train.progress=false", "diffusion.prediction=eps",
                              "train.tensorboard=false", "sample.n=200"], out_dir=tmp_path / "toy")
    losses = [json.loads(l)["loss"] for l in (out / "logs" / "train.jsonl").read_text().splitlines()]
    assert len(losses) == 300
    first, last = sum(losses[:10]) / 10, sum(losses[-50:]) / 50
    assert first > 0.8 and last < 0.6 * first, (first, last)
    assert (out / "config.yaml").is_file() and (out / "checkpoints" / "latest.json").is_file()


@pytest.mark.parametrize("kind", ["tensor", "items"])
@pytest.mark.parametrize("grad_accum", [1, 2])
def test_resume_equals_uninterrupted(tmp_path, kind, grad_accum):
    ds = None if kind == "tensor" else NoisyPoints()
    full = make_trainer(tmp_path / "full", 12, ds, grad_accum=grad_accum)
    h_full = full.train()
    part = make_trainer(tmp_path / "part", 12, ds, grad_accum=grad_accum)
    part.train(stop_at=5)  # writes a checkpoint at step 5, as a stopped run would
    # A fresh process would start with other RNG states: scramble them to prove the checkpoint restores them.
    torch.default_generator.manual_seed(12345)
    resumed = make_trainer(tmp_path / "part", 12, ds, grad_accum=grad_accum)
    h_res = resumed.train(resume="auto")
    assert resumed.step == 12
    assert [r["loss"] for r in h_full[5:]] == [r["loss"] for r in h_res]
    assert [r["lr"] for r in h_full[5:]] == [r["lr"] for r in h_res]
    wf, wr = weights(full), weights(resumed)
    assert all(torch.equal(wf[k], wr[k]) for k in wf)
    assert all(torch.equal(full.ema.shadow[k], resumed.ema.shadow[k]) for k in wf)


def test_sigterm_saves_the_step_and_resumes_exactly(tmp_path):
    """A SIGTERM during training (sent here by a callback at step 8) ends the run after that step with its checkpoint,
    raises TrainingInterrupted, restores the signal handlers, and resuming reproduces the uninterrupted run."""
    import signal
    from diffsuite.core.trainer import TrainingInterrupted
    full = make_trainer(tmp_path / "full", 12)
    full.train()
    before = signal.getsignal(signal.SIGTERM)
    part = make_trainer(tmp_path / "part", 12, sample_every=4)
    part.sample_fn = lambda den, step, out: os.kill(os.getpid(), signal.SIGTERM) if step == 8 else None
    with pytest.raises(TrainingInterrupted, match="SIGTERM at step 8"):
        part.train()
    assert signal.getsignal(signal.SIGTERM) is before
    assert json.loads((tmp_path / "part" / "checkpoints" / "latest.json").read_text())["step"] == 8
    torch.default_generator.manual_seed(12345)
    resumed = make_trainer(tmp_path / "part", 12)
    resumed.train(resume="auto")
    wf, wr = weights(full), weights(resumed)
    assert resumed.step == 12 and all(torch.equal(wf[k], wr[k]) for k in wf)


def test_ctrl_c_on_the_train_command_saves_a_checkpoint(tmp_path):
    """SIGINT from outside to `diffsuite train`: exit status 130, a message naming the step, its checkpoint on disk."""
    import signal
    import time
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "diffsuite.recipes.cli", "train", "toy2d", "--out", str(out),
                             "train.steps=1000000", "train.log_every=1", "train.progress=false",
                             "train.tensorboard=false"], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    log = out / "logs" / "train.jsonl"
    deadline = time.time() + 120
    while not (log.is_file() and len(log.read_text().splitlines()) >= 20) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    latest = json.loads((out / "checkpoints" / "latest.json").read_text())
    assert f"stopped by SIGINT at step {latest['step']}" in err and 20 <= latest["step"] < 1000000
    assert load_checkpoint(out / "checkpoints" / latest["path"])[1]["step"] == latest["step"]


def test_different_seed_changes_the_run(tmp_path):
    a = make_trainer(tmp_path / "a", 4).train()
    b = make_trainer(tmp_path / "b", 4, seed=4).train()
    assert [r["loss"] for r in a] != [r["loss"] for r in b]


def test_checkpoint_keep_cap_and_latest(tmp_path):
    tr = make_trainer(tmp_path, 10, ckpt_every=2, keep_checkpoints=2)
    tr.train()
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert names == ["step_00000008", "step_00000010"]
    assert json.loads((tmp_path / "checkpoints" / "latest.json").read_text())["step"] == 10
    assert not list((tmp_path / "checkpoints").glob(".*tmp*"))  # no half-written folders left behind


@pytest.mark.parametrize("victim", ["model.safetensors", "state.json", "optimizer.safetensors"])
def test_truncated_checkpoint_is_a_clear_error(tmp_path, victim):
    tr = make_trainer(tmp_path, 3)
    tr.train()
    ckpt = tr.latest_checkpoint()
    f = ckpt / victim
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut short|corrupted|not valid JSON") as e:
        load_checkpoint(ckpt)
    assert str(ckpt) in str(e.value)
    with pytest.raises(CheckpointError):
        make_trainer(tmp_path, 6).train(resume=ckpt)


def test_corrupted_bytes_same_size_detected(tmp_path):
    tr = make_trainer(tmp_path, 2)
    tr.train()
    f = tr.latest_checkpoint() / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="hash"):
        load_checkpoint(f.parent)


def test_failed_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    tr = make_trainer(tmp_path, 2)
    tr.train()
    good = tr.latest_checkpoint()
    before = load_checkpoint(good)[0]["model"]
    import diffsuite.core.checkpoint as ck

    def boom(*a, **k):
        raise OSError("disk full (simulated)")
    monkeypatch.setattr(ck, "save_tensors", boom)
    tr.step = 2  # same name: a crash while overwriting must not damage it
    with pytest.raises(OSError):
        tr.save()
    after = load_checkpoint(good)[0]["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_run_load_rejects_truncated_checkpoint(tmp_path):
    out = run.train("toy2d", ["train.steps=3", "train.progress=false", "train.tensorboard=false"], out_dir=tmp_path)
    ckpt = run.resolve_checkpoint(out)
    f = ckpt / "ema.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cut short"):
        run.load(out)


DDP_SCRIPT = textwrap.dedent("""
    import hashlib, json, sys, torch
    from diffsuite.core.build import build_denoiser, build_loss
    from diffsuite.core.config import DiffusionConfig, TrainerConfig
    from diffsuite.core.trainer import Trainer
    from diffsuite.recipes.toy2d import MLPDenoiser, make_points
    out = sys.argv[1]
    torch.default_generator.manual_seed(0)
    diff = DiffusionConfig(schedule="cosine", T=100, prediction="eps")
    den = build_denoiser(MLPDenoiser(2, 32, 2, 16), diff)
    cfg = TrainerConfig(steps=8, batch_size=16, lr=1e-2, warmup_steps=2, log_every=1, ckpt_every=4,
                        progress=False, tensorboard=False, seed=0)
    tr = Trainer(den, torch.utils.data.TensorDataset(make_points("moons", 256, 0.05, 0)), cfg, out, build_loss(diff))
    hist = tr.train()
    digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in tr.net.state_dict().values())).hexdigest()
    saved = tr.save()
    print("RESULT", json.dumps({"rank": tr.acc.process_index, "local_rank": tr.acc.local_process_index,
                                "world": tr.acc.num_processes, "digest": digest,
                                "backend": torch.distributed.get_backend(), "device": str(tr.acc.device),
                                "saved": None if saved is None else str(saved), "loss": hist[-1]["loss"]}), flush=True)
""")


def _launch(script, out, port: int, machines: int = 1, machine_rank: int = 0) -> list[str]:
    """`accelerate launch` of the DDP script for 2 processes in all, on `machines` machines (here: this host).
    accelerate's `--cpu` flag runs a single process; multi-process CPU is torchrun (--multi_gpu) with
    ACCELERATE_USE_CPU, which gives the gloo backend."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", str(machines), "--machine_rank", str(machine_rank), "--main_process_ip", "127.0.0.1",
            "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
            str(script), str(out)]


DDP_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}


def _check_ddp_run(stdout: str, out) -> list[dict]:
    """Two ranks in sync, one log line per step, and only global rank 0 writes a complete checkpoint."""
    recs = [json.loads(l.split("RESULT ", 1)[1]) for l in stdout.splitlines() if l.startswith("RESULT ")]
    assert sorted(r["rank"] for r in recs) == [0, 1] and all(r["world"] == 2 for r in recs)
    assert all(r["backend"] == "gloo" and r["device"].startswith("cpu") for r in recs), [r["device"] for r in recs]
    assert recs[0]["digest"] == recs[1]["digest"]  # replicas stay in sync
    assert recs[0]["loss"] == recs[1]["loss"]  # the logged loss is the all-reduced one
    by_rank = {r["rank"]: r for r in recs}
    assert by_rank[0]["saved"] is not None and by_rank[1]["saved"] is None  # only rank 0 writes
    steps = [json.loads(l)["step"] for l in (out / "logs" / "train.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))  # one log line per step, not one per process
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest.json", "step_00000004", "step_00000008"]
    load_checkpoint(out / "checkpoints" / "step_00000008")  # complete and verified
    return recs


def test_two_process_gloo_run(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "run"
    res = subprocess.run(_launch(script, out, 29517), capture_output=True, text=True, timeout=300, env=DDP_ENV,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    recs = _check_ddp_run(res.stdout, out)
    assert sorted(r["local_rank"] for r in recs) == [0, 1]


def test_two_machine_launch(tmp_path):
    """The multi-node path: two `accelerate launch --num_machines 2 --machine_rank i` (static rendezvous at the main
    process's address; here both on this host, sharing one filesystem as nodes on a shared disk do). Each process
    is its node's local main process, yet only global rank 0 logs and writes checkpoints."""
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "run"
    nodes = [subprocess.Popen(_launch(script, out, 29527, machines=2, machine_rank=i), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=DDP_ENV, cwd=tmp_path) for i in range(2)]
    outs = [n.communicate(timeout=300) for n in nodes]
    for n, (o, e) in zip(nodes, outs):
        assert n.returncode == 0, o[-3000:] + e[-3000:]
    recs = _check_ddp_run(outs[0][0] + outs[1][0], out)
    assert [r["local_rank"] for r in recs] == [0, 0]


def test_bf16_autocast_trains_with_fp32_master_weights(tmp_path):
    tr = make_trainer(tmp_path, 6, mixed_precision="bf16")
    hist = tr.train()
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in hist)
    assert all(p.dtype == torch.float32 for p in tr.net.parameters())


def fp16_accelerator():
    """Accelerate's fp16 mixed precision as it runs on a GPU (float16 autocast and a GradScaler), here on the CPU:
    torch supports both there, but Accelerate turns them on only for accelerators."""
    from diffsuite.core.trainer import make_accelerator
    acc = make_accelerator(TrainerConfig(mixed_precision="fp16"))
    acc.native_amp, acc.scaler = True, torch.amp.GradScaler("cpu")
    return acc


def overflow_at(call: int):
    """The toy loss, made infinite at the given call (1-based), as an fp16 overflow would make it."""
    base, calls = build_loss(TOY_DIFFUSION), [0]

    def loss_fn(model, x0, cond, g):
        losses, aux = base(model, x0, cond, g)
        calls[0] += 1
        return (losses * float("inf") if calls[0] == call else losses), aux
    return loss_fn


def test_fp16_on_cpu_warns_that_it_runs_fp32(tmp_path):
    with pytest.warns(UserWarning, match="fp16 has no effect on cpu"):
        make_trainer(tmp_path, 2, mixed_precision="fp16")


def test_fp16_loss_scaling_clips_unscaled_gradients(tmp_path, monkeypatch):
    """The loss is scaled (by 2^16), yet clipping sees the true gradient norm: the trainer unscales first."""
    seen, clip = [], torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: seen.append(float(clip(*a, **k))))
    make_trainer(tmp_path / "fp32", 1).train()
    acc = fp16_accelerator()
    scaled, scale = [], acc.scaler.scale
    acc.scaler.scale = lambda out: scaled.append(1) or scale(out)
    tr = make_trainer(tmp_path / "fp16", 1, accelerator=acc)
    tr.train()
    assert scaled and acc.scaler.get_scale() == 2.0 ** 16
    norm32, norm16 = seen
    assert norm16 == pytest.approx(norm32, rel=2e-2), (norm16, norm32)  # not 65536x
    assert all(p.dtype == torch.float32 for p in tr.net.parameters())


def test_fp16_overflow_skips_the_step_and_halves_the_scale(tmp_path):
    acc = fp16_accelerator()
    tr = make_trainer(tmp_path, 5, accelerator=acc, loss_fn=overflow_at(3), sample_every=1)
    snaps = []
    tr.sample_fn = lambda den, step, out: snaps.append(weights(tr))
    hist = tr.train()
    assert [r["loss"] == float("inf") for r in hist] == [False, False, True, False, False]
    assert all(torch.equal(snaps[1][k], snaps[2][k]) for k in snaps[1])  # step 3 left the weights alone
    assert not all(torch.equal(snaps[2][k], snaps[3][k]) for k in snaps[2])  # step 4 trained again
    assert acc.scaler.get_scale() == 2.0 ** 15


def test_fp16_resume_restores_the_loss_scale(tmp_path):
    full = make_trainer(tmp_path / "full", 8, accelerator=fp16_accelerator(), loss_fn=overflow_at(3))
    full.train()
    make_trainer(tmp_path / "part", 8, accelerator=fp16_accelerator(), loss_fn=overflow_at(3)).train(stop_at=5)
    resumed = make_trainer(tmp_path / "part", 8, accelerator=fp16_accelerator())
    resumed.train(resume="auto")
    # no overflow after step 5, so a fresh scaler would still be at 2^16
    assert resumed.acc.scaler.get_scale() == full.acc.scaler.get_scale() == 2.0 ** 15
    wf, wr = weights(full), weights(resumed)
    assert resumed.step == 8 and all(torch.equal(wf[k], wr[k]) for k in wf)


def test_sample_callback_tensorboard_and_progress(tmp_path, capsys):
    out = run.train("toy2d", ["train.steps=20", "train.sample_every=10", "train.tensorboard=true",
                              "train.progress=true", "sample.n=32", "sample.steps=4"], out_dir=tmp_path)
    for step in (10, 20):
        assert (out / "samples" / f"step_{step:08d}" / "samples.png").is_file()
    assert list((out / "logs" / "tb").glob("events.out.tfevents.*"))
    err = capsys.readouterr().err
    assert "loss=" in err and "it/s" in err  # tqdm shows the loss and the rate


def test_batch_of_collates_items_as_the_loader_does():
    from torch.utils.data import TensorDataset
    from diffsuite.core.trainer import batch_of
    x, y = torch.randn(5, 3), torch.arange(5)
    x0, cond = batch_of(TensorDataset(x, y), [4, 1])
    assert torch.equal(x0, x[[4, 1]]) and torch.equal(cond, y[[4, 1]])

    class Items(torch.utils.data.Dataset):  # dict items, as the modalities' datasets give
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return {"x0": x[i], "cond": y[i]}
    x0, cond = batch_of(Items(), [4, 1])
    assert torch.equal(x0, x[[4, 1]]) and torch.equal(cond, y[[4, 1]])
    assert batch_of(TensorDataset(x), [0])[1] is None


def test_recipe_minutes_counts_the_steps_an_override_sets(tmp_path, monkeypatch):
    """`benchmarks/trainer.py --minutes RECIPE,train.steps=N` prices N steps, not the recipe file's count."""
    from tiny import benchmark_script
    bench = benchmark_script("trainer.py", "bench_trainer")
    monkeypatch.chdir(tmp_path)
    row, = bench.recipe_minutes(["toy2d,train.steps=77,train.batch_size=16"], warm=1, timed=2)
    assert row["steps"] == 77 and row["steps"] != run.load_recipe("toy2d").train.steps
    assert abs(row["minutes"] - 77 / row["steps_per_second"] / 60) < 1e-9
