"""Fault injection: each way a user could lose work or get a wrong result without a word (issue "Never lose a user's
work"), as a test that fails without its fix. docs/core.md, "What is protected", lists them."""
from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffsuite.core import checkpoint as ck
from diffsuite.core.checkpoint import checkpoint_folders, load_checkpoint, save_checkpoint
from diffsuite.core.config import ConfigError
from diffsuite.recipes import cli, run

from tiny import TASKS, recipe, wav_files

TOY = ["train.progress=false", "train.tensorboard=false", "train.log_every=1", "train.warmup_steps=0",
       "train.lr_schedule=constant", "sample.n=8", "sample.steps=3"]


SHARED_CACHE = os.environ.get("DIFFSUITE_CACHE")  # what the built-in data and the digits classifier share


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path / "cache"))


def _main(argv, capsys):
    """Run the CLI; (exit status, stderr). An argument error exits (status 2) from inside argparse."""
    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def _one_error_line(err: str) -> str:
    lines = [l for l in err.splitlines() if l.startswith("diffsuite: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]


def _toy_run(out, capsys, *extra):
    rc, err = _main(["train", "toy2d", *TOY, *extra, "--out", out], capsys)
    assert rc == 0, err
    return out


# ------------------------------------------------------------------------------------------------ 1. run folders

def test_training_into_a_used_run_folder_is_refused(tmp_path, capsys):
    out = _toy_run(tmp_path / "run", capsys, "train.steps=60", "train.ckpt_every=20")
    before = sorted(p.name for p in checkpoint_folders(out / "checkpoints"))
    latest = (out / "checkpoints" / "latest.json").read_text()
    for extra in (["train.steps=10"], ["train.steps=10", "train.keep_checkpoints=1"]):
        rc, err = _main(["train", "toy2d", *TOY, *extra, "--out", out], capsys)
        assert rc == 2 and "is not empty" in _one_error_line(err) and "--resume auto" in err and "--overwrite" in err
    assert sorted(p.name for p in checkpoint_folders(out / "checkpoints")) == before == [
        "step_00000020", "step_00000040", "step_00000060"]
    assert (out / "checkpoints" / "latest.json").read_text() == latest
    # --overwrite moves the old run aside, never deletes it
    rc, err = _main(["train", "toy2d", *TOY, "train.steps=10", "--out", out, "--overwrite"], capsys)
    assert rc == 0 and "moved to" in err
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert len(aside) == 1 and sorted(p.name for p in checkpoint_folders(aside[0] / "checkpoints")) == before
    assert [p.name for p in checkpoint_folders(out / "checkpoints")] == ["step_00000010"]


def test_pruning_never_deletes_the_checkpoint_latest_names(tmp_path, capsys):
    out = _toy_run(tmp_path / "run", capsys, "train.steps=60", "train.ckpt_every=20")
    # resume from the oldest checkpoint with a cap of 1: the new step_30 is the one latest.json names
    rc, err = _main(["train", "toy2d", *TOY, "train.steps=30", "train.ckpt_every=10", "train.keep_checkpoints=1",
                     "--out", out, "--resume", out / "checkpoints" / "step_00000020"], capsys)
    assert rc == 0, err
    latest = json.loads((out / "checkpoints" / "latest.json").read_text())["path"]
    assert latest == "step_00000030" and (out / "checkpoints" / latest / "state.json").is_file()
    assert run.load(out).step == 30


# ------------------------------------------------------------------------------------------------ 2. divergence

def _finite(ckpt) -> bool:
    t, _, _ = load_checkpoint(ckpt)
    return all(bool(torch.isfinite(v).all()) for g in ("model", "ema") for v in t[g].values())


def test_divergence_stops_with_the_newest_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    rc, err = _main(["train", "toy2d", *TOY, "train.lr=1e4", "train.warmup_steps=1000", "train.steps=200",
                     "train.ckpt_every=2", "train.keep_checkpoints=1", "train.mixed_precision=no", "--out", out], capsys)
    line = _one_error_line(err)
    assert rc == 3 and "training diverged at step" in line and "last finite loss" in line
    good = json.loads((out / "checkpoints" / "latest.json").read_text())["path"]
    assert good in line  # the newest good checkpoint is named
    ckpts = checkpoint_folders(out / "checkpoints")
    assert ckpts and all(_finite(p) for p in ckpts)  # no checkpoint holds NaN
    step_bad = int(line.split("diverged at step ")[1].split(":")[0])
    assert int(good.split("_")[1]) < step_bad
    # the log is strict JSON (NaN written as null)
    recs = [json.loads(l, parse_constant=lambda c: pytest.fail(f"bare {c} in the log"))
            for l in (out / "logs" / "train.jsonl").read_text().splitlines()]
    assert recs[-1]["loss"] is None and recs[-1]["step"] == step_bad
    # --resume auto with a lower lr continues from that checkpoint, with that lr (this lr-1e4 run's weights are
    # already blown up there, so it may diverge again: the loss-injection test below shows a recovery)
    rc, err = _main(["train", "toy2d", *TOY, "train.lr=1e-3", "train.warmup_steps=0", "train.steps=30",
                     "train.mixed_precision=no", "--out", out, "--resume", "auto"], capsys)
    assert f"resuming from {out / 'checkpoints' / good}" in err and "train.lr 10000.0 -> 0.001 (applied)" in err


class _NaNAt:
    """A loss that is NaN at micro-step k (what a diverging model's loss looks like), the real loss elsewhere."""

    def __init__(self, loss, k):
        self.loss, self.k, self.calls = loss, k, 0

    def __call__(self, model, x0, cond, g):
        self.calls += 1
        losses, extra = self.loss(model, x0, cond, g)
        return (losses * float("nan") if self.calls == self.k else losses), extra


def test_a_diverged_run_resumes_from_its_newest_good_checkpoint(tmp_path):
    from diffsuite.core.build import build_denoiser, build_loss
    from diffsuite.core.trainer import Trainer, TrainingDiverged
    r = run.load_recipe(recipe("toy2d", tmp_path, steps=10, ckpt_every=2, keep_checkpoints=1, log_every=5,
                               mixed_precision="no"))
    from diffsuite.recipes.toy2d import Toy2DTask, make_points

    def trainer(loss):
        torch.manual_seed(0)
        den = build_denoiser(Toy2DTask().build_net(r.model, r.diffusion), r.diffusion)
        return Trainer(den, torch.utils.data.TensorDataset(make_points("moons", 256, 0.05, 0)), r.train,
                       tmp_path / "run", loss)
    with pytest.raises(TrainingDiverged, match=r"diverged at step 7: the loss is nan; last finite loss [\d.]+ at step "
                                               r"6; the newest good checkpoint is .*step_00000006"):
        trainer(_NaNAt(build_loss(r.diffusion), 7)).train()  # detected at the log point (step 10), named as step 7
    assert [p.name for p in checkpoint_folders(tmp_path / "run" / "checkpoints")] == ["step_00000006"]
    tr = trainer(build_loss(r.diffusion))
    tr.train(resume="auto")
    assert tr.step == 10 and _finite(tmp_path / "run" / "checkpoints" / "step_00000010")


def test_non_finite_weights_are_never_saved(tmp_path):
    from diffsuite.core.trainer import TrainingDiverged
    out = run.train(recipe("toy2d", tmp_path), out_dir=tmp_path / "run")
    from diffsuite.recipes.toy2d import Toy2DTask  # noqa: F401  (the task the recipe names)
    loaded = run.load(out)
    from diffsuite.core.build import build_loss
    from diffsuite.core.trainer import Trainer
    r = loaded.recipe
    den = loaded.denoiser
    tr = Trainer(den, torch.utils.data.TensorDataset(torch.randn(16, 2)), r.train, tmp_path / "other",
                 build_loss(r.diffusion))
    with torch.no_grad():
        next(tr.net.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="the model holds non-finite values"):
        tr.save()
    assert not checkpoint_folders(tmp_path / "other" / "checkpoints")


def _nan_checkpoint(tmp_path, capsys):
    out = _toy_run(tmp_path / "run", capsys, "train.steps=3")
    ckpt = run.resolve_checkpoint(out)
    tensors, state, config = load_checkpoint(ckpt)
    for g in ("model", "ema"):
        k = next(iter(tensors[g]))
        tensors[g][k] = torch.full_like(tensors[g][k], float("nan"))
    state = {k: v for k, v in state.items() if k != "manifest"}
    save_checkpoint(ckpt, tensors, state, config)
    return out


def test_sampling_refuses_a_checkpoint_with_nan_weights(tmp_path, capsys):
    out = _nan_checkpoint(tmp_path, capsys)
    rc, err = _main(["sample", out, "--out", tmp_path / "s"], capsys)
    assert rc == 2 and "hold NaN or infinite values" in _one_error_line(err) and not (tmp_path / "s").exists()


def test_sampling_reports_non_finite_outputs(tmp_path, capsys):
    from diffsuite.core.utils import NonFiniteError
    out = _toy_run(tmp_path / "run", capsys, "train.steps=3")
    loaded = run.load(out)
    with torch.no_grad():
        for p in loaded.denoiser.net.parameters():
            p.mul_(1e30)  # finite weights, overflowing outputs
    with pytest.raises(NonFiniteError, match=r"samples: \d+ of 8 hold NaN or infinite values"):
        run.generate(loaded.denoiser, loaded.task, loaded.recipe, progress=False)


# ------------------------------------------------------------------------------------------------ 3. a full disk

def test_a_full_disk_says_so_and_leaves_no_partial_folder(tmp_path, capsys, monkeypatch):
    out = _toy_run(tmp_path / "run", capsys, "train.steps=4", "train.ckpt_every=2")
    real = ck.save_tensors

    def full(path, tensors, *a, **k):
        real(path, tensors, *a, **k)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(ck, "save_tensors", full)
    rc, err = _main(["train", "toy2d", *TOY, "train.steps=8", "train.ckpt_every=2", "--out", out, "--resume", "auto"],
                    capsys)
    line = _one_error_line(err)
    assert rc == 2 and "no space left on the device" in line and "MiB" in line and "--resume auto" in line
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]  # partial folder removed
    assert _finite(out / "checkpoints" / "step_00000004")  # the last good one is intact


def test_stale_partial_checkpoints_of_dead_processes_are_removed(tmp_path, capsys):
    out = _toy_run(tmp_path / "run", capsys, "train.steps=2")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = out / "checkpoints" / f".step_00000004.tmp-{int(dead.stdout)}"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"x" * 1000)
    alive = out / "checkpoints" / f".step_00000004.tmp-{os.getppid()}"  # a running process: kept
    alive.mkdir()
    rc, err = _main(["train", "toy2d", *TOY, "train.steps=4", "--out", out, "--resume", "auto"], capsys)
    assert rc == 0 and not stale.exists() and alive.exists()


def test_two_writers_of_one_cache_file_do_not_collide(tmp_path):
    """Two processes building one cache at once (two recipes started together) each write their own temporary file;
    a writer that fails leaves neither a temporary file nor a changed cache file."""
    from diffsuite.core.utils import atomic_path
    f = tmp_path / "cache" / "audio.npz"
    with atomic_path(f) as a:
        with atomic_path(f) as b:  # the second writer starts and finishes while the first is still writing
            assert a != b and a.suffix == b.suffix == ".npz"
            np.savez(b, x=np.array(1))
        np.savez(a, x=np.array(2))
    assert int(np.load(f)["x"]) == 2
    with pytest.raises(RuntimeError):
        with atomic_path(f) as c:
            np.savez(c, x=np.array(3))
            raise RuntimeError("killed mid-write")
    assert int(np.load(f)["x"]) == 2 and sorted(p.name for p in f.parent.iterdir()) == ["audio.npz"]


# ------------------------------------------------------------------------------------------------ 4. vocode --out

@pytest.fixture
def audio_run(tmp_path):
    return run.train(recipe("audio", tmp_path), out_dir=tmp_path / "arun")


def test_vocode_never_writes_over_its_input_and_takes_a_folder(audio_run, tmp_path, capsys):
    import soundfile as sf
    src = wav_files(tmp_path / "mine", n=1).parent / "clip0.wav"
    before = src.read_bytes()
    for out in (src, src.with_suffix(".png").with_name("clip0.png")):
        pass
    rc, err = _main(["vocode", audio_run, "--wav", src, "--out", src, "--precision", "fp32"], capsys)
    assert rc == 2 and "would write over the input" in _one_error_line(err)
    assert src.read_bytes() == before
    for folder in (tmp_path / "voc", f"{tmp_path / 'voc2'}/"):
        rc, err = _main(["vocode", audio_run, "--wav", src, "--out", folder, "--steps", "2", "--sampler", "ddim"], capsys)
        assert rc == 0, err
        wav = tmp_path / str(folder).rstrip("/").split("/")[-1] / "clip0.vocoded.wav"
        assert sf.info(str(wav)).frames == sf.info(str(src)).frames
    assert src.read_bytes() == before


# ------------------------------------------------------------------------------------------------ 5. resume rules

def test_resume_applies_a_new_lr_and_refuses_a_new_model(tmp_path, capsys):
    out = _toy_run(tmp_path / "run", capsys, "train.steps=4", "train.lr=2e-3")
    cfg_before = (out / "config.yaml").read_text()
    rc, err = _main(["train", "toy2d", *TOY, "train.steps=8", "train.lr=2e-3", "model.hidden=64", "--out", out,
                     "--resume", "auto"], capsys)
    line = _one_error_line(err)
    assert rc == 2 and "model.hidden: checkpoint 128, now 64" in line
    assert (out / "config.yaml").read_text() == cfg_before  # nothing written
    rc, err = _main(["train", "toy2d", *TOY, "train.steps=8", "train.lr=1e-5", "--out", out, "--resume", "auto"], capsys)
    assert rc == 0 and "resume: train.lr 0.002 -> 1e-05 (applied)" in err
    log = [json.loads(l) for l in (out / "logs" / "train.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in log if r["step"] > 4] == [1e-5] * 4
    _, state, config = load_checkpoint(run.resolve_checkpoint(out), groups=())
    assert config["train"]["lr"] == 1e-5 and state["optimizer"]["param_groups"][0]["lr"] == 1e-5
    starts = json.loads((out / "run.json").read_text())["starts"]
    assert starts[-1]["step"] == 4 and starts[-1]["resume_changes"]["train.lr"] == [0.002, 1e-05]


# ------------------------------------------------------------------------------------------------ 6. exact resumes

@pytest.mark.parametrize("task", TASKS)
def test_resume_is_exact_for_every_modality(task, tmp_path):
    rec = recipe(task, tmp_path, steps=4)
    full = run.train(rec, out_dir=tmp_path / "full")
    part = run.train(rec, out_dir=tmp_path / "part", stop_at=2)
    assert run.load(part).step == 2
    run.train(rec, out_dir=part, resume="auto")
    a, _, _ = load_checkpoint(run.resolve_checkpoint(full))
    b, _, _ = load_checkpoint(run.resolve_checkpoint(part))
    for g in ("model", "ema"):
        assert a[g].keys() == b[g].keys()
        diff = max((a[g][k].double() - b[g][k].double()).abs().max().item() for k in a[g])
        assert diff == 0, f"{task} {g}: resumed run differs from the uninterrupted one by {diff}"


def test_music_transpositions_follow_the_trainers_generator(tmp_path):
    """The chorale windows' transposition is drawn from torch's RNG, which the trainer seeds per (seed, step, item):
    the same seed gives the same item, whatever was drawn before (it came from a stateful numpy generator)."""
    from diffsuite.modalities.music.task import MusicTask
    from diffsuite.recipes.run import load_recipe
    r = load_recipe(recipe("music", tmp_path))
    ds = MusicTask().build_dataset(r.data, "train")
    torch.manual_seed(5)
    first = ds[0]["x0"]
    for _ in range(10):
        ds[0]
    torch.manual_seed(5)
    assert torch.equal(ds[0]["x0"], first)
    seen = set()
    for s in range(20):
        torch.manual_seed(s)
        seen.add(ds[0]["x0"].numpy().tobytes())
    assert len(seen) > 1  # and it does transpose


# ------------------------------------------------------------------------------------------------ 7. resume auto

def test_resume_auto_says_what_it_does(tmp_path, capsys):
    rc, err = _main(["train", "toy2d", *TOY, "train.steps=2", "--out", tmp_path / "new", "--resume", "auto"], capsys)
    assert rc == 0 and "no checkpoint in" in err and "starting from step 0" in err
    out = _toy_run(tmp_path / "run", capsys, "train.steps=6", "train.ckpt_every=2")
    # --resume RUN_FOLDER works like `sample RUN_FOLDER`
    rc, err = _main(["train", "toy2d", *TOY, "train.steps=8", "train.ckpt_every=2", "--out", tmp_path / "copy",
                     "--resume", out], capsys)
    assert rc == 0 and f"resuming from {out / 'checkpoints' / 'step_00000006'}" in err
    assert run.load(tmp_path / "copy").step == 8
    # a corrupt newest checkpoint: the error names the newest good one and how to use it
    f = out / "checkpoints" / "step_00000006" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:50])
    rc, err = _main(["train", "toy2d", *TOY, "train.steps=8", "--out", out, "--resume", "auto"], capsys)
    line = _one_error_line(err)
    assert rc == 2 and "step_00000006" in line and f"--resume {out / 'checkpoints' / 'step_00000004'}" in line
    rc, err = _main(["train", "toy2d", *TOY, "train.steps=8", "train.ckpt_every=2", "--out", out,
                     "--resume", out / "checkpoints" / "step_00000004"], capsys)
    assert rc == 0, err


# ------------------------------------------------------------------------------------------------ 8-9. validation

@pytest.mark.parametrize("override, message", [
    ("sample.sampler=ddimm", "sample.sampler: unknown value 'ddimm'; valid: ['annealed_langevin', 'consistency', 'ddgan', 'ddim'"),
    ("train.steps=0", "train.steps: 0 is too small; expected >= 1"),
    ("train.steps=-5", "train.steps: -5 is too small"),
    ("train.grad_accum=0", "train.grad_accum: 0 is too small"),
    ("train.batch_size=0", "train.batch_size: 0 is too small"),
    ("train.mixed_precision=bf17", "train.mixed_precision: unknown value 'bf17'; valid: ['auto', 'no'"),
    ("model.hidden=0", "model.hidden: 0 is too small"),
    ("data.kind=spiral", "data.kind: unknown value 'spiral'; valid: ['moons', 'gmm']"),
    ("diffusion.schedule=cosin", "diffusion.schedule: unknown value 'cosin'"),
    ("sample.eta=2", "sample.eta: 2.0 is too large; expected <= 1"),
])
def test_bad_values_are_caught_before_anything_is_written(override, message, tmp_path, capsys):
    rc, err = _main(["train", "toy2d", *TOY, override, "--out", tmp_path / "run"], capsys)
    assert rc == 2 and message in _one_error_line(err) and not (tmp_path / "run").exists()


@pytest.mark.parametrize("recipe_name, override, message", [
    ("image_digits", "data.source=web", "data.source: unknown value 'web'; valid: ['digits', 'folder', 'photos']"),
    ("audio_vocoder_quick", "data.source=youtube", "data.source: unknown value 'youtube'"),
    ("trajectory_umaze_quick", "data.condition=goal", "data.condition: unknown value 'goal'"),
    ("music_bach_quick", "data.n_pitch=0", "data.n_pitch: 0 is too small"),
])
def test_modality_values_are_checked_at_load(recipe_name, override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        run.load_recipe(recipe_name, [override])


def test_a_recipe_path_that_does_not_exist_is_an_error(tmp_path, capsys):
    rc, err = _main(["train", "/wrong/path/toy2d.yaml", "--out", tmp_path / "run"], capsys)
    assert rc == 2 and "recipe file not found: /wrong/path/toy2d.yaml" in _one_error_line(err)
    assert not (tmp_path / "run").exists()


def test_a_yaml_key_written_twice_is_an_error(tmp_path, capsys):
    f = tmp_path / "mine.yaml"
    f.write_text("task: toy2d\ntrain: {steps: 10}\nmodel: {hidden: 8}\ntrain:\n  steps: 20\n")
    rc, err = _main(["train", f, "--out", tmp_path / "run"], capsys)
    assert rc == 2 and "duplicate key 'train' (first at line 2, again at line 4)" in _one_error_line(err)


# ------------------------------------------------------------------------------------------------ 10. image classes

def _class_folder(root, classes=("cat", "dog", "owl"), n=3):
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


IMG = ["model.preset=tiny", "model.image_size=8", "model.in_channels=3", "model.model_channels=8",
       "model.num_heads=1", "model.channel_mult=[1]", "model.attention_resolutions=[]", "data.image_size=8",
       "train.steps=2", "train.batch_size=4", "train.lr=1e-2", "train.warmup_steps=0", "train.progress=false",
       "train.tensorboard=false", "sample.n=3",
       "sample.steps=2", "sample.sampler=ddim"]


def test_image_folder_takes_its_class_count_from_the_data(tmp_path, capsys):
    folder = _class_folder(tmp_path / "imgs")
    out = tmp_path / "run"
    rc, err = _main(["train", "image_folder", f"data.path={folder}", *IMG, "--out", out], capsys)
    assert rc == 0, err
    loaded = run.load(out)
    assert loaded.recipe.model.num_classes == 3
    emb = load_file(str(run.resolve_checkpoint(out) / "model.safetensors"))
    assert any("label" in k or "class" in k for k in emb)  # the class embedding exists and is trained
    for extra, msg in ((["model.num_classes=2"], "model.num_classes=2 but the data has 3 classes (cat, dog, owl)"),
                       (["model.num_classes=5", "data.class_cond=false"],
                        "model.num_classes=5 but data.class_cond=false: the model would never see a label")):
        rc, err = _main(["train", "image_folder", f"data.path={folder}", *IMG, *extra, "--out", tmp_path / "x"],
                        capsys)
        assert rc == 2 and msg in _one_error_line(err)


def test_class_embeddings_are_trained(tmp_path, capsys):
    folder = _class_folder(tmp_path / "imgs")
    out = tmp_path / "run"
    rc, err = _main(["train", "image_folder", f"data.path={folder}", *IMG, "train.steps=6", "train.ckpt_every=3",
                     "train.keep_checkpoints=0", "--out", out], capsys)
    assert rc == 0, err
    a = load_file(str(out / "checkpoints" / "step_00000003" / "model.safetensors"))
    b = load_file(str(out / "checkpoints" / "step_00000006" / "model.safetensors"))
    keys = [k for k in a if "label" in k or "class" in k]
    assert keys and any(not torch.equal(a[k], b[k]) for k in keys)


# ------------------------------------------------------------------------------------------------ 11-12. inputs

def test_bad_mels_are_refused(audio_run, tmp_path, capsys):
    for name, mel, msg in (("nan", np.full((80, 10), np.nan, np.float32), "are NaN or infinite"),
                           ("empty", np.zeros((80, 0), np.float32), "the mel has 0 frames")):
        np.save(tmp_path / f"{name}.npy", mel)
        rc, err = _main(["vocode", audio_run, "--mel", tmp_path / f"{name}.npy", "--out", tmp_path / f"{name}.wav"],
                        capsys)
        assert rc == 2 and msg in _one_error_line(err) and not (tmp_path / f"{name}.wav").exists()


@pytest.fixture
def music_run(tmp_path):
    return run.train(recipe("music", tmp_path), out_dir=tmp_path / "mrun")


def test_compose_refuses_what_it_cannot_do(music_run, tmp_path, capsys):
    src = sorted((tmp_path / "midi").glob("*.mid"))[0]
    cases = [(["--infill", src, "--bars", "9-12"], "--bars 9-12: the model's window has 2 bars (1-2)"),
             (["--chords", " ".join(["C", "G", "Am", "F"] * 3)], "12 chords of 1 beat(s) each need 12 beats, but the "
                                                                 "window has 8"),
             (["--chords", "C Hm7"], "chord symbol 'Hm7'"),
             (["--continue", src, "--bars", "0"], "--bars 0: expected at least 1 bar"),
             (["--infill", tmp_path / "nope.mid"], "input MIDI file not found"),
             (["--bars", "2"], "--bars applies to --infill"),
             (["--steps", "0"], "argument --steps: expected an integer >= 1, got 0"),
             (["--n", "0"], "argument --n: expected an integer >= 1, got 0")]
    for extra, msg in cases:
        rc, err = _main(["compose", music_run, "--out", tmp_path / "c", *extra], capsys)
        assert rc == 2 and msg in _one_error_line(err), (extra, err)


@pytest.fixture
def toy_run(tmp_path, capsys):
    return _toy_run(tmp_path / "toy", capsys, "train.steps=2")


def test_user_errors_are_one_line_with_exit_2(toy_run, audio_run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"not a png")
    (bad / "broken.wav").write_bytes(b"RIFF0000WAVE")
    cases = [
        (["vocode", audio_run, "--wav", tmp_path / "missing.wav"], "--wav: file not found"),
        (["vocode", toy_run, "--wav", tmp_path / "x.wav"], "diffsuite vocode needs a audio checkpoint"),
        (["compose", toy_run, "--out", tmp_path / "c"], "diffsuite compose needs a music checkpoint"),
        (["plan", toy_run], "diffsuite plan needs a trajectory checkpoint"),
        (["eval", audio_run], "diffsuite eval needs a image checkpoint"),
        (["sample", toy_run, "--steps", "5000"], "steps must be in [1, 1000] for this model"),
        (["sample", toy_run, "--sampler", "ddpm", "--steps", "0"], "argument --steps: expected an integer >= 1"),
        (["sample", toy_run, "--n", "0"], "argument --n: expected an integer >= 1"),
        (["sample", tmp_path / "nowhere"], "no checkpoint at"),
        (["train", "image_folder", f"data.path={empty}", "--out", tmp_path / "r1"], "holds no images"),
        (["train", "image_folder", f"data.path={bad}", *IMG, "--out", tmp_path / "r2"], "could be read"),
        (["train", "image_folder", f"data.path={tmp_path / 'none'}", "--out", tmp_path / "r3"], "does not exist"),
        (["train", "audio_vocoder_quick", "data.source=folder", f"data.path={empty}", "--out", tmp_path / "r4"],
         "no audio files"),
        (["train", "music_bach_quick", f"data.source={empty}", "--out", tmp_path / "r5"], "no .mid/.midi files"),
        (["train", "trajectory_umaze_quick", "data.env_id=PointMaze_Tiny-v3", "--out", tmp_path / "r6"],
         "unknown maze 'PointMaze_Tiny-v3'"),
        (["train", "toy2d", "train.steps=ten"], "train.steps: expected int, got str 'ten'"),
    ]
    for argv, msg in cases:
        rc, err = _main(argv, capsys)
        assert rc == 2, (argv, err)
        assert msg in _one_error_line(err), (argv, err)


def test_image_commands_name_what_is_wrong(tmp_path, capsys):
    img = run.train(recipe("image", tmp_path, steps=1), out_dir=tmp_path / "irun")
    (tmp_path / "not_an_image.png").write_bytes(b"hello")
    (tmp_path / "a_file").write_text("x")
    cases = [(["image-path", img, "--label", "99", "--out", tmp_path / "p"], "--label 99: this model's classes are 0-9"),
             (["image-inpaint", img, "--inpaint", tmp_path / "not_an_image.png", "--out", tmp_path / "q"],
              "cannot read it as an image"),
             (["image-inpaint", img, "--mask", "weird", "--out", tmp_path / "q"], "--mask: 'weird' is neither"),
             (["sample", img, "--out", tmp_path / "a_file" / "inside"], "Not a directory"),
             (["train", "toy2d", "diffusion.learned_variance=true", "--out", tmp_path / "lv"],
              "the model cannot run on this data: Denoiser(learned_variance=True)"),
             (["train", "toy2d", "train.adam_betas=[0.9]", "--out", tmp_path / "b"],
              "train.adam_betas: expected 2 values, got 1"),
             (["train", "toy2d", "diffusion.schedule=custom", "--out", tmp_path / "c"],
              "diffusion.schedule=custom needs diffusion.betas")]
    for argv, msg in cases:
        rc, err = _main(argv, capsys)
        assert rc == 2 and msg in _one_error_line(err), (argv, err)
    assert not (tmp_path / "lv").exists()


def test_debug_shows_the_traceback(tmp_path, capsys):
    with pytest.raises(ConfigError):
        cli.main(["--debug", "train", "toy2d", "train.steps=0", "--out", str(tmp_path / "r")])


def test_plan_refuses_zero_episodes_and_unknown_mazes(tmp_path, capsys):
    traj = run.train(recipe("trajectory", tmp_path), out_dir=tmp_path / "trun")
    for extra, msg in ((["--episodes", "0"], "argument --episodes: expected an integer >= 1, got 0"),
                       (["--env", "mars"], "unknown maze 'mars'"),
                       (["--guidance", "gradient"], "--guidance gradient needs a value function"),
                       (["--warm-start", "5", "--replan-every", "10"], "--warm-start 5.0: expected a fraction"),
                       (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--value", tmp_path / "none"],
                        "CUDA is not available here" if not torch.cuda.is_available() else "none")):
        rc, err = _main(["plan", traj, *extra], capsys)
        assert rc == 2 and msg in _one_error_line(err)


# ------------------------------------------------------------------------------------------------ smaller things

def test_run_files_follow_the_users_umask(tmp_path, capsys):
    old = os.umask(0o022)
    try:
        out = _toy_run(tmp_path / "run", capsys, "train.steps=2")
    finally:
        os.umask(old)
    files = [f for f in out.rglob("*") if f.is_file()]  # safetensors itself writes 0600 files
    assert {f.name for f in files} >= {"config.yaml", "run.json", "state.json", "model.safetensors", "latest.json"}
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f


def test_mel_cache_stays_out_of_the_data_folder(tmp_path):
    r = recipe("audio", tmp_path)
    before = sorted(p.name for p in (tmp_path / "wavs").iterdir())
    from diffsuite.modalities.audio.task import AudioTask
    ds = AudioTask().build_dataset(run.load_recipe(r).data, "train")
    ds[0]
    assert sorted(p.name for p in (tmp_path / "wavs").iterdir()) == before
    assert list((tmp_path / "cache" / "audio" / "mels").rglob("*.mel.npy"))


def test_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    from PIL import Image
    from diffsuite.modalities.image.data import load_image
    ramp = np.tile(np.linspace(0, 65535, 16).astype(np.uint16), (16, 1))
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode.startswith("I")
    got = load_image(tmp_path / "deep.png", 16, 1)[..., 0]
    want = np.round(ramp / 257.0)
    assert np.abs(got.astype(float) - want).max() <= 2 and got.min() == 0 and 120 < got.mean() < 135


def test_midi_warnings_repeat_when_the_folder_is_cached(tmp_path):
    from tiny import midi_files
    from diffsuite.modalities.music.data import cached_midi_folder
    folder = midi_files(tmp_path / "midi", n=3)
    (folder / "broken.mid").write_bytes(b"MThd nonsense")
    for _ in range(2):  # the second call reads the cache
        with pytest.warns(UserWarning, match="broken.mid"):
            pieces = cached_midi_folder(folder, 4, 32, 40)
        assert len(pieces) == 3
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "broken.mid").write_bytes(b"MThd nonsense")
    for _ in range(2):  # an all-bad folder is an error every time, never a cached empty list
        with pytest.raises(ValueError, match="none of the 1 MIDI files"), pytest.warns(UserWarning):
            cached_midi_folder(only_bad, 4, 32, 40)


def test_eval_json_survives_pruning(tmp_path, capsys, monkeypatch):
    if SHARED_CACHE:  # the digits classifier is trained once per cache: share the session's
        monkeypatch.setenv("DIFFSUITE_CACHE", SHARED_CACHE)
    else:
        monkeypatch.delenv("DIFFSUITE_CACHE")
    out = run.train(recipe("image", tmp_path, steps=2), out_dir=tmp_path / "irun")
    rc, err = _main(["eval", out, "--n", "4", "--bpd-n", "2", "--steps", "2"], capsys)
    assert rc == 0, err
    ckpt = run.resolve_checkpoint(out)
    assert (out / "eval" / f"{ckpt.name}.json").is_file() and not (ckpt / "eval.json").exists()


# ------------------------------------------------------------------------------------------------ honest metrics

def test_trajectory_benchmark_floor_is_the_recipes_untrained_network(tmp_path):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent / "benchmarks"))
    import trajectory as bench
    rec = recipe("trajectory", tmp_path, steps=1)
    out = run.train(rec, out_dir=tmp_path / "run", stop_at=0)  # a checkpoint of the initial weights
    ld = run.load(out, ema=False)
    assert ld.step == 0
    floor, _ = bench.untrained(ld.recipe, "cpu")
    init = load_file(str(run.resolve_checkpoint(out) / "model.safetensors"))
    fl = floor.denoiser.net.state_dict()
    assert all(torch.equal(fl[k], init[k]) for k in init)
    rows = bench.with_floor([{"mode": "single", "success_rate": 1.0}, {"mode": "multi", "success_rate": 0.9}],
                            [{"mode": m, "success_rate": s, "normalized_score": 1.0, "normalized_score_d4rl": 2.0,
                              "plan_in_wall": 0.0} for m, s in (("multi", 0.5), ("single", 0.7))])
    assert [r["floor_untrained"]["success_rate"] for r in rows] == [0.7, 0.5]


def test_the_tour_replaces_only_an_earlier_tour(tmp_path, capsys):
    out = tmp_path / "tour"
    argv = ["tour", "--only", "toy2d", "--out", out, "--overrides", "train.steps=3", "train.progress=false",
            "sample.n=16", "sample.steps=2"]
    rc, err = _main(argv, capsys)
    assert rc == 0, err
    info = json.loads((out / "tour.json").read_text())
    assert info["recipes"]["toy2d"]["seconds"] > 0 and info["cpu_capability"] and info["precision_auto"]["reason"]
    rc, err = _main(argv, capsys)
    assert rc == 2 and "holds an earlier tour: add --overwrite" in _one_error_line(err)
    rc, err = _main([*argv, "--overwrite"], capsys)
    assert rc == 0, err
    mine = tmp_path / "mine"
    (mine / "toy2d").mkdir(parents=True)
    (mine / "toy2d" / "precious.txt").write_text("keep")
    rc, err = _main(["tour", "--only", "toy2d", "--out", mine, "--overwrite"], capsys)
    assert rc == 2 and "holds no earlier tour" in _one_error_line(err)
    assert (mine / "toy2d" / "precious.txt").read_text() == "keep"
