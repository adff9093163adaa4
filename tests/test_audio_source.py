"""PeriodGrad's periodic source: the sine excitation, the pYIN F0 contour, the F0 row through data, model and vocode."""
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from diffsuite.modalities.audio.data import AudioClips, f0_contour, mel_cache_path
from diffsuite.modalities.audio.diffwave import DiffWave, periodic_source
from diffsuite.modalities.audio.mel import convention, n_frames

SR = 22050
torch.set_num_threads(1)


def _tone(f0: float, seconds: float, silence: float = 0.0) -> np.ndarray:
    """A voiced-like tone (three harmonics) followed by silence."""
    n = np.arange(int(seconds * SR)) / SR
    y = sum(0.3 / k * np.sin(2 * np.pi * k * f0 * n) for k in (1, 2, 3))
    return np.concatenate([y, np.zeros(int(silence * SR))]).astype(np.float32)


def test_periodic_source_is_sines_at_the_harmonics():
    f0 = torch.tensor([[220.0] * 4 + [0.0] * 2 + [5000.0] * 2])
    s = periodic_source(f0, 256, SR, 3)
    assert s.shape == (1, 3, 8 * 256)
    n = torch.arange(1, 4 * 256 + 1, dtype=torch.float64)
    for k in (1, 2, 3):  # phase 2 pi cumsum(F0 / sr) of a constant F0
        want = torch.sin(k * 2 * math.pi * 220 * n / SR).float()
        assert torch.allclose(s[0, k - 1, : 4 * 256], want, atol=1e-4)
    assert (s[0, :, 4 * 256: 6 * 256] == 0).all()  # unvoiced
    voiced_hi = s[0, :, 6 * 256:]
    assert voiced_hi[0].abs().max() > 0.5 and voiced_hi[1].abs().max() > 0.5  # 5 and 10 kHz < Nyquist
    assert (voiced_hi[2] == 0).all()  # 15 kHz is above Nyquist (11025 Hz)


def test_periodic_source_phase_is_continuous_across_f0_changes():
    s = periodic_source(torch.tensor([[200.0, 300.0, 250.0, 300.0]]), 256, SR, 1)[0, 0]
    assert s.diff().abs().max() <= 2 * math.pi * 300 / SR + 1e-5


def test_f0_contour_of_a_tone_then_silence():
    c = convention("hifigan")
    y = _tone(150.0, 1.0, silence=0.5)
    frames = n_frames(len(y), c)
    f0 = f0_contour(y, c, frames)
    assert f0.shape == (frames,) and f0.dtype == np.float32
    voiced = f0[5: int(0.9 * SR) // 256]
    assert (voiced > 0).all() and abs(float(np.median(voiced)) - 150.0) < 2.0
    assert (f0[int(1.1 * SR) // 256:] == 0).all()


def test_dataset_items_carry_the_f0_row(tmp_path):
    c = convention("hifigan")
    sf.write(tmp_path / "a.wav", _tone(180.0, 1.0), SR)
    ds = AudioClips([tmp_path / "a.wav"], c, 2048, f0=True, progress=False)
    assert mel_cache_path(tmp_path / "a.wav", c, "f0").is_file()  # cached next to the audio, beside the mel
    item = ds[0]
    assert item["cond"].shape == (c.n_mels + 1, 2048 // c.hop)
    assert abs(float(item["cond"][-1].median()) - 180.0) < 3.0
    with pytest.raises(ValueError, match="f0=true needs a conditional"):
        AudioClips([tmp_path / "a.wav"], c, 2048, conditional=False, f0=True, progress=False)


def _source_net():
    torch.manual_seed(0)
    net = DiffWave(residual_layers=2, residual_channels=8, dilation_cycle=2, n_mels=16, hop_length=64, T=10,
                   source_harmonics=4, sample_rate=SR)
    assert all((layer.src_proj.weight == 0).all() for layer in net.layers)  # starts as plain DiffWave
    for w in [net.output_proj.weight] + [layer.src_proj.weight for layer in net.layers]:
        torch.nn.init.normal_(w, std=0.1)  # zero-initialised: the source would not reach the output yet
    return net


def test_source_model_uses_the_f0_row_and_checks_it():
    net = _source_net()
    x, t = torch.randn(2, 1, 256), torch.tensor([3, 7])
    mel = torch.randn(2, 16, 4)
    with pytest.raises(ValueError, match="1 F0 row"):
        net(x, t, mel)
    cond = torch.cat([mel, torch.full((2, 1, 4), 200.0)], dim=1)
    out = net(x, t, cond)
    assert out.shape == x.shape
    cond2 = cond.clone()
    cond2[:, -1] = 300.0
    assert not torch.allclose(out, net(x, t, cond2))  # the F0 reaches the output
    out.sum().backward()
    assert net.layers[0].src_proj.weight.grad.abs().sum() > 0
    with torch.no_grad(), net.condition_cache():  # the cached condition terms include the source's
        assert torch.equal(net(x, t, cond), out.detach())
    with pytest.raises(ValueError, match="needs a mel-conditioned"):
        DiffWave(residual_layers=2, residual_channels=8, n_mels=None, source_harmonics=4)


def test_recipe_and_vocode_errors():
    from diffsuite.modalities.audio.task import DataConfig, ModelConfig, check_formats, vocode_mel
    with pytest.raises(ValueError, match="source_harmonics=8 needs data.f0=True"):
        check_formats(ModelConfig(source_harmonics=8), DataConfig())
    check_formats(ModelConfig(source_harmonics=8), DataConfig(f0=True))
    with pytest.raises(ValueError, match="needs data.f0=False"):
        check_formats(ModelConfig(), DataConfig(f0=True))
    m = ModelConfig(preset="tiny", n_mels=80, source_harmonics=4)
    mel = torch.full((80, 3), -5.0)
    with pytest.raises(ValueError, match="needs the F0"):
        vocode_mel(None, m, mel)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        vocode_mel(None, m, mel, f0=torch.zeros(4))
    with pytest.raises(ValueError, match="no periodic source"):
        vocode_mel(None, ModelConfig(preset="tiny"), mel, f0=torch.zeros(3))


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    from diffsuite.recipes.run import train
    root = tmp_path_factory.mktemp("audio_source")
    for i in range(2):
        sf.write(root / f"clip{i}.wav", _tone(140.0 + 60 * i, 0.4), SR)
    (root / "list.txt").write_text("".join(f"clip{i}.wav|\n" for i in range(2)))
    overrides = ["data.source=filelist", f"data.path={root / 'list.txt'}", "data.crop_samples=1024", "data.f0=true",
                 "model.source_harmonics=4", "model.residual_layers=2", "model.residual_channels=4",
                 "model.dilation_cycle=2", "train.steps=2", "train.batch_size=2", "train.progress=false",
                 "train.tensorboard=false"]
    return root, train("audio_vocoder_quick", overrides, out_dir=root / "run")


def test_source_vocoder_trains_and_vocodes(source_run, tmp_path, capsys):
    from diffsuite.recipes.cli import main
    root, run = source_run
    out = tmp_path / "out.wav"
    assert main(["vocode", str(run), "--wav", str(root / "clip0.wav"), "--out", str(out), "--sampler", "ddim",
                 "--steps", "3"]) == 0  # F0 estimated from the audio
    assert sf.info(str(out)).frames == int(0.4 * SR)
    frames = -(-int(0.4 * SR) // 256)
    np.save(tmp_path / "mel.npy", np.full((80, frames), -5.0, np.float32))
    assert main(["vocode", str(run), "--mel", str(tmp_path / "mel.npy"), "--sampler", "ddim", "--steps", "2"]) == 2
    assert "needs the F0" in capsys.readouterr().err
    np.save(tmp_path / "f0.npy", np.full(frames, 150.0, np.float32))
    assert main(["vocode", str(run), "--mel", str(tmp_path / "mel.npy"), "--f0", str(tmp_path / "f0.npy"),
                 "--sampler", "ddim", "--steps", "2", "--out", str(tmp_path / "o2.wav")]) == 0
    assert sf.info(str(tmp_path / "o2.wav")).frames == frames * 256
