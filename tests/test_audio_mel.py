"""Mel frontend: agreement with librosa (and torchaudio where it imports), conventions, range checks."""
import numpy as np
import pytest
import torch

from diffsuite.modalities.audio.mel import (CONVENTIONS, check_mel, convention, mel_magnitude, mel_spectrogram,
                                            n_frames)

librosa = pytest.importorskip("librosa")
SR = 22050


def _signal(n=SR // 2, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    return (0.4 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t) + 0.05 * rng.standard_normal(n))


def _librosa_mel(y, c):
    kw = dict(sr=c.sample_rate, n_fft=c.n_fft, hop_length=c.hop, win_length=c.win, power=1.0, n_mels=c.n_mels,
              fmin=c.fmin, fmax=c.f_max, htk=c.htk, norm=c.norm, window="hann")
    if c.center:
        norm = np.sqrt((librosa.filters.get_window("hann", c.win, fftbins=True) ** 2).sum()) if c.normalized else 1.0
        return librosa.feature.melspectrogram(y=y, center=True, pad_mode="reflect", **kw) / norm
    pad = (c.n_fft - c.hop) // 2
    return librosa.feature.melspectrogram(y=np.pad(y, (pad, pad), mode="reflect"), center=False, **kw)


@pytest.mark.parametrize("name", sorted(CONVENTIONS))
def test_linear_mel_agrees_with_librosa(name):
    c = convention(name)
    y = _signal()
    ours = mel_magnitude(torch.from_numpy(y)[None], c)[0].numpy()
    ref = _librosa_mel(y, c)
    assert ours.shape == ref.shape == (c.n_mels, n_frames(len(y), c))
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-9 * ref.max())


def test_compressed_ranges():
    y = torch.from_numpy(_signal()).float()
    h = mel_spectrogram(y, "hifigan")
    d = mel_spectrogram(y, "diffwave")
    assert h.min() >= np.log(1e-5) - 1e-6 and h.min() < 0
    assert d.min() >= 0 and d.max() <= 1
    ref = librosa.feature.melspectrogram(y=np.pad(y.double().numpy(), (384, 384), mode="reflect"), sr=SR,
                                         n_fft=1024, hop_length=256, center=False, power=1.0, n_mels=80, fmax=8000)
    np.testing.assert_allclose(h.numpy(), np.log(np.maximum(ref, 1e-5)), atol=1e-4)


def test_check_mel_rejects_wrong_shape_and_range():
    y = torch.from_numpy(_signal()).float()
    h, d = mel_spectrogram(y, "hifigan"), mel_spectrogram(y, "diffwave")
    check_mel(h, convention("hifigan"))
    check_mel(d, convention("diffwave"))
    with pytest.raises(ValueError, match="'diffwave' convention is scaled"):
        check_mel(h, convention("diffwave"))
    with pytest.raises(ValueError, match="'hifigan'"):
        check_mel(d, convention("hifigan"))
    with pytest.raises(ValueError, match=r"shape \(80, frames\)"):
        check_mel(h[:40], convention("hifigan"))


def test_unknown_convention():
    with pytest.raises(ValueError, match="valid"):
        convention("mfcc")


def test_agrees_with_torchaudio_where_available():
    T = pytest.importorskip("torchaudio.transforms")
    y = torch.from_numpy(_signal()).float()
    c = convention("diffwave")
    ta = T.MelSpectrogram(sample_rate=SR, n_fft=1024, win_length=1024, hop_length=256, f_min=20.0, f_max=SR / 2,
                          n_mels=80, power=1.0, normalized=True)(y)
    assert torch.allclose(mel_magnitude(y[None], c)[0], ta, rtol=1e-4, atol=1e-6)
