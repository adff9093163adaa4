"""PriorGrad (Lee et al. 2022) through the core by whitening: the prior's std, the loss it implies, data and samples."""
import numpy as np
import pytest
import soundfile as sf
import torch

from diffsuite.core.denoiser import Denoiser
from diffsuite.core.schedules import make_schedule
from diffsuite.modalities.audio.diffwave import build_diffwave
from diffsuite.modalities.audio.mel import compress, convention, mel_magnitude, mel_spectrogram
from diffsuite.modalities.audio.priorgrad import STD_MIN, PriorGradNet, Whitened, linear_mel, prior_std
from diffsuite.modalities.audio.task import synthesize

SR, HOP = 22050, 256
torch.set_num_threads(1)


def _silence_then_tone(frames_quiet=8, frames_loud=8, amp=0.5):
    n = (frames_quiet + frames_loud) * HOP
    y = 1e-3 * np.random.default_rng(0).standard_normal(n).astype(np.float32)  # near-silence, then a tone
    t = np.arange(frames_loud * HOP) / SR
    y[frames_quiet * HOP:] += amp * np.sin(2 * np.pi * 330 * t)
    return torch.from_numpy(y)


@pytest.mark.parametrize("name", ["hifigan", "diffwave"])
def test_linear_mel_undoes_compression(name):
    c = convention(name)
    M = mel_magnitude(_silence_then_tone()[None], c)
    keep = M > 1e-3  # above both conventions' clamps
    assert torch.allclose(linear_mel(compress(M, name), c)[keep], M[keep], rtol=1e-4)


def test_prior_std_follows_frame_energy():
    """sigma_c = clamp(E / level, STD_MIN, 1) per frame, repeated over the hop: STD_MIN in silence, E / level below the
    level, 1 above it."""
    c = convention("hifigan")
    mel = mel_spectrogram(_silence_then_tone(), c)[None]
    E = linear_mel(mel, c).pow(2).mean(1).sqrt()[0]
    s = prior_std(mel, c, mel.shape[-1] * HOP)
    assert s.shape == (1, 1, mel.shape[-1] * HOP)
    per_frame = s[0, 0, ::HOP]
    assert torch.equal(s[0, 0].view(-1, HOP), per_frame[:, None].expand(-1, HOP))
    assert torch.allclose(per_frame[:6], torch.full((6,), STD_MIN))  # silence (away from the tone's onset)
    assert torch.allclose(per_frame[-4:], torch.ones(4))  # the tone is above the default level
    half = prior_std(mel, c, mel.shape[-1] * HOP, level=2 * float(E[-4:].max()))[0, 0, ::HOP]
    assert torch.allclose(half[-4:], E[-4:] / (2 * E[-4:].max()), atol=1e-6)
    with pytest.raises(ValueError, match="fewer than"):
        prior_std(mel, c, mel.shape[-1] * HOP + 1)


def _pg_denoiser(seed=0):
    torch.manual_seed(seed)
    inner = build_diffwave("tiny", 4, 8, 2, n_mels=80, hop_length=HOP, T=50)
    for p in inner.parameters():
        p.data.normal_(0, 0.2)
    sched = make_schedule("linear", 50, beta_start=1e-4, beta_end=0.05)
    return inner, Denoiser(PriorGradNet(inner, convention("hifigan")), sched)


def test_whitened_loss_is_priorgrads_sigma_weighted_loss():
    """L_simple on y = x / sigma with unit noise e equals PriorGrad's ||eps - eps_theta(x_t)||^2_{Sigma^-1} with coloured
    noise eps = sigma e and x_t = sqrt(ab) x0 + sqrt(1 - ab) eps fed to the network itself."""
    inner, den = _pg_denoiser()
    x0 = _silence_then_tone()[None, None]
    mel = mel_spectrogram(x0[0, 0], convention("hifigan"))[None]
    s = prior_std(mel, convention("hifigan"), x0.shape[-1])
    e = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([20.0])
    ab = float(den.schedule.alpha_bar[20])
    with torch.no_grad():
        y_t = ab ** 0.5 * (x0 / s) + (1 - ab) ** 0.5 * e
        ours = ((den(y_t, t, mel).eps - e) ** 2).mean()
        eps = s * e
        x_t = ab ** 0.5 * x0 + (1 - ab) ** 0.5 * eps
        priorgrad = (((eps - inner(x_t, t, mel)) / s) ** 2).mean()
    assert torch.allclose(ours, priorgrad, rtol=1e-5)


def test_untrained_priorgrad_sample_follows_the_mel_envelope():
    """With a network that predicts no noise (zero output projection, bias included), what the sampler leaves is
    shaped by the prior alone: in silence it is STD_MIN times the level over the tone, where a standard prior leaves it
    flat."""
    sched = make_schedule("linear", 50, beta_start=1e-4, beta_end=0.05)
    mel = mel_spectrogram(_silence_then_tone(16, 16), convention("hifigan"))[None]
    L = mel.shape[-1] * HOP
    inner = build_diffwave("tiny", 4, 8, 2, n_mels=80, hop_length=HOP, T=50)
    torch.nn.init.zeros_(inner.output_proj.bias)
    rms = {}
    for name, net in (("priorgrad", PriorGradNet(inner, convention("hifigan"))), ("standard", inner)):
        x = synthesize(Denoiser(net, sched), L, mel, "ddim", 10, torch.Generator().manual_seed(0))[0, 0]
        quiet, loud = x[2 * HOP: 12 * HOP], x[20 * HOP: 30 * HOP]
        rms[name] = float(quiet.pow(2).mean().sqrt() / loud.pow(2).mean().sqrt())
    assert abs(rms["priorgrad"] - STD_MIN) < 0.02 and abs(rms["standard"] - 1) < 0.1, rms


def test_whitened_dataset_items(tmp_path):
    from diffsuite.modalities.audio.data import AudioClips
    sf.write(tmp_path / "a.wav", _silence_then_tone(20, 20).numpy(), SR)
    c = convention("hifigan")
    clips = AudioClips([tmp_path / "a.wav"], c, 32 * HOP, progress=False)  # any crop has silence and tone
    torch.manual_seed(3)
    raw = clips[0]
    torch.manual_seed(3)
    white = Whitened(clips, c)[0]
    assert torch.equal(white["cond"], raw["cond"])
    assert torch.allclose(white["x0"] * prior_std(raw["cond"], c, 32 * HOP), raw["x0"], atol=1e-7)
    quiet = prior_std(raw["cond"], c, 32 * HOP) == STD_MIN
    assert quiet.sum() > 4 * HOP and torch.allclose(white["x0"][quiet], raw["x0"][quiet] / STD_MIN)


def test_priorgrad_config_errors():
    from diffsuite.core.config import DiffusionConfig
    from diffsuite.modalities.audio.task import AudioTask, DataConfig, ModelConfig, check_formats
    task = AudioTask()
    with pytest.raises(ValueError, match="model.prior='priorgrad' needs a mel"):
        task.build_net(ModelConfig(preset="tiny", conditional=False, prior="priorgrad"), DiffusionConfig(T=50))
    with pytest.raises(ValueError, match="model.prior='gaussian' unknown"):
        task.build_net(ModelConfig(preset="tiny", prior="gaussian"), DiffusionConfig(T=50))
    with pytest.raises(ValueError, match="model.prior='priorgrad' but data.prior='standard'"):
        check_formats(ModelConfig(prior="priorgrad"), DataConfig())
    from diffsuite.recipes.run import train
    with pytest.raises(ValueError, match="model.prior='standard' but data.prior='priorgrad'"):
        train("audio_vocoder_quick", ["model.prior=standard"], out_dir="/nonexistent/never-written")
    with pytest.raises(ValueError, match="a mel is required"):
        PriorGradNet(build_diffwave("tiny", 2, 4, 2), convention("hifigan"))(torch.randn(1, 1, HOP), torch.zeros(1), None)

