"""Image end to end: train a few steps through the core trainer, reload the checkpoint, sample reproducibly."""
import json

import pytest
import torch

from diffsuite.recipes import run

torch.set_num_threads(1)


def _recipe(T=50):
    return {"task": "image", "name": "image_test",
            "model": {"preset": "tiny", "num_classes": 10, "model_channels": 8, "num_heads": 1},
            "data": {"source": "digits", "image_size": 16, "channels": 1},
            "diffusion": {"schedule": "cosine", "T": T, "cond_drop_prob": 0.2},
            "train": {"steps": 3, "batch_size": 8, "lr": 1e-3, "log_every": 1, "progress": False,
                      "tensorboard": False},
            "sample": {"sampler": "ddim", "steps": 4, "n": 10, "guidance": 2.0, "seed": 0}}


def test_checkpoint_reloads_and_samples_identically(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path / "cache"))
    run_dir = run.train(_recipe(), out_dir=tmp_path / "run")
    a, b = run.load(run_dir), run.load(run_dir)
    xa, ca = run.generate(a.denoiser, a.task, a.recipe, seed=3, progress=False)
    xb, cb = run.generate(b.denoiser, b.task, b.recipe, seed=3, progress=False)
    assert torch.equal(xa, xb) and torch.equal(ca, cb) and xa.shape == (10, 1, 16, 16)
    xc, _ = run.generate(a.denoiser, a.task, a.recipe, seed=4, progress=False)
    assert not torch.equal(xa, xc)
    files = a.task.save_samples(xa, ca, tmp_path / "s", a.recipe)
    assert json.loads(open(files["json"]).read())["labels"][:3] == [0, 1, 2]


@pytest.mark.slow
def test_eval_and_commands(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path / "cache"))
    from diffsuite.recipes.cli import main
    run_dir = run.train(_recipe(T=20), out_dir=tmp_path / "run")
    assert main(["eval", str(run_dir), "--n", "40", "--bpd-n", "4", "--out", str(tmp_path / "e.json")]) == 0
    res = json.loads((tmp_path / "e.json").read_text())
    assert 0 <= res["conditional_accuracy"] <= 1 and res["digits_fid"] > 0 and res["bits_per_dim"] > 0
    assert res["classifier_test_accuracy"] > 0.9
    assert main(["image-inpaint", str(run_dir), "--n", "3", "--mask", "left-half", "--out", str(tmp_path / "i")]) == 0
    assert main(["image-path", str(run_dir), "--label", "3", "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "i" / "inpaint.png").exists() and (tmp_path / "p" / "denoising_path.png").exists()
