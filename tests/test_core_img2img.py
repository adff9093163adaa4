"""Image-to-image in the core: conditions that carry a source tensor (core.conditions) and degradations (core.degrade).

The exact test: data x0 ~ N(source, s^2 I) given its source image, so the ideal denoiser is known in closed form; every
sampler must then centre each sample on its own source, which proves the source reaches the network through every
sampler and guidance wrapper without any of them knowing about it."""
import pytest
import torch
from torch import nn

from diffsuite.core.conditions import cond_cat, cond_rows, drop_condition, null_like
from diffsuite.core.degrade import (border_mask, box_mask, check_factor, consistency_error, downsample, free_form_mask,
                                    inpaint_source, project_consistent, push_pull_fill, sr_source, to_grayscale, upsample)
from diffsuite.core.denoiser import Denoiser
from diffsuite.core.guidance import ClassifierFreeGuidance
from diffsuite.core.samplers import sample
from diffsuite.core.schedules import make_schedule

torch.set_num_threads(1)
SCH = make_schedule("cosine", 1000)
S = 0.1  # the data's spread around its source


class GaussianAroundSource(nn.Module):
    """The exact eps for x0 ~ N(mu, S^2 I), mu = cond["source"] (zeros when the source is dropped: the null)."""

    def forward(self, x_t, t, cond=None):
        mu = cond["source"] if isinstance(cond, dict) else cond
        ab = SCH.alpha_bar_at(t.double().cpu()).to(x_t.dtype).reshape(-1, *[1] * (x_t.ndim - 1))
        x0 = mu + ab.sqrt() * S ** 2 / (ab * S ** 2 + 1 - ab) * (x_t - ab.sqrt() * mu)
        return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()


SAMPLERS = ["ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_sde", "heun", "euler", "pc"]


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("shape", [(16, 2, 8), (16, 1, 4, 4)])
def test_the_source_reaches_the_network_in_every_sampler(name, shape):
    den = Denoiser(GaussianAroundSource(), SCH)
    g = torch.Generator().manual_seed(0)
    source = torch.rand(shape, generator=g) * 2 - 1
    x = sample(den, shape, name, 30, cond={"source": source}, generator=torch.Generator().manual_seed(1))
    assert (x - source).abs().max() < 6 * S and abs(float((x - source).std()) - S) < 0.6 * S, name
    # a bare source tensor works the same
    y = sample(den, shape, name, 30, cond=source, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(x, y)


def test_guidance_carries_a_dict_condition():
    """CFG with a dict condition: eps = (1 + w) eps(x, c) - w eps(x, null), the null dropping the source to zeros."""
    den = Denoiser(GaussianAroundSource(), SCH)
    x = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    cond = {"source": torch.rand(6, 1, 4, 4) - 0.5, "label": torch.arange(6)}
    t = torch.full((6,), 500.0)
    got = ClassifierFreeGuidance(den, 2.0, {"source": 0.0})(x, t, cond).eps
    e_c = den(x, t, cond).eps
    e_u = den(x, t, {"source": torch.zeros(6, 1, 4, 4), "label": torch.arange(6)}).eps
    torch.testing.assert_close(got, 3 * e_c - 2 * e_u)


def test_condition_trees():
    c = {"source": torch.arange(12.0).reshape(3, 4), "label": torch.tensor([0, 1, 2])}
    both = cond_cat(c, c)
    assert both["source"].shape == (6, 4) and both["label"].tolist() == [0, 1, 2, 0, 1, 2]
    assert cond_rows(c, slice(1, 2))["label"].tolist() == [1]
    n = null_like(c, {"label": -1})
    assert n["label"].tolist() == [-1, -1, -1] and n["source"] is c["source"]  # a part without a null is kept
    with pytest.raises(ValueError, match="by part"):
        null_like(c, -1)
    # dropout draws once per sample for all parts; p = 1 drops everything with a null, p = 0 nothing
    d = drop_condition(c, 1.0, {"source": 0.0, "label": -1}, torch.Generator().manual_seed(0))
    assert (d["source"] == 0).all() and (d["label"] == -1).all()
    assert drop_condition(c, 0.0, {"source": 0.0}) is c
    big = {"source": torch.ones(4000, 2), "label": torch.ones(4000)}
    d = drop_condition(big, 0.3, {"source": 0.0, "label": 0.0}, torch.Generator().manual_seed(0))
    assert torch.equal(d["source"][:, 0] == 0, d["label"] == 0) and abs(float((d["label"] == 0).float().mean()) - 0.3) < 0.03


def test_downsampling_is_exact_and_sr_consistency():
    g = torch.Generator().manual_seed(0)
    low = torch.rand(3, 1, 4, 4, generator=g) * 2 - 1
    up = upsample(low, 4, "nearest")
    torch.testing.assert_close(downsample(up, 4), low, rtol=0, atol=1e-6)
    assert float(consistency_error(up, low, 4).max()) < 1e-6
    x = torch.rand(3, 1, 16, 16, generator=g) * 2 - 1
    src = sr_source(x, 4)
    assert src.shape == x.shape and src.abs().max() <= 1
    torch.testing.assert_close(downsample(x, 4), x.reshape(3, 1, 4, 4, 4, 4).mean((3, 5)))
    assert float(consistency_error(x, downsample(x, 4), 4).max()) < 1e-6
    assert downsample(torch.ones(2, 3, 8), 2).shape == (2, 3, 4)  # 1-D samples too
    with pytest.raises(ValueError, match="multiples of 4"):
        check_factor((18, 16), 4, "--image")
    with pytest.raises(ValueError, match="multiples of 4"):
        downsample(torch.zeros(1, 1, 2, 2), 4)


def test_projection_onto_the_consistent_outputs_is_exact_idempotent_and_never_moves_away_from_the_truth():
    """project_consistent (POCS with the pixel range): its output downsamples to the input, projecting again changes
    nothing, and it is never farther from a true image (one with that downsampling) than what it was given; 1-D too."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 16, 16, generator=g) * 1.6 - 0.8  # true images, and outputs that miss them
    low = downsample(x, 4)
    y = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    p = project_consistent(y, low, 4)
    assert float(consistency_error(p, low, 4).max()) < 1e-6 < float(consistency_error(y, low, 4).min())
    torch.testing.assert_close(project_consistent(p, low, 4), p, rtol=0, atol=1e-6)
    before, after = (y - x).flatten(1).norm(dim=1), (p - x).flatten(1).norm(dim=1)
    assert bool((after <= before + 1e-6).all()) and float(after.mean()) < 0.99 * float(before.mean())
    near = x * 0.6  # an error that is constant on each 4x4 block (what the input sees) is removed exactly
    blocky = near + torch.nn.functional.interpolate(0.1 * torch.randn(low.shape, generator=g), scale_factor=4)
    torch.testing.assert_close(project_consistent(blocky, downsample(near, 4), 4), near, rtol=0, atol=1e-5)
    torch.testing.assert_close(downsample(project_consistent(torch.zeros(2, 1, 8), torch.ones(2, 1, 4) * .5, 2), 2),
                               torch.ones(2, 1, 4) * .5)
    with pytest.raises(ValueError, match=r"not the 4x downsampling of \(64, 3, 16, 16\)"):
        project_consistent(y, low[..., :2], 4)


def test_grayscale_and_masks():
    gray = torch.rand(2, 1, 5, 5) * 2 - 1
    torch.testing.assert_close(to_grayscale(gray.expand(-1, 3, -1, -1)), gray)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        to_grayscale(torch.zeros(1, 2, 4, 4))
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        m = box_mask((16, 16), g)
        hidden = float((m == 0).float().mean())
        assert m.shape == (1, 16, 16) and 0.25 ** 2 * 0.5 <= hidden <= 0.25 + 1e-6
        f = free_form_mask((16, 16), g)
        assert f.shape == (1, 16, 16) and 0 < float((f == 0).float().mean()) < 1
    b = border_mask((8, 8), "right", 0.25)
    assert b[..., :6].eq(1).all() and b[..., 6:].eq(0).all()
    x = torch.rand(2, 3, 8, 8)
    src = inpaint_source(x, b)
    assert src.shape == (2, 4, 8, 8) and torch.equal(src[:, :3, :, :6], x[:, :, :, :6]) and (src[:, :3, :, 6:] == 0).all()
    assert torch.equal(src[:, 3:], b.expand(2, 1, 8, 8))


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 1, 17, 9), (2, 2, 40)])
def test_push_pull_fills_the_hole_smoothly_from_the_known_values(shape):
    """Known values stay exact, the fill stays within their range (a convex combination), a constant is filled with
    itself, a ramp around an interior hole to within 0.6 of a step; nothing known fills zeros; 1-D works as 2-D."""
    g = torch.Generator().manual_seed(0)
    size = shape[2:]
    m = (box_mask(size, g) if len(size) == 2 else (torch.arange(size[0]) % 13 < 8).float()[None]).expand(shape[0], 1,
                                                                                                       *size)
    x = torch.rand(shape, generator=g) * 2 - 1
    y = push_pull_fill(x, m)
    assert torch.equal(y * m, x * m) and (1 - m).sum() > 0
    lo, hi = (x * m + 9 * (1 - m)).amin(), (x * m - 9 * (1 - m)).amax()
    assert (y >= lo - 1e-6).all() and (y <= hi + 1e-6).all()
    assert torch.allclose(push_pull_fill(torch.full(shape, 0.3), m), torch.full(shape, 0.3))
    ramp = torch.linspace(-1, 1, size[-1]).expand(shape)  # harmonic: an interior hole's fill is nearly the ramp
    inner = torch.ones(1, 1, *size)
    inner[(slice(None), slice(None), *(slice(n // 4, n - n // 4) for n in size))] = 0
    assert (push_pull_fill(ramp, inner) - ramp).abs().max() < 0.6 * 2 / (size[-1] - 1)  # (a mean fill: ~0.5)
    assert torch.equal(push_pull_fill(x, torch.zeros_like(m)), torch.zeros(shape))


def test_tiles_cover_the_canvas_and_blend_to_the_untiled_prediction():
    """With a per-pixel exact denoiser, tiling with overlap must give the untiled prediction (the window weights are a
    partition of unity on every pixel): no seams, at any canvas size, in every sampler step."""
    from diffsuite.core.tiles import TiledDenoiser, tile_starts
    assert tile_starts(40, 16, 4) == [0, 12, 24] and tile_starts(16, 16, 4) == [0] and tile_starts(17, 16, 4) == [0, 1]
    den = Denoiser(GaussianAroundSource(), SCH)
    source = torch.full((2, 1, 20, 37), 0.3)
    source[..., 10:] = -0.4
    tiled = TiledDenoiser(den, 16, 4, batch_size=5)
    x = torch.randn(2, 1, 20, 37, generator=torch.Generator().manual_seed(0))
    t = torch.full((2,), 400.0)
    a, b = tiled(x, t, {"source": source}), den(x, t, {"source": source})
    torch.testing.assert_close(a.eps, b.eps)
    torch.testing.assert_close(a.x0, b.x0)
    xa = sample(tiled, (2, 1, 20, 37), "ddim", 10, cond={"source": source}, generator=torch.Generator().manual_seed(1))
    xb = sample(den, (2, 1, 20, 37), "ddim", 10, cond={"source": source}, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(xa, xb)
    with pytest.raises(ValueError, match="smaller than the tile"):
        tiled(torch.zeros(1, 1, 8, 40), t[:1], {"source": torch.zeros(1, 1, 8, 40)})


def test_overlap_blending_removes_the_seams_of_a_conv_net_on_a_constant_image():
    """A convolutional network sees zero padding at each tile's edge: tiles that merely abut leave seams (jumps between
    neighbouring columns inside a constant image); overlapping, blended tiles smooth them away."""
    from diffsuite.core.tiles import TiledDenoiser
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 8, 3, padding=1), nn.Tanh(),
                         nn.Conv2d(8, 1, 3, padding=1))

    class Net(nn.Module):
        def forward(self, x, t, cond=None):
            return conv(torch.cat([x, cond["source"]], 1))

    den = Denoiser(Net(), SCH, prediction="eps")
    source = torch.full((1, 1, 16, 64), 0.5)

    def seam(overlap):
        tiled = TiledDenoiser(den, 16, overlap)
        with torch.no_grad():
            x = sample(tiled, (1, 1, 16, 64), "ddim", 5, cond={"source": source}, x_T=torch.zeros(1, 1, 16, 64))
        return float((x[..., 4:-4, 5:-4] - x[..., 4:-4, 4:-5]).abs().max())  # away from the canvas's own border

    abut, blended = seam(0), seam(8)
    assert abut > 1e-3 and blended < 0.35 * abut, (abut, blended)


class _Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x_t, t, cond=None):
        self.seen.append((x_t.clone(), t.clone()))
        return torch.zeros_like(x_t)


def test_sr3_noise_level_options():
    """continuous_t: t ~ U[0, T-1] fractional and x_t drawn at the interpolated alpha_bar; time_input=noise_level: the
    network reads 1000 sqrt(alpha_bar_t) (Saharia et al. 2021, Sec. 2.4)."""
    from diffsuite.core.config import ConfigError, DiffusionConfig
    from diffsuite.core.build import build_denoiser, build_loss
    from diffsuite.core.losses import ContinuousTimesteps
    cfg = DiffusionConfig(schedule="cosine", T=1000, prediction="eps", continuous_t=True, time_input="noise_level")
    net = _Recorder()
    den, loss = build_denoiser(net, cfg), build_loss(cfg)
    assert isinstance(loss.timesteps, ContinuousTimesteps)
    x0 = torch.randn(256, 3)
    g = torch.Generator().manual_seed(0)
    per, t = loss(den, x0, None, g)
    assert per.shape == (256,) and t.is_floating_point() and 0 <= float(t.min()) and float(t.max()) <= 999
    assert (t != t.floor()).float().mean() > 0.99 and abs(float(t.mean()) - 499.5) < 40
    x_t, t_net = net.seen[-1]
    ab = den.schedule.alpha_bar_at(t.double())
    torch.testing.assert_close(t_net, (1000 * ab.sqrt()).float(), rtol=1e-4, atol=1e-3)  # (t passes as float32)
    eps = (x_t.double() - ab.sqrt()[:, None] * x0.double()) / (1 - ab).sqrt()[:, None]
    # eps recovered from a float32 x_t carries its rounding times 1/sqrt(1 - alpha_bar): near t = 0 that is ~100x, so
    # the samples there are left out (1%); the rest must match closely (the net predicts eps = 0)
    ok = (1 - ab) > 1e-2
    assert ok.float().mean() > 0.95
    torch.testing.assert_close(per.double()[ok], (eps ** 2).mean(1)[ok], rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="continuous_t"):
        DiffusionConfig(continuous_t=True, learned_variance=True)

