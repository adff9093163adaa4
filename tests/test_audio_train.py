"""Training through the core: a tiny vocoder overfits one clip; the recipe trains; `diffsuite vocode` writes audio."""
import numpy as np
import pytest
import soundfile as sf
import torch

from diffsuite.core.denoiser import Denoiser
from diffsuite.core.losses import DiffusionLoss
from diffsuite.core.schedules import make_schedule
from diffsuite.modalities.audio.diffwave import build_diffwave
from diffsuite.modalities.audio.mel import convention, mel_spectrogram
from diffsuite.modalities.audio.task import synthesize

SR = 22050
torch.set_num_threads(1)


def _clip(n=2048):
    t = np.arange(n) / SR
    return torch.tensor(0.5 * np.sin(2 * np.pi * 440 * t) * np.sin(2 * np.pi * 5 * t), dtype=torch.float32)


def test_tiny_vocoder_overfits_one_clip():
    """The eps-MSE on one clip, at fixed (t, eps) draws, falls by at least 3x in 100 Adam steps (from ~1.0)."""
    torch.manual_seed(0)
    y = _clip()
    x0, mel = y[None, None], mel_spectrogram(y, convention("hifigan"))[None]
    den = Denoiser(build_diffwave("tiny", 4, 16, 4, T=50), make_schedule("linear", 50, beta_start=1e-4, beta_end=0.05))
    loss = DiffusionLoss("uniform")
    opt = torch.optim.Adam(den.parameters(), lr=3e-3)

    def held_loss():
        with torch.no_grad():
            return loss(den, x0.repeat(32, 1, 1), mel.repeat(32, 1, 1), torch.Generator().manual_seed(123))[0].mean()

    before = held_loss()
    g = torch.Generator().manual_seed(1)
    for _ in range(100):
        l, _ = loss(den, x0.repeat(4, 1, 1), mel.repeat(4, 1, 1), g)
        opt.zero_grad()
        l.mean().backward()
        opt.step()
    after = held_loss()
    assert after < before / 3, (before.item(), after.item())
    x = synthesize(den, 2048, mel, "fast", generator=torch.Generator().manual_seed(0),
                   fast_betas=(1e-4, 1e-3, 0.01, 0.05, 0.2, 0.5))
    assert x.shape == (1, 1, 2048) and torch.isfinite(x).all()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from diffsuite.recipes.run import train
    root = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    for i in range(3):
        sf.write(root / f"clip{i}.wav", (0.3 * np.sin(2 * np.pi * (200 + 50 * i) * np.arange(6000) / SR)
                                         + 0.01 * rng.standard_normal(6000)).astype(np.float32), SR)
    (root / "list.txt").write_text("".join(f"clip{i}.wav|\n" for i in range(3)))
    overrides = ["data.source=filelist", f"data.path={root / 'list.txt'}", "data.crop_samples=1024",
                 "model.residual_layers=2", "model.residual_channels=4", "model.dilation_cycle=2", "train.steps=2",
                 "train.batch_size=2", "train.progress=false", "train.tensorboard=false", "train.log_every=1"]
    run = train("audio_vocoder_quick", overrides, out_dir=root / "run")
    return root, run


def test_vocode_command_writes_wav_and_png(trained_run, tmp_path):
    from diffsuite.recipes.cli import main
    root, run = trained_run
    y = (0.2 * np.sin(2 * np.pi * 300 * np.arange(5000) / 16000)).astype(np.float32)
    sf.write(tmp_path / "in.wav", y, 16000)  # 16 kHz in: resampled to the model's 22050 Hz
    out = tmp_path / "out.wav"
    assert main(["vocode", str(run), "--wav", str(tmp_path / "in.wav"), "--out", str(out)]) == 0
    info = sf.info(str(out))
    assert info.samplerate == SR and info.frames == round(5000 * SR / 16000)
    assert (tmp_path / "out.png").stat().st_size > 1000
    out2 = tmp_path / "out2.wav"
    assert main(["vocode", str(run), "--wav", str(tmp_path / "in.wav"), "--out", str(out2), "--sampler", "ddim",
                 "--steps", "3"]) == 0
    assert sf.info(str(out2)).frames == info.frames


def test_vocode_rejects_mel_of_wrong_convention(trained_run, tmp_path, capsys):
    from diffsuite.recipes.cli import main
    _, run = trained_run
    mel = mel_spectrogram(_clip(), convention("diffwave")).numpy()  # [0, 1] mel; the vocoder expects hifigan
    np.save(tmp_path / "m.npy", mel)
    assert main(["vocode", str(run), "--mel", str(tmp_path / "m.npy")]) == 2
    assert "'hifigan' convention is a natural log" in capsys.readouterr().err
    np.save(tmp_path / "m40.npy", np.full((40, 10), -3.0, np.float32))
    assert main(["vocode", str(run), "--mel", str(tmp_path / "m40.npy")]) == 2
    assert "expected a mel of shape (80, frames)" in capsys.readouterr().err
    np.save(tmp_path / "ok.npy", mel_spectrogram(_clip(), convention("hifigan")).numpy())
    assert main(["vocode", str(run), "--mel", str(tmp_path / "ok.npy"), "--out", str(tmp_path / "ok.wav")]) == 0
    assert sf.info(str(tmp_path / "ok.wav")).frames == 8 * 256


def test_recipes_load():
    from diffsuite.recipes.run import load_recipe
    from diffsuite.modalities.audio.task import check_formats
    for name in ("audio_vocoder_demo", "audio_vocoder_quick", "audio_vocoder_ljspeech", "audio_unconditional"):
        r = load_recipe(name)
        check_formats(r.model, r.data)
    r = load_recipe("audio_vocoder_ljspeech")
    assert (r.model.preset, r.train.batch_size, r.train.lr, r.diffusion.T) == ("base", 16, 2e-4, 50)


def test_sample_command_writes_wavs_and_spectrogram(trained_run, tmp_path):
    """The tour recipe uses PriorGrad's prior: the reloaded model is the wrapper, and the WAVs hold sigma_c * y."""
    from diffsuite.modalities.audio.priorgrad import PriorGradNet, prior_std
    from diffsuite.recipes.run import generate, load
    _, run = trained_run
    loaded = load(run)
    assert isinstance(loaded.denoiser.net, PriorGradNet)
    x, cond = generate(loaded.denoiser, loaded.task, loaded.recipe, n=2, steps=3, sampler="ddim", progress=False)
    L = int(loaded.recipe.data.sample_seconds * SR) // 256
    assert x.shape == (2, 1, L * 256) and cond.shape == (2, 80, L)
    paths = loaded.task.save_samples(x, cond, tmp_path, loaded.recipe)
    assert sf.info(paths["wav_0"]).samplerate == SR and sf.info(paths["wav_1"]).frames == x.shape[-1]
    wav, _ = sf.read(paths["wav_0"])
    s = prior_std(cond[:1], convention("hifigan"), x.shape[-1])[0, 0].numpy()
    assert np.allclose(wav, np.clip(x[0, 0].numpy() * s, -1, 1), atol=1 / 2 ** 14)  # PCM-16 of sigma_c * y
    assert (tmp_path / "spectrograms.png").stat().st_size > 1000


def test_unconditional_task_and_format_mismatch():
    from diffsuite.core.config import DiffusionConfig
    from diffsuite.modalities.audio.task import AudioTask, DataConfig, ModelConfig
    task = AudioTask()
    m = ModelConfig(preset="tiny", residual_layers=2, residual_channels=4, conditional=False, sample_rate=16000)
    d = DataConfig(source="folder", path=".", conditional=False, sample_rate=16000, sample_seconds=1.0)
    net = task.build_net(m, DiffusionConfig(T=50))
    assert task.sample_shape(m, d) == (1, 16000)
    assert net(torch.randn(1, 1, 16000), torch.tensor([3.0])).shape == (1, 1, 16000)
    with pytest.raises(ValueError, match="model.mel='diffwave' but data.mel='hifigan'"):
        task.sample_shape(ModelConfig(mel="diffwave"), DataConfig())
