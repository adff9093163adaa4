"""Image U-Net: shapes, the DDPM preset size, overfitting, guidance and inpainting contracts; image metrics."""
import math

import pytest
import torch

from diffsuite.core.denoiser import Denoiser
from diffsuite.core.guidance import ClassifierFreeGuidance
from diffsuite.core.samplers import sample
from diffsuite.core.schedules import make_schedule
from diffsuite.modalities.image import blocks as B
from diffsuite.modalities.image import edit
from diffsuite.modalities.image.unet import UNet2D, build_unet, preset

torch.set_num_threads(1)


def small(**kw):
    base = dict(image_size=16, in_channels=1, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(8,), num_heads=2)
    return UNet2D(**{**base, **kw})


@pytest.mark.parametrize("size,ch,mult", [(8, 1, (1, 2)), (16, 3, (1, 2, 2)), (32, 3, (1, 2, 2, 2)), (24, 2, (1, 2))])
def test_shapes(size, ch, mult):
    net = small(image_size=size, in_channels=ch, channel_mult=mult, num_classes=4)
    x = torch.randn(2, ch, size, size)
    assert net(x, torch.tensor([0.0, 517.5]), torch.tensor([1, 4])).shape == x.shape


def test_adm_options_and_learn_sigma():
    net = small(use_scale_shift_norm=True, resblock_updown=True, num_head_channels=8, learn_sigma=True,
                use_checkpoint=True)
    x = torch.randn(2, 1, 16, 16)
    out, v = net(x, torch.rand(2) * 999)
    assert out.shape == x.shape and v.shape == x.shape
    (out.sum() + v.sum()).backward()  # gradient checkpointing path


def test_ddpm_cifar10_parameter_count():
    n = sum(p.numel() for p in build_unet(preset("ddpm-cifar10")).parameters())
    assert abs(n - 35.7e6) / 35.7e6 < 0.01, n


def test_indivisible_size_errors_or_pads():
    x = torch.randn(1, 1, 18, 18)
    with pytest.raises(ValueError, match="not divisible by the downsampling factor 4"):
        small(channel_mult=(1, 2, 2))(x, torch.zeros(1))
    assert small(channel_mult=(1, 2, 2), pad_to_multiple=True)(x, torch.zeros(1)).shape == x.shape


def test_bad_labels_error():
    with pytest.raises(ValueError, match="class labels"):
        small(num_classes=3)(torch.randn(1, 1, 16, 16), torch.zeros(1), torch.tensor([7]))
    with pytest.raises(ValueError, match="num_classes=None"):
        small()(torch.randn(1, 1, 16, 16), torch.zeros(1), torch.tensor([0]))


def test_channels_last_and_bf16_autocast_match():
    torch.manual_seed(0)
    net = small(num_classes=3).eval()
    for p in net.parameters():  # zero-init output would make the comparison trivial
        torch.nn.init.normal_(p, std=0.05)
    x, t, c = torch.randn(2, 1, 16, 16), torch.tensor([3.0, 400.0]), torch.tensor([0, 2])
    ref = net(x, t, c)
    cl = net.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last), t, c)
    assert torch.allclose(ref, cl, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf = net(x, t, c)
    assert (bf.float() - ref).abs().mean() < 0.05 * ref.abs().mean() + 1e-3


def test_tiny_overfits_one_batch():
    """A fixed batch (x0, t, eps) is memorised: the eps-MSE falls far below its starting value of ~1."""
    torch.manual_seed(0)
    net = small(model_channels=16)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1
    eps, t = torch.randn(x0.shape, generator=g), torch.tensor([10.0, 200.0, 500.0, 900.0])
    ab = make_schedule("linear", 1000).alpha_bar.float()[t.long()][:, None, None, None]
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    losses = []
    for _ in range(120):
        loss = (net(x_t, t) - eps).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 0.8 and losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])


def _denoiser(num_classes=3):
    torch.manual_seed(0)
    net = small(num_classes=num_classes).eval()
    for p in net.parameters():  # random weights everywhere (zero-init branches would hide the label)
        torch.nn.init.normal_(p, std=0.1)
    return Denoiser(net, make_schedule("linear", 1000), "eps")


def test_guidance_zero_is_conditional_and_null_label():
    den = _denoiser()
    x, t, c = torch.randn(3, 1, 16, 16), torch.tensor([5.0, 50.0, 500.0]), torch.tensor([0, 1, 2])
    with torch.no_grad():
        cond = den(x, t, c).eps
        assert torch.equal(ClassifierFreeGuidance(den, 0.0, -1)(x, t, c).eps, cond)
        assert not torch.allclose(ClassifierFreeGuidance(den, 2.0, -1)(x, t, c).eps, cond)
        # -1 and num_classes name the same null embedding
        assert torch.equal(den(x, t, torch.full((3,), -1)).eps, den(x, t, torch.full((3,), 3)).eps)


@pytest.mark.parametrize("mask_name", edit.PRESET_MASKS)
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "ddpm"])
def test_inpainting_keeps_known_pixels_exactly(mask_name, sampler):
    den = _denoiser()
    known = torch.rand(2, 1, 16, 16) * 2 - 1
    mask = edit.preset_mask(mask_name, 16)
    hook = edit.inpaint_hook(den.schedule, mask, known)
    x = sample(den, known.shape, sampler, 5, generator=torch.Generator().manual_seed(0),
               cond=torch.tensor([0, 1]), hooks=[hook])
    m = mask.expand_as(x).bool()
    assert torch.equal(x[m], known[m])
    assert not torch.allclose(x[~m], known[~m])


def test_blocks_are_dimension_agnostic():
    e = torch.randn(2, 8)
    assert B.ResBlock(4, 8, 8, dims=1, down=True)(torch.randn(2, 4, 10), e).shape == (2, 8, 5)
    assert B.AttentionBlock(8, head_dim=4)(torch.randn(2, 8, 3, 3, 3)).shape == (2, 8, 3, 3, 3)
    seq = B.TimestepEmbedSequential(B.ResBlock(4, 4, 8), B.CrossAttentionBlock(4, 6, 2))
    assert seq(torch.randn(2, 4, 4, 4), e, torch.randn(2, 5, 6)).shape == (2, 4, 4, 4)


@pytest.mark.slow
def test_torch_compile():
    net = small(num_classes=3).eval()
    x, t, c = torch.randn(2, 1, 16, 16), torch.tensor([1.0, 2.0]), torch.tensor([0, 1])
    assert torch.allclose(torch.compile(net)(x, t, c), net(x, t, c), atol=1e-5)


def test_frechet_distance_closed_form():
    import numpy as np
    from diffsuite.modalities.image.metrics import feature_stats, frechet_distance
    s1, s2 = np.diag([1.0, 4.0]), np.diag([4.0, 1.0])
    # ||mu||^2 + tr(S1 + S2) - 2 tr((S1 S2)^1/2) = 1 + 10 - 2 * 4
    assert abs(frechet_distance(np.array([1.0, 0]), s1, np.zeros(2), s2) - 3.0) < 1e-9
    a = np.random.default_rng(0).normal(size=(500, 3))
    assert abs(frechet_distance(*feature_stats(a), *feature_stats(a))) < 1e-6


@pytest.mark.parametrize("pool", ["attention", "avg"])
def test_the_classifier_is_the_unets_down_path_with_a_pooling_head(pool):
    from diffsuite.modalities.image.unet import build_encoder, build_unet, preset
    spec = preset("tiny", num_classes=10)
    enc, unet = build_encoder(spec, 7, pool), build_unet(spec)
    down = {k for k in unet.state_dict() if k.startswith(("input_blocks", "middle_block", "time_embed"))}
    assert down == {k for k in enc.state_dict() if k.startswith(("input_blocks", "middle_block", "time_embed"))}
    assert not any(k.startswith(("output_blocks", "label_emb")) for k in enc.state_dict())
    out = enc(torch.randn(3, 1, 16, 16), torch.tensor([0.0, 500.0, 999.0]))
    assert out.shape == (3, 7) and torch.isfinite(out).all()
    if pool == "attention":
        with pytest.raises(ValueError, match="positions"):
            enc(torch.randn(1, 1, 32, 32), torch.zeros(1))

def test_pooled_psnr_pools_the_squared_error_where_psnr_averages_per_image():
    """metrics.psnr_pooled: 10 log10(range² / MSE over all the images), one image's psnr for one image."""
    from diffsuite.modalities.image import metrics
    ref = torch.zeros(2, 1, 4, 4)
    x = torch.stack([torch.full((1, 4, 4), 0.02), torch.full((1, 4, 4), 0.2)])  # MSEs 4e-4 and 4e-2
    assert abs(metrics.psnr_pooled(x, ref) - 10 * math.log10(4 / ((4e-4 + 4e-2) / 2))) < 1e-4
    assert abs(metrics.psnr_pooled(x, ref) - metrics.psnr(x, ref).mean()) > 5  # per image: 40 and 20 dB, mean 30
    assert abs(metrics.psnr_pooled(x[:1], ref[:1]) - metrics.psnr(x[:1], ref[:1])[0]) < 1e-9
