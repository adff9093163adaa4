"""Sequence windows, normalisation and returns-to-go."""
import numpy as np
import pytest
import torch

from diffsuite.modalities.trajectory.data import (GaussianNormalizer, LimitsNormalizer, SequenceDataset, ValueDataset,
                                                  discounted_returns_to_go, episode_bounds, normalizer_from_state)


def _stream(lengths, seed=0):
    """A stream whose observation dim 0 holds the episode id and dim 1 the step within the episode."""
    rng = np.random.default_rng(seed)
    obs, term, tout = [], [], []
    for e, n in enumerate(lengths):
        obs += [[e, k, rng.normal(), rng.normal()] for k in range(n)]
        flags = np.zeros(n, bool)
        flags[-1] = True
        (term if e % 2 == 0 else tout).append(flags)
        (tout if e % 2 == 0 else term).append(np.zeros(n, bool))
    obs = np.array(obs, np.float32)
    act = rng.uniform(-1, 1, (len(obs), 2)).astype(np.float32)
    return obs, act, rng.random(len(obs)).astype(np.float32), np.concatenate(term), np.concatenate(tout)


@pytest.mark.parametrize("use_padding", [False, True])
def test_windows_never_cross_episode_ends(use_padding):
    obs, act, rew, term, tout = _stream([5, 17, 9, 30, 8])
    H = 8
    ds = SequenceDataset(obs, act, rew, term, tout, H, "limits", use_padding)
    assert [e - s for s, e in ds.bounds] == [5, 17, 9, 30, 8]
    n_expected = sum(n if use_padding else max(n - H + 1, 0) for n in [5, 17, 9, 30, 8])
    assert len(ds) == n_expected
    for i in range(len(ds)):
        a, s = ds.split(torch.as_tensor(ds.normalizer.unnormalize(ds[i].numpy())))
        w = ds.windows[i]
        n_ep = ds.bounds[w.episode][1] - ds.bounds[w.episode][0]
        valid = min(H, n_ep - w.start)
        assert torch.all(s[:valid, 0].round() == w.episode)
        np.testing.assert_allclose(s[:valid, 1].numpy(), np.arange(w.start, w.start + valid), atol=1e-4)
        if valid < H:  # padding is zeros in raw units (Diffuser's replay buffer)
            assert use_padding
            np.testing.assert_allclose(s[valid:].numpy(), 0, atol=1e-4)
            np.testing.assert_allclose(a[valid:].numpy(), 0, atol=1e-4)


def test_no_window_fits_is_a_clear_error():
    obs, act, rew, term, tout = _stream([5, 6])
    with pytest.raises(ValueError, match="horizon 8"):
        SequenceDataset(obs, act, rew, term, tout, 8)


@pytest.mark.parametrize("cls", [LimitsNormalizer, GaussianNormalizer])
def test_normalisation_round_trips(cls):
    x = np.random.default_rng(0).normal(3, [1, 10, 0.1], (500, 3)).astype(np.float32)
    x[:, 2] = 7.0  # a constant dimension must not divide by zero
    n = cls(x)
    y = n.normalize(x)
    np.testing.assert_allclose(n.unnormalize(y), x, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(n.unnormalize(torch.as_tensor(y)).numpy(), x, rtol=1e-5, atol=1e-4)
    if cls is LimitsNormalizer:
        np.testing.assert_allclose(y[:, :2].min(0), -1, atol=1e-6)
        np.testing.assert_allclose(y[:, :2].max(0), 1, atol=1e-6)
    else:
        np.testing.assert_allclose(y[:, :2].mean(0), 0, atol=1e-4)
        np.testing.assert_allclose(y[:, :2].std(0), 1, atol=1e-3)
    n2 = normalizer_from_state(n.state())
    np.testing.assert_allclose(n2.normalize(x), y, atol=1e-6)


def test_returns_to_go():
    np.testing.assert_allclose(discounted_returns_to_go(np.array([1.0, 0, 2]), 0.5), [1.5, 1.0, 2.0])
    obs, act, rew, term, tout = _stream([12, 10])
    ds = SequenceDataset(obs, act, rew, term, tout, 4, discount=0.9)
    i = next(k for k, w in enumerate(ds.windows) if w.episode == 1 and w.start == 2)
    s, e = ds.bounds[1]
    expect = sum(0.9 ** k * rew[s + 2 + k] for k in range(e - s - 2))
    assert ds.window_return(i) == pytest.approx(expect, rel=1e-5)
    v = ValueDataset(ds)
    assert v[i]["x0"].shape == (4, 6) and abs(float(v.returns.mean())) < 1e-5


def test_episode_bounds_trailing_stream():
    assert episode_bounds(np.array([0, 1, 0, 0], bool), np.zeros(4, bool)) == [(0, 2), (2, 4)]
