"""Timbre transfer (modalities.audio.timbre): paired log-mel patches from the rendered chorales, a tiny model through
the generic trainer, and `diffsuite transfer` on recordings of any length, rate and channel count, without seams."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from diffsuite.recipes import run

torch.set_num_threads(1)


def _recipe():
    return {"task": "timbre", "name": "timbre_test",
            "model": {"preset": "tiny", "model_channels": 8, "channel_mult": [1, 2], "attention_resolutions": [],
                      "num_heads": 1},
            "data": {"source": "chorales", "source_instruments": ["clarinet"], "target_instruments": ["strings"],
                     "limit": 10, "patch": 32},  # the tenth chorale is the first of the val split
            "diffusion": {"schedule": "cosine", "T": 20, "prediction": "eps", "clip_x0": "clip"},
            "train": {"steps": 2, "batch_size": 2, "lr": 1e-3, "log_every": 1, "progress": False, "tensorboard": False},
            "sample": {"sampler": "ddim", "steps": 3, "n": 2, "seed": 0}}


@pytest.fixture(scope="module")
def timbre_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("timbre")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFSUITE_CACHE", str(root / "cache"))
        return run.train(_recipe(), out_dir=root / "run"), root / "cache"


def test_pairs_train_and_sample(timbre_run, tmp_path, monkeypatch):
    run_dir, cache = timbre_run
    monkeypatch.setenv("DIFFSUITE_CACHE", str(cache))
    a = run.load(run_dir)
    assert a.recipe.model.source_channels == 1 and a.recipe.model.image_size == 32
    ds = a.task.build_dataset(a.recipe.data, "train")
    item = ds[0]
    assert item["x0"].shape == (1, 128, 32) and item["cond"]["source"].shape == (1, 128, 32)
    assert item["x0"].abs().max() <= 1 and not torch.equal(item["x0"], item["cond"]["source"])
    x, cond = run.generate(a.denoiser, a.task, a.recipe, progress=False)
    files = a.task.save_samples(x, cond, tmp_path / "s", a.recipe)
    assert x.shape == (2, 1, 128, 32) and (tmp_path / "s" / "sample_000.wav").exists() and files["png"]


def test_the_timbre_net_is_the_image_net_and_takes_its_layout():
    """The timbre task builds the image U-Net through the image task's builder, channels_last included."""
    from diffsuite.recipes.registry import get_task
    from diffsuite.recipes.run import load_recipe
    r = load_recipe(_recipe() | {"model": _recipe()["model"] | {"channels_last": True}})
    task = get_task("timbre")
    net = task.build_net(task.configure(r.model, r.data), r.diffusion)
    conv = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()


def test_transfer_any_length_rate_and_channels(timbre_run, tmp_path, monkeypatch, capsys):
    from diffsuite.recipes.cli import main
    run_dir, cache = timbre_run
    monkeypatch.setenv("DIFFSUITE_CACHE", str(cache))
    t = np.arange(int(2.1 * 22050)) / 22050
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    sf.write(tmp_path / "in.wav", np.stack([tone, tone], 1), 22050)  # stereo at another rate
    out = tmp_path / "o" / "out.wav"
    assert main(["transfer", str(run_dir), "--wav", str(tmp_path / "in.wav"), "--out", str(out), "--steps", "2"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["input_channels"] == 2 and info["input_sample_rate"] == 22050 and info["vocoder"] == "griffin-lim"
    y, sr = sf.read(out)
    assert sr == 16000 and abs(len(y) - 2.1 * 16000) <= 1 and out.with_suffix(".png").exists()
    sf.write(tmp_path / "short.wav", tone[:500], 22050)
    assert main(["transfer", str(run_dir), "--wav", str(tmp_path / "short.wav"), "--out", str(tmp_path / "x.wav")]) == 2
    assert "too short to transfer" in capsys.readouterr().err
    assert main(["transfer", str(run_dir), "--wav", str(tmp_path / "none.wav"), "--out", str(tmp_path / "x.wav")]) == 2
    assert "file not found" in capsys.readouterr().err
    assert not (tmp_path / "x.wav").exists()


class CopySource(nn.Module):
    """An exact denoiser for data equal to its source (x0 = source): eps = (x_t - sqrt(ab) source) / sqrt(1 - ab)."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule

    def forward(self, x_t, t, cond=None):
        ab = self.schedule.alpha_bar_at(t.double()).to(x_t.dtype).reshape(-1, 1, 1, 1)
        return (x_t - ab.sqrt() * cond["source"]) / (1 - ab).sqrt()


def test_patches_join_without_seams_on_a_constant_tone(timbre_run, tmp_path, monkeypatch):
    """With a network that returns its source, the output spectrogram of a long constant tone (many overlapping
    patches) must equal the input's: no column jumps where patches meet, no offsets."""
    from diffsuite.core.denoiser import Denoiser
    from diffsuite.modalities.audio.timbre import log_mel, transfer
    run_dir, cache = timbre_run
    monkeypatch.setenv("DIFFSUITE_CACHE", str(cache))
    a = run.load(run_dir)
    a.denoiser = Denoiser(CopySource(a.denoiser.schedule), a.denoiser.schedule)
    t = np.arange(int(3.0 * 16000)) / 16000
    sf.write(tmp_path / "tone.wav", 0.3 * np.sin(2 * np.pi * 330 * t), 16000)
    captured = {}
    monkeypatch.setattr("diffsuite.modalities.audio.timbre.griffin_lim",
                        lambda m, n_iter=32: (captured.setdefault("mel", m), np.zeros(10, np.float32))[1])
    transfer(a, str(tmp_path / "tone.wav"), tmp_path / "o.wav", steps=4)
    want = log_mel(sf.read(tmp_path / "tone.wav", dtype="float32")[0])
    got = captured["mel"]
    assert got.shape == want.shape and got.shape[1] > 4 * 32  # several patches
    # every frame, the ones where patches meet included, is the input's: no seams, no offset between patches
    assert float((got - want).abs().max()) < 0.05


def test_a_users_paired_folders(tmp_path):
    """data.source=folders: two folders with the same file names, each resampled to 16 kHz mono and cut to the shorter
    of its pair; a recording without a partner and an unreadable pair are skipped with a warning naming them."""
    from diffsuite.core.utils import split_of
    from diffsuite.modalities.audio.timbre import TimbreData, TimbreTask
    names = [f"take{i}.wav" for i in range(40) if split_of(f"take{i}.wav") == "train"][:3]
    a, b = tmp_path / "clarinet", tmp_path / "strings"
    a.mkdir(), b.mkdir()
    t = np.arange(44100 * 3) / 44100
    for k, n in enumerate(names):
        sf.write(a / n, np.stack([np.sin(2 * np.pi * 220 * t)] * 2, 1) * 0.3, 44100)  # stereo, 44.1 kHz, 3 s
        sf.write(b / n, np.sin(2 * np.pi * 220 * np.arange(16000 * (4 + k)) / 16000) * 0.3, 16000)  # mono, 16 kHz
    (a / names[-1]).write_bytes(b"not audio")
    lone = [f"solo{i}.wav" for i in range(40) if split_of(f"solo{i}.wav") == "train"][0]
    sf.write(a / lone, np.zeros(16000), 16000)
    data = TimbreData(source="folders", path=str(a), target_path=str(b), patch=32)
    with pytest.warns(UserWarning) as rec:
        ds = TimbreTask().build_dataset(data, "train")
    text = " ".join(str(w.message) for w in rec)
    assert lone in text and names[-1] in text
    assert len(ds.pairs) == 2 and all(s.shape == t_.shape for s, t_ in ds.pairs)
    assert ds.pairs[0][0].shape[-1] == 3 * 16000 // 320 + 1  # 3 s at hop 320: the shorter (source) length
    from diffsuite.core.config import ConfigError
    with pytest.raises((ValueError, ConfigError), match="data.target_path: folder"):
        TimbreTask().build_dataset(TimbreData(source="folders", path=str(a), target_path=str(tmp_path / "no")), "train")
