"""Vocoder metrics of benchmarks/audio.py: zero for identical audio, growing with added noise."""

import numpy as np
import pytest

from tiny import benchmark_script

A = benchmark_script("audio.py", "bench_audio")


def _speechlike(n=22050, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 22050
    env = np.clip(np.sin(2 * np.pi * 2 * t), 0, None)
    return (env * (0.3 * np.sin(2 * np.pi * 150 * t) + 0.2 * np.sin(2 * np.pi * 900 * t)
                   + 0.02 * rng.standard_normal(n))).astype(np.float32)


def test_metrics_zero_on_identical_and_monotone_in_noise():
    y = _speechlike()
    assert A.log_mel_l1(y, y) == 0 and A.mrstft(y, y) == 0 and A.mcd(y, y) == 0
    rng = np.random.default_rng(1)
    vals = [(A.log_mel_l1(y, g), A.mrstft(y, g), A.mcd(y, g))
            for g in (y + a * rng.standard_normal(len(y)).astype(np.float32) for a in (0.003, 0.03))]
    assert all(lo < hi for lo, hi in zip(*vals))


def test_pesq_stoi_order():
    pytest.importorskip("pesq")
    pytest.importorskip("pystoi")
    y = _speechlike()
    clean = A.pesq_stoi(y, y, 22050)
    noisy = A.pesq_stoi(y, y + 0.05 * np.random.default_rng(2).standard_normal(len(y)).astype(np.float32), 22050)
    assert clean["pesq_wb"] > 4 and clean["stoi"] > 0.99
    assert noisy["pesq_wb"] < clean["pesq_wb"] and noisy["stoi"] < clean["stoi"]


def test_noise_vocoder_keeps_envelope_and_replaces_fine_structure():
    pytest.importorskip("scipy")
    sr, n = 22050, 22050
    t = np.arange(n) / sr
    gate = (t > 0.25) & (t < 0.75)
    y = (0.5 * np.sin(2 * np.pi * 1000 * t) * gate).astype(np.float32)  # a gated 1 kHz tone
    g = A.noise_vocoder(y, sr, 8, seed=0)
    assert g.shape == y.shape and g.dtype == np.float32
    rms = lambda x: np.sqrt(np.mean(x.astype(np.float64) ** 2))
    assert rms(g) == pytest.approx(rms(y), rel=1e-4)
    assert np.array_equal(g, A.noise_vocoder(y, sr, 8, seed=0))
    assert not np.array_equal(g, A.noise_vocoder(y, sr, 8, seed=1))
    inside, outside = np.abs(g[(t > 0.35) & (t < 0.65)]).mean(), np.abs(g[(t < 0.15) | (t > 0.85)]).mean()
    assert outside < 0.02 * inside  # the envelope (the gate) is kept
    def line_fraction(x):  # energy within 20 Hz of the tone
        P = np.abs(np.fft.rfft(x)) ** 2
        f = np.fft.rfftfreq(len(x), 1 / sr)
        return P[np.abs(f - 1000) < 20].sum() / P.sum()
    assert line_fraction(y) > 0.9 and line_fraction(g) < 0.2  # the harmonic line is replaced by band noise


def test_speed_benchmark_rows_per_dtype():
    """`benchmarks/audio.py speed` times ours (and the reference where installed) per device, dtype and compile."""
    res = A.speed(A.argparse.Namespace(seconds=0.03, threads=1, repeats=1, device="cpu", dtypes=["fp32", "bf16"],
                                       compile=["off"]))
    ours = [r for r in res["rows"] if r["impl"] == "diffsuite"]
    assert {(r["dtype"], r["schedule"]) for r in ours} == {(d, s) for d in ("fp32", "bf16")
                                                           for s in ("50 steps", "6-step fast")}
    assert all(r["device"] == "cpu" and r["compile"] is False and r["seconds"] > 0 for r in res["rows"])
    if any(r["impl"] != "diffsuite" for r in res["rows"]):
        assert len(res["ours_over_reference"]) == 4
